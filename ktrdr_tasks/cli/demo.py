"""`ktrdr demo`: one real research cycle on this machine, from nothing to a verdict.

Starts the local stack (`ktrdr_tasks.stack`: redis-server, Celery worker and beat, the
reference training host, Flower), triggers one cycle with the built-in designer (or
`--strategy`), follows it live to the verdict, prints where the strategy and the model are,
and stops everything it started: on success, on failure, on Ctrl+C and on SIGTERM. A process
of the stack that exits meanwhile is restarted with backoff; with `--keep-running` a
supervisor process of its own keeps doing that after the demo returns.

Exit codes: 0 when the cycle reached a verdict (completed, or failed at the training or the
backtest gate: both are real outcomes of research); 1 when it failed otherwise, was
cancelled or timed out; 3 when the stack could not start; 130 when interrupted.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ktrdr_tasks.cli.follow import FollowTimeout, follow_operation
from ktrdr_tasks.errors import EXIT_CYCLE_NOT_COMPLETED as EXIT_NO_VERDICT
from ktrdr_tasks.errors import EXIT_INTERRUPTED, KtrdrTasksError
from ktrdr_tasks.errors import EXIT_OK as EXIT_VERDICT
from ktrdr_tasks.errors import EXIT_UNAVAILABLE as EXIT_STACK
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.stack import (
    DEFAULT_DATA_DIR,
    FLOWER_USER,
    Stack,
    StackError,
    seed_strategies,
    stop_recorded_stack,
)
from ktrdr_tasks.strategy import load_strategy_config

EXAMPLE_STRATEGIES = Path("strategies")


class _Terminated(Exception):
    """SIGTERM or SIGHUP: leave through the same cleanup as Ctrl+C."""


@contextlib.contextmanager
def _terminate_as_exception() -> Iterator[None]:
    def raise_terminated(signum: int, _: object) -> None:
        raise _Terminated(signal.Signals(signum).name)

    previous = {
        sig: signal.signal(sig, raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Cleanup runs to the end: a second Ctrl+C must not strand half the processes."""
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _shown(path: str | Path | None) -> str:
    """A path relative to the current directory when it is inside it."""
    if not path:
        return "-"
    resolved = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return str(resolved.relative_to(Path.cwd()))
    return str(resolved)


def _cancel_leftovers(echo: Any) -> None:
    """Cycles left active by an earlier run that was killed: nothing runs them any more."""
    from ktrdr_tasks import workflow

    answer = workflow.status()
    for operation in answer.get("operations", []) if answer["status"] == "active" else []:
        with contextlib.suppress(KtrdrTasksError):
            workflow.cancel(operation["operation_id"])
            echo(f"cancelled {operation['operation_id']}, left active by an earlier demo run")


def _is_verdict(operation: dict[str, Any]) -> bool:
    meta = operation.get("metadata") or {}
    gates = (meta.get("gate") or {}, meta.get("backtest_gate") or {})
    return operation["status"] == "completed" or (
        operation["status"] == "failed" and any(g.get("outcome") == "failed" for g in gates)
    )


def _summary(stack: Stack, operation: dict[str, Any], keep_running: bool) -> list[str]:
    meta = operation.get("metadata") or {}
    lines = [""]
    if operation["status"] == "completed":
        lines.append(
            f"Verdict: completed (training gate {(meta.get('gate') or {}).get('outcome')}, "
            f"backtest gate {(meta.get('backtest_gate') or {}).get('outcome')})"
        )
    elif _is_verdict(operation):
        which = "backtest" if (meta.get("backtest_gate") or {}).get("outcome") else "training"
        lines.append(f"Verdict: rejected by the {which} gate (a real outcome: most ideas fail)")
    else:
        lines.append(f"Verdict: none, the cycle {operation['status']}")
    lines.append(f"  strategy YAML  {_shown(meta.get('strategy_path'))}")
    model = meta.get("model_path")
    if model:
        files = [name for name in ("model.pt", "metadata.json") if (Path(model) / name).exists()]
        lines.append(f"  model          {_shown(model)}/  ({', '.join(files) or 'no files'})")
    lines.append(f"  logs           {_shown(stack.paths.logs)}/")
    lines.append(f"  cycle          {operation['operation_id']}")
    if keep_running:
        env_file = _shown(stack.paths.env_file)
        lines += [
            f"  Flower         {stack.flower_url}  (user {FLOWER_USER}, password "
            f"{stack.flower_password})",
            "",
            "The stack keeps running under its supervisor, which restarts a process that exits",
            f"(log {_shown(stack.paths.log('supervisor'))}). To use it from a shell:",
            f"  set -a; . {env_file}; set +a",
            f"  ktrdr operations status {operation['operation_id']}",
            "  ktrdr agent trigger --follow",
            f"Stop it with: ktrdr demo --stop --data-dir {_shown(stack.data_dir)}",
        ]
    else:
        lines.append(
            "  Flower         stopped with the stack; `ktrdr demo --keep-running` leaves it up "
            "and prints its URL and password"
        )
    return lines


