"""Real market bars for examples and tests, exported from the ``arch`` package.

``arch`` ships daily S&P 500 and NASDAQ Composite bars for 1999-2018
(Yahoo Finance data with Open, High, Low, Close, Adj Close and Volume).
This module writes them as bar files the trainer reads, without any network
access:

    python -m quanttrain.trainer.market_data DIR

writes ``DIR/sp500_daily.csv`` and ``DIR/nasdaq_daily.csv`` with the columns
``timestamp,open,high,low,close,volume``.  ``close`` is the raw close, not
``Adj Close``.  The output is byte-identical on every run, and a file that
already contains the same bytes is left untouched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

# Output file name and the arch.data module that ships the bars.
DATASETS = {
    "sp500_daily.csv": "sp500",
    "nasdaq_daily.csv": "nasdaq",
}


def arch_bars(name: str) -> pd.DataFrame:
    """Return one of arch's daily bar sets ("sp500" or "nasdaq") in the shape ``load_bars`` returns."""
    if name == "sp500":
        from arch.data import sp500 as source
    elif name == "nasdaq":
        from arch.data import nasdaq as source
    else:
        raise ValueError(f"unknown arch data set {name!r}; use 'sp500' or 'nasdaq'")
    raw = source.load()
    bars = pd.DataFrame(
        {column: raw[column.capitalize()].astype("float64") for column in ("open", "high", "low", "close", "volume")},
        index=pd.DatetimeIndex(raw.index, name="timestamp"),
    )
    return bars


def bars_to_csv(bars: pd.DataFrame) -> str:
    """Render bars as CSV text: ISO dates for daily bars, shortest round-trip floats."""
    text = bars.copy()
    daily = bool((bars.index == bars.index.normalize()).all())
    text.index = bars.index.strftime("%Y-%m-%d" if daily else "%Y-%m-%dT%H:%M:%S")
    text.index.name = "timestamp"
    return text.to_csv(lineterminator="\n")


def export_market_data(directory: str | Path) -> list[Path]:
    """Write every data set into ``directory``; return the paths."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for file_name, source in DATASETS.items():
        path = target / file_name
        _write_if_changed(path, bars_to_csv(arch_bars(source)))
        written.append(path)
    return written


def _write_if_changed(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    if path.is_file() and path.read_bytes() == data:
        return
    # Write beside the target and rename, so a reader never sees half a file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m quanttrain.trainer.market_data",
        description="Write the daily S&P 500 and NASDAQ bars shipped with the arch package as CSV files.",
    )
    parser.add_argument("directory", type=Path, help="folder to write sp500_daily.csv and nasdaq_daily.csv into")
    args = parser.parse_args(argv)
    for path in export_market_data(args.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
