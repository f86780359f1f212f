"""The rules every step of a cycle runs under, once: lease, entry, outcome, error budget.

`run_step` runs one step of one cycle given its services (store, training client, settings):
1. takes the lease for (cycle, step), so redelivery, resume and retry never run one step twice
   at once; a run that finds the lease held checks back when the lease runs out (exiting
   would ack a redelivered message whose first run is dead, and strand the cycle);
2. enters the step atomically: a cycle that ended, or whose chain already moved past this
   step, stops here without side effects (the record, not Celery's revoke list, is the truth);
   only a cycle that ended makes sure its remote job is cancelled;
3. calls the step's function and settles its outcome (`cycle.Outcome`) once: the one error
   budget for transient errors (KTRDR_POLL_MAX_ERRORS consecutive failures of a step fail the
   cycle), the failure written with its message, the remote job of a failed cycle cancelled.
A Redis blip anywhere in this is a reschedule, never a failed cycle. The first step of a chain
a backend enqueued itself creates the cycle's record first, under the active-cycle limit.
`run_step` returns the settled outcome; the tasks in `tasks.py` turn it into Celery's terms,
so tests call it with services built from fakeredis and an httpx MockTransport.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from ktrdr_tasks import logs, workflow
from ktrdr_tasks.cycle import (
    STEP_BODIES,
    Ended,
    Fail,
    Outcome,
    Reschedule,
    Services,
    StepBody,
    StepRun,
)
from ktrdr_tasks.errors import (
    CycleEnded,
    KtrdrTasksError,
    OperationStateError,
    StoreUnavailableError,
    TransientApiError,
)
from ktrdr_tasks.models import Operation, OperationStatus, iso, utc_now
from ktrdr_tasks.remote import cancel_orphaned_job
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.steps import Step

log = logging.getLogger("ktrdr_tasks.runner")

LEASE_TTL_S = 30.0


def lease_ttl_s(step: Step, settings: Settings) -> float:
    """How long a run may go without renewing its lease before another run may take the step.

    A live run renews its lease; one whose worker was SIGKILLed leaves it to expire. At most
    half the visibility timeout, so a run waiting for the lease (a countdown of up to the TTL)
    is not redelivered while it waits. An LLM design renews before each call, so its lease
    must outlast one call (the settings keep the visibility timeout above two).
    """
    ttl = LEASE_TTL_S
    if step is Step.DESIGN and settings.designer == "anthropic":
        ttl += settings.anthropic_timeout_s
    return min(ttl, settings.visibility_timeout_s / 2)


def run_step(
    step: Step,
    operation_id: str,
    services: Services,
    task_id: str,
    body: StepBody | None = None,
    new_cycle: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run one step of one cycle under the shared rules; returns the settled outcome.

    `body` defaults to the step's own (declared with `step_task`). `new_cycle`: the first
    step of a chain a backend enqueued (`workflow.research_chain`) creates the record first.
    """
    try:
        if new_cycle is not None:
            refused = _open_cycle(services, operation_id, new_cycle)
            if refused is not None:
                return refused
        return _run_leased(step, operation_id, services, task_id, body or STEP_BODIES[step])
    except StoreUnavailableError as exc:
        # A Redis blip must not fail the cycle: the step is idempotent, run it again once Redis
        # is back. If the retry cannot be published either (the broker is the same Redis),
        # Celery rejects the message and the reconciler resumes the cycle from its step.
        countdown = max(1.0, services.settings.poll_interval_s)
        log.warning("%s %s: %s; retrying in %.0f s", operation_id, step.name, exc, countdown)
        return Reschedule(countdown)


