"""The indicator catalogue: names ktrdr knows, parameter resolution as ktrdr does it."""

from __future__ import annotations

import pytest

from ktrdr_tasks.catalogue import (
    INDICATORS,
    SCALES,
    find_indicator,
    param_errors,
    resolve_params,
    trainable_names,
)

SPEC_TABLE = {
    "RSI", "Stochastic", "WilliamsR", "MFI", "ADX", "Aroon", "CCI", "ROC", "DistanceFromMA",
    "BollingerBandWidth", "RVI", "MACD", "Momentum", "ATR", "VolumeRatio", "SMA", "EMA",
    "BollingerBands", "OBV",
}  # fmt: skip
NOT_TRAINABLE = {"FisherTransform", "CMF", "ADLine", "Ichimoku", "SuperTrend"}
OTHER_REGISTERED = {"ZigZag", "VWAP", "ParabolicSAR", "KeltnerChannels", "DonchianChannels"}


def test_every_name_of_the_spec_is_known():
    assert SPEC_TABLE | NOT_TRAINABLE | OTHER_REGISTERED | {"SqueezeIntensity"} == set(INDICATORS)


@pytest.mark.parametrize("name", sorted(NOT_TRAINABLE))
def test_indicators_without_a_feature_column_are_known_but_not_trainable(name):
    assert find_indicator(name) is not None
    assert not INDICATORS[name].trainable


def test_the_spec_table_is_trainable():
    assert set(trainable_names()) == SPEC_TABLE


@pytest.mark.parametrize("spelling", ["RSI", "rsi", "Rsi", "RSIIndicator", "rsiindicator"])
def test_names_match_case_insensitively_and_with_indicator_suffix(spelling):
    spec = find_indicator(spelling)
    assert spec is not None and spec.name == "RSI"


def test_unknown_name_is_none():
    assert find_indicator("Bollinger") is None
    assert find_indicator("") is None


def test_catalogue_numbers_match_the_spec_table():
    assert INDICATORS["WilliamsR"].output_range == (-100, 0)
    assert INDICATORS["MACD"].typical_eurusd_1h == (-0.0015, 0.0001, 0.0023)
    assert INDICATORS["MACD"].scale == "price_units"
    assert INDICATORS["ROC"].scale == "percent"
    assert INDICATORS["OBV"].scale == "cumulative"
    assert INDICATORS["SMA"].scale == "price_level"
    assert {spec.scale for spec in INDICATORS.values()} <= set(SCALES)


def test_typical_quantiles_are_ordered_and_inside_the_output_range():
    for spec in INDICATORS.values():
        if spec.typical_eurusd_1h is None:
            continue
        p5, p50, p95 = spec.typical_eurusd_1h
        low, high = spec.output_range
        assert p5 <= p50 <= p95, spec.name
        assert low is None or low <= p5, spec.name
        assert high is None or p95 <= high, spec.name


def test_flat_parameters_override_defaults_and_unknown_names_are_dropped():
    item = {"name": "RSI", "feature_id": "rsi_7", "period": 7, "colour": "red"}
    assert resolve_params(item) == {"period": 7, "source": "close"}


def test_nested_params_are_read():
    item = {"name": "MACD", "feature_id": "m", "params": {"fast_period": 5, "slow_period": 35}}
    assert resolve_params(item) == {
        "fast_period": 5,
        "slow_period": 35,
        "signal_period": 9,
        "source": "close",
    }


def test_a_parameters_key_is_ignored_like_ktrdr_does():
    item = {"name": "RSI", "feature_id": "rsi", "parameters": {"period": 7}}
    assert resolve_params(item) == {"period": 14, "source": "close"}


def test_param_errors_report_range_choices_and_macd_order():
    assert param_errors(INDICATORS["RSI"], {"period": 1})
    assert param_errors(INDICATORS["RSI"], {"period": 14, "source": "median"})
    assert param_errors(INDICATORS["MACD"], {"fast_period": 26, "slow_period": 12})
    assert param_errors(INDICATORS["RSI"], {"period": 14, "source": "close"}) == []
