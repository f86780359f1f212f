"""Progress maths: where a cycle stands, from the remote training's own report. No I/O.

Training occupies the poll step's span of the cycle (35-85 %, `Step.POLL_TRAINING`). Epoch
details come from the best source a backend offers. The epoch: the reference host's
`context`, else the `current_step` text of a real ktrdr backend ("Epoch 3/10 · Batch
120/460"), else the last `metrics.epochs[]` entry, else `steps_completed`/`steps_total`.
Losses and accuracy: `context`, else the last `metrics.epochs[]` entry.

The remote operation is read through the `RemoteOperationView` protocol below: the answer
model belongs to `training_api`, and this module imports no HTTP client.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol

from ktrdr_tasks.models import Progress, finite_number
from ktrdr_tasks.steps import Step

_EPOCH_TEXT = re.compile(r"Epoch\s+(\d+)\s*/\s*(\d+)", re.IGNORECASE)


class RemoteProgressView(Protocol):
    @property
    def percentage(self) -> float | None: ...
    @property
    def current_step(self) -> str | None: ...
    @property
    def steps_completed(self) -> int | None: ...
    @property
    def steps_total(self) -> int | None: ...
    @property
    def context(self) -> Mapping[str, Any]: ...


class RemoteOperationView(Protocol):
    """What progress reads of a remote operation (`training_api.RemoteOperation` fits)."""

    @property
    def status(self) -> str: ...
    @property
    def progress(self) -> RemoteProgressView: ...
    @property
    def metrics(self) -> Mapping[str, Any]: ...


def within(step: Step, fraction: float) -> float:
    """The cycle's percentage `fraction` (0..1) of the way through `step`."""
    return step.start + step.span * min(max(fraction, 0.0), 1.0)


def training_percentage(remote_percentage: float | None) -> float:
    """Map the training's own 0-100 % onto the poll step's span (35-85 %)."""
    return within(Step.POLL_TRAINING, (finite_number(remote_percentage) or 0.0) / 100.0)


def epoch_context(remote: RemoteOperationView) -> dict[str, Any]:
    """epoch, total_epochs, train_loss, val_loss, val_accuracy: whatever the backend tells."""
    found: dict[str, Any] = {}
    context = remote.progress.context
    epochs = remote.metrics.get("epochs")
    last_epoch: Mapping[str, Any] = (
        epochs[-1]
        if isinstance(epochs, list) and epochs and isinstance(epochs[-1], Mapping)
        else {}
    )

    epoch = finite_number(context.get("epoch_index"))
    total = finite_number(context.get("total_epochs"))
    match = _EPOCH_TEXT.search(remote.progress.current_step or "")
    if epoch is None and match:
        epoch, total = float(match.group(1)), float(match.group(2))
    if epoch is None and finite_number(last_epoch.get("epoch")) is not None:
        epoch = finite_number(last_epoch.get("epoch"))
    if epoch is None and remote.progress.steps_completed is not None:
        epoch = float(remote.progress.steps_completed)
    steps_total = finite_number(remote.progress.steps_total)
    if steps_total and (total is None or (match and steps_total > total)):
        # Today's ktrdr reads "Epoch 1/1" all through the first epoch; its step count is right.
        total = steps_total
    if epoch is not None:
        found["epoch"] = int(epoch)
    if total is not None:
        found["total_epochs"] = int(total)

    for name in ("train_loss", "val_loss", "val_accuracy"):
        value = finite_number(context.get(name))
        if value is None:
            value = finite_number(last_epoch.get(name))
        if value is not None:
            found[name] = value
    return found


def training_progress(remote: RemoteOperationView, strategy_name: str | None) -> Progress:
    context = epoch_context(remote)
    step = remote.progress.current_step or f"Training {strategy_name or ''}".strip()
    if remote.status == "pending":
        step = "Waiting for a training slot"
    return Progress(
        percentage=training_percentage(remote.progress.percentage),
        current_step=step,
        context=context,
    )
