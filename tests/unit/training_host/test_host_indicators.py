"""Indicator maths: against `ta` where the definition is the same, else against hand values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
import ta

from ktrdr_tasks.catalogue import INDICATORS as CATALOGUE
from ktrdr_tasks.catalogue import resolve_params
from training_host import indicators
from training_host.indicators import compute


def _same(mine: pd.Series, reference: pd.Series, tolerance: float = 1e-9) -> None:
    both = mine.notna() & reference.notna()
    assert both.sum() > 4000
    assert np.allclose(mine[both], reference[both], atol=tolerance, rtol=0)


def test_every_trainable_catalogue_indicator_is_implemented() -> None:
    trainable = {name for name, spec in CATALOGUE.items() if spec.trainable}
    assert trainable <= set(indicators.INDICATORS)


@pytest.mark.parametrize("name", sorted(indicators.INDICATORS))
def test_every_indicator_computes_finite_values_with_catalogue_defaults(
    eurusd: pd.DataFrame, name: str
) -> None:
    values = compute(name, eurusd, resolve_params({"name": name}))
    assert len(values) == len(eurusd)
    assert np.isfinite(values.dropna()).all()
    assert values.notna().sum() > len(eurusd) - 50


def test_rsi_is_wilders_like_ta(eurusd: pd.DataFrame) -> None:
    expected = ta.momentum.RSIIndicator(eurusd["close"], 14).rsi()
    _same(indicators.rsi(eurusd, {"period": 14}), expected)


def test_cci_matches_ta(eurusd: pd.DataFrame) -> None:
    expected = ta.trend.CCIIndicator(eurusd["high"], eurusd["low"], eurusd["close"], 20).cci()
    _same(indicators.cci(eurusd, {"period": 20}), expected, 1e-6)


def test_williams_r_matches_ta(eurusd: pd.DataFrame) -> None:
    bars = eurusd
    expected = ta.momentum.WilliamsRIndicator(bars["high"], bars["low"], bars["close"], 14)
    _same(indicators.williams_r(bars, {"period": 14}), expected.williams_r())


def test_mfi_matches_ta(eurusd: pd.DataFrame) -> None:
    bars = eurusd
    expected = ta.volume.MFIIndicator(
        bars["high"], bars["low"], bars["close"], bars["volume"], 14
    ).money_flow_index()
    _same(indicators.mfi(bars, {"period": 14}), expected)


def test_adx_matches_ta_after_warm_up(eurusd: pd.DataFrame) -> None:
    bars = eurusd
    expected = ta.trend.ADXIndicator(bars["high"], bars["low"], bars["close"], 14).adx()
    _same(indicators.adx(bars, {"period": 14}), expected)


def test_wilder_smoothing_matches_ta_average_true_range(eurusd: pd.DataFrame) -> None:
    bars = eurusd
    expected = ta.volatility.AverageTrueRange(bars["high"], bars["low"], bars["close"], 14)
    _same(indicators.wilder_mean(indicators.true_range(bars), 14), expected.average_true_range())


def test_stochastic_k_matches_ta_smoothed_k(eurusd: pd.DataFrame) -> None:
    bars = eurusd
    expected = ta.momentum.StochasticOscillator(bars["high"], bars["low"], bars["close"], 14, 3)
    _same(indicators.stochastic(bars, {"k_period": 14, "smooth_k": 3}), expected.stoch_signal())


def test_roc_and_macd_match_ta(eurusd: pd.DataFrame) -> None:
    _same(
        indicators.roc(eurusd, {"period": 10}), ta.momentum.ROCIndicator(eurusd["close"], 10).roc()
    )
    _same(indicators.macd(eurusd, {}), ta.trend.MACD(eurusd["close"]).macd())


def test_atr_is_ktrdrs_simple_average_of_true_range(make_bars: Callable[..., pd.DataFrame]) -> None:
    bars = make_bars([10, 11, 13, 12, 12], spread=0.5)
    # True ranges: 2.0 (first bar: high-low), then max(high, prev close) - min(low, prev close).
    tr = indicators.true_range(bars).tolist()
    assert tr == pytest.approx([1.0, 2.0, 3.0, 2.0, 1.0])
    atr = indicators.atr(bars, {"period": 3}).tolist()
    assert np.isnan(atr[1])
    assert atr[2:] == pytest.approx([2.0, 7 / 3, 2.0])


def test_hand_computed_simple_indicators(make_bars: Callable[..., pd.DataFrame]) -> None:
    bars = make_bars([10, 11, 12, 11, 13, 14])
    assert indicators.momentum(bars, {"period": 2}).tolist()[2:] == [2, 0, 1, 3]
    assert indicators.roc(bars, {"period": 1}).iloc[1] == pytest.approx(10.0)
    assert indicators.sma(bars, {"period": 3}).iloc[2] == pytest.approx(11.0)
    # OBV: +100 (up), +100, -100 (down), +100, +100 from a zero start.
    assert indicators.obv(bars, {}).tolist() == [0, 100, 200, 100, 200, 300]
    distance = indicators.distance_from_ma(bars, {"period": 3, "ma_type": "SMA"})
    assert distance.iloc[2] == pytest.approx(100 * (12 - 11) / 11)


def test_aroon_up_counts_bars_since_the_highest_high(
    make_bars: Callable[..., pd.DataFrame],
) -> None:
    bars = make_bars([1, 5, 2, 3, 4], spread=0.0)
    bars["high"] = [1.0, 5.0, 2.0, 3.0, 4.0]
    # Window of 3 bars: [1,5,2] high is 1 bar before the last -> 100 * (3 - 1) / 3.
    up = indicators.aroon_up(bars, {"period": 3}).tolist()
    assert np.isnan(up[1])
    assert up[2:] == pytest.approx([200 / 3, 100 / 3, 100.0])


def test_volume_ratio_and_bollinger_width(make_bars: Callable[..., pd.DataFrame]) -> None:
    bars = make_bars([10.0, 10.0, 10.0, 10.0], volume=100.0)
    bars.loc[bars.index[-1], "volume"] = 250.0
    ratio = indicators.volume_ratio(bars, {"period": 2}).tolist()
    assert ratio[-1] == pytest.approx(250 / 175)
    assert indicators.bollinger_band_width(bars, {"period": 3, "multiplier": 2.0}).iloc[-1] == 0


@pytest.mark.parametrize("name", sorted(indicators.INDICATORS))
def test_no_indicator_looks_ahead(eurusd: pd.DataFrame, name: str) -> None:
    bars = eurusd.iloc[:600]
    params = resolve_params({"name": name})
    original = compute(name, bars, params)
    changed = bars.copy()
    changed.iloc[400:, :] *= 1.05
    after = compute(name, changed, params)
    pd.testing.assert_series_equal(original.iloc[:400], after.iloc[:400])
