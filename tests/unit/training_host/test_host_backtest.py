"""The backtest engine: decisions, fills, metrics computed by hand, and no look-ahead."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from training_host import artifacts
from training_host.backtest import (
    BATCH_BARS,
    FLAT,
    LONG,
    BacktestJob,
    Costs,
    DecisionRules,
    Ledger,
    backtest_inputs,
    decide,
    load_trained_model,
    performance_metrics,
    periods_per_year,
    resolve_model_dir,
    run_backtest,
    simulate,
    trade_model,
)
from training_host.errors import NoDataError, TrainingCancelled, TrainingFailed
from training_host.features import build_inputs
from training_host.jobs import JobContext
from training_host.labels import BUY, HOLD, SELL
from training_host.market_data import read_csv_bars
from training_host.model import build_mlp
from training_host.operations import OperationRegistry
from training_host.pipeline import strategy_features

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "strategies" / "eurusd_1h_rsi_macd_adx.yaml"
KTRDR_KEYS = {
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
FREE = Costs(initial_capital=1000.0, commission=0.0, slippage=0.0, position_fraction=1.0)


def hours(count: int) -> pd.DatetimeIndex:
    return pd.date_range("2024-01-01", periods=count, freq="h", tz="UTC")


def scripted(signals: list[int]):  # the hand-made decisions, whatever the position
    return lambda bar, position, since: signals[bar]


# -- decisions ----------------------------------------------------------------------------


RULES = DecisionRules(confidence_threshold=0.6, position_awareness=True, min_separation_hours=4)


@pytest.mark.parametrize(
    ("probabilities", "position", "since", "rules", "expected"),
    [
        ([0.7, 0.2, 0.1], FLAT, None, RULES, BUY),
        ([0.55, 0.25, 0.2], FLAT, None, RULES, HOLD),  # below the confidence threshold
        ([0.7, 0.2, 0.1], LONG, None, RULES, HOLD),  # no BUY while long
        ([0.1, 0.2, 0.7], FLAT, None, RULES, HOLD),  # long only: no SELL from flat
        ([0.1, 0.2, 0.7], LONG, None, RULES, SELL),
        ([0.1, 0.2, 0.7], LONG, 3.0, RULES, HOLD),  # within 4 h of the last trade
        ([0.1, 0.2, 0.7], LONG, 4.0, RULES, SELL),
        ([0.7, 0.2, 0.1], LONG, None, DecisionRules(0.6, False, 0), BUY),  # unaware: raw
        ([float("nan"), 0.2, 0.1], FLAT, None, RULES, HOLD),
    ],
)
def test_decide_applies_threshold_awareness_and_separation(
    probabilities: list[float], position: int, since: float | None, rules, expected: int
) -> None:
    assert decide(probabilities, position, since, rules) == expected


def test_rules_come_from_the_decisions_section_with_ktrdr_defaults() -> None:
    assert DecisionRules.from_section(None) == DecisionRules(0.5, True, 4.0)
    section = {"confidence_threshold": 0.65, "position_awareness": False}
    section["filters"] = {"min_signal_separation": 2}
    assert DecisionRules.from_section(section) == DecisionRules(0.65, False, 2.0)


# -- fills and fees -------------------------------------------------------------------------


def test_buy_and_sell_pay_slippage_and_commission_both_ways() -> None:
    ledger = Ledger(Costs(10_000.0, commission=0.01, slippage=0.01, position_fraction=1.0))
    t0, t1 = hours(2)
    assert ledger.buy(t0, 100.0)
    # fill 101; int(10000 / (101 * 1.01)) = 98 units; commission 1% of 9898 = 98.98
    assert ledger.quantity == 98
    assert ledger.cash == pytest.approx(10_000 - 9898 - 98.98)
    assert not ledger.buy(t1, 100.0)  # already long
    trade = ledger.sell(t1, 110.0)
    assert trade is not None
    # fill 108.9; value 10672.2; commission 106.722; gross (108.9 - 101) * 98 = 774.2
    assert trade.exit_price == pytest.approx(108.9)
    assert trade.gross_pnl == pytest.approx(774.2)
    assert trade.commission == pytest.approx(98.98 + 106.722)
    assert trade.slippage == pytest.approx(98 * 1.0 + 98 * 1.1)
    assert trade.net_pnl == pytest.approx(774.2 - 98.98 - 106.722)
    assert ledger.cash == pytest.approx(10_000 + trade.net_pnl)
    assert trade.holding_period_hours == 1.0
    assert ledger.sell(t1, 110.0) is None  # flat now


def test_position_fraction_sizes_the_position_in_whole_units() -> None:
    ledger = Ledger(Costs(100_000.0, commission=0.001, slippage=0.0005))
    assert ledger.buy(hours(1)[0], 1.2)
    # 25 % of 100000 at 1.2006 plus 0.1 % commission: int(25000 / 1.2018006) units
    assert ledger.quantity == int(25_000 / (1.2 * 1.0005 * 1.001))


# -- a whole backtest on hand-made prices and decisions --------------------------------------

PRICES = [100.0, 110.0, 105.0, 99.0, 99.0, 110.0, 121.0]
SIGNALS = [BUY, HOLD, HOLD, SELL, BUY, HOLD, HOLD]  # the last long is closed on the last bar
# equity after each bar: 10 units bought at 100, sold at 99, 10 bought at 99, closed at 121
EQUITY = [1000.0, 1100.0, 1050.0, 990.0, 990.0, 1100.0, 1210.0]
RETURNS = [0.0, 100 / 1000, -50 / 1100, -60 / 1050, 0.0, 110 / 990, 110 / 1100]


def test_simulation_positions_trades_and_equity_by_hand() -> None:
    simulation = simulate(hours(7), PRICES, scripted(SIGNALS), FREE)
    assert simulation.positions == [LONG, LONG, LONG, FLAT, LONG, LONG, FLAT]
    assert simulation.equity == pytest.approx(EQUITY)
    trades = simulation.ledger.trades
    assert [(t.entry_price, t.exit_price, t.quantity) for t in trades] == [
        (100.0, 99.0, 10),
        (99.0, 121.0, 10),
    ]
    assert [t.net_pnl for t in trades] == pytest.approx([-10.0, 220.0])
    assert [t.holding_period_hours for t in trades] == [3.0, 2.0]
    assert simulation.ledger.position == FLAT


def test_metrics_by_hand() -> None:
    simulation = simulate(hours(7), PRICES, scripted(SIGNALS), FREE)
    metrics = performance_metrics(
        simulation.equity, simulation.ledger.trades, 1000.0, years=1.0, bars_per_year=100.0
    )
    assert set(metrics) == KTRDR_KEYS
    mean = sum(RETURNS) / len(RETURNS)
    std = math.sqrt(sum((r - mean) ** 2 for r in RETURNS) / len(RETURNS))
    downside = math.sqrt(sum(min(r, 0.0) ** 2 for r in RETURNS) / len(RETURNS))
    expected = {
        "total_return": 210.0,
        "total_return_pct": 0.21,
        "annualized_return": 0.21,  # over exactly one year
        "volatility": std * 10.0,  # sqrt(100 bars a year)
        "sharpe_ratio": mean / std * 10.0,
        "sortino_ratio": mean / downside * 10.0,
        "max_drawdown": 110.0,  # 1100 -> 990
        "max_drawdown_pct": 0.1,
        "calmar_ratio": 2.1,
        "recovery_factor": 210.0 / 110.0,
        "win_rate": 0.5,
        "profit_factor": 22.0,
        "total_trades": 2,
        "winning_trades": 1,
        "losing_trades": 1,
        "avg_win": 220.0,
        "avg_loss": -10.0,
        "largest_win": 220.0,
        "largest_loss": -10.0,
        "avg_holding_period": 2.5,
        "avg_win_holding_period": 2.0,
        "avg_loss_holding_period": 3.0,
    }
    assert metrics == pytest.approx(expected)


def test_redundant_signals_do_not_move_the_position_even_without_awareness() -> None:
    signals = [SELL, BUY, BUY, SELL, SELL, HOLD]  # SELL from flat, BUY while long: no-ops
    simulation = simulate(hours(6), [100.0] * 6, scripted(signals), FREE)
    assert simulation.positions == [FLAT, LONG, LONG, FLAT, FLAT, FLAT]
    assert len(simulation.ledger.trades) == 1


def test_fees_lower_the_return_by_what_they_cost() -> None:
    costs = Costs(1000.0, commission=0.01, slippage=0.0, position_fraction=1.0)
    simulation = simulate(hours(3), [100.0, 100.0, 100.0], scripted([BUY, HOLD, SELL]), costs)
    # int(1000 / 101) = 9 units: 9 in commission on the way in, 9 on the way out
    [trade] = simulation.ledger.trades
    assert trade.net_pnl == pytest.approx(-18.0)
    metrics = performance_metrics(simulation.equity, [trade], 1000.0, years=0, bars_per_year=0)
    assert metrics["total_return"] == pytest.approx(-18.0)
    assert metrics["win_rate"] == 0.0 and metrics["profit_factor"] == 0.0
    assert metrics["annualized_return"] == 0.0  # no time span, no annualising


def test_nothing_lost_gives_ktrdrs_profit_factor_999999() -> None:
    simulation = simulate(hours(3), [100.0, 110.0, 120.0], scripted([BUY, HOLD, HOLD]), FREE)
    metrics = performance_metrics(
        simulation.equity, simulation.ledger.trades, 1000.0, years=1.0, bars_per_year=100.0
    )
    assert metrics["profit_factor"] == 999999.0
    assert metrics["win_rate"] == 1.0 and metrics["max_drawdown_pct"] == 0.0
    assert metrics["calmar_ratio"] == 0.0 and metrics["recovery_factor"] == 0.0


def test_no_trade_gives_zero_metrics_with_every_key() -> None:
    simulation = simulate(hours(5), [100.0] * 5, scripted([HOLD] * 5), FREE)
    metrics = performance_metrics(
        simulation.equity, simulation.ledger.trades, 1000.0, years=0.5, bars_per_year=100.0
    )
    assert set(metrics) == KTRDR_KEYS
    assert metrics["total_trades"] == 0 and metrics["profit_factor"] == 0.0
    assert all(value == 0 for value in metrics.values())


def test_bars_per_year_follow_the_data() -> None:
    daily = pd.date_range("2024-01-01", periods=366, freq="D", tz="UTC")
    assert periods_per_year(daily) == pytest.approx(365 / (365 / 365.25))
    assert periods_per_year(daily[:1]) == 0.0


# -- the model directory and the features on new bars --------------------------------------


def _model_dir(models: Path, name: str = "bt_example") -> Path:
    """A real model directory (random weights) in the layout a training writes."""
    from ktrdr_tasks.strategy_schema import check_strategy

    document = yaml.safe_load(EXAMPLE.read_text())
    document["name"] = name
    config = check_strategy(document)
    bars = read_csv_bars(_builtin_eurusd())
    columns = list(build_inputs({"1h": bars.iloc[:300]}, strategy_features(config), 1).columns)
    # A hand-set linear model: BUY when RSI is low, SELL when it is high, else HOLD.
    network = build_mlp(len(columns), [], "relu", 0.0)
    with torch.no_grad():
        weight, bias = network[0].weight, network[0].bias
        weight.zero_()
        weight[BUY, columns.index("1h_rsi_14_low")] = 6.0
        weight[SELL, columns.index("1h_rsi_14_high")] = 6.0
        bias.copy_(torch.tensor([0.0, 1.0, 0.0]))
    info = {"input_size": len(columns), "hidden_layers": [], "activation": "relu", "dropout": 0}
    state = {"state_dict": network.state_dict(), "model_info": info, "feature_names": columns}
    files = {
        "config.json": document,
        "features.json": {"feature_names": columns},
        "metadata.json": {"timeframes": ["1h"], "symbols": ["EURUSD"]},
    }
    return artifacts.save_model(models, name, "1h", state=state, files=files)


def _builtin_eurusd() -> Path:
    import backtesting.test as shipped

    return Path(shipped.__file__).parent / "EURUSD.csv"


def test_model_path_resolves_relative_or_absolute_and_only_inside_models(tmp_path: Path) -> None:
    models = tmp_path / "models"
    directory = _model_dir(models)
    assert resolve_model_dir(str(directory), models) == directory.resolve()
    assert resolve_model_dir("models/bt_example/1h_v1", models) == directory.resolve()
    assert resolve_model_dir("bt_example/1h_latest", models) == directory.resolve()
    with pytest.raises(TrainingFailed, match="model_path is required for backtesting"):
        resolve_model_dir(None, models)
    with pytest.raises(TrainingFailed, match=r"Model directory not found: models/nope/1h_v1"):
        resolve_model_dir("models/nope/1h_v1", models)
    outside = tmp_path / "elsewhere"
    shutil.copytree(directory, outside)
    with pytest.raises(TrainingFailed, match="Model directory not found"):
        resolve_model_dir(str(outside), models)


def _job(start: str, end: str) -> BacktestJob:
    return BacktestJob("bt_example", "EURUSD", "1h", start, end, None, Costs())


def test_features_use_warm_up_bars_before_the_window(tmp_path: Path) -> None:
    model = load_trained_model(_model_dir(tmp_path / "models"))
    inputs, close = backtest_inputs(model, _job("2018-01-15", "2018-01-19"), None)
    assert inputs.index[0] >= pd.Timestamp("2018-01-15", tz="UTC")
    assert inputs.index[-1] < pd.Timestamp("2018-01-20", tz="UTC")
    assert list(inputs.columns) == model.feature_names
    assert close.index.equals(inputs.index)
    # Warmed up: the first bar reads as it does with the whole history before it, not as
    # the first bar of a series (indicators still 0) would.
    bars = read_csv_bars(_builtin_eurusd())
    features = strategy_features(model.config)
    full = build_inputs({"1h": bars[bars.index < inputs.index[-1]]}, features, 1)
    cold = build_inputs({"1h": bars[bars.index >= inputs.index[0]]}, features, 1)
    first = inputs.index[0]
    np.testing.assert_allclose(inputs.loc[first], full.loc[first], atol=1e-4)
    assert not np.allclose(inputs.loc[first], cold.loc[first], atol=1e-2)


def test_no_data_in_the_window_is_ktrdrs_failure(tmp_path: Path) -> None:
    model = load_trained_model(_model_dir(tmp_path / "models"))
    with pytest.raises(NoDataError, match=r"^No data for EURUSD 1h"):
        backtest_inputs(model, _job("2019-01-01", "2019-02-01"), None)
    with pytest.raises(TrainingFailed, match="trained on 1h, not 4h"):
        backtest_inputs(
            model, BacktestJob("x", "EURUSD", "4h", "2018-01-01", "2018-01-05", None, Costs()), None
        )


def test_no_look_ahead_changing_later_bars_never_changes_an_earlier_decision(
    tmp_path: Path,
) -> None:
    model = load_trained_model(_model_dir(tmp_path / "models"))
    rules = DecisionRules(confidence_threshold=0.4, position_awareness=True, min_separation_hours=1)
    job = _job("2018-01-02", "2018-02-07")
    inputs, close = backtest_inputs(model, job, None)
    original = trade_model(model.network, inputs, close, rules, Costs())

    bars = read_csv_bars(_builtin_eurusd())
    cut = inputs.index[len(inputs) // 2]
    changed = bars.copy()
    later = changed.index > cut
    changed.loc[later, ["open", "high", "low", "close"]] *= np.linspace(0.9, 1.1, later.sum())[
        :, None
    ]
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    changed.to_csv(data_dir / "EURUSD_1h.csv")
    inputs2, close2 = backtest_inputs(model, job, data_dir)
    moved = trade_model(model.network, inputs2, close2, rules, Costs())

    upto = int((inputs.index <= cut).sum())
    assert not inputs.iloc[upto:].equals(inputs2.iloc[upto:])  # the change reached the model
    pd.testing.assert_frame_equal(inputs.iloc[:upto], inputs2.iloc[:upto])
    assert moved.signals[:upto] == original.signals[:upto]
    assert {BUY, SELL} <= set(original.signals[:upto])  # real decisions, not all HOLD
    assert moved.signals != original.signals or moved.equity != original.equity


def _running(registry: OperationRegistry) -> JobContext:
    operation, _ = registry.create({}, operation_type="backtesting")
    registry.mark_running(operation.operation_id)
    return JobContext(operation.operation_id, registry)


def test_run_backtest_returns_ktrdrs_result_and_reports_live_progress(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "models")
    registry = OperationRegistry()
    context = _running(registry)
    job = BacktestJob(
        "bt_example", "EURUSD", "1h", "2018-01-02", "2018-02-07", str(directory), Costs()
    )
    result = run_backtest(job, context, models_dir=tmp_path / "models", data_dir=None)
    assert set(result["metrics"]) == KTRDR_KEYS
    assert result["trade_count"] == result["metrics"]["total_trades"] > 0
    assert result["config"] == {
        "start_date": "2018-01-02",
        "end_date": "2018-02-07",
        "initial_capital": 100_000.0,
        "commission": 0.001,
        "slippage": 0.0005,
    }
    progress = registry.get(context.operation_id)["progress"]
    assert progress["steps_completed"] == progress["steps_total"] == result["equity_curve_length"]
    assert {"bars_processed", "trades", "total_return_pct", "equity"} <= set(progress["context"])


def test_cancel_stops_the_backtest_within_a_batch_of_bars(tmp_path: Path) -> None:
    directory = _model_dir(tmp_path / "models")
    registry = OperationRegistry()
    context = _running(registry)
    report = registry.update_progress

    def cancel_after_first_batch(operation_id: str, **progress: object) -> None:
        report(operation_id, **progress)
        if progress.get("steps_completed"):
            context.cancel_event.set()

    registry.update_progress = cancel_after_first_batch  # type: ignore[method-assign]
    job = BacktestJob(
        "bt_example", "EURUSD", "1h", "2017-06-01", "2018-02-07", str(directory), Costs()
    )
    with pytest.raises(TrainingCancelled):
        run_backtest(job, context, models_dir=tmp_path / "models", data_dir=None)
    progress = registry.get(context.operation_id)["progress"]
    assert progress["steps_completed"] == BATCH_BARS < progress["steps_total"]


# -- properties ---------------------------------------------------------------------------------

prices_st = st.lists(st.floats(50.0, 150.0), min_size=2, max_size=60)
signals_st = st.lists(st.sampled_from([BUY, HOLD, SELL]), min_size=60, max_size=60)
COSTLY = Costs(10_000.0, commission=0.002, slippage=0.001, position_fraction=0.5)


@settings(max_examples=100, deadline=None)
@given(prices_st, signals_st)
def test_every_currency_unit_gained_or_lost_is_in_a_trade(prices: list[float], signals) -> None:
    simulation = simulate(hours(len(prices)), prices, scripted(signals), COSTLY)
    net = sum(trade.net_pnl for trade in simulation.ledger.trades)
    assert simulation.equity[-1] - COSTLY.initial_capital == pytest.approx(net, abs=1e-6)
    metrics = performance_metrics(
        simulation.equity,
        simulation.ledger.trades,
        COSTLY.initial_capital,
        years=1,
        bars_per_year=252,
    )
    assert metrics["winning_trades"] + metrics["losing_trades"] <= metrics["total_trades"]
    assert 0.0 <= metrics["max_drawdown_pct"] <= 1.0
    assert all(math.isfinite(float(value)) for value in metrics.values())


@settings(max_examples=100, deadline=None)
@given(prices_st, signals_st, st.data())
def test_equity_up_to_a_bar_never_depends_on_later_prices(
    prices: list[float], signals, data
) -> None:
    cut = data.draw(st.integers(0, len(prices) - 2))
    later = data.draw(
        st.lists(
            st.floats(50.0, 150.0), min_size=len(prices) - cut - 1, max_size=len(prices) - cut - 1
        )
    )
    changed = prices[: cut + 1] + later
    first = simulate(hours(len(prices)), prices, scripted(signals), COSTLY)
    second = simulate(hours(len(prices)), changed, scripted(signals), COSTLY)
    # The last bar closes what is open, so only bars before it are fixed by their past.
    upto = min(cut + 1, len(prices) - 1)
    assert first.equity[:upto] == second.equity[:upto]
    assert first.positions[:upto] == second.positions[:upto]
