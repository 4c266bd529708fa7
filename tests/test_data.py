"""Loading bar files: column matching, types, and errors that name the bad value."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from quanttrain.trainer.data import DataError, bar_interval_minutes, file_sha256, load_bars
from quanttrain.trainer.market_data import arch_bars, bars_to_csv

HEADER = "timestamp,open,high,low,close,volume\n"


def write(tmp_path, text, name="bars.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_columns_match_ignoring_case(tmp_path):
    path = write(tmp_path, " Date ,OPEN,High,low,Close,VOLUME\n2020-01-02,1,2,0.5,1.5,10\n2020-01-03,1,2,0.5,1.6,11\n")

    bars = load_bars(path)

    assert list(bars.columns) == ["open", "high", "low", "close", "volume"]
    assert bars.index.name == "timestamp"
    assert isinstance(bars.index, pd.DatetimeIndex)
    assert (bars.dtypes == np.float64).all()
    assert bars["close"].tolist() == [1.5, 1.6]


def test_intraday_iso_timestamps_parse(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02T09:30:00,1,2,0.5,1.5,10\n2020-01-02 10:30:00,1,2,0.5,1.6,11\n")

    bars = load_bars(path)

    assert bars.index[1] == pd.Timestamp("2020-01-02 10:30")


def test_extra_columns_are_kept(tmp_path):
    path = write(tmp_path, "date,open,high,low,close,volume,Label\n2020-01-02,1,2,0.5,1.5,10,BUY\n"
                           "2020-01-03,1,2,0.5,1.6,11,SELL\n")

    bars = load_bars(path)

    assert bars["Label"].tolist() == ["BUY", "SELL"]


def test_adj_close_is_not_close(tmp_path):
    path = write(tmp_path, "date,open,high,low,Adj Close,volume\n2020-01-02,1,2,0.5,1.5,10\n")

    with pytest.raises(DataError) as caught:
        load_bars(path)

    assert "missing column(s) close" in str(caught.value)


def test_missing_columns_are_named_with_the_file(tmp_path):
    path = write(tmp_path, "timestamp,open,close\n2020-01-02,1,1.5\n")

    with pytest.raises(DataError) as caught:
        load_bars(path)

    assert str(path) in str(caught.value)
    assert "high, low, volume" in str(caught.value)


def test_missing_timestamp_column_lists_accepted_names(tmp_path):
    path = write(tmp_path, "when,open,high,low,close,volume\n2020-01-02,1,2,0.5,1.5,10\n")

    with pytest.raises(DataError, match="timestamp, datetime, date, time"):
        load_bars(path)


def test_unparsable_timestamp_shows_value_and_line(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02,1,2,0.5,1.5,10\n2020-13-45,1,2,0.5,1.6,11\n")

    with pytest.raises(DataError) as caught:
        load_bars(path)

    message = str(caught.value)
    assert "'timestamp'" in message
    assert "'2020-13-45' at line 3" in message


def test_unparsable_number_shows_column_value_and_line(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02,1,2,0.5,1.5,10\n2020-01-03,1,2,0.5,n/a?,11\n")

    with pytest.raises(DataError) as caught:
        load_bars(path)

    assert "column 'close': value is not a number: 'n/a?' at line 3" in str(caught.value)


def test_empty_price_is_an_error_not_a_gap(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02,1,2,0.5,,10\n2020-01-03,1,2,0.5,1.6,11\n")

    with pytest.raises(DataError, match="column 'close': value is empty; fill or drop the row: '' at line 2"):
        load_bars(path)


def test_every_problem_of_a_file_is_reported_together(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02,x,2,0.5,1.5,10\nnot-a-date,1,2,0.5,1.6,y\n")

    with pytest.raises(DataError) as caught:
        load_bars(path)

    assert len(caught.value.problems) == 3


def test_duplicate_timestamps_are_rejected(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02,1,2,0.5,1.5,10\n2020-01-02,1,2,0.5,1.6,11\n")

    with pytest.raises(DataError, match="duplicate timestamp: 2020-01-02 00:00:00 at line 3"):
        load_bars(path)


def test_unsorted_rows_are_rejected_not_resorted(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-03,1,2,0.5,1.5,10\n2020-01-02,1,2,0.5,1.6,11\n")

    with pytest.raises(DataError, match="earlier than the row before: 2020-01-02 00:00:00 at line 3"):
        load_bars(path)


def test_missing_file_names_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(DataError) as caught:
        load_bars("data/none.csv")

    assert str(tmp_path / "data" / "none.csv") in str(caught.value)
    assert "file not found" in str(caught.value)


def test_unknown_suffix_is_rejected(tmp_path):
    path = write(tmp_path, HEADER, name="bars.txt")

    with pytest.raises(DataError, match="use .csv or .parquet"):
        load_bars(path)


def test_header_without_rows_is_rejected(tmp_path):
    path = write(tmp_path, HEADER)

    with pytest.raises(DataError, match="no rows"):
        load_bars(path)


def test_parquet_datetime_index_becomes_the_timestamp(tmp_path):
    bars = arch_bars("sp500").iloc[:50]
    path = tmp_path / "bars.parquet"
    bars.rename(columns=str.upper).rename_axis("Date").to_parquet(path)

    loaded = load_bars(path)

    assert loaded.index.name == "timestamp"
    pd.testing.assert_frame_equal(loaded, bars, check_freq=False, check_index_type=False)


def test_parquet_bad_timestamp_names_the_row(tmp_path):
    frame = pd.DataFrame({"time": ["2020-01-02", "bad"], "open": [1.0, 1.0], "high": [2.0, 2.0],
                          "low": [0.5, 0.5], "close": [1.5, 1.5], "volume": [1.0, 1.0]})
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)

    with pytest.raises(DataError, match="'bad' at row 1"):
        load_bars(path)


def test_sp500_csv_and_parquet_load_alike(tmp_path):
    bars = arch_bars("sp500")
    csv_path = write(tmp_path, bars_to_csv(bars))
    parquet_path = tmp_path / "sp500.parquet"
    bars.reset_index().to_parquet(parquet_path)

    from_csv = load_bars(csv_path)
    from_parquet = load_bars(parquet_path)

    assert len(from_csv) == 5031
    np.testing.assert_allclose(from_csv.to_numpy(), from_parquet.to_numpy(), rtol=1e-12)
    assert (from_csv.index == from_parquet.index).all()


def test_daily_bars_have_a_1440_minute_interval():
    assert bar_interval_minutes(arch_bars("sp500").index) == 1440.0


def test_hourly_session_bars_have_60_minute_interval():
    days = pd.bdate_range("2024-01-01", periods=20)
    index = pd.DatetimeIndex([day + pd.Timedelta(hours=hour) for day in days for hour in range(9, 16)])

    assert bar_interval_minutes(index) == 60.0


def test_file_sha256_matches_hashlib(tmp_path):
    path = write(tmp_path, HEADER)

    assert file_sha256(path) == hashlib.sha256(HEADER.encode()).hexdigest()


def test_timestamps_with_utc_offsets_become_utc(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02T10:00:00+01:00,1,2,0.5,1.5,10\n2020-01-02T10:00:00Z,1,2,0.5,1.6,11\n")

    bars = load_bars(path)

    assert str(bars.index.tz) == "UTC"
    assert bars.index[0] == pd.Timestamp("2020-01-02 09:00", tz="UTC")


def test_same_offset_timestamps_become_utc(tmp_path):
    path = write(tmp_path, HEADER + "2020-01-02T10:00:00+01:00,1,2,0.5,1.5,10\n2020-01-02T11:00:00+01:00,1,2,0.5,1.6,11\n")

    bars = load_bars(path)

    assert str(bars.index.tz) == "UTC"
