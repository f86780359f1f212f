"""Training and backtest gates: the plan's cases, both result shapes, missing metrics."""

from __future__ import annotations

import pytest

from ktrdr_tasks.gates import (
    BacktestThresholds,
    TrainingThresholds,
    check_backtest_gate,
    check_training_gate,
    extract_training_metrics,
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
    assert metrics.final_loss == 0.75
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
