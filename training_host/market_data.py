"""Real OHLCV bars for training: the `backtesting` package's sets, plus a ktrdr-style data dir.

Built in (read from the installed package, never copied): EURUSD 1h (2017-04..2018-02, 5,000
bars) and GOOG 1d (2004..2013). A data directory of `{SYMBOL}_{TIMEFRAME}.csv` files adds
symbols or overrides the built-in ones. A timeframe with no file of its own is resampled from
the coarsest finer one that divides it (1h -> 4h, 1d), as ktrdr's data layer does. Bars are
indexed by their UTC open time.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from training_host.errors import NoDataError

# ktrdr trains on these dates when a request names none, whether or not data exists there.
DEFAULT_START_DATE = "2020-01-01"
DEFAULT_END_DATE = "2024-12-31"

OHLCV = ("open", "high", "low", "close", "volume")
_TIMEFRAME = re.compile(r"^(\d+)\s*(m|min|h|d|w)$", re.IGNORECASE)
_UNIT = {"m": "min", "min": "min", "h": "h", "d": "D", "w": "W"}
_FILE = re.compile(r"^(?P<symbol>[A-Za-z0-9.\-]+)_(?P<tf>\d+(?:m|min|h|d|w))\.csv$", re.IGNORECASE)


def parse_timeframe(timeframe: str) -> pd.Timedelta:
    """The bar length of `1h`, `4h`, `15m`, `1d`, `1w`; ValueError for anything else."""
    match = _TIMEFRAME.match(timeframe.strip())
    if not match:
        raise ValueError(f"Unknown timeframe {timeframe!r}: use forms like 15m, 1h, 4h, 1d")
    count, unit = int(match.group(1)), match.group(2).lower()
    if count <= 0:
        raise ValueError(f"Unknown timeframe {timeframe!r}: the count must be positive")
    return pd.Timedelta(count, unit=_UNIT[unit] if unit != "w" else "W")


def normalise_timeframe(timeframe: str) -> str:
    """`1H` -> `1h`, `60min` -> `60m`: the spelling used in file and column names."""
    match = _TIMEFRAME.match(timeframe.strip())
    if not match:
        raise ValueError(f"Unknown timeframe {timeframe!r}: use forms like 15m, 1h, 4h, 1d")
    unit = match.group(2).lower()
    return f"{int(match.group(1))}{'m' if unit == 'min' else unit}"


@dataclass(frozen=True)
class Source:
    """Where the bars of one (symbol, timeframe) come from."""

    symbol: str
    timeframe: str
    path: Path


def builtin_sources() -> dict[tuple[str, str], Source]:
    """The `backtesting` package's real bars, found in its installed test folder."""
    import backtesting.test as shipped

    folder = Path(shipped.__file__).parent
    table = {("EURUSD", "1h"): "EURUSD.csv", ("GOOG", "1d"): "GOOG.csv"}
    return {
        key: Source(key[0], key[1], folder / name)
        for key, name in table.items()
        if (folder / name).is_file()
    }


def data_dir_sources(data_dir: Path | None) -> dict[tuple[str, str], Source]:
    """`{SYMBOL}_{TIMEFRAME}.csv` files of a ktrdr data directory."""
    found: dict[tuple[str, str], Source] = {}
    if data_dir is None or not data_dir.is_dir():
        return found
    for path in sorted(data_dir.iterdir()):
        match = _FILE.match(path.name)
        if match and path.is_file():
            symbol = match.group("symbol").upper()
            timeframe = normalise_timeframe(match.group("tf"))
            found[(symbol, timeframe)] = Source(symbol, timeframe, path)
    return found


def all_sources(data_dir: Path | None) -> dict[tuple[str, str], Source]:
    """Built-in sources overridden by the data directory's files."""
    return {**builtin_sources(), **data_dir_sources(data_dir)}


def read_csv_bars(path: Path) -> pd.DataFrame:
    """Bars of one CSV: timestamp first column (UTC), OHLCV columns in any letter case."""
    stat = path.stat()
    return _read_cached(str(path), stat.st_mtime_ns, stat.st_size).copy()


