"""Bar data loading: CSV and Parquet files of timestamped OHLCV bars.

:func:`load_bars` returns a DataFrame indexed by a ``DatetimeIndex`` named
``timestamp`` with the columns ``open, high, low, close, volume`` as float64,
followed by any other columns of the file unchanged (a user's own label column
may be the target).  Column names are matched after trimming and case folding;
``Adj Close`` is a different column from ``Close``.

Bad data is never repaired silently: a missing column, a value that does not
parse, an empty price, a duplicate timestamp or timestamps out of order raise
:class:`DataError`, which names the file, the column, the row and the value.
Rows are never re-sorted, because a file out of order usually means two files
were concatenated by mistake.
"""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

OHLCV_COLUMNS = ("open", "high", "low", "close", "volume")

# Accepted names of the timestamp column, in order of preference.
TIMESTAMP_NAMES = ("timestamp", "datetime", "date", "time")

INDEX_NAME = "timestamp"

# A trading day: daily bars count as this many minutes, whatever the weekend
# and holiday gaps between them.
MINUTES_PER_DAY = 1440.0

# Bad values shown per column in an error message.
_MAX_EXAMPLES = 3


class DataError(ValueError):
    """Invalid bar data, with every problem found in the file."""

    def __init__(self, path: Path | str, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = list(problems)
        if len(problems) == 1:
            message = f"{path}: {problems[0]}"
        else:
            lines = "\n".join(f"  {problem}" for problem in problems)
            message = f"{path}: {len(problems)} problems:\n{lines}"
        super().__init__(message)


def load_bars(path: str | Path) -> pd.DataFrame:
    """Load timestamped OHLCV bars from a ``.csv`` or ``.parquet`` file.

    Raises:
        DataError: the file is missing, has an unknown suffix, lacks a column,
            contains a value that does not parse, or its timestamps repeat or
            go backwards.  Every problem of the file is listed together.
    """
    resolved = Path(path).expanduser().resolve()
    if not resolved.is_file():
        raise DataError(resolved, ["file not found; check the path (relative paths resolve against "
                                   f"the working directory {Path.cwd()})"])
    suffix = resolved.suffix.lower()
    if suffix == ".csv":
        frame = _read_csv(resolved)
    elif suffix in (".parquet", ".pq"):
        frame = _read_parquet(resolved)
    else:
        raise DataError(resolved, [f"unknown file type {resolved.suffix!r}; use .csv or .parquet"])
    return frame


def bar_interval_minutes(index: pd.DatetimeIndex) -> float:
    """Return the typical spacing of the bars in minutes (the median gap).

    Bars stamped at midnight that are one to four calendar days apart at the
    median are daily bars and count as one trading day, 1440 minutes, so
    weekends and holidays do not change the interval.
    """
    if len(index) < 2:
        raise ValueError(f"need at least 2 bars to infer the bar interval, got {len(index)}")
    steps = np.diff(index.asi8)
    unit_per_minute = pd.Timedelta(minutes=1) / pd.Timedelta(1, unit=index.unit)
    median = float(np.median(steps)) / unit_per_minute
    if median <= 0:
        raise ValueError("timestamps must increase to infer the bar interval")
    if MINUTES_PER_DAY <= median < 4 * MINUTES_PER_DAY and bool((index == index.normalize()).all()):
        return MINUTES_PER_DAY
    return median


def file_sha256(path: str | Path) -> str:
    """Return the hex SHA-256 digest of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _match_columns(names: list[str]) -> tuple[str | None, dict[str, str], list[str]]:
    """Map the file's column names to the timestamp and OHLCV columns.

    Returns the timestamp column (None when absent), the OHLCV columns by their
    standard name, and the problems found.
    """
    by_folded: dict[str, list[str]] = {}
    for name in names:
        by_folded.setdefault(name.strip().casefold(), []).append(name)

    problems = []
    for folded, originals in by_folded.items():
        if len(originals) > 1 and (folded in OHLCV_COLUMNS or folded in TIMESTAMP_NAMES):
            problems.append(f"columns {originals} differ only in case or spaces; keep one of them")

    timestamp = None
    candidates = [by_folded[name][0] for name in TIMESTAMP_NAMES if name in by_folded]
    if {"date", "time"} <= by_folded.keys() and not ({"timestamp", "datetime"} & by_folded.keys()):
        problems.append("separate 'date' and 'time' columns; combine them into one 'timestamp' column")
    elif candidates:
        timestamp = candidates[0]

    ohlcv = {name: by_folded[name][0] for name in OHLCV_COLUMNS if name in by_folded}
    missing = [name for name in OHLCV_COLUMNS if name not in ohlcv]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}; the file has {names} "
                        "(names are matched ignoring case)")
    return timestamp, ohlcv, problems


def _read_header(path: Path) -> tuple[list[str], list[str]]:
    """Return the column names and the first data row (empty when there is none)."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        first_row = next(reader, [])
    if not header:
        raise DataError(path, ["the file is empty; the first line must name the columns"])
    return header, first_row


# A UTC offset at the end of an ISO 8601 timestamp: Z, +01:00, -0500.
_UTC_OFFSET = re.compile(r"(Z|[+-]\d\d:?\d\d)$")


def _read_csv(path: Path) -> pd.DataFrame:
    names, first_row = _read_header(path)
    timestamp, ohlcv, problems = _match_columns(names)
    if timestamp is None and not problems:
        problems.append(f"no timestamp column; name one of {', '.join(TIMESTAMP_NAMES)} (the file has {names})")
    if problems:
        raise DataError(path, problems)

    # Fast path: let Arrow parse ISO timestamps (without, then with UTC
    # offsets) and floats in C.  Anything it rejects is re-read as text to
    # find and report the bad rows.
    numbers = {column: pa.float64() for column in ohlcv.values()}
    stamp_types = [pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")]
    first_stamp = first_row[names.index(timestamp)].strip() if len(first_row) == len(names) else ""
    if _UTC_OFFSET.search(first_stamp):
        stamp_types.reverse()
    table = None
    for stamp_type in stamp_types:
        try:
            table = _arrow_read(path, {timestamp: stamp_type, **numbers})
            break
        except pa.ArrowInvalid:
            continue
    if table is None:
        table = _arrow_read(path, {column: pa.string() for column in (timestamp, *numbers)})
    frame = table.to_pandas()
    # Line 1 is the header, so data row i is on line i + 2.
    # NOTE: blank lines and quoted line breaks shift this count, since Arrow skips or joins them.
    return _standardise(path, frame, timestamp, ohlcv, row_label="line", row_offset=2)


def _arrow_read(path: Path, column_types: dict[str, pa.DataType]) -> pa.Table:
    try:
        return pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(column_types=column_types, strings_can_be_null=False),
        )
    except pa.ArrowInvalid as error:
        if all(pa.types.is_string(kind) for kind in column_types.values()):
            raise DataError(path, [f"not a valid CSV file: {error}"]) from error
        raise


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path, engine="pyarrow")
    except (pa.ArrowException, OSError) as error:
        raise DataError(path, [f"not a readable Parquet file: {error}"]) from error
    names = [str(name) for name in frame.columns]
    frame.columns = names
    timestamp, ohlcv, problems = _match_columns(names)
    if timestamp is None and isinstance(frame.index, pd.DatetimeIndex):
        timestamp = frame.index.name or INDEX_NAME
        frame = frame.reset_index(names=timestamp)
    elif timestamp is None and not problems:
        problems.append(f"no timestamp column or datetime index; name a column one of "
                        f"{', '.join(TIMESTAMP_NAMES)} (the file has {names})")
    if problems:
        raise DataError(path, problems)
    return _standardise(path, frame.reset_index(drop=True), timestamp, ohlcv, row_label="row", row_offset=0)


