"""Verdicts of the example and designed strategies: training, then an out-of-sample backtest.

In-process on the reference host's bars, no Redis or HTTP. Each strategy trains on the
first `1 - --holdout` of its own date range, is backtested on the rest (the day after the
training end to the strategy's end date: the chain's default window when the strategy's
dates end earlier than the data; `--holdout 0` trains on all of them and backtests from the
day after to today, exactly the chain's default), and is judged by both gates with the
default thresholds.
Prints one row per strategy (test accuracy, majority-class share of the test labels, lift,
trades, return, Sharpe, drawdown, both gates' outcomes; the backtest runs whatever the
training gate said) and the last line `passed=<P>/<N>` (both gates).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path
from typing import Any

from ktrdr_tasks.backtest import backtest_window
from ktrdr_tasks.datasets import REFERENCE_DATASETS
from ktrdr_tasks.design.builtin import candidates
from ktrdr_tasks.gates import (
    BacktestThresholds,
    TrainingThresholds,
    judge_backtest_result,
    judge_training_result,
)
from ktrdr_tasks.strategy import extract_training_params, read_strategy_file
from ktrdr_tasks.strategy_v3 import check_any_strategy
from training_host.backtest import BacktestJob, Costs, run_backtest
from training_host.errors import TrainingFailed
from training_host.jobs import JobContext
from training_host.main import configure_torch
from training_host.operations import OperationRegistry
from training_host.pipeline import TrainingJob, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategies-dir", type=Path, default=Path("strategies"))
    parser.add_argument("--designed", type=int, default=10, help="designed strategies to add")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in designer")
    parser.add_argument(
        "--holdout",
        type=float,
        default=0.15,
        help="share of each strategy's dates kept out of sample; 0: the chain's default window",
    )
    parser.add_argument("--threads", type=int, default=1)


def _context(registry: OperationRegistry, kind: str) -> JobContext:
    operation, _ = registry.create({}, operation_type=kind)
    registry.mark_running(operation.operation_id)
    return JobContext(operation.operation_id, registry)


def _split_dates(start: str, end: str, holdout: float) -> tuple[str, str, str]:
    first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    if holdout <= 0:
        return start, end, end
    train_end = first + dt.timedelta(days=int((last - first).days * (1.0 - holdout)))
    return first.isoformat(), train_end.isoformat(), last.isoformat()


def _judge(
    name: str, document: dict[str, Any], holdout: float, models: Path, registry: OperationRegistry
) -> dict[str, Any]:
    params = extract_training_params(document)
    symbol, timeframe = params["symbols"][0], params["timeframes"][0]
    start, train_end, end = _split_dates(params["start_date"], params["end_date"], holdout)
    row: dict[str, Any] = {"strategy": name, "data": f"{symbol} {timeframe}"}
    job = TrainingJob(
        name,
        models / f"{name}.yaml",
        document,
        check_any_strategy(document, source=name),
        (symbol,),
        (timeframe,),
        start,
        train_end,
    )
    try:
        trained = run_training(
            job, _context(registry, "training"), models_dir=models, data_dir=None, seed=42
        )
    except TrainingFailed as exc:
        return {**row, "verdict": f"training failed: {str(exc)[:60]}"}
    training = judge_training_result(trained, TrainingThresholds())
    row.update(training.metrics)
    if holdout > 0:
        window = backtest_window(start, train_end, end=end, today=dt.date.fromisoformat(end))
    else:  # the chain's default: from the day after the training window to today
        window = backtest_window(start, train_end, today=dt.datetime.now(dt.UTC).date())
    backtest_job = BacktestJob(
        name, symbol, timeframe, window.start_date, window.end_date, trained["model_path"], Costs()
    )
    try:
        result = run_backtest(
            backtest_job, _context(registry, "backtesting"), models_dir=models, data_dir=None
        )
    except TrainingFailed as exc:
        return {**row, "verdict": f"backtest failed: {str(exc)[:60]}"}
    backtest = judge_backtest_result(result, BacktestThresholds())
    row.update(backtest.metrics, window=f"{window.start_date}..{window.end_date}")
    row["training_gate"] = _outcome(training.passed, training.reasons)
    row["backtest_gate"] = _outcome(backtest.passed, backtest.reasons)
    row["verdict"] = "passed" if training.passed and backtest.passed else "failed"
    return row


def _outcome(passed: bool, reasons: tuple[str, ...]) -> str:
    return "passed" if passed else ", ".join(reason.split(" (")[0] for reason in reasons)


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def run(args: argparse.Namespace) -> int:
    configure_torch(args.threads)
    documents = [
        (path.stem, read_strategy_file(path)) for path in sorted(args.strategies_dir.glob("*.yaml"))
    ]
    stream = candidates(args.seed, REFERENCE_DATASETS)
    seen: set[str] = set()
    while len(seen) < args.designed:
        candidate = next(stream)
        if candidate.fingerprint not in seen:
            seen.add(candidate.fingerprint)
            documents.append((candidate.config["name"], candidate.config))
    registry = OperationRegistry()
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, document in documents:
            rows.append(_judge(name, document, args.holdout, Path(tmp), registry))
    print(
        "| strategy | data | test accuracy | majority share | lift | trades | return | "
        "Sharpe | max drawdown | training gate | backtest gate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['strategy']} | {row['data']} | {_cell(row.get('accuracy'), '.3f')} | "
            f"{_cell(row.get('majority_class_share'), '.3f')} | {_cell(row.get('lift'), '+.3f')} | "
            f"{_cell(row.get('total_trades'), '.0f')} | "
            f"{_cell(row.get('total_return_pct'), '+.2%')} | "
            f"{_cell(row.get('sharpe_ratio'), '.2f')} | "
            f"{_cell(row.get('max_drawdown_pct'), '.2%')} | "
            f"{row.get('training_gate', row['verdict'])} | {row.get('backtest_gate', '-')} |"
        )
    passed = sum(1 for row in rows if row["verdict"] == "passed")
    print(f"seconds={time.perf_counter() - started:.1f} passed={passed}/{len(rows)}")
    return 0
