"""The Celery tasks: a thin shell around `cycle.py`, one runner holding the shared rules.

Every step task takes only the operation id (all state is in Redis, so any worker can re-run
it) and goes through `run_step`, which:
1. takes the lease for (cycle, step), so redelivery, resume and retry never run one step twice
   at once; a run that finds the lease held checks back when the lease runs out (exiting
   would ack a redelivered message whose first run is dead, and strand the cycle);
2. enters the step atomically: a cycle that ended, or whose chain already moved past this
   step, stops here without side effects (the record, not Celery's revoke list, is the truth);
   only a cycle that ended makes sure its remote job is cancelled;
3. calls the step's function and settles its outcome (`cycle.Outcome`) once: the one error
   budget for transient errors (KTRDR_POLL_MAX_ERRORS consecutive failures of a step fail the
   cycle), the failure written with its message, the remote job of a failed cycle cancelled.
A Redis blip anywhere in this is a reschedule, never a failed cycle. `run_step` returns the
settled outcome; the task (`step_task`) turns it into Celery's terms (retry with a countdown,
or stop the message), so tests call `run_step` with services built from fakeredis and an
httpx MockTransport and read the outcome instead of catching Celery exceptions.
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
from celery.exceptions import Ignore
from celery.signals import task_revoked

from ktrdr_tasks import cycle, logs
from ktrdr_tasks.app import app
from ktrdr_tasks.cycle import Ended, Fail, Outcome, Reschedule, Services
from ktrdr_tasks.errors import (
    CycleEnded,
    KtrdrTasksError,
    StoreUnavailableError,
    TransientApiError,
)
from ktrdr_tasks.models import Operation, OperationStatus
from ktrdr_tasks.reconciler import reconcile_cycles
from ktrdr_tasks.remote import cancel_orphaned_job, cancel_training, queue_cancel
from ktrdr_tasks.settings import Settings, get_settings
from ktrdr_tasks.steps import Step, step_of_task
from ktrdr_tasks.store import get_store
from ktrdr_tasks.training_api import get_client

__all__ = ["cancel_training", "run_step"]

log = logging.getLogger("ktrdr_tasks.tasks")

LEASE_TTL_S = 30.0


@dataclass(frozen=True)
class StepRun:
    """What a step's task body gets: the services, the record as the step began, the run."""

    services: Services
    operation: Operation
    task_id: str
    renew_lease: Callable[[], None]


StepBody = Callable[[StepRun], Outcome]


def worker_services() -> Services:
    """This process's store, training client and settings (each created once per process)."""
    return Services(get_store(), get_client(), get_settings(), queue_cancel)


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
) -> Outcome:
    """Run one step of one cycle under the shared rules; returns the settled outcome.

    `body` defaults to the step's own (declared with `step_task`).
    """
    try:
        return _run_leased(step, operation_id, services, task_id, body or STEP_BODIES[step])
    except StoreUnavailableError as exc:
        # A Redis blip must not fail the cycle: the step is idempotent, run it again once Redis
        # is back. If the retry cannot be published either (the broker is the same Redis),
        # Celery rejects the message and the reconciler resumes the cycle from its step.
        countdown = max(1.0, services.settings.poll_interval_s)
        log.warning("%s %s: %s; retrying in %.0f s", operation_id, step.name, exc, countdown)
        return Reschedule(countdown)


def _run_leased(
    step: Step, operation_id: str, services: Services, task_id: str, body: StepBody
) -> Outcome:
    store = services.store
    token = f"{task_id}:{uuid.uuid4().hex}"
    ttl = lease_ttl_s(step, services.settings)
    if not store.acquire_lease(operation_id, step.name, token, ttl):
        # Exiting here would ack a redelivered message whose first run is dead and strand the
        # cycle. Check back when the lease runs out: a live holder has by then moved the chain
        # on (this run finds the step stale and exits quietly), a dead one has let go.
        wait = max(0.5, store.lease_remaining_s(operation_id, step.name) + 0.2)
        log.info(
            "%s %s: another run holds this step; checking in %.1f s", operation_id, step.name, wait
        )
        return Reschedule(wait)
    try:
        entered = store.enter_step(operation_id, step, step.phase)
        if entered != "ok":
            # "stale": a late duplicate of a step the live chain has passed; it must not
            # touch the remote job the live chain is polling.
            log.info("%s %s skipped: cycle %s", operation_id, step.name, entered)
            if entered == "ended":
                cancel_orphaned_job(
                    services.client, store.find(operation_id), services.requeue_cancel
                )
            return Ended(f"cycle {entered}")
        operation = store.get(operation_id)
        logs.bind(training_id=operation.training_operation_id)
        if step is not Step.POLL_TRAINING:
            log.info("%s phase: %s", operation_id, step.label)
        run = StepRun(
            services,
            operation,
            task_id,
            lambda: store.renew_lease(operation_id, step.name, token, ttl),
        )
        return _settle(services, operation, step, _outcome_of(run, body, step))
    finally:
        # An unreleased lease expires by itself; failing to release must not hide the outcome.
        # Released before a retry is published, so the next run can take it.
        with contextlib.suppress(StoreUnavailableError):
            store.release_lease(operation_id, step.name, token)


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
    return outcome


