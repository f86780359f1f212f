"""Market data: the shipped bars, resampling, date filters, the data dir, no-data messages."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from training_host.errors import NoDataError
from training_host.market_data import load_bars, resample_bars


def test_builtin_eurusd_hourly_and_goog_daily() -> None:
    eurusd = load_bars("EURUSD", "1h", "2017-01-01", "2019-01-01")
    assert len(eurusd) == 5000
    assert list(eurusd.columns) == ["open", "high", "low", "close", "volume"]
    assert str(eurusd.index.tz) == "UTC"
    assert len(load_bars("goog", "1d", "2004-01-01", "2014-01-01")) == 2148


def test_dates_filter_inclusively() -> None:
    bars = load_bars("EURUSD", "1h", "2017-05-01", "2017-05-02")
    assert bars.index[0] >= pd.Timestamp("2017-05-01", tz="UTC")
    assert bars.index[-1].date().isoformat() == "2017-05-02"


def test_resampling_to_4h_aggregates_ohlcv() -> None:
    hourly = load_bars("EURUSD", "1h", "2017-05-01", "2017-05-01")
    four = load_bars("EURUSD", "4h", "2017-05-01", "2017-05-01")
    first = hourly[hourly.index < four.index[0] + pd.Timedelta(hours=4)]
    assert four.iloc[0]["open"] == first.iloc[0]["open"]
    assert four.iloc[0]["high"] == first["high"].max()
    assert four.iloc[0]["low"] == first["low"].min()
    assert four.iloc[0]["close"] == first.iloc[-1]["close"]
    assert four.iloc[0]["volume"] == first["volume"].sum()
    assert len(resample_bars(hourly, "1d")) == 1


def test_no_data_in_the_default_range_names_what_exists() -> None:
    with pytest.raises(NoDataError, match=r"No data found for EURUSD 1h .*2017-04-19"):
        load_bars("EURUSD", "1h", None, None)


def test_unknown_symbol_lists_the_available_data() -> None:
    with pytest.raises(NoDataError, match=r"No data found for GBPUSD 1h.*EURUSD 1h"):
        load_bars("GBPUSD", "1h", "2017-05-01", "2017-06-01")


def test_data_dir_adds_and_overrides_symbols(tmp_path: Path) -> None:
    csv = "Timestamp,OPEN,High,low,Close,Volume\n"
    csv += "2024-01-01 00:00:00+00:00,1,2,0.5,1.5,10\n2024-01-01 01:00:00+00:00,1.5,2,1,1.8,20\n"
    (tmp_path / "GBPUSD_1h.csv").write_text(csv)
    (tmp_path / "EURUSD_1h.csv").write_text(csv)
    gbp = load_bars("GBPUSD", "1h", "2024-01-01", "2024-01-02", tmp_path)
    assert gbp["close"].tolist() == [1.5, 1.8]
    eur = load_bars("EURUSD", "1h", "2024-01-01", "2024-01-02", tmp_path)
    assert len(eur) == 2  # the file replaced the shipped EURUSD bars
    four = load_bars("GBPUSD", "4h", "2024-01-01", "2024-01-02", tmp_path)
    assert four.iloc[0].tolist() == [1.0, 2.0, 0.5, 1.8, 30.0]
