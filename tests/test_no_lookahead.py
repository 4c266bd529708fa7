"""Nothing at bar t may see a later bar: features, targets and the dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quanttrain.trainer.config import load_job_config
from quanttrain.trainer.dataset import build_dataset
from quanttrain.trainer.features import build_feature_frame
from quanttrain.trainer.market_data import arch_bars
from quanttrain.trainer.targets import build_target

# The example indicator set, with smoothing and update frequency switched on.
INDICATORS = [
    {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "smoothing": True, "smoothingFactor": 0.4,
     "updateFrequencyMinutes": 240, "thresholds": {"lower": 30, "upper": 70}},
    {"name": "macd_hist", "type": "TECHNICAL", "calculationMethod": "MACD", "output": "macdhist",
     "smoothing": True, "updateFrequencyMinutes": 120},
    {"name": "bb_position", "type": "TECHNICAL", "calculationMethod": "BB_POSITION", "lookbackPeriod": 20,
     "updateFrequencyMinutes": 180},
    {"name": "volume_ratio", "type": "VOLUME", "calculationMethod": "VOLUME_RATIO", "lookbackPeriod": 20,
     "smoothing": True},
    {"name": "atr", "type": "VOLATILITY", "calculationMethod": "ATR", "updateFrequencyMinutes": 60},
    {"name": "volatility", "type": "VOLATILITY", "calculationMethod": "REALIZED_VOLATILITY", "lookbackPeriod": 10},
]
COLUMNS = [indicator["name"] for indicator in INDICATORS] + ["close"]


def job_config(target="PRICE_DIRECTION", horizon_minutes=60):
    return load_job_config({
        "strategy": {
            "name": "Test", "modelType": "XGB", "predictionTarget": target,
            "trainingDataset": "bars.csv", "modelPath": "test", "confidenceThreshold": 0.6,
            "trainingWindowDays": 365, "predictionHorizonMinutes": horizon_minutes,
            "featureConfiguration": {"returnLags": [1, 5, 10], "volatilityWindow": 8},
        },
        "features": {"targetVariable": "label", "featureColumns": COLUMNS,
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": INDICATORS,
    })


def intraday_bars(n_bars=1500, seed=7):
    """15-minute bars with overnight gaps, so Update Frequency takes effect."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.003, n_bars)))
    spread = np.abs(rng.normal(0, 0.002, n_bars)) * close
    sessions = pd.bdate_range("2024-01-01", periods=n_bars // 26 + 1)
    index = pd.DatetimeIndex([day + pd.Timedelta(hours=9, minutes=30 + 15 * k) for day in sessions for k in range(26)])
    return pd.DataFrame(
        {"open": np.roll(close, 1), "high": close + spread, "low": close - spread, "close": close,
         "volume": rng.integers(1_000, 10_000, n_bars).astype(float)},
        index=index[:n_bars].rename("timestamp"),
    )


def change_last_bar(bars):
    changed = bars.copy()
    changed.iloc[-1, :5] = changed.iloc[-1, :5].to_numpy() * np.array([1.3, 1.5, 0.6, 1.4, 7.0])
    return changed


@pytest.mark.parametrize("source", ["intraday", "sp500"])
def test_changing_the_last_bar_changes_no_earlier_feature(source):
    bars = intraday_bars() if source == "intraday" else arch_bars("sp500").iloc[:1500]
    config = job_config()

    before = build_feature_frame(bars, config)
    after = build_feature_frame(change_last_bar(bars), config)

    for column in before.columns:
        np.testing.assert_array_equal(after[column].to_numpy()[:-1], before[column].to_numpy()[:-1],
                                      err_msg=f"feature {column!r} changed before the last bar")
    assert after["volume_ratio"].iloc[-1] != before["volume_ratio"].iloc[-1]


def test_features_of_a_prefix_equal_features_of_the_whole():
    bars = intraday_bars()
    config = job_config()
    whole = build_feature_frame(bars, config, interval_minutes=15)

    for end in (200, 777, 1234):
        prefix = build_feature_frame(bars.iloc[:end], config, interval_minutes=15)
        pd.testing.assert_frame_equal(prefix, whole.iloc[:end], check_exact=True)


@pytest.mark.parametrize(("target", "lookahead"), [("PRICE_DIRECTION", 4), ("SIGNAL", 4), ("VOLATILITY", 8)])
def test_last_horizon_rows_have_no_target(target, lookahead):
    bars = intraday_bars()

    labels = build_target(bars, job_config(target), horizon=4)

    assert labels.iloc[-lookahead:].isna().all()
    assert labels.iloc[:-lookahead].iloc[100:].notna().all()


@pytest.mark.parametrize("target", ["PRICE_DIRECTION", "SIGNAL", "VOLATILITY"])
def test_target_ignores_bars_beyond_its_lookahead(target):
    bars = intraday_bars()
    config = job_config(target)
    before = build_target(bars, config, horizon=4)

    after = build_target(change_last_bar(bars), config, horizon=4)

    lookahead = 8 if target == "VOLATILITY" else 4
    kept = len(bars) - 1 - lookahead
    pd.testing.assert_series_equal(after.iloc[:kept], before.iloc[:kept])


def test_dataset_drops_the_rows_without_a_future():
    bars = intraday_bars()

    dataset = build_dataset(bars, job_config(horizon_minutes=60))

    assert dataset.horizon == 4
    assert dataset.timestamps[-1] == bars.index[-5]
    assert not dataset.X.isna().any().any()
    assert len(dataset.y) == len(dataset.X) == len(dataset.close)