def _spend_error_budget(
    services: Services, operation: Operation, step: Step, exc: TransientApiError
) -> Outcome:
    settings = services.settings
    errors = operation.bookkeeping.transient_errors + 1
    if errors >= settings.poll_max_errors:
        return Fail(
            f"{step.label} failed {errors} times in a row "
            f"(KTRDR_POLL_MAX_ERRORS={settings.poll_max_errors}): {exc}; "
            f"check that the training API at {settings.api_url} is up"
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


# -- the Celery binding ---------------------------------------------------------------------


STEP_BODIES: dict[Step, StepBody] = {}


def step_task(step: Step, **options: Any) -> Callable[[StepBody], Task]:
    """Declare the Celery task of `step` (named from the step table) around its body.

    The task turns the settled outcome into Celery's terms: a retry with the countdown, a
    stopped message (`Ignore`) for a cycle that ended or failed, or the step's result.
    """
    # Retries of every step are bounded by the cycle's own budgets (KTRDR_POLL_MAX_ERRORS, the
    # training deadline), never by Celery's default max_retries of 3: `retry(max_retries=None)`
    # does not lift that default in Celery 5.7, only the task's own declaration does.
    options.setdefault("max_retries", None)

    def decorate(body: StepBody) -> Task:
        STEP_BODIES[step] = body

        @app.task(name=step.task_name, bind=True, **options)
        def run(self: Task, operation_id: str) -> dict[str, Any]:
            outcome = run_step(step, operation_id, worker_services(), str(self.request.id))
            if isinstance(outcome, Reschedule):
                raise self.retry(countdown=outcome.countdown, max_retries=None)
            if isinstance(outcome, Ended | Fail):
                raise Ignore()
            return outcome

        run.__doc__ = body.__doc__
        return run

    return decorate


# -- the steps: one line each into cycle.py (looked up there when called) ---------------------


@step_task(Step.DESIGN)
def design(run: StepRun) -> Outcome:
    """Design a strategy (or take the requested one) and save it under strategies/."""
    from ktrdr_tasks.design import design_strategy, summarize_design

    services = run.services
    name = cycle.run_design(
        services.store,
        services.settings,
        run.operation,
        design_strategy,
        summarize_design,
        run.renew_lease,
    )
    return {"strategy_name": name}


@step_task(Step.LOAD_TRAINING_PARAMS)
def load_training_params(run: StepRun) -> Outcome:
    """Read symbols, timeframes and dates from the strategy file."""
    return cycle.run_load_training_params(run.services.store, run.services.settings, run.operation)


@step_task(Step.START_TRAINING)
def start_training(run: StepRun) -> Outcome:
    """Start the remote training once and store its operation id."""
    return cycle.run_start_training(run.services, run.operation)


@step_task(Step.POLL_TRAINING)
def poll_training(run: StepRun) -> Outcome:
    """Poll the remote training; re-schedule itself until it ends, never holding a slot."""
    owner = run.operation.bookkeeping.poll_task_id
    if owner and owner != run.task_id:
        return Ended("a resumed poll owns this cycle now")
    return cycle.run_poll_training(run.services, run.operation)


@step_task(Step.TRAINING_GATE)
def training_gate(run: StepRun) -> Outcome:
    """Judge the training metrics against the gate thresholds."""
    return cycle.run_training_gate(run.services.store, run.services.settings, run.operation)


@step_task(Step.BACKTEST)
def backtest(run: StepRun) -> Outcome:
    """Stub until the backtest phase is built; the record says so."""
    return cycle.run_stub_phase(run.services.store, run.operation, Step.BACKTEST)


@step_task(Step.ASSESS)
def assess(run: StepRun) -> Outcome:
    """Stub assessment, then the cycle is completed."""
    return cycle.run_assess(run.services.store, run.operation)


# -- housekeeping ---------------------------------------------------------------------------


@app.task(name="ktrdr.reconcile")
def reconcile() -> dict[str, list[str]]:
    """Resume or fail active cycles whose heartbeat went stale (see `reconciler.py`)."""
    return reconcile_cycles(worker_services(), time.time())


@task_revoked.connect
def cancel_remote_on_revoke(
    sender: Task | None = None,
    request: Any = None,
    services: Services | None = None,
    **_: Any,
) -> None:
    """Revoke is only a backup (DESIGN section 4), but when it fires for a step of a cancelled
    cycle, make sure the remote job is cancelled too. Every remote cancel is idempotent.

    `services`: this process's unless the sender passes its own (a test does).
    """
    # The worker sends the task as `sender` and the message's context (task name in `.task`,
    # arguments in `.args`) as `request`.
    task_name = getattr(sender, "name", None) or getattr(request, "task", None) or ""
    args = getattr(request, "args", None) or ()
    if step_of_task(task_name) is None or not args:
        return
    try:
        services = services or worker_services()
        cancel_orphaned_job(
            services.client, services.store.find(str(args[0])), services.requeue_cancel
        )
    except KtrdrTasksError:
        log.warning("could not check revoked task %s", getattr(request, "id", "?"))
