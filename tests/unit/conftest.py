"""Unit tests see a clean configuration: integration fixtures of the same session leave their
REDIS_URL and KTRDR_* variables in the process environment."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

_CONFIG_PREFIXES = ("KTRDR_", "REDIS_URL", "ANTHROPIC_", "AGENT_TRAINING_", "TRAINING_GATE_")


@pytest.fixture(autouse=True)
def clean_configuration(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from ktrdr_tasks.settings import get_settings
    from ktrdr_tasks.store import reset_store

    for name in list(os.environ):
        if name.startswith(_CONFIG_PREFIXES) or name.startswith("BACKTEST_GATE_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    reset_store()
    yield
    get_settings.cache_clear()
    reset_store()
