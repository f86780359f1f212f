"""One training job end to end: bars -> features -> labels -> split -> MLP -> model files.

The shell around the pure modules: it loads data (market_data), builds inputs (features,
labels) by the strategy's format (`input_plan`: v2 memberships with lags, or v3's nn_inputs),
trains (trainer), reports progress into the operation, and writes the model (artifacts, plus
ktrdr's `metadata_v3.json` for a v3 strategy) only if no cancel arrived. The result is
ktrdr's nested `result_summary`.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ktrdr_tasks.strategy_schema import StrategyConfig
from ktrdr_tasks.strategy_v3 import ResolvedFeature, StrategyConfigV3
from training_host import __version__, artifacts
from training_host.errors import TrainingFailed
from training_host.features import (
    IndicatorFeature,
    Split,
    base_timeframe,
    build_inputs,
    build_inputs_v3,
    chronological_split,
    fraction_split,
    indicator_features,
    v3_features,
)
from training_host.jobs import JobContext
from training_host.labels import (
    CLASS_NAMES,
    label_distribution,
    majority_class_share,
    zigzag_labels,
)
from training_host.market_data import (
    DEFAULT_END_DATE,
    DEFAULT_START_DATE,
    load_bars,
    normalise_timeframe,
)
from training_host.model import activation_name, parameter_count
from training_host.trainer import TrainSettings, evaluate, train

MIN_TRAIN_SAMPLES = 50
MIN_EVAL_SAMPLES = 10
PREPARE_SHARE, TRAIN_SHARE = 5.0, 90.0  # percent of progress for data prep and training


@dataclass(frozen=True)
class TrainingJob:
    """A validated start request: the strategy (v2 or v3) and the data it is trained on."""

    strategy_name: str
    strategy_path: Path
    document: dict[str, Any]
    config: StrategyConfig | StrategyConfigV3
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    start_date: str | None
    end_date: str | None


@dataclass(frozen=True)
class Dataset:
    """Model inputs and labels, already split in time order (per symbol, then stacked)."""

    feature_names: list[str]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    summary: dict[str, Any]


def strategy_features(config: StrategyConfig) -> list[IndicatorFeature]:
    """The strategy's indicators with catalogue names, resolved params and fuzzy sets."""
    items = []
    for indicator in config.indicators:
        spec = indicator.spec
        name = spec.name if spec is not None else indicator.name
        items.append((indicator.feature_id, name, indicator.resolved_params))
    fuzzy = {
        feature_id: {set_name: fuzzy_set.model_dump() for set_name, fuzzy_set in sets.items()}
        for feature_id, sets in config.fuzzy_sets.items()
    }
    return indicator_features(items, fuzzy)


@dataclass(frozen=True)
class InputPlan:
    """How one strategy turns bars into inputs, labels and a chronological split."""

    make_inputs: Callable[[Mapping[str, pd.DataFrame]], pd.DataFrame]
    zigzag_threshold: float
    split: Callable[[int], Split]
    split_summary: dict[str, float]
    resolved: list[ResolvedFeature] | None = None  # v3: the order metadata_v3.json records


def training_timeframes(job: TrainingJob) -> list[str]:
    """The timeframes trained: the request's, but a v3 multi-timeframe strategy's own list.

    As ktrdr's v3 worker does: it trains a multi-timeframe strategy on the strategy's list,
    base timeframe first (so the model lands in `<base>_vN`), whatever the request says.
    """
    selection = job.config.training_data.timeframes
    listed = list(job.timeframes)
    if isinstance(job.config, StrategyConfigV3) and selection.mode == "multi_timeframe":
        base = selection.base_timeframe or selection.names[0]
        listed = [base, *(tf for tf in selection.names if tf != base)]
    return [normalise_timeframe(tf) for tf in listed]


def input_plan(job: TrainingJob) -> InputPlan:
    """The v2 or v3 recipe; TrainingFailed names anything this host cannot train."""
    config = job.config
    if isinstance(config, StrategyConfigV3):
        return _v3_plan(config, training_timeframes(job))
    features = strategy_features(config)
    lookback = config.model.features.lookback_periods
    split_cfg = config.data_split
    return InputPlan(
        make_inputs=lambda bars: build_inputs(bars, features, lookback),
        zigzag_threshold=float(config.labels.zigzag_threshold or 0.0),
        split=lambda n: chronological_split(n, split_cfg.test_size, split_cfg.validation_size),
        split_summary={
            "test_size": split_cfg.test_size,
            "validation_size": split_cfg.validation_size,
        },
    )


