"""What each step of a research cycle does, given a store, a training client and settings.

The Celery tasks in `tasks.py` are a thin shell around these functions: they find the
operation, hold the lease, call one function here and decide about retries. Keeping the work
here means it runs the same under a worker, the reconciler or a test.

Outcomes are told by exceptions of `ktrdr_tasks.errors` (transient: retry; anything else: the
cycle fails with the message) and by `CycleStopped` (the cycle ended elsewhere, e.g. a cancel:
stop quietly).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ktrdr_tasks.errors import (
    KtrdrTasksError,
    OperationNotFoundError,
    PermanentApiError,
    StrategyError,
    TransientApiError,
)
from ktrdr_tasks.gates import TrainingThresholds, judge_training_result
from ktrdr_tasks.models import Operation, OperationStatus, Phase, Progress, iso, utc_now
from ktrdr_tasks.progress import GATE_END, GATE_START, training_progress
from ktrdr_tasks.settings import Settings
from ktrdr_tasks.store import Store
from ktrdr_tasks.strategy import (
    load_strategy_config,
    strategy_path,
    training_params_for,
)
from ktrdr_tasks.training_api import StartTrainingRequest, TrainingApiClient

log = logging.getLogger("ktrdr_tasks.cycle")

EMPTY_RESULT_READS = 5


class Step(IntEnum):
    """Positions in the chain; the store lets the recorded step move only forward."""

    DESIGN = 1
    LOAD_TRAINING_PARAMS = 2
    START_TRAINING = 3
    POLL_TRAINING = 4
    TRAINING_GATE = 5
    BACKTEST = 6
    ASSESS = 7


STEP_PHASES = {
    Step.DESIGN: Phase.DESIGNING,
    Step.LOAD_TRAINING_PARAMS: Phase.TRAINING,
    Step.START_TRAINING: Phase.TRAINING,
    Step.POLL_TRAINING: Phase.TRAINING,
    Step.TRAINING_GATE: Phase.TRAINING,
    Step.BACKTEST: Phase.BACKTESTING,
    Step.ASSESS: Phase.ASSESSING,
}


class CycleStopped(KtrdrTasksError):
    """The cycle ended (cancelled, failed) or moved on without this run: stop quietly."""


class CycleFailed(KtrdrTasksError):
    """The cycle failed for a reason the step already wrote down."""


@dataclass(frozen=True)
class PollOutcome:
    finished: bool
    countdown: float = 0.0


def thresholds_of(settings: Settings) -> TrainingThresholds:
    return TrainingThresholds(
        min_accuracy=settings.gate_min_accuracy,
        max_loss=settings.gate_max_loss,
        min_loss_decrease=settings.gate_min_loss_decrease,
    )


def design_seed(operation_id: str) -> int:
    """A seed fixed per cycle (a redelivered design redoes the same design) yet new per cycle."""
    return int(hashlib.sha256(operation_id.encode()).hexdigest()[:8], 16)


def _update_or_stop(store: Store, operation_id: str, **changes: Any) -> None:
    if not store.update(operation_id, **changes):
        raise CycleStopped(f"{operation_id} ended while a step was writing")


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
        config = load_strategy_config(requested, settings.strategies_dir)
        path = strategy_path(requested, settings.strategies_dir)
        _update_or_stop(
            store,
            op_id,
            progress=Progress(percentage=30, current_step=f"Using existing strategy {requested}"),
            metadata={
                "strategy_name": requested,
                "strategy_path": str(path),
                "design": summarize(config),
                "designer": "existing",
            },
        )
        return requested

    def on_progress(percentage: float, step: str) -> None:
        renew_lease()
        _update_or_stop(
            store, op_id, progress=Progress(percentage=min(percentage, 30.0), current_step=step)
        )

    result = designer(
        settings,
        store.recent_history(50),
        seed=design_seed(op_id),
        on_progress=on_progress,
    )
    if not store.claim_metadata(op_id, "strategy_name", result.name):
        # Another run of this step (one whose lease lapsed) recorded its design first, and the
        # chain goes on with that one: this design was never the cycle's.
        recorded = store.get(op_id)
        if recorded.status.is_terminal:
            raise CycleStopped(f"cycle {recorded.status.value} during design")
        if recorded.strategy_name != result.name:
            result.path.unlink(missing_ok=True)
        log.warning(
            "%s: late design %s discarded; the cycle has %s",
            op_id,
            result.name,
            recorded.strategy_name,
        )
        return str(recorded.strategy_name)
    _update_or_stop(
        store,
        op_id,
        progress=Progress(percentage=30, current_step=f"Designed {result.name}"),
        metadata={
            "strategy_name": result.name,
            "strategy_path": str(result.path),
            "hypothesis": result.hypothesis,
            "design": summarize(result.config),
            "designer": result.designer,
        },
    )
    return result.name


# -- training -----------------------------------------------------------------------------


def run_load_training_params(store: Store, settings: Settings, operation: Operation) -> dict:
    name = operation.strategy_name
    if not name:
        raise StrategyError("the design step recorded no strategy name")
    _update_or_stop(
        store,
        operation.operation_id,
        progress=Progress(percentage=30, current_step=f"Loading strategy configuration {name}"),
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


def run_start_training(
    store: Store, client: TrainingApiClient, settings: Settings, operation: Operation
) -> str:
    """Start the remote job once per cycle and store its id, closing the race with cancel."""
    op_id = operation.operation_id
    if operation.training_operation_id:  # redelivered after the id was stored: never POST twice
        return operation.training_operation_id
    name = operation.strategy_name or ""
    params = operation.metadata.get("training_params") or {}
    _update_or_stop(
        store,
        op_id,
        progress=Progress(percentage=35, current_step=f"Starting training for {name}"),
        metadata={"training_start_requested_at": iso(utc_now())},
    )
    training_id = client.start_training(
        StartTrainingRequest(strategy_name=name, task_id=op_id, **params)
    )
    stored = store.update(
        op_id,
        metadata={
            "training_operation_id": training_id,
            "training_deadline_ts": time.time() + settings.training_timeout_s,
            "poll_errors": 0,
        },
    )
    if not stored:
        # Cancelled between our POST and this write: the canceller could not see the id,
        # so this starter cancels the job it just started. No orphan either way.
        cancel_remote_quietly(client, training_id, f"cycle {op_id} ended during start")
        raise CycleStopped(f"{op_id} ended while its training was starting")
    log.info("%s training started as %s", op_id, training_id)
    return training_id


def cancel_remote_quietly(client: TrainingApiClient, training_id: str, reason: str) -> bool:
    """Cancel a remote job; False if the API could not be reached (the caller re-queues)."""
    try:
        outcome = client.cancel_operation(training_id, reason)
    except TransientApiError as exc:
        log.warning("cancel of training %s not delivered yet: %s", training_id, exc)
        return False
    except PermanentApiError as exc:
        log.warning("training API refused to cancel %s: %s", training_id, exc)
        return True
    log.info("training %s cancel: %s", training_id, outcome)
    return True


def fail_cycle(store: Store, operation_id: str, message: str) -> bool:
    return store.finish(operation_id, OperationStatus.FAILED, error_message=message)


def run_poll_training(
    store: Store, client: TrainingApiClient, settings: Settings, operation: Operation
) -> tuple[PollOutcome, str | None]:
    """One poll. Returns the outcome and, when the cycle must stop, a training id to cancel."""
    op_id = operation.operation_id
    training_id = operation.training_operation_id
    if not training_id:
        raise StrategyError("no training operation id was stored by start_training")
    meta = operation.metadata
    deadline = float(meta.get("training_deadline_ts") or 0)
    if deadline and time.time() > deadline:
        fail_cycle(
            store,
            op_id,
            f"training {training_id} timed out after {settings.training_timeout_s:.0f} s "
            "(KTRDR_TRAINING_TIMEOUT_S); the remote job was cancelled",
        )
        return PollOutcome(finished=True), training_id

    try:
        remote = client.get_operation(training_id)
    except TransientApiError as exc:
        errors = int(meta.get("poll_errors") or 0) + 1
        if errors >= settings.poll_max_errors:
            fail_cycle(
                store,
                op_id,
                f"training API at {settings.api_url} failed {errors} polls in a row "
                f"(KTRDR_POLL_MAX_ERRORS={settings.poll_max_errors}): {exc}",
            )
            return PollOutcome(finished=True), training_id
        _update_or_stop(store, op_id, metadata={"poll_errors": errors, "last_poll_error": str(exc)})
        log.warning("%s poll %d/%d failed: %s", op_id, errors, settings.poll_max_errors, exc)
        return PollOutcome(finished=False, countdown=settings.poll_interval_s), None
    except OperationNotFoundError:
        fail_cycle(
            store,
            op_id,
            f"training service at {settings.api_url} no longer knows training {training_id} "
            "(it may have restarted); start a new cycle",
        )
        return PollOutcome(finished=True), None

    progress = training_progress(remote, operation.strategy_name)
    if remote.is_running:
        _update_or_stop(
            store,
            op_id,
            progress=progress,
            metadata={"poll_errors": 0, "training_status": remote.status},
        )
        return PollOutcome(finished=False, countdown=settings.poll_interval_s), None

    if remote.status == "completed":
        if not remote.result_summary:
            # ktrdr can sync the result a moment after the status: read again, a few times.
            reads = int(meta.get("empty_result_reads") or 0) + 1
            if reads >= EMPTY_RESULT_READS:
                fail_cycle(
                    store,
                    op_id,
                    f"training {training_id} completed but reported no result after {reads} "
                    "reads; nothing to judge",
                )
                return PollOutcome(finished=True), None
            _update_or_stop(store, op_id, metadata={"empty_result_reads": reads})
            return PollOutcome(finished=False, countdown=max(settings.poll_interval_s, 0.5)), None
        _update_or_stop(
            store,
            op_id,
            progress=Progress(
                percentage=GATE_START, current_step="Training completed", context=progress.context
            ),
            metadata={
                "training_status": "completed",
                "training_result": remote.result_summary,
                "model_path": remote.result_summary.get("model_path"),
            },
        )
        return PollOutcome(finished=True), None

    if remote.status == "failed":
        fail_cycle(
            store,
            op_id,
            f"training {training_id} failed on the training service: "
            f"{remote.error_message or 'no error message given'}",
        )
    else:
        fail_cycle(store, op_id, f"training {training_id} was cancelled on the training service")
    raise CycleFailed("training did not complete")


def run_training_gate(store: Store, settings: Settings, operation: Operation) -> bool:
    """Judge the training; True to go on. A failed gate fails the cycle with its reasons."""
    op_id = operation.operation_id
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
    if verdict.passed or bypassed:
        _update_or_stop(
            store,
            op_id,
            progress=Progress(percentage=GATE_END, current_step=f"Training gate {gate['outcome']}"),
            metadata={"gate": gate},
        )
        return True
    store.finish(
        op_id,
        OperationStatus.FAILED,
        error_message=f"Training gate failed: {verdict.reason}",
        metadata={"gate": gate},
        progress=Progress(percentage=GATE_END, current_step="Training gate failed"),
    )
    return False


def run_stub_phase(store: Store, operation: Operation, step: Step) -> None:
    """Backtest and assessment are not built yet: say so in the record, do not pretend."""
    name = "backtest" if step is Step.BACKTEST else "assessment"
    percentage = 95.0 if step is Step.BACKTEST else 99.0
    _update_or_stop(
        store,
        operation.operation_id,
        progress=Progress(percentage=percentage, current_step=f"{name.capitalize()} (stub)"),
        metadata={name: {"stub": True, "message": f"{name} phase not implemented yet"}},
    )


def complete_cycle(store: Store, operation: Operation) -> bool:
    meta = operation.metadata
    gate = meta.get("gate") or {}
    summary = {
        "phase": "trained",
        "strategy_name": meta.get("strategy_name"),
        "strategy_path": meta.get("strategy_path"),
        "training_operation_id": meta.get("training_operation_id"),
        "model_path": meta.get("model_path"),
        "gate": gate.get("outcome"),
        "metrics": gate.get("metrics"),
        "backtest": "stub: not implemented yet",
        "assessment": "stub: not implemented yet",
    }
    return store.finish(
        operation.operation_id,
        OperationStatus.COMPLETED,
        result_summary=summary,
        phase=Phase.DONE,
        progress=Progress(percentage=100, current_step="Research cycle completed"),
    )
