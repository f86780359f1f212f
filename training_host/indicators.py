"""The trainable indicators of the catalogue, vectorised over a bars frame, causal by design.

Each function takes the OHLCV frame (lower-case columns) and the parameters that
`ktrdr_tasks.catalogue.resolve_params` resolved (the catalogue's names and defaults), and
returns the indicator's primary output: the column a feature_id names in ktrdr; `OUTPUTS`
holds every output of the multi-output ones for v3's `id.output` references. Every value
at bar t uses bars <= t only (rolling windows, recursive averages, shifts into the past),
so no feature looks ahead. Warm-up bars are NaN here; the feature pipeline turns them to 0.
Where the `ta` library has the same definition (RSI, ATR, CCI, Williams %R, MFI, ADX) the
unit tests compare against it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

IndicatorFn = Callable[[pd.DataFrame, Mapping[str, Any]], pd.Series]


def _source(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    return bars[str(params.get("source", "close")).lower()]


def _int(params: Mapping[str, Any], name: str, default: int) -> int:
    return int(params.get(name, default))


def _safe_div(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    # A zero range (flat market) gives NaN rather than inf; the pipeline maps both to 0.
    return numerator / denominator.where(denominator != 0)


def wilder_mean(values: pd.Series, period: int) -> pd.Series:
    """Wilder's smoothing seeded by the simple mean of the first `period` values.

    avg[k] = (avg[k-1] * (period - 1) + x[k]) / period, i.e. an EMA with alpha = 1/period,
    started at the first full window: the classic ATR/ADX definition (and `ta`'s ATR).
    """
    out = pd.Series(np.nan, index=values.index, dtype=float)
    valid = values.dropna()
    if len(valid) < period:
        return out
    seed_pos = values.index.get_loc(valid.index[period - 1])
    seeded = values.iloc[seed_pos:].copy()
    seeded.iloc[0] = valid.iloc[:period].mean()
    out.iloc[seed_pos:] = seeded.ewm(alpha=1.0 / period, adjust=False).mean().to_numpy()
    return out


def true_range(bars: pd.DataFrame) -> pd.Series:
    """max(high, previous close) - min(low, previous close); the first bar is high - low."""
    prev_close = bars["close"].shift(1)
    high = pd.concat([bars["high"], prev_close], axis=1).max(axis=1)
    low = pd.concat([bars["low"], prev_close], axis=1).min(axis=1)
    return high - low


def rsi(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Wilder's RSI: averages of gains and losses with alpha = 1/period (as `ta` and ktrdr)."""
    period = _int(params, "period", 14)
    delta = _source(bars, params).diff()
    # The first bar counts as "no change" (a NaN comparison is False), as in `ta` and ktrdr.
    smooth = {"alpha": 1.0 / period, "min_periods": period, "adjust": False}
    gain = delta.where(delta > 0, 0.0).ewm(**smooth).mean()
    avg_loss = (-delta).where(delta < 0, 0.0).ewm(**smooth).mean()
    rs = gain / avg_loss
    out = 100.0 - 100.0 / (1.0 + rs)
    # No losses in the window: RSI is 100 by definition, not NaN.
    return out.where(avg_loss != 0, 100.0).where(gain.notna())


def stochastic(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Slow %K: raw %K over k_period, smoothed by an SMA of smooth_k (d_period feeds %D only)."""
    k_period = _int(params, "k_period", 14)
    smooth_k = _int(params, "smooth_k", 3)
    lowest = bars["low"].rolling(k_period, min_periods=k_period).min()
    highest = bars["high"].rolling(k_period, min_periods=k_period).max()
    raw_k = 100.0 * _safe_div(bars["close"] - lowest, highest - lowest)
    return raw_k.rolling(smooth_k, min_periods=smooth_k).mean()


def stochastic_outputs(bars: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, pd.Series]:
    """Slow %K and %D, the SMA of %K over d_period."""
    k = stochastic(bars, params)
    d_period = _int(params, "d_period", 3)
    return {"k": k, "d": k.rolling(d_period, min_periods=d_period).mean()}


def williams_r(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """-100 * (highest high - close) / (highest high - lowest low): -100..0."""
    period = _int(params, "period", 14)
    highest = bars["high"].rolling(period, min_periods=period).max()
    lowest = bars["low"].rolling(period, min_periods=period).min()
    return -100.0 * _safe_div(highest - bars["close"], highest - lowest)


def mfi(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Money flow index: RSI-like ratio of up and down typical-price money flow."""
    period = _int(params, "period", 14)
    typical = (bars["high"] + bars["low"] + bars["close"]) / 3.0
    flow = typical * bars["volume"]
    direction = np.sign(typical.diff())
    positive = flow.where(direction > 0, 0.0).rolling(period, min_periods=period).sum()
    negative = flow.where(direction < 0, 0.0).rolling(period, min_periods=period).sum()
    out = 100.0 - 100.0 / (1.0 + positive / negative.where(negative != 0))
    out = out.where(negative != 0, 100.0).where(positive.notna())
    # The first bar has no previous typical price: its flow counts for neither side.
    out.iloc[: min(period, len(out))] = np.nan
    return out


def adx(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Wilder's ADX: smoothed DX of the +DI/-DI pair (trend strength only, 0..100)."""
    return adx_outputs(bars, params)["adx"]


def adx_outputs(bars: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, pd.Series]:
    """ADX with the directional indicators it is made of: adx, plus_di, minus_di."""
    period = _int(params, "period", 14)
    up = bars["high"].diff()
    down = -bars["low"].diff()
    plus_dm = up.where((up > down) & (up > 0), 0.0).iloc[1:]
    minus_dm = down.where((down > up) & (down > 0), 0.0).iloc[1:]
    tr = true_range(bars).iloc[1:]
    smoothed_tr = wilder_mean(tr, period)
    plus_di = 100.0 * _safe_div(wilder_mean(plus_dm, period), smoothed_tr)
    minus_di = 100.0 * _safe_div(wilder_mean(minus_dm, period), smoothed_tr)
    dx = 100.0 * _safe_div((plus_di - minus_di).abs(), plus_di + minus_di)
    return {
        "adx": wilder_mean(dx, period).reindex(bars.index),
        "plus_di": plus_di.reindex(bars.index),
        "minus_di": minus_di.reindex(bars.index),
    }


def aroon_up(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """100 * (period - bars since the highest high of the last `period` bars) / period.

    ktrdr's window holds `period` bars (not period + 1), so the value runs 100/period..100:
    the EURUSD 1h quantiles 7 / 57 / 100 of the format spec say so.
    """
    period = _int(params, "period", 14)
    high = bars["high"].to_numpy(dtype=float)
    out = np.full(len(high), np.nan)
    if len(high) >= period:
        windows = np.lib.stride_tricks.sliding_window_view(high, period)
        # The most recent bar of a tie counts: argmax over the reversed window.
        since = np.argmax(windows[:, ::-1], axis=1)
        out[period - 1 :] = 100.0 * (period - since) / period
    return pd.Series(out, index=bars.index)


def aroon_outputs(bars: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, pd.Series]:
    """Aroon up, down (the same count over the lowest low) and the oscillator up - down."""
    up = aroon_up(bars, params)
    mirrored = bars.assign(high=-bars["low"])
    down = aroon_up(mirrored, params)
    return {"up": up, "down": down, "oscillator": up - down}


def cci(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """(typical - SMA(typical)) / (0.015 * mean absolute deviation), Lambert's constant."""
    period = _int(params, "period", 20)
    typical = ((bars["high"] + bars["low"] + bars["close"]) / 3.0).to_numpy(dtype=float)
    out = np.full(len(typical), np.nan)
    if len(typical) >= period:
        windows = np.lib.stride_tricks.sliding_window_view(typical, period)
        mean = windows.mean(axis=1)
        deviation = np.abs(windows - mean[:, None]).mean(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[period - 1 :] = (typical[period - 1 :] - mean) / (0.015 * deviation)
    return pd.Series(out, index=bars.index)


def roc(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Rate of change in percent: 100 * (x / x n bars ago - 1)."""
    period = _int(params, "period", 10)
    source = _source(bars, params)
    return 100.0 * (_safe_div(source, source.shift(period)) - 1.0)


def _moving_average(source: pd.Series, period: int, ma_type: str) -> pd.Series:
    if str(ma_type).upper() == "EMA":
        return source.ewm(span=period, adjust=False, min_periods=period).mean()
    return source.rolling(period, min_periods=period).mean()


def distance_from_ma(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """(source - MA) / MA in percent, MA an SMA or EMA of `period` bars."""
    source = _source(bars, params)
    average = _moving_average(source, _int(params, "period", 20), str(params.get("ma_type", "SMA")))
    return 100.0 * _safe_div(source - average, average)


def _bollinger(bars: pd.DataFrame, params: Mapping[str, Any]) -> tuple[pd.Series, pd.Series]:
    # Sample standard deviation (ddof=1), pandas' default and ktrdr's: with it the EURUSD 1h
    # width quantiles match the format spec's 0.0022 / 0.0051 / 0.0122 (ddof=0 reads 2.5% low).
    period = _int(params, "period", 20)
    source = _source(bars, params)
    middle = source.rolling(period, min_periods=period).mean()
    deviation = source.rolling(period, min_periods=period).std(ddof=1)
    return middle, float(params.get("multiplier", 2.0)) * deviation


def bollinger_band_width(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """(upper - lower) / middle: a scale-free volatility ratio."""
    middle, half_width = _bollinger(bars, params)
    return _safe_div(2.0 * half_width, middle)


def bollinger_upper(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """The upper band, middle + multiplier * standard deviation: a price level."""
    middle, half_width = _bollinger(bars, params)
    return middle + half_width


def bollinger_outputs(bars: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, pd.Series]:
    """The three bands: upper, middle (the SMA), lower."""
    middle, half_width = _bollinger(bars, params)
    return {"upper": middle + half_width, "middle": middle, "lower": middle - half_width}


def rvi(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Relative vigor index line: SMA of the 1-2-2-1 weighted (close - open) over the same of
    (high - low); `signal_period` only shapes the signal line, which is not the output."""
    period = _int(params, "period", 10)

    def weighted(series: pd.Series) -> pd.Series:
        return (series + 2 * series.shift(1) + 2 * series.shift(2) + series.shift(3)) / 6.0

    numerator = weighted(bars["close"] - bars["open"]).rolling(period, min_periods=period).mean()
    denominator = weighted(bars["high"] - bars["low"]).rolling(period, min_periods=period).mean()
    return _safe_div(numerator, denominator)


def rvi_outputs(bars: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, pd.Series]:
    """The RVI line and its signal line, the same 1-2-2-1 weighting of the line."""
    line = rvi(bars, params)
    signal = (line + 2 * line.shift(1) + 2 * line.shift(2) + line.shift(3)) / 6.0
    return {"rvi": line, "signal": signal}


def macd(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """MACD line: EMA(fast) - EMA(slow) of the source, in price units."""
    source = _source(bars, params)
    fast = _int(params, "fast_period", 12)
    slow = _int(params, "slow_period", 26)
    fast_ema = source.ewm(span=fast, adjust=False, min_periods=fast).mean()
    slow_ema = source.ewm(span=slow, adjust=False, min_periods=slow).mean()
    return fast_ema - slow_ema


def macd_outputs(bars: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, pd.Series]:
    """The MACD line, its signal (EMA of signal_period) and the histogram line - signal."""
    line = macd(bars, params)
    period = _int(params, "signal_period", 9)
    signal = line.ewm(span=period, adjust=False, min_periods=period).mean()
    return {"line": line, "signal": signal, "histogram": line - signal}


def momentum(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """x - x n bars ago, in price units."""
    source = _source(bars, params)
    return source - source.shift(_int(params, "period", 10))


def atr(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Average true range as ktrdr computes it: a simple moving average of the true range.

    Not Wilder's smoothing (`ta`'s ATR): ktrdr's EURUSD 1h quantiles 0.00084 / 0.00139 /
    0.00239 are exactly those of the SMA; Wilder's would read 0.00096 / 0.00141 / 0.00223.
    """
    period = _int(params, "period", 14)
    return true_range(bars).rolling(period, min_periods=period).mean()


def volume_ratio(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Volume over its simple moving average of `period` bars."""
    period = _int(params, "period", 20)
    volume = bars["volume"]
    return _safe_div(volume, volume.rolling(period, min_periods=period).mean())


def sma(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Simple moving average of the source."""
    period = _int(params, "period", 20)
    return _source(bars, params).rolling(period, min_periods=period).mean()


def ema(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """Exponential moving average (span = period); `adjust` as in pandas, ktrdr's default."""
    period = _int(params, "period", 20)
    adjust = bool(params.get("adjust", True))
    return _source(bars, params).ewm(span=period, adjust=adjust, min_periods=period).mean()


def obv(bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """On-balance volume: running sum of volume signed by the close's direction (flat: 0)."""
    direction = np.sign(bars["close"].diff()).fillna(0.0)
    return (direction * bars["volume"]).cumsum()


# Keyed by the catalogue's PascalCase names: every `trainable` indicator has an entry.
INDICATORS: dict[str, IndicatorFn] = {
    "RSI": rsi,
    "Stochastic": stochastic,
    "WilliamsR": williams_r,
    "MFI": mfi,
    "ADX": adx,
    "Aroon": aroon_up,
    "CCI": cci,
    "ROC": roc,
    "DistanceFromMA": distance_from_ma,
    "BollingerBandWidth": bollinger_band_width,
    "RVI": rvi,
    "MACD": macd,
    "Momentum": momentum,
    "ATR": atr,
    "VolumeRatio": volume_ratio,
    "SMA": sma,
    "EMA": ema,
    "BollingerBands": bollinger_upper,
    "OBV": obv,
}


OutputsFn = Callable[[pd.DataFrame, Mapping[str, Any]], dict[str, pd.Series]]

# Every output of the multi-output indicators, by the names ktrdr gives them (the catalogue's
# `outputs`): what a v3 `indicator_id.output` reference reads.
OUTPUTS: dict[str, OutputsFn] = {
    "MACD": macd_outputs,
    "BollingerBands": bollinger_outputs,
    "ADX": adx_outputs,
    "Stochastic": stochastic_outputs,
    "Aroon": aroon_outputs,
    "RVI": rvi_outputs,
}


def compute_output(
    name: str, bars: pd.DataFrame, params: Mapping[str, Any], output: str | None
) -> pd.Series:
    """One output of indicator `name` (None: the primary one, as a reference without a dot)."""
    if output is None:
        return compute(name, bars, params)
    try:
        series = OUTPUTS[name](bars, params)[output]
    except KeyError:
        raise KeyError(f"output {output!r} of {name!r} cannot be trained by this host") from None
    return series.astype(float).rename(f"{name}.{output}")


def compute(name: str, bars: pd.DataFrame, params: Mapping[str, Any]) -> pd.Series:
    """The primary output of indicator `name` (a catalogue name) over `bars`, as floats."""
    try:
        function = INDICATORS[name]
    except KeyError:
        raise KeyError(f"indicator {name!r} cannot be trained by this host") from None
    return function(bars, params).astype(float).rename(name)
