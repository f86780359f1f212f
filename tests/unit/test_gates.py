"""Training and backtest gates: the plan's cases, both result shapes, missing metrics."""

from __future__ import annotations

import pytest

from ktrdr_tasks.gates import (
    BacktestThresholds,
    TrainingThresholds,
    check_backtest_gate,
    check_training_gate,
    extract_training_metrics,
    judge_backtest_result,
    judge_training_result,
)

# -- the plan's tests --------------------------------------------------------------------------


def test_passes_good_metrics() -> None:
    passed, reason = check_training_gate({"accuracy": 0.65, "final_loss": 0.3, "initial_loss": 0.9})
    assert passed is True
    assert reason == "passed"


def test_fails_low_accuracy() -> None:
    passed, reason = check_training_gate({"accuracy": 0.40, "final_loss": 0.3})
    assert passed is False
    assert "accuracy" in reason


def test_fails_high_loss() -> None:
    passed, reason = check_training_gate({"accuracy": 0.60, "final_loss": 0.85})
    assert passed is False
    assert "loss_too_high" in reason


def test_fails_insufficient_decrease() -> None:
    passed, reason = check_training_gate(
        {"accuracy": 0.60, "initial_loss": 0.5, "final_loss": 0.45}
    )
    assert passed is False
    assert "insufficient_loss_decrease" in reason


def test_handles_missing_metrics() -> None:
    passed, _ = check_training_gate({})
    assert passed is True


def test_backtest_passes_good_metrics() -> None:
    passed, _ = check_backtest_gate({"win_rate": 0.55, "max_drawdown": 0.15, "sharpe_ratio": 0.8})
    assert passed is True


@pytest.mark.parametrize(
    ("metrics", "word"),
    [
        ({"win_rate": 0.40}, "win_rate_too_low"),
        ({"win_rate": 0.55, "max_drawdown": 0.45}, "drawdown_too_high"),
        ({"win_rate": 0.55, "sharpe_ratio": -0.8}, "sharpe_too_low"),
    ],
)
def test_backtest_failures_name_the_reason(metrics: dict, word: str) -> None:
    passed, reason = check_backtest_gate(metrics)
    assert passed is False
    assert reason.startswith(word)


def test_thresholds_come_from_the_caller() -> None:
    lax = TrainingThresholds(min_accuracy=0.10, max_loss=0.8, min_loss_decrease=-0.5)
    assert check_training_gate({"accuracy": 0.2, "final_loss": 0.5, "initial_loss": 0.5}, lax)[0]
    strict = BacktestThresholds(min_win_rate=0.6)
    assert not check_backtest_gate({"win_rate": 0.55}, strict)[0]


# -- the shapes of a real training result --------------------------------------------------------

NESTED = {
    "model_path": "models/s/1h_v1",
    "training_metrics": {
        "final_train_loss": 0.6,
        "final_val_accuracy": 0.6,
        "history": {"train_loss": [1.1, 0.9, 0.6], "val_loss": [1.0, 0.9, 0.95]},
    },
    "test_metrics": {"test_accuracy": 0.62, "test_loss": 0.75},
}


def test_nested_shape_reads_test_metrics_and_training_losses() -> None:
    metrics = extract_training_metrics(NESTED)
    assert metrics.accuracy == 0.62
    assert metrics.test_loss == 0.75
    assert (metrics.initial_train_loss, metrics.final_train_loss) == (1.1, 0.6)
    assert judge_training_result(NESTED, TrainingThresholds()).passed


def test_loss_decrease_compares_training_losses_never_train_vs_test() -> None:
    # train loss fell 1.1 -> 0.6 (45 %); the test loss 0.75 would show only 32 %.
    result = {**NESTED, "test_metrics": {"test_accuracy": 0.62, "test_loss": 0.75}}
    verdict = judge_training_result(result, TrainingThresholds(min_loss_decrease=0.4))
    assert verdict.passed, verdict.reason


def test_flat_shape() -> None:
    flat = {"accuracy": 0.5, "final_loss": 0.9, "initial_loss": 1.0}
    verdict = judge_training_result(flat, TrainingThresholds())
    assert not verdict.passed
    assert verdict.reasons[0].startswith("loss_too_high")
    assert any(r.startswith("insufficient_loss_decrease") for r in verdict.reasons)


