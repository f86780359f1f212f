"""Zigzag labels, ktrdr's way: BUY (0) on rising segments, SELL (2) on falling, HOLD (1) else.

A swing extreme is confirmed once the close moves `threshold` (a fraction) against the
current direction from it; while the direction continues, the pending extreme follows the
newer high (or low). Bars strictly between two confirmed extremes take their segment's
label; the extremes themselves and the bars outside the first/last extreme are HOLD.

These labels look ahead by nature (a bar's label depends on where the next swing ends), but
only within the labelling window: once an extreme is confirmed, no later bar changes it or
any label before it. `confirmations` exposes where each extreme was confirmed, so tests can
check exactly that.
"""

from __future__ import annotations

import itertools

import numpy as np

BUY, HOLD, SELL = 0, 1, 2
CLASS_NAMES = ("BUY", "HOLD", "SELL")


def zigzag_extremes(close: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Confirmed extremes as (bar index of the extreme, bar index where it was confirmed)."""
    prices = np.asarray(close, dtype=float)
    if threshold <= 0:
        raise ValueError(f"zigzag_threshold must be > 0, got {threshold}")
    extremes: list[tuple[int, int]] = []
    if len(prices) == 0:
        return extremes
    direction = 0  # 0 undecided, +1 rising (tracking a high), -1 falling (tracking a low)
    high_i = low_i = 0
    for i in range(1, len(prices)):
        price = prices[i]
        if direction >= 0 and price > prices[high_i]:
            high_i = i
        if direction <= 0 and price < prices[low_i]:
            low_i = i
        if direction <= 0 and price >= prices[low_i] * (1.0 + threshold):
            # Risen enough from the low: the low is a confirmed extreme; now rising.
            extremes.append((low_i, i))
            direction, high_i = 1, i
        elif direction >= 0 and price <= prices[high_i] * (1.0 - threshold):
            extremes.append((high_i, i))
            direction, low_i = -1, i
    return extremes


def zigzag_labels(close: np.ndarray, threshold: float) -> np.ndarray:
    """One label per bar (0 BUY, 1 HOLD, 2 SELL) from the confirmed zigzag extremes."""
    prices = np.asarray(close, dtype=float)
    labels = np.full(len(prices), HOLD, dtype=np.int64)
    points = [index for index, _ in zigzag_extremes(prices, threshold)]
    for start, end in itertools.pairwise(points):
        if end - start > 1:
            labels[start + 1 : end] = BUY if prices[end] > prices[start] else SELL
    return labels


def label_distribution(labels: np.ndarray) -> dict[str, int]:
    """Counts per class name, for metadata and for the single-class check."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=3)
    return {name: int(count) for name, count in zip(CLASS_NAMES, counts, strict=True)}


def majority_class_share(labels: np.ndarray) -> float:
    """The accuracy of always answering the most frequent class: the floor a model must beat."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=3)
    total = int(counts.sum())
    return float(counts.max()) / total if total else 0.0
