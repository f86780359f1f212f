"""What each step of a research cycle does, given the services it needs. No Celery here.

The runner (`runner.py`) holds the lease, enters the step and calls the step's body here
(`STEP_BODIES`); the tasks in `tasks.py` turn the outcome into Celery's terms. The functions
receive the store, the training client and the settings (`Services`, which a test builds
from fakeredis and an httpx MockTransport) and the operation as it stood when the step
began. A step tells its outcome in one vocabulary:

- a dict: done; the step's result (the next task reads the record, not this);
- `Reschedule(countdown)`: run the step again later (a poll whose job still runs);
- `Ended(reason)`: the cycle ended elsewhere (a cancel): stop without side effects;
- `Fail(message)`: the cycle fails with this message (the runner writes it, once).

Errors raised inside a step mean the same four things, read once by the runner: a
`TransientApiError` is retried within the one error budget, `CycleEnded` (a write that lost
to a cancel) is `Ended`, any other error of `ktrdr_tasks.errors` is `Fail` with its message.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ktrdr_tasks.backtest import (
    BacktestPoll,
    backtest_request,
    backtest_summary,
    backtest_window,
    read_backtest,
)
from ktrdr_tasks.errors import CycleEnded, OperationNotFoundError, StrategyError
from ktrdr_tasks.gates import (
    BacktestThresholds,
    TrainingThresholds,
    judge_backtest_result,
    judge_training_result,
)
from ktrdr_tasks.models import Operation, OperationStatus, Phase, Progress, iso, utc_now
from ktrdr_tasks.progress import training_progress
from ktrdr_tasks.remote import Requeue, cancel_remote, queue_cancel
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.steps import Step
from ktrdr_tasks.store import Store
from ktrdr_tasks.strategy import (
    load_strategy_config,
    strategy_path,
    training_params_for,
)
from ktrdr_tasks.training_api import (
    RemoteOperation,
    StartBacktestRequest,
    StartTrainingRequest,
    TrainingApiClient,
)

__all__ = ["Step"]  # re-exported: callers of the step functions name steps through here too

log = logging.getLogger("ktrdr_tasks.cycle")

EMPTY_RESULT_READS = 5


@dataclass(frozen=True)
class Services:
    """What a step may touch: Redis (through the store), the training API, the settings."""

    store: Store
    client: TrainingApiClient
    settings: Settings
    requeue_cancel: Requeue = queue_cancel

    def cancel_remote(self, training_id: str, reason: str) -> str:
        return cancel_remote(self.client, training_id, reason, self.requeue_cancel)


@dataclass(frozen=True)
class Reschedule:
    """Run this step again after `countdown` seconds.

    `changes` (keywords of `Store.update`) are written by the runner as it lets go of the
    step, in the same Redis call as the lease release: a poll costs one write, not two. Two
    reschedules are the same decision whatever they write.
    """

    countdown: float
    changes: Mapping[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Ended:
    """The cycle ended without this run: stop quietly. `superseded`: the cycle goes on, but
    another run carries it (a late duplicate of a passed step, a poll replaced by a resume)."""

    reason: str
    superseded: bool = False


@dataclass(frozen=True)
class Fail:
    """The cycle fails with `message`; `metadata` and `progress` are written with it."""

    message: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    progress: Progress | None = None


Outcome = dict[str, Any] | Reschedule | Ended | Fail


def thresholds_of(settings: Settings) -> TrainingThresholds:
    return TrainingThresholds.from_settings(settings)


def design_seed(operation_id: str) -> int:
    """A seed fixed per cycle (a redelivered design redoes the same design) yet new per cycle."""
    return int(hashlib.sha256(operation_id.encode()).hexdigest()[:8], 16)


def _update_or_stop(store: Store, operation_id: str, **changes: Any) -> None:
    if not store.update(operation_id, **changes):
        raise CycleEnded(f"{operation_id} ended while a step was writing")


def fail_cycle(store: Store, operation_id: str, message: str) -> bool:
    return store.finish(operation_id, OperationStatus.FAILED, error_message=message)


# -- design -------------------------------------------------------------------------------


DesignFunction = Callable[..., Any]


def run_design(
    store: Store,
    settings: Settings,
    operation: Operation,
    designer: DesignFunction,
    summarize: Callable[[dict[str, Any]], dict[str, Any]],
    renew_lease: Callable[[], None],
) -> str:
    """Produce the strategy: the requested file, or a new design. Returns its name."""
    op_id = operation.operation_id
    if operation.strategy_name:  # a redelivery after the design was recorded
        return operation.strategy_name

    requested = operation.metadata.get("requested_strategy")
    if requested:
        return _use_requested(store, settings, op_id, requested, summarize)

    def on_progress(percentage: float, step: str) -> None:
        renew_lease()
        _update_or_stop(
            store,
            op_id,
            progress=Progress(percentage=min(percentage, Step.DESIGN.end), current_step=step),
        )

    result = designer(
        settings,
        store.recent_history(50),
        seed=design_seed(op_id),
        on_progress=on_progress,
    )
    if not store.claim_metadata(op_id, "strategy_name", result.name):
        return _discard_late_design(store, op_id, result)
    _update_or_stop(
        store,
        op_id,
        progress=Progress(percentage=Step.DESIGN.end, current_step=f"Designed {result.name}"),
        metadata={
            "strategy_name": result.name,
            "strategy_path": str(result.path),
            "hypothesis": result.hypothesis,
            "design": summarize(result.config),
            "designer": result.designer,
        },
    )
    return result.name


def _use_requested(
    store: Store,
    settings: Settings,
    op_id: str,
    requested: str,
    summarize: Callable[[dict[str, Any]], dict[str, Any]],
) -> str:
    config = load_strategy_config(requested, settings.strategies_dir)
    _update_or_stop(
        store,
        op_id,
        progress=Progress(
            percentage=Step.DESIGN.end, current_step=f"Using existing strategy {requested}"
        ),
        metadata={
            "strategy_name": requested,
            "strategy_path": str(strategy_path(requested, settings.strategies_dir)),
            "design": summarize(config),
            "designer": "existing",
        },
    )
    return requested


def _discard_late_design(store: Store, op_id: str, result: Any) -> str:
    """Another run of this step (one whose lease lapsed) recorded its design first, and the
    chain goes on with that one: this design was never the cycle's."""
    recorded = store.get(op_id)
    if recorded.status.is_terminal:
        raise CycleEnded(f"cycle {recorded.status.value} during design")
    if recorded.strategy_name != result.name:
        result.path.unlink(missing_ok=True)
    log.warning(
        "%s: late design %s discarded; the cycle has %s", op_id, result.name, recorded.strategy_name
    )
    return str(recorded.strategy_name)