def _open_cycle(
    services: Services, operation_id: str, new_cycle: Mapping[str, Any]
) -> Ended | None:
    """Create the record of a backend's cycle under the active-cycle limit, once.

    Returns the refusal (the cycle recorded as failed, with ktrdr's reason) when the limit
    stands in the way; None when the cycle may run (created now, or by an earlier delivery).
    """
    store = services.store
    if store.find(operation_id) is not None:
        return None
    operation = workflow.new_cycle_record(
        operation_id,
        new_cycle.get("strategy"),
        bool(new_cycle.get("bypass_gates")),
        [str(task_id) for task_id in new_cycle.get("task_ids") or ()],
        str(new_cycle.get("created_at") or iso(utc_now())),
    )
    limit = services.settings.max_active_cycles
    blocking = store.create_operation(operation, limit)
    if not blocking:
        log.info("%s created by its chain", operation_id)
        return None
    answer = workflow.refusal(blocking, limit)
    operation.metadata["refused"] = answer.model_dump(exclude_none=True)
    message = f"Refused ({answer.reason}): {answer.message}"
    store.record_refused(operation, message)
    log.warning("%s %s", operation_id, message)
    return Ended(f"cycle {operation_id} failed: {message}")


def _run_leased(
    step: Step, operation_id: str, services: Services, task_id: str, body: StepBody
) -> Outcome:
    store = services.store
    token = f"{task_id}:{uuid.uuid4().hex}"
    ttl = lease_ttl_s(step, services.settings)
    # One Redis call takes the lease, enters the step and reads the record (a refused entry
    # leaves no lease behind); one more writes a reschedule's changes and lets go.
    entry = store.begin_step(operation_id, step, step.phase, step.name, token, ttl)
    if entry.state == "held":
        # Exiting here would ack a redelivered message whose first run is dead and strand the
        # cycle. Check back when the lease runs out: a live holder has by then moved the chain
        # on (this run finds the step stale and exits quietly), a dead one has let go.
        wait = max(0.5, entry.lease_remaining_s + 0.2)
        log.info(
            "%s %s: another run holds this step; checking in %.1f s", operation_id, step.name, wait
        )
        return Reschedule(wait)
    if entry.operation is None:
        # "stale": a late duplicate of a step the live chain has passed; it must not
        # touch the remote job the live chain is polling.
        log.info("%s %s skipped: cycle %s", operation_id, step.name, entry.state)
        if entry.state == "stale":
            return Ended("the chain has moved past this step", superseded=True)
        ended = store.find(operation_id)
        cancel_orphaned_job(services.client, ended, services.requeue_cancel)
        return Ended(_how_it_ended(operation_id, ended))
    operation = entry.operation
    logs.bind(training_id=operation.training_operation_id)
    if step not in (Step.POLL_TRAINING, Step.POLL_BACKTEST):
        log.info("%s phase: %s", operation_id, step.label)
    run = StepRun(
        services,
        operation,
        task_id,
        lambda: store.renew_lease(operation_id, step.name, token, ttl),
    )
    outcome: Outcome | None = None
    try:
        outcome = _settle(services, operation, step, _outcome_of(run, body, step))
    finally:
        if not (isinstance(outcome, Reschedule) and outcome.changes):
            # An unreleased lease expires by itself; failing to release must not hide the
            # outcome. Released before a retry is published, so the next run can take it.
            with contextlib.suppress(StoreUnavailableError):
                store.release_lease(operation_id, step.name, token)
    if isinstance(outcome, Reschedule) and outcome.changes:
        # A lost write is no outcome to hide: a Redis blip here reschedules (see `run_step`).
        if not store.end_step(operation_id, step.name, token, **outcome.changes):
            log.info("%s %s stopped: the cycle ended while it ran", operation_id, step.name)
            return Ended(_how_it_ended(operation_id, store.find(operation_id)))
        return Reschedule(outcome.countdown)
    return outcome


def _outcome_of(run: StepRun, body: StepBody, step: Step) -> Outcome | TransientApiError:
    """The step's outcome; errors of the tree read as outcomes (transient: kept for the budget)."""
    try:
        return body(run)
    except StoreUnavailableError:
        raise
    except TransientApiError as exc:
        return exc
    except CycleEnded as exc:
        return Ended(str(exc))
    except KtrdrTasksError as exc:
        return Fail(f"{step.label} failed: {exc}")
    except Exception as exc:
        log.exception("%s %s crashed", run.operation.operation_id, step.name)
        return Fail(f"{step.label} crashed: {type(exc).__name__}: {exc} (see the worker log)")


