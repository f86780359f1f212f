"""The backtest phase's pure core and client call: window, request, progress, summary."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import pytest

from ktrdr_tasks.backtest import (
    BacktestWindow,
    backtest_percentage,
    backtest_progress,
    backtest_request,
    backtest_summary,
    backtest_window,
)
from ktrdr_tasks.errors import ConfigurationError, PermanentApiError, TransientApiError
from ktrdr_tasks.training_api import RemoteOperation, StartBacktestRequest, TrainingApiClient

TODAY = dt.date(2026, 4, 14)

# -- the out-of-sample window -------------------------------------------------------------------


def test_default_window_starts_the_day_after_training_and_runs_to_today() -> None:
    window = backtest_window("2017-05-01", "2018-02-01", today=TODAY)
    assert window == BacktestWindow("2018-02-02", "2026-04-14")


def test_configured_dates_win_when_they_stay_out_of_training() -> None:
    window = backtest_window(
        "2017-05-01", "2018-02-01", start="2018-02-05", end="2018-02-07", today=TODAY
    )
    assert window == BacktestWindow("2018-02-05", "2018-02-07")
    # Only an end: the start still follows training.
    assert backtest_window("2017-05-01", "2018-02-01", end="2018-02-07", today=TODAY) == (
        BacktestWindow("2018-02-02", "2018-02-07")
    )
    # Before the training window is out of sample too.
    before = backtest_window(
        "2017-05-01", "2018-02-01", start="2017-04-19", end="2017-04-30", today=TODAY
    )
    assert before == BacktestWindow("2017-04-19", "2017-04-30")


@pytest.mark.parametrize(
    ("start", "end"),
    [("2018-02-01", "2018-02-07"), ("2017-01-01", "2017-06-01"), ("2017-06-01", "2017-07-01")],
)
def test_a_window_touching_training_is_refused_naming_the_setting(start: str, end: str) -> None:
    with pytest.raises(ConfigurationError, match=r"overlaps the training window.*KTRDR_BACKTEST"):
        backtest_window("2017-05-01", "2018-02-01", start=start, end=end, today=TODAY)


def test_no_training_end_needs_configured_dates() -> None:
    with pytest.raises(ConfigurationError, match="KTRDR_BACKTEST_START_DATE"):
        backtest_window("2020-01-01", None, today=TODAY)
    # An open-ended training (ktrdr trains up to today) overlaps anything after its start.
    with pytest.raises(ConfigurationError, match="overlaps"):
        backtest_window("2020-01-01", None, start="2021-01-01", end="2021-02-01", today=TODAY)
    assert backtest_window(
        None, None, start="2021-01-01", end="2021-02-01", today=TODAY
    ) == BacktestWindow("2021-01-01", "2021-02-01")


def test_empty_or_unreadable_windows_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="is empty"):
        backtest_window("2017-05-01", "2018-02-01", end="2018-01-01", today=TODAY)
    with pytest.raises(ConfigurationError, match="YYYY-MM-DD"):
        backtest_window("2017-05-01", "2018-02-01", start="Feb 2", today=TODAY)


# -- the start request and the client -----------------------------------------------------------

WINDOW = BacktestWindow("2018-02-02", "2018-02-07")


def test_request_backtests_the_first_symbol_and_timeframe_with_the_model_path_as_given() -> None:
    fields = backtest_request("s", ["EURUSD", "GBPUSD"], ["1h", "4h"], "models/s/1h_v3", WINDOW)
    assert StartBacktestRequest(**fields).model_dump() == {
        "strategy_name": "s",
        "symbol": "EURUSD",
        "timeframe": "1h",
        "model_path": "models/s/1h_v3",
        "start_date": "2018-02-02",
        "end_date": "2018-02-07",
        "initial_capital": 100_000.0,
        "commission": 0.001,
        "slippage": 0.0005,
        "task_id": None,
    }
    with pytest.raises(ConfigurationError, match="no symbol"):
        backtest_request("s", [], ["1h"], "m", WINDOW)


REQUEST = StartBacktestRequest(
    **backtest_request("s", ["EURUSD"], ["1h"], "models/s/1h_v1", WINDOW)
)


def client_for(handler) -> TrainingApiClient:
    return TrainingApiClient("http://backend", transport=httpx.MockTransport(handler))


def test_start_backtest_posts_ktrdrs_body_and_reads_operation_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "success": True,
                "operation_id": "op_backtesting_20260414_101010_abcd1234",
                "status": "started",
                "message": "Backtest started",
                "symbol": "EURUSD",
                "timeframe": "1h",
                "mode": "local",
            },
        )

    assert client_for(handler).start_backtest(REQUEST) == "op_backtesting_20260414_101010_abcd1234"
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/api/v1/backtests/start")]
    assert json.loads(seen[0].content) == REQUEST.model_dump()


def test_start_backtest_retries_busy_503_then_succeeds() -> None:
    answers = iter(
        [
            httpx.Response(503, json={"detail": {"error": "No backtest workers available"}}),
            httpx.Response(200, json={"success": True, "operation_id": "op_backtesting_2"}),
        ]
    )
    assert client_for(lambda request: next(answers)).start_backtest(REQUEST) == "op_backtesting_2"


def test_start_backtest_never_retries_a_timeout_that_may_have_started_one() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TransientApiError, match="timed out"):
        client_for(handler).start_backtest(REQUEST)
    assert len(calls) == 1


def test_start_backtest_400_is_permanent_with_the_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"detail": "No symbol or timeframe for backtesting s"})

    with pytest.raises(PermanentApiError, match="No symbol or timeframe for backtesting s"):
        client_for(handler).start_backtest(REQUEST)


@pytest.mark.parametrize(
    "body", [{"success": True}, {"success": True, "operation_id": ""}, {"success": False}, [1]]
)
def test_start_backtest_without_an_operation_id_is_permanent(body: object) -> None:
    with pytest.raises(PermanentApiError):
        client_for(lambda request: httpx.Response(200, json=body)).start_backtest(REQUEST)


def test_start_backtest_request_model_is_ktrdrs() -> None:
    assert set(StartBacktestRequest.model_fields) == {
        "strategy_name",
        "start_date",
        "end_date",
        "symbol",
        "timeframe",
        "model_path",
        "initial_capital",
        "commission",
        "slippage",
        "task_id",  # not ktrdr's: the reference host's idempotency key
    }


# -- progress and summary -----------------------------------------------------------------------


def test_progress_maps_onto_90_to_98_and_keeps_the_live_figures() -> None:
    remote = RemoteOperation.model_validate(
        {
            "status": "running",
            "progress": {
                "percentage": 50.0,
                "current_step": "Backtesting EURUSD 1h: bar 64/128",
                "steps_completed": 64,
                "steps_total": 128,
                "context": {"bars_processed": 64, "trades": 3, "total_return_pct": -0.01},
            },
        }
    )
    progress = backtest_progress(remote)
    assert progress.percentage == 94.0
    assert progress.current_step == "Backtesting EURUSD 1h: bar 64/128"
    assert progress.context == {
        "bars_processed": 64,
        "bars_total": 128,
        "trades": 3,
        "total_return_pct": -0.01,
    }
    assert backtest_percentage(None) == 90.0 and backtest_percentage(250) == 98.0
    pending = backtest_progress(RemoteOperation(status="pending"))
    assert pending.current_step == "Waiting for a backtest slot" and pending.context == {}


def test_summary_keeps_trades_return_sharpe_drawdown() -> None:
    result = {
        "config": {"start_date": "2018-02-02", "end_date": "2018-02-07"},
        "symbol": "EURUSD",
        "timeframe": "1h",
        "metrics": {
            "total_trades": 4,
            "total_return_pct": 0.012,
            "sharpe_ratio": 1.1,
            "max_drawdown_pct": 0.02,
            "max_drawdown": 2000.0,
            "win_rate": 0.5,
        },
    }
    assert backtest_summary(result) == {
        "symbol": "EURUSD",
        "timeframe": "1h",
        "start_date": "2018-02-02",
        "end_date": "2018-02-07",
        "trades": 4,
        "total_return_pct": 0.012,
        "sharpe_ratio": 1.1,
        "max_drawdown_pct": 0.02,
        "win_rate": 0.5,
    }
    assert backtest_summary(None)["trades"] is None


# -- settings -----------------------------------------------------------------------------------


def test_backtest_settings_read_ktrdrs_names_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from ktrdr_tasks.gates import BacktestThresholds
    from ktrdr_tasks.settings import Settings

    monkeypatch.setenv("AGENT_BACKTEST_START_DATE", "2018-02-02")
    monkeypatch.setenv("KTRDR_BACKTEST_END_DATE", "2018-02-07")
    monkeypatch.setenv("KTRDR_GATE_MIN_TRADES", "3")
    monkeypatch.setenv("KTRDR_GATE_MIN_LIFT", "0.02")
    monkeypatch.setenv("BACKTEST_GATE_MAX_DRAWDOWN", "0.25")
    monkeypatch.setenv("BACKTEST_GATE_MIN_SHARPE", "0")
    settings = Settings()
    assert (settings.backtest_start_date, settings.backtest_end_date) == (
        "2018-02-02",
        "2018-02-07",
    )
    assert settings.gate_min_lift == 0.02
    assert BacktestThresholds.from_settings(settings) == BacktestThresholds(0.45, 0.25, 0.0, 3)
    window = backtest_window(
        "2017-05-01",
        "2018-02-01",
        start=settings.backtest_start_date,
        end=settings.backtest_end_date,
        today=TODAY,
    )
    assert window == BacktestWindow("2018-02-02", "2018-02-07")


def test_backtest_settings_defaults_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from ktrdr_tasks.settings import Settings

    settings = Settings()
    assert settings.backtest_start_date is None and settings.backtest_end_date is None
    assert settings.gate_min_trades == 1 and settings.gate_min_lift is None
    assert settings.backtest_timeout_s == 600
    monkeypatch.setenv("KTRDR_GATE_MIN_LIFT", "")
    assert Settings().gate_min_lift is None
    monkeypatch.setenv("KTRDR_BACKTEST_START_DATE", "02/02/2018")
    with pytest.raises(ValidationError, match="YYYY-MM-DD"):
        Settings()
    monkeypatch.delenv("KTRDR_BACKTEST_START_DATE")
    monkeypatch.setenv("KTRDR_GATE_MIN_TRADES", "-1")
    with pytest.raises(ValidationError):
        Settings()


# -- one poll -----------------------------------------------------------------------------------


def _remote(status: str, **fields: object) -> RemoteOperation:
    return RemoteOperation.model_validate({"status": status, **fields})


def test_a_poll_reads_running_completed_failed_and_cancelled() -> None:
    from ktrdr_tasks.backtest import read_backtest

    assert read_backtest(_remote("running"), "op_b").state == "running"
    assert read_backtest(_remote("resuming"), "op_b").state == "running"
    result = {"symbol": "EURUSD", "metrics": {"total_trades": 3}}
    done = read_backtest(_remote("completed", result_summary=result), "op_b")
    assert (done.state, done.result, done.progress.percentage) == ("completed", result, 98.0)
    late = read_backtest(_remote("completed", result_summary={"symbol": "EURUSD"}), "op_b")
    assert late.state == "running" and late.message == "completed without metrics yet"
    failed = read_backtest(_remote("failed", error_message="No data for EURUSD 1h"), "op_b")
    assert failed.state == "failed"
    assert failed.message == "backtest op_b failed: No data for EURUSD 1h"
    cancelled = read_backtest(_remote("cancelled", error_message="Cancelled by request"), "op_b")
    assert cancelled.state == "failed" and "cancelled on the training service" in cancelled.message


def test_follow_shows_bars_trades_and_return_while_backtesting() -> None:
    from ktrdr_tasks.cli.follow import one_line

    operation = {
        "operation_id": "op_x",
        "status": "running",
        "phase": "backtesting",
        "progress": {
            "percentage": 94.0,
            "current_step": "Backtesting EURUSD 1h: bar 64/128",
            "context": {
                "bars_processed": 64,
                "bars_total": 128,
                "trades": 3,
                "total_return_pct": -0.01,
            },
        },
    }
    assert one_line(operation).endswith("[bar 64/128, 3 trades, return -1.00%]")
