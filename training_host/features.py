"""ktrdr's feature pipelines: indicators -> 0-filled -> fuzzy memberships (and raw values).

v2 (format spec §1, §6): fuzzy memberships only, one column per set named
`<tf>_<feature_id>_<set>`, sorted alphabetically, then `<column>_lag_<j>` copies for
j = 1..lookback_periods. v3 (v3 spec §5): the columns `nn_inputs` lists, in its order,
`<tf>_<fuzzy set>_<membership>` or `<tf>_<indicator ref>_raw`, any output of a multi-output
indicator by `id.output`, no lags, split by plain fractions in bar order. With
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

from ktrdr_tasks.catalogue import resolve_params
from ktrdr_tasks.strategy_v3 import ResolvedFeature, StrategyConfigV3, resolve_features
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


# --- v3: the inputs nn_inputs lists, in its order (format spec v3 section 5) ---


def v3_features(config: StrategyConfigV3, timeframes: Sequence[str]) -> list[ResolvedFeature]:
    """The resolved inputs, or TrainingFailed naming what this host cannot compute."""
    for indicator_id, indicator in config.indicators.items():
        spec = indicator.spec
        if spec is None or spec.name not in indicators.INDICATORS:
            raise TrainingFailed(
                f"Indicator '{indicator_id}' (type: {indicator.type}) cannot be trained by the "
                f"reference host: use one of {', '.join(indicators.INDICATORS)}"
            )
    features = resolve_features(config, timeframes)
    for feature in features:
        if feature.timeframe not in timeframes:
            raise TrainingFailed(
                f"nn_inputs use timeframe {feature.timeframe}, which this training does not "
                f"load (timeframes: {', '.join(timeframes)})"
            )
        spec = config.indicators[feature.indicator_id].spec
        assert spec is not None
        if feature.output is not None and spec.name not in indicators.OUTPUTS:
            raise TrainingFailed(
                f"{feature.indicator_id}.{feature.output}: the reference host computes only "
                f"the primary output of {spec.name}"
            )
    for fuzzy_set_id, fuzzy_set in config.fuzzy_sets.items():
        for name, definition in fuzzy_set.memberships.items():
            parse_fuzzy_set(fuzzy_set_id, name, _canonical_membership(definition))
    return features


def _canonical_membership(definition: Any) -> Any:
    # v3 also registers `triangularmf` etc. and does not mind the case.
    if isinstance(definition, Mapping) and isinstance(definition.get("type"), str):
        kind = definition["type"].lower().removesuffix("mf")
        return {**definition, "type": kind}
    return definition


def v3_timeframe_frame(
    bars: pd.DataFrame, config: StrategyConfigV3, features: Sequence[ResolvedFeature]
) -> pd.DataFrame:
    """The columns of one timeframe's features: memberships and raw values, NaN read as 0."""
    values: dict[tuple[str, str | None], np.ndarray] = {}
    columns: dict[str, np.ndarray] = {}
    for feature in features:
        key = (feature.indicator_id, feature.output)
        if key not in values:
            indicator = config.indicators[feature.indicator_id]
            spec = indicator.spec
            assert spec is not None
            params = resolve_params({"name": spec.name, **indicator.params})
            series = indicators.compute_output(spec.name, bars, params, feature.output)
            values[key] = series.replace([np.inf, -np.inf], np.nan).fillna(0.0).to_numpy()
        if feature.fuzzy_set_id is None or feature.membership is None:
            columns[feature.feature_id] = values[key]
            continue
        definition = config.fuzzy_sets[feature.fuzzy_set_id].memberships[feature.membership]
        fuzzy_set = parse_fuzzy_set(
            feature.fuzzy_set_id, feature.membership, _canonical_membership(definition)
        )
        columns[feature.feature_id] = membership(values[key], fuzzy_set)
    return pd.DataFrame(columns, index=bars.index)


def build_inputs_v3(
    bars_by_timeframe: Mapping[str, pd.DataFrame],
    config: StrategyConfigV3,
    features: Sequence[ResolvedFeature],
) -> pd.DataFrame:
    """The v3 inputs on the base timeframe's bars, in nn_inputs order (no lagged copies)."""
    base = base_timeframe(list(bars_by_timeframe))
    base_index = pd.DatetimeIndex(bars_by_timeframe[base].index)
    parts = []
    for timeframe, bars in bars_by_timeframe.items():
        own = [feature for feature in features if feature.timeframe == timeframe]
        if own:
            frame = v3_timeframe_frame(bars, config, own)
            parts.append(align_to_base(frame, timeframe, base_index, base))
    inputs = pd.concat(parts, axis=1)
    return inputs[[feature.feature_id for feature in features]].astype(np.float32)


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


def fraction_split(count: int, train: float, validation: float) -> Split:
    """v3's split: the first `train` share trains, the next `validation` share validates,
    the rest tests, cut at whole bars as ktrdr does (4358 bars, 0.7/0.15: 3050/654/654)."""
    train_end = int(count * train)
    validation_end = int(count * (train + validation))
    return Split(
        slice(0, train_end), slice(train_end, validation_end), slice(validation_end, count)
    )
