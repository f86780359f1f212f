"""Full research cycles through a real redis-server and a real Celery worker subprocess,
against a scripted training service that speaks ktrdr's HTTP contract."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from ktrdr_tasks.errors import StrategyError
from ktrdr_tasks.store import get_store
from tests.integration.conftest import wait_for, wait_for_condition, write_strategy
from tests.support.fake_training_api import POOR_RESULT, Behaviour, FakeTrainingApi
from tests.support.processes import Process

pytestmark = pytest.mark.integration


def _training_id(operation_id: str) -> str | None:
    return workflow.status(operation_id)["metadata"].get("training_operation_id")


def test_gates_pass_completes_with_training_and_backtest_metrics(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "cycle_gate_pass")
    fake_api.behaviours[name] = Behaviour(polls=6)

    started = time.monotonic()
    result = workflow.trigger(strategy=name)
    record = wait_for(result.operation_id, {"completed", "failed", "cancelled"})
    elapsed = time.monotonic() - started

    assert record["status"] == "completed", record["error_message"]
    assert record["phase"] == "done"
    assert record["progress"]["percentage"] == 100
    meta = record["metadata"]
    assert meta["gate"]["outcome"] == "passed"
    assert meta["gate"]["metrics"]["accuracy"] == pytest.approx(0.61)
    assert meta["model_path"] == "models/fake/1h_v1"
    assert meta["backtest_gate"]["outcome"] == "passed"
    assert meta["backtest"]["trades"] == 6 and meta["assessment"]["stub"] is True
    assert record["result_summary"]["backtest_gate"] == "passed"
    assert "stub" in record["result_summary"]["assessment"]
    # The poll re-scheduled itself more than Celery's default max_retries (3) allows.
    assert len(fake_api.calls("GET", f"/api/v1/operations/{meta['training_operation_id']}")) >= 6
    assert fake_api.starts_for(result.operation_id) == 1
    start = fake_api.calls("POST", "/api/v1/trainings/start")[-1].body
    assert start["symbols"] == ["EURUSD"] and start["timeframes"] == ["1h"]
    print(f"one integration cycle took {elapsed:.2f} s")


def test_gate_fail_fails_with_reason(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "cycle_gate_fail")
    fake_api.behaviours[name] = Behaviour(polls=2, result=POOR_RESULT)

    record = wait_for(workflow.trigger(strategy=name).operation_id, {"completed", "failed"})

    assert record["status"] == "failed"
    assert record["error_message"].startswith("Training gate failed: accuracy_below_threshold")
    assert "loss_too_high" in record["error_message"]
    assert record["metadata"]["gate"]["outcome"] == "failed"


def test_bypass_gates_records_bypassed_and_completes(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "cycle_gate_bypass")
    fake_api.behaviours[name] = Behaviour(polls=2, result=POOR_RESULT)

    result = workflow.trigger(strategy=name, bypass_gates=True)
    record = wait_for(result.operation_id, {"completed", "failed"})

    assert record["status"] == "completed"
    assert record["metadata"]["gate"]["outcome"] == "bypassed"


def test_remote_failure_fails_with_remote_message(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "cycle_remote_fail")
    fake_api.behaviours[name] = Behaviour(
        polls=1, outcome="failed", error_message="No data found in cache for GBPUSD 1h"
    )

    record = wait_for(workflow.trigger(strategy=name).operation_id, {"completed", "failed"})

    assert record["status"] == "failed"
    assert "No data found in cache for GBPUSD 1h" in record["error_message"]


def test_cancel_while_training_cancels_remote_job_and_stops_polling(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "cycle_cancel")
    fake_api.behaviours[name] = Behaviour(outcome="never")
    op_id = workflow.trigger(strategy=name).operation_id
    wait_for_condition(lambda: _training_id(op_id), 30, "training to start")
    training_id = _training_id(op_id)
    polls = f"/api/v1/operations/{training_id}"
    wait_for_condition(lambda: len(fake_api.calls("GET", polls)) >= 2, 30, "two polls")

    answer = workflow.cancel(op_id)

    assert answer["status"] == "cancelled"
    assert answer["cancelled_training_operation_id"] == training_id
    deletes = fake_api.calls("DELETE", polls)
    assert deletes, "the remote job was not cancelled"
    assert fake_api.jobs[training_id].status == "cancelled"
    time.sleep(1.5)  # several poll intervals
    late = [r for r in fake_api.calls("GET", polls) if r.at > deletes[0].at + 0.1]
    assert late == [], "the cycle kept polling after its cancel"
    assert workflow.status(op_id)["status"] == "cancelled"


def test_api_refusing_connections_for_three_polls_then_back_completes(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "cycle_api_outage")
    fake_api.behaviours[name] = Behaviour(polls=4)
    op_id = workflow.trigger(strategy=name).operation_id
    wait_for_condition(lambda: _training_id(op_id), 30, "training to start")

    fake_api.stop()
    wait_for_condition(
        lambda: get_store().get(op_id).bookkeeping.transient_errors >= 3,
        30,
        "three failed polls",
    )
    fake_api.start()
    record = wait_for(op_id, {"completed", "failed"})

    assert record["status"] == "completed", record["error_message"]
    assert fake_api.starts_for(op_id) == 1


def test_operation_lost_by_the_service_fails_with_message(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "cycle_lost_remote")
    fake_api.behaviours[name] = Behaviour(outcome="never")
    op_id = workflow.trigger(strategy=name).operation_id
    wait_for_condition(lambda: _training_id(op_id), 30, "training to start")

    with fake_api.lock:
        fake_api.jobs.pop(_training_id(op_id))
    record = wait_for(op_id, {"completed", "failed"})

    assert record["status"] == "failed"
    assert "no longer knows training" in record["error_message"]


def test_strategy_without_symbols_fails_naming_the_field(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(
        strategies_dir,
        "cycle_no_symbols",
        training_data={"timeframes": {"mode": "single", "timeframe": "1h"}},
    )

    record = wait_for(workflow.trigger(strategy=name).operation_id, {"completed", "failed"})

    assert record["status"] == "failed"
    assert "training_data.symbols" in record["error_message"]
    assert f"{name}.yaml" in record["error_message"]
    assert fake_api.starts_for(record["operation_id"]) == 0


def test_designed_cycle_writes_a_strategy_and_completes(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    record = wait_for(workflow.trigger().operation_id, {"completed", "failed"}, timeout=90)

    assert record["status"] == "completed", record["error_message"]
    name = record["metadata"]["strategy_name"]
    assert (strategies_dir / f"{name}.yaml").is_file()
    start = [
        r.body
        for r in fake_api.calls("POST", "/api/v1/trainings/start")
        if r.body.get("task_id") == record["operation_id"]
    ]
    assert start[0]["strategy_name"] == name
    assert start[0]["start_date"] and start[0]["end_date"]
    history = workflow.history(limit=50)
    assert any(row["operation_id"] == record["operation_id"] for row in history)


def test_a_hostile_file_in_the_directory_affects_no_other_cycle(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    deep = strategies_dir / "it_hostile_deep.yaml"
    deep.write_text("a: " + "[" * 600 + "]" * 600 + "\n")
    try:
        designed = wait_for(workflow.trigger().operation_id, {"completed", "failed"}, timeout=90)
        assert designed["status"] == "completed", designed["error_message"]
        # Asking for the file itself is refused in one line before anything is queued.
        with pytest.raises(StrategyError, match="nests deeper than 50 levels"):
            workflow.trigger(strategy="it_hostile_deep")
    finally:
        deep.unlink()