def _v3_plan(config: StrategyConfigV3, timeframes: list[str]) -> InputPlan:
    unsupported = _v3_host_limits(config)
    if unsupported:
        raise TrainingFailed(
            f"The reference host cannot train {config.name}: {'; '.join(unsupported)}. "
            "A ktrdr backend can; here use zigzag labels, an mlp and classification."
        )
    resolved = v3_features(config, timeframes)
    training = config.training_section
    split_cfg = training.data_split
    return InputPlan(
        make_inputs=lambda bars: build_inputs_v3(bars, config, resolved),
        zigzag_threshold=float(training.labels.zigzag_threshold),
        split=lambda n: fraction_split(n, split_cfg.train, split_cfg.validation),
        split_summary={
            "train": split_cfg.train,
            "validation": split_cfg.validation,
            "test": round(1 - split_cfg.train - split_cfg.validation, 6),
        },
        resolved=resolved,
    )


def _v3_host_limits(config: StrategyConfigV3) -> list[str]:
    training, model = config.training_section, config.model_section
    limits = []
    if training.labels.source != "zigzag":
        limits.append(f"training.labels.source is {training.labels.source}")
    if model.type != "mlp":
        limits.append(f"model.type is {model.type}")
    if config.decisions.get("output_format", "classification") != "classification":
        limits.append(f"decisions.output_format is {config.decisions['output_format']}")
    if config.context_data:
        limits.append("context_data needs external data providers")
    return limits


def train_settings(config: StrategyConfig | StrategyConfigV3, seed: int) -> TrainSettings:
    """`model.architecture` / `model.training` (v3: `training`) with ktrdr's defaults.

    v3 trains every epoch with Adam (weight decay 1e-4): it passes only epochs, learning
    rate and batch size to its trainer, so early stopping never runs there either.
    """
    if isinstance(config, StrategyConfigV3):
        architecture_v3, training_v3 = config.model_section.architecture, config.training_section
        return TrainSettings(
            hidden_layers=tuple(int(size) for size in architecture_v3.hidden_layers or ()),
            activation=activation_name(architecture_v3.activation),
            dropout=float(architecture_v3.dropout),
            learning_rate=float(training_v3.learning_rate),
            batch_size=int(training_v3.batch_size),
            epochs=int(training_v3.epochs),
            seed=seed,
        )
    architecture, training = config.model.architecture, config.model.training
    early = training.early_stopping or None
    extra = training.model_extra or {}
    clip = extra.get("gradient_clip")
    return TrainSettings(
        hidden_layers=tuple(int(size) for size in architecture.hidden_layers or ()),
        activation=activation_name(architecture.activation),
        dropout=float(architecture.dropout),
        learning_rate=float(training.learning_rate),
        batch_size=int(training.batch_size),
        epochs=int(training.epochs),
        optimizer=str(training.optimizer),
        weight_decay=float(training.weight_decay),
        patience=int(early.get("patience", 10)) if early else None,
        monitor=str(early.get("monitor", "val_loss")) if early else "val_loss",
        gradient_clip=float(clip) if isinstance(clip, int | float) and clip > 0 else None,
        seed=seed,
    )


def check_data(
    symbols: Sequence[str],
    timeframes: Sequence[str],
    start_date: str | None,
    end_date: str | None,
    data_dir: Path | None,
) -> dict[tuple[str, str], pd.DataFrame]:
    """Every (symbol, timeframe) frame, or NoDataError naming what is missing and what exists."""
    return {
        (symbol, timeframe): load_bars(symbol, timeframe, start_date, end_date, data_dir)
        for symbol in symbols
        for timeframe in timeframes
    }


