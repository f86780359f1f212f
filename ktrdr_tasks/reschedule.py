"""A step's countdown without Celery's retry machinery: re-publish the message, end this one.

A waiting poll runs every few seconds for as long as its training runs, so what one
reschedule costs decides how many cycles a worker machine can poll. `Task.retry` re-publishes
the message and then raises `Retry` through the worker: `ExceptionInfo` snapshots every
frame's code positions and formats the traceback, the pickled snapshot crosses the pool's
pipe, and the worker logs and sends `task-retried`. `reschedule` does only the necessary
part of `retry`: publish the same message again (same task id, so a revoke and Flower still
see one task; the rest of the chain attached; `retries` + 1) with its countdown, then detach
the chain from the current run, so that returning `RESCHEDULED` ends it as a plain success
that dispatches nothing. The message is acknowledged only after the new one is published
(acks late): a worker killed in between is redelivered, as with `retry`.

The message is the one this run received, with its new ETA and retry count, published on a
producer the process keeps (`_republish`). Going through `signature_from_request` and
`Celery.send_task` costs about 0.9 ms of CPU a poll (configuration lookups, routing, a
producer taken from the pool, queue declaration, the argument reprs computed again) against
0.2 ms for the publish itself; a test holds the two messages equal. When something observes
publishes (a `before_task_publish`/`after_task_publish` receiver, e.g. tracing that adds
headers), the message takes Celery's own path, so it is seen like any other.

Task events keep Flower truthful at the lowest cost. A task in Flower is final once it
reads SUCCESS, so the `task-succeeded` of a reschedule is not sent (`StepRequest`, the
worker's request class of every step task); the re-published message sends neither
`task-received` (`step_strategy`, the consumer's strategy for step tasks) nor `task-started`:
Flower shows the task started since its first run until its final outcome, which every run
that ends the step sends as usual. Each event is about 0.3 ms of worker CPU plus a Redis
PUBLISH; a waiting poll now sends none.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import after_task_publish, before_task_publish
from celery.utils.saferepr import saferepr
from celery.worker.request import Request
from celery.worker.strategy import default as default_strategy

RESCHEDULED = "rescheduled"
# What the worker's main process receives from the pool for a run that returned RESCHEDULED.
_RESCHEDULED_REPR = saferepr(RESCHEDULED)


def reschedule(task: Task, countdown: float) -> str:
    """Run `task`'s current message again in `countdown` seconds; return what the run returns.

    Outside a worker (a direct call, eager mode) this is `task.retry`, which raises `Retry`
    without publishing anything.
    """
    request = task.request
    if request.called_directly or request.is_eager:
        raise task.retry(countdown=countdown, max_retries=None)
    try:
        if before_task_publish.receivers or after_task_publish.receivers:
            again = task.signature_from_request(
                request, countdown=countdown, retries=(request.retries or 0) + 1
            )
            again.apply_async()
        else:
            _republish(task, countdown)
    except Exception as exc:
        # As `retry` does: the reconciler resumes the cycle from its recorded step.
        raise Reject(exc, requeue=False) from exc
    # The rest of the chain now rides on the new message: this run must not dispatch it.
    request.chain = None
    request.callbacks = None
    return RESCHEDULED


# The headers of Celery's task message (protocol 2, `AMQP.as_task_v2`), as the run's request
# holds them; `eta` and `retries` are set anew.
_HEADERS = (
    "lang",
    "task",
    "id",
    "shadow",
    "expires",
    "group",
    "group_index",
    "timelimit",
    "root_id",
    "parent_id",
    "argsrepr",
    "kwargsrepr",
    "origin",
    "ignore_result",
    "replaced_task_nesting",
    "stamped_headers",
    "stamps",
)


class _Producers:
    """The main thread's producer, kept per process and producer pool: taking one costs 0.1 ms.

    Only the main thread keeps one (a prefork pool process, a solo worker): the pool lends at
    most `broker_pool_limit` producers, so threads (a threads pool, greenlets) that each kept
    one would exhaust it, and every later publish of the process would wait for ever. They
    take one per publish and give it back. Keyed by the app's producer pool, so another app
    (or the same app after its broker changed and its pools were rebuilt) never publishes on
    a producer of the old broker.
    """

    pid: int | None = None
    pool: Any = None
    producer: Any = None

    @contextlib.contextmanager
    def lent(self, app: Any) -> Iterator[Any]:
        pool = app.producer_pool
        if threading.current_thread() is not threading.main_thread():
            with pool.acquire(block=True) as producer:
                yield producer
            return
        if self.producer is None or self.pid != os.getpid() or self.pool is not pool:
            self.discard()
            self.producer = pool.acquire(block=True)
            self.pid, self.pool = os.getpid(), pool
        try:
            yield self.producer
        except BaseException:
            self.discard()  # its connection may be the broken part
            raise

    def discard(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None and self.pid == os.getpid():
            with contextlib.suppress(Exception):  # a pool closed meanwhile
                producer.release()


_producers = _Producers()


def _republish(task: Task, countdown: float) -> None:
    """Publish the run's own message again, due in `countdown` s, as `retry` would send it."""
    app, request = task.app, task.request
    headers = {name: getattr(request, name, None) for name in _HEADERS}
    headers.update(request.headers or {})  # a caller's custom headers, as Celery keeps them
    headers["lang"] = headers["lang"] or "py"
    headers["task"] = headers["task"] or task.name
    headers["timelimit"] = headers["timelimit"] or [None, None]
    if headers["argsrepr"] is None:  # a message from a sender that left them out
        headers["argsrepr"] = saferepr(tuple(request.args), app.amqp.argsrepr_maxsize)
    if headers["kwargsrepr"] is None:
        headers["kwargsrepr"] = saferepr(request.kwargs, app.amqp.kwargsrepr_maxsize)
    headers["retries"] = (request.retries or 0) + 1
    headers["eta"] = (datetime.now(UTC) + timedelta(seconds=countdown)).isoformat()
    body = (
        request.args,
        request.kwargs,
        {
            "callbacks": request.callbacks,
            "errbacks": request.errbacks,
            "chain": request.chain,
            "chord": request.chord,
        },
    )
    delivery = request.delivery_info or {}
    exchange = delivery.get("exchange") or ""
    routing_key = delivery.get("routing_key") or app.conf.task_default_queue
    with _producers.lent(app) as producer:
        producer.publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            serializer=app.conf.task_serializer,
            headers=headers,
            correlation_id=request.id,
            reply_to=request.reply_to or "",
            priority=delivery.get("priority"),
            delivery_mode=2,
            retry=app.conf.task_publish_retry,
            retry_policy=app.conf.task_publish_retry_policy,
        )


class StepRequest(Request):
    """A step message in the worker: no task events for the in-between runs of a reschedule."""

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and fields.get("result") == _RESCHEDULED_REPR:
            return
        if type == "task-started" and self.request_dict.get("retries"):
            return
        super().send_event(type, **fields)


class _QuietRepolls:
    """The worker's event dispatcher, minus the `task-received` of a re-published message."""

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)

    def send(self, type: str, **fields: Any) -> Any:
        if type == "task-received" and fields.get("retries"):
            return None
        return self._dispatcher.send(type, **fields)


class _StepConsumer:
    """The consumer as `default_strategy` reads it, with the quieter event dispatcher."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        dispatcher = consumer.event_dispatcher
        self.event_dispatcher = _QuietRepolls(dispatcher) if dispatcher is not None else None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def step_strategy(task: Task, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default strategy for a step task's messages, without the in-between events."""
    return default_strategy(task, app, _StepConsumer(consumer), **options)
