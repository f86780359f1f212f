"""Training throughput of the reference host: one example strategy, all bars, in-process.

Runs the host's own pipeline (bars -> features -> labels -> MLP -> model files) on EURUSD 1h,
all 5,000 bars, 50 epochs, without HTTP. Prints the wall time, training samples per second
(samples x epochs / training seconds) and the test metrics; the last line is
`training_seconds=<S> samples_per_second=<R>`. Goal on a 2-core machine: under 30 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ktrdr_tasks.strategy_schema import load_strategy_file
from ktrdr_tasks.strategy_v3 import check_any_strategy, is_v3
from training_host.jobs import JobContext
from training_host.main import configure_torch
from training_host.operations import OperationRegistry
from training_host.pipeline import TrainingJob, run_training


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strategy", default="eurusd_1h_rsi_macd_adx")
    parser.add_argument("--strategies-dir", type=Path, default=Path("strategies"))
    parser.add_argument("--symbol", default="EURUSD")
    parser.add_argument("--timeframe", default="1h")
    # The full span of the shipped EURUSD 1h bars (2017-04-19 09:00 .. 2018-02-07 15:00).
    parser.add_argument("--start-date", default="2017-04-19")
    parser.add_argument("--end-date", default="2018-02-07")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=42)


def run(args: argparse.Namespace) -> int:
    configure_torch(args.threads)
    path = args.strategies_dir / f"{args.strategy}.yaml"
    document = load_strategy_file(path)
    # v3 reads epochs from `training`, v2 from `model.training`.
    section = document if is_v3(document) else document.setdefault("model", {})
    section.setdefault("training", {})["epochs"] = args.epochs
    config = check_any_strategy(document, source=path.name)
    job = TrainingJob(
        strategy_name=args.strategy,
        strategy_path=path,
        document=document,
        config=config,
        symbols=(args.symbol,),
        timeframes=(args.timeframe,),
        start_date=args.start_date,
        end_date=args.end_date,
    )
    registry = OperationRegistry()
    operation, _ = registry.create({"strategy_name": args.strategy})
    registry.mark_running(operation.operation_id)
    context = JobContext(operation.operation_id, registry)
    with tempfile.TemporaryDirectory() as models_dir:
        started = time.perf_counter()
        result = run_training(
            job, context, models_dir=Path(models_dir), data_dir=None, seed=args.seed
        )
        wall = time.perf_counter() - started
    training = result["training_metrics"]
    data = result["data_summary"]
    test = result["test_metrics"]
    training_seconds = training["training_time_minutes"] * 60.0
    samples = data["train_samples"] * training["epochs_completed"]
    rate = samples / training_seconds if training_seconds > 0 else float("inf")
    print(f"strategy={args.strategy} {args.symbol} {args.timeframe} bars={data['total_samples']}")
    print(
        f"train/val/test samples={data['train_samples']}/{data['val_samples']}/"
        f"{data['test_samples']} features={data['feature_count']} "
        f"epochs={training['epochs_completed']} threads={args.threads}"
    )
    print(f"wall_seconds={wall:.2f} (data, features, training, evaluation and model files)")
    print(f"test_accuracy={test['test_accuracy']:.4f} test_loss={test['test_loss']:.4f}")
    print(f"training_seconds={training_seconds:.2f} samples_per_second={rate:.0f}")
    return 0
