"""What a finished cycle leaves behind for the designer and `ktrdr agent history`. No I/O."""

from __future__ import annotations

from typing import Any

from ktrdr_tasks.models import Operation, OperationStatus


def history_entry(operation: Operation) -> dict[str, Any]:
    """What the designer and `ktrdr agent history` learn from a finished cycle."""
    meta = operation.metadata
    gate = meta.get("gate") or {}
    metrics = gate.get("metrics") or {}
    design = meta.get("design") or {}
    if operation.status is OperationStatus.COMPLETED:
        verdict = "bypassed" if gate.get("outcome") == "bypassed" else "passed"
    elif gate.get("outcome") == "failed":
        verdict = "gate_failed"
    else:
        verdict = operation.status.value
    return {
        "operation_id": operation.operation_id,
        "strategy_name": meta.get("strategy_name"),
        "fingerprint": design.get("fingerprint"),
        "indicators": design.get("indicators"),
        "symbols": design.get("symbols"),
        "timeframes": design.get("timeframes"),
        "verdict": verdict,
        "gate_reasons": gate.get("reasons") or [],
        "test_accuracy": metrics.get("accuracy"),
        # The gate named the test loss `final_loss` before it was `test_loss`.
        "test_loss": metrics.get("test_loss", metrics.get("final_loss")),
        "error_message": operation.error_message,
        "finished_at": operation.completed_at,
    }