# -- training -----------------------------------------------------------------------------


def run_load_training_params(
    store: Store, settings: Settings, operation: Operation
) -> dict[str, Any]:
    name = operation.strategy_name
    if not name:
        raise StrategyError("the design step recorded no strategy name")
    _update_or_stop(
        store,
        operation.operation_id,
        progress=Progress(
            percentage=Step.LOAD_TRAINING_PARAMS.start,
            current_step=f"Loading strategy configuration {name}",
        ),
    )
    config = load_strategy_config(name, settings.strategies_dir)
    params = training_params_for(
        name,
        config,
        settings.strategies_dir,
        settings.training_start_date,
        settings.training_end_date,
    )
    _update_or_stop(
        store, operation.operation_id, metadata={"training_params": params.model_dump()}
    )
    return params.model_dump()


def run_start_training(services: Services, operation: Operation) -> Outcome:
    """Start the remote job once per cycle and store its id, closing the race with cancel."""
    store, op_id = services.store, operation.operation_id
    if operation.training_operation_id:  # redelivered after the id was stored: never POST twice
        return {"training_operation_id": operation.training_operation_id}
    name = operation.strategy_name or ""
    params = operation.metadata.get("training_params") or {}
    _update_or_stop(
        store,
        op_id,
        progress=Progress(
            percentage=Step.START_TRAINING.end, current_step=f"Starting training for {name}"
        ),
        bookkeeping={"training_start_requested_at": iso(utc_now())},
    )
    training_id = services.client.start_training(
        StartTrainingRequest(strategy_name=name, task_id=op_id, **params)
    )
    stored = store.update(
        op_id,
        metadata={"training_operation_id": training_id},
        bookkeeping={
            "training_deadline_ts": time.time() + services.settings.training_timeout_s,
        },
    )
    if not stored:
        # Cancelled between our POST and this write: the canceller could not see the id, so
        # this starter cancels the job it just started (queued if the API is down right now).
        services.cancel_remote(training_id, f"cycle {op_id} ended during start")
        return Ended(f"{op_id} ended while its training was starting")
    log.info("%s training started as %s", op_id, training_id, extra={"training_id": training_id})
    return {"training_operation_id": training_id}


