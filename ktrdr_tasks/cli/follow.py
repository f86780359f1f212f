"""`--follow`: watch one cycle until it ends, live on a terminal, one line per change otherwise.

Reads only the operation record, so it works from any machine that reaches Redis. The live
view (rich) shows the phase, an overall progress bar, the current step, the epoch with its own
bar, train loss and validation accuracy while training, and the elapsed time; without a
terminal (CI, a pipe) it prints one plain line whenever that line changes. Either way it ends
with the verdict on one line (the gate's reasons when the gate failed) and returns 0 when the
cycle completed, 1 when it failed or was cancelled. A brief Redis outage does not end it.
With `--json` it prints only the final record, with a `verdict` key, as one line.
From `agent trigger|status --follow`, Ctrl+C stops the watching, not the cycle: it says so,
and how to cancel (exit code 130).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ktrdr_tasks import workflow
from ktrdr_tasks.errors import EXIT_INTERRUPTED, FollowTimeout, StoreUnavailableError
from ktrdr_tasks.history import history_entry
from ktrdr_tasks.models import Operation, parse_iso

REFRESH_S = 0.5
STORE_OUTAGE_S = 30.0
ACTIVE = ("pending", "running")
PHASES = ("designing", "training", "backtesting", "assessing")


def _epoch_text(context: dict[str, Any]) -> str:
    parts = []
    if context.get("epoch") is not None:
        total = context.get("total_epochs")
        parts.append(f"epoch {context['epoch']}/{total}" if total else f"epoch {context['epoch']}")
    if context.get("train_loss") is not None:
        parts.append(f"train loss {context['train_loss']:.4f}")
    if context.get("val_loss") is not None:
        parts.append(f"val loss {context['val_loss']:.4f}")
    if context.get("val_accuracy") is not None:
        parts.append(f"val acc {context['val_accuracy']:.3f}")
    # While backtesting: bars processed, trades and return so far.
    if context.get("bars_processed") is not None:
        total = context.get("bars_total")
        done = context["bars_processed"]
        parts.append(f"bar {done}/{total}" if total else f"bar {done}")
    if context.get("trades") is not None:
        parts.append(f"{context['trades']} trades")
    if context.get("total_return_pct") is not None:
        parts.append(f"return {context['total_return_pct']:+.2%}")
    return ", ".join(parts)


def one_line(operation: dict[str, Any]) -> str:
    """The plain-text view: id, status, phase, percentage, step and the epoch if training."""
    progress = operation.get("progress") or {}
    line = (
        f"{operation['operation_id']}  {operation['status']:<9} {operation.get('phase', ''):<11} "
        f"{progress.get('percentage', 0):5.1f}%  {progress.get('current_step', '')}"
    )
    epoch = _epoch_text(progress.get("context") or {})
    return f"{line}  [{epoch}]" if epoch else line


def verdict_text(operation: dict[str, Any]) -> str:
    """One line: how the cycle ended and why (the gate's reasons are in its error message)."""
    status = operation["status"]
    meta = operation.get("metadata") or {}
    if status == "completed":
        gate = meta.get("gate") or {}
        metrics = gate.get("metrics") or {}
        accuracy = metrics.get("accuracy")
        loss = metrics.get("test_loss", metrics.get("final_loss"))  # the gate named it final_loss
        figures = ""
        if accuracy is not None and loss is not None:
            figures = f" (test accuracy {accuracy:.3f}, test loss {loss:.3f})"
        backtest = meta.get("backtest") or {}
        if meta.get("backtest_gate"):
            figures += f"; backtest gate {meta['backtest_gate'].get('outcome', '?')}"
        if backtest.get("trades") is not None and backtest.get("total_return_pct") is not None:
            figures += (
                f" ({backtest['trades']:.0f} trades, return {backtest['total_return_pct']:+.2%})"
            )
        return (
            f"completed: training gate {gate.get('outcome', '?')}{figures}; "
            f"model at {meta.get('model_path')}"
        )
    return f"{status}: {operation.get('error_message') or 'no message'}"


def verdict_of(operation: dict[str, Any]) -> str:
    """passed, bypassed, gate_failed, failed or cancelled: the words `agent history` uses."""
    try:
        return str(history_entry(Operation.model_validate(operation))["verdict"])
    except ValidationError:  # a record from a newer or older release: its status still says
        return str(operation.get("status"))


def interrupted_text(operation_id: str) -> str:
    return (
        f"stopped following {operation_id}; the cycle goes on. "
        f"Watch it again: ktrdr agent status {operation_id} --follow; "
        f"cancel it: ktrdr agent cancel {operation_id}"
    )


def _elapsed(operation: dict[str, Any]) -> float:
    start = parse_iso(operation["created_at"]).timestamp()
    end = operation.get("completed_at")
    return max(0.0, (parse_iso(end).timestamp() if end else time.time()) - start)


def _phase_line(operation: dict[str, Any]) -> Text:
    current = operation.get("phase", "")
    done = operation["status"] == "completed"
    reached = PHASES.index(current) if current in PHASES else (len(PHASES) if done else -1)
    text = Text()
    for index, phase in enumerate(PHASES):
        if index:
            text.append(" > ", style="dim")
        if index < reached:
            text.append(phase, style="green")
        elif index == reached and operation["status"] in ACTIVE:
            text.append(phase, style="bold cyan")
        elif index == reached:
            text.append(phase, style="bold red")
        else:
            text.append(phase, style="dim")
    return text


def _bar(completed: float, total: float, label: str) -> Table:
    """A progress bar with its label on the same line."""
    row = Table.grid(padding=(0, 1))
    row.add_row(ProgressBar(total=total or 1, completed=completed, width=40), label)
    return row


def _loss_text(context: dict[str, Any]) -> str:
    return _epoch_text({key: value for key, value in context.items() if "epoch" not in key})


def render(operation: dict[str, Any]) -> RenderableType:
    """The live view of one operation record."""
    progress = operation.get("progress") or {}
    context = progress.get("context") or {}
    meta = operation.get("metadata") or {}
    percentage = float(progress.get("percentage") or 0)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    table.add_row("cycle", operation["operation_id"])
    table.add_row("strategy", str(meta.get("strategy_name") or "-"))
    table.add_row("status", operation["status"])
    table.add_row("phase", _phase_line(operation))
    table.add_row("progress", _bar(percentage, 100, f"{percentage:.1f}%"))
    table.add_row("step", progress.get("current_step") or "")
    if context.get("epoch") is not None:
        total = context.get("total_epochs") or 0
        label = f"epoch {context['epoch']}/{total}" if total else f"epoch {context['epoch']}"
        table.add_row("training", _bar(context["epoch"], total, label))
        losses = _loss_text(context)
        if losses:
            table.add_row("metrics", losses)
    table.add_row("elapsed", f"{_elapsed(operation):.0f} s")
    gate = meta.get("gate") or {}
    if gate.get("outcome") == "failed":
        table.add_row("gate", Text("\n".join(gate.get("reasons") or []), style="red"))
    return table


def _read(operation_id: str, outage_since: list[float]) -> dict[str, Any] | None:
    """The record, or None while Redis is briefly unreachable (raises after STORE_OUTAGE_S)."""
    try:
        record = workflow.status(operation_id)
    except StoreUnavailableError:
        if not outage_since:
            outage_since.append(time.monotonic())
        if time.monotonic() - outage_since[0] > STORE_OUTAGE_S:
            raise
        return None
    outage_since.clear()
    return record


def follow_from_command(operation_id: str, as_json: bool = False) -> int:
    """`--follow` of `agent trigger` / `agent status`: Ctrl+C leaves the cycle running, and
    says so (exit 130). `ktrdr demo` follows with `follow_operation`, because there Ctrl+C
    means "cancel and stop everything"."""
    try:
        return follow_operation(operation_id, as_json=as_json)
    except KeyboardInterrupt:
        click.echo(interrupted_text(operation_id), err=True)
        return EXIT_INTERRUPTED


def follow_operation(
    operation_id: str, as_json: bool = False, timeout_s: float | None = None
) -> int:
    """Watch until the cycle ends; the exit code says how it ended.

    `timeout_s` bounds the wait (FollowTimeout); the cycle itself is left as it is. Ctrl+C
    raises KeyboardInterrupt to the caller, which decides what it means.
    """
    console = Console()
    live = not as_json and console.is_terminal and sys.stdout.isatty()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    outage: list[float] = []
    operation = workflow.status(operation_id)

    def next_record() -> None:
        nonlocal operation
        if deadline is not None and time.monotonic() > deadline:
            raise FollowTimeout(
                f"{operation_id} still {operation['status']} after {timeout_s:.0f} s"
            )
        time.sleep(REFRESH_S)
        operation = _read(operation_id, outage) or operation

    if live:
        with Live(render(operation), console=console, refresh_per_second=4) as view:
            while operation["status"] in ACTIVE:
                next_record()
                view.update(render(operation))
    else:
        last_line = ""
        while True:
            line = one_line(operation)
            if not as_json and line != last_line:
                click.echo(line)
                last_line = line
            if operation["status"] not in ACTIVE:
                break
            next_record()
    if as_json:
        click.echo(json.dumps({**operation, "verdict": verdict_of(operation)}, default=str))
    else:
        click.echo(verdict_text(operation))
    return 0 if operation["status"] == "completed" else 1