def build_dataset(job: TrainingJob, plan: InputPlan, data_dir: Path | None) -> Dataset:
    """Inputs, zigzag labels and the chronological split of every requested symbol."""
    timeframes = training_timeframes(job)
    base = base_timeframe(timeframes)
    threshold = plan.zigzag_threshold
    frames = check_data(job.symbols, timeframes, job.start_date, job.end_date, data_dir)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("xt", "yt", "xv", "yv", "xs", "ys")}
    names: list[str] = []
    per_symbol: dict[str, Any] = {}
    for symbol in job.symbols:
        bars = {tf: frames[(symbol, tf)] for tf in timeframes}
        inputs = plan.make_inputs(bars)
        names = list(inputs.columns)
        labels = zigzag_labels(bars[base]["close"].to_numpy(), threshold)
        split = plan.split(len(labels))
        values = inputs.to_numpy(dtype=np.float32)
        for key, part in (("t", split.train), ("v", split.validation), ("s", split.test)):
            parts[f"x{key}"].append(values[part])
            parts[f"y{key}"].append(labels[part])
        per_symbol[symbol] = {
            "bars": len(labels),
            "first_bar": bars[base].index[0].isoformat(),
            "last_bar": bars[base].index[-1].isoformat(),
            "train_samples": split.train.stop - split.train.start,
            "val_samples": split.validation.stop - split.validation.start,
            "test_samples": split.test.stop - split.test.start,
            "label_distribution": label_distribution(labels),
        }
    stacked = {key: np.concatenate(value) for key, value in parts.items()}
    summary = {
        "symbols": list(job.symbols),
        "timeframes": timeframes,
        "base_timeframe": base,
        "start_date": job.start_date or DEFAULT_START_DATE,
        "end_date": job.end_date or DEFAULT_END_DATE,
        "total_samples": int(sum(item["bars"] for item in per_symbol.values())),
        "train_samples": len(stacked["yt"]),
        "val_samples": len(stacked["yv"]),
        "test_samples": len(stacked["ys"]),
        "feature_count": len(names),
        "label_distribution": label_distribution(
            np.concatenate([stacked["yt"], stacked["yv"], stacked["ys"]])
        ),
        "train_label_distribution": label_distribution(stacked["yt"]),
        "zigzag_threshold": threshold,
        "data_split": plan.split_summary,
        "per_symbol": per_symbol,
    }
    _check_trainable(job, summary, threshold)
    return Dataset(
        names,
        stacked["xt"],
        stacked["yt"],
        stacked["xv"],
        stacked["yv"],
        stacked["xs"],
        stacked["ys"],
        summary,
    )


def _check_trainable(job: TrainingJob, summary: dict[str, Any], threshold: float) -> None:
    train_n, val_n, test_n = (summary[k] for k in ("train_samples", "val_samples", "test_samples"))
    if train_n < MIN_TRAIN_SAMPLES or val_n < MIN_EVAL_SAMPLES or test_n < MIN_EVAL_SAMPLES:
        raise TrainingFailed(
            f"Too few bars to train {job.strategy_name}: {summary['total_samples']} bars of "
            f"{', '.join(job.symbols)} {summary['base_timeframe']} between "
            f"{summary['start_date']} and {summary['end_date']} split into train {train_n} / "
            f"validation {val_n} / test {test_n}; need at least {MIN_TRAIN_SAMPLES} / "
            f"{MIN_EVAL_SAMPLES} / {MIN_EVAL_SAMPLES}. Widen the date range or use a finer "
            "timeframe."
        )
    present = {name: n for name, n in summary["train_label_distribution"].items() if n}
    if len(present) < 2:
        only = ", ".join(f"{name}: {n}" for name, n in present.items()) or "none"
        raise TrainingFailed(
            f"The training labels of {job.strategy_name} are a single class ({only}) with "
            f"training.labels.zigzag_threshold {threshold}: the price never moved that far. "
            "Lower the threshold (0.003-0.01 for hourly FX, 0.02-0.05 for daily bars) or "
            "widen the date range."
        )


