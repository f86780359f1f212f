"""The `ktrdr demo` stack (redis, worker, beat, training host, Flower) for integration tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ktrdr_tasks.settings import Settings
from ktrdr_tasks.stack import Stack, seed_strategies
from tests.support.processes import REPO


@contextlib.contextmanager
def local_stack(root: Path) -> Iterator[Stack]:
    """Start the whole stack under `root` with the example strategies; stop it afterwards."""
    strategies = root / "strategies"
    strategies.mkdir()
    seed_strategies(REPO / "strategies", strategies)
    settings = Settings(KTRDR_STRATEGIES_DIR=str(strategies), KTRDR_MODELS_DIR=str(root / "m"))
    stack = Stack(root / "data", settings, poll_interval_s=0.2)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
