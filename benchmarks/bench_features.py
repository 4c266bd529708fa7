"""Benchmark: load 1M bars and compute the example indicator features.

Writes one million seeded random-walk minute bars to CSV and Parquet in a
temporary folder, then times, as the median of several runs:

* ``load_bars`` alone, for each format;
* ``load_bars`` plus ``build_feature_frame`` for the example indicator set
  (RSI, MACD histogram, Bollinger band position, volume ratio, ATR and three
  return lags), the target being at most 1.5 s;
* the same features from TA-Lib and numpy called directly on the arrays,
  the floor that quanttrain's feature code adds its overhead to.

    .venv/bin/python benchmarks/bench_features.py [--rows N] [--repeats R]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import talib

from quanttrain.trainer.config import load_job_config
from quanttrain.trainer.data import load_bars
from quanttrain.trainer.features import build_feature_frame

TARGET_SECONDS = 1.5

EXAMPLE_CONFIG = {
    "strategy": {
        "name": "Benchmark", "modelType": "XGB", "predictionTarget": "PRICE_DIRECTION",
        "trainingDataset": "bars.csv", "modelPath": "benchmark", "confidenceThreshold": 0.6,
        "trainingWindowDays": 365, "predictionHorizonMinutes": 60,
        "featureConfiguration": {"returnLags": [1, 5, 10]},
    },
    "features": {"targetVariable": "direction",
                 "featureColumns": ["rsi", "macd_hist", "bb_position", "volume_ratio", "atr"],
                 "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
    "indicators": [
        {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "lookbackPeriod": 14},
        {"name": "macd_hist", "type": "TECHNICAL", "calculationMethod": "MACD", "output": "macdhist"},
        {"name": "bb_position", "type": "TECHNICAL", "calculationMethod": "BB_POSITION", "lookbackPeriod": 20},
        {"name": "volume_ratio", "type": "VOLUME", "calculationMethod": "VOLUME_RATIO", "lookbackPeriod": 20},
        {"name": "atr", "type": "VOLATILITY", "calculationMethod": "ATR", "lookbackPeriod": 14},
    ],
}


def synthetic_bars(n_rows: int, seed: int = 20240101) -> pd.DataFrame:
    """Return a seeded random walk of one-minute OHLCV bars."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.0005, n_rows)))
    open_ = np.concatenate([[100.0], close[:-1]])
    wiggle = np.abs(rng.normal(0.0, 0.0003, n_rows)) * close
    index = pd.date_range("2020-01-01", periods=n_rows, freq="min", name="timestamp")
    return pd.DataFrame({
        "open": open_,
        "high": np.maximum(open_, close) + wiggle,
        "low": np.minimum(open_, close) - wiggle,
        "close": close,
        "volume": rng.integers(100, 10_000, n_rows).astype(np.float64),
    }, index=index)


def direct_features(bars: pd.DataFrame) -> dict[str, np.ndarray]:
    """Compute the example features with TA-Lib and numpy directly on the arrays."""
    high, low, close, volume = (bars[name].to_numpy() for name in ("high", "low", "close", "volume"))
    upper, _, lower = talib.BBANDS(close, 20, 2.0, 2.0, 0)
    features = {
        "rsi": talib.RSI(close, 14),
        "macd_hist": talib.MACD(close, 12, 26, 9)[2],
        "bb_position": (close - lower) / (upper - lower),
        "volume_ratio": volume / talib.SMA(volume, 20),
        "atr": talib.ATR(high, low, close, 14),
    }
    for lag in (1, 5, 10):
        returns = np.full(close.shape, np.nan)
        returns[lag:] = close[lag:] / close[:-lag] - 1.0
        features[f"return_lag_{lag}"] = returns
    return features


def median_seconds(action, repeats: int) -> float:
    action()  # warm caches and imports once
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="bars to generate (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    args = parser.parse_args()

    config = load_job_config(EXAMPLE_CONFIG)
    bars = synthetic_bars(args.rows)
    with tempfile.TemporaryDirectory() as folder:
        paths = {"csv": Path(folder) / "bars.csv", "parquet": Path(folder) / "bars.parquet"}
        table = pa.Table.from_pandas(bars.reset_index(), preserve_index=False)
        pa_csv.write_csv(table, paths["csv"])
        bars.to_parquet(paths["parquet"])

        # Same values as build_feature_frame, so the comparison is like for like.
        ours = build_feature_frame(load_bars(paths["parquet"]), config, interval_minutes=1)
        reference = direct_features(bars)
        for name, values in reference.items():
            np.testing.assert_allclose(ours[name].to_numpy(), values, rtol=1e-9, equal_nan=True)

        rows = [("TA-Lib and numpy directly on arrays", median_seconds(lambda: direct_features(bars), args.repeats))]
        rows.append(("build_feature_frame on loaded bars",
                     median_seconds(lambda: build_feature_frame(bars, config), args.repeats)))
        for kind, path in paths.items():
            rows.append((f"load_bars ({kind})", median_seconds(lambda path=path: load_bars(path), args.repeats)))
            rows.append((f"load_bars + build_feature_frame ({kind})", median_seconds(
                lambda path=path: build_feature_frame(load_bars(path), config), args.repeats)))

    print(f"{args.rows:,} bars, median of {args.repeats} runs")
    for label, seconds in rows:
        print(f"  {label:<45} {seconds:7.3f} s")
    for kind in ("csv", "parquet"):
        seconds = dict(rows)[f"load_bars + build_feature_frame ({kind})"]
        verdict = "met" if seconds <= TARGET_SECONDS else "NOT met"
        print(f"  target loading + features <= {TARGET_SECONDS} s ({kind}): {verdict}")


if __name__ == "__main__":
    main()
