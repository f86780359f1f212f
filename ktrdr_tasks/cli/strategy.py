"""`ktrdr strategy ...`: design a strategy file, or check one against ktrdr's rules.

`design` runs the same designer the chain's `design` task runs, with the cycle history from
Redis when Redis answers (without it, only the files on disk keep it from repeating a design),
and saves the file. `validate` applies the validator
and the trainer's rules (`check_strategy`) to a path or to a name in the strategies directory,
and exits 2 with one line per bad field when the file would not train.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import click

from ktrdr_tasks.design import design_strategy
from ktrdr_tasks.errors import EXIT_BAD_INPUT as EXIT_INVALID
from ktrdr_tasks.errors import FieldError, StrategyError, StrategyValidationError
from ktrdr_tasks.settings import get_settings
from ktrdr_tasks.strategy_schema import STRATEGY_NAME, check_strategy, load_strategy_file

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
        click.echo(
            json.dumps(
                {
                    "name": result.name,
                    "path": str(result.path),
                    "fingerprint": result.fingerprint,
                    "hypothesis": result.hypothesis,
                    "designer": result.designer,
                }
            )
        )
        return
    click.echo(f"{result.name}  {result.path}")
    click.echo(result.hypothesis)


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
    """A path as given, or `<strategies_dir>/<name>.yaml` for a name that follows the rule."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or len(candidate.parts) > 1:
        return candidate
    if not STRATEGY_NAME.match(name_or_path):
        raise StrategyError(
            f"'{name_or_path}' is neither a path nor a strategy name "
            "(letters, digits, '_' and '-' only)"
        )
    directory = Path(strategies_dir).resolve()
    path = (directory / f"{name_or_path}.yaml").resolve()
    # A symlink may not lead out of the strategies directory (DESIGN section 5).
    if directory not in path.parents:
        raise StrategyError(f"Strategy '{name_or_path}' resolves outside {strategies_dir}")
    if not path.exists():
        known = sorted(p.stem for p in directory.glob("*.yaml"))[:10]
        raise StrategyError(
            f"Strategy '{name_or_path}' not found in {strategies_dir} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return path


def _check(name_or_path: str, strategies_dir: Path) -> tuple[str, list[FieldError]]:
    """(strategy name, errors): unreadable files become one error, not a traceback."""
    name = Path(name_or_path).stem
    try:
        path = resolve_strategy_path(name_or_path, strategies_dir)
        document = load_strategy_file(path)
        name = str(document.get("name") or path.stem)
        check_strategy(document, str(path))
    except StrategyValidationError as exc:
        return name, exc.errors
    except StrategyError as exc:
        return name, [FieldError("", str(exc))]
    return name, []
