"""The training pipeline end to end on real S&P 500 daily bars (from the arch package)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from quanttrain.trainer.config import load_job_config
from quanttrain.trainer.data import load_bars
from quanttrain.trainer.dataset import build_dataset
from quanttrain.trainer.pipeline import JobInputError, train_job
from quanttrain.trainer.registry import ModelRegistry
from quanttrain.trainer.summary import EXIT_GATE_FAILED, EXIT_OK, MAX_SUMMARY_BYTES

pytestmark = pytest.mark.slow

JOB = {
    "strategy": {
        "name": "Pipeline Test", "modelType": "RANDOM_FOREST", "predictionTarget": "PRICE_DIRECTION",
        "trainingDataset": "sp500_daily.csv", "modelPath": "pipeline-test", "confidenceThreshold": 0.55,
        "trainingWindowDays": 365, "predictionHorizonMinutes": 1440,
    },
    "training": {
        "hyperparameterOptimization": "NONE", "cvFolds": 2, "randomSeed": 7,
        "modelParameters": {"n_estimators": 30, "max_depth": 4}, "overfittingDetection": False,
    },
    "features": {
        "targetVariable": "direction", "featureColumns": ["rsi", "macd", "bb_position"],
        "trainSplitRatio": 0.7, "validationSplitRatio": 0.15,
    },
    "indicators": [
        {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "parameters": {"timeperiod": 14}},
        {"name": "macd", "type": "TECHNICAL", "calculationMethod": "MACD", "output": "macdhist",
         "normalization": "ZSCORE"},
        {"name": "bb_position", "type": "VOLATILITY", "calculationMethod": "BB_POSITION"},
    ],
    "portfolio": {"name": "core", "positionSizing": "KELLY", "maxPositionSize": 0.5},
}


@pytest.fixture(scope="module")
def data_dir(market_data_dir):
    return market_data_dir


def _config(**sections):
    job = copy.deepcopy(JOB)
    for section, values in sections.items():
        job[section].update(values)
    return load_job_config(job)


@pytest.fixture(scope="module")
def forest(data_dir, tmp_path_factory):
    registry = tmp_path_factory.mktemp("registry")
    output = registry / "out" / "result.json"
    return train_job(_config(), registry_dir=registry, output_path=output, base_dir=data_dir, progress=False)


def test_random_forest_trains_and_passes_the_gate(forest):
    assert forest.exit_code == EXIT_OK
    assert 0.3 < forest.summary.evaluation.accuracy < 0.7
    assert forest.summary.evaluation.test_rows > 500


def test_summary_fits_the_termination_message(forest):
    message = forest.summary.to_message()
    assert len(message.encode("utf-8")) < MAX_SUMMARY_BYTES
    assert json.loads(message)["model"]["version"] == "1"


def test_test_period_starts_after_training_rows(forest):
    split = forest.result["split"]
    assert pd.Timestamp(split["overfittingCheckPeriod"][1]) < pd.Timestamp(split["validationPeriod"][0])
    assert pd.Timestamp(split["validationPeriod"][1]) < pd.Timestamp(split["testPeriod"][0])
    assert pd.Timestamp(split["fitPeriod"][1]) < pd.Timestamp(split["testPeriod"][0])


def test_final_fit_ends_before_test_lookahead(forest, data_dir):
    split = forest.result["split"]
    timestamps = build_dataset(load_bars(data_dir / "sp500_daily.csv"), _config()).timestamps
    last_fit = timestamps.get_loc(pd.Timestamp(split["fitPeriod"][1]))
    first_test = timestamps.get_loc(pd.Timestamp(split["testPeriod"][0]))
    horizon = forest.result["data"]["horizonBars"]
    assert first_test - horizon - 1 <= last_fit < first_test - horizon


def test_final_fit_includes_the_newest_validation_rows(forest):
    split = forest.result["split"]
    assert split["fitPeriod"][1] == split["validationPeriod"][1]


def test_training_window_caps_the_fit_rows(forest):
    split = forest.result["split"]
    # 365 calendar days of daily bars hold about 252 trading days.
    assert 240 <= split["fitRows"] <= 260
    assert split["overfittingCheckRows"] == split["fitRows"]
    assert split["trainRows"] > split["fitRows"]


def test_search_error_names_its_field_once(data_dir, tmp_path):
    config = _config(training={"hyperparameterOptimization": "GRID_SEARCH",
                               "searchSpace": {"depth": [2, 3]}})
    with pytest.raises(JobInputError) as raised:
        train_job(config, registry_dir=tmp_path, base_dir=data_dir, progress=False)
    assert str(raised.value).startswith("training.searchSpace: unknown RANDOM_FOREST parameter(s) 'depth'")
    assert str(raised.value).count("training.searchSpace") == 1


def test_xgboost_early_stopping_drops_the_lookahead(data_dir, tmp_path):
    config = _config(
        strategy={"modelType": "XGB", "predictionTarget": "VOLATILITY"},
        training={"modelParameters": {"n_estimators": 20, "max_depth": 2}, "earlyStopping": True,
                  "earlyStoppingPatience": 3},
    )
    train_job(config, registry_dir=tmp_path, base_dir=data_dir, progress=False)
    described = json.loads((tmp_path / "pipeline-test" / "1" / "model.json").read_text())
    # A VOLATILITY label looks 20 bars ahead; the bar interval is left to inference here.
    assert described["holdoutEarlyStopping"]["validationGap"] == 20


def test_result_holds_search_baselines_backtest_and_complexity(forest):
    result = forest.result
    assert result["search"]["n_trials"] == 1
    assert len(result["evaluation"]["crossValidation"]["scores"]) == 2
    assert set(result["baselines"]) == {"majority", "persistence"}
    assert result["backtest"]["metrics"]["trades"] >= 0
    assert result["complexity"]["n_trees"] == 30


def test_output_file_is_strict_json(forest):
    text = forest.result_path.read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the result"))["strategy"] == "Pipeline Test"


def test_registered_model_reproduces_the_test_accuracy(forest, data_dir):
    loaded = ModelRegistry(forest.version_path.parent.parent).load("pipeline-test")
    dataset = build_dataset(load_bars(data_dir / "sp500_daily.csv"), _config())
    test_rows = forest.summary.evaluation.test_rows
    predicted = loaded.model.predict(dataset.X.iloc[-test_rows:])
    assert (predicted == dataset.y[-test_rows:]).mean() == pytest.approx(forest.summary.evaluation.accuracy)


def test_registry_metadata_records_data_gate_and_plots(forest):
    metadata = ModelRegistry(forest.version_path.parent.parent).show("pipeline-test")
    assert metadata["data"]["sha256"] == forest.result["data"]["sha256"]
    assert metadata["gate"]["passed"] is True
    assert {"confusion_matrix.png", "roc_curve.png", "equity_curve.png", "result.json"} <= set(metadata["artifacts"])


def test_xgboost_with_early_stopping_trains(data_dir, tmp_path):
    config = _config(
        strategy={"modelType": "XGB", "predictionTarget": "SIGNAL"},
        training={"modelParameters": {"n_estimators": 40, "max_depth": 3}, "earlyStopping": True,
                  "earlyStoppingPatience": 5, "overfittingDetection": False},
        portfolio={"positionSizing": "ML_BASED"},
    )
    outcome = train_job(config, registry_dir=tmp_path, base_dir=data_dir, progress=False)
    evaluation = outcome.summary.evaluation
    assert evaluation.classes == ["BUY", "HOLD", "SELL"]
    assert np.asarray(evaluation.confusion_matrix).sum() == evaluation.test_rows
    assert (tmp_path / "pipeline-test" / "1" / "model.ubj").is_file()
    assert len(outcome.summary.to_message().encode("utf-8")) < MAX_SUMMARY_BYTES


def test_failed_gate_still_registers_the_model(data_dir, tmp_path):
    config = _config(training={"minAccuracyThreshold": 0.99, "overfittingDetection": True})
    outcome = train_job(config, registry_dir=tmp_path, base_dir=data_dir, progress=False)
    assert outcome.exit_code == EXIT_GATE_FAILED
    assert any("below Min Accuracy Threshold 0.9900" in reason for reason in outcome.summary.gate.reasons)
    assert any("Overfitting Detection" in reason for reason in outcome.summary.gate.reasons)
    assert ModelRegistry(tmp_path).versions("pipeline-test") == ["1"]


def test_missing_dataset_names_the_field_and_file(tmp_path):
    with pytest.raises(JobInputError, match=r"strategy\.trainingDataset: .*nowhere\.csv"):
        train_job(_config(strategy={"trainingDataset": "nowhere.csv"}), registry_dir=tmp_path, base_dir=tmp_path,
                  progress=False)
    assert not (tmp_path / "pipeline-test").exists()


def test_test_dataset_before_training_data_is_rejected(data_dir, tmp_path):
    config = _config(features={"trainSplitRatio": 0.8, "validationSplitRatio": 0.2,
                               "testDataset": "sp500_daily.csv"})
    with pytest.raises(JobInputError, match=r"features\.testDataset: .*must come after the training data"):
        train_job(config, registry_dir=tmp_path, base_dir=data_dir, progress=False)


def test_persistence_baseline_uses_label_lookahead(data_dir, tmp_path):
    config = _config(strategy={"predictionTarget": "VOLATILITY"})
    outcome = train_job(config, registry_dir=tmp_path, base_dir=data_dir, progress=False)
    dataset = build_dataset(load_bars(data_dir / "sp500_daily.csv"), config)
    test_rows = np.arange(len(dataset) - outcome.summary.evaluation.test_rows, len(dataset))
    # A VOLATILITY label looks 20 bars ahead, so the label of row t - 20 is the newest one known at t.
    expected = (dataset.y[test_rows] == dataset.y[test_rows - dataset.horizon]).mean()
    assert dataset.horizon == 20
    assert outcome.baselines["persistence"]["accuracy"] == pytest.approx(expected)
    assert outcome.summary.evaluation.strategy_metrics is None