def run_poll_training(services: Services, operation: Operation) -> Outcome:
    """One poll of the remote training: reschedule while it runs, done once it completed."""
    settings = services.settings
    training_id = operation.training_operation_id
    if not training_id:
        return Fail("training failed: no training operation id was stored by start_training")
    deadline = operation.bookkeeping.training_deadline_ts
    if deadline and time.time() > deadline:
        return Fail(
            f"training {training_id} timed out after {settings.training_timeout_s:.0f} s "
            "(KTRDR_TRAINING_TIMEOUT_S); the remote job was cancelled"
        )
    try:
        remote = services.client.get_operation(training_id)
    except OperationNotFoundError:
        return Fail(
            f"training service at {settings.safe_api_url()} no longer knows training {training_id} "
            "(it may have restarted); start a new cycle",
            metadata={"training_status": "not_found"},
        )

    progress = training_progress(remote, operation.strategy_name)
    if remote.is_running:
        changes = {"progress": progress, "metadata": {"training_status": remote.status}}
        return Reschedule(settings.poll_interval_s, changes)
    return _training_ended(services, operation, remote, progress)


def _training_ended(
    services: Services, operation: Operation, remote: RemoteOperation, progress: Progress
) -> Outcome:
    """The remote job is over: keep its result for the gate, or fail saying how it ended."""
    store, settings, op_id = services.store, services.settings, operation.operation_id
    training_id = operation.training_operation_id
    if remote.status == "failed":
        return Fail(
            f"training {training_id} failed on the training service: "
            f"{remote.error_message or 'no error message given'}",
            metadata={"training_status": "failed"},
        )
    if remote.status != "completed":
        return Fail(
            f"training {training_id} was cancelled on the training service",
            metadata={"training_status": "cancelled"},
        )
    if not remote.result_summary:
        # ktrdr can sync the result a moment after the status: read again, a few times.
        reads = operation.bookkeeping.empty_result_reads + 1
        if reads >= EMPTY_RESULT_READS:
            return Fail(
                f"training {training_id} completed but reported no result after {reads} "
                "reads; nothing to judge",
                metadata={"training_status": "completed"},
            )
        _update_or_stop(store, op_id, bookkeeping={"empty_result_reads": reads})
        return Reschedule(max(settings.poll_interval_s, 0.5))
    _update_or_stop(
        store,
        op_id,
        progress=Progress(
            percentage=Step.TRAINING_GATE.start,
            current_step="Training completed",
            context=progress.context,
        ),
        metadata={
            "training_status": "completed",
            "training_result": remote.result_summary,
            "model_path": remote.result_summary.get("model_path"),
        },
    )
    log.info("%s training %s completed", op_id, training_id)
    return {"training": "completed"}