def _standardise(
    path: Path, frame: pd.DataFrame, timestamp: str, ohlcv: dict[str, str], *, row_label: str, row_offset: int
) -> pd.DataFrame:
    """Parse the timestamp and OHLCV columns, collecting every bad value."""
    if frame.empty:
        raise DataError(path, ["the file has a header but no rows"])
    problems: list[str] = []
    where = _RowNamer(row_label, row_offset)

    index = _parse_timestamps(frame[timestamp], timestamp, where, problems)
    if not problems:
        _check_order(index, where, problems)
    columns = {}
    for name in OHLCV_COLUMNS:
        columns[name] = _parse_floats(frame[ohlcv[name]], ohlcv[name], where, problems)
    if problems:
        raise DataError(path, problems)

    used = {timestamp, *ohlcv.values()}
    result = pd.DataFrame(columns, index=index)
    for name in frame.columns:
        if name not in used:
            result[name] = frame[name].to_numpy()
    return result


class _RowNamer:
    """Formats row positions the way the user finds them (CSV line or Parquet row)."""

    def __init__(self, label: str, offset: int) -> None:
        self.label = label
        self.offset = offset

    def __call__(self, position: int) -> str:
        return f"{self.label} {position + self.offset}"


def _parse_timestamps(values: pd.Series, column: str, where: _RowNamer, problems: list[str]) -> pd.DatetimeIndex:
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        parsed = pd.to_datetime(values)
        _report_bad(values, parsed.isna(), column, "is empty; fill or drop the row", where, problems)
        return pd.DatetimeIndex(parsed, name=INDEX_NAME)

    text = values.astype("string").str.strip()
    parsed = _to_datetime(text, format="ISO8601")
    if parsed.isna().all():
        # Not ISO 8601 at all (for example 01/04/1999): let pandas infer the
        # format from the first value and hold every row to it.
        parsed = _to_datetime(text, format=None)
    _report_bad(text, parsed.isna(), column, "is not a timestamp", where, problems)
    index = pd.DatetimeIndex(parsed, name=INDEX_NAME)
    # One offset for every file: timestamps with UTC offsets become UTC.
    return index if index.tz is None else index.tz_convert("UTC")


