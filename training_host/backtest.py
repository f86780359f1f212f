"""The backtest of a trained model: its features on new bars -> decisions -> trades -> metrics.

ktrdr's backtest, long only: at each bar's close the model sees the features of that bar
(indicators over the bars up to it, computed with warm-up bars before the window, so
nothing after the bar is known), its most likely class becomes a signal when the
probability reaches `decisions.confidence_threshold`, and position awareness drops signals
that cannot change the position (BUY while long, SELL while flat: no short from flat) or
that come within `decisions.filters.min_signal_separation` hours of the last trade. A BUY
invests `position_fraction` of the cash in whole units at the close plus slippage, paying
commission on the traded value; a SELL closes at the close minus slippage, paying commission
again; an open position is closed on the last bar. The metrics are ktrdr's keys and units.

Pure core (no I/O): `decide`, `Ledger`, `simulate`, `performance_metrics`. The shell,
`run_backtest`, loads the model directory and the bars, runs the model in batches of bars
(checking for a cancel and reporting progress between batches) and returns ktrdr's
`result_summary`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ktrdr_tasks.errors import StrategyError
from ktrdr_tasks.strategy_schema import StrategyConfig
from ktrdr_tasks.strategy_v3 import StrategyConfigV3, check_any_strategy
from training_host.errors import NoDataError, TrainingFailed
from training_host.features import base_timeframe
from training_host.jobs import JobContext
from training_host.labels import BUY, CLASS_NAMES, HOLD, SELL
from training_host.market_data import load_bars, normalise_timeframe, parse_timeframe
from training_host.model import build_mlp
from training_host.pipeline import TrainingJob, input_plan

FLAT, LONG = 0, 1
BATCH_BARS = 256  # bars per model call; a cancel is noticed between batches
WARMUP_BARS = 200  # bars before the window that feed the indicators (ktrdr's history_required)
CAP = 999999.0  # ktrdr's stand-in for an infinite ratio (JSON has no infinity)


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecisionRules:
    """The strategy's `decisions` section, with ktrdr's defaults for what it leaves out."""

    confidence_threshold: float = 0.5
    position_awareness: bool = True
    min_separation_hours: float = 4.0

    @classmethod
    def from_section(cls, decisions: Mapping[str, Any] | None) -> DecisionRules:
        section = decisions if isinstance(decisions, Mapping) else {}
        filters = section.get("filters")
        filters = filters if isinstance(filters, Mapping) else {}
        return cls(
            confidence_threshold=float(section.get("confidence_threshold", 0.5)),
            position_awareness=bool(section.get("position_awareness", True)),
            min_separation_hours=float(filters.get("min_signal_separation", 4.0)),
        )


def decide(
    probabilities: Sequence[float],
    position: int,
    hours_since_trade: float | None,
    rules: DecisionRules,
) -> int:
    """The signal (BUY, HOLD, SELL) for one bar from the model's class probabilities."""
    values = np.asarray(probabilities, dtype=float)
    if not np.all(np.isfinite(values)):
        return HOLD
    signal = int(np.argmax(values))
    if values[signal] < rules.confidence_threshold:
        return HOLD
    if hours_since_trade is not None and hours_since_trade < rules.min_separation_hours:
        return HOLD
    if not rules.position_awareness:
        return signal
    if (signal == BUY and position == LONG) or (signal == SELL and position == FLAT):
        return HOLD
    return signal


# -- trades -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Costs:
    """What trading costs and how much is put at stake (ktrdr's defaults)."""

    initial_capital: float = 100_000.0
    commission: float = 0.001  # fraction of the traded value, paid on entry and on exit
    slippage: float = 0.0005  # fraction of the price lost on each fill
    position_fraction: float = 0.25  # share of the cash a BUY invests


@dataclass(frozen=True)
class Trade:
    """One round trip. `net_pnl` counts both commissions; slippage is in the fill prices."""

    entry_time: pd.Timestamp
    exit_time: pd.Timestamp
    entry_price: float
    exit_price: float
    quantity: int
    gross_pnl: float
    commission: float
    slippage: float
    net_pnl: float

    @property
    def holding_period_hours(self) -> float:
        return (self.exit_time - self.entry_time).total_seconds() / 3600.0


