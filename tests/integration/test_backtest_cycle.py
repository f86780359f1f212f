"""The backtest phase of full cycles: a real redis-server, real Celery workers and the
scripted training service answering ktrdr's backtest routes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from tests.integration.conftest import wait_for, wait_for_condition, write_strategy
from tests.support.fake_training_api import POOR_BACKTEST, Behaviour, FakeTrainingApi
from tests.support.processes import Process

pytestmark = pytest.mark.integration


def _backtest_id(operation_id: str) -> str | None:
    return workflow.status(operation_id)["metadata"].get("backtest_operation_id")


def _backtest_starts(fake_api: FakeTrainingApi, name: str) -> int:
    return sum(
        1
        for r in fake_api.calls("POST", "/api/v1/backtests/start")
        if isinstance(r.body, dict) and r.body.get("strategy_name") == name
    )


def test_pass_completes_with_the_backtest_of_the_trained_model_out_of_sample(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "bt_cycle_pass")
    fake_api.behaviours[name] = Behaviour(polls=2)
    fake_api.backtest_behaviours[name] = Behaviour(polls=4, result=fake_api.backtest_default.result)

    record = wait_for(workflow.trigger(strategy=name).operation_id, {"completed", "failed"})

    assert record["status"] == "completed", record["error_message"]
    meta = record["metadata"]
    assert meta["backtest_gate"]["outcome"] == "passed"
    assert meta["backtest_gate"]["metrics"]["max_drawdown_pct"] == 0.021
    assert meta["backtest"]["trades"] == 6
    assert meta["backtest_result"]["metrics"]["win_rate"] == 0.5
    [start] = [
        r.body
        for r in fake_api.calls("POST", "/api/v1/backtests/start")
        if r.body.get("strategy_name") == name
    ]
    assert start["model_path"] == "models/fake/1h_v1"  # as the training returned it
    assert (start["symbol"], start["timeframe"]) == ("EURUSD", "1h")
    assert start["start_date"] == "2018-02-02"  # the strategy trains up to 2018-02-01
    polls = fake_api.calls("GET", f"/api/v1/operations/{meta['backtest_operation_id']}")
    assert len(polls) >= 4


def test_backtest_gate_failure_fails_the_cycle_naming_the_metric(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "bt_cycle_gate_fail")
    fake_api.behaviours[name] = Behaviour(polls=1)
    fake_api.backtest_behaviours[name] = Behaviour(polls=1, result=POOR_BACKTEST)

    record = wait_for(workflow.trigger(strategy=name).operation_id, {"completed", "failed"})

    assert record["status"] == "failed"
    assert record["error_message"].startswith("Backtest gate failed: win_rate_too_low")
    assert record["metadata"]["backtest_gate"]["outcome"] == "failed"
    assert record["metadata"]["gate"]["outcome"] == "passed"


def test_remote_backtest_failure_fails_with_ktrdrs_message(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "bt_cycle_remote_fail")
    fake_api.behaviours[name] = Behaviour(polls=1)
    fake_api.backtest_behaviours[name] = Behaviour(
        polls=1, outcome="failed", error_message="No data for EURUSD 1h"
    )
    record = wait_for(workflow.trigger(strategy=name).operation_id, {"completed", "failed"})
    assert record["status"] == "failed"
    assert record["error_message"].endswith("failed: No data for EURUSD 1h")


def test_cancel_during_the_backtest_cancels_the_remote_backtest(
    worker: Process, fake_api: FakeTrainingApi, strategies_dir: Path
) -> None:
    name = write_strategy(strategies_dir, "bt_cycle_cancel")
    fake_api.behaviours[name] = Behaviour(polls=1)
    fake_api.backtest_behaviours[name] = Behaviour(outcome="never")
    op_id = workflow.trigger(strategy=name).operation_id
    wait_for_condition(lambda: _backtest_id(op_id), 30, "the backtest to start")
    backtest_id = _backtest_id(op_id)
    polls = f"/api/v1/operations/{backtest_id}"
    wait_for_condition(lambda: len(fake_api.calls("GET", polls)) >= 2, 30, "two polls")

    answer = workflow.cancel(op_id)

    assert answer["status"] == "cancelled"
    assert answer["cancelled_training_operation_id"] == backtest_id
    deletes = fake_api.calls("DELETE", polls)
    assert deletes and fake_api.backtests[backtest_id].status == "cancelled"
    training_id = answer["metadata"]["training_operation_id"]
    assert fake_api.calls("DELETE", f"/api/v1/operations/{training_id}") == []  # it completed
    time.sleep(1.0)  # several poll intervals
    assert [r for r in fake_api.calls("GET", polls) if r.at > deletes[0].at + 0.1] == []
