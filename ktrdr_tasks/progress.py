"""Progress maths: where a cycle stands, from the remote training's own report. No I/O.

Training occupies 35-85 % of a cycle (DESIGN section 1). Epoch details come from the best
source a backend offers. The epoch: the reference host's `context`, else the `current_step`
text of a real ktrdr backend ("Epoch 3/10 · Batch 120/460"), else the last `metrics.epochs[]`
entry, else `steps_completed`/`steps_total`. Losses and accuracy: `context`, else the last
`metrics.epochs[]` entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ktrdr_tasks.models import Progress
from ktrdr_tasks.training_api import RemoteOperation

DESIGN_END = 30.0
TRAINING_START = 35.0
TRAINING_SPAN = 50.0
GATE_START = 85.0
GATE_END = 90.0

_EPOCH_TEXT = re.compile(r"Epoch\s+(\d+)\s*/\s*(\d+)", re.IGNORECASE)


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def training_percentage(remote_percentage: float | None) -> float:
    """Map the training's own 0-100 % onto the cycle's 35-85 %."""
    pct = _finite(remote_percentage) or 0.0
    return TRAINING_START + TRAINING_SPAN * min(max(pct, 0.0), 100.0) / 100.0


def epoch_context(remote: RemoteOperation) -> dict[str, Any]:
    """epoch, total_epochs, train_loss, val_loss, val_accuracy: whatever the backend tells."""
    found: dict[str, Any] = {}
    context = remote.progress.context
    epochs = remote.metrics.get("epochs")
    last_epoch: Mapping[str, Any] = (
        epochs[-1]
        if isinstance(epochs, list) and epochs and isinstance(epochs[-1], Mapping)
        else {}
    )

    epoch = _finite(context.get("epoch_index"))
    total = _finite(context.get("total_epochs"))
    match = _EPOCH_TEXT.search(remote.progress.current_step or "")
    if epoch is None and match:
        epoch, total = float(match.group(1)), float(match.group(2))
    if epoch is None and _finite(last_epoch.get("epoch")) is not None:
        epoch = _finite(last_epoch.get("epoch"))
    if epoch is None and remote.progress.steps_completed is not None:
        epoch = float(remote.progress.steps_completed)
    if total is None and remote.progress.steps_total:
        total = float(remote.progress.steps_total)
    if epoch is not None:
        found["epoch"] = int(epoch)
    if total is not None:
        found["total_epochs"] = int(total)

    for name in ("train_loss", "val_loss", "val_accuracy"):
        value = _finite(context.get(name))
        if value is None:
            value = _finite(last_epoch.get(name))
        if value is not None:
            found[name] = value
    return found


def training_progress(remote: RemoteOperation, strategy_name: str | None) -> Progress:
    context = epoch_context(remote)
    step = remote.progress.current_step or f"Training {strategy_name or ''}".strip()
    if remote.status == "pending":
        step = "Waiting for a training slot"
    return Progress(
        percentage=training_percentage(remote.progress.percentage),
        current_step=step,
        context=context,
    )