@dataclass
class Ledger:
    """Cash, the open long position and the closed trades; every fill goes through here."""

    costs: Costs
    cash: float = field(init=False)
    quantity: int = 0
    entry_price: float = 0.0
    entry_time: pd.Timestamp | None = None
    entry_commission: float = 0.0
    entry_slippage: float = 0.0
    trades: list[Trade] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cash = self.costs.initial_capital

    @property
    def position(self) -> int:
        return LONG if self.quantity > 0 else FLAT

    def equity(self, price: float) -> float:
        return self.cash + self.quantity * price

    def buy(self, when: pd.Timestamp, price: float) -> bool:
        """Open a long of whole units; False when already long or nothing is affordable."""
        if self.quantity > 0:
            return False
        fill = price * (1.0 + self.costs.slippage)
        budget = self.cash * self.costs.position_fraction
        quantity = int(budget / (fill * (1.0 + self.costs.commission)))
        if quantity <= 0:
            return False
        commission = fill * quantity * self.costs.commission
        self.cash -= fill * quantity + commission
        self.quantity, self.entry_price, self.entry_time = quantity, fill, when
        self.entry_commission = commission
        self.entry_slippage = (fill - price) * quantity
        return True

    def sell(self, when: pd.Timestamp, price: float) -> Trade | None:
        """Close the long; None when flat."""
        if self.quantity <= 0 or self.entry_time is None:
            return None
        fill = price * (1.0 - self.costs.slippage)
        value = fill * self.quantity
        commission = value * self.costs.commission
        self.cash += value - commission
        gross = (fill - self.entry_price) * self.quantity
        trade = Trade(
            entry_time=self.entry_time,
            exit_time=when,
            entry_price=self.entry_price,
            exit_price=fill,
            quantity=self.quantity,
            gross_pnl=gross,
            commission=self.entry_commission + commission,
            slippage=self.entry_slippage + (price - fill) * self.quantity,
            net_pnl=gross - self.entry_commission - commission,
        )
        self.trades.append(trade)
        self.quantity, self.entry_price, self.entry_time = 0, 0.0, None
        self.entry_commission = self.entry_slippage = 0.0
        return trade


Decider = Callable[[int, int, float | None], int]
"""(bar number, position, hours since the last trade or None) -> signal."""


@dataclass
class Simulation:
    """A backtest in progress: feed bars with `step`, end with `finish`."""

    costs: Costs
    ledger: Ledger = field(init=False)
    equity: list[float] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # FLAT or LONG after each bar
    last_trade_time: pd.Timestamp | None = None

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.costs)

    def hours_since_trade(self, when: pd.Timestamp) -> float | None:
        if self.last_trade_time is None:
            return None
        return (when - self.last_trade_time).total_seconds() / 3600.0

    def step(self, when: pd.Timestamp, close: float, signal: int) -> None:
        """Act on a bar's signal at its close, then mark the position to that close."""
        traded = False
        if signal == BUY:
            traded = self.ledger.buy(when, close)
        elif signal == SELL:
            traded = self.ledger.sell(when, close) is not None
        if traded:
            self.last_trade_time = when
        self.signals.append(signal)
        self.positions.append(self.ledger.position)
        self.equity.append(self.ledger.equity(close))

    def finish(self, when: pd.Timestamp, close: float) -> None:
        """Close what is still open on the last bar, as ktrdr does, so every trade counts."""
        if self.ledger.sell(when, close) is not None and self.equity:
            self.equity[-1] = self.ledger.equity(close)
            self.positions[-1] = FLAT


def simulate(
    index: pd.DatetimeIndex, close: Sequence[float], decider: Decider, costs: Costs
) -> Simulation:
    """Run every bar through `decider` and the ledger; the whole backtest in one call."""
    simulation = Simulation(costs)
    for bar, when in enumerate(index):
        signal = decider(bar, simulation.ledger.position, simulation.hours_since_trade(when))
        simulation.step(when, float(close[bar]), signal)
    if len(index):
        simulation.finish(index[-1], float(close[-1]))
    return simulation


# -- metrics --------------------------------------------------------------------------------


def _finite(value: float) -> float:
    """ktrdr's JSON-safe number: NaN reads 0, infinities and huge ratios read +-999999."""
    if math.isnan(value):
        return 0.0
    return max(-CAP, min(CAP, float(value)))


def periods_per_year(index: pd.DatetimeIndex) -> float:
    """Bars per year as the data is dense (FX trades 5 days a week, stocks ~252 days)."""
    if len(index) < 2:
        return 0.0
    years = (index[-1] - index[0]).total_seconds() / (365.25 * 86400.0)
    return (len(index) - 1) / years if years > 0 else 0.0