@functools.lru_cache(maxsize=32)
def _read_cached(path: str, _mtime: int, _size: int) -> pd.DataFrame:
    frame = pd.read_csv(path, index_col=0)
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    missing = [c for c in OHLCV if c not in frame.columns]
    if "volume" in missing:
        frame["volume"] = 0.0
        missing.remove("volume")
    if missing:
        raise NoDataError(f"Data file {path} lacks columns {missing}: need {list(OHLCV)}")
    index = pd.to_datetime(frame.index, utc=True, format="mixed")
    bars = frame.loc[:, list(OHLCV)].astype(float)
    bars.index = pd.DatetimeIndex(index, name="timestamp")
    bars = bars[~bars.index.duplicated(keep="last")].sort_index()
    return bars.dropna(subset=["open", "high", "low", "close"])


def resample_bars(bars: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Coarser bars: first open, highest high, lowest low, last close, summed volume.

    Bins are labelled by their open time and start at midnight UTC, so a 4h bar covers
    00-04, 04-08, ...; bins without any source bar (weekends, holidays) are dropped.
    """
    rule = parse_timeframe(timeframe)
    grouped = bars.resample(rule, label="left", closed="left", origin="start_day")
    out = grouped.agg(
        {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    )
    return out.dropna(subset=["open", "high", "low", "close"])


def _resample_source(
    sources: dict[tuple[str, str], Source], symbol: str, timeframe: str
) -> Source | None:
    target = parse_timeframe(timeframe)
    finer = [
        (parse_timeframe(tf), source)
        for (sym, tf), source in sources.items()
        if sym == symbol
        and parse_timeframe(tf) < target
        and target % parse_timeframe(tf) == pd.Timedelta(0)
    ]
    return max(finer, key=lambda pair: pair[0])[1] if finer else None


def _parse_bound(text: str, *, end: bool) -> pd.Timestamp:
    stamp = pd.Timestamp(text)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    # A bare date as the end means "through that whole day", as ktrdr's date filters do.
    if end and len(text.strip()) <= 10:
        stamp = stamp + pd.Timedelta(days=1)
    return stamp


def describe_available(data_dir: Path | None) -> str:
    """One line per source: symbol, timeframe, span and count, for error messages."""
    parts = []
    for (symbol, timeframe), source in sorted(all_sources(data_dir).items()):
        bars = read_csv_bars(source.path)
        if bars.empty:
            continue
        parts.append(
            f"{symbol} {timeframe} {bars.index[0]:%Y-%m-%d}..{bars.index[-1]:%Y-%m-%d} "
            f"({len(bars)} bars; coarser timeframes by resampling)"
        )
    return "; ".join(parts) or "none"


def load_bars(
    symbol: str,
    timeframe: str,
    start_date: str | None,
    end_date: str | None,
    data_dir: Path | None = None,
) -> pd.DataFrame:
    """The bars of `symbol` at `timeframe` within the dates (ktrdr's defaults when absent).

    Raises NoDataError naming what exists when nothing matches, so the person can fix the
    request: ktrdr fails the operation in the same situation ("No data found ...").
    """
    symbol = symbol.strip().upper()
    try:
        timeframe = normalise_timeframe(timeframe)
    except ValueError as exc:
        raise NoDataError(f"No data found for {symbol} {timeframe}: {exc}") from exc
    start_text = start_date or DEFAULT_START_DATE
    end_text = end_date or DEFAULT_END_DATE
    sources = all_sources(data_dir)
    source = sources.get((symbol, timeframe))
    if source is not None:
        bars = read_csv_bars(source.path)
    else:
        finer = _resample_source(sources, symbol, timeframe)
        if finer is None:
            raise NoDataError(
                f"No data found for {symbol} {timeframe}: no bars for that symbol and "
                f"timeframe. Available: {describe_available(data_dir)}. Add "
                f"{symbol}_{timeframe}.csv to the data directory (KTRDR_DATA_DIR) or ask for "
                f"one of these."
            )
        bars = resample_bars(read_csv_bars(finer.path), timeframe)
    try:
        start, end = _parse_bound(start_text, end=False), _parse_bound(end_text, end=True)
    except (ValueError, TypeError) as exc:
        raise NoDataError(
            f"No data found for {symbol} {timeframe}: bad date range {start_text}..{end_text} "
            f"({exc}); use YYYY-MM-DD"
        ) from exc
    window = bars[(bars.index >= start) & (bars.index < end)]
    if window.empty:
        span = f"{bars.index[0]:%Y-%m-%d}..{bars.index[-1]:%Y-%m-%d}" if len(bars) else "nothing"
        raise NoDataError(
            f"No data found for {symbol} {timeframe} between {start_text} and {end_text}: "
            f"the data covers {span} ({len(bars)} bars). Send start_date/end_date inside "
            f"that range."
        )
    return window
