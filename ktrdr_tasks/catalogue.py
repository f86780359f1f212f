"""The indicator catalogue: every indicator name a ktrdr backend knows, with what it needs to know.

One table serves three readers. The strategy schema asks it whether a name is known (ktrdr
matches names case-insensitively, also as `RSIIndicator`) and whether it is `trainable` (it
produces a usable feature column at ktrdr 15b87e2f). The designer reads the families, scales,
output ranges and the EURUSD 1h quantiles to place fuzzy sets. The reference training host
reads the parameter names and defaults to compute the same indicator ktrdr would. The numbers
come from `ktrdr-strategy-format.md` section 4. No numpy/pandas here: Celery workers import it.

Scale kinds (how the primary output behaves when the instrument or timeframe changes):
    bounded      a fixed range such as 0..100 (RSI, Stochastic, ADX)
    ratio        scale-free, normalised by the indicator itself (CCI, RVI, VolumeRatio, BBW)
    percent      a percentage move of price: grows with the instrument's volatility (ROC)
    price_units  a difference of prices: grows with price level and volatility (MACD, ATR)
    price_level  the price itself (SMA, EMA, bands): drifts with the market
    cumulative   a running sum (OBV): drifts without bound
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

SCALES = ("bounded", "ratio", "percent", "price_units", "price_level", "cumulative")


@dataclass(frozen=True)
class ParamSpec:
    """One indicator parameter: its ktrdr name, default, and allowed range or choices."""

    name: str
    default: int | float | str | bool
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class IndicatorSpec:
    """One ktrdr indicator: the output its feature_id refers to, and how that output behaves."""

    name: str
    family: str
    scale: str
    params: tuple[ParamSpec, ...]
    output: str
    output_range: tuple[float | None, float | None]
    typical_eurusd_1h: tuple[float, float, float] | None
    trainable: bool
    # A multi-output indicator's outputs (ktrdr 2c5c7173), the primary one first: what a v3
    # `indicator_id.output` reference may name. Empty for a single-output indicator.
    outputs: tuple[str, ...] = ()

    def param(self, name: str) -> ParamSpec | None:
        """The parameter called `name`, or None."""
        return next((p for p in self.params if p.name == name), None)


_SOURCE = ParamSpec("source", "close", choices=("open", "high", "low", "close"))


def _period(default: int, low: int = 1, high: int = 100) -> ParamSpec:
    return ParamSpec("period", default, low, high)


def _spec(
    name: str,
    family: str,
    scale: str,
    params: tuple[ParamSpec, ...],
    output: str,
    output_range: tuple[float | None, float | None],
    typical: tuple[float, float, float] | None,
    trainable: bool = True,
) -> IndicatorSpec:
    return IndicatorSpec(name, family, scale, params, output, output_range, typical, trainable)


_SPECS: tuple[IndicatorSpec, ...] = (
    # --- trainable: the table of the spec's section 4 ---
    _spec("RSI", "momentum", "bounded", (_period(14, 2), _SOURCE), "RSI", (0, 100), (31, 51, 74)),
    _spec(
        "Stochastic",
        "momentum",
        "bounded",
        (
            ParamSpec("k_period", 14, 1, 100),
            ParamSpec("d_period", 3, 1, 20),
            ParamSpec("smooth_k", 3, 1, 20),
        ),
        "%K",
        (0, 100),
        (10, 53, 92),
    ),
    _spec("WilliamsR", "momentum", "bounded", (_period(14),), "%R", (-100, 0), (-93, -47, -5)),
    _spec("MFI", "volume", "bounded", (_period(14),), "money flow index", (0, 100), (22, 53, 83)),
    # ktrdr documents no range for ADX's period; 2..100 is what the other oscillators allow.
    _spec("ADX", "trend", "bounded", (_period(14, 2),), "ADX", (0, 100), (13, 25, 50)),
    _spec(
        "Aroon",
        "trend",
        "bounded",
        (_period(14, 1, 200), ParamSpec("include_oscillator", False)),
        "Aroon Up",
        (0, 100),
        (7, 57, 100),
    ),
    _spec("CCI", "momentum", "ratio", (_period(20, 2),), "CCI", (None, None), (-182, 17, 194)),
    _spec(
        "ROC",
        "momentum",
        "percent",
        (_period(10), _SOURCE),
        "rate of change in percent",
        (None, None),
        (-0.42, 0.02, 0.53),
    ),
    _spec(
        "DistanceFromMA",
        "trend",
        "percent",
        (
            _period(20, 1, 200),
            ParamSpec("ma_type", "SMA", choices=("SMA", "EMA")),
            _SOURCE,
        ),
        "(close - MA) / MA in percent",
        (None, None),
        (-0.32, 0.02, 0.42),
    ),
    _spec(
        "BollingerBandWidth",
        "volatility",
        "ratio",
        (_period(20, 2), ParamSpec("multiplier", 2.0, 0.1, 5.0), _SOURCE),
        "(upper - lower) / middle",
        (0, None),
        (0.0022, 0.0051, 0.0122),
    ),
    _spec(
        "RVI",
        "momentum",
        "ratio",
        (_period(10, 4), ParamSpec("signal_period", 4, 1, 50)),
        "RVI line",
        (None, None),
        (-0.28, 0.02, 0.34),
    ),
    _spec(
        "MACD",
        "trend",
        "price_units",
        (
            ParamSpec("fast_period", 12, 1, 50),
            ParamSpec("slow_period", 26, 2, 100),
            ParamSpec("signal_period", 9, 1, 50),
            _SOURCE,
        ),
        "MACD line (fast EMA - slow EMA)",
        (None, None),
        (-0.0015, 0.0001, 0.0023),
    ),
    _spec(
        "Momentum",
        "momentum",
        "price_units",
        (_period(10), _SOURCE),
        "close - close n bars ago",
        (None, None),
        (-0.0049, 0.0002, 0.0061),
    ),
    _spec(
        "ATR",
        "volatility",
        "price_units",
        (_period(14),),
        "average true range",
        (0, None),
        (0.00084, 0.00139, 0.00239),
    ),
    _spec(
        "VolumeRatio",
        "volume",
        "ratio",
        (_period(20, 2),),
        "volume / its moving average",
        (0, None),
        (0.21, 0.82, 2.5),
    ),
    _spec(
        "SMA",
        "price_level",
        "price_level",
        (_period(20, 1, 200), _SOURCE),
        "the average",
        (None, None),
        (1.09, 1.18, 1.23),
    ),
    _spec(
        "EMA",
        "price_level",
        "price_level",
        (_period(20, 1, 200), _SOURCE, ParamSpec("adjust", True)),
        "the average",
        (None, None),
        (1.09, 1.18, 1.23),
    ),
    _spec(
        "BollingerBands",
        "price_level",
        "price_level",
        (_period(20, 2), ParamSpec("multiplier", 2.0, 0.1, 5.0), _SOURCE),
        "upper band",
        (None, None),
        (1.09, 1.18, 1.23),
    ),
    _spec(
        "OBV", "volume", "cumulative", (), "cumulative volume", (None, None), (2.5e3, 1.0e5, 1.8e5)
    ),
    # --- registered names the validator accepts, but that do not train through a feature_id
    # at 15b87e2f (no column, an all-NaN column, or never verified): known, not trainable ---
    _spec(
        "ZigZag",
        "trend",
        "price_level",
        (ParamSpec("threshold", 0.05, 0.0, 1.0), _SOURCE),
        "zigzag extremes (NaN between them)",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "VWAP",
        "price_level",
        "price_level",
        (_period(20, 0, 200), ParamSpec("use_typical_price", True)),
        "volume-weighted average price",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "ParabolicSAR",
        "trend",
        "price_level",
        (
            ParamSpec("initial_af", 0.02, 0.001, 0.1),
            ParamSpec("step_af", 0.02, 0.001, 0.1),
            ParamSpec("max_af", 0.2, 0.01, 1.0),
        ),
        "SAR level",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "KeltnerChannels",
        "price_level",
        "price_level",
        (
            _period(20, 2, 500),
            ParamSpec("atr_period", 10, 2, 200),
            ParamSpec("multiplier", 2.0, 0.0, 10.0),
        ),
        "channel level",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "DonchianChannels",
        "price_level",
        "price_level",
        (_period(20, 1, 200), ParamSpec("include_middle", True)),
        "channel level",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "SqueezeIntensity",
        "volatility",
        "bounded",
        (
            ParamSpec("bb_period", 20, 2, 100),
            ParamSpec("bb_multiplier", 2.0, 0.1, 5.0),
            ParamSpec("kc_period", 20, 2, 100),
            ParamSpec("kc_multiplier", 2.0, 0.1, 5.0),
            _SOURCE,
        ),
        "squeeze intensity",
        (0, 1),
        None,
        trainable=False,
    ),
    _spec(
        "CMF",
        "volume",
        "bounded",
        (_period(20, 1, 100),),
        "Chaikin money flow",
        (-1, 1),
        None,
        trainable=False,
    ),
    _spec(
        "ADLine",
        "volume",
        "cumulative",
        (ParamSpec("use_sma_smoothing", False), ParamSpec("smoothing_period", 21, 1, 100)),
        "accumulation/distribution line",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "SuperTrend",
        "trend",
        "price_level",
        (_period(10, 1, 100), ParamSpec("multiplier", 3.0, 0.1, 10.0)),
        "SuperTrend line",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "FisherTransform",
        "momentum",
        "ratio",
        (_period(10, 1, 100), ParamSpec("smoothing", 3, 1, 20)),
        "Fisher transform",
        (None, None),
        None,
        trainable=False,
    ),
    _spec(
        "Ichimoku",
        "trend",
        "price_level",
        (
            ParamSpec("tenkan_period", 9, 1, 50),
            ParamSpec("kijun_period", 26, 1, 100),
            ParamSpec("senkou_b_period", 52, 1, 200),
            ParamSpec("displacement", 26, 1, 100),
        ),
        "Ichimoku lines",
        (None, None),
        None,
        trainable=False,
    ),
)

_OUTPUTS: dict[str, tuple[str, ...]] = {
    "MACD": ("line", "signal", "histogram"),
    "BollingerBands": ("upper", "middle", "lower"),
    "ADX": ("adx", "plus_di", "minus_di"),
    "Stochastic": ("k", "d"),
    "Aroon": ("up", "down", "oscillator"),
    "RVI": ("rvi", "signal"),
    "KeltnerChannels": ("upper", "middle", "lower"),
    "DonchianChannels": ("upper", "middle", "lower"),
    "Ichimoku": ("tenkan", "kijun", "senkou_a", "senkou_b", "chikou"),
    "SuperTrend": ("trend", "direction"),
    "FisherTransform": ("fisher", "signal"),
    "CMF": (
        "cmf", "mf_multiplier", "mf_volume", "momentum", "signal", "histogram", "above_zero",
        "below_zero",
    ),
    "ADLine": (
        "line", "mf_multiplier", "mf_volume", "roc_10", "momentum_21", "relative_strength",
    ),
}  # fmt: skip
_SPECS = tuple(replace(spec, outputs=_OUTPUTS.get(spec.name, ())) for spec in _SPECS)

INDICATORS: dict[str, IndicatorSpec] = {spec.name: spec for spec in _SPECS}

# Today's ktrdr registers each indicator under its lower-case class name (an `Indicator`
# suffix stripped) plus a few aliases; v3 files name them with `type:`. `wma` is registered
# there but unknown to the December backend and to the reference host.
V3_TYPE_NAMES: tuple[str, ...] = (
    "adline", "adx", "aroon", "atr", "bollingerbands", "bollingerbandwidth", "cci", "cmf",
    "distancefromma", "donchianchannels", "exponentialmovingaverage", "fishertransform",
    "ichimoku", "keltnerchannels", "macd", "mfi", "momentum", "obv", "parabolicsar", "roc",
    "rsi", "rvi", "simplemovingaverage", "squeezeintensity", "stochastic", "supertrend",
    "volumeratio", "vwap", "weightedmovingaverage", "williamsr", "zigzag",
)  # fmt: skip
_V3_ALIASES = {
    "simplemovingaverage": "SMA",
    "exponentialmovingaverage": "EMA",
    "bbands": "BollingerBands",
}
_V3_ONLY = frozenset({"weightedmovingaverage", "wma"})

# ktrdr's registry matches "rsi", "RSI" and "RSIIndicator" alike.
_BY_LOWER: dict[str, IndicatorSpec] = {spec.name.lower(): spec for spec in _SPECS}

# Keys of an indicator item that are never parameters.
_NON_PARAM_KEYS = frozenset({"name", "feature_id", "params", "parameters", "type"})


def find_indicator(name: str) -> IndicatorSpec | None:
    """The spec for `name`, matched case-insensitively, with or without an `Indicator` suffix."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    spec = _BY_LOWER.get(key)
    if spec is None and key.endswith("indicator"):
        spec = _BY_LOWER.get(key[: -len("indicator")])
    return spec