def run_training_gate(store: Store, settings: Settings, operation: Operation) -> Outcome:
    """Judge the training; a failed gate fails the cycle with its reasons."""
    verdict = judge_training_result(
        operation.metadata.get("training_result"), thresholds_of(settings)
    )
    bypassed = bool(operation.metadata.get("bypass_gates"))
    gate = {
        "name": "training",
        "passed": verdict.passed,
        "outcome": "passed" if verdict.passed else ("bypassed" if bypassed else "failed"),
        "reasons": list(verdict.reasons),
        "metrics": verdict.metrics,
    }
    end = Step.TRAINING_GATE.end
    if not (verdict.passed or bypassed):
        return Fail(
            f"Training gate failed: {verdict.reason}",
            metadata={"gate": gate},
            progress=Progress(percentage=end, current_step="Training gate failed"),
        )
    _update_or_stop(
        store,
        operation.operation_id,
        progress=Progress(percentage=end, current_step=f"Training gate {gate['outcome']}"),
        metadata={"gate": gate},
    )
    return {"gate": gate["outcome"]}


# -- backtest -----------------------------------------------------------------------------


def run_start_backtest(services: Services, operation: Operation) -> Outcome:
    """Start the out-of-sample backtest of the trained model once per cycle, and store its id.

    The same race with a cancel as the training's start, closed the same way. A ktrdr
    backend has no idempotency key for backtests (the reference host honours `task_id`), so
    a stored id means never again.
    """
    store, settings, op_id = services.store, services.settings, operation.operation_id
    if operation.backtest_operation_id:
        return {"backtest_operation_id": operation.backtest_operation_id}
    meta = operation.metadata
    model_path = meta.get("model_path")
    if not model_path:
        return Fail("starting backtest failed: the training reported no model_path to backtest")
    name = operation.strategy_name or ""
    params = meta.get("training_params") or {}
    window = backtest_window(
        params.get("start_date"),
        params.get("end_date"),
        start=settings.backtest_start_date,
        end=settings.backtest_end_date,
        today=utc_now().date(),
    )
    fields = backtest_request(
        name, params.get("symbols") or [], params.get("timeframes") or [], model_path, window
    )
    _update_or_stop(
        store,
        op_id,
        progress=Progress(
            percentage=Step.START_BACKTEST.end,
            current_step=f"Starting backtest of {name} on {fields['symbol']} "
            f"{fields['timeframe']}, {window.start_date}..{window.end_date}",
        ),
        metadata={
            "backtest_window": {"start_date": window.start_date, "end_date": window.end_date}
        },
    )
    backtest_id = services.client.start_backtest(
        StartBacktestRequest(**fields, task_id=f"{op_id}-backtest")
    )
    stored = store.update(
        op_id,
        metadata={"backtest_operation_id": backtest_id},
        bookkeeping={"backtest_deadline_ts": time.time() + settings.backtest_timeout_s},
    )
    if not stored:
        services.cancel_remote(backtest_id, f"cycle {op_id} ended during backtest start")
        return Ended(f"{op_id} ended while its backtest was starting")
    log.info("%s backtest started as %s", op_id, backtest_id)
    return {"backtest_operation_id": backtest_id}


def run_poll_backtest(services: Services, operation: Operation) -> Outcome:
    """One poll of the remote backtest: reschedule while it runs, done once it has metrics."""
    store, settings, op_id = services.store, services.settings, operation.operation_id
    backtest_id = operation.backtest_operation_id
    if not backtest_id:
        return Fail("backtesting failed: no backtest operation id was stored by start_backtest")
    deadline = operation.bookkeeping.backtest_deadline_ts
    if deadline and time.time() > deadline:
        return Fail(
            f"backtest {backtest_id} timed out after {settings.backtest_timeout_s:.0f} s "
            "(KTRDR_BACKTEST_TIMEOUT_S); the remote job was cancelled"
        )
    try:
        remote = services.client.get_operation(backtest_id)
    except OperationNotFoundError:
        return Fail(
            f"training service at {settings.safe_api_url()} no longer knows backtest {backtest_id} "
            "(it may have restarted); start a new cycle",
            metadata={"backtest_status": "not_found"},
        )
    poll = read_backtest(remote, backtest_id)
    if poll.state == "running" and remote.status != "completed":
        _update_or_stop(
            store, op_id, progress=poll.progress, metadata={"backtest_status": remote.status}
        )
        return Reschedule(settings.poll_interval_s)
    return _backtest_ended(services, operation, poll, remote.status)


