"""Quality gates: pure judgements of training and backtest metrics, no I/O.

Two layers. `check_training_gate` / `check_backtest_gate` keep the original plan's contract:
flat metric dicts in, `(passed, reason)` out, a metric that is absent is simply not checked.
`judge_training_result` / `judge_backtest_result` are what the chain uses on a real answer:
they read the result shapes of DESIGN section 2 and 2b and refuse to judge when a metric is
missing (`metric_missing: test_accuracy`) instead of treating it as zero.

The training gate also reports the majority-class share of the test labels: a model that
always answers the commonest class scores exactly that, so accuracy alone can pass a model
that learnt nothing. `min_lift` (off by default) asks for accuracy above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ktrdr_tasks.models import finite_number

if TYPE_CHECKING:
    from ktrdr_tasks.settings import Settings

PASSED = "passed"


@dataclass(frozen=True)
class TrainingThresholds:
    min_accuracy: float = 0.45
    max_loss: float = 0.8
    min_loss_decrease: float = 0.2
    min_lift: float | None = None  # accuracy minus the majority-class share; None: off

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainingThresholds:
        return cls(
            min_accuracy=settings.gate_min_accuracy,
            max_loss=settings.gate_max_loss,
            min_loss_decrease=settings.gate_min_loss_decrease,
            min_lift=settings.gate_min_lift,
        )


@dataclass(frozen=True)
class BacktestThresholds:
    min_win_rate: float = 0.45
    max_drawdown: float = 0.4  # a fraction of the peak equity (ktrdr's `max_drawdown_pct`)
    min_sharpe: float = -0.5
    min_trades: int = 1  # no trade is no evidence

    @classmethod
    def from_settings(cls, settings: Settings) -> BacktestThresholds:
        return cls(
            min_win_rate=settings.gate_min_win_rate,
            max_drawdown=settings.gate_max_drawdown,
            min_sharpe=settings.gate_min_sharpe,
            min_trades=settings.gate_min_trades,
        )


@dataclass(frozen=True)
class TrainingMetrics:
    """The numbers the training gate reads, whichever result shape they came from."""

    accuracy: float | None
    test_loss: float | None
    initial_train_loss: float | None
    final_train_loss: float | None
    majority_class_share: float | None = None
    missing: tuple[str, ...] = field(default_factory=tuple)

    @property
    def lift(self) -> float | None:
        if self.accuracy is None or self.majority_class_share is None:
            return None
        return self.accuracy - self.majority_class_share

    def as_gate_input(self) -> dict[str, float | None]:
        """The plan's flat names (`final_loss` is the test loss there)."""
        return {
            "accuracy": self.accuracy,
            "final_loss": self.test_loss,
            "initial_loss": self.initial_train_loss,
            "final_train_loss": self.final_train_loss,
            "majority_class_share": self.majority_class_share,
        }

    def report(self) -> dict[str, float | None]:
        """What the gate saw, as the record and the CLI show it."""
        return {
            "accuracy": self.accuracy,
            "test_loss": self.test_loss,
            "initial_train_loss": self.initial_train_loss,
            "final_train_loss": self.final_train_loss,
            "majority_class_share": self.majority_class_share,
            "lift": self.lift,
        }


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: tuple[str, ...]
    metrics: dict[str, float | None]

    @property
    def reason(self) -> str:
        return PASSED if self.passed else "; ".join(self.reasons)

    def record(self, name: str, bypassed: bool = False) -> dict[str, Any]:
        """The gate as the operation record stores it (e.g. `metadata.gate`)."""
        return {
            "name": name,
            "passed": self.passed,
            "outcome": PASSED if self.passed else ("bypassed" if bypassed else "failed"),
            "reasons": list(self.reasons),
            "metrics": dict(self.metrics),
        }


