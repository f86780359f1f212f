"""The reconciler: find active cycles no worker has touched for a while; resume or fail them.

Runs under Celery beat (`ktrdr.reconcile`). A healthy cycle writes its heartbeat on every
step and every poll, so only a cycle whose messages were lost (worker killed and its held
messages not yet restored, Redis restarted without its queue, a revoke that outlived its
reason) goes stale. Such a cycle is resumed from its recorded step with fresh task ids (the
lease and the step counter keep a late original from running twice). Resumes that bring no
progress stop after `MAX_RESUMES`, so a cycle whose steps keep dying is not re-enqueued
forever; it is failed (and its remote job cancelled) only once its heartbeat is older than
`KTRDR_LOST_AFTER_S`, the one limit an operator sets for "lost".
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ktrdr_tasks.cycle import Services, fail_cycle
from ktrdr_tasks.models import Operation, parse_iso
from ktrdr_tasks.remote import cancel_orphaned_job
from ktrdr_tasks.steps import FIRST_STEP, LAST_STEP, Step
from ktrdr_tasks.workflow import chain_task_ids, enqueue_steps

log = logging.getLogger("ktrdr_tasks.reconciler")

# Resumes without progress in between: enough to survive a second crash during the resume,
# few enough that a step which kills its worker every time is not re-run all night.
MAX_RESUMES = 3


def heartbeat_age(operation: Operation, now: float) -> float:
    stamp = operation.heartbeat_at or operation.created_at
    return now - parse_iso(stamp).timestamp()


ResumeChain = Callable[[str, dict[Step, str]], None]
"""Enqueues the rest of a cycle's chain: (operation id, task ids of the steps to run)."""


def resume_step(operation: Operation) -> Step:
    """Where to pick up: the recorded step, redone idempotently (the first if none ran)."""
    if operation.step < FIRST_STEP:
        return FIRST_STEP
    return Step(min(operation.step, LAST_STEP))


def resumes_without_progress(operation: Operation) -> int:
    """Resumes since the cycle last got further: a later step or more progress starts anew.

    Not the heartbeat: a resumed step that enters (writing the heartbeat) and then kills its
    worker would look like progress, and be resumed forever.
    """
    books = operation.bookkeeping
    if books.resumed_at_step is None:
        return 0
    moved_on = operation.step > books.resumed_at_step or operation.progress.percentage > (
        books.resumed_at_pct or 0.0
    )
    return 0 if moved_on else books.resume_count


def reconcile_cycles(
    services: Services, now: float, resume: ResumeChain = enqueue_steps
) -> dict[str, list[str]]:
    """One pass over the active cycles; returns the ids resumed and failed."""
    report: dict[str, list[str]] = {"resumed": [], "failed": []}
    for operation in services.store.active_operations():
        if not _needs_attention(services, operation, now):
            continue
        if heartbeat_age(operation, now) >= services.settings.lost_after_s:
            if _fail_lost(services, operation, now):
                report["failed"].append(operation.operation_id)
        elif resumes_without_progress(operation) < MAX_RESUMES and _resume(
            services, operation, now, resume
        ):
            report["resumed"].append(operation.operation_id)
    return report


def _needs_attention(services: Services, operation: Operation, now: float) -> bool:
    """Stale for a full resume period, and no live run holds its step."""
    age = heartbeat_age(operation, now)
    # A resume leaves the heartbeat alone (it is no progress); wait a full `resume_after_s`
    # after it before judging again, so resumes are not fired every pass.
    resumed_at = operation.bookkeeping.resumed_at_ts
    quiet = min(age, now - resumed_at) if resumed_at else age
    if quiet < services.settings.resume_after_s:
        return False
    # A live run holds the step (a long design renews its lease, not the heartbeat); a dead
    # run's lease expires within the lease TTL.
    return not (
        operation.step >= FIRST_STEP
        and services.store.lease_remaining_s(operation.operation_id, resume_step(operation).name)
    )


def _fail_lost(services: Services, operation: Operation, now: float) -> bool:
    store, op_id = services.store, operation.operation_id
    message = (
        f"cycle lost: no worker progressed it since {operation.heartbeat_at} "
        f"({heartbeat_age(operation, now):.0f} s, {resumes_without_progress(operation)} "
        "resumes); check that workers are running (celery -A ktrdr_tasks worker)"
    )
    if not fail_cycle(store, op_id, message):
        return False
    log.warning("%s %s", op_id, message)
    cancel_orphaned_job(services.client, store.find(op_id), services.requeue_cancel)
    return True


def _resume(services: Services, operation: Operation, now: float, resume: ResumeChain) -> bool:
    """Re-enqueue the rest of the chain from the recorded step, with fresh task ids."""
    op_id = operation.operation_id
    step = resume_step(operation)
    ids = chain_task_ids(step)
    changes: dict[str, Any] = {
        "resume_count": resumes_without_progress(operation) + 1,
        "resumed_at_step": operation.step,
        "resumed_at_pct": operation.progress.percentage,
        "resumed_from_step": step.name,
        "resumed_at_ts": now,
    }
    if Step.POLL_TRAINING in ids:  # the resumed poll owns the cycle; a late original stops
        changes["poll_task_id"] = ids[Step.POLL_TRAINING]
    if Step.POLL_BACKTEST in ids:
        changes["backtest_poll_task_id"] = ids[Step.POLL_BACKTEST]
    if not services.store.update(
        op_id,
        bookkeeping=changes,
        task_ids=[*operation.task_ids, *ids.values()],
        # Not a heartbeat: "lost since" and KTRDR_LOST_AFTER_S count from the last real one.
        heartbeat=False,
    ):
        return False
    resume(op_id, ids)
    log.warning(
        "%s stale for %.0f s: resumed at %s", op_id, heartbeat_age(operation, now), step.name
    )
    return True
