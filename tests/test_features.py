"""Indicator features: TA-Lib equality, derived methods, sheet options and scaling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import talib
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from quanttrain.trainer.config import IndicatorSettings, load_job_config
from quanttrain.trainer.features import (
    FeatureError,
    FeatureScaler,
    build_feature_frame,
    compute_indicator,
    make_feature_scaler,
)
from quanttrain.trainer.market_data import arch_bars


@pytest.fixture(scope="module")
def bars():
    return arch_bars("sp500")


def indicator(method, **fields):
    fields.setdefault("name", method.lower())
    return IndicatorSettings.model_validate({"type": "TECHNICAL", "calculationMethod": method, **fields})


def job_config(indicators, feature_columns, **feature_options):
    return load_job_config({
        "strategy": {
            "name": "Test", "modelType": "XGB", "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "bars.csv", "modelPath": "test", "confidenceThreshold": 0.6,
            "trainingWindowDays": 365, "predictionHorizonMinutes": 1440,
            "featureConfiguration": feature_options,
        },
        "features": {"targetVariable": "direction", "featureColumns": feature_columns,
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": indicators,
    })


def arrays(bars):
    return {name: bars[name].to_numpy(dtype=np.float64) for name in ("open", "high", "low", "close", "volume")}


# (indicator fields, the same value from TA-Lib called directly)
TALIB_CASES = {
    "rsi": (dict(method="RSI", lookbackPeriod=14), lambda a: talib.RSI(a["close"], 14)),
    "macd_hist": (dict(method="MACD", output="macdhist"), lambda a: talib.MACD(a["close"], 12, 26, 9)[2]),
    "macd_default_output": (dict(method="MACD"), lambda a: talib.MACD(a["close"], 12, 26, 9)[0]),
    "bbands_lower": (dict(method="BBANDS", output="lowerband", lookbackPeriod=20, parameters={"nbdevdn": 1.5}),
                     lambda a: talib.BBANDS(a["close"], 20, 2.0, 1.5)[2]),
    "atr": (dict(method="ATR", lookbackPeriod=10), lambda a: talib.ATR(a["high"], a["low"], a["close"], 10)),
    "obv": (dict(method="OBV"), lambda a: talib.OBV(a["close"], a["volume"])),
    "stoch_slowd": (dict(method="STOCH", output="slowd", parameters={"fastk_period": 9}),
                    lambda a: talib.STOCH(a["high"], a["low"], a["close"], fastk_period=9)[1]),
    "mfi": (dict(method="MFI", lookbackPeriod=14), lambda a: talib.MFI(a["high"], a["low"], a["close"], a["volume"], 14)),
    "adx": (dict(method="ADX", lookbackPeriod=14), lambda a: talib.ADX(a["high"], a["low"], a["close"], 14)),
    "cci": (dict(method="CCI", lookbackPeriod=20), lambda a: talib.CCI(a["high"], a["low"], a["close"], 20)),
    "sma_parameter_wins": (dict(method="SMA", lookbackPeriod=14, parameters={"timeperiod": 50}),
                           lambda a: talib.SMA(a["close"], 50)),
}


@pytest.mark.parametrize("case", sorted(TALIB_CASES))
def test_indicator_equals_talib_after_warmup(bars, case):
    fields, reference = TALIB_CASES[case]
    fields = dict(fields)
    settings = indicator(fields.pop("method"), **fields)
    expected = reference(arrays(bars))

    values = compute_indicator(bars, settings).to_numpy()

    warmup = int(np.isnan(expected).sum())
    assert np.isnan(values[:warmup]).all()
    np.testing.assert_allclose(values[warmup:], expected[warmup:], rtol=1e-12, atol=1e-12)


def test_lookback_period_becomes_timeperiod(bars):
    values = compute_indicator(bars, indicator("RSI", lookbackPeriod=5)).to_numpy()

    np.testing.assert_allclose(values[5:], talib.RSI(arrays(bars)["close"], 5)[5:])


def test_bb_position_is_close_within_the_bands(bars):
    close = arrays(bars)["close"]
    upper, _, lower = talib.BBANDS(close, 20, 2.0, 2.0)

    values = compute_indicator(bars, indicator("BB_POSITION", lookbackPeriod=20)).to_numpy()

    np.testing.assert_allclose(values[19:], ((close - lower) / (upper - lower))[19:])


def test_bb_position_of_flat_window_is_half():
    flat = pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 5.0},
                        index=pd.date_range("2024-01-01", periods=30, freq="D", name="timestamp"))

    values = compute_indicator(flat, indicator("BB_POSITION", lookbackPeriod=20)).to_numpy()

    assert (values[19:] == 0.5).all()


def test_volume_ratio_is_volume_over_its_average(bars):
    volume = arrays(bars)["volume"]

    values = compute_indicator(bars, indicator("VOLUME_RATIO", lookbackPeriod=20)).to_numpy()

    np.testing.assert_allclose(values[19:], (volume / talib.SMA(volume, 20))[19:])


def test_returns_and_log_returns_span_the_period(bars):
    close = bars["close"]

    returns = compute_indicator(bars, indicator("RETURNS", parameters={"timeperiod": 3}))
    log_returns = compute_indicator(bars, indicator("LOG_RETURNS", parameters={"timeperiod": 3}))

    pd.testing.assert_series_equal(returns, close.pct_change(3).rename("returns"))
    np.testing.assert_allclose(log_returns.to_numpy()[3:], np.log(close / close.shift(3)).to_numpy()[3:])


def test_realized_volatility_is_std_of_log_returns(bars):
    expected = np.log(bars["close"]).diff().rolling(10).std().to_numpy()

    values = compute_indicator(bars, indicator("REALIZED_VOLATILITY", lookbackPeriod=10)).to_numpy()

    np.testing.assert_allclose(values[10:], expected[10:])
    assert np.isnan(values[:10]).all()


def test_smoothing_is_an_ema_with_the_smoothing_factor(bars):
    raw = compute_indicator(bars, indicator("RSI")).to_numpy()

    smoothed = compute_indicator(bars, indicator("RSI", smoothing=True, smoothingFactor=0.3)).to_numpy()

    first = int(np.isnan(raw).sum())
    assert smoothed[first] == raw[first]
    expected_next = 0.3 * raw[first + 1] + 0.7 * smoothed[first]
    assert smoothed[first + 1] == pytest.approx(expected_next, rel=1e-12)
    assert np.isnan(smoothed[:first]).all()


def hourly_bars(n_bars=400, seed=3):
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n_bars)))
    index = pd.date_range("2024-01-01 00:00", periods=n_bars, freq="h", name="timestamp")
    return pd.DataFrame({"open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
                         "volume": rng.integers(100, 1000, n_bars).astype(float)}, index=index)


def test_update_frequency_holds_values_between_updates():
    bars = hourly_bars()
    raw = compute_indicator(bars, indicator("RSI")).to_numpy()

    held = compute_indicator(bars, indicator("RSI", updateFrequencyMinutes=240)).to_numpy()

    updates = bars.index.hour % 4 == 0
    np.testing.assert_array_equal(held[updates][4:], raw[updates][4:])
    between = np.flatnonzero(~updates)
    between = between[between > 20]
    np.testing.assert_array_equal(held[between], held[between - 1])


def test_update_frequency_not_above_interval_has_no_effect(bars):
    raw = compute_indicator(bars, indicator("RSI")).to_numpy()

    daily = compute_indicator(bars, indicator("RSI", updateFrequencyMinutes=1440)).to_numpy()

    np.testing.assert_array_equal(daily, raw)


def test_threshold_flags_mark_levels_at_or_beyond(bars):
    config = job_config(
        [{"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "thresholds": {"lower": 30, "upper": 70}}],
        ["rsi"], return_lags=[],
    )

    frame = build_feature_frame(bars, config)

    rsi = frame["rsi"]
    valid = rsi.notna()
    assert ((frame["rsi_below_lower"] == 1) == (rsi <= 30))[valid].all()
    assert ((frame["rsi_above_upper"] == 1) == (rsi >= 70))[valid].all()
    assert frame["rsi_below_lower"][~valid].isna().all()


def test_feature_frame_orders_columns_and_adds_return_lags(bars):
    config = job_config(
        [{"name": "Momentum", "type": "TECHNICAL", "calculationMethod": "RSI", "thresholds": {"upper": 70}},
         {"name": "unused", "type": "TECHNICAL", "calculationMethod": "ATR"}],
        ["close", "Momentum"], return_lags=[1, 5],
    )

    frame = build_feature_frame(bars, config)

    assert list(frame.columns) == ["close", "Momentum", "return_lag_1", "return_lag_5", "Momentum_above_upper"]
    np.testing.assert_allclose(frame["return_lag_5"].to_numpy()[5:], (bars["close"] / bars["close"].shift(5) - 1)[5:])
    assert frame["return_lag_5"].iloc[:5].isna().all()


def test_unknown_parameter_is_rejected(bars):
    settings = IndicatorSettings.model_construct(
        **{**indicator("RSI").__dict__, "parameters": {"period": 3}}
    )

    with pytest.raises(FeatureError, match="RSI has no parameter 'period'; its parameters are: timeperiod"):
        compute_indicator(bars, settings)


def test_fractional_period_is_rejected(bars):
    with pytest.raises(FeatureError, match="'timeperiod' must be a whole number, got 2.5"):
        compute_indicator(bars, indicator("RSI", parameters={"timeperiod": 2.5}))


def test_whole_float_period_is_accepted(bars):
    values = compute_indicator(bars, indicator("RSI", parameters={"timeperiod": 7.0})).to_numpy()

    np.testing.assert_allclose(values[7:], talib.RSI(arrays(bars)["close"], 7)[7:])


def frame_of(columns):
    return pd.DataFrame(columns)


def test_scaler_statistics_come_from_the_fitted_rows_only():
    rng = np.random.default_rng(0)
    data = frame_of({"a": rng.normal(5, 2, 300), "b": rng.normal(-1, 4, 300), "c": rng.normal(0, 1, 300)})
    train = data.iloc[:100]
    scaler = FeatureScaler(normalizations=["ZSCORE", "MINMAX", "ROBUST"], weights=[1.0, 1.0, 1.0])

    scaler.fit(train)

    a, b, c = (train[name].to_numpy() for name in "abc")
    np.testing.assert_allclose(scaler.center_, [a.mean(), b.min(), np.median(c)])
    q1, q3 = np.percentile(c, [25, 75])
    np.testing.assert_allclose(scaler.scale_, [a.std(), b.max() - b.min(), q3 - q1])
    transformed = scaler.transform(data)
    assert transformed[:100, 1].min() == 0.0
    assert transformed[:100, 1].max() == 1.0


def test_scaler_weights_multiply_and_zero_drops():
    data = frame_of({"a": [1.0, 2.0, 3.0], "b": [4.0, 5.0, 6.0], "c": [7.0, 8.0, 9.0]})
    scaler = FeatureScaler(normalizations=["NONE", "NONE", "NONE"], weights=[0.5, 0.0, 1.0])

    transformed = scaler.set_output(transform="pandas").fit_transform(data)

    assert list(transformed.columns) == ["a", "c"]
    assert transformed["a"].tolist() == [0.5, 1.0, 1.5]


def test_scaler_maps_a_constant_column_to_zero():
    data = frame_of({"a": [2.0, 2.0, 2.0]})

    transformed = FeatureScaler(normalizations=["ZSCORE"]).fit_transform(data)

    assert transformed[:, 0].tolist() == [0.0, 0.0, 0.0]


def test_scaler_rejects_settings_of_the_wrong_length():
    with pytest.raises(ValueError, match="1 normalizations and 1 weights for 2 columns"):
        FeatureScaler(normalizations=["NONE"], weights=[1.0]).fit(frame_of({"a": [1.0], "b": [2.0]}))


def test_scaler_in_pipeline_refits_per_slice():
    rng = np.random.default_rng(1)
    X = frame_of({"a": np.concatenate([rng.normal(0, 1, 200), rng.normal(50, 1, 200)])})
    y = (X["a"].to_numpy() > np.median(X["a"])).astype(int)
    pipeline = make_pipeline(FeatureScaler(normalizations=["ZSCORE"]), LogisticRegression())

    early = clone(pipeline).fit(X.iloc[:300], y[:300])

    assert early[0].center_[0] == pytest.approx(X["a"].iloc[:300].mean())


def test_make_feature_scaler_takes_indicator_settings():
    config = job_config(
        [{"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "normalization": "ROBUST",
          "featureWeight": 0.5, "thresholds": {"lower": 30}},
         {"name": "atr", "type": "VOLATILITY", "calculationMethod": "ATR", "featureWeight": 0.0}],
        ["rsi", "atr", "close"],
    )
    columns = ["rsi", "atr", "close", "return_lag_1", "rsi_below_lower"]

    scaler = make_feature_scaler(config, columns)

    assert scaler.normalizations == ["ROBUST", "NONE", "NONE", "NONE", "NONE"]
    assert scaler.weights == [0.5, 0.0, 1.0, 1.0, 0.5]


def write_job(tmp_path, *names):
    import yaml

    documents = []
    for name in names:
        spec = job_config(
            [{"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "thresholds": {"lower": 30}},
             {"name": "macd_hist", "type": "TECHNICAL", "calculationMethod": "MACD", "output": "macdhist"}],
            ["rsi", "macd_hist"], return_lags=[1, 5],
        ).to_spec()
        spec["strategy"]["name"] = name
        documents.append({"apiVersion": "quanttrain.io/v1alpha1", "kind": "MLTrainingJob",
                          "metadata": {"name": name.lower()}, "spec": spec})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    return path


@pytest.fixture()
def sp500_csv(tmp_path):
    from quanttrain.trainer.market_data import bars_to_csv

    path = tmp_path / "sp500.csv"
    path.write_text(bars_to_csv(arch_bars("sp500")), encoding="utf-8")
    return path


def run_cli(*argv):
    from quanttrain.operator.cli import main

    return main([str(arg) for arg in argv])


def test_features_command_writes_features_and_target(tmp_path, sp500_csv, capsys):
    output = tmp_path / "out" / "features.csv"

    status = run_cli("features", write_job(tmp_path, "Alpha"), "--data", sp500_csv, "--output", output)

    assert status == 0, capsys.readouterr().err
    table = pd.read_csv(output, index_col="timestamp")
    assert list(table.columns) == ["rsi", "macd_hist", "return_lag_1", "return_lag_5", "rsi_below_lower",
                                   "direction"]
    assert not table.isna().any().any()
    assert set(table["direction"]) == {0, 1}
    expected_rsi = talib.RSI(arrays(arch_bars("sp500"))["close"], 14)[-len(table) - 1:-1]
    np.testing.assert_allclose(table["rsi"].to_numpy(), expected_rsi)


def test_features_command_keeps_every_bar_on_request(tmp_path, sp500_csv, capsys):
    output = tmp_path / "features.parquet"

    status = run_cli("features", write_job(tmp_path, "Alpha"), "--data", sp500_csv, "--output", output,
                     "--all-rows")

    assert status == 0, capsys.readouterr().err
    table = pd.read_parquet(output)
    assert len(table) == 5031
    assert table["rsi"].iloc[:14].isna().all()
    assert pd.isna(table["direction"].iloc[-1])


def test_features_command_writes_nothing_on_bad_data(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("timestamp,open,high,low,close\n2020-01-02,1,2,0.5,1.5\n", encoding="utf-8")
    output = tmp_path / "features.csv"

    status = run_cli("features", write_job(tmp_path, "Alpha"), "--data", bad, "--output", output)

    assert status == 1
    assert "missing column(s) volume" in capsys.readouterr().err
    assert not output.exists()


def test_features_command_asks_which_strategy(tmp_path, sp500_csv, capsys):
    job = write_job(tmp_path, "Alpha", "Beta")

    status = run_cli("features", job, "--data", sp500_csv, "--output", tmp_path / "features.csv")

    assert status == 1
    assert "choose one with --strategy NAME" in capsys.readouterr().err
    assert run_cli("features", job, "--data", sp500_csv, "--output", tmp_path / "f.csv", "--strategy", "Beta") == 0


def test_every_catalog_method_computes_a_full_series(bars):
    from quanttrain.trainer.indicator_catalog import methods

    for name, method in methods().items():
        if name == "MAVP":
            continue
        for output in method.outputs:
            settings = indicator(name, output=output)
            values = compute_indicator(bars, settings, interval_minutes=1440)
            assert len(values) == len(bars), f"{name}.{output}"
            assert values.dtype == np.float64, f"{name}.{output}"


def test_method_with_a_non_bar_input_is_rejected(bars):
    with pytest.raises(FeatureError, match=r"MAVP needs input\(s\) \['periods'\] that bar data does not have"):
        compute_indicator(bars, indicator("MAVP"))


def test_dataset_names_a_feature_without_any_value(bars):
    from quanttrain.trainer.dataset import build_dataset

    config = job_config([{"name": "angle", "type": "CUSTOM", "calculationMethod": "ACOS"}], ["angle"])

    with pytest.raises(FeatureError, match="feature\\(s\\) angle have no value on any of the 5031 bars"):
        build_dataset(bars, config)


def test_parameter_talib_rejects_is_reported(bars):
    with pytest.raises(FeatureError, match=r"TA-Lib RSI failed with parameters \{'timeperiod': 1\}: .*Bad Parameter"):
        compute_indicator(bars, indicator("RSI", lookbackPeriod=1))


def test_derived_method_rejects_a_too_short_period(bars):
    with pytest.raises(FeatureError, match="indicator .volume_ratio.: VOLUME_RATIO needs a timeperiod \\(Lookback Period\\) of at least 2"):
        compute_indicator(bars, indicator("VOLUME_RATIO", lookbackPeriod=1))
