"""The benchmark worker: the project's Celery app plus no-op tasks and two measuring hooks.

`celery -A bench.worker_app worker` runs exactly the tasks of `ktrdr_tasks` with the project's
`ktrdr_tasks.celeryconfig`, and adds:
- `bench.noop`: the baseline chain's task (does nothing);
- a `task_postrun` hook that pushes the end time of the last task of a chain (the cycle's
  `ktrdr.assess`, the baseline's last `bench.noop`) to a Redis list, so both are timed the
  same way, from the same place;
- a `worker_ready` hook that tells the benchmark the worker is consuming.

Knobs the benchmark compares, from the environment:
- `BENCH_EVENTS`: `final` (the project's configuration: task events on, no `task-sent`, no
  events for the in-between runs of a reschedule), `all` (every event Celery can send:
  `task-sent` on, every run's `task-started` and `task-succeeded`/`task-retried`) or `off`;
- `BENCH_RESCHEDULE`: `publish` (the project's `reschedule`), `retry` (Celery's
  `Task.retry`, raised through the worker, as before `reschedule` existed: the same-run
  baseline of the countdown) or `ignore` (re-publish, then end the run with `Ignore`);
- `BENCH_BROKER=kombu`: kombu's own Redis transport instead of `ktrdr_tasks.broker`'s;
- `BENCH_HTTP=httpx`: the training client on httpx's default transport (httpcore and h11)
  instead of `ktrdr_tasks.http_transport`;
- `BENCH_REPUBLISH=celery`: a reschedule re-publishes through Celery's `signature_from_request`
  and `send_task` (a no-op `before_task_publish` receiver sends it there, as any publish
  observer does) instead of on the kept producer.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Task
from celery.exceptions import Ignore
from celery.signals import before_task_publish, task_postrun, worker_ready

import ktrdr_tasks.tasks
from ktrdr_tasks.app import app
from ktrdr_tasks.reschedule import reschedule
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import get_store

DONE_KEY = "bench:done"
READY_KEY = "bench:ready"
LAST_NOOP = "last"
PLAIN_REQUEST = "celery.worker.request:Request"
PLAIN_STRATEGY = "celery.worker.strategy:default"

EVENTS = os.environ.get("BENCH_EVENTS", "final")
RESCHEDULE = os.environ.get("BENCH_RESCHEDULE", "publish")

if os.environ.get("BENCH_BROKER") == "kombu":
    app.conf.broker_transport = None

if os.environ.get("BENCH_HTTP") == "httpx":
    import httpx

    from ktrdr_tasks import training_api

    def _httpx_transport(_deadline: Any) -> httpx.BaseTransport:
        return httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=20))

    training_api.KeepAliveTransport = _httpx_transport  # type: ignore[assignment,misc]

if os.environ.get("BENCH_REPUBLISH") == "celery":

    @before_task_publish.connect(weak=False)
    def _observe_publish(**_: Any) -> None:
        return None


if EVENTS == "off":
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False
elif EVENTS == "all":
    app.conf.task_send_sent_event = True


def _celery_retry(task: Task, countdown: float) -> str:
    raise task.retry(countdown=countdown, max_retries=None)


def _publish_then_ignore(task: Task, countdown: float) -> str:
    reschedule(task, countdown)
    raise Ignore()


if RESCHEDULE == "retry":
    ktrdr_tasks.tasks.reschedule = _celery_retry  # type: ignore[assignment]
elif RESCHEDULE == "ignore":
    ktrdr_tasks.tasks.reschedule = _publish_then_ignore  # type: ignore[assignment]
if RESCHEDULE == "retry" or EVENTS == "all":
    for step in Step:
        app.tasks[step.task_name].Request = PLAIN_REQUEST
        app.tasks[step.task_name].Strategy = PLAIN_STRATEGY

celery = app


@app.task(name="bench.noop")
def noop(*_: Any) -> None:
    return None


@task_postrun.connect
def _record_chain_end(task_id: str = "", task: Any = None, args: Any = (), **_: Any) -> None:
    name = getattr(task, "name", "")
    if name == "ktrdr.assess" or (name == "bench.noop" and args and args[-1] == LAST_NOOP):
        get_store().redis.rpush(DONE_KEY, f"{args[0]} {time.time():.6f}")


@worker_ready.connect
def _announce_ready(sender: Any = None, **_: Any) -> None:
    from redis.utils import HIREDIS_AVAILABLE

    print(f"bench worker: events={EVENTS} reschedule={RESCHEDULE} hiredis={HIREDIS_AVAILABLE}")
    get_store().redis.sadd(READY_KEY, str(getattr(sender, "hostname", os.getpid())))
