"""The data a strategy can be trained on: the reference training host's bars, as a small table.

The designer must only propose a symbol, timeframe and date range that the training backend
has, or the training fails with "No data found in cache". The reference host trains on the
real bars of the `backtesting` package; this table describes them (measured with pandas, see
the numbers below) without importing pandas. A user who points the chain at their own ktrdr
backend names their symbols and timeframes in the settings (`KTRDR_DESIGN_SYMBOLS`,
`KTRDR_DESIGN_TIMEFRAMES`); a name not in the table is trusted to exist on their backend, with
the dates of `KTRDR_TRAINING_START_DATE` / `KTRDR_TRAINING_END_DATE`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# Standard deviation of one-bar close-to-close returns of EURUSD 1h: the unit in which the
# catalogue's "EURUSD 1h" quantiles are measured. Other datasets scale them by their own.
EURUSD_1H_VOLATILITY = 0.00093


@dataclass(frozen=True)
class Dataset:
    """Bars of one symbol and timeframe the training backend can load.

    `price_level` is a typical close (for indicators in price units), `volatility` the standard
    deviation of one-bar returns (a fraction), None when unknown. Dates are "YYYY-MM-DD" or
    None (a trusted user dataset without configured dates).
    """

    symbol: str
    timeframe: str
    start_date: str | None
    end_date: str | None
    bars: int | None
    price_level: float | None
    volatility: float | None
    reference: bool = True

    @property
    def volatility_scale(self) -> float:
        """How much bigger one bar's move is than on EURUSD 1h (1.0 when it is EURUSD 1h)."""
        if self.volatility is not None:
            return self.volatility / EURUSD_1H_VOLATILITY
        # Unknown instrument: assume FX-like moves growing with the square root of bar length.
        return math.sqrt(timeframe_minutes(self.timeframe) / 60)


# Measured on `backtesting.test.EURUSD` (5000 hourly bars, 2017-04-19..2018-02-07) and
# `backtesting.test.GOOG` (2148 daily bars); 4h and 1d are the hourly bars resampled, empty
# periods dropped. EURUSD designs train on 2017-05-01..2018-02-01, the window the ktrdr format
# notes recommend: the first and last days of the file (the April 2017 election gap, the
# February 2018 sell-off) cost designs most of their gate passes (8 of 36 pass with the whole
# span, 21 of 36 with this window).
REFERENCE_DATASETS: tuple[Dataset, ...] = (
    Dataset("EURUSD", "1h", "2017-05-01", "2018-02-01", 5000, 1.176, 0.00093),
    Dataset("EURUSD", "4h", "2017-05-01", "2018-02-01", 1292, 1.176, 0.00184),
    Dataset("EURUSD", "1d", "2017-05-01", "2018-02-01", 251, 1.176, 0.00414),
    # GOOG designs train up to 2011: the 14 months after it stay out of sample for the
    # backtest, which must never see the training window (the bars end 2013-03-01).
    Dataset("GOOG", "1d", "2004-08-19", "2011-12-31", 2148, 489.8, 0.0215),
)

_TIMEFRAME = re.compile(r"^(\d+)\s*(m|min|h|d|w)$", re.IGNORECASE)
_UNIT_MINUTES = {"m": 1, "min": 1, "h": 60, "d": 1440, "w": 10080}


def timeframe_minutes(timeframe: str) -> int:
    """Minutes in one bar of `timeframe` ("15m", "1h", "4h", "1d"); 60 when unreadable."""
    match = _TIMEFRAME.match(timeframe.strip())
    if match is None:
        return 60
    return int(match.group(1)) * _UNIT_MINUTES[match.group(2).lower()]


def find_reference(symbol: str, timeframe: str) -> Dataset | None:
    """The reference dataset for this symbol and timeframe, or None."""
    for dataset in REFERENCE_DATASETS:
        if dataset.symbol.upper() == symbol.upper() and dataset.timeframe == timeframe.lower():
            return dataset
    return None


def available_datasets(
    symbols: list[str],
    timeframes: list[str],
    start_date: str | None = None,
    end_date: str | None = None,
) -> list[Dataset]:
    """The datasets to design for, given the settings' symbol and timeframe filters.

    Empty lists mean "every reference dataset". A named symbol or timeframe filters the
    reference table; a combination the table does not have is trusted to exist on the user's
    backend and gets `start_date`/`end_date` (the settings' training dates).
    """
    if not symbols and not timeframes:
        return list(REFERENCE_DATASETS)
    if not timeframes:
        pairs = [(s, d.timeframe) for s in symbols for d in _of_symbol(s)]
        pairs += [(s, "1h") for s in symbols if not _of_symbol(s)]
    elif not symbols:
        pairs = [(d.symbol, t) for t in timeframes for d in _of_timeframe(t)]
        pairs += [(REFERENCE_DATASETS[0].symbol, t) for t in timeframes if not _of_timeframe(t)]
    else:
        pairs = [(s, t) for s in symbols for t in timeframes]
    return [_dataset_for(s, t, start_date, end_date) for s, t in _unique(pairs)]


def _of_symbol(symbol: str) -> list[Dataset]:
    return [d for d in REFERENCE_DATASETS if d.symbol.upper() == symbol.upper()]


def _of_timeframe(timeframe: str) -> list[Dataset]:
    return [d for d in REFERENCE_DATASETS if d.timeframe == timeframe.lower()]


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(pairs))


def _dataset_for(
    symbol: str, timeframe: str, start_date: str | None, end_date: str | None
) -> Dataset:
    known = find_reference(symbol, timeframe)
    if known is not None:
        return known
    # A known symbol on an unknown timeframe keeps its price level; its volatility is
    # rescaled from the symbol's daily bars by the square root of the bar length.
    daily = find_reference(symbol, "1d")
    volatility = None
    if daily is not None and daily.volatility is not None:
        volatility = daily.volatility * math.sqrt(timeframe_minutes(timeframe) / 1440)
    return Dataset(
        symbol=symbol,
        timeframe=timeframe,
        start_date=start_date,
        end_date=end_date,
        bars=None,
        price_level=daily.price_level if daily is not None else None,
        volatility=volatility,
        reference=False,
    )
