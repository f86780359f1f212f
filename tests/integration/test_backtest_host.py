"""The reference host's backtest over real HTTP: a model trained here, then backtested.

What a client of ktrdr's backtest API sees: start -> `op_backtesting_...` in `operation_id`
-> polled through `/operations/{id}` -> completed with ktrdr's result keys; ktrdr's failures
(no model_path, unknown model, no data: 200 then failed; no symbol/timeframe: 400; busy:
503); and a cancel that stops a running backtest between batches of bars.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.support.processes import REPO, Process, free_port, start_training_host

pytestmark = pytest.mark.integration

BASE = "eurusd_1h_rsi_macd_adx"
TRAINING = {"start_date": "2017-05-01", "end_date": "2017-12-31"}
WINDOW = {"start_date": "2018-01-02", "end_date": "2018-02-07"}
METRIC_KEYS = {
    "total_return",
    "total_return_pct",
    "annualized_return",
    "volatility",
    "sharpe_ratio",
    "sortino_ratio",
    "calmar_ratio",
    "max_drawdown",
    "max_drawdown_pct",
    "recovery_factor",
    "win_rate",
    "profit_factor",
    "total_trades",
    "winning_trades",
    "losing_trades",
    "avg_win",
    "avg_loss",
    "largest_win",
    "largest_loss",
    "avg_holding_period",
    "avg_win_holding_period",
    "avg_loss_holding_period",
}


class Host:
    def __init__(self, process: Process, url: str) -> None:
        self.process = process
        self.http = httpx.Client(base_url=f"{url}/api/v1", timeout=10)

    def info(self, operation_id: str) -> dict[str, Any]:
        response = self.http.get(f"/operations/{operation_id}")
        assert response.status_code == 200, response.text
        return response.json()["data"]

    def wait(self, operation_id: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (info := self.info(operation_id))["status"] not in statuses:
            assert time.monotonic() < deadline, f"{info}\n{self.process.log()[-3000:]}"
            time.sleep(0.05)
        return info

    def train(self, strategy: str) -> dict[str, Any]:
        body = {"strategy_name": strategy, "symbols": ["EURUSD"], "timeframes": ["1h"]}
        response = self.http.post("/trainings/start", json={**body, **TRAINING})
        assert response.status_code == 200, response.text
        return self.wait(response.json()["task_id"], {"completed", "failed"})

    def backtest(self, **body: Any) -> httpx.Response:
        payload = {"strategy_name": BASE, "symbol": "EURUSD", "timeframe": "1h", **WINDOW}
        return self.http.post("/backtests/start", json={**payload, **body})

    def backtest_id(self, **body: Any) -> str:
        response = self.backtest(**body)
        assert response.status_code == 200, response.text
        return str(response.json()["operation_id"])


def _variant(directory: Path, name: str, epochs: int) -> None:
    document = yaml.safe_load((REPO / "strategies" / f"{BASE}.yaml").read_text())
    document["name"] = name
    document["model"]["training"]["epochs"] = epochs
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def _long_series(path: Path, bars: int) -> None:
    """A long random-walk 1h series (SYNTH), long enough to cancel a backtest mid-way."""
    rng = np.random.default_rng(7)
    close = 1.1 * np.exp(np.cumsum(rng.normal(0, 0.001, bars)))
    index = pd.date_range("2000-01-01", periods=bars, freq="h", tz="UTC")
    frame = pd.DataFrame(
        {
            "open": np.concatenate([[close[0]], close[:-1]]),
            "high": close * 1.0005,
            "low": close * 0.9995,
            "close": close,
            "volume": 100.0,
        },
        index=index,
    )
    frame.to_csv(path)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    root = tmp_path_factory.mktemp("backtest_host")
    strategies, models, data = root / "strategies", root / "models", root / "data"
    for directory in (strategies, models, data):
        directory.mkdir()
    shutil.copy(REPO / "strategies" / f"{BASE}.yaml", strategies)
    _variant(strategies, "bt_quick", epochs=2)
    _variant(strategies, "bt_slow", epochs=400)
    _long_series(data / "SYNTH_1h.csv", 120_000)
    port = free_port()
    env = {
        "KTRDR_STRATEGIES_DIR": str(strategies),
        "KTRDR_MODELS_DIR": str(models),
        "KTRDR_DATA_DIR": str(data),
        "KTRDR_TRAINING_CONCURRENCY": "1",
    }
    process = start_training_host(env, root / "logs", port)
    instance = Host(process, f"http://127.0.0.1:{port}")
    yield instance
    instance.http.close()
    process.stop()


@pytest.fixture(scope="module")
def trained(host: Host) -> dict[str, Any]:
    info = host.train("bt_quick")
    assert info["status"] == "completed", info["error_message"]
    return info["result_summary"]


def test_training_reports_the_test_label_distribution(trained: dict[str, Any]) -> None:
    test = trained["test_metrics"]
    counts = test["label_distribution"]
    assert set(counts) == {"BUY", "HOLD", "SELL"}
    assert sum(counts.values()) == trained["data_summary"]["test_samples"]
    assert test["majority_class_share"] == pytest.approx(
        max(counts.values()) / sum(counts.values())
    )


def test_backtest_of_a_trained_model_completes_with_ktrdrs_result(
    host: Host, trained: dict[str, Any]
) -> None:
    response = host.backtest(model_path=trained["model_path"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["status"] == "started"
    assert (body["symbol"], body["timeframe"], body["mode"]) == ("EURUSD", "1h", "local")
    assert body["operation_id"].startswith("op_backtesting_")
    info = host.wait(body["operation_id"], {"completed", "failed"})
    assert info["status"] == "completed", info["error_message"]
    assert info["operation_type"] == "backtesting" and info["progress"]["percentage"] == 100
    summary = info["result_summary"]
    assert {
        "config",
        "symbol",
        "timeframe",
        "strategy_name",
        "start_time",
        "end_time",
        "trade_count",
        "equity_curve_length",
        "execution_time_seconds",
        "metrics",
    } <= set(summary)
    assert summary["config"] == {
        **WINDOW,
        "initial_capital": 100_000.0,
        "commission": 0.001,
        "slippage": 0.0005,
    }
    metrics = summary["metrics"]
    assert set(metrics) == METRIC_KEYS
    assert summary["trade_count"] == metrics["total_trades"]
    assert metrics["winning_trades"] + metrics["losing_trades"] <= metrics["total_trades"]
    assert 0 <= metrics["max_drawdown_pct"] < 1 and 0 <= metrics["win_rate"] <= 1
    # about 26 trading days of hourly bars, none of them before the window
    assert 500 < summary["equity_curve_length"] < 700
    assert summary["first_bar"] >= "2018-01-02"


def test_model_path_relative_like_ktrdrs_is_accepted(host: Host, trained: dict[str, Any]) -> None:
    relative = "models/" + "/".join(Path(trained["model_path"]).parts[-2:])
    info = host.wait(host.backtest_id(model_path=relative), {"completed", "failed"})
    assert info["status"] == "completed", info["error_message"]


def test_backtest_ignores_the_strategy_file_when_symbol_and_timeframe_are_given(
    host: Host, trained: dict[str, Any]
) -> None:
    operation = host.backtest_id(strategy_name="no_such_strategy", model_path=trained["model_path"])
    assert host.wait(operation, {"completed", "failed"})["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "model_path is required for backtesting"),
        ({"model_path": "models/nope/1h_v1"}, "Model directory not found: models/nope/1h_v1"),
        ({"model_path": "../../etc"}, "Model directory not found: ../../etc"),
        (
            {"start_date": "2019-01-01", "end_date": "2019-02-01", "use_model": True},
            "No data for EURUSD 1h",
        ),
    ],
)
def test_ktrdrs_late_failures_answer_200_then_fail_the_operation(
    host: Host, trained: dict[str, Any], body: dict[str, Any], message: str
) -> None:
    if body.pop("use_model", False):
        body["model_path"] = trained["model_path"]
    info = host.wait(host.backtest_id(**body), {"completed", "failed"}, timeout=30)
    assert info["status"] == "failed"
    assert info["error_message"].startswith(message)


def test_no_symbol_or_timeframe_known_is_400(host: Host, trained: dict[str, Any]) -> None:
    unknown = host.backtest(strategy_name="no_such_strategy", symbol=None, timeframe=None)
    assert unknown.status_code == 400
    assert "No symbol or timeframe" in unknown.json()["detail"]
    assert host.backtest(timeframe="1x", model_path=trained["model_path"]).status_code == 400
    # A known strategy names its own symbol and timeframe.
    defaulted = host.backtest(symbol=None, timeframe=None, model_path=trained["model_path"])
    assert defaulted.status_code == 200
    assert (defaulted.json()["symbol"], defaulted.json()["timeframe"]) == ("EURUSD", "1h")
    host.wait(defaulted.json()["operation_id"], {"completed"})


def test_busy_host_answers_503_and_cancel_stops_a_backtest_mid_way(
    host: Host, trained: dict[str, Any]
) -> None:
    body = {"strategy_name": "bt_slow", "symbols": ["EURUSD"], "timeframes": ["1h"], **TRAINING}
    slow = host.http.post("/trainings/start", json=body).json()["task_id"]
    host.wait(slow, {"running"})
    busy = host.backtest(model_path=trained["model_path"])
    assert busy.status_code == 503
    assert busy.json()["detail"]["error"] == "No backtest workers available"
    assert host.http.delete(f"/operations/{slow}").status_code == 200

    # The worker leaves the cancelled training within a batch; until then 503, as ktrdr.
    long_window = {"start_date": "2001-01-01", "end_date": "2013-12-31"}
    deadline = time.monotonic() + 10
    while (
        started := host.backtest(symbol="SYNTH", model_path=trained["model_path"], **long_window)
    ).status_code == 503:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert started.status_code == 200, started.text
    operation = started.json()["operation_id"]
    deadline = time.monotonic() + 60
    while not (info := host.info(operation))["progress"]["steps_completed"]:
        assert info["status"] in {"pending", "running"}, info["error_message"]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert info["progress"]["context"]["bars_total"] > 100_000
    cancelled = host.http.delete(f"/operations/{operation}")
    assert cancelled.status_code == 200
    time.sleep(0.3)
    info = host.info(operation)
    assert info["status"] == "cancelled"
    assert info["progress"]["steps_completed"] < info["progress"]["steps_total"]
    assert info["result_summary"] is None
    # The slot is free again.
    after = host.backtest_id(model_path=trained["model_path"])
    assert host.wait(after, {"completed", "failed"})["status"] == "completed"


def test_same_task_id_twice_gives_one_backtest(host: Host, trained: dict[str, Any]) -> None:
    first = host.backtest_id(model_path=trained["model_path"], task_id="cycle-7-backtest")
    host.wait(first, {"completed"})
    again = host.backtest(model_path=trained["model_path"], task_id="cycle-7-backtest")
    assert again.status_code == 200 and again.json()["operation_id"] == first
    listed = host.http.get("/operations", params={"operation_type": "backtesting"}).json()
    assert sum(1 for row in listed["data"] if row["operation_id"] == first) == 1
