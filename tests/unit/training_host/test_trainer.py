"""`trainer.train`: the weights it keeps, how fast a cancel stops it, and a loss that blows up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training_host.errors import TrainingCancelled, TrainingFailed
from training_host.trainer import TrainSettings, evaluate, train


def _data(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with no relation to the labels: a model can only overfit them."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(rows, 6)).astype(np.float32), rng.integers(0, 3, rows)


def test_with_early_stopping_the_best_validation_weights_are_kept() -> None:
    x_train, y_train = _data(120)
    x_val, y_val = _data(200, seed=1)
    settings = TrainSettings(
        hidden_layers=(32,), dropout=0.0, learning_rate=0.05, batch_size=16, epochs=200, patience=4
    )

    outcome = train(settings, x_train, y_train, x_val, y_val)

    assert outcome.stopped_early and len(outcome.history) < 200
    assert outcome.best_epoch == len(outcome.history) - settings.patience
    best = outcome.history[outcome.best_epoch - 1]
    last = outcome.history[-1]
    assert best["val_loss"] < last["val_loss"]
    kept = evaluate(outcome.model, torch.from_numpy(x_val), torch.from_numpy(y_val))
    assert kept["loss"] == pytest.approx(best["val_loss"], rel=1e-5)


def test_without_early_stopping_the_last_epochs_weights_are_the_model() -> None:
    x_train, y_train = _data(120)
    x_val, y_val = _data(100, seed=1)
    settings = TrainSettings(hidden_layers=(16,), dropout=0.0, learning_rate=0.02, epochs=8)

    outcome = train(settings, x_train, y_train, x_val, y_val)

    kept = evaluate(outcome.model, torch.from_numpy(x_val), torch.from_numpy(y_val))
    assert len(outcome.history) == 8 and not outcome.stopped_early
    assert kept["loss"] == pytest.approx(outcome.history[-1]["val_loss"], rel=1e-5)


def test_a_cancel_stops_within_the_epoch_at_the_next_batch() -> None:
    x_train, y_train = _data(640)
    x_val, y_val = _data(50, seed=1)
    settings = TrainSettings(hidden_layers=(8,), batch_size=16, epochs=5)  # 40 batches/epoch
    checks: list[int] = []
    batches: list[tuple[int, int]] = []
    epochs: list[float] = []

    def stop_at_the_fourth_check() -> bool:
        checks.append(1)
        return len(checks) >= 4

    with pytest.raises(TrainingCancelled, match="during epoch 1"):
        train(
            settings,
            x_train,
            y_train,
            x_val,
            y_val,
            should_stop=stop_at_the_fourth_check,
            on_epoch=lambda metrics, total: epochs.append(metrics["epoch"]),
            on_batch=lambda epoch, batch, total: batches.append((epoch, batch)),
        )
    assert batches == [(1, 1), (1, 2), (1, 3)]  # 3 of 40 batches ran; no epoch ended
    assert epochs == []


def test_a_nan_loss_fails_the_training_with_what_to_change() -> None:
    x_train, y_train = _data(64)
    x_train[5, 2] = np.nan
    x_val, y_val = _data(20, seed=1)
    settings = TrainSettings(hidden_layers=(8,), batch_size=64, epochs=3, learning_rate=0.5)

    with pytest.raises(TrainingFailed, match=r"loss became nan at epoch 1, batch 1") as caught:
        train(settings, x_train, y_train, x_val, y_val)
    assert "model.training.learning_rate (now 0.5)" in str(caught.value)


def test_a_nan_validation_loss_fails_the_training_too() -> None:
    x_train, y_train = _data(64)
    x_val, y_val = _data(20, seed=1)
    x_val[0, 0] = np.inf
    settings = TrainSettings(hidden_layers=(8,), batch_size=64, epochs=3)

    with pytest.raises(TrainingFailed, match="Validation loss became nan at epoch 1"):
        train(settings, x_train, y_train, x_val, y_val)
