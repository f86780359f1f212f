"""Where designs go and how they are recognised: saving YAML files, fingerprints, summaries.

A design is saved once, as `<strategies_dir>/<name>.yaml`, and never overwritten: the file is
written to a temporary name and then hard-linked into place, which fails atomically when the
name is taken (two workers designing at once cannot clobber each other, and a reader never
sees half a file). The fingerprint is what makes two designs "the same" for the designer's
history check: indicators with their resolved parameters, fuzzy sets, model, labels, symbols
and timeframes, but not the name, description or feature_id spelling. Files already in the
directory are read with the chain's bounded reader; one that cannot be read (too big, too
deep, an alias bomb, bad YAML) is skipped with a warning, so it never stops a design.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ktrdr_tasks.catalogue import find_indicator, resolve_params
from ktrdr_tasks.errors import StrategyError, StrategyExistsError
from ktrdr_tasks.strategy import read_strategy_file, selection_names, validate_strategy_name
from ktrdr_tasks.strategy_v3 import essence_view

logger = logging.getLogger(__name__)


def save_strategy(strategies_dir: Path, config: Mapping[str, Any]) -> Path:
    """Write `config` to `<strategies_dir>/<name>.yaml` atomically, never replacing a file."""
    name = str(config.get("name", ""))
    try:
        validate_strategy_name(name)
    except StrategyError as exc:
        raise StrategyError(f"cannot save the strategy: {exc}") from None
    directory = Path(strategies_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{name}.yaml"
    text = strategy_yaml(config)
    handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        # link() refuses an existing target, unlike rename(): the no-overwrite check and the
        # publication are one atomic step.
        os.link(temp_name, target)
    except FileExistsError:
        raise StrategyExistsError(
            f"Strategy '{name}' already exists in {directory}; designs never overwrite a file"
        ) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp_name)
    return target


def strategy_yaml(config: Mapping[str, Any]) -> str:
    """The strategy as YAML, keys in the given order; the version string stays quoted."""
    return yaml.safe_dump(
        _plain(config), sort_keys=False, default_flow_style=None, allow_unicode=True, width=100
    )


def existing_fingerprints(strategies_dir: Path) -> set[str]:
    """Fingerprints of the strategy files already in the directory (unreadable ones skipped)."""
    directory = Path(strategies_dir)
    if not directory.is_dir():
        return set()
    found: set[str] = set()
    for path in directory.glob("*.yaml"):
        fingerprint = _file_fingerprint(path)
        if fingerprint is not None:
            found.add(fingerprint)
    return found


def history_fingerprints(history: Sequence[Mapping[str, Any]]) -> set[str]:
    """The fingerprints recorded in the finished cycles' history."""
    return {
        str(entry["fingerprint"])
        for entry in history
        if isinstance(entry, Mapping) and entry.get("fingerprint")
    }


def design_fingerprint(config: Mapping[str, Any]) -> str:
    """A stable hash of what makes a design different from another (not its name or prose)."""
    canonical = json.dumps(_essence(config), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def summarize_design(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the history record keeps of a design."""
    essence = _essence(config)
    return {
        "fingerprint": design_fingerprint(config),
        "indicators": [item["name"] for item in essence["indicators"]],
        "symbols": essence["symbols"],
        "timeframes": essence["timeframes"],
    }


# Cache keyed by (path, mtime, size): the designer rescans the directory on every design, and
# re-parsing hundreds of unchanged files each time is the slow part.
_FILE_CACHE: dict[tuple[str, int, int], str | None] = {}


def _file_fingerprint(path: Path) -> str | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _FILE_CACHE:
        try:
            _FILE_CACHE[key] = design_fingerprint(read_strategy_file(path))
        except StrategyError as exc:
            logger.warning("design: skipping an unreadable strategy file: %s", exc)
            _FILE_CACHE[key] = None
    return _FILE_CACHE[key]


def _essence(config: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a strategy that change what is trained, in a canonical shape."""
    config = essence_view(config)  # a v3 document in v2's shape; v2 unchanged
    fuzzy = _mapping(config.get("fuzzy_sets"))
    indicators = []
    for item in config.get("indicators") or []:
        if not isinstance(item, Mapping):
            continue
        spec = find_indicator(str(item.get("name", "")))
        sets = _mapping(fuzzy.get(item.get("feature_id")))
        indicators.append(
            {
                "name": spec.name if spec else str(item.get("name")),
                "params": resolve_params(item),
                # Set names only order the input columns; their shapes are the design.
                "sets": sorted(
                    [str(s.get("type")), [_number(p) for p in s.get("parameters") or []]]
                    for s in (_mapping(v) for v in sets.values())
                ),
            }
        )
    indicators.sort(key=lambda entry: json.dumps(entry, sort_keys=True, default=str))
    model = _mapping(config.get("model"))
    training = _mapping(model.get("training"))
    labels = _mapping(_mapping(config.get("training")).get("labels"))
    data = _mapping(config.get("training_data"))
    return {
        "indicators": indicators,
        "model": {
            "type": model.get("type"),
            "architecture": _mapping(model.get("architecture")),
            "lookback": _mapping(model.get("features")).get("lookback_periods", 0),
            "training": {k: v for k, v in training.items() if k != "early_stopping"},
            "early_stopping": bool(training.get("early_stopping")),
        },
        "labels": {
            "zigzag_threshold": labels.get("zigzag_threshold"),
            "label_lookahead": labels.get("label_lookahead"),
        },
        "symbols": sorted(selection_names(data.get("symbols"), "symbol")),
        "timeframes": sorted(selection_names(data.get("timeframes"), "timeframe")),
    }


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def _plain(value: Any) -> Any:
    # safe_dump refuses tuples and mapping proxies; hand it plain dicts and lists.
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
