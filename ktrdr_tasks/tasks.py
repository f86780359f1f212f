"""The Celery tasks: each step a thin task around its function in `cycle.py`, run under the
shared rules of `runner.run_step`, plus Celery's own doors.

A step task takes only the operation id (all state is in Redis, so any worker can re-run
it) and turns the settled outcome into Celery's terms, so Flower shows the truth. Besides the
steps: the reconciler's beat task, and the doors a user reaches through Celery itself (a
revoke of any task id cancels its cycle; a backend's chain creates its cycle in its first
task, see `workflow.research_chain`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Task
from celery.signals import task_revoked
from celery.utils.functional import maybe_list
from celery.worker import control

from ktrdr_tasks.app import app
from ktrdr_tasks.cycle import Ended, Fail, Reschedule, Services
from ktrdr_tasks.errors import CycleOver, KtrdrTasksError
from ktrdr_tasks.reconciler import reconcile_cycles
from ktrdr_tasks.remote import cancel_orphaned_job, cancel_training, queue_cancel
from ktrdr_tasks.reschedule import reschedule
from ktrdr_tasks.runner import (
    STEP_BODIES,
    StepRun,
    cancel_cycles_of_revoked,
    cancel_revoked_cycle,
    lease_ttl_s,
    run_step,
)
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.steps import Step, step_of_task
from ktrdr_tasks.store import get_store
from ktrdr_tasks.training_api import get_client

__all__ = ["StepRun", "cancel_cycles_of_revoked", "cancel_training", "lease_ttl_s", "run_step"]

log = logging.getLogger("ktrdr_tasks.tasks")


def worker_services() -> Services:
    """This process's store, training client and settings (each created once per process)."""
    return Services(get_store(), get_client(), get_settings(), queue_cancel)


# -- the Celery binding ---------------------------------------------------------------------


def step_task(step: Step, **options: Any) -> Task:
    """Declare the Celery task of `step` (named from the step table) around its body.

    The task turns the settled outcome into Celery's terms, so Flower shows the truth: the
    same message again after the countdown (`reschedule`; Flower keeps showing the task
    started); the step's result (`SUCCESS`); `CycleOver` with the
    cycle's message where it failed or found it cancelled (`FAILURE`, logged as one line); a
    superseded run succeeds without its chain going on (the live run carries it).
    """
    # Retries of every step are bounded by the cycle's own budgets (KTRDR_POLL_MAX_ERRORS, the
    # training deadline), never by Celery's default max_retries of 3: `retry(max_retries=None)`
    # does not lift that default in Celery 5.7, only the task's own declaration does.
    options.setdefault("max_retries", None)
    options.setdefault("throws", (CycleOver,))
    options.setdefault("Request", "ktrdr_tasks.reschedule:StepRequest")
    options.setdefault("Strategy", "ktrdr_tasks.reschedule:step_strategy")

    @app.task(name=step.task_name, bind=True, **options)
    def run(self: Task, operation_id: str, new_cycle: dict[str, Any] | None = None) -> Any:
        outcome = run_step(
            step, operation_id, worker_services(), str(self.request.id), new_cycle=new_cycle
        )
        if isinstance(outcome, Reschedule):
            return reschedule(self, outcome.countdown)
        if isinstance(outcome, Fail):
            raise CycleOver(outcome.message)
        if isinstance(outcome, Ended) and not outcome.superseded:
            raise CycleOver(outcome.reason)
        if isinstance(outcome, Ended):
            self.request.chain = None  # the live run carries the cycle on
            return {"skipped": outcome.reason}
        return outcome

    run.__doc__ = STEP_BODIES[step].__doc__
    return run


# One task per step of the table (the names `tasks.poll_training` ... are what callers use).
design = step_task(Step.DESIGN)
load_training_params = step_task(Step.LOAD_TRAINING_PARAMS)
start_training = step_task(Step.START_TRAINING)
poll_training = step_task(Step.POLL_TRAINING)
training_gate = step_task(Step.TRAINING_GATE)
start_backtest = step_task(Step.START_BACKTEST)
poll_backtest = step_task(Step.POLL_BACKTEST)
backtest_gate = step_task(Step.BACKTEST_GATE)
assess = step_task(Step.ASSESS)


# -- housekeeping ---------------------------------------------------------------------------


@app.task(name="ktrdr.reconcile")
def reconcile() -> dict[str, list[str]]:
    """Resume or fail active cycles whose heartbeat went stale (see `reconciler.py`)."""
    return reconcile_cycles(worker_services(), time.time())


@app.task(name="ktrdr.cancel_revoked")
def cancel_revoked(task_ids: list[str]) -> list[str]:
    """A revoke through Celery's doors reached this worker: cancel the cycles it names."""
    return cancel_cycles_of_revoked(worker_services(), task_ids)


_celery_revoke = control.Panel.data["revoke"]


@control.control_command(name="revoke", variadic="task_id", signature="[id1 [id2 [... [idN]]]]")
def revoke_and_cancel(
    state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kwargs: Any
) -> Any:
    """Celery's own `revoke` control command, then: the revoked ids' cycles are cancelled.

    Every door (Flower's Revoke or Terminate, `celery control revoke`, `AsyncResult.revoke()`)
    sends this command to every worker, wherever the task's message is (queued, held as a
    countdown, not yet published by its chain). Runs in the worker's consumer, so the cancel
    itself is handed to a task.
    """
    answer = _celery_revoke(state, task_id, terminate=terminate, signal=signal, **kwargs)
    ids = [str(one) for one in maybe_list(task_id) or []]
    if ids:
        cancel_revoked.apply_async(args=(ids,))
    return answer


@task_revoked.connect
def cancel_on_revoke(
    sender: Task | None = None,
    request: Any = None,
    expired: bool = False,
    services: Services | None = None,
    **_: Any,
) -> None:
    """A worker dropped a revoked step (its id reached this worker by the `revoke` command or,
    for a worker started later, from its peers at start-up): cancel the cycle if it is still
    active, else make sure no remote job is left running. `services`: this process's unless
    the sender passes its own (a test does).
    """
    # The worker sends the task as `sender` and the message's context (task name in `.task`,
    # arguments in `.args`) as `request`.
    task_name = getattr(sender, "name", None) or getattr(request, "task", None) or ""
    args = getattr(request, "args", None) or ()
    if step_of_task(task_name) is None or not args or expired:
        return
    operation_id = str(args[0])
    try:
        services = services or worker_services()
        operation = services.store.find(operation_id)
        if operation is not None and not operation.status.is_terminal:
            cancel_revoked_cycle(
                services, operation_id, f"{getattr(request, 'id', '?')} ({task_name})"
            )
        else:
            cancel_orphaned_job(services.client, operation, services.requeue_cancel)
    except KtrdrTasksError as exc:
        log.warning("could not handle revoked task %s: %s", getattr(request, "id", "?"), exc)