@pytest.mark.parametrize(
    ("result", "missing"),
    [
        (None, "test_accuracy"),
        ({}, "test_loss"),
        (
            {"test_metrics": {"test_loss": 0.7}, "training_metrics": NESTED["training_metrics"]},
            "test_accuracy",
        ),
        ({"test_metrics": {"test_accuracy": 0.7, "test_loss": 0.7}}, "train_loss_history"),
        (
            {
                "test_metrics": {"test_accuracy": "0.7", "test_loss": 0.7},
                "training_metrics": NESTED["training_metrics"],
            },
            "test_accuracy",
        ),
    ],
)
def test_missing_metric_fails_naming_it(result: dict | None, missing: str) -> None:
    verdict = judge_training_result(result, TrainingThresholds())
    assert not verdict.passed
    assert f"metric_missing: {missing}" in verdict.reasons


def test_nan_metrics_count_as_missing_not_as_numbers() -> None:
    result = {**NESTED, "test_metrics": {"test_accuracy": float("nan"), "test_loss": 0.7}}
    assert (
        "metric_missing: test_accuracy"
        in judge_training_result(result, TrainingThresholds()).reasons
    )


# -- the majority-class baseline ----------------------------------------------------------------


def _with_labels(test_accuracy: float, **test: object) -> dict:
    return {**NESTED, "test_metrics": {"test_accuracy": test_accuracy, "test_loss": 0.75, **test}}


def test_training_gate_reports_majority_share_and_lift_next_to_accuracy() -> None:
    verdict = judge_training_result(
        _with_labels(0.62, majority_class_share=0.578), TrainingThresholds()
    )
    assert verdict.passed  # the lift floor is off by default: the seed's verdicts hold
    assert verdict.metrics["accuracy"] == 0.62
    assert verdict.metrics["majority_class_share"] == 0.578
    assert verdict.metrics["lift"] == pytest.approx(0.042)
    assert verdict.metrics["test_loss"] == 0.75


@pytest.mark.parametrize(
    "labels",
    [{"BUY": 578, "HOLD": 100, "SELL": 322}, {"BUY": 0.578, "HOLD": 0.1, "SELL": 0.322}],
)
def test_majority_share_comes_from_a_label_distribution_too(labels: dict) -> None:
    metrics = extract_training_metrics(_with_labels(0.6, label_distribution=labels))
    assert metrics.majority_class_share == pytest.approx(0.578)


def test_always_buy_model_fails_the_lift_gate_when_it_is_on() -> None:
    always_buy = _with_labels(0.578, majority_class_share=0.578)
    lifted = TrainingThresholds(min_lift=0.02)
    verdict = judge_training_result(always_buy, lifted)
    assert not verdict.passed
    assert verdict.reasons[0].startswith("no_lift_over_majority_class")
    assert judge_training_result(_with_labels(0.61, majority_class_share=0.578), lifted).passed
    assert judge_training_result(always_buy, TrainingThresholds()).passed


def test_lift_gate_without_a_label_distribution_names_the_missing_metric() -> None:
    verdict = judge_training_result(NESTED, TrainingThresholds(min_lift=0.0))
    assert verdict.reasons == ("metric_missing: majority_class_share",)
    assert judge_training_result(NESTED, TrainingThresholds()).passed


# -- the backtest gate on ktrdr's real result ---------------------------------------------------


def backtest_result(**metrics: float) -> dict:
    """A completed ktrdr backtest's result_summary (currency `max_drawdown`, fraction `_pct`)."""
    base = {
        "total_return": 2_350.0,
        "total_return_pct": 0.0235,
        "annualized_return": 0.31,
        "volatility": 0.08,
        "sharpe_ratio": 0.9,
        "sortino_ratio": 1.3,
        "calmar_ratio": 4.2,
        "max_drawdown": 7_400.0,
        "max_drawdown_pct": 0.072,
        "recovery_factor": 0.32,
        "win_rate": 0.55,
        "profit_factor": 1.4,
        "total_trades": 11,
        "winning_trades": 6,
        "losing_trades": 5,
        "avg_win": 900.0,
        "avg_loss": -610.0,
        "largest_win": 2_100.0,
        "largest_loss": -1_300.0,
        "avg_holding_period": 7.5,
        "avg_win_holding_period": 8.0,
        "avg_loss_holding_period": 6.9,
    }
    return {
        "config": {"start_date": "2018-02-02", "end_date": "2018-02-07"},
        "symbol": "EURUSD",
        "timeframe": "1h",
        "trade_count": int(metrics.get("total_trades", 11)),
        "metrics": {**base, **metrics},
    }


