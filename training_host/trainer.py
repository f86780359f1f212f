"""The training loop: mini-batch cross-entropy, early stopping on validation, cancellable.

Pure computation over arrays handed in; progress goes out through callbacks and a cancel
check runs between batches, so a cancel stops the job within one batch, not one epoch.
Seeded: the same data, config and seed give the same weights when jobs run one at a time
(dropout draws from torch's global generator, which concurrent jobs share).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from training_host.errors import TrainingCancelled, TrainingFailed
from training_host.model import build_mlp

# torch.manual_seed is process-wide: seeding and building a model must not interleave.
_SEED_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainSettings:
    """`model.architecture` and `model.training` of a strategy, with ktrdr's defaults."""

    hidden_layers: tuple[int, ...]
    activation: str = "relu"
    dropout: float = 0.2
    learning_rate: float = 0.001
    batch_size: int = 32
    epochs: int = 100
    optimizer: str = "adam"
    weight_decay: float = 0.0001
    patience: int | None = None
    monitor: str = "val_loss"
    gradient_clip: float | None = None
    seed: int = 42


@dataclass
class TrainOutcome:
    """The trained model and what happened on the way (one history row per epoch)."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0


EpochCallback = Callable[[dict[str, float], int], None]
BatchCallback = Callable[[int, int, int], None]


def _optimizer(settings: TrainSettings, model: nn.Module) -> torch.optim.Optimizer:
    # Unknown names fall back to adam, as ktrdr does.
    kind = settings.optimizer.lower()
    params, lr, decay = model.parameters(), settings.learning_rate, settings.weight_decay
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=decay, momentum=0.9)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=decay)


def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Loss, accuracy and support-weighted precision/recall/F1 (sklearn's 'weighted')."""
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
        loss = float(nn.functional.cross_entropy(logits, labels))
        predicted = logits.argmax(dim=1).numpy()
    truth = labels.numpy()
    return {
        "loss": loss,
        "accuracy": float((predicted == truth).mean()),
        **_weighted_prf(truth, predicted),
    }


def _weighted_prf(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    precision = recall = f1 = 0.0
    total = len(truth)
    for cls in np.union1d(truth, predicted):
        support = int((truth == cls).sum())
        if support == 0:
            continue
        true_pos = int(((predicted == cls) & (truth == cls)).sum())
        predicted_count = int((predicted == cls).sum())
        p = true_pos / predicted_count if predicted_count else 0.0
        r = true_pos / support
        f = 2 * p * r / (p + r) if p + r else 0.0
        weight = support / total
        precision, recall, f1 = precision + weight * p, recall + weight * r, f1 + weight * f
    return {"precision": precision, "recall": recall, "f1_score": f1}


def _improved(monitor: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if monitor == "val_accuracy" else value < best


def train(
    settings: TrainSettings,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    on_epoch: EpochCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> TrainOutcome:
    """Train an MLP; raise TrainingCancelled on a cancel, TrainingFailed on a NaN loss."""
    started = time.perf_counter()
    features = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    targets = torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64))
    val_x = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32))
    val_y = torch.from_numpy(np.ascontiguousarray(y_val, dtype=np.int64))
    with _SEED_LOCK:
        torch.manual_seed(settings.seed)
        model = build_mlp(
            features.shape[1], settings.hidden_layers, settings.activation, settings.dropout
        )
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = _optimizer(settings, model)
    loss_fn = nn.CrossEntropyLoss()
    monitor = "val_accuracy" if settings.monitor == "val_accuracy" else "val_loss"
    count = len(targets)
    batch_size = max(1, int(settings.batch_size))
    batches = math.ceil(count / batch_size)
    outcome = TrainOutcome(model=model)
    best_value: float | None = None
    best_state: dict[str, Any] | None = None
    stale = 0
    for epoch in range(1, settings.epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        order = torch.randperm(count, generator=generator)
        total_loss, correct = 0.0, 0
        for batch in range(batches):
            if should_stop():
                raise TrainingCancelled(f"cancelled during epoch {epoch}")
            index = order[batch * batch_size : (batch + 1) * batch_size]
            logits = model(features[index])
            loss = loss_fn(logits, targets[index])
            if not torch.isfinite(loss):
                raise TrainingFailed(
                    f"Training loss became {loss.item()} at epoch {epoch}, batch {batch + 1}: "
                    f"lower model.training.learning_rate (now {settings.learning_rate}) or "
                    "set model.training.gradient_clip"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.gradient_clip:
                nn.utils.clip_grad_norm_(model.parameters(), settings.gradient_clip)
            optimizer.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(dim=1) == targets[index]).sum())
            if on_batch is not None:
                on_batch(epoch, batch + 1, batches)
        val = evaluate(model, val_x, val_y)
        if not math.isfinite(val["loss"]):
            raise TrainingFailed(
                f"Validation loss became {val['loss']} at epoch {epoch}: lower "
                f"model.training.learning_rate (now {settings.learning_rate})"
            )
        metrics = {
            "epoch": epoch,
            "train_loss": total_loss / count,
            "train_accuracy": correct / count,
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "learning_rate": settings.learning_rate,
            "duration_seconds": time.perf_counter() - epoch_started,
        }
        outcome.history.append(metrics)
        value = metrics[monitor]
        if _improved(monitor, value, best_value):
            best_value, best_state, stale = value, copy.deepcopy(model.state_dict()), 0
            outcome.best_epoch = epoch
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(metrics, settings.epochs)
        if settings.patience is not None and stale >= settings.patience:
            outcome.stopped_early = True
            break
    # With early stopping the best validation weights are kept (restore_best_weights);
    # without it, the weights of the last epoch are the model, as the history reads.
    if settings.patience is not None and best_state is not None:
        model.load_state_dict(best_state)
    outcome.seconds = time.perf_counter() - started
    return outcome
