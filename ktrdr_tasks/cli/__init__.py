"""The `ktrdr` command: one click group per resource, errors mapped to exit codes in one place.

Exit codes scripts can rely on:
    0  success (for --follow: the cycle completed)
    1  the cycle ended failed or cancelled (--follow), or a refused trigger
    2  bad usage or bad input (unknown strategy, invalid file, unknown operation id)
    3  a service is unreachable (Redis, the training API)
    4  configuration error (the line names the variable)
  130  interrupted (Ctrl+C); under --follow the cycle goes on

Every error is one line on stderr, at most MAX_ERROR_CHARS long: a 100 kB strategy name
once came back as a 100 kB error line.
"""

from __future__ import annotations

import sys

import click

from ktrdr_tasks import __version__
from ktrdr_tasks.errors import (  # noqa: F401  (the exit codes, defined with the error tree)
    EXIT_BAD_INPUT,
    EXIT_CONFIG,
    EXIT_CYCLE_NOT_COMPLETED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    KtrdrTasksError,
    exit_code_for,
)

MAX_ERROR_CHARS = 1000


def one_line_error(message: object) -> str:
    """An error as one bounded line: a person reads the start, a log keeps the size sane."""
    line = " ".join(str(message).split())
    if len(line) <= MAX_ERROR_CHARS:
        return line
    return f"{line[:MAX_ERROR_CHARS]}... ({len(line) - MAX_ERROR_CHARS} more characters)"


@click.group()
@click.version_option(__version__, "--version", prog_name="ktrdr", message="%(prog)s %(version)s")
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
        sys.exit(EXIT_INTERRUPTED)
    except click.ClickException as exc:
        exc.message = one_line_error(exc.message)
        exc.show()
        sys.exit(EXIT_BAD_INPUT)
    except KtrdrTasksError as exc:
        click.echo(f"error: {one_line_error(f'{exc}{_unreachable_hint(exc)}')}", err=True)
        sys.exit(exit_code_for(exc))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else EXIT_OK)
