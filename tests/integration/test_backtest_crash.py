"""A worker SIGKILLed while it polls a cycle's backtest is replaced without losing the cycle
or starting a second backtest (its own module: no other worker runs beside the doomed one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ktrdr_tasks import workflow
from tests.integration.conftest import wait_for, wait_for_condition, write_strategy
from tests.support.fake_training_api import Behaviour, FakeTrainingApi
from tests.support.processes import start_worker

pytestmark = pytest.mark.integration


def _backtest_id(operation_id: str) -> str | None:
    return workflow.status(operation_id)["metadata"].get("backtest_operation_id")


def _backtest_starts(fake_api: FakeTrainingApi, name: str) -> int:
    return sum(
        1
        for r in fake_api.calls("POST", "/api/v1/backtests/start")
        if isinstance(r.body, dict) and r.body.get("strategy_name") == name
    )


def test_worker_killed_while_polling_the_backtest_resumes_with_one_backtest(
    cycle_env: dict[str, str], fake_api: FakeTrainingApi, strategies_dir: Path, tmp_path: Path
) -> None:
    name = write_strategy(strategies_dir, "bt_cycle_crash")
    fake_api.behaviours[name] = Behaviour(polls=1)
    fake_api.backtest_behaviours[name] = Behaviour(
        polls=25, result=fake_api.backtest_default.result
    )
    first = start_worker(cycle_env, tmp_path, name="doomed-backtest")
    try:
        op_id = workflow.trigger(strategy=name).operation_id
        wait_for_condition(lambda: _backtest_id(op_id), 30, "the backtest to start")
        polls = f"/api/v1/operations/{_backtest_id(op_id)}"
        wait_for_condition(lambda: len(fake_api.calls("GET", polls)) >= 3, 30, "polling")
    finally:
        first.kill()
    polls_at_kill = len(fake_api.calls("GET", polls))

    second = start_worker(cycle_env, tmp_path, name="replacement-backtest")
    try:
        record = wait_for(op_id, {"completed", "failed", "cancelled"}, timeout=90)
    finally:
        second.stop()

    assert record["status"] == "completed", record["error_message"]
    assert _backtest_starts(fake_api, name) == 1
    assert fake_api.starts_for(op_id) == 1
    assert len(fake_api.calls("GET", polls)) > polls_at_kill
