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
    backtest_gate = meta.get("backtest_gate") or {}
    backtest = meta.get("backtest") or {}
    outcomes = (gate.get("outcome"), backtest_gate.get("outcome"))
    if operation.status is OperationStatus.COMPLETED:
        verdict = "bypassed" if "bypassed" in outcomes else "passed"
    elif "failed" in outcomes:
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
        "majority_class_share": metrics.get("majority_class_share"),
        "backtest_gate_reasons": backtest_gate.get("reasons") or [],
        "trades": backtest.get("trades"),
        "total_return_pct": backtest.get("total_return_pct"),
        "sharpe_ratio": backtest.get("sharpe_ratio"),
        "max_drawdown_pct": backtest.get("max_drawdown_pct"),
        "error_message": operation.error_message,
        "finished_at": operation.completed_at,
    }
