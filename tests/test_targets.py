"""Targets from future bars, user label columns and label coding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quanttrain.trainer.config import load_job_config
from quanttrain.trainer.dataset import build_dataset
from quanttrain.trainer.market_data import arch_bars
from quanttrain.trainer.targets import LabelCoder, TargetError, build_target, horizon_bars


def job_config(target="PRICE_DIRECTION", target_variable="direction", horizon_minutes=1440, **options):
    return load_job_config({
        "strategy": {
            "name": "Test", "modelType": "XGB", "predictionTarget": target,
            "trainingDataset": "bars.csv", "modelPath": "test", "confidenceThreshold": 0.6,
            "trainingWindowDays": 365, "predictionHorizonMinutes": horizon_minutes,
            "featureConfiguration": options,
        },
        "features": {"targetVariable": target_variable, "featureColumns": ["rsi"],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": [{"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI"}],
    })


def bars_from_close(close):
    close = np.asarray(close, dtype=float)
    index = pd.date_range("2024-01-01", periods=len(close), freq="D", name="timestamp")
    return pd.DataFrame({"open": close, "high": close, "low": close, "close": close, "volume": 1.0}, index=index)


@pytest.mark.parametrize(("horizon", "interval", "bars"), [
    (1440, 1440, 1),
    (60, 1440, 1),
    (60, 15, 4),
    (61, 15, 5),
    (5, 60, 1),
    (90, 60, 2),
])
def test_horizon_bars_rounds_up(horizon, interval, bars):
    assert horizon_bars(horizon, interval) == bars


def test_price_direction_compares_the_close_h_bars_ahead():
    bars = bars_from_close([10, 11, 11, 9, 12, 13])

    target = build_target(bars, job_config(), horizon=2)

    assert target.iloc[:4].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert target.iloc[4:].isna().all()


def test_price_direction_tie_is_zero():
    target = build_target(bars_from_close([10, 10, 10]), job_config(), horizon=1)

    assert target.iloc[0] == 0.0


def test_signal_buys_above_and_sells_below_the_threshold():
    bars = bars_from_close([100, 101, 100.5, 100.4, 100.5])

    target = build_target(bars, job_config("SIGNAL", signal_threshold=0.002), horizon=1)

    assert target.iloc[:4].tolist() == ["BUY", "SELL", "HOLD", "HOLD"]
    assert pd.isna(target.iloc[4])


def test_volatility_compares_future_and_trailing_volatility():
    bars = arch_bars("sp500")
    window = 20

    target = build_target(bars, job_config("VOLATILITY", volatility_window=window), horizon=1)

    returns = np.log(bars["close"]).diff().to_numpy()
    backward = pd.Series(returns).rolling(window).std().to_numpy()
    for t in (300, 1234, 4000):
        future = np.std(returns[t + 1:t + window + 1], ddof=1)
        threshold = np.median(backward[max(0, t - 10 * window + 1):t + 1])
        assert target.iloc[t] == float(future > threshold)
    assert target.iloc[-window:].isna().all()
    assert target.iloc[-window - 1:].notna().sum() == 1


def test_volatility_window_grows_with_a_longer_horizon():
    bars = arch_bars("sp500").iloc[:400]

    target = build_target(bars, job_config("VOLATILITY", volatility_window=5), horizon=30)

    assert target.iloc[-30:].isna().all()
    assert pd.notna(target.iloc[-31])


def test_user_label_column_is_the_target():
    bars = bars_from_close([1, 2, 3])
    bars["Signal"] = [-1, 1, np.nan]

    target = build_target(bars, job_config(target_variable="signal"), horizon=1)

    assert target.iloc[:2].tolist() == [-1.0, 1.0]
    assert pd.isna(target.iloc[2])


def test_price_column_cannot_be_the_label():
    with pytest.raises(TargetError, match="'close' is a price column"):
        build_target(bars_from_close([1, 2, 3]), job_config(target_variable="close"), horizon=1)


def test_label_coder_round_trips_plus_minus_one():
    labels = np.array([1, -1, -1, 1, 1])

    coder = LabelCoder().fit(labels)
    codes = coder.transform(labels)

    assert coder.classes_ == ["-1", "1"]
    assert codes.tolist() == [1, 0, 0, 1, 1]
    assert coder.inverse_transform(codes).tolist() == labels.tolist()


def test_label_coder_round_trips_strings():
    labels = ["SELL", "BUY", "HOLD", "BUY"]

    coder = LabelCoder().fit(labels)
    codes = coder.transform(labels)

    assert coder.classes_ == ["BUY", "HOLD", "SELL"]
    assert coder.inverse_transform(codes).tolist() == labels


def test_label_coder_treats_float_and_int_labels_alike():
    coder = LabelCoder().fit([0.0, 1.0, 1.0])

    assert coder.classes_ == ["0", "1"]
    assert coder.transform([1, 0]).tolist() == [1, 0]


def test_label_coder_rejects_unknown_labels():
    coder = LabelCoder().fit(["up", "down"])

    with pytest.raises(TargetError, match=r"unknown or empty label\(s\) \['sideways'\]"):
        coder.transform(["up", "sideways"])


def test_dataset_maps_user_string_labels_back():
    bars = arch_bars("sp500").iloc[:300].copy()
    bars["trend"] = np.where(np.arange(300) % 3 == 0, "up", "down")

    dataset = build_dataset(bars, job_config(target_variable="trend"))

    assert dataset.classes == ["down", "up"]
    expected = bars["trend"].loc[dataset.timestamps].tolist()
    assert dataset.coder.inverse_transform(dataset.y).tolist() == expected


def test_dataset_rejects_a_single_class():
    bars = arch_bars("sp500").iloc[:300].copy()
    bars["label"] = 1

    with pytest.raises(TargetError, match="single class '1'"):
        build_dataset(bars, job_config(target_variable="label"))


def test_dataset_horizon_is_the_label_lookahead():
    bars = arch_bars("sp500").iloc[:600]

    dataset = build_dataset(bars, job_config("VOLATILITY", volatility_window=15))

    assert dataset.horizon == 15
    assert dataset.prediction_horizon == 1


def test_user_label_column_uses_the_prediction_horizon():
    bars = arch_bars("sp500").iloc[:600].copy()
    bars["regime"] = np.arange(600) % 2

    dataset = build_dataset(bars, job_config("VOLATILITY", target_variable="regime", volatility_window=15))

    assert dataset.horizon == 1


def test_dataset_rejects_a_single_bar():
    with pytest.raises(TargetError, match="1 bar\\(s\\) are too few"):
        build_dataset(arch_bars("sp500").iloc[:1], job_config())


def test_dataset_rejects_data_shorter_than_warmup():
    spec = job_config().to_spec()
    spec["indicators"][0]["lookbackPeriod"] = 39
    config = load_job_config(spec)

    with pytest.raises(TargetError, match="40 bars are too few for the indicators' warm-up"):
        build_dataset(arch_bars("sp500").iloc[:40], config)
