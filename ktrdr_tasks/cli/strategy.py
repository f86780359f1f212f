"""`ktrdr strategy ...`: design a strategy file, or check one against ktrdr's rules.

`design` runs the same designer the chain's `design` task runs, with the cycle history from
Redis when Redis answers (without it, only the files on disk keep it from repeating a design),
and saves the file; it says which candidate of the seed's sequence it chose and why earlier
ones were skipped. `validate` applies the validator and the trainer's rules
(`check_any_strategy`, v2 or v3) to a path or to a name in the strategies directory, read with
the chain's bounded reader, and exits 2 with one line per bad field when the file would not
train (one line, too, for a file that is refused unread: too big, too deep, an alias bomb).
`convert NAME --to v3` migrates a v2 file for today's ktrdr (`strategy_migration.migrate_document`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ktrdr_tasks.design import DesignResult, design_strategy
from ktrdr_tasks.errors import EXIT_BAD_INPUT as EXIT_INVALID
from ktrdr_tasks.errors import FieldError, StrategyError, StrategyValidationError
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.strategy import existing_strategy_path, is_strategy_name, read_strategy_file
from ktrdr_tasks.strategy_v3 import check_any_strategy

HistoryProvider = Callable[[], Sequence[Mapping[str, Any]]]


def redis_history() -> Sequence[Mapping[str, Any]]:
    """Finished cycles from Redis; none (with a note) when Redis is not running."""
    from ktrdr_tasks.errors import StoreUnavailableError
    from ktrdr_tasks.store import get_store

    try:
        return get_store().recent_history(50)
    except StoreUnavailableError as exc:
        click.echo(f"note: designing without cycle history ({exc})", err=True)
        return []


history_provider: HistoryProvider = redis_history


@click.group()
def strategy() -> None:
    """Design and validate ktrdr strategy files."""


@strategy.command()
@click.option("--seed", type=int, default=None, help="Seed of the built-in designer.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def design(seed: int | None, as_json: bool) -> None:
    """Design one new strategy and save it in the strategies directory."""
    settings = get_settings()
    result = design_strategy(settings, history_provider(), seed=seed)
    if as_json:
        click.echo(json.dumps(design_payload(result)))
        return
    click.echo(f"{result.name}  {result.path}")
    click.echo(result.hypothesis)
    if result.seed is not None:
        click.echo(_choice_line(result))


def design_payload(result: DesignResult) -> dict[str, Any]:
    """The `--json` object: the design, and the seed and candidate that reproduce the choice."""
    return {
        "name": result.name,
        "path": str(result.path),
        "fingerprint": result.fingerprint,
        "hypothesis": result.hypothesis,
        "designer": result.designer,
        "seed": result.seed,
        "candidate": result.candidate,
        "skipped": [
            {"candidate": s.candidate, "name": s.name, "reason": s.reason} for s in result.skipped
        ],
    }


def _choice_line(result: DesignResult) -> str:
    """Why this design: the seed, its position in the seed's sequence, what was skipped."""
    known = sum(1 for s in result.skipped if s.reason == "known_design")
    taken = len(result.skipped) - known
    parts = []
    if known:
        parts.append(f"{known} already designed")
    if taken:
        parts.append(f"{taken} name taken")
    why = f": {', '.join(parts)}" if parts else ""
    return (
        f"seed {result.seed}, candidate {result.candidate} of its sequence "
        f"({len(result.skipped)} skipped{why})"
    )


@strategy.command()
@click.argument("name_or_path")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def validate(ctx: click.Context, name_or_path: str, as_json: bool) -> None:
    """Check a strategy file (a path, or a name in the strategies directory)."""
    name, errors = _check(name_or_path, get_settings().strategies_dir)
    if as_json:
        payload = {
            "valid": not errors,
            "errors": [{"field": e.field, "message": e.message} for e in errors],
            "name": name,
        }
        click.echo(json.dumps(payload))
    elif errors:
        for error in errors:
            click.echo(str(error))
    else:
        click.echo("valid")
    ctx.exit(EXIT_INVALID if errors else 0)


@strategy.command()
@click.argument("name_or_path")
@click.option("--to", "target", type=click.Choice(["v3"]), required=True, help="Target format.")
@click.option("--stdout", "to_stdout", is_flag=True, help="Print the result, change no file.")
@click.pass_context
def convert(ctx: click.Context, name_or_path: str, target: str, to_stdout: bool) -> None:
    """Migrate a v2 strategy file to v3 in place (the original is kept as <file>.v2)."""
    from ktrdr_tasks.strategy_migration import migrate_document

    try:
        path = resolve_strategy_path(name_or_path, get_settings().strategies_dir)
        text, notes = migrate_document(read_strategy_file(path), str(path), path.stem)
    except StrategyError as exc:
        errors = exc.errors if isinstance(exc, StrategyValidationError) else [exc]
        for error in errors:
            click.echo(str(error), err=True)
        ctx.exit(EXIT_INVALID)
    for note in notes:
        click.echo(f"note: {note}", err=True)
    if to_stdout:
        click.echo(text, nl=False)
        return
    backup = path.with_name(f"{path.name}.v2")
    if backup.exists():
        click.echo(f"{backup} exists already: move it away to convert {path} again", err=True)
        ctx.exit(EXIT_INVALID)
    os.link(path, backup)  # the v2 original stays, under a name no loader lists
    temporary = path.with_name(f".{path.name}.v3.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    click.echo(f"{path} is v3 now (the v2 original is {backup})")


def resolve_strategy_path(name_or_path: str, strategies_dir: Path) -> Path:
    """A path as given (the user's own file), or the strategy of that name in the directory."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        return candidate
    if not is_strategy_name(name_or_path):
        raise StrategyError(
            f"{name_or_path[:60]!r} is neither a path nor a strategy name "
            "(letters, digits, '_' and '-' only)"
        )
    return existing_strategy_path(name_or_path, strategies_dir)


def _check(name_or_path: str, strategies_dir: Path) -> tuple[str, list[FieldError]]:
    """(strategy name, errors): unreadable files become one error, not a traceback."""
    name = Path(name_or_path).stem
    try:
        path = resolve_strategy_path(name_or_path, strategies_dir)
        document = read_strategy_file(path)
        name = str(document.get("name") or path.stem)
        check_any_strategy(document, str(path), stem=path.stem)
    except StrategyValidationError as exc:
        return name, exc.errors
    except StrategyError as exc:
        return name, [FieldError("", str(exc))]
    return name, []