def _final(training_metrics: Mapping[str, Any]) -> dict[str, float]:
    # metadata_v3.json keeps numbers only (ktrdr's `training_metrics: dict[str, float]`).
    return {
        key: float(value)
        for key, value in training_metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def _versions() -> dict[str, str]:
    try:
        package = importlib_metadata.version("ktrdr-tasks")
    except importlib_metadata.PackageNotFoundError:
        package = __version__
    return {
        "ktrdr_tasks": package,
        "training_host": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
    }


def run_training(
    job: TrainingJob, context: JobContext, *, models_dir: Path, data_dir: Path | None, seed: int
) -> dict[str, Any]:
    """Run the job; return ktrdr's nested result_summary. Raises TrainingFailed/Cancelled."""
    registry, operation_id = context.registry, context.operation_id
    registry.update_progress(operation_id, percentage=1.0, current_step="Loading market data")
    plan = input_plan(job)
    dataset = build_dataset(job, plan, data_dir)
    context.check_cancel()
    settings = train_settings(job.config, seed)
    registry.update_progress(
        operation_id,
        percentage=PREPARE_SHARE,
        current_step=f"Epoch 0/{settings.epochs}",
        steps_completed=0,
        steps_total=settings.epochs,
    )

    def on_epoch(metrics: dict[str, float], total: int) -> None:
        epoch = int(metrics["epoch"])
        registry.update_progress(
            operation_id,
            percentage=PREPARE_SHARE + TRAIN_SHARE * epoch / total,
            current_step=f"Epoch {epoch}/{total}",
            steps_completed=epoch,
            context={
                "epoch_index": epoch,
                "total_epochs": total,
                "train_loss": metrics["train_loss"],
                "val_loss": metrics["val_loss"],
                "val_accuracy": metrics["val_accuracy"],
            },
            epoch_metrics=metrics,
        )

    def on_batch(epoch: int, batch: int, batches: int) -> None:
        if batch % 25 == 0:
            done = (epoch - 1 + batch / batches) / settings.epochs
            registry.update_progress(operation_id, percentage=PREPARE_SHARE + TRAIN_SHARE * done)

    outcome = train(
        settings,
        dataset.x_train,
        dataset.y_train,
        dataset.x_val,
        dataset.y_val,
        should_stop=context.cancelled,
        on_epoch=on_epoch,
        on_batch=on_batch,
    )
    test = evaluate(
        outcome.model, torch.from_numpy(dataset.x_test), torch.from_numpy(dataset.y_test)
    )
    registry.update_progress(operation_id, percentage=97.0, current_step="Saving model")
    return _save_and_summarise(job, context, dataset, settings, outcome, test, models_dir, plan)


def _save_and_summarise(
    job: TrainingJob,
    context: JobContext,
    dataset: Dataset,
    settings: TrainSettings,
    outcome: Any,
    test: dict[str, float],
    models_dir: Path,
    plan: InputPlan,
) -> dict[str, Any]:
    history = outcome.history
    last = history[-1]
    training_metrics = {
        "final_train_loss": last["train_loss"],
        "final_val_loss": last["val_loss"],
        "final_train_accuracy": last["train_accuracy"],
        "final_val_accuracy": last["val_accuracy"],
        "epochs_completed": len(history),
        "epochs_planned": settings.epochs,
        "early_stopped": outcome.stopped_early,
        "best_epoch": outcome.best_epoch,
        "training_time_minutes": outcome.seconds / 60.0,
        "history": {
            key: [row[key] for row in history]
            for key in ("train_loss", "val_loss", "val_accuracy", "train_accuracy")
        },
    }
    test_metrics = {
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "precision": test["precision"],
        "recall": test["recall"],
        "f1_score": test["f1_score"],
        # The share of the commonest test label: what always answering it would score.
        "label_distribution": label_distribution(dataset.y_test),
        "majority_class_share": majority_class_share(dataset.y_test),
    }
    model_info = {
        "architecture": "mlp",
        "input_size": len(dataset.feature_names),
        "hidden_layers": list(settings.hidden_layers),
        "activation": settings.activation,
        "dropout": settings.dropout,
        "output_classes": list(CLASS_NAMES),
        "parameters_count": parameter_count(outcome.model),
        "optimizer": settings.optimizer,
        "seed": settings.seed,
    }
    created_at = datetime.now(UTC).isoformat()
    timeframes = dataset.summary["timeframes"]
    state = {
        "state_dict": outcome.model.state_dict(),
        "model_info": model_info,
        "feature_names": dataset.feature_names,
        "class_names": list(CLASS_NAMES),
    }
    files = {
        "config.json": job.document,
        "metrics.json": {
            "training_metrics": training_metrics,
            "test_metrics": test_metrics,
            "epochs": history,
        },
        "features.json": {
            "feature_names": dataset.feature_names,
            "feature_count": len(dataset.feature_names),
        },
        "metadata.json": {
            "strategy_name": job.strategy_name,
            "strategy_version": job.config.version,
            "strategy_file": str(job.strategy_path),
            "operation_id": context.operation_id,
            "symbols": list(job.symbols),
            "timeframes": timeframes,
            "start_date": dataset.summary["start_date"],
            "end_date": dataset.summary["end_date"],
            "feature_names": dataset.feature_names,
            "label_distribution": dataset.summary["label_distribution"],
            "training_metrics": training_metrics,
            "test_metrics": test_metrics,
            "model_info": model_info,
            "data_summary": dataset.summary,
            "created_at": created_at,
            "versions": _versions(),
        },
    }
    if plan.resolved is not None:
        files["metadata_v3.json"] = artifacts.metadata_v3(
            job.document,
            [feature.feature_id for feature in plan.resolved],
            symbols=list(job.symbols),
            timeframes=timeframes,
            metrics={**_final(training_metrics), **_final(test_metrics)},
            created_at=created_at,
        )

    def save() -> dict[str, Any]:
        path = artifacts.save_model(
            models_dir, job.strategy_name, timeframes[0], state=state, files=files
        )
        model_info["model_size_bytes"] = (path / "model.pt").stat().st_size
        return {
            "model_path": str(path),
            "training_metrics": training_metrics,
            "test_metrics": test_metrics,
            "model_info": model_info,
            "data_summary": dataset.summary,
            "created_at": created_at,
        }

    return context.commit(save)