def test_backtest_gate_passes_a_real_result_reading_the_drawdown_fraction() -> None:
    # max_drawdown is 7400 (currency): read as a fraction it would fail every result.
    verdict = judge_backtest_result(backtest_result(), BacktestThresholds())
    assert verdict.passed, verdict.reason
    assert verdict.metrics["max_drawdown_pct"] == 0.072
    assert verdict.metrics["total_trades"] == 11
    assert check_backtest_gate(backtest_result()["metrics"])[0]


@pytest.mark.parametrize(
    ("metrics", "word"),
    [
        ({"win_rate": 0.40}, "win_rate_too_low"),
        ({"max_drawdown_pct": 0.45}, "drawdown_too_high"),
        ({"sharpe_ratio": -0.8}, "sharpe_too_low"),
    ],
)
def test_backtest_gate_fails_naming_the_metric(metrics: dict, word: str) -> None:
    verdict = judge_backtest_result(backtest_result(**metrics), BacktestThresholds())
    assert not verdict.passed
    assert verdict.reasons[0].startswith(word)


def test_zero_trades_is_too_few_trades_not_a_low_win_rate() -> None:
    zero = backtest_result(
        total_trades=0, winning_trades=0, losing_trades=0, win_rate=0.0, sharpe_ratio=0.0
    )
    zero["metrics"].update(max_drawdown=0.0, max_drawdown_pct=0.0, profit_factor=0.0)
    verdict = judge_backtest_result(zero, BacktestThresholds())
    assert verdict.reasons == ("too_few_trades (0 < 1)",)
    # KTRDR_GATE_MIN_TRADES=0 accepts no evidence; a win rate of no trades is then not judged.
    assert judge_backtest_result(zero, BacktestThresholds(min_trades=0)).passed
    assert not judge_backtest_result(
        backtest_result(total_trades=2), BacktestThresholds(min_trades=3)
    ).passed


def test_profit_factor_999999_when_nothing_was_lost_passes() -> None:
    flawless = backtest_result(
        win_rate=1.0, losing_trades=0, avg_loss=0.0, largest_loss=0.0, profit_factor=999999.0
    )
    verdict = judge_backtest_result(flawless, BacktestThresholds())
    assert verdict.passed
    assert verdict.metrics["profit_factor"] == 999999.0


@pytest.mark.parametrize("name", ["win_rate", "max_drawdown_pct", "sharpe_ratio", "total_trades"])
def test_missing_backtest_metric_fails_naming_it(name: str) -> None:
    result = backtest_result()
    del result["metrics"][name]
    verdict = judge_backtest_result(result, BacktestThresholds())
    assert verdict.reasons == (f"metric_missing: {name}",)


def test_backtest_without_metrics_fails_naming_them_all() -> None:
    verdict = judge_backtest_result({"symbol": "EURUSD"}, BacktestThresholds())
    assert not verdict.passed
    assert "metric_missing: max_drawdown_pct" in verdict.reasons
    assert judge_backtest_result(None, BacktestThresholds()).reasons[0].startswith("metric_missing")


def test_currency_drawdown_is_never_read_as_a_fraction() -> None:
    metrics = backtest_result()["metrics"]
    metrics["max_drawdown_pct"] = float("nan")
    assert check_backtest_gate(metrics)[0]  # 7400 currency is not a 740000 % drawdown
    verdict = judge_backtest_result({"metrics": metrics}, BacktestThresholds())
    assert verdict.reasons == ("metric_missing: max_drawdown_pct",)


def test_gate_record_says_bypassed_only_for_a_failed_gate() -> None:
    failed = judge_backtest_result(backtest_result(win_rate=0.1), BacktestThresholds())
    assert failed.record("backtest", bypassed=True)["outcome"] == "bypassed"
    assert failed.record("backtest")["outcome"] == "failed"
    record = judge_backtest_result(backtest_result(), BacktestThresholds()).record("backtest")
    assert record["outcome"] == "passed" and record["metrics"]["win_rate"] == 0.55


def test_thresholds_are_read_from_settings() -> None:
    from ktrdr_tasks.settings import Settings

    settings = Settings(
        gate_min_win_rate=0.3,
        gate_max_drawdown=0.2,
        gate_min_sharpe=0.1,
        gate_min_trades=5,
        gate_min_lift=0.01,
        gate_min_accuracy=0.1,
    )
    assert BacktestThresholds.from_settings(settings) == BacktestThresholds(0.3, 0.2, 0.1, 5)
    training = TrainingThresholds.from_settings(settings)
    assert training.min_lift == 0.01 and training.min_accuracy == 0.1
    assert TrainingThresholds.from_settings(Settings()).min_lift is None
