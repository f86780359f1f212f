"""Backtest time of the reference host: the example strategy over its out-of-sample window.

In-process, no HTTP: trains the strategy on its own training window (its YAML's dates), then
backtests the model on the bars after it (the chain's default window: the day after the
training end to the end of the data) and, for throughput, on every bar of the data. Prints
each run's wall time, bars, trades and return, and the backtest time as a ratio of the
training time of the same run; the last line is
`backtest_seconds=<S> bars=<N> bars_per_second=<R> ratio_to_training=<Q>`. Goal: the
out-of-sample backtest under 1 s and under 10 % of the training time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from ktrdr_tasks.backtest import backtest_window
from ktrdr_tasks.strategy import extract_training_params
from ktrdr_tasks.strategy_schema import check_strategy, load_strategy_file
from training_host.backtest import BacktestJob, Costs, run_backtest
from training_host.jobs import JobContext
from training_host.main import configure_torch
from training_host.operations import OperationRegistry
from training_host.pipeline import TrainingJob, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", default="eurusd_1h_rsi_macd_adx")
    parser.add_argument("--strategies-dir", type=Path, default=Path("strategies"))
    # The shipped EURUSD 1h bars end 2018-02-07: the out-of-sample window ends there.
    parser.add_argument("--data-end", default="2018-02-07")
    parser.add_argument("--data-start", default="2017-04-19")
    parser.add_argument("--repeat", type=int, default=5, help="backtests per window (best)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=42)


def _context(registry: OperationRegistry, kind: str) -> JobContext:
    operation, _ = registry.create({}, operation_type=kind)
    registry.mark_running(operation.operation_id)
    return JobContext(operation.operation_id, registry)


def _best_backtest(
    job: BacktestJob, models_dir: Path, registry: OperationRegistry, repeat: int
) -> tuple[float, dict[str, Any]]:
    best, result = float("inf"), {}
    for _ in range(max(repeat, 1)):
        started = time.perf_counter()
        result = run_backtest(
            job, _context(registry, "backtesting"), models_dir=models_dir, data_dir=None
        )
        best = min(best, time.perf_counter() - started)
    return best, result


def run(args: argparse.Namespace) -> int:
    configure_torch(args.threads)
    path = args.strategies_dir / f"{args.strategy}.yaml"
    document = load_strategy_file(path)
    params = extract_training_params(document)
    symbol, timeframe = params["symbols"][0], params["timeframes"][0]
    registry = OperationRegistry()
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp)
        training_job = TrainingJob(
            strategy_name=args.strategy,
            strategy_path=path,
            document=document,
            config=check_strategy(document, source=path.name),
            symbols=(symbol,),
            timeframes=(timeframe,),
            start_date=params["start_date"],
            end_date=params["end_date"],
        )
        started = time.perf_counter()
        trained = run_training(
            training_job,
            _context(registry, "training"),
            models_dir=models_dir,
            data_dir=None,
            seed=args.seed,
        )
        training_seconds = time.perf_counter() - started
        window = backtest_window(
            params["start_date"],
            params["end_date"],
            end=args.data_end,
            today=dt.date.fromisoformat(args.data_end),
        )
        runs = {
            "out_of_sample": (window.start_date, window.end_date),
            "all_bars": (args.data_start, args.data_end),
        }
        print(
            f"strategy={args.strategy} {symbol} {timeframe} trained on "
            f"{params['start_date']}..{params['end_date']} in {training_seconds:.2f} s "
            f"(test_accuracy={trained['test_metrics']['test_accuracy']:.3f})"
        )
        measured: dict[str, tuple[float, dict[str, Any]]] = {}
        for name, (start, end) in runs.items():
            job = BacktestJob(
                args.strategy, symbol, timeframe, start, end, trained["model_path"], Costs()
            )
            measured[name] = seconds, result = _best_backtest(
                job, models_dir, registry, args.repeat
            )
            metrics = result["metrics"]
            print(
                f"{name}: {start}..{end} bars={result['equity_curve_length']} "
                f"seconds={seconds:.3f} trades={metrics['total_trades']} "
                f"return_pct={metrics['total_return_pct']:+.4f} "
                f"sharpe={metrics['sharpe_ratio']:.2f} "
                f"max_drawdown_pct={metrics['max_drawdown_pct']:.4f}"
            )
    seconds, result = measured["out_of_sample"]
    all_seconds, all_result = measured["all_bars"]
    bars = result["equity_curve_length"]
    print(f"throughput over all bars: {all_result['equity_curve_length'] / all_seconds:.0f} bars/s")
    print(
        f"backtest_seconds={seconds:.3f} bars={bars} bars_per_second={bars / seconds:.0f} "
        f"ratio_to_training={seconds / training_seconds:.4f}"
    )
    return 0
