"""The Celery tasks: a thin shell around `cycle.py`, one decorator holding the shared rules.

Every step task takes only the operation id (all state is in Redis, so any worker can re-run
it) and goes through `_run_step`, which:
1. takes the lease for (cycle, step), so redelivery, resume and retry never run one step twice
   at once; a run that finds the lease held checks back when the lease runs out (exiting
   would ack a redelivered message whose first run is dead, and strand the cycle);
2. enters the step atomically: a cycle that ended, or whose chain already moved past this
   step, stops here without side effects (the record, not Celery's revoke list, is the truth);
   only a cycle that ended makes sure its remote job is cancelled;
3. calls the step's function and maps its outcome: reschedule (poll, transient errors),
   stop quietly (cancelled elsewhere), or fail the cycle with a message a person can act on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import Ignore, Retry
from celery.signals import task_revoked

from ktrdr_tasks import cycle, logs
from ktrdr_tasks.app import app
from ktrdr_tasks.cycle import CycleFailed, CycleStopped, Step
from ktrdr_tasks.errors import KtrdrTasksError, StoreUnavailableError, TransientApiError
from ktrdr_tasks.models import Operation, OperationStatus
from ktrdr_tasks.settings import Settings, get_settings
from ktrdr_tasks.store import Store, get_store
from ktrdr_tasks.training_api import TrainingApiClient, get_client

log = logging.getLogger("ktrdr_tasks.tasks")

LEASE_TTL_S = 30.0
CANCEL_MAX_RETRIES = 120

STEP_TASK_NAMES = {
    Step.DESIGN: "ktrdr.design",
    Step.LOAD_TRAINING_PARAMS: "ktrdr.load_training_params",
    Step.START_TRAINING: "ktrdr.start_training",
    Step.POLL_TRAINING: "ktrdr.poll_training",
    Step.TRAINING_GATE: "ktrdr.training_gate",
    Step.BACKTEST: "ktrdr.backtest",
    Step.ASSESS: "ktrdr.assess",
}
PHASE_LABELS = {
    Step.DESIGN: "design",
    Step.LOAD_TRAINING_PARAMS: "loading training parameters",
    Step.START_TRAINING: "starting training",
    Step.POLL_TRAINING: "training",
    Step.TRAINING_GATE: "training gate",
    Step.BACKTEST: "backtest",
    Step.ASSESS: "assessment",
}


@dataclass(frozen=True)
class Reschedule:
    """Run this step again after `countdown` seconds (a poll still waiting, a transient error)."""

    countdown: float


@dataclass(frozen=True)
class StepContext:
    task: Task
    store: Store
    settings: Settings
    operation: Operation
    renew_lease: Callable[[], None]

    @property
    def client(self) -> TrainingApiClient:
        return get_client()


StepBody = Callable[[StepContext], Any]


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


def _run_step(task: Task, operation_id: str, step: Step, body: StepBody) -> Any:
    settings = get_settings()
    try:
        return _run_step_with_store(task, get_store(), settings, operation_id, step, body)
    except StoreUnavailableError as exc:
        # A Redis blip must not fail the cycle: the step is idempotent, run it again once Redis
        # is back. If the retry cannot be published either (the broker is the same Redis),
        # Celery rejects the message and the reconciler resumes the cycle from its step.
        countdown = max(1.0, settings.poll_interval_s)
        log.warning("%s %s: %s; retrying in %.0f s", operation_id, step.name, exc, countdown)
        raise task.retry(countdown=countdown, max_retries=None) from None


def _run_step_with_store(
    task: Task, store: Store, settings: Settings, operation_id: str, step: Step, body: StepBody
) -> Any:
    token = f"{task.request.id}:{uuid.uuid4().hex}"
    lease = step.name
    lease_ttl = lease_ttl_s(step, settings)
    if not store.acquire_lease(operation_id, lease, token, lease_ttl):
        # Exiting here would ack a redelivered message whose first run is dead and strand the
        # cycle. Check back when the lease runs out: a live holder has by then moved the chain
        # on (this run finds the step stale and exits quietly), a dead one has let go.
        wait = max(0.5, store.lease_remaining_s(operation_id, lease) + 0.2)
        log.info(
            "%s %s: another run holds this step; checking again in %.1f s",
            operation_id,
            step.name,
            wait,
        )
        raise task.retry(countdown=wait, max_retries=None)
    outcome: Any = None
    try:
        entered = store.enter_step(operation_id, step, cycle.STEP_PHASES[step])
        if entered != "ok":
            # "stale": a late duplicate of a step the live chain has passed; it must not
            # touch the remote job the live chain is polling.
            log.info("%s %s skipped: cycle %s", operation_id, step.name, entered)
            if entered == "ended":
                _cancel_orphaned_training(store, operation_id)
            raise Ignore()
        context = StepContext(
            task,
            store,
            settings,
            store.get(operation_id),
            lambda: store.renew_lease(operation_id, lease, token, lease_ttl),
        )
        logs.bind(training_id=context.operation.training_operation_id)
        if step is not Step.POLL_TRAINING:
            log.info("%s phase: %s", operation_id, PHASE_LABELS[step])
        outcome = body(context)
        if not isinstance(outcome, Reschedule) and context.operation.metadata.get("step_errors"):
            # The error budget counts consecutive failures of one step, not of the cycle.
            store.update(operation_id, metadata={"step_errors": 0})
    except (Ignore, Retry, StoreUnavailableError):
        raise
    except CycleStopped as stopped:
        log.info("%s %s stopped: %s", operation_id, step.name, stopped)
        raise Ignore() from None
    except CycleFailed:
        _log_failure(store, operation_id)
        raise Ignore() from None
    except TransientApiError as exc:
        outcome = _transient_outcome(store, settings, operation_id, step, exc)
    except KtrdrTasksError as exc:
        _fail(store, operation_id, f"{PHASE_LABELS[step]} failed: {exc}")
        raise Ignore() from None
    except Exception as exc:
        log.exception("%s %s crashed", operation_id, step.name)
        _fail(
            store,
            operation_id,
            f"{PHASE_LABELS[step]} crashed: {type(exc).__name__}: {exc} (see the worker log)",
        )
        raise Ignore() from None
    finally:
        # An unreleased lease expires by itself; failing to release must not hide the outcome.
        with contextlib.suppress(StoreUnavailableError):
            store.release_lease(operation_id, lease, token)
    if isinstance(outcome, Reschedule):
        # The lease is released before the retry is published, so the next run can take it.
        raise task.retry(countdown=outcome.countdown, max_retries=None)
    return outcome


def _transient_outcome(
    store: Store, settings: Settings, operation_id: str, step: Step, exc: TransientApiError
) -> Reschedule | None:
    operation = store.find(operation_id)
    errors = int((operation.metadata if operation else {}).get("step_errors") or 0) + 1
    if errors >= settings.poll_max_errors:
        _fail(
            store,
            operation_id,
            f"{PHASE_LABELS[step]} failed: {exc} ({errors} attempts; "
            f"check that the training API at {settings.api_url} is up)",
        )
        raise Ignore()
    store.update(operation_id, metadata={"step_errors": errors})
    log.warning("%s %s: %s; retrying", operation_id, step.name, exc)
    return Reschedule(max(1.0, settings.poll_interval_s))


def _fail(store: Store, operation_id: str, message: str) -> None:
    if cycle.fail_cycle(store, operation_id, message):
        log.warning("%s failed: %s", operation_id, message)
    _cancel_orphaned_training(store, operation_id)


def _log_failure(store: Store, operation_id: str) -> None:
    operation = store.find(operation_id)
    if operation is not None:
        log.warning("%s %s: %s", operation_id, operation.status.value, operation.error_message)


def _cancel_orphaned_training(store: Store, operation_id: str) -> None:
    """A cycle that failed or was cancelled with a remote job possibly running: cancel the job.

    Only an ended cycle qualifies: the remote job of a running cycle is its live chain's.
    """
    operation = store.find(operation_id)
    if (
        operation is not None
        and operation.training_operation_id
        and operation.status in (OperationStatus.FAILED, OperationStatus.CANCELLED)
        and operation.metadata.get("training_status") not in ("completed", "failed", "cancelled")
    ):
        request_remote_cancel(operation.training_operation_id, f"cycle {operation_id} ended")


def request_remote_cancel(training_id: str, reason: str) -> None:
    """Cancel now if the API answers, else hand the cancel to a retrying task."""
    if not cycle.cancel_remote_quietly(get_client(), training_id, reason):
        cancel_training.apply_async(args=(training_id, reason), countdown=1)


def cycle_task(step: Step, **options: Any) -> Callable[[StepBody], Task]:
    # Retries of every step are bounded by the cycle's own budgets (KTRDR_POLL_MAX_ERRORS, the
    # training deadline), never by Celery's default max_retries of 3: `retry(max_retries=None)`
    # does not lift that default in Celery 5.7, only the task's own declaration does.
    options.setdefault("max_retries", None)

    def decorate(body: StepBody) -> Task:
        @app.task(name=STEP_TASK_NAMES[step], bind=True, **options)
        def run(self: Task, operation_id: str) -> Any:
            return _run_step(self, operation_id, step, body)

        run.__doc__ = body.__doc__
        return run

    return decorate


# -- the steps ------------------------------------------------------------------------------


@cycle_task(Step.DESIGN)
def design(ctx: StepContext) -> dict[str, str]:
    """Design a strategy (or take the requested one) and save it under strategies/."""
    from ktrdr_tasks.design import design_strategy, summarize_design

    name = cycle.run_design(
        ctx.store, ctx.settings, ctx.operation, design_strategy, summarize_design, ctx.renew_lease
    )
    return {"strategy_name": name}


@cycle_task(Step.LOAD_TRAINING_PARAMS)
def load_training_params(ctx: StepContext) -> dict[str, Any]:
    """Read symbols, timeframes and dates from the strategy file."""
    return cycle.run_load_training_params(ctx.store, ctx.settings, ctx.operation)


@cycle_task(Step.START_TRAINING)
def start_training(ctx: StepContext) -> dict[str, str]:
    """Start the remote training once and store its operation id."""
    training_id = cycle.run_start_training(ctx.store, ctx.client, ctx.settings, ctx.operation)
    return {"training_operation_id": training_id}


@cycle_task(Step.POLL_TRAINING)
def poll_training(ctx: StepContext) -> dict[str, str] | Reschedule:
    """Poll the remote training; re-schedule itself until it ends, never holding a slot."""
    meta = ctx.operation.metadata
    owner = meta.get("poll_task_id")
    if owner and owner != ctx.task.request.id:
        raise CycleStopped("a resumed poll owns this cycle now")
    outcome, cancel_id = cycle.run_poll_training(ctx.store, ctx.client, ctx.settings, ctx.operation)
    if cancel_id:
        request_remote_cancel(cancel_id, f"cycle {ctx.operation.operation_id} failed")
    if not outcome.finished:
        return Reschedule(outcome.countdown)
    if ctx.store.find(ctx.operation.operation_id).status.is_terminal:
        raise CycleFailed("training ended without a result to judge")
    return {"training": "completed"}


@cycle_task(Step.TRAINING_GATE)
def training_gate(ctx: StepContext) -> dict[str, str]:
    """Judge the training metrics against the gate thresholds."""
    if not cycle.run_training_gate(ctx.store, ctx.settings, ctx.operation):
        raise CycleFailed("training gate failed")
    return {"gate": "passed"}


@cycle_task(Step.BACKTEST)
def backtest(ctx: StepContext) -> dict[str, str]:
    """Stub until the backtest phase is built; the record says so."""
    cycle.run_stub_phase(ctx.store, ctx.operation, Step.BACKTEST)
    return {"backtest": "stub"}


@cycle_task(Step.ASSESS)
def assess(ctx: StepContext) -> dict[str, str]:
    """Stub assessment, then the cycle is completed."""
    cycle.run_stub_phase(ctx.store, ctx.operation, Step.ASSESS)
    if not cycle.complete_cycle(ctx.store, ctx.store.get(ctx.operation.operation_id)):
        raise CycleStopped("cycle ended before it could complete")
    log.info("%s completed", ctx.operation.operation_id)
    return {"status": "completed"}


# -- housekeeping ---------------------------------------------------------------------------


@app.task(name="ktrdr.cancel_training", bind=True, max_retries=CANCEL_MAX_RETRIES)
def cancel_training(self: Task, training_id: str, reason: str) -> str:
    """Cancel a remote training, retrying with backoff while the API is unreachable."""
    try:
        return get_client().cancel_operation(training_id, reason)
    except TransientApiError as exc:
        countdown = min(60, 2 ** min(self.request.retries, 6))
        log.warning("cancel of %s failed (%s); retrying in %ss", training_id, exc, countdown)
        raise self.retry(countdown=countdown) from None


@app.task(name="ktrdr.reconcile")
def reconcile() -> dict[str, list[str]]:
    """Resume or fail active cycles whose heartbeat went stale (see `reconciler.py`)."""
    from ktrdr_tasks.reconciler import reconcile_cycles

    return reconcile_cycles(get_store(), get_settings(), time.time())


@task_revoked.connect
def cancel_remote_on_revoke(sender: Task | None = None, request: Any = None, **_: Any) -> None:
    """Revoke is only a backup (DESIGN section 4), but when it fires for a step of a cancelled
    cycle, make sure the remote job is cancelled too. Every remote cancel is idempotent."""
    # The worker sends the task as `sender` and the message's context (task name in `.task`,
    # arguments in `.args`) as `request`.
    task_name = getattr(sender, "name", None) or getattr(request, "task", None) or ""
    args = getattr(request, "args", None) or ()
    if task_name not in STEP_TASK_NAMES.values() or not args:
        return
    try:
        _cancel_orphaned_training(get_store(), str(args[0]))
    except KtrdrTasksError:
        log.warning("could not check revoked task %s", getattr(request, "id", "?"))