def _backtest_ended(
    services: Services, operation: Operation, poll: BacktestPoll, remote_status: str
) -> Outcome:
    """The remote backtest is over: keep its result for the gate, or fail saying how it ended."""
    store, settings, op_id = services.store, services.settings, operation.operation_id
    if poll.state == "failed":
        return Fail(poll.message or "backtest failed", metadata={"backtest_status": remote_status})
    if poll.state == "running":  # completed, but without metrics yet
        # ktrdr can sync the result a moment after the status: read again, a few times.
        reads = operation.bookkeeping.backtest_empty_reads + 1
        if reads >= EMPTY_RESULT_READS:
            return Fail(
                f"backtest {operation.backtest_operation_id} completed but reported no metrics "
                f"after {reads} reads; nothing to judge",
                metadata={"backtest_status": "completed"},
            )
        _update_or_stop(store, op_id, bookkeeping={"backtest_empty_reads": reads})
        return Reschedule(max(settings.poll_interval_s, 0.5))
    _update_or_stop(
        store,
        op_id,
        progress=poll.progress,
        metadata={
            "backtest_status": "completed",
            "backtest_result": poll.result,
            "backtest": backtest_summary(poll.result),
        },
    )
    return {"backtest": "completed"}


def run_backtest_gate(store: Store, settings: Settings, operation: Operation) -> Outcome:
    """Judge the backtest; a failed gate fails the cycle naming the metric."""
    verdict = judge_backtest_result(
        operation.metadata.get("backtest_result"), BacktestThresholds.from_settings(settings)
    )
    gate = verdict.record("backtest", bypassed=bool(operation.metadata.get("bypass_gates")))
    end = Step.BACKTEST_GATE.end
    if gate["outcome"] == "failed":
        return Fail(
            f"Backtest gate failed: {verdict.reason}",
            metadata={"backtest_gate": gate},
            progress=Progress(percentage=end, current_step="Backtest gate failed"),
        )
    _update_or_stop(
        store,
        operation.operation_id,
        progress=Progress(percentage=end, current_step=f"Backtest gate {gate['outcome']}"),
        metadata={"backtest_gate": gate},
    )
    return {"backtest_gate": gate["outcome"]}


# -- the phase still to come --------------------------------------------------------------


def verdicts(operation: Operation) -> str:
    """`training gate passed, backtest gate bypassed`: both gates' outcomes, for the record."""
    meta = operation.metadata
    training = (meta.get("gate") or {}).get("outcome", "not run")
    backtest = (meta.get("backtest_gate") or {}).get("outcome", "not run")
    return f"training gate {training}, backtest gate {backtest}"


def run_stub_phase(store: Store, operation: Operation, step: Step) -> dict[str, Any]:
    """The assessment is not built yet: say so in the record, do not pretend."""
    _update_or_stop(
        store,
        operation.operation_id,
        progress=Progress(percentage=step.start, current_step=f"{step.label.capitalize()} (stub)"),
        metadata={
            "assessment": {
                "stub": True,
                "message": f"assessment phase not implemented yet; {verdicts(operation)}",
            }
        },
    )
    return {"assessment": "stub"}


def run_assess(store: Store, operation: Operation) -> Outcome:
    """The (stub) assessment, then the cycle is completed."""
    run_stub_phase(store, operation, Step.ASSESS)
    if not complete_cycle(store, store.get(operation.operation_id)):
        return Ended("cycle ended before it could complete")
    log.info("%s completed", operation.operation_id)
    return {"status": "completed"}


