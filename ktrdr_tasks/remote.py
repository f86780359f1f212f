"""The one way a remote job (training or backtest) is cancelled: now, or by the retrying task.

Every place that stops a remote job (a user's cancel, a failed or lost cycle, a revoked task,
the starter that lost the race with a cancel) calls `cancel_remote` or, for a cycle that
ended, `cancel_orphaned_job`. A cancel the API cannot take right now is handed to
`ktrdr.cancel_training`, which retries with backoff until the API answers: a briefly
unreachable API never leaves a job running for a cycle that is over (the task keeps its
name, `cancel_training`, for the backtests too: both are cancelled by the same route).
Every remote cancel is idempotent (200, 400 "already ended" and 404 all mean nothing runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from celery import Task

from ktrdr_tasks.app import app
from ktrdr_tasks.errors import PermanentApiError, TransientApiError
from ktrdr_tasks.models import Operation, OperationStatus
from ktrdr_tasks.training_api import TrainingApiClient, get_client

log = logging.getLogger("ktrdr_tasks.remote")

CANCEL_TASK = "ktrdr.cancel_training"
CANCEL_MAX_RETRIES = 120
# What `training_status` / `backtest_status` say once nothing runs remotely: no cancel needed.
REMOTE_ENDED = frozenset({"completed", "failed", "cancelled", "not_found"})

Requeue = Callable[[str, str], None]
"""Hands a cancel (training id, reason) to the retrying task."""


def queue_cancel(training_id: str, reason: str) -> None:
    cancel_training.apply_async(args=(training_id, reason), countdown=1)


def cancel_remote(
    client: TrainingApiClient, training_id: str, reason: str, requeue: Requeue | None = None
) -> str:
    """Cancel a remote job now, or queue the retrying cancel when the API is unreachable.

    Returns what happened: `cancelled`, `already_ended`, `unknown`, `refused` or `queued`.
    """
    try:
        outcome = client.cancel_operation(training_id, reason)
    except TransientApiError as exc:
        log.warning("cancel of training %s queued, API unreachable: %s", training_id, exc)
        (requeue or queue_cancel)(training_id, reason)
        return "queued"
    except PermanentApiError as exc:
        log.warning("training API refused to cancel %s: %s", training_id, exc)
        return "refused"
    log.info("training %s cancel: %s (%s)", training_id, outcome, reason)
    return outcome


def cancel_orphaned_job(
    client: TrainingApiClient, operation: Operation | None, requeue: Requeue | None = None
) -> str | None:
    """A cycle that failed or was cancelled with a remote job possibly running: cancel it.

    Only an ended cycle qualifies: the remote job of a running cycle is its live chain's, and
    a completed cycle's job has completed. The remote jobs are the training and, once it
    started, the backtest (`<job>_status` says when one is known to be over). Returns the id
    of the job cancelled, if any (the backtest's when both were).
    """
    if operation is None or operation.status not in (
        OperationStatus.FAILED,
        OperationStatus.CANCELLED,
    ):
        return None
    reason = f"cycle {operation.operation_id} {operation.status.value}"
    cancelled = None
    for job in ("training", "backtest"):
        job_id = operation.metadata.get(f"{job}_operation_id")
        if job_id and operation.metadata.get(f"{job}_status") not in REMOTE_ENDED:
            cancel_remote(client, job_id, reason, requeue)
            cancelled = job_id
    return cancelled


@app.task(name=CANCEL_TASK, bind=True, max_retries=CANCEL_MAX_RETRIES)
def cancel_training(self: Task, training_id: str, reason: str) -> str:
    """Cancel a remote job, retrying with backoff while the API is unreachable."""
    try:
        return get_client().cancel_operation(training_id, reason)
    except TransientApiError as exc:
        countdown = min(60, 2 ** min(self.request.retries, 6))
        log.warning("cancel of %s failed (%s); retrying in %ss", training_id, exc, countdown)
        raise self.retry(countdown=countdown) from None