def _to_datetime(text: pd.Series, format: str | None) -> pd.Series:
    try:
        return pd.to_datetime(text, errors="coerce", format=format)
    except ValueError:
        # Mixed UTC offsets: keep one time line by converting to UTC.
        return pd.to_datetime(text, errors="coerce", format=format, utc=True)


def _parse_floats(values: pd.Series, column: str, where: _RowNamer, problems: list[str]) -> np.ndarray:
    if pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype):
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)
        _report_bad(values, np.isnan(numbers), column,
                    "is empty; fill or drop the row", where, problems)
        return numbers
    text = values.astype("string").str.strip()
    numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = pd.Series(np.isnan(numbers))
    empty = (text.fillna("") == "").to_numpy()
    _report_bad(text, bad & empty, column, "is empty; fill or drop the row", where, problems)
    _report_bad(text, bad & ~empty, column, "is not a number", where, problems)
    return numbers


def _report_bad(values: pd.Series, bad: Any, column: str, reason: str, where: _RowNamer,
                problems: list[str]) -> None:
    positions = np.flatnonzero(np.asarray(bad, dtype=bool))
    if positions.size == 0:
        return
    # Only the examples are turned into text: formatting a whole column would
    # dominate the load time of a large file.
    examples = ", ".join(f"{_cell_text(values.iloc[pos])!r} at {where(int(pos))}"
                         for pos in positions[:_MAX_EXAMPLES])
    more = f" and {positions.size - _MAX_EXAMPLES} more" if positions.size > _MAX_EXAMPLES else ""
    problems.append(f"column {column!r}: value {reason}: {examples}{more}")


def _cell_text(value: Any) -> str:
    return "" if pd.isna(value) else str(value)


def _check_order(index: pd.DatetimeIndex, where: _RowNamer, problems: list[str]) -> None:
    """Report repeated and backward timestamps."""
    steps = np.diff(index.asi8)
    for mask, what in ((steps == 0, "duplicate timestamp"), (steps < 0, "timestamp earlier than the row before")):
        positions = np.flatnonzero(mask) + 1
        if positions.size:
            examples = ", ".join(f"{index[pos]} at {where(int(pos))}" for pos in positions[:_MAX_EXAMPLES])
            more = f" and {positions.size - _MAX_EXAMPLES} more" if positions.size > _MAX_EXAMPLES else ""
            problems.append(f"{what}: {examples}{more}; rows must be in strictly increasing time order "
                            "(the file is never re-sorted)")
