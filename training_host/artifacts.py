"""Model files in ktrdr's layout: `<models>/<strategy>/<tf>_v<N>/` plus a `<tf>_latest` link.

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
