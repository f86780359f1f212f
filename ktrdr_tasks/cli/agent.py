"""`ktrdr agent ...` and `ktrdr operations ...`: trigger, watch, cancel and list research cycles.

`--json` prints one JSON object, except `trigger --follow --json`, which prints NDJSON: the
trigger answer on the first line and, when the cycle ends, its record with a `verdict` key on
the last (`tail -n 1` gives the verdict; each line parses on its own).
"""

from __future__ import annotations

import json
from typing import Any

import click

from ktrdr_tasks import workflow
from ktrdr_tasks.cli.follow import follow_from_command, one_line
from ktrdr_tasks.errors import EXIT_CYCLE_NOT_COMPLETED as EXIT_REFUSED
from ktrdr_tasks.errors import OperationStateError

REASON_WIDTH = 70


def _operation_id(_: click.Context, __: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.strip():
        # One line like every other input error, not click's usage block.
        raise OperationStateError("OPERATION_ID must not be empty; `ktrdr agent list` shows ids")
    return value


def _short(text: object, width: int = REASON_WIDTH) -> str:
    line = " ".join(str(text).split()) if text else "-"
    return line if len(line) <= width else line[: width - 3] + "..."


def _table(headers: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns under a header row, as `docker ps` prints them."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for cells in (headers, *rows):
        padded = [str(cell).ljust(width) for cell, width in zip(cells, widths, strict=True)]
        click.echo("  ".join(padded).rstrip())


def failure_reason(operation: dict[str, Any]) -> str:
    """Why a cycle did not complete, in one short line: the gate's reasons or its error."""
    if operation.get("status") == "completed":
        return "-"
    gate = (operation.get("metadata") or {}).get("gate") or {}
    if gate.get("outcome") == "failed" and gate.get("reasons"):
        return _short("; ".join(str(reason) for reason in gate["reasons"]))
    return _short(operation.get("error_message"))


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, default=str))


@click.group()
def agent() -> None:
    """Research cycles: trigger, follow, cancel, list."""


@agent.command("trigger")
@click.option("--strategy", help="Research this existing strategy instead of designing one.")
@click.option("--bypass-gates", is_flag=True, help="Record gate verdicts but never stop on them.")
@click.option("--follow", is_flag=True, help="Watch the cycle live until it ends.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (with --follow: NDJSON, the final record last).",
)
@click.pass_context
def trigger_command(
    ctx: click.Context, strategy: str | None, bypass_gates: bool, follow: bool, as_json: bool
) -> None:
    """Start a research cycle (design -> train -> gate)."""
    result = workflow.trigger(strategy=strategy, bypass_gates=bypass_gates)
    if as_json:
        _print_json(result.model_dump(exclude_none=True))
    else:
        click.echo(result.message)
    if not result.triggered:
        ctx.exit(EXIT_REFUSED)
    if follow and result.operation_id:
        ctx.exit(follow_from_command(result.operation_id, as_json=as_json))


@agent.command("status")
@click.argument("operation_id", required=False, callback=_operation_id)
@click.option("--follow", is_flag=True, help="Watch the cycle live until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def status_command(
    ctx: click.Context, operation_id: str | None, follow: bool, as_json: bool
) -> None:
    """Show one cycle, or the active ones (idle: the last cycle)."""
    if follow:
        target = operation_id or _single_active_id()
        ctx.exit(follow_from_command(target, as_json=as_json))
    answer = workflow.status(operation_id)
    if as_json:
        _print_json(answer)
    elif operation_id:
        click.echo(one_line(answer))
    elif answer["status"] == "idle":
        last = answer["last_cycle"]
        click.echo(
            "idle; last cycle: "
            + (
                f"{last['operation_id']} {last['outcome']} ({last['strategy_name']})"
                if last
                else "none"
            )
        )
    else:
        for operation in answer["operations"]:
            click.echo(one_line(operation))


def _single_active_id() -> str:
    answer = workflow.status()
    if answer["status"] == "idle":
        raise click.UsageError("no active cycle to follow; give an OPERATION_ID")
    return answer["operations"][0]["operation_id"]