def find_v3_indicator(type_name: str) -> IndicatorSpec | None:
    """The spec for a v3 `type:` (canonical name, alias, `<name>indicator`); None if unknown."""
    if not isinstance(type_name, str):
        return None
    key = type_name.strip().lower()
    key = key.removesuffix("indicator") if key not in _V3_ALIASES else key
    alias = _V3_ALIASES.get(key)
    return INDICATORS[alias] if alias else find_indicator(key)


def is_v3_type(type_name: str) -> bool:
    """Whether today's ktrdr registry knows `type_name` (its training fails otherwise)."""
    if find_v3_indicator(type_name) is not None:
        return True
    key = str(type_name).strip().lower()
    return key in _V3_ONLY or key.removesuffix("indicator") in _V3_ONLY


def trainable_names() -> list[str]:
    """The names that produce a usable feature column, in catalogue order."""
    return [spec.name for spec in _SPECS if spec.trainable]


def resolve_params(item: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter of the item's indicator: defaults, then flat keys, then nested `params:`.

    As ktrdr does: a key called `parameters` is ignored (so the defaults stay), and names the
    indicator does not have are dropped. An unknown indicator resolves to the item's own
    parameters unchanged, since there is nothing to merge them with.
    """
    supplied: dict[str, Any] = {
        key: value for key, value in item.items() if key not in _NON_PARAM_KEYS
    }
    nested = item.get("params")
    if isinstance(nested, Mapping):
        supplied.update(nested)
    spec = find_indicator(str(item.get("name", "")))
    if spec is None:
        return supplied
    resolved: dict[str, Any] = {p.name: p.default for p in spec.params}
    resolved.update({key: value for key, value in supplied.items() if key in resolved})
    return resolved


def param_errors(spec: IndicatorSpec, params: Mapping[str, Any]) -> list[str]:
    """Values outside a parameter's range or choices, as messages (empty when all fit)."""
    problems: list[str] = []
    for p in spec.params:
        value = params.get(p.name, p.default)
        if p.choices is not None:
            if value not in p.choices:
                problems.append(f"{p.name} must be one of {list(p.choices)}, got {value!r}")
            continue
        if isinstance(p.default, bool):
            if not isinstance(value, bool):
                problems.append(f"{p.name} must be true or false, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{p.name} must be a number, got {value!r}")
            continue
        if isinstance(p.default, int) and not float(value).is_integer():
            problems.append(f"{p.name} must be a whole number, got {value!r}")
        elif (p.low is not None and value < p.low) or (p.high is not None and value > p.high):
            problems.append(f"{p.name} must be in {_range_text(p)}, got {value!r}")
    if spec.name == "MACD" and not problems:
        fast, slow = params.get("fast_period", 12), params.get("slow_period", 26)
        if fast >= slow:
            problems.append(f"fast_period ({fast}) must be less than slow_period ({slow})")
    return problems


def _range_text(p: ParamSpec) -> str:
    low = "-inf" if p.low is None else f"{p.low:g}"
    high = "inf" if p.high is None else f"{p.high:g}"
    return f"{low}..{high}"
