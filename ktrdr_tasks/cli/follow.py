"""`--follow`: watch one cycle until it ends, live on a terminal, one line per change otherwise.

Reads only the operation record, so it works from any machine that reaches Redis, and it
exits 0 when the cycle completed and 1 when it failed or was cancelled.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ktrdr_tasks import workflow
from ktrdr_tasks.models import parse_iso

REFRESH_S = 0.5


def _epoch_text(context: dict[str, Any]) -> str:
    parts = []
    if context.get("epoch") is not None:
        total = context.get("total_epochs")
        parts.append(f"epoch {context['epoch']}/{total}" if total else f"epoch {context['epoch']}")
    if context.get("train_loss") is not None:
        parts.append(f"train loss {context['train_loss']:.4f}")
    if context.get("val_accuracy") is not None:
        parts.append(f"val acc {context['val_accuracy']:.3f}")
    return ", ".join(parts)


def one_line(operation: dict[str, Any]) -> str:
    progress = operation.get("progress") or {}
    line = (
        f"{operation['operation_id']}  {operation['status']:<9} {operation.get('phase', ''):<11} "
        f"{progress.get('percentage', 0):5.1f}%  {progress.get('current_step', '')}"
    )
    epoch = _epoch_text(progress.get("context") or {})
    return f"{line}  [{epoch}]" if epoch else line


def verdict_text(operation: dict[str, Any]) -> str:
    status = operation["status"]
    meta = operation.get("metadata") or {}
    if status == "completed":
        gate = meta.get("gate") or {}
        metrics = gate.get("metrics") or {}
        accuracy = metrics.get("accuracy")
        loss = metrics.get("final_loss")
        figures = ""
        if accuracy is not None and loss is not None:
            figures = f" (test accuracy {accuracy:.3f}, test loss {loss:.3f})"
        return (
            f"completed: training gate {gate.get('outcome', '?')}{figures}; "
            f"model at {meta.get('model_path')}"
        )
    return f"{status}: {operation.get('error_message') or 'no message'}"


def _elapsed(operation: dict[str, Any]) -> float:
    start = parse_iso(operation["created_at"]).timestamp()
    end = operation.get("completed_at")
    return (parse_iso(end).timestamp() if end else time.time()) - start


def _render(operation: dict[str, Any]) -> Group:
    progress = operation.get("progress") or {}
    table = Table.grid(padding=(0, 2))
    table.add_row("cycle", operation["operation_id"])
    table.add_row("strategy", str((operation.get("metadata") or {}).get("strategy_name") or "-"))
    table.add_row("status", f"{operation['status']} / {operation.get('phase', '')}")
    table.add_row("step", progress.get("current_step") or "")
    epoch = _epoch_text(progress.get("context") or {})
    if epoch:
        table.add_row("training", epoch)
    table.add_row("elapsed", f"{_elapsed(operation):.0f} s")
    bar = ProgressBar(total=100, completed=progress.get("percentage", 0), width=50)
    return Group(table, Text(f"{progress.get('percentage', 0):5.1f}% "), bar)


def follow_operation(operation_id: str, as_json: bool = False) -> int:
    """Watch until the cycle ends; the exit code says how it ended."""
    console = Console()
    live = not as_json and sys.stdout.isatty()
    operation = workflow.status(operation_id)
    last_line = ""
    if live:
        with Live(_render(operation), console=console, refresh_per_second=4) as view:
            while operation["status"] in ("pending", "running"):
                time.sleep(REFRESH_S)
                operation = workflow.status(operation_id)
                view.update(_render(operation))
    else:
        while True:
            line = one_line(operation)
            if not as_json and line != last_line:
                click.echo(line)
                last_line = line
            if operation["status"] not in ("pending", "running"):
                break
            time.sleep(REFRESH_S)
            operation = workflow.status(operation_id)
    if as_json:
        click.echo(json.dumps(operation, default=str))
    else:
        click.echo(verdict_text(operation))
    return 0 if operation["status"] == "completed" else 1
