"""Zigzag labels on hand-made series, and the labelling window: no look-ahead past it."""

from __future__ import annotations

import numpy as np

from training_host.labels import BUY, HOLD, SELL, label_distribution, zigzag_extremes, zigzag_labels


def test_zigzag_labels_rising_and_falling_segments() -> None:
    # Low at 0 (100), high at 3 (110), low at 6 (99), then a 5 % rise confirms that low.
    close = np.array([100, 102, 105, 110, 106, 101, 99, 101, 104])
    extremes = zigzag_extremes(close, 0.05)
    assert [index for index, _ in extremes] == [0, 3, 6]
    assert [confirmed for _, confirmed in extremes] == [2, 5, 8]
    labels = zigzag_labels(close, 0.05)
    assert labels.tolist() == [HOLD, BUY, BUY, HOLD, SELL, SELL, HOLD, HOLD, HOLD]


def test_moves_below_the_threshold_give_no_swings() -> None:
    close = np.array([100, 101, 100.5, 101.2, 100.8])
    assert zigzag_labels(close, 0.05).tolist() == [HOLD] * 5


def test_pending_extreme_follows_newer_highs() -> None:
    close = np.array([100, 106, 108, 112, 100])
    # Low 0 confirmed at bar 1; the high moves 1 -> 2 -> 3 and is confirmed by bar 4's drop.
    assert [index for index, _ in zigzag_extremes(close, 0.05)] == [0, 3]
    assert zigzag_labels(close, 0.05).tolist() == [HOLD, BUY, BUY, HOLD, HOLD]


def test_labels_do_not_change_when_bars_after_the_labelling_window_change() -> None:
    rng = np.random.default_rng(7)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.004, 800)))
    extremes = zigzag_extremes(close, 0.01)
    extreme, confirmed = extremes[len(extremes) // 2]
    labels = zigzag_labels(close, 0.01)
    for change in (0.8, 1.3):
        altered = close.copy()
        altered[confirmed + 1 :] *= change
        assert np.array_equal(zigzag_labels(altered, 0.01)[: extreme + 1], labels[: extreme + 1])


def test_label_distribution_counts_every_class() -> None:
    assert label_distribution(np.array([0, 0, 2, 1])) == {"BUY": 2, "HOLD": 1, "SELL": 1}
    assert label_distribution(np.array([], dtype=int)) == {"BUY": 0, "HOLD": 0, "SELL": 0}
    assert SELL == 2