def performance_metrics(
    equity: Sequence[float],
    trades: Sequence[Trade],
    initial_capital: float,
    *,
    years: float,
    bars_per_year: float,
) -> dict[str, float | int]:
    """ktrdr's 22 metrics. Currency: returns, drawdown, wins and losses; fractions: `*_pct`,
    `win_rate`, `annualized_return`. Per-bar returns (starting from the initial capital)
    are annualised with `bars_per_year`; Sharpe and Sortino assume a zero risk-free rate.
    """
    curve = np.asarray([initial_capital, *equity], dtype=float)
    final = float(curve[-1])
    total_return = final - initial_capital
    annualized = 0.0
    if years > 0:
        annualized = (final / initial_capital) ** (1.0 / years) - 1.0 if final > 0 else -1.0

    returns = curve[1:] / curve[:-1] - 1.0 if len(curve) > 1 else np.zeros(0)
    scale = math.sqrt(bars_per_year) if bars_per_year > 0 else 0.0
    volatility = sharpe = sortino = 0.0
    if len(returns) > 1:
        deviation = float(np.std(returns))
        volatility = deviation * scale
        if deviation > 1e-12:
            sharpe = float(np.mean(returns)) / deviation * scale
        downside = math.sqrt(float(np.mean(np.minimum(returns, 0.0) ** 2)))
        if downside > 1e-12:
            sortino = float(np.mean(returns)) / downside * scale

    peaks = np.maximum.accumulate(curve)
    max_drawdown = float(np.max(peaks - curve))
    max_drawdown_pct = float(np.max((peaks - curve) / peaks))

    pnl = [trade.net_pnl for trade in trades]
    wins = [trade for trade in trades if trade.net_pnl > 0]
    losses = [trade for trade in trades if trade.net_pnl < 0]
    won, lost = sum(t.net_pnl for t in wins), -sum(t.net_pnl for t in losses)
    # ktrdr: 999999.0 when something was won and nothing lost, 0 when nothing was won.
    profit_factor = won / lost if lost > 0 else (CAP if won > 0 else 0.0)

    def mean_of(values: Sequence[float]) -> float:
        return float(np.mean(values)) if len(values) else 0.0

    metrics: dict[str, float | int] = {
        "total_return": total_return,
        "total_return_pct": total_return / initial_capital,
        "annualized_return": annualized,
        "volatility": volatility,
        "sharpe_ratio": sharpe,
        "sortino_ratio": sortino,
        "calmar_ratio": annualized / max_drawdown_pct if max_drawdown_pct > 0 else 0.0,
        "max_drawdown": max_drawdown,
        "max_drawdown_pct": max_drawdown_pct,
        "recovery_factor": total_return / max_drawdown if max_drawdown > 0 else 0.0,
        "win_rate": len(wins) / len(trades) if trades else 0.0,
        "profit_factor": profit_factor,
        "avg_win": mean_of([t.net_pnl for t in wins]),
        "avg_loss": mean_of([t.net_pnl for t in losses]),
        "largest_win": max((t.net_pnl for t in wins), default=0.0),
        "largest_loss": min((t.net_pnl for t in losses), default=0.0),
        "avg_holding_period": mean_of([t.holding_period_hours for t in trades]),
        "avg_win_holding_period": mean_of([t.holding_period_hours for t in wins]),
        "avg_loss_holding_period": mean_of([t.holding_period_hours for t in losses]),
    }
    clean: dict[str, float | int] = {key: _finite(float(value)) for key, value in metrics.items()}
    clean.update(total_trades=len(pnl), winning_trades=len(wins), losing_trades=len(losses))
    return clean


# -- the model directory --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainedModel:
    """What a model directory holds, ready to run: the network and how to feed it."""

    directory: Path
    network: torch.nn.Module
    feature_names: list[str]
    document: dict[str, Any]
    config: StrategyConfig | StrategyConfigV3
    timeframes: list[str]
    rules: DecisionRules


