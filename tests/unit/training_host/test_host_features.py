"""The feature pipeline: column names and order, lags, 0-filled warm-up, causal alignment
of coarser timeframes, and the chronological split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training_host.features import (
    add_lags,
    align_to_base,
    build_inputs,
    chronological_split,
    indicator_features,
)
from training_host.market_data import resample_bars

FUZZY = {
    "rsi_14": {
        "low": {"type": "trapezoidal", "parameters": [0, 0, 30, 45]},
        "mid": {"type": "triangular", "parameters": [35, 50, 65]},
        "high": {"type": "trapezoidal", "parameters": [55, 70, 100, 100]},
    },
    "adx_14": {
        "weak": {"type": "trapezoidal", "parameters": [0, 0, 15, 25]},
        "strong": {"type": "trapezoidal", "parameters": [20, 35, 100, 100]},
    },
}
ITEMS = [("rsi_14", "RSI", {"period": 14}), ("adx_14", "ADX", {"period": 14})]


def test_inputs_are_sorted_memberships_plus_lags(eurusd: pd.DataFrame) -> None:
    features = indicator_features(ITEMS, FUZZY)
    inputs = build_inputs({"1h": eurusd}, features, lookback_periods=1)
    base = sorted(f"1h_{fid}_{name}" for fid, sets in FUZZY.items() for name in sets)
    assert list(inputs.columns) == base + [f"{name}_lag_1" for name in base]
    assert inputs.shape == (len(eurusd), 10)
    assert inputs.to_numpy().min() >= 0 and inputs.to_numpy().max() <= 1
    # Warm-up bars read 0 before fuzzification: RSI 0 is fully "low".
    assert inputs["1h_rsi_14_low"].iloc[0] == 1.0
    assert inputs["1h_rsi_14_low_lag_1"].iloc[0] == 0.0


def test_lags_shift_values_into_the_past() -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0]})
    lagged = add_lags(frame, 2)
    assert lagged["a_lag_1"].tolist() == [0.0, 1.0, 2.0]
    assert lagged["a_lag_2"].tolist() == [0.0, 0.0, 1.0]


def test_features_before_a_changed_bar_never_change(eurusd: pd.DataFrame) -> None:
    features = indicator_features(ITEMS, FUZZY)
    bars = eurusd.iloc[:800]
    original = build_inputs({"1h": bars, "4h": resample_bars(bars, "4h")}, features, 2)
    changed = bars.copy()
    changed.iloc[500:, :4] *= 1.03
    after = build_inputs({"1h": changed, "4h": resample_bars(changed, "4h")}, features, 2)
    pd.testing.assert_frame_equal(original.iloc[:500], after.iloc[:500])


def test_coarser_bars_join_the_base_only_after_they_close() -> None:
    index_1h = pd.date_range("2024-01-01", periods=8, freq="h", tz="UTC")
    index_4h = pd.date_range("2024-01-01", periods=2, freq="4h", tz="UTC")
    coarse = pd.DataFrame({"x": [1.0, 2.0]}, index=index_4h)
    aligned = align_to_base(coarse, "4h", index_1h, "1h")
    # The 00:00 4h bar closes at 04:00, i.e. with the 1h bar opening 03:00.
    assert aligned["x"].tolist() == [0, 0, 0, 1, 1, 1, 1, 2]


@pytest.mark.parametrize(
    ("count", "test_size", "validation_size", "sizes"),
    [(1000, 0.1, 0.2, (720, 180, 100)), (100, 0.15, 0.15, (72, 13, 15))],
)
def test_chronological_split(
    count: int, test_size: float, validation_size: float, sizes: tuple[int, int, int]
) -> None:
    split = chronological_split(count, test_size, validation_size)
    positions = np.arange(count)
    train, val, test = positions[split.train], positions[split.validation], positions[split.test]
    assert (len(train), len(val), len(test)) == sizes
    assert train.max() < val.min() and val.max() < test.min() and test.max() == count - 1
