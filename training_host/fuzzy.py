"""Fuzzy membership degrees (0..1) of indicator values, with the trainer's rules for sets.

ktrdr's validator accepts more than its trainer does (`triangle`, `sigmoid`, parameters out
of order); the trainer then fails with "[CONFIG-InvalidFuzzyConfig]". `parse_fuzzy_set`
applies the trainer's rules, so such a strategy fails here the same way, with the reason.
Trapezoids with a == b (or c == d) are open shoulders: they stay at 1 beyond the edge, so
values past the last set still belong somewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from training_host.errors import TrainingFailed

PARAMETER_COUNTS = {"triangular": 3, "trapezoidal": 4, "gaussian": 2}


class FuzzyConfigError(TrainingFailed):
    """A fuzzy set the trainer cannot use; the message names the set and the fix."""


@dataclass(frozen=True)
class FuzzySet:
    """One membership function: `kind` is triangular, trapezoidal or gaussian."""

    name: str
    kind: str
    parameters: tuple[float, ...]


def parse_fuzzy_set(feature_id: str, set_name: str, spec: Any) -> FuzzySet:
    """A checked FuzzySet from `{type, parameters}` (or a bare list: triangular, as ktrdr)."""
    where = f"{feature_id}.{set_name}"
    prefix = "[CONFIG-InvalidFuzzyConfig] Failed to load fuzzy configuration:"
    if isinstance(spec, list | tuple):
        kind, raw = "triangular", list(spec)
    elif isinstance(spec, Mapping):
        kind, raw = str(spec.get("type", "triangular")), spec.get("parameters")
    else:
        raise FuzzyConfigError(f"{prefix} {where} must be a mapping with type and parameters")
    if kind not in PARAMETER_COUNTS:
        raise FuzzyConfigError(
            f"{prefix} {where} has type {kind!r}; the trainer knows only "
            f"{sorted(PARAMETER_COUNTS)} (lower case, exact names)"
        )
    if not isinstance(raw, list | tuple) or len(raw) != PARAMETER_COUNTS[kind]:
        count = len(raw) if isinstance(raw, list | tuple) else 0
        raise FuzzyConfigError(
            f"{prefix} Fuzzy membership '{kind}' for {where} requires exactly "
            f"{PARAMETER_COUNTS[kind]} parameters, but got {count}"
        )
    try:
        params = tuple(float(value) for value in raw)
    except (TypeError, ValueError):
        raise FuzzyConfigError(f"{prefix} {where} parameters must be numbers: {raw}") from None
    if not all(np.isfinite(params)):
        raise FuzzyConfigError(f"{prefix} {where} parameters must be finite: {raw}")
    if kind == "gaussian":
        if params[1] <= 0:
            raise FuzzyConfigError(f"{prefix} {where} gaussian sigma must be > 0, got {raw[1]}")
    elif list(params) != sorted(params):
        letters = "a <= b <= c" if kind == "triangular" else "a <= b <= c <= d"
        raise FuzzyConfigError(f"{prefix} {where} parameters must satisfy {letters}: {raw}")
    return FuzzySet(set_name, kind, params)


def _ramp(x: np.ndarray, start: float, end: float, rising: bool) -> np.ndarray:
    # Linear 0->1 (or 1->0) between start and end; a zero-width ramp is a step at `start`.
    if end == start:
        return (x >= start).astype(float) if rising else (x <= start).astype(float)
    fraction = (x - start) / (end - start)
    return np.clip(fraction if rising else 1.0 - fraction, 0.0, 1.0)


def triangular(x: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    """0 at a, 1 at b, 0 at c; outside [a, c] it is 0."""
    rising = _ramp(x, a, b, rising=True)
    falling = _ramp(x, b, c, rising=False)
    out = np.minimum(rising, falling)
    return np.where((x < a) | (x > c), 0.0, out)


def trapezoidal(x: np.ndarray, a: float, b: float, c: float, d: float) -> np.ndarray:
    """Rises a->b, 1 from b to c, falls c->d; a == b or c == d leave that side open (1)."""
    left = np.ones_like(x, dtype=float) if a == b else _ramp(x, a, b, rising=True)
    right = np.ones_like(x, dtype=float) if c == d else _ramp(x, c, d, rising=False)
    return np.minimum(left, right)


def gaussian(x: np.ndarray, mean: float, sigma: float) -> np.ndarray:
    """exp(-(x - mean)^2 / (2 sigma^2))."""
    return np.exp(-0.5 * ((x - mean) / sigma) ** 2)


def membership(values: np.ndarray, fuzzy_set: FuzzySet) -> np.ndarray:
    """The degree (0..1) to which each value belongs to `fuzzy_set`."""
    x = np.asarray(values, dtype=float)
    if fuzzy_set.kind == "triangular":
        return triangular(x, *fuzzy_set.parameters)
    if fuzzy_set.kind == "trapezoidal":
        return trapezoidal(x, *fuzzy_set.parameters)
    return gaussian(x, *fuzzy_set.parameters)
