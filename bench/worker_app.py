"""The benchmark worker: the project's Celery app plus no-op tasks and two measuring hooks.

`celery -A bench.worker_app worker` runs exactly the tasks of `ktrdr_tasks` with the project's
`ktrdr_tasks.celeryconfig`, and adds:
- `bench.noop`: the baseline chain's task (does nothing);
- a `task_postrun` hook that pushes the end time of the last task of a chain (the cycle's
  `ktrdr.assess`, the baseline's last `bench.noop`) to a Redis list, so both are timed the
  same way, from the same place;
- a `worker_ready` hook that tells the benchmark the worker is consuming.
`BENCH_TASK_EVENTS=0` turns task events off (a tuning knob the benchmark compares).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery.signals import task_postrun, worker_ready

import ktrdr_tasks.tasks  # noqa: F401  (registers the chain's tasks)
from ktrdr_tasks.app import app
from ktrdr_tasks.store import get_store

DONE_KEY = "bench:done"
READY_KEY = "bench:ready"
LAST_NOOP = "last"

if os.environ.get("BENCH_TASK_EVENTS", "1") == "0":
    app.conf.worker_send_task_events = False
    app.conf.task_send_sent_event = False

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
    get_store().redis.sadd(READY_KEY, str(getattr(sender, "hostname", os.getpid())))