def complete_cycle(store: Store, operation: Operation) -> bool:
    meta = operation.metadata
    gate = meta.get("gate") or {}
    summary = {
        "phase": "backtested",
        "strategy_name": meta.get("strategy_name"),
        "strategy_path": meta.get("strategy_path"),
        "training_operation_id": meta.get("training_operation_id"),
        "model_path": meta.get("model_path"),
        "gate": gate.get("outcome"),
        "metrics": gate.get("metrics"),
        "backtest_operation_id": meta.get("backtest_operation_id"),
        "backtest_gate": (meta.get("backtest_gate") or {}).get("outcome"),
        "backtest": meta.get("backtest"),
        "assessment": f"stub: not implemented yet ({verdicts(operation)})",
    }
    return store.finish(
        operation.operation_id,
        OperationStatus.COMPLETED,
        result_summary=summary,
        phase=Phase.DONE,
        progress=Progress(percentage=Step.ASSESS.end, current_step="Research cycle completed"),
    )


# -- the step bodies: what the runner calls for each step of the table ------------------------


@dataclass(frozen=True)
class StepRun:
    """What a step's body gets: the services, the record as the step began, the run."""

    services: Services
    operation: Operation
    task_id: str
    renew_lease: Callable[[], None]


StepBody = Callable[[StepRun], Outcome]

STEP_BODIES: dict[Step, StepBody] = {}
"""Each step's body; the step functions it calls are looked up when called (so a test worker
can wrap them)."""


def step_body(step: Step) -> Callable[[StepBody], StepBody]:
    def register(body: StepBody) -> StepBody:
        STEP_BODIES[step] = body
        return body

    return register


@step_body(Step.DESIGN)
def _design_body(run: StepRun) -> Outcome:
    """Design a strategy (or take the requested one) and save it under strategies/."""
    from ktrdr_tasks.design import design_strategy, summarize_design

    services = run.services
    name = run_design(
        services.store,
        services.settings,
        run.operation,
        design_strategy,
        summarize_design,
        run.renew_lease,
    )
    return {"strategy_name": name}


@step_body(Step.LOAD_TRAINING_PARAMS)
def _load_training_params(run: StepRun) -> Outcome:
    """Read symbols, timeframes and dates from the strategy file."""
    return run_load_training_params(run.services.store, run.services.settings, run.operation)


@step_body(Step.START_TRAINING)
def _start_training(run: StepRun) -> Outcome:
    """Start the remote training once and store its operation id."""
    return run_start_training(run.services, run.operation)


@step_body(Step.POLL_TRAINING)
def _poll_training(run: StepRun) -> Outcome:
    """Poll the remote training; re-schedule itself until it ends, never holding a slot."""
    owner = run.operation.bookkeeping.poll_task_id
    if owner and owner != run.task_id:
        return Ended("a resumed poll owns this cycle now", superseded=True)
    return run_poll_training(run.services, run.operation)


@step_body(Step.TRAINING_GATE)
def _training_gate(run: StepRun) -> Outcome:
    """Judge the training metrics against the gate thresholds."""
    return run_training_gate(run.services.store, run.services.settings, run.operation)


@step_body(Step.START_BACKTEST)
def _start_backtest(run: StepRun) -> Outcome:
    """Start the out-of-sample backtest of the trained model once and store its id."""
    return run_start_backtest(run.services, run.operation)


@step_body(Step.POLL_BACKTEST)
def _poll_backtest(run: StepRun) -> Outcome:
    """Poll the remote backtest; re-schedule itself until it ends, never holding a slot."""
    owner = run.operation.bookkeeping.backtest_poll_task_id
    if owner and owner != run.task_id:
        return Ended("a resumed backtest poll owns this cycle now", superseded=True)
    return run_poll_backtest(run.services, run.operation)


@step_body(Step.BACKTEST_GATE)
def _backtest_gate(run: StepRun) -> Outcome:
    """Judge the backtest metrics against the gate thresholds."""
    return run_backtest_gate(run.services.store, run.services.settings, run.operation)


@step_body(Step.ASSESS)
def _assess(run: StepRun) -> Outcome:
    """Stub assessment, then the cycle is completed."""
    return run_assess(run.services.store, run.operation)
