"""The backtest phase's pure core: which bars to backtest on, what to ask, how far it is. No I/O.

The chain's backtest steps (start, poll, gate) call these: `backtest_window` picks the
out-of-sample dates (after the training window unless configured, never overlapping it),
`backtest_request` builds ktrdr's start request from what training left in the record,
`backtest_progress` maps a backtest's own report onto the cycle's 90-98 %, `read_backtest`
says what one poll found, and `backtest_summary` keeps the figures the record and
`agent history` show.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ktrdr_tasks.errors import ConfigurationError
from ktrdr_tasks.gates import extract_backtest_metrics
from ktrdr_tasks.models import Progress, finite_number
from ktrdr_tasks.progress import RemoteOperationView
from ktrdr_tasks.steps import Step

BACKTEST_START = Step.POLL_BACKTEST.start
BACKTEST_SPAN = Step.POLL_BACKTEST.span


class RemoteBacktestView(RemoteOperationView, Protocol):
    """What a poll reads of the backtest operation (`training_api.RemoteOperation` fits)."""

    @property
    def error_message(self) -> str | None: ...
    @property
    def result_summary(self) -> dict[str, Any] | None: ...
    @property
    def is_running(self) -> bool: ...


@dataclass(frozen=True)
class BacktestWindow:
    start_date: str
    end_date: str


def _day(text: str | None, name: str) -> dt.date | None:
    if text in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(text)[:10])
    except ValueError:
        raise ConfigurationError(f"{name} must be a date as YYYY-MM-DD, got {text!r}") from None


def backtest_window(
    training_start: str | None,
    training_end: str | None,
    *,
    start: str | None = None,
    end: str | None = None,
    today: dt.date,
) -> BacktestWindow:
    """The backtest dates: `start`/`end` (KTRDR_BACKTEST_START_DATE/_END_DATE) where set,
    else from the day after the training window to today.

    The window never overlaps training (dates are whole days, both ends inclusive): a model
    judged on bars it was trained on would pass on memory. Raises ConfigurationError saying
    which setting to change.
    """
    train_start = _day(training_start, "the training start date")
    train_end = _day(training_end, "the training end date")
    first = _day(start, "KTRDR_BACKTEST_START_DATE")
    last = _day(end, "KTRDR_BACKTEST_END_DATE") or today
    if first is None:
        if train_end is None:
            raise ConfigurationError(
                "the training window has no end date, so the backtest cannot start after it: "
                "set KTRDR_BACKTEST_START_DATE and KTRDR_BACKTEST_END_DATE (or the strategy's "
                "training_data.end_date)"
            )
        first = train_end + dt.timedelta(days=1)
    if first > last:
        raise ConfigurationError(
            f"backtest window {first}..{last} is empty: set KTRDR_BACKTEST_END_DATE after {first}"
        )
    overlaps = (train_end is None or first <= train_end) and (
        train_start is None or last >= train_start
    )
    if overlaps and (train_start is not None or train_end is not None):
        raise ConfigurationError(
            f"backtest window {first}..{last} overlaps the training window "
            f"{train_start or '...'}..{train_end or '...'}: move KTRDR_BACKTEST_START_DATE/"
            "_END_DATE outside it"
        )
    return BacktestWindow(first.isoformat(), last.isoformat())


def backtest_request(
    strategy_name: str,
    symbols: Sequence[str],
    timeframes: Sequence[str],
    model_path: str,
    window: BacktestWindow,
) -> dict[str, Any]:
    """The fields of ktrdr's start request (`training_api.StartBacktestRequest`): one symbol
    on one timeframe, the first of each the model trained on.

    `model_path` goes back exactly as the training returned it (relative on a ktrdr backend).
    """
    if not symbols or not timeframes:
        raise ConfigurationError(
            f"cannot backtest {strategy_name}: its training named no symbol or no timeframe"
        )
    return {
        "strategy_name": strategy_name,
        "symbol": symbols[0],
        "timeframe": timeframes[0],
        "model_path": model_path,
        "start_date": window.start_date,
        "end_date": window.end_date,
    }


def backtest_percentage(remote_percentage: float | None) -> float:
    """Map the backtest's own 0-100 % onto the cycle's 90-98 %."""
    pct = finite_number(remote_percentage) or 0.0
    return BACKTEST_START + BACKTEST_SPAN * min(max(pct, 0.0), 100.0) / 100.0


_COUNTS = ("bars_processed", "bars_total", "trades")
_LIVE = (*_COUNTS, "total_return_pct", "equity")


def backtest_progress(remote: RemoteOperationView) -> Progress:
    """Bars processed, trades and return so far, as far as the backtest service tells."""
    context: dict[str, Any] = {}
    remote_context: Mapping[str, Any] = remote.progress.context
    for name in _LIVE:
        value = finite_number(remote_context.get(name))
        if value is not None:
            context[name] = int(value) if name in _COUNTS else value
    if "bars_processed" not in context and remote.progress.steps_completed is not None:
        context["bars_processed"] = remote.progress.steps_completed
    if "bars_total" not in context and remote.progress.steps_total:
        context["bars_total"] = remote.progress.steps_total
    step = remote.progress.current_step or "Backtesting"
    if remote.status == "pending":
        step = "Waiting for a backtest slot"
    return Progress(
        percentage=backtest_percentage(remote.progress.percentage),
        current_step=step,
        context=context,
    )


@dataclass(frozen=True)
class BacktestPoll:
    """What one poll of the backtest operation found: `running`, `completed` or `failed`."""

    state: str
    progress: Progress
    result: dict[str, Any] | None = None
    message: str | None = None


def read_backtest(remote: RemoteBacktestView, backtest_id: str) -> BacktestPoll:
    """One poll judged. A `completed` answer without metrics reads as still running: a ktrdr
    backend can sync its result a moment after the status (the caller bounds the re-reads).
    """
    progress = backtest_progress(remote)
    if remote.is_running:
        return BacktestPoll("running", progress)
    if remote.status == "completed":
        result = remote.result_summary or {}
        if not isinstance(result.get("metrics"), Mapping) or not result["metrics"]:
            return BacktestPoll("running", progress, message="completed without metrics yet")
        done = Progress(
            percentage=BACKTEST_START + BACKTEST_SPAN,
            current_step="Backtest completed",
            context=progress.context,
        )
        return BacktestPoll("completed", done, result=dict(result))
    reason = remote.error_message or "no error message given"
    if remote.status == "cancelled":
        reason = f"it was cancelled on the training service ({reason})"
    return BacktestPoll("failed", progress, message=f"backtest {backtest_id} failed: {reason}")


def backtest_summary(result_summary: Mapping[str, Any] | None) -> dict[str, Any]:
    """The figures a finished cycle keeps: trades, return, Sharpe, drawdown, win rate."""
    summary = result_summary if isinstance(result_summary, Mapping) else {}
    metrics = extract_backtest_metrics(summary)
    config = summary.get("config") if isinstance(summary.get("config"), Mapping) else {}
    return {
        "symbol": summary.get("symbol"),
        "timeframe": summary.get("timeframe"),
        "start_date": config.get("start_date"),
        "end_date": config.get("end_date"),
        "trades": metrics["total_trades"],
        "total_return_pct": metrics["total_return_pct"],
        "sharpe_ratio": metrics["sharpe_ratio"],
        "max_drawdown_pct": metrics["max_drawdown_pct"],
        "win_rate": metrics["win_rate"],
    }
