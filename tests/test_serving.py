"""Real-time prediction: the Predictor against the batch pipeline on real S&P 500 daily bars (arch)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from serving_fixtures import JOB, STRATEGY_KEY, bar_payloads

from quanttrain.trainer.config import load_job_config
from quanttrain.trainer.data import load_bars
from quanttrain.trainer.dataset import build_dataset
from quanttrain.trainer.registry import TamperedArtifactError
from quanttrain.trainer.serving import (
    BarError,
    Pending,
    Prediction,
    Predictor,
    ServedModel,
    ServingError,
    class_values,
    parse_bar,
    parse_bars,
    predict_history,
    required_history,
)

# Where the streamed slice of the S&P 500 bars starts: deep inside the data,
# so the batch features carry years of history that the stream never has.
STREAM_START = 3000
STREAM_EXTRA = 40


@pytest.fixture(scope="module")
def data_dir(market_data_dir):
    return market_data_dir


@pytest.fixture(scope="module")
def registry(serving_registry):
    return serving_registry


@pytest.fixture(scope="module")
def model(registry):
    return ServedModel.load(registry, STRATEGY_KEY)


@pytest.fixture(scope="module")
def sp500(data_dir):
    return load_bars(data_dir / "sp500_daily.csv")


@pytest.fixture(scope="module")
def streamed(model, sp500):
    """Stream a slice of the S&P 500 bars through one Predictor; keep each outcome and feature row."""
    window = sp500.iloc[STREAM_START:STREAM_START + model.warmup_bars + STREAM_EXTRA]
    predictor = Predictor(model)
    outcomes, features = [], []
    for bar in parse_bars(bar_payloads(window)):
        outcomes.append(predictor.update(bar))
        features.append(predictor.features)
    return window, outcomes, features


def test_stream_features_match_the_batch_pipeline(model, sp500, streamed):
    window, outcomes, features = streamed
    batch = build_dataset(sp500, model.config).X
    compared = 0
    for stamp, outcome, row in zip(window.index, outcomes, features):
        if isinstance(outcome, Prediction):
            np.testing.assert_allclose(row.to_numpy(), batch.loc[stamp].to_numpy(), rtol=1e-9, atol=1e-9)
            compared += 1
    assert compared == STREAM_EXTRA + 1


def test_stream_predictions_match_the_batch_pipeline(model, sp500, streamed):
    window, outcomes, _ = streamed
    batch = build_dataset(sp500, model.config).X
    predicted = [outcome for outcome in outcomes if isinstance(outcome, Prediction)]
    stamps = [pd.Timestamp(item.timestamp) for item in predicted]
    expected = model.probabilities(batch.loc[stamps])
    actual = np.array([[item.probabilities[name] for name in model.classes] for item in predicted])
    np.testing.assert_allclose(actual, expected, atol=1e-12)


def test_stream_features_use_the_registered_feature_names(model, streamed):
    _, _, features = streamed
    assert list(features[-1].index) == model.feature_names


def test_history_predictions_match_the_stream(model, streamed):
    window, outcomes, _ = streamed
    predictions, skipped = predict_history(model, parse_bars(bar_payloads(window)))
    streamed_predictions = [outcome for outcome in outcomes if isinstance(outcome, Prediction)]
    assert [item.timestamp for item in predictions] == [item.timestamp for item in streamed_predictions]
    assert skipped == []
    for batch_item, stream_item in zip(predictions, streamed_predictions):
        assert batch_item.label == stream_item.label
        assert batch_item.confidence == pytest.approx(stream_item.confidence, abs=1e-12)


def test_warm_up_returns_pending_until_full(model, streamed):
    _, outcomes, _ = streamed
    pending = outcomes[:model.warmup_bars - 1]
    assert all(isinstance(outcome, Pending) for outcome in pending)
    assert pending[-1].received_bars == model.warmup_bars - 1
    assert pending[-1].required_bars == model.warmup_bars
    assert isinstance(outcomes[model.warmup_bars - 1], Prediction)


def test_warm_up_covers_the_longest_indicator(model):
    # MACD's slow EMA (26) plus its signal EMA (9) is the longest TA-Lib lookback here.
    assert model.warmup_bars > 26 + 9


def test_prediction_reports_label_threshold_and_version(model, streamed):
    _, outcomes, _ = streamed
    prediction = outcomes[-1]
    assert prediction.label in (0, 1)
    assert prediction.confidence == max(prediction.probabilities.values())
    assert prediction.threshold_reached == (prediction.confidence >= 0.52)
    assert prediction.acted_on == (prediction.signal != 0)
    assert prediction.model_version == "1"


def test_prediction_sees_no_later_bar(model, sp500):
    window = sp500.iloc[STREAM_START:STREAM_START + model.warmup_bars + 10].copy()
    original, _ = predict_history(model, parse_bars(bar_payloads(window)))
    # Crash the last five bars: predictions of the bars before them must not move.
    window.iloc[-5:, :4] *= 0.5
    changed, _ = predict_history(model, parse_bars(bar_payloads(window)))
    assert [item.to_json() for item in changed[:-5]] == [item.to_json() for item in original[:-5]]


def test_history_shorter_than_the_warm_up_predicts_nothing(model, sp500):
    window = sp500.iloc[STREAM_START:STREAM_START + model.warmup_bars - 1]
    predictions, _ = predict_history(model, parse_bars(bar_payloads(window)))
    assert predictions == []


def test_out_of_order_bar_is_rejected(model, sp500):
    payloads = bar_payloads(sp500.iloc[STREAM_START:STREAM_START + 3])
    predictor = Predictor(model)
    predictor.update(parse_bar(payloads[0]))
    predictor.update(parse_bar(payloads[2]))
    with pytest.raises(BarError) as caught:
        predictor.update(parse_bar(payloads[1]))
    problem = caught.value.problems[0]
    assert problem.field == "bar.timestamp"
    assert problem.value == payloads[1]["timestamp"]
    assert "strictly increasing time order" in problem.message
    assert predictor.received == 2


def test_repeated_bar_is_rejected(model, sp500):
    payload = bar_payloads(sp500.iloc[STREAM_START:STREAM_START + 1])[0]
    predictor = Predictor(model)
    predictor.update(parse_bar(payload))
    with pytest.raises(BarError, match="repeats the last bar seen"):
        predictor.update(parse_bar(payload))


def test_bar_errors_are_reported_together():
    with pytest.raises(BarError) as caught:
        parse_bar({"timestamp": "yesterday", "open": 1.0, "high": "abc", "low": float("nan"), "close": 2.0})
    by_field = {problem.field: problem for problem in caught.value.problems}
    assert "volume" in by_field["bar"].message
    assert by_field["bar.timestamp"].value == "yesterday"
    assert by_field["bar.high"].value == "abc"
    assert "finite" in by_field["bar.low"].message


def test_bar_with_unknown_field_is_rejected():
    with pytest.raises(BarError, match="unknown field"):
        parse_bar({"timestamp": "2018-01-02", "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1, "vol": 1})


def test_bar_timestamp_with_offset_becomes_utc():
    bar = parse_bar({"timestamp": "2018-01-02T10:00:00+02:00", "open": 1, "high": 1, "low": 1, "close": 1,
                     "volume": 1})
    assert bar.timestamp == pd.Timestamp("2018-01-02T08:00:00")


def test_unordered_bars_name_the_position():
    payloads = [{"timestamp": day, "open": 1, "high": 1, "low": 1, "close": 1, "volume": 1}
                for day in ("2018-01-03", "2018-01-02")]
    with pytest.raises(BarError) as caught:
        parse_bars(payloads)
    assert caught.value.problems[0].field == "bars[1].timestamp"


def test_cumulative_indicator_cannot_be_served():
    job = copy.deepcopy(JOB)
    job["indicators"].append({"name": "obv", "type": "VOLUME", "calculationMethod": "OBV"})
    job["features"]["featureColumns"].append("obv")
    with pytest.raises(ServingError, match="obv depend on the whole price history"):
        required_history(load_job_config(job), 1440.0)


def test_daily_updates_add_a_day_of_history():
    job = copy.deepcopy(JOB)
    plain = required_history(load_job_config(job), 1.0)
    job["indicators"][0]["updateFrequencyMinutes"] = 1440
    assert required_history(load_job_config(job), 1.0) == plain + 1439


def test_class_values_restore_the_training_labels():
    assert class_values(["-1", "1"]) == [-1, 1]
    assert class_values(["0.5", "2"]) == [0.5, 2]
    assert class_values(["BUY", "HOLD", "SELL"]) == ["BUY", "HOLD", "SELL"]


def test_changed_result_file_is_not_served(registry, tmp_path):
    import shutil

    copied = tmp_path / "registry"
    shutil.copytree(registry, copied)
    result_path = copied / STRATEGY_KEY / "1" / "result.json"
    result = json.loads(result_path.read_text())
    result["config"]["strategy"]["confidenceThreshold"] = 0.99
    result_path.write_text(json.dumps(result))
    with pytest.raises(TamperedArtifactError, match="result.json"):
        ServedModel.load(copied, STRATEGY_KEY)


def test_failed_gate_model_serves_with_warning(registry, tmp_path, caplog):
    import shutil

    copied = tmp_path / "registry"
    shutil.copytree(registry, copied)
    metadata_path = copied / STRATEGY_KEY / "1" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata["gate"] = {"passed": False, "reasons": ["test accuracy 0.4800 is below Min Accuracy Threshold 0.5500"]}
    metadata_path.write_text(json.dumps(metadata))

    with caplog.at_level("WARNING", logger="quanttrain.trainer.serving"):
        ServedModel.load(copied, STRATEGY_KEY)

    assert "failed the performance gate: test accuracy 0.4800 is below" in caplog.text


def test_model_description_names_version_classes_and_metrics(model, registry):
    metadata = json.loads((registry / STRATEGY_KEY / "1" / "metadata.json").read_text())
    described = model.describe()
    assert described["sha256"] == metadata["modelSha256"]
    assert described["classes"] == [0, 1]
    assert described["confidenceThreshold"] == 0.52
    assert described["metrics"]["accuracy"] == metadata["metrics"]["accuracy"]
    assert described["warmupBars"] == model.warmup_bars


def test_sequence_model_predicts_from_its_input_window(model, sp500):
    from quanttrain.trainer.lstm import LSTMClassifier

    job = copy.deepcopy(JOB)
    job["strategy"].update({"modelType": "LSTM", "featureConfiguration": {"sequenceLength": 5}})
    config = load_job_config(job)
    dataset = build_dataset(sp500, config)
    # One epoch is enough: the test compares windows, not accuracy.
    estimator = LSTMClassifier(hidden_size=4, sequence_length=5, max_epochs=1, patience=None, device="cpu",
                               random_state=0).fit(dataset.X, dataset.y)
    served = dataclasses.replace(model, estimator=estimator, config=config, context_rows=4)
    window = sp500.iloc[STREAM_START:STREAM_START + served.warmup_bars + 10]
    predictor = Predictor(served)
    outcomes = [predictor.update(bar) for bar in parse_bars(bar_payloads(window))]
    predicted = [outcome for outcome in outcomes if isinstance(outcome, Prediction)]
    positions = [dataset.X.index.get_loc(pd.Timestamp(item.timestamp)) for item in predicted]
    expected = [estimator.predict_proba(dataset.X.iloc[position - 4:position + 1])[-1] for position in positions]
    actual = [[item.probabilities[name] for name in served.classes] for item in predicted]
    assert len(predicted) == 11
    np.testing.assert_allclose(actual, expected, atol=1e-6)


def test_signal_target_sells_in_its_own_labels(model):
    job = copy.deepcopy(JOB)
    job["strategy"]["predictionTarget"] = "SIGNAL"
    classes = ["BUY", "HOLD", "SELL"]
    served = dataclasses.replace(model, config=load_job_config(job), classes=classes, labels=class_values(classes))
    prediction = served.predictions(["2018-01-02"], np.array([[0.1, 0.2, 0.7]]))[0]
    assert prediction.label == "SELL"
    assert prediction.signal == -1
    assert prediction.acted_on is True


def test_volatility_target_has_no_signal(model):
    job = copy.deepcopy(JOB)
    job["strategy"]["predictionTarget"] = "VOLATILITY"
    served = dataclasses.replace(model, config=load_job_config(job))
    prediction = served.predictions(["2018-01-02"], np.array([[0.3, 0.7]]))[0]
    assert prediction.signal is None
    assert prediction.acted_on is True


def test_number_beyond_float_range_is_rejected():
    with pytest.raises(BarError, match="not a number"):
        parse_bar({"timestamp": "2018-01-02", "open": 10**400, "high": 1, "low": 1, "close": 1, "volume": 1})


def test_bars_of_another_interval_are_rejected(model, sp500):
    minute_bars = sp500.iloc[STREAM_START:STREAM_START + 30].copy()
    minute_bars.index = pd.date_range("2018-01-02 09:30", periods=len(minute_bars), freq="min")
    payloads = [{**bar, "timestamp": stamp.isoformat()} for bar, stamp in zip(bar_payloads(minute_bars),
                                                                               minute_bars.index)]
    predictor = Predictor(model)
    with pytest.raises(BarError) as caught:
        for payload in payloads:
            predictor.update(parse_bar(payload))
    assert predictor.received == 19
    assert "trained on 1440-minute bars" in caught.value.problems[0].message
