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

`StepRequest`, the worker's request class of every step task, keeps Flower truthful at the
lowest cost: a task in Flower is final once it reads SUCCESS, so the `task-succeeded` of a
reschedule is not sent; nor is the `task-started` of a re-published message (Flower shows
the task started since its first run, and the re-published message's `task-received`
carries its new eta and retry count). Every step's final outcome is sent as usual.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.utils.saferepr import saferepr
from celery.worker.request import Request

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
