"""A step's countdown without Celery's retry machinery: re-publish the message, end this one.

A waiting poll runs every few seconds for as long as its training runs, so what one
reschedule costs decides how many cycles a worker machine can poll. `Task.retry` re-publishes
the message and then raises `Retry` through the worker: `ExceptionInfo` snapshots every
frame's code positions and formats the traceback, the pickled snapshot crosses the pool's
pipe, and the worker logs and sends `task-retried`. `reschedule` does only the necessary
part of `retry`: publish the same message again (`signature_from_request`: same task id, so
a revoke and Flower still see one task; the rest of the chain attached; `retries` + 1) with
its countdown, then detach the chain from the current run, so that returning `RESCHEDULED`
ends it as a plain success that dispatches nothing. The message is acknowledged only after
the new one is published (acks late): a worker killed in between is redelivered, as with
`retry`.

Task events keep Flower truthful at the lowest cost. A task in Flower is final once it
reads SUCCESS, so the `task-succeeded` of a reschedule is not sent (`StepRequest`, the
worker's request class of every step task); the re-published message sends neither
`task-received` (`step_strategy`, the consumer's strategy for step tasks) nor `task-started`:
Flower shows the task started since its first run until its final outcome, which every run
that ends the step sends as usual. Each event is about 0.3 ms of worker CPU plus a Redis
PUBLISH; a waiting poll now sends none.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject
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
    again = task.signature_from_request(
        request, countdown=countdown, retries=(request.retries or 0) + 1
    )
    try:
        again.apply_async()
    except Exception as exc:
        # As `retry` does: the reconciler resumes the cycle from its recorded step.
        raise Reject(exc, requeue=False) from exc
    # The rest of the chain now rides on the new message: this run must not dispatch it.
    request.chain = None
    request.callbacks = None
    return RESCHEDULED


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
