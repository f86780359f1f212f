"""ktrdr's feature pipeline (format spec §1, §6): indicators -> 0-filled -> fuzzy -> lags.

Inputs are fuzzy memberships only, one column per set named `<tf>_<feature_id>_<set>`,
sorted alphabetically, then `<column>_lag_<j>` copies for j = 1..lookback_periods. With
several timeframes, the finest is the base: coarser bars join it only once they have closed
(a 4h bar opening 08:00 is known from the 1h bar opening 11:00 on), so no feature at bar t
uses anything after t. The chronological split lives here too: it is part of what the model
sees. Pure pandas/numpy; no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from training_host import indicators
from training_host.errors import TrainingFailed
from training_host.fuzzy import FuzzySet, membership, parse_fuzzy_set
from training_host.market_data import parse_timeframe


@dataclass(frozen=True)
class IndicatorFeature:
    """One indicator of the strategy: what to compute and how to fuzzify it."""

    feature_id: str
    indicator: str
    params: Mapping[str, Any]
    fuzzy_sets: tuple[FuzzySet, ...]


def indicator_features(
    items: Sequence[tuple[str, str, Mapping[str, Any]]],
    fuzzy_sets: Mapping[str, Mapping[str, Any]],
) -> list[IndicatorFeature]:
    """Pair each (feature_id, catalogue name, resolved params) with its checked fuzzy sets."""
    features = []
    for feature_id, name, params in items:
        if name not in indicators.INDICATORS:
            raise TrainingFailed(
                f"Indicator {name} ({feature_id}) cannot be trained: use one of "
                f"{', '.join(indicators.INDICATORS)}"
            )
        sets = fuzzy_sets.get(feature_id) or {}
        if not sets:
            raise TrainingFailed(
                f"Missing fuzzy_sets for indicators: {feature_id}. All indicators must have "
                "corresponding fuzzy_sets defined."
            )
        parsed = tuple(
            parse_fuzzy_set(feature_id, set_name, spec) for set_name, spec in sets.items()
        )
        features.append(IndicatorFeature(feature_id, name, dict(params), parsed))
    return features


def indicator_frame(bars: pd.DataFrame, features: Sequence[IndicatorFeature]) -> pd.DataFrame:
    """One column per feature_id; NaN and +-inf read 0.0, as ktrdr's warm-up bars do."""
    columns = {
        feature.feature_id: indicators.compute(feature.indicator, bars, feature.params)
        for feature in features
    }
    frame = pd.DataFrame(columns, index=bars.index)
    return frame.replace([np.inf, -np.inf], np.nan).fillna(0.0)


def fuzzy_frame(
    values: pd.DataFrame, features: Sequence[IndicatorFeature], timeframe: str
) -> pd.DataFrame:
    """Membership columns `<tf>_<feature_id>_<set>` of one timeframe's indicator values."""
    columns = {}
    for feature in features:
        column = values[feature.feature_id].to_numpy(dtype=float)
        for fuzzy_set in feature.fuzzy_sets:
            name = f"{timeframe}_{feature.feature_id}_{fuzzy_set.name}"
            columns[name] = membership(column, fuzzy_set)
    return pd.DataFrame(columns, index=values.index)


def align_to_base(
    frame: pd.DataFrame, timeframe: str, base_index: pd.DatetimeIndex, base_timeframe: str
) -> pd.DataFrame:
    """A coarser timeframe's rows on the base bars, each known only once its bar has closed."""
    if timeframe == base_timeframe:
        return frame
    closes_at = pd.DataFrame(
        frame.to_numpy(), columns=frame.columns, index=frame.index + parse_timeframe(timeframe)
    )
    base_close = pd.DataFrame(
        {"_key": base_index + parse_timeframe(base_timeframe)}, index=base_index
    )
    joined = pd.merge_asof(
        base_close.sort_values("_key"),
        closes_at.rename_axis("_key").reset_index(),
        on="_key",
        direction="backward",
    )
    joined.index = base_index
    return joined.drop(columns="_key").fillna(0.0)


def add_lags(frame: pd.DataFrame, lookback_periods: int) -> pd.DataFrame:
    """Append `<column>_lag_<j>`: the value j bars earlier (0 before the first bar)."""
    parts = [frame]
    for lag in range(1, lookback_periods + 1):
        shifted = frame.shift(lag).fillna(0.0)
        shifted.columns = [f"{column}_lag_{lag}" for column in frame.columns]
        parts.append(shifted)
    return pd.concat(parts, axis=1)


def base_timeframe(timeframes: Sequence[str]) -> str:
    """The finest timeframe: labels and samples live on its bars."""
    return min(timeframes, key=parse_timeframe)


def build_inputs(
    bars_by_timeframe: Mapping[str, pd.DataFrame],
    features: Sequence[IndicatorFeature],
    lookback_periods: int,
) -> pd.DataFrame:
    """The model inputs on the base timeframe's bars, columns in the saved feature order."""
    base = base_timeframe(list(bars_by_timeframe))
    base_index = pd.DatetimeIndex(bars_by_timeframe[base].index)
    parts = []
    for timeframe, bars in bars_by_timeframe.items():
        memberships = fuzzy_frame(indicator_frame(bars, features), features, timeframe)
        parts.append(align_to_base(memberships, timeframe, base_index, base))
    inputs = pd.concat(parts, axis=1)
    inputs = inputs[sorted(inputs.columns)]
    return add_lags(inputs, lookback_periods).astype(np.float32)


@dataclass(frozen=True)
class Split:
    """Index ranges of one chronological split: train, then validation, then test."""

    train: slice
    validation: slice
    test: slice


def chronological_split(count: int, test_size: float, validation_size: float) -> Split:
    """ktrdr's split: the last `test_size` is test, the last `validation_size` of the rest
    is validation, the remainder trains (0.1 / 0.2 gives 72 / 18 / 10 %). No shuffling."""
    test_count = round(count * test_size)
    remaining = count - test_count
    validation_count = round(remaining * validation_size)
    train_end = remaining - validation_count
    return Split(slice(0, train_end), slice(train_end, remaining), slice(remaining, count))
