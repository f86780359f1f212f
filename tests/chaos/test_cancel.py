"""Cancel in every phase: the cycle ends `cancelled`, a started remote job is cancelled, and
nothing of the cycle runs afterwards (no request to the training service, no record change).

Includes the narrow window between `POST /trainings/start` and storing the job's id: the
canceller cannot see the id, so the starter must cancel the job it just started.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ktrdr_tasks import workflow
from tests.chaos.conftest import ScriptedApi, record, wait_for_condition, write_strategy
from tests.support.fake_training_api import Behaviour
from tests.support.processes import Process

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

HOLD_S = 2.5


def _requests_after(api: ScriptedApi, moment: float, op_id: str, training_id: str | None) -> list:
    """Requests about this cycle that arrived after `moment`, cancels excepted."""
    with api.lock:
        arrived = list(api.arrived)
    return [
        (method, path)
        for at, method, path, body in arrived
        if at > moment
        and method != "DELETE"
        and (
            (isinstance(body, dict) and body.get("task_id") == op_id)
            or (training_id is not None and path.endswith(training_id))
        )
    ]


def _assert_nothing_runs_afterwards(
    api: ScriptedApi, op_id: str, cancelled_at: float, snapshot: dict[str, Any]
) -> None:
    training_id = api.training_id_for(op_id)
    assert _requests_after(api, cancelled_at, op_id, training_id) == []
    assert record(op_id) == snapshot, "the record changed after the cancel"


def test_cancel_of_a_queued_cycle_holds_when_the_worker_starts_later(
    workers: Callable[..., Process], chaos_api: ScriptedApi, chaos_strategies: Path
) -> None:
    # No worker is running: revoke reaches nobody, so only the record stops the chain.
    name = write_strategy(chaos_strategies, "cancel_queued")
    op_id = workflow.trigger(strategy=name).operation_id
    answer = workflow.cancel(op_id)
    cancelled_at = time.time()
    snapshot = record(op_id)
    assert answer["status"] == "cancelled"

    worker = workers(name="late")
    wait_for_condition(lambda: op_id in worker.log(), 15, "the worker to receive the chain")
    time.sleep(1.0)

    assert chaos_api.starts_for(op_id) == 0
    _assert_nothing_runs_afterwards(chaos_api, op_id, cancelled_at, snapshot)


# phase -> (strategy prefix, step, extra condition on the record)
PHASES = {
    "design": ("slowdesign", 1),
    "load_training_params": ("slowload", 2),
    "start_in_flight": ("slowstart", 3),
    "poll_training": ("slowpoll", 4),
    "training_gate": ("slowgate", 5),
}


def test_cancel_in_every_running_phase_cancels_remote_and_stops_the_chain(
    workers: Callable[..., Process], chaos_api: ScriptedApi, chaos_strategies: Path
) -> None:
    names = {
        phase: write_strategy(chaos_strategies, f"{prefix}_cancel")
        for phase, (prefix, _) in PHASES.items()
    }
    chaos_api.behaviours[names["poll_training"]] = Behaviour(outcome="never")
    chaos_api.behaviours[names["training_gate"]] = Behaviour(polls=1)
    chaos_api.start_delays = {"slowstart": HOLD_S}
    hold = str(HOLD_S)
    worker = workers(
        concurrency=6,
        name="cancel",
        extra_env={
            "CHAOS_DESIGN_DELAY_S": hold,
            "CHAOS_LOAD_DELAY_S": hold,
            "CHAOS_GATE_DELAY_S": hold,
        },
    )
    ids = {phase: workflow.trigger(strategy=name).operation_id for phase, name in names.items()}

    def in_phase(phase: str) -> bool:
        current = record(ids[phase])
        if current["step"] != PHASES[phase][1]:
            return False
        if phase == "start_in_flight":
            return chaos_api.start_arrived(ids[phase])
        if phase == "poll_training":
            return bool(current["metadata"].get("training_status"))
        return True

    cancelled: dict[str, tuple[float, dict]] = {}
    deadline = time.monotonic() + 30
    while len(cancelled) < len(PHASES) and time.monotonic() < deadline:
        for phase in PHASES:
            if phase not in cancelled and in_phase(phase):
                answer = workflow.cancel(ids[phase])
                assert answer["status"] == "cancelled"
                cancelled[phase] = (time.time(), record(ids[phase]))
        time.sleep(0.02)
    assert sorted(cancelled) == sorted(PHASES), "some cycles never reached their phase"

    # The start in flight: the canceller saw no id, so the starter cancels its own job.
    start_op = ids["start_in_flight"]
    wait_for_condition(lambda: chaos_api.training_id_for(start_op), 10, "the start to answer")
    start_job = chaos_api.training_id_for(start_op)
    wait_for_condition(
        lambda: chaos_api.jobs[start_job].status == "cancelled", 10, "the starter's cancel"
    )
    poll_job = chaos_api.training_id_for(ids["poll_training"])
    assert chaos_api.jobs[poll_job].status == "cancelled"

    time.sleep(HOLD_S + 1.5)  # every held step has woken up and found the cycle cancelled
    for phase, (cancelled_at, snapshot) in cancelled.items():
        assert record(ids[phase])["status"] == "cancelled", phase
        _assert_nothing_runs_afterwards(chaos_api, ids[phase], cancelled_at, snapshot)
    for phase in ("design", "load_training_params"):
        assert chaos_api.starts_for(ids[phase]) == 0, phase
    for phase in ("start_in_flight", "poll_training", "training_gate"):
        assert chaos_api.starts_for(ids[phase]) == 1, phase
    assert "crashed" not in worker.log()
    print("cancel: " + ", ".join(f"{phase} -> {record(ids[phase])['status']}" for phase in PHASES))
