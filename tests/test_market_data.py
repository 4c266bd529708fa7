"""Exporting the S&P 500 and NASDAQ bars that the arch package ships."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from arch.data import nasdaq, sp500

from quanttrain.trainer.data import load_bars
from quanttrain.trainer.market_data import export_market_data


def test_export_writes_both_files_with_bar_columns(tmp_path):
    paths = export_market_data(tmp_path)

    assert [path.name for path in paths] == ["sp500_daily.csv", "nasdaq_daily.csv"]
    for path in paths:
        assert path.read_text().splitlines()[0] == "timestamp,open,high,low,close,volume"


def test_exported_bars_equal_the_arch_data(tmp_path):
    export_market_data(tmp_path)

    for name, source in (("sp500_daily.csv", sp500), ("nasdaq_daily.csv", nasdaq)):
        raw = source.load()
        bars = load_bars(tmp_path / name)
        assert len(bars) == len(raw)
        np.testing.assert_allclose(bars["close"], raw["Close"], rtol=1e-12)
        np.testing.assert_allclose(bars["volume"], raw["Volume"], rtol=0)
        assert (bars.index == raw.index).all()


def test_export_is_deterministic_and_leaves_unchanged_files_alone(tmp_path):
    first = export_market_data(tmp_path)
    contents = [path.read_bytes() for path in first]
    modified = [path.stat().st_mtime_ns for path in first]

    second = export_market_data(tmp_path)

    assert [path.read_bytes() for path in second] == contents
    assert [path.stat().st_mtime_ns for path in second] == modified


def test_module_entry_point_writes_into_the_folder(tmp_path):
    target = tmp_path / "market"

    result = subprocess.run(
        [sys.executable, "-m", "quanttrain.trainer.market_data", str(target)],
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert result.returncode == 0, result.stderr
    assert (target / "sp500_daily.csv").is_file()
    assert (target / "nasdaq_daily.csv").is_file()