def _training_failures(metrics: Mapping[str, Any], thresholds: TrainingThresholds) -> list[str]:
    accuracy = finite_number(metrics.get("accuracy"))
    test_loss = finite_number(metrics.get("final_loss"))
    initial_loss = finite_number(metrics.get("initial_loss"))
    # Loss decrease compares training losses; the flat shape only has `final_loss`.
    final_train_loss = finite_number(metrics.get("final_train_loss"))
    if final_train_loss is None:
        final_train_loss = test_loss
    majority = finite_number(metrics.get("majority_class_share"))

    reasons: list[str] = []
    if accuracy is not None and accuracy < thresholds.min_accuracy:
        reasons.append(f"accuracy_below_threshold ({accuracy:.2%} < {thresholds.min_accuracy:.0%})")
    if test_loss is not None and test_loss > thresholds.max_loss:
        reasons.append(f"loss_too_high ({test_loss:.3f} > {thresholds.max_loss})")
    if initial_loss is not None and final_train_loss is not None and initial_loss > 0:
        decrease = (initial_loss - final_train_loss) / initial_loss
        if decrease < thresholds.min_loss_decrease:
            reasons.append(
                f"insufficient_loss_decrease ({decrease:.1%} < {thresholds.min_loss_decrease:.0%})"
            )
    if thresholds.min_lift is not None and accuracy is not None and majority is not None:
        lift = accuracy - majority
        if lift < thresholds.min_lift:
            reasons.append(
                f"no_lift_over_majority_class (accuracy {accuracy:.2%} - majority class "
                f"{majority:.2%} = {lift:+.2%} < {thresholds.min_lift:+.2%})"
            )
    return reasons


def check_training_gate(
    metrics: Mapping[str, Any], thresholds: TrainingThresholds | None = None
) -> tuple[bool, str]:
    """The plan's training gate over flat metrics (`accuracy`, `final_loss`, `initial_loss`)."""
    reasons = _training_failures(metrics, thresholds or TrainingThresholds())
    return (not reasons, "; ".join(reasons) if reasons else PASSED)


def _backtest_failures(metrics: Mapping[str, Any], limits: BacktestThresholds) -> list[str]:
    trades = finite_number(metrics.get("total_trades"))
    win_rate = finite_number(metrics.get("win_rate"))
    # ktrdr's `max_drawdown` is currency; the fraction is `max_drawdown_pct`. The plan's flat
    # dict (no `_pct`) meant the fraction by `max_drawdown`.
    drawdown = finite_number(metrics.get("max_drawdown_pct"))
    if drawdown is None and "max_drawdown_pct" not in metrics:
        drawdown = finite_number(metrics.get("max_drawdown"))
    sharpe = finite_number(metrics.get("sharpe_ratio"))
    if trades is not None and trades < limits.min_trades:
        # Win rate, drawdown and Sharpe of (almost) no trades say nothing: this is the reason.
        return [f"too_few_trades ({trades:.0f} < {limits.min_trades})"]
    reasons: list[str] = []
    if win_rate is not None and trades != 0 and win_rate < limits.min_win_rate:
        reasons.append(f"win_rate_too_low ({win_rate:.1%} < {limits.min_win_rate:.0%})")
    if drawdown is not None and drawdown > limits.max_drawdown:
        reasons.append(f"drawdown_too_high ({drawdown:.1%} > {limits.max_drawdown:.0%})")
    if sharpe is not None and sharpe < limits.min_sharpe:
        reasons.append(f"sharpe_too_low ({sharpe:.2f} < {limits.min_sharpe})")
    return reasons


def check_backtest_gate(
    metrics: Mapping[str, Any], thresholds: BacktestThresholds | None = None
) -> tuple[bool, str]:
    """The plan's backtest gate over `win_rate`, `max_drawdown(_pct)`, `sharpe_ratio`, and
    `total_trades` when given."""
    reasons = _backtest_failures(metrics, thresholds or BacktestThresholds())
    return (not reasons, "; ".join(reasons) if reasons else PASSED)


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def majority_share(distribution: object) -> float | None:
    """The commonest class's share of a label distribution (counts or fractions per class)."""
    if isinstance(distribution, Mapping):
        values = [finite_number(v) for v in distribution.values()]
    elif isinstance(distribution, list):
        values = [finite_number(v) for v in distribution]
    else:
        return None
    if not values or any(v is None or v < 0 for v in values):
        return None
    counts = [float(v) for v in values if v is not None]
    total = sum(counts)
    return max(counts) / total if total > 0 else None


