"""`ktrdr strategy ...`: design a strategy file, or check one against ktrdr's rules.

`design` runs the same designer the chain's `design` task runs, with the cycle history from
Redis when Redis answers (without it, only the files on disk keep it from repeating a design),
and saves the file; it says which candidate of the seed's sequence it chose and why earlier
ones were skipped. `validate` applies the validator and the trainer's rules (`check_strategy`)
to a path or to a name in the strategies directory, read with the chain's bounded reader, and
exits 2 with one line per bad field when the file would not train (one line, too, for a file
that is refused unread: too big, too deep, an alias bomb).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ktrdr_tasks.design import DesignResult, design_strategy
from ktrdr_tasks.errors import EXIT_BAD_INPUT as EXIT_INVALID
from ktrdr_tasks.errors import FieldError, StrategyError, StrategyValidationError
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.strategy import existing_strategy_path, is_strategy_name, read_strategy_file
from ktrdr_tasks.strategy_schema import check_strategy

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
        check_strategy(document, str(path))
    except StrategyValidationError as exc:
        return name, exc.errors
    except StrategyError as exc:
        return name, [FieldError("", str(exc))]
    return name, []
