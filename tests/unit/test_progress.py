"""Progress maths: training % onto 35-85 %, epoch details from the best source available."""

from __future__ import annotations

import pytest

from ktrdr_tasks.progress import epoch_context, training_percentage, training_progress
from ktrdr_tasks.training_api import RemoteOperation, RemoteProgress


@pytest.mark.parametrize(
    ("remote", "cycle"), [(0, 35), (50, 60), (100, 85), (None, 35), (250, 85), (-5, 35)]
)
def test_training_maps_onto_35_to_85(remote: float | None, cycle: float) -> None:
    assert training_percentage(remote) == cycle


def test_reference_host_context_is_preferred() -> None:
    remote = RemoteOperation(
        status="running",
        progress=RemoteProgress(
            percentage=40,
            current_step="Epoch 4/10",
            context={"epoch_index": 4, "total_epochs": 10, "train_loss": 0.8, "val_accuracy": 0.55},
        ),
        metrics={"epochs": [{"epoch": 3, "train_loss": 0.9}]},
    )
    assert epoch_context(remote) == {
        "epoch": 4,
        "total_epochs": 10,
        "train_loss": 0.8,
        "val_accuracy": 0.55,
    }


def test_real_ktrdr_backend_shape_empty_context_step_text_and_metrics_epochs() -> None:
    remote = RemoteOperation(
        status="running",
        progress=RemoteProgress(
            percentage=30,
            current_step="Epoch 3/10 · Batch 120/460",
            steps_completed=3,
            steps_total=10,
            context={},
        ),
        metrics={
            "epochs": [{"epoch": 3, "train_loss": 0.91, "val_loss": 0.95, "val_accuracy": 0.51}]
        },
    )
    progress = training_progress(remote, "s")
    assert progress.percentage == 50
    assert progress.current_step.startswith("Epoch 3/10")
    assert progress.context == {
        "epoch": 3,
        "total_epochs": 10,
        "train_loss": 0.91,
        "val_loss": 0.95,
        "val_accuracy": 0.51,
    }


def test_steps_alone_give_the_epoch() -> None:
    remote = RemoteOperation(
        status="running", progress=RemoteProgress(steps_completed=2, steps_total=8)
    )
    assert epoch_context(remote) == {"epoch": 2, "total_epochs": 8}


def test_pending_job_says_it_waits_for_a_slot() -> None:
    assert training_progress(RemoteOperation(status="pending"), "s").current_step == (
        "Waiting for a training slot"
    )


def test_first_epoch_text_of_todays_ktrdr_does_not_hide_the_real_total() -> None:
    remote = RemoteOperation(
        status="running",
        progress=RemoteProgress(
            percentage=1, current_step="Epoch 1/1", steps_completed=1, steps_total=40
        ),
    )
    assert epoch_context(remote) == {"epoch": 1, "total_epochs": 40}


def test_a_one_epoch_training_keeps_its_total_of_one() -> None:
    remote = RemoteOperation(
        status="running",
        progress=RemoteProgress(
            percentage=50, current_step="Epoch 1/1", steps_completed=1, steps_total=1
        ),
    )
    assert epoch_context(remote)["total_epochs"] == 1
