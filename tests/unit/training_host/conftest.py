"""Shared fixtures for the training host's unit tests: real bars and small hand-made ones."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from training_host.market_data import load_bars


@pytest.fixture(scope="session")
def eurusd() -> pd.DataFrame:
    """The real EURUSD 1h bars shipped with `backtesting` (all 5,000)."""
    return load_bars("EURUSD", "1h", "2017-01-01", "2019-01-01")


@pytest.fixture()
def make_bars() -> Callable[..., pd.DataFrame]:
    """A factory of small hand-made bars (see `bars_from_closes`)."""
    return bars_from_closes


def bars_from_closes(
    close: list[float], spread: float = 0.5, volume: float = 100.0
) -> pd.DataFrame:
    """Bars whose high/low sit `spread` around the close and whose open is the last close."""
    closes = np.asarray(close, dtype=float)
    opens = np.concatenate([[closes[0]], closes[:-1]])
    index = pd.date_range("2024-01-01", periods=len(closes), freq="h", tz="UTC")
    return pd.DataFrame(
        {
            "open": opens,
            "high": np.maximum(opens, closes) + spread,
            "low": np.minimum(opens, closes) - spread,
            "close": closes,
            "volume": np.full(len(closes), volume),
        },
        index=index,
    )