def _majority_class_share(summary: Mapping[str, Any]) -> float | None:
    # Best source first: the test labels' own share, then their distribution; the reference
    # host reports both in `test_metrics`, a ktrdr backend its distribution where it has one.
    test = _mapping(summary.get("test_metrics"))
    data = _mapping(summary.get("data_summary"))
    share = finite_number(test.get("majority_class_share"))
    if share is None:
        share = finite_number(summary.get("majority_class_share"))
    for distribution in (test.get("label_distribution"), data.get("test_label_distribution")):
        if share is None:
            share = majority_share(distribution)
    return share if share is not None and 0 < share <= 1 else None


def extract_training_metrics(result_summary: Mapping[str, Any] | None) -> TrainingMetrics:
    """Read accuracy and losses from the nested ktrdr shape or the flat one, best source first.

    Accuracy is `test_metrics.test_accuracy` else `accuracy`; the test loss is
    `test_metrics.test_loss` else `final_loss`; the loss decrease compares *training* losses
    (`history.train_loss[0]` vs `final_train_loss`, else `initial_loss` vs `final_loss`).
    """
    summary = _mapping(result_summary)
    test = _mapping(summary.get("test_metrics"))
    training = _mapping(summary.get("training_metrics"))
    history = _mapping(training.get("history"))
    train_losses = history.get("train_loss")

    accuracy = finite_number(test.get("test_accuracy"))
    if accuracy is None:
        accuracy = finite_number(summary.get("accuracy"))
    test_loss = finite_number(test.get("test_loss"))
    if test_loss is None:
        test_loss = finite_number(summary.get("final_loss"))

    initial_train = None
    if isinstance(train_losses, list) and train_losses:
        initial_train = finite_number(train_losses[0])
    if initial_train is None:
        initial_train = finite_number(summary.get("initial_loss"))
    final_train = finite_number(training.get("final_train_loss"))
    if final_train is None and isinstance(train_losses, list) and train_losses:
        final_train = finite_number(train_losses[-1])
    if final_train is None:
        final_train = finite_number(summary.get("final_loss"))

    missing = []
    if accuracy is None:
        missing.append("test_accuracy")
    if test_loss is None:
        missing.append("test_loss")
    if initial_train is None or final_train is None:
        missing.append("train_loss_history")
    return TrainingMetrics(
        accuracy,
        test_loss,
        initial_train,
        final_train,
        _majority_class_share(summary),
        tuple(missing),
    )


def judge_training_result(
    result_summary: Mapping[str, Any] | None, thresholds: TrainingThresholds
) -> GateVerdict:
    """The chain's training gate: missing metrics fail with a reason that names them."""
    metrics = extract_training_metrics(result_summary)
    missing = list(metrics.missing)
    if thresholds.min_lift is not None and metrics.majority_class_share is None:
        missing.append("majority_class_share")
    if missing:
        reasons = tuple(f"metric_missing: {name}" for name in missing)
        return GateVerdict(False, reasons, metrics.report())
    reasons = tuple(_training_failures(metrics.as_gate_input(), thresholds))
    return GateVerdict(not reasons, reasons, metrics.report())


BACKTEST_GATE_METRICS = ("total_trades", "win_rate", "max_drawdown_pct", "sharpe_ratio")
BACKTEST_REPORTED = (
    *BACKTEST_GATE_METRICS,
    "total_return",
    "total_return_pct",
    "profit_factor",
    "max_drawdown",
)


def extract_backtest_metrics(result_summary: Mapping[str, Any] | None) -> dict[str, float | None]:
    """The numbers the backtest gate and the history read, from ktrdr's `result_summary`
    (`metrics` nested in it) or from a bare metrics dict."""
    summary = _mapping(result_summary)
    metrics = _mapping(summary.get("metrics")) or summary
    return {name: finite_number(metrics.get(name)) for name in BACKTEST_REPORTED}


def judge_backtest_result(
    result_summary: Mapping[str, Any] | None, thresholds: BacktestThresholds
) -> GateVerdict:
    """The chain's backtest gate on ktrdr's real result: a missing metric fails naming it."""
    metrics = extract_backtest_metrics(result_summary)
    missing = [name for name in BACKTEST_GATE_METRICS if metrics[name] is None]
    if missing:
        return GateVerdict(False, tuple(f"metric_missing: {name}" for name in missing), metrics)
    reasons = tuple(_backtest_failures(metrics, thresholds))
    return GateVerdict(not reasons, reasons, metrics)