@agent.command("cancel")
@click.argument("operation_id", callback=_operation_id)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cancel_command(operation_id: str, as_json: bool) -> None:
    """Cancel a cycle and its remote job (the training or the backtest)."""
    answer = workflow.cancel(operation_id)
    if as_json:
        _print_json(answer)
        return
    remote = answer.get("cancelled_training_operation_id")
    click.echo(
        f"cancelled {operation_id}" + (f"; remote job {remote} cancel requested" if remote else "")
    )


@agent.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--status", "status_filter", help="Only cycles with this status.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def list_command(limit: int, status_filter: str | None, as_json: bool) -> None:
    """Recent cycles, newest first."""
    operations = workflow.list_operations(limit, status_filter)
    if as_json:
        _print_json({"operations": operations, "count": len(operations)})
        return
    if not operations:
        click.echo("no cycles yet")
        return
    rows = []
    for operation in operations:
        progress = operation.get("progress") or {}
        rows.append(
            [
                operation["operation_id"],
                operation["status"],
                operation.get("phase") or "-",
                f"{float(progress.get('percentage') or 0):.0f}%",
                (operation.get("metadata") or {}).get("strategy_name") or "-",
                failure_reason(operation),
            ]
        )
    _table(["OPERATION", "STATUS", "PHASE", "PROGRESS", "STRATEGY", "FAILURE REASON"], rows)


@agent.command("history")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def history_command(limit: int, as_json: bool) -> None:
    """Finished cycles: strategy, verdict, accuracy, loss, and the backtest's figures."""
    rows = workflow.history(limit)
    if as_json:
        _print_json({"history": rows, "count": len(rows)})
        return
    if not rows:
        click.echo("no finished cycles yet")
        return
    table = []
    for row in rows:
        accuracy, loss = row.get("test_accuracy"), row.get("test_loss")
        reasons = row.get("gate_reasons") or []
        passed = row.get("verdict") in ("passed", "bypassed")
        table.append(
            [
                row.get("finished_at") or "-",
                row.get("verdict") or "-",
                row.get("strategy_name") or "-",
                "-" if accuracy is None else f"{accuracy:.3f}",
                "-" if loss is None else f"{loss:.3f}",
                *_backtest_columns(row),
                "-" if passed else _short("; ".join(map(str, reasons)) or row.get("error_message")),
            ]
        )
    headers = ["FINISHED", "VERDICT", "STRATEGY", "ACCURACY", "LOSS"]
    headers += ["TRADES", "RETURN", "SHARPE", "DRAWDOWN", "FAILURE REASON"]
    _table(headers, table)


def _backtest_columns(row: dict[str, Any]) -> list[str]:
    """Trades, return, Sharpe and drawdown of the cycle's out-of-sample backtest."""

    def shown(name: str, spec: str) -> str:
        value = row.get(name)
        return "-" if value is None else format(value, spec)

    return [
        shown("trades", ".0f"),
        shown("total_return_pct", "+.2%"),
        shown("sharpe_ratio", ".2f"),
        shown("max_drawdown_pct", ".2%"),
    ]


@click.group()
def operations() -> None:
    """Operations as ktrdr names them."""


@operations.command("status")
@click.argument("operation_id", callback=_operation_id)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def operations_status(operation_id: str, as_json: bool) -> None:
    """Show one operation as stored."""
    answer = workflow.status(operation_id)
    if as_json:
        _print_json(answer)
        return
    click.echo(one_line(answer))
    meta = answer.get("metadata") or {}
    for key in ("strategy_name", "strategy_path", "training_operation_id", "model_path"):
        if meta.get(key):
            click.echo(f"  {key}: {meta[key]}")
    gate = meta.get("gate")
    if gate:
        click.echo(f"  gate: {gate.get('outcome')} {'; '.join(gate.get('reasons') or [])}")
    if answer.get("error_message"):
        click.echo(f"  error: {answer['error_message']}")