@click.command()
@click.option(
    "--keep-running", is_flag=True, help="Leave the stack up after the cycle (stop: --stop)."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Redis AOF, logs, strategies and models.",
)
@click.option("--strategy", help="Research this existing strategy instead of designing one.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=600.0,
    show_default=True,
    help="Seconds to wait for the cycle before cancelling it.",
)
@click.option("--stop", is_flag=True, help="Stop a stack left running by --keep-running.")
@click.pass_context
def demo(
    ctx: click.Context,
    keep_running: bool,
    data_dir: Path,
    strategy: str | None,
    timeout: float,
    stop: bool,
) -> None:
    """Run one research cycle on this machine: start everything, follow it, stop everything."""
    if stop:
        stopped = stop_recorded_stack(data_dir)
        click.echo(f"stopped {len(stopped)} processes" if stopped else "no stack running here")
        return
    run = _DemoRun(Stack(data_dir, get_settings(), keep_running=keep_running))
    code = EXIT_NO_VERDICT
    with _terminate_as_exception():
        try:
            code = run.run(strategy, timeout)
        except StackError as exc:
            click.echo(f"error: {exc}", err=True)
            code = EXIT_STACK
        except (KeyboardInterrupt, click.exceptions.Abort, _Terminated):
            click.echo("\ninterrupted: cancelling the cycle and stopping the stack", err=True)
            code = EXIT_INTERRUPTED
            run.stack.keep_running = False
            with _uninterruptible():
                run.cancel_cycle()
        finally:
            if run.stack.children and not run.stack.keep_running:
                with _uninterruptible():
                    click.echo("Stopping the stack ...", err=True)
                    run.stack.stop()
                    click.echo("Stopped every process the demo started.", err=True)
    ctx.exit(code)


class _DemoRun:
    """One demo: the stack it started and the cycle it follows (to cancel on the way out)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.operation_id: str | None = None

    def cancel_cycle(self) -> None:
        from ktrdr_tasks import workflow

        if self.operation_id:
            with contextlib.suppress(Exception):  # already ended, or Redis gone: nothing to do
                workflow.cancel(self.operation_id)

    def run(self, strategy: str | None, timeout: float) -> int:
        from ktrdr_tasks import workflow

        stack, echo = self.stack, click.echo
        logs = _shown(stack.paths.logs)
        echo(f"Starting the local stack in {_shown(stack.data_dir)}/ (logs in {logs}/)")
        if stack.strategies_dir == stack.paths.strategies:
            stack.paths.create()
            seed_strategies(EXAMPLE_STRATEGIES, stack.strategies_dir)
        if strategy:  # a wrong name fails now, not after five processes have started
            load_strategy_config(strategy, stack.strategies_dir)
        start = stack.start_detached if stack.keep_running else stack.start
        start(on_step=lambda step: echo(f"  starting {step}"))
        echo(
            f"  ready: redis, worker, beat, training host {stack.api_url}, "
            f"Flower {stack.flower_url}"
        )
        workflow.use_environment(stack.env())  # this process talks to the stack too
        _cancel_leftovers(echo)

        result = workflow.trigger(strategy=strategy)
        if not result.triggered:
            raise StackError(f"the cycle was not started: {result.message}")
        self.operation_id = result.operation_id
        how = f"strategy {strategy}" if strategy else "the built-in designer"
        echo(f"Research cycle {result.operation_id} with {how}; following it (Ctrl+C stops)")
        try:
            follow_operation(result.operation_id, timeout_s=timeout)
        except FollowTimeout as exc:
            echo(f"timed out: {exc}; cancelling it (raise --timeout to wait longer)")
            self.cancel_cycle()
        operation = workflow.status(result.operation_id)
        self.operation_id = None
        for line in _summary(stack, operation, stack.keep_running):
            echo(line)
        return EXIT_VERDICT if _is_verdict(operation) else EXIT_NO_VERDICT
