"""Model files in ktrdr's layout: `<models>/<strategy>/<tf>_v<N>/` plus a `<tf>_latest` link.

`metadata_v3` shapes ktrdr's v3 model metadata, which a v3 model directory carries too.

A version directory is written complete under a temporary name and renamed into place, so
a reader (or a crash) never sees half a model, and two jobs of one strategy never share a
version number: the rename fails for the loser, which takes the next number.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

_VERSION = re.compile(r"^(?P<tf>.+)_v(?P<n>\d+)$")


def next_version(strategy_dir: Path, timeframe: str) -> int:
    """Highest existing `<tf>_v<N>` plus one (1 for the first)."""
    if not strategy_dir.is_dir():
        return 1
    numbers = [
        int(match.group("n"))
        for entry in strategy_dir.iterdir()
        if (match := _VERSION.match(entry.name)) and match.group("tf") == timeframe
    ]
    return max(numbers, default=0) + 1


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def _point_latest(strategy_dir: Path, timeframe: str, target: str) -> None:
    # Relative link, replaced atomically: readers see the old or the new model, never none.
    link = strategy_dir / f"{timeframe}_latest"
    # Unique per call: two jobs of one strategy finishing together (threads of one host
    # process) must not unlink each other's link mid-flight.
    temporary = strategy_dir / f".{timeframe}_latest.{uuid.uuid4().hex}.tmp"
    temporary.symlink_to(target)
    os.replace(temporary, link)


# What ktrdr's `output_type` says a model predicts, by label source.
_OUTPUT_TYPE = {
    "zigzag": "classification",
    "forward_return": "regression",
    "context": "context_classification",
    "regime": "regime_classification",
    "triple_barrier": "classification",
}


def metadata_v3(
    document: Mapping[str, Any],
    resolved_features: list[str],
    *,
    symbols: list[str],
    timeframes: list[str],
    metrics: Mapping[str, float],
    created_at: str,
) -> dict[str, Any]:
    """ktrdr's `metadata_v3.json` (its `ModelMetadata.to_dict`) for a model of a v3 strategy.

    A ktrdr backtest rebuilds indicators, fuzzy sets and the feature order from this file,
    not from the strategy YAML, so it must carry them as trained. Raw inputs are not
    normalised at ktrdr 2c5c7173 (`normalization_params` stays empty), nor here.
    """
    model = _section(document, "model")
    labels = _section(_section(document, "training"), "labels")
    architecture = _section(model, "architecture")
    name = str(document.get("name", "unknown"))
    return {
        "model_name": name,
        "strategy_name": name,
        "created_at": created_at,
        "strategy_version": str(document.get("version", "3.0")),
        "indicators": dict(document.get("indicators") or {}),
        "fuzzy_sets": dict(document.get("fuzzy_sets") or {}),
        "nn_inputs": list(document.get("nn_inputs") or []),
        "resolved_features": list(resolved_features),
        "training_symbols": list(symbols),
        "training_timeframes": list(timeframes),
        "training_metrics": dict(metrics),
        "output_type": _OUTPUT_TYPE.get(str(labels.get("source", "zigzag")), "classification"),
        "model_type": str(model.get("type", "mlp")),
        "sequence_length": architecture.get("sequence_length"),
        "normalization_params": {},
        "context_data_config": document.get("context_data"),
        "context_source_ids": [],
    }


def _section(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key)
    return value if isinstance(value, Mapping) else {}


def save_model(
    models_dir: Path,
    strategy_name: str,
    timeframe: str,
    *,
    state: Mapping[str, Any],
    files: Mapping[str, Any],
) -> Path:
    """Write `model.pt` (torch.save of `state`) and each `files` entry as JSON; return the dir."""
    strategy_dir = models_dir / strategy_name
    strategy_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{timeframe}_staging_", dir=strategy_dir))
    try:
        torch.save(dict(state), staging / "model.pt")
        for name, payload in files.items():
            _write_json(staging / name, payload)
        while True:
            version = next_version(strategy_dir, timeframe)
            target = strategy_dir / f"{timeframe}_v{version}"
            try:
                # rename onto a missing name is atomic; onto an existing one it fails.
                os.rename(staging, target)
                break
            except OSError:
                if not target.exists():
                    raise
        _point_latest(strategy_dir, timeframe, target.name)
        return target
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
