"""Membership maths against hand-computed values, and the trainer's rules for fuzzy sets."""

from __future__ import annotations

import numpy as np
import pytest

from training_host.fuzzy import FuzzyConfigError, FuzzySet, membership, parse_fuzzy_set


def _degrees(kind: str, params: list[float], values: list[float]) -> list[float]:
    return membership(np.array(values), FuzzySet("s", kind, tuple(params))).tolist()


def test_triangular_rises_peaks_and_falls() -> None:
    assert _degrees("triangular", [35, 50, 65], [20, 35, 42.5, 50, 57.5, 65, 80]) == pytest.approx(
        [0, 0, 0.5, 1, 0.5, 0, 0]
    )


def test_trapezoidal_has_a_flat_top() -> None:
    assert _degrees("trapezoidal", [0, 10, 20, 40], [-5, 5, 10, 15, 20, 30, 45]) == pytest.approx(
        [0, 0.5, 1, 1, 1, 0.5, 0]
    )


def test_trapezoidal_open_shoulders_stay_at_one_beyond_the_edge() -> None:
    # [0, 0, 30, 45]: warm-up zeros and anything below 0 are fully "low".
    assert _degrees("trapezoidal", [0, 0, 30, 45], [-10, 0, 30, 37.5, 45]) == pytest.approx(
        [1, 1, 1, 0.5, 0]
    )
    assert _degrees("trapezoidal", [55, 70, 100, 100], [50, 62.5, 100, 150]) == pytest.approx(
        [0, 0.5, 1, 1]
    )


def test_gaussian_is_one_at_the_mean_and_exp_minus_half_at_one_sigma() -> None:
    assert _degrees("gaussian", [50, 10], [50, 60, 40, 70]) == pytest.approx(
        [1, np.exp(-0.5), np.exp(-0.5), np.exp(-2)]
    )


def test_parse_accepts_the_three_trainer_types() -> None:
    parsed = parse_fuzzy_set("rsi_14", "low", {"type": "trapezoidal", "parameters": [0, 0, 30, 45]})
    assert parsed == FuzzySet("low", "trapezoidal", (0.0, 0.0, 30.0, 45.0))


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"type": "triangle", "parameters": [1, 2, 3]}, "knows only"),
        ({"type": "triangular", "parameters": [1, 2, 3, 4]}, "requires exactly 3 parameters"),
        ({"type": "triangular", "parameters": [3, 2, 1]}, "a <= b <= c"),
        ({"type": "gaussian", "parameters": [0, 0]}, "sigma must be > 0"),
    ],
)
def test_parse_refuses_what_the_trainer_refuses(spec: dict[str, object], fragment: str) -> None:
    with pytest.raises(FuzzyConfigError, match="InvalidFuzzyConfig") as caught:
        parse_fuzzy_set("rsi_14", "mid", spec)
    assert fragment in str(caught.value)
    assert "rsi_14.mid" in str(caught.value)
