"""The `ktrdr` command: one click group per resource, errors mapped to exit codes in one place.

Exit codes scripts can rely on:
    0  success (for --follow: the cycle completed)
    1  the cycle ended failed or cancelled (--follow), or a refused trigger
    2  bad usage or bad input (unknown strategy, invalid file, unknown operation id)
    3  a service is unreachable (Redis, the training API)
    4  configuration error
"""

from __future__ import annotations

import sys

import click

from ktrdr_tasks.errors import (  # noqa: F401  (the exit codes, defined with the error tree)
    EXIT_BAD_INPUT,
    EXIT_CONFIG,
    EXIT_CYCLE_NOT_COMPLETED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    KtrdrTasksError,
    exit_code_for,
)


@click.group()
def cli() -> None:
    """ktrdr-tasks: design, train and judge trading strategies as Celery research cycles."""


def _register() -> None:
    from ktrdr_tasks.cli.agent import agent, operations
    from ktrdr_tasks.cli.demo import demo
    from ktrdr_tasks.cli.strategy import strategy

    cli.add_command(agent)
    cli.add_command(operations)
    cli.add_command(strategy)
    cli.add_command(demo)


def _unreachable_hint(exc: KtrdrTasksError) -> str:
    """Redis unreachable next to a stack kept by `ktrdr demo --keep-running`: say what to source."""
    from ktrdr_tasks.errors import StoreUnavailableError
    from ktrdr_tasks.stack import kept_stack_hint

    return kept_stack_hint() if isinstance(exc, StoreUnavailableError) else ""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: run the group and turn our errors into one line and an exit code."""
    _register()
    try:
        code = cli.main(args=argv, prog_name="ktrdr", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except KtrdrTasksError as exc:
        click.echo(f"error: {exc}{_unreachable_hint(exc)}", err=True)
        sys.exit(exit_code_for(exc))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
