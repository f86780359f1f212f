"""Strategy files: the name rule, where a name lives, reading a file safely, what training needs.

Everything that reads a strategy file goes through this module: the chain (`design` for a
requested strategy, `load_training_params`), the designer's fingerprints, the schema,
`ktrdr strategy validate` and the reference training host. So a name, a file and a symbol
list mean the same thing to all of them.

Reading is bounded because a strategy file is untrusted input (DESIGN section 5) and some
readers re-serialise what they read: a 2 KB YAML alias bomb expands to gigabytes, a 600-deep
nesting exhausts Python's recursion limit in a recursive composer, and a 10 MB file takes
tens of seconds and over a gigabyte to build. Before anything is built, one pass over the
parser's events (iterative, constant stack) checks the nesting depth, counts the aliases and
the size of the document as it would be with every alias expanded; then libyaml's safe
loader builds it. Each refusal is one `StrategyError` line naming the limit and the file.

The chain checks only what it uses (the name, `training_data`, dates); full validation of the
ktrdr format belongs to the designer before it saves and to the training service. Every shape
of `training_data` a real ktrdr strategy uses is read: v2/v3 `{mode, symbol|list|symbols}`,
`{mode, timeframe|list|timeframes}`, the plan's direct lists, legacy top-level `data:`, and
dates as `date_range: {start, end}` or `start_date`/`end_date`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ktrdr_tasks.errors import StrategyError
from ktrdr_tasks.settings import get_settings

STRATEGY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}\Z")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
# libyaml's safe loader when built in: the same safe constructor, ~8x faster than the
# pure-Python one (4.3 ms -> 0.55 ms per strategy file).
_SAFE_LOADER: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SHOWN_NAME = 60  # characters of a refused name echoed back: a 100 kB name is not a message


@dataclass(frozen=True)
class ReadLimits:
    """How much of a strategy file is read at all.

    Real strategies are 2-6 KB (ktrdr's largest: 6 KB), about 6 levels deep, without aliases;
    the limits leave 20x room and keep the worst accepted file to about a second of parsing
    on a busy 2-core machine (a 10 MB file took 38 s and 1.6 GB there). `max_expanded` counts
    one per node plus one per scalar character with every alias expanded: without aliases
    that is about the byte size, so only aliases can trip it.
    """

    max_bytes: int = 128 * 1024
    max_depth: int = 50
    max_aliases: int = 1_000
    max_expanded: int = 256 * 1024


DEFAULT_LIMITS = ReadLimits()


class TrainingParams(BaseModel):
    """What `POST /trainings/start` needs besides the name."""

    symbols: list[str]
    timeframes: list[str]
    start_date: str | None = None
    end_date: str | None = None


# -- names and paths ---------------------------------------------------------------------------


def is_strategy_name(text: object) -> bool:
    """ktrdr's rule: 1-100 letters, digits, '_' or '-', starting with a letter or digit."""
    return isinstance(text, str) and STRATEGY_NAME.match(text) is not None


def shown(text: str) -> str:
    """`text` quoted for a message, cut short when it is long."""
    if len(text) <= _SHOWN_NAME:
        return repr(text)
    return f"{text[:_SHOWN_NAME]!r}... ({len(text)} characters)"


def validate_strategy_name(name: object) -> str:
    """Refuse anything that is not a plain ktrdr strategy name before touching the disk."""
    if not is_strategy_name(name):
        what = shown(name) if isinstance(name, str) else repr(name)
        raise StrategyError(
            f"invalid strategy name {what}: use 1-100 letters, digits, '_' or '-', "
            "starting with a letter or digit (no dots, slashes or spaces)"
        )
    return str(name)


def strategy_path(name: str, strategies_dir: Path) -> Path:
    """The file for `name`, guaranteed to lie inside `strategies_dir` even through symlinks."""
    validate_strategy_name(name)
    root = Path(strategies_dir).resolve()
    resolved = (root / f"{name}.yaml").resolve()
    if not resolved.is_relative_to(root):
        raise StrategyError(
            f"strategy {name!r} resolves to {resolved}, outside the strategies directory {root}"
        )
    return resolved


def known_strategies(strategies_dir: Path) -> list[str]:
    """Names of the strategy files in the directory (files with other names are not ours)."""
    directory = Path(strategies_dir)
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.yaml") if is_strategy_name(p.stem))


def existing_strategy_path(name: str, strategies_dir: Path) -> Path:
    """`strategy_path` for a file that must exist; the error lists what does exist."""
    path = strategy_path(name, strategies_dir)
    if not path.exists():
        known = known_strategies(strategies_dir)
        listed = ", ".join(known[:10]) + (" ..." if len(known) > 10 else "") if known else "none"
        raise StrategyError(f"strategy {name!r} not found in {strategies_dir} (known: {listed})")
    return path


# -- reading a file --------------------------------------------------------------------------


def read_strategy_file(path: Path, limits: ReadLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The YAML mapping in `path`, read within `limits`; StrategyError (one line) otherwise."""
    path = Path(path)
    if path.exists() and not path.is_file():
        # A FIFO or a device would block or never end; a directory is no strategy either.
        raise StrategyError(f"strategy file {path} is not a regular file")
    try:
        with path.open("rb") as stream:
            data = stream.read(limits.max_bytes + 1)
    except FileNotFoundError:
        raise StrategyError(f"strategy file not found: {path}") from None
    except OSError as exc:
        raise StrategyError(f"cannot read strategy file {path}: {exc.strerror or exc}") from None
    if len(data) > limits.max_bytes:
        raise StrategyError(
            f"strategy file {path} is larger than the {_size(limits.max_bytes)} limit "
            f"for strategy files ({_size(path.stat().st_size)}); a strategy is a few KB"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrategyError(f"strategy file {path} is not UTF-8 text ({exc.reason})") from None
    return parse_strategy_text(text, str(path), limits)


def parse_strategy_text(
    text: str, source: str, limits: ReadLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Parse strategy YAML (safe loader, no Python objects) after checking it is bounded."""
    if len(text) > limits.max_bytes:
        raise StrategyError(f"strategy file {source} is larger than {_size(limits.max_bytes)}")
    try:
        _check_bounds(text, source, limits)
        document = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise StrategyError(f"strategy file {source} is not valid YAML: {_problem(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        # Values the safe constructor cannot build: a 5,000-digit integer, 2020-13-45 as a
        # date, a list used as a mapping key. Still bad YAML for a person.
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StrategyError(f"strategy file {source} is not valid YAML: {first_line}") from None
    if not isinstance(document, dict):
        kind = "empty" if document is None else f"a {type(document).__name__}"
        raise StrategyError(
            f"strategy file {source} must hold a YAML mapping (one strategy), but it is {kind}"
        )
    return document


def _check_bounds(text: str, source: str, limits: ReadLimits) -> None:
    """Depth, alias count and expanded size, from the event stream: nothing is built yet."""
    anchors: dict[str, int] = {}  # finished anchor -> its expanded size
    open_frames: list[list[Any]] = []  # [expanded size so far, anchor] per open collection
    aliases = expanded = 0

    def count(size: int) -> None:
        nonlocal expanded
        expanded += size
        if expanded > limits.max_expanded:
            raise StrategyError(
                f"strategy file {source} expands to more than {limits.max_expanded:,} nodes "
                f"and characters (limit for strategy files; YAML aliases multiply content)"
            )

    def into_parent(size: int) -> None:
        if open_frames:
            open_frames[-1][0] += size

    for event in yaml.parse(text, Loader=_SAFE_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(open_frames) >= limits.max_depth:
                raise StrategyError(
                    f"strategy file {source} nests deeper than {limits.max_depth} levels "
                    f"(limit for strategy files; line {event.start_mark.line + 1})"
                )
            count(1)
            open_frames.append([1, event.anchor])
        elif isinstance(event, yaml.CollectionEndEvent):
            size, anchor = open_frames.pop()
            if anchor is not None:
                anchors[anchor] = size
            into_parent(size)  # already counted; the enclosing anchor's size includes it
        elif isinstance(event, yaml.ScalarEvent):
            size = 1 + len(event.value)
            if event.anchor is not None:
                anchors[event.anchor] = size
            count(size)
            into_parent(size)
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > limits.max_aliases:
                raise StrategyError(
                    f"strategy file {source} uses more than {limits.max_aliases} YAML aliases "
                    "(limit for strategy files)"
                )
            if any(frame[1] == event.anchor for frame in open_frames):
                raise StrategyError(
                    f"strategy file {source} refers to &{event.anchor} inside itself "
                    "(a recursive YAML alias cannot be a strategy)"
                )
            size = anchors.get(event.anchor, 1)  # an unknown anchor fails in the loader
            count(size)
            into_parent(size)


def load_strategy_config(name: str, strategies_dir: Path | None = None) -> dict[str, Any]:
    """The strategy `name` from `strategies_dir` (default: KTRDR_STRATEGIES_DIR), read safely."""
    if strategies_dir is None:
        strategies_dir = get_settings().strategies_dir
    return read_strategy_file(existing_strategy_path(name, strategies_dir))


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / (1024 * 1024):.1f} MiB"
    return f"{count / 1024:.0f} KiB" if count >= 1024 else f"{count} bytes"


def _problem(exc: yaml.YAMLError) -> str:
    # str(YAMLError) spans several lines with a caret drawing; a person needs one.
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem)


# -- what training needs ---------------------------------------------------------------------


def _as_text_list(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [
            str(item)
            for item in value
            if isinstance(item, str | int | float) and not isinstance(item, bool)
        ]
    return []


def selection_names(section: object, single_key: str) -> list[str]:
    """Symbols (or timeframes) of a `training_data` section, read as ktrdr reads them.

    A non-empty `list` (or its alias, `symbols:` / `timeframes:`) wins whatever `mode` says,
    then the single key: `{mode: single, symbol: EURUSD, list: [EURUSD, GBPUSD]}` trains both
    symbols on a ktrdr backend (`_extract_config_list`: "multi mode takes precedence"), so the
    chain, the fingerprint and the schema all read both. A bare list is the plan's v1 shape.
    """
    if isinstance(section, list | str):
        return _as_text_list(section)
    if not isinstance(section, Mapping):
        return []
    for key in ("list", f"{single_key}s"):
        listed = _as_text_list(section.get(key))
        if listed:
            return listed
    return _as_text_list(section.get(single_key))


def date_text(value: object) -> str | None:
    """A strategy date as text: unquoted YAML dates load as datetime.date."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def date_problem(text: str) -> str | None:
    """Why `text` is not a `YYYY-MM-DD` date, or None when it is one."""
    if _ISO_DATE.match(text):
        try:
            dt.date.fromisoformat(text)
        except ValueError:
            return f"{text!r} is not a calendar date"
        return None
    return f"must be a date written YYYY-MM-DD, got {shown(text)}"


def date_selection(training_data: Mapping[str, Any]) -> tuple[object, object]:
    """(start, end) as written: `date_range` first (what ktrdr's research worker reads)."""
    date_range = training_data.get("date_range")
    if not isinstance(date_range, Mapping):
        date_range = {}
    start = date_range.get("start")
    end = date_range.get("end")
    if start is None or start == "":
        start = training_data.get("start_date")
    if end is None or end == "":
        end = training_data.get("end_date")
    return start, end


def extract_training_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """Symbols, timeframes and dates of a strategy; missing sections give empty lists."""
    training_data = config.get("training_data")
    if not isinstance(training_data, Mapping):
        training_data = {}
    legacy = config.get("data") if isinstance(config.get("data"), Mapping) else {}

    symbols = selection_names(training_data.get("symbols"), "symbol") or _as_text_list(
        legacy.get("symbols")
    )
    timeframes = selection_names(training_data.get("timeframes"), "timeframe") or _as_text_list(
        legacy.get("timeframes")
    )
    start, end = date_selection(training_data)
    return {
        "symbols": symbols,
        "timeframes": timeframes,
        "start_date": date_text(start),
        "end_date": date_text(end),
    }


def training_params_for(
    name: str,
    config: Mapping[str, Any],
    strategies_dir: Path,
    default_start: str | None,
    default_end: str | None,
) -> TrainingParams:
    """The start request's data selection, refusing a strategy that names no data."""
    params = extract_training_params(config)
    path = Path(strategies_dir) / f"{name}.yaml"
    for field, label in (("symbols", "symbol"), ("timeframes", "timeframe")):
        if not params[field]:
            raise StrategyError(
                f"strategy {path} names no {label}: set training_data.{field} "
                f"(e.g. {{mode: single, {label}: ...}})"
            )
    for field in ("start_date", "end_date"):
        value = params[field]
        problem = None if value is None else date_problem(value)
        if problem:
            raise StrategyError(f"strategy {path}: training_data.{field} {problem}")
    return TrainingParams(
        symbols=params["symbols"],
        timeframes=params["timeframes"],
        start_date=params["start_date"] or default_start,
        end_date=params["end_date"] or default_end,
    )