def _settle(
    services: Services, operation: Operation, step: Step, outcome: Outcome | TransientApiError
) -> Outcome:
    """Apply the one error budget, write a failure once, cancel a failed cycle's remote job."""
    store, op_id = services.store, operation.operation_id
    if isinstance(outcome, TransientApiError):
        outcome = _spend_error_budget(services, operation, step, outcome)
    elif operation.bookkeeping.transient_errors and not isinstance(outcome, Ended | Fail):
        # The budget counts consecutive failures of one step: a run that got through resets it.
        store.update(op_id, bookkeeping={"transient_errors": 0})
    if isinstance(outcome, Fail):
        if store.finish(
            op_id,
            OperationStatus.FAILED,
            error_message=outcome.message,
            metadata=outcome.metadata,
            progress=outcome.progress,
        ):
            log.warning("%s failed: %s", op_id, outcome.message)
        cancel_orphaned_job(services.client, store.find(op_id), services.requeue_cancel)
    elif isinstance(outcome, Ended):
        log.info("%s %s stopped: %s", op_id, step.name, outcome.reason)
        if not outcome.superseded:
            return Ended(_how_it_ended(op_id, store.find(op_id)))
    return outcome


def _how_it_ended(operation_id: str, operation: Operation | None) -> str:
    """The cycle's own words for how it ended, for the task's final state."""
    if operation is None:
        return f"cycle {operation_id} is unknown (never created, or its record expired)"
    status = operation.status.value
    return f"cycle {operation_id} {status}: {operation.error_message or 'no message'}"


def cancel_revoked_cycle(services: Services, operation_id: str, task_id: str) -> Outcome:
    """A task of this cycle was revoked through Celery (Flower, `celery control revoke`):
    that is a cancel of the whole cycle, remote job included. (The revoke has been sent
    already, and this run stops the chain: nothing else to revoke.)"""
    store = services.store
    with contextlib.suppress(OperationStateError):  # it ended meanwhile: nothing to cancel
        cancelled = store.cancel(operation_id, f"revoked through Celery: task {task_id}")
        log.warning("%s cancelled: %s", operation_id, cancelled.error_message)
    cancel_orphaned_job(services.client, store.find(operation_id), services.requeue_cancel)
    return Ended(_how_it_ended(operation_id, services.store.find(operation_id)))


def _spend_error_budget(
    services: Services, operation: Operation, step: Step, exc: TransientApiError
) -> Outcome:
    settings = services.settings
    errors = operation.bookkeeping.transient_errors + 1
    if errors >= settings.poll_max_errors:
        return Fail(
            f"{step.label} failed {errors} times in a row "
            f"(KTRDR_POLL_MAX_ERRORS={settings.poll_max_errors}): {exc}; "
            f"check that the training API at {settings.safe_api_url()} is up"
        )
    if not services.store.update(
        operation.operation_id, bookkeeping={"transient_errors": errors, "last_error": str(exc)}
    ):
        return Ended("cycle ended while its step was failing")
    log.warning(
        "%s %s: %s (%d/%d); retrying",
        operation.operation_id,
        step.name,
        exc,
        errors,
        settings.poll_max_errors,
    )
    return Reschedule(max(1.0, settings.poll_interval_s))


def cancel_cycles_of_revoked(services: Services, task_ids: list[str]) -> list[str]:
    """Cancel every active cycle that owns one of `task_ids`; returns the cycles cancelled."""
    revoked = set(task_ids)
    cancelled = []
    for operation in services.store.active_operations():
        hit = sorted(revoked & set(operation.task_ids))
        if hit:
            cancel_revoked_cycle(services, operation.operation_id, ", ".join(hit))
            cancelled.append(operation.operation_id)
    return cancelled
