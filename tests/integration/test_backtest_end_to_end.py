"""A whole cycle on real parts with the backtest: redis-server, a Celery worker and the
reference training host training the model, then backtesting it on the bars after the
training window."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ktrdr_tasks import workflow
from tests.integration.conftest import wait_for
from tests.support.processes import Process, free_port, start_training_host, start_worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host_and_worker(
    cycle_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Process, Process]]:
    logs = tmp_path_factory.mktemp("backtest-e2e-logs")
    port = free_port()
    host = start_training_host(cycle_env, logs, port)
    worker = start_worker({**cycle_env, "KTRDR_API_URL": f"http://127.0.0.1:{port}"}, logs)
    yield host, worker
    worker.stop()
    host.stop()


@pytest.mark.parametrize("strategy", ["eurusd_1h_stoch_cci_roc", "eurusd_1h_stoch_cci_roc_v3"])
def test_example_strategy_is_trained_then_backtested_out_of_sample(
    host_and_worker: tuple[Process, Process], strategy: str
) -> None:
    op_id = workflow.trigger(strategy=strategy, bypass_gates=True).operation_id

    record = wait_for(op_id, {"completed", "failed", "cancelled"}, timeout=180)

    assert record["status"] == "completed", record["error_message"]
    meta = record["metadata"]
    result = meta["backtest_result"]
    # The reference host takes the request's task_id as the operation id (as for trainings).
    assert meta["backtest_operation_id"] == f"{op_id}-backtest"
    assert result["config"]["start_date"] == "2018-02-02"  # the day after training
    assert result["first_bar"] >= "2018-02-02"  # not one bar the model was trained on
    assert result["model_path"] == meta["model_path"]
    assert len(result["metrics"]) == 22 and result["equity_curve_length"] > 50  # v2 and v3
    assert meta["backtest_gate"]["outcome"] in ("passed", "bypassed")
    assert meta["backtest"]["trades"] == result["metrics"]["total_trades"]
    assert record["result_summary"]["backtest_gate"] == meta["backtest_gate"]["outcome"]