def resolve_model_dir(model_path: str | None, models_dir: Path) -> Path:
    """The directory a training returned, as given (absolute, or relative like ktrdr's
    `models/<name>/<tf>_vN`), and only inside the host's models directory."""
    if not model_path:
        raise TrainingFailed("model_path is required for backtesting")
    root = models_dir.resolve()
    given = Path(model_path)
    candidates = [given] if given.is_absolute() else [given, root / given, root.parent / given]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_relative_to(root) and (resolved / "model.pt").is_file():
            return resolved
    raise TrainingFailed(f"Model directory not found: {model_path}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingFailed(f"Model file {path} is unreadable: {exc}") from exc


def load_trained_model(directory: Path) -> TrainedModel:
    """The network from `model.pt` and the strategy from the model's own `config.json`
    (ktrdr backtests with the strategy the model was trained with, not today's YAML)."""
    try:
        state = torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        info = state["model_info"]
        network = build_mlp(
            int(info["input_size"]),
            [int(size) for size in info["hidden_layers"]],
            str(info["activation"]),
            float(info["dropout"]),
        )
        network.load_state_dict(state["state_dict"])
        feature_names = [str(name) for name in state["feature_names"]]
    except (OSError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise TrainingFailed(f"Model {directory} cannot be loaded from model.pt: {exc}") from exc
    network.eval()
    document = _read_json(directory / "config.json")
    if not isinstance(document, dict):
        raise TrainingFailed(f"Model {directory} has a config.json that is not a strategy")
    try:
        config = check_any_strategy(document, source=f"{directory.name}/config.json")
    except StrategyError as exc:
        raise TrainingFailed(f"Model {directory} has an unusable config.json: {exc}") from exc
    metadata_file = directory / "metadata.json"
    metadata = _read_json(metadata_file) if metadata_file.is_file() else {}
    timeframes = [normalise_timeframe(tf) for tf in metadata.get("timeframes") or []]
    return TrainedModel(
        directory=directory,
        network=network,
        feature_names=feature_names,
        document=document,
        config=config,
        timeframes=timeframes,
        rules=DecisionRules.from_section(document.get("decisions")),
    )


# -- the job ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class BacktestJob:
    """A validated start request."""

    strategy_name: str
    symbol: str
    timeframe: str
    start_date: str
    end_date: str
    model_path: str | None
    costs: Costs


def _utc(text: str, *, end: bool) -> pd.Timestamp:
    stamp = pd.Timestamp(text)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    # A bare date as the end means the whole of that day, as the data filters read it.
    return stamp + pd.Timedelta(days=1) if end and len(text.strip()) <= 10 else stamp


def backtest_inputs(
    model: TrainedModel, job: BacktestJob, data_dir: Path | None
) -> tuple[pd.DataFrame, pd.Series]:
    """The model's inputs and the base close on the window's bars, indicators warmed up on
    the `WARMUP_BARS` bars before it."""
    timeframes = model.timeframes or [normalise_timeframe(job.timeframe)]
    requested = normalise_timeframe(job.timeframe)
    if requested not in timeframes:
        raise TrainingFailed(
            f"Model {model.directory} was trained on {', '.join(timeframes)}, not {requested}: "
            "backtest it on a timeframe it was trained on"
        )
    try:
        start, end = _utc(job.start_date, end=False), _utc(job.end_date, end=True)
    except (ValueError, TypeError) as exc:
        raise TrainingFailed(
            f"Bad backtest dates {job.start_date}..{job.end_date} ({exc}); use YYYY-MM-DD"
        ) from exc
    if start >= end:
        raise TrainingFailed(f"Backtest start {job.start_date} is not before end {job.end_date}")
    coarsest = max(parse_timeframe(tf) for tf in timeframes)
    warmup_start = (start - coarsest * WARMUP_BARS).strftime("%Y-%m-%d")
    try:
        bars = {
            tf: load_bars(job.symbol, tf, warmup_start, job.end_date, data_dir) for tf in timeframes
        }
    except NoDataError as exc:
        # ktrdr's words ("No data for EURUSD 1h"), then what the data does cover.
        detail = str(exc).split(": ", 1)[-1] if str(exc).startswith("No data found") else exc
        raise NoDataError(f"No data for {job.symbol} {requested}: {detail}") from exc
    base = base_timeframe(timeframes)
    window = (bars[base].index >= start) & (bars[base].index < end)
    if not window.any():
        raise NoDataError(
            f"No data for {job.symbol} {base} between {job.start_date} and {job.end_date}"
        )
    # The training's own recipe (v2 memberships with lags, or v3 nn_inputs) on these bars.
    plan = input_plan(
        TrainingJob(
            job.strategy_name,
            model.directory / "config.json",
            model.document,
            model.config,
            (job.symbol,),
            tuple(timeframes),
            None,
            None,
        )
    )
    inputs = plan.make_inputs(bars)
    if list(inputs.columns) != model.feature_names:
        raise TrainingFailed(
            f"Model {model.directory} expects {len(model.feature_names)} features "
            f"({', '.join(model.feature_names[:4])}, ...) but its config.json gives "
            f"{len(inputs.columns)} here ({', '.join(list(inputs.columns)[:4])}, ...): it was "
            "trained by another feature pipeline; retrain it"
        )
    return inputs[window], bars[base]["close"][window]


BatchCallback = Callable[[int, Simulation], None]
"""(bars done so far, the simulation) after each batch: progress and the cancel check."""


def trade_model(
    network: torch.nn.Module,
    inputs: pd.DataFrame,
    close: pd.Series,
    rules: DecisionRules,
    costs: Costs,
    after_batch: BatchCallback | None = None,
) -> Simulation:
    """Run the network over the bars in batches and trade its decisions, bar by bar.

    Inputs of bar t hold nothing after t, and the position a decision sees is the one the
    earlier bars left, so the decision at t depends only on bars up to t.
    """
    values = inputs.to_numpy(dtype=np.float32, copy=True)
    prices, index = close.to_numpy(), inputs.index
    simulation = Simulation(costs)
    for first in range(0, len(index), BATCH_BARS):
        last = min(first + BATCH_BARS, len(index))
        with torch.no_grad():
            logits = network(torch.from_numpy(values[first:last]))
            probabilities = torch.softmax(logits, dim=1).numpy()
        for offset, row in enumerate(probabilities):
            when = index[first + offset]
            position = simulation.ledger.position
            signal = decide(row, position, simulation.hours_since_trade(when), rules)
            simulation.step(when, float(prices[first + offset]), signal)
        if after_batch is not None:
            after_batch(last, simulation)
    if len(index):
        simulation.finish(index[-1], float(prices[-1]))
    return simulation


def run_backtest(
    job: BacktestJob, context: JobContext, *, models_dir: Path, data_dir: Path | None
) -> dict[str, Any]:
    """Run the job; return ktrdr's backtest `result_summary`. Raises TrainingFailed/Cancelled."""
    started, clock = datetime.now(UTC), time.perf_counter()
    registry, operation_id = context.registry, context.operation_id
    registry.update_progress(operation_id, percentage=1.0, current_step="Loading model")
    model = load_trained_model(resolve_model_dir(job.model_path, models_dir))
    registry.update_progress(operation_id, percentage=3.0, current_step="Computing features")
    inputs, close = backtest_inputs(model, job, data_dir)
    context.check_cancel()
    total, index = len(inputs), inputs.index

    def after_batch(done: int, simulation: Simulation) -> None:
        context.check_cancel()
        equity = simulation.equity[-1]
        registry.update_progress(
            operation_id,
            percentage=5.0 + 90.0 * done / total,
            current_step=f"Backtesting {job.symbol} {job.timeframe}: bar {done}/{total}",
            steps_completed=done,
            steps_total=total,
            context={
                "bars_processed": done,
                "bars_total": total,
                "trades": len(simulation.ledger.trades),
                "position": "LONG" if simulation.ledger.position == LONG else "FLAT",
                "equity": equity,
                "total_return_pct": equity / job.costs.initial_capital - 1.0,
            },
        )

    simulation = trade_model(model.network, inputs, close, model.rules, job.costs, after_batch)
    years = (index[-1] - index[0]).total_seconds() / (365.25 * 86400.0)
    metrics = performance_metrics(
        simulation.equity,
        simulation.ledger.trades,
        job.costs.initial_capital,
        years=years,
        bars_per_year=periods_per_year(index),
    )
    counts = np.bincount(np.asarray(simulation.signals, dtype=np.int64), minlength=3)
    return {
        "config": {
            "start_date": job.start_date,
            "end_date": job.end_date,
            "initial_capital": job.costs.initial_capital,
            "commission": job.costs.commission,
            "slippage": job.costs.slippage,
        },
        "symbol": job.symbol,
        "timeframe": job.timeframe,
        "strategy_name": job.strategy_name,
        "model_path": job.model_path,
        "start_time": started.isoformat(),
        "end_time": datetime.now(UTC).isoformat(),
        "trade_count": len(simulation.ledger.trades),
        "equity_curve_length": len(simulation.equity),
        "execution_time_seconds": round(time.perf_counter() - clock, 4),
        "first_bar": index[0].isoformat(),
        "last_bar": index[-1].isoformat(),
        "signals": {name: int(n) for name, n in zip(CLASS_NAMES, counts, strict=True)},
        "metrics": metrics,
    }
