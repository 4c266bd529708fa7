"""Hyperparameter search: every method, deadlines, failing trials, undefined scores, JSON results."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import TimeSeriesSplit

from quanttrain.trainer.config import SearchMethod, TrainingJobConfig
from quanttrain.trainer import search as search_module
from quanttrain.trainer.models import make_estimator
from quanttrain.trainer.search import (
    SearchError,
    fold_score,
    run_locally,
    run_search,
)

torch.set_num_threads(1)

# SVC(probability=True) is deprecated since scikit-learn 1.9; the factory notes why it still uses it.
pytestmark = pytest.mark.filterwarnings("ignore:The `probability` parameter was deprecated:FutureWarning")

FOLDS = 3
TREE_SPACE = {"n_estimators": [5, 10], "max_depth": {"low": 2, "high": 5}}


def job_config(model_type: str = "RANDOM_FOREST", **training) -> TrainingJobConfig:
    return TrainingJobConfig.model_validate({
        "strategy": {
            "name": "trend", "modelType": model_type, "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "bars.csv", "modelPath": "trend", "confidenceThreshold": 0.6,
            "trainingWindowDays": 60, "predictionHorizonMinutes": 1440,
            "featureConfiguration": {"sequenceLength": 3},
        },
        "features": {"targetVariable": "direction", "featureColumns": ["close"],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "training": {"cvFolds": FOLDS, "randomSeed": 11, **training},
    })


def trend_data(n_rows: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 3))
    y = (X[:, 0] + 0.5 * rng.normal(size=n_rows) > 0).astype(int)
    return X, y


def search(config: TrainingJobConfig, X=None, y=None, **options):
    if X is None:
        X, y = trend_data()
    factory = functools.partial(make_estimator, config)
    return run_search(config, X, y, cv=TimeSeriesSplit(n_splits=FOLDS, gap=1), estimator_factory=factory, **options)


@pytest.mark.parametrize(("method", "trials"), [
    ("GRID_SEARCH", 4), ("RANDOM_SEARCH", 4), ("BAYESIAN", 4), ("NONE", 1),
])
def test_each_method_records_best_trial(method, trials):
    space = {"n_estimators": [5, 10], "max_depth": [2, 4]} if method == "GRID_SEARCH" else TREE_SPACE
    config = job_config(hyperparameterOptimization=method, maxOptimizationIterations=4,
                        searchSpace=space if method != "NONE" else {}, modelParameters={"n_estimators": 5})

    result = search(config)
    best = max(result.trials, key=lambda trial: trial.score)

    assert result.method == method
    assert len(result.trials) == trials
    assert [trial.number for trial in result.trials] == list(range(1, trials + 1))
    assert result.best_params == best.params
    assert result.best_score == best.score
    assert len(result.best_fold_scores) == FOLDS
    assert result.best_score == pytest.approx(np.mean(result.best_fold_scores))
    assert result.stopped_early is False


def test_none_method_records_fixed_parameters():
    config = job_config(modelParameters={"n_estimators": 5, "max_depth": 3})

    assert search(config).best_params == {"n_estimators": 5, "max_depth": 3}


def test_grid_search_cap_logs_skipped_points(caplog):
    space = {"n_estimators": [5, 6, 7], "max_depth": [2, 3, 4]}
    config = job_config(hyperparameterOptimization="GRID_SEARCH", maxOptimizationIterations=4, searchSpace=space)

    with caplog.at_level(logging.INFO, logger="quanttrain.trainer.search"):
        result = search(config)

    assert len(result.trials) == 4
    assert len({json.dumps(trial.params, sort_keys=True) for trial in result.trials}) == 4
    assert "grid has 9 points; Max Optimization Iterations runs 4 of them and skips 5" in caplog.text


def test_grid_search_rejects_ranges():
    config = job_config(hyperparameterOptimization="RANDOM_SEARCH", searchSpace=TREE_SPACE)
    config.training.hyperparameter_optimization = SearchMethod.GRID_SEARCH

    with pytest.raises(ValueError, match=r"grid search needs lists of values, not ranges, for \['max_depth'\]"):
        search(config)


@pytest.mark.parametrize("method", ["RANDOM_SEARCH", "BAYESIAN"])
def test_small_space_caps_trial_count(method, caplog):
    space = {"n_estimators": [5, 10], "max_depth": {"low": 2, "high": 3}}
    config = job_config(hyperparameterOptimization=method, maxOptimizationIterations=10, searchSpace=space)

    with caplog.at_level(logging.INFO, logger="quanttrain.trainer.search"):
        result = search(config)

    assert len({json.dumps(trial.params, sort_keys=True) for trial in result.trials}) == 4
    assert len(result.trials) == 4
    assert "search space has only 4 combinations; running 4 trials instead of 10" in caplog.text


def test_random_search_samples_ranges_within_bounds():
    space = {"max_depth": {"low": 2, "high": 9, "log": True}, "max_features": {"low": 0.2, "high": 0.9},
             "n_estimators": [4, 6]}
    config = job_config(hyperparameterOptimization="RANDOM_SEARCH", maxOptimizationIterations=6, searchSpace=space)

    params = [trial.params for trial in search(config).trials]

    assert all(isinstance(item["max_depth"], int) and 2 <= item["max_depth"] <= 9 for item in params)
    assert all(isinstance(item["max_features"], float) and 0.2 <= item["max_features"] <= 0.9 for item in params)
    assert {item["n_estimators"] for item in params} <= {4, 6}


@pytest.mark.parametrize("method", ["RANDOM_SEARCH", "BAYESIAN"])
def test_same_seed_gives_same_trials(method):
    config = job_config(hyperparameterOptimization=method, maxOptimizationIterations=3, searchSpace=TREE_SPACE)

    first = search(config)
    second = search(config)

    assert [trial.params for trial in first.trials] == [trial.params for trial in second.trials]
    assert [trial.score for trial in first.trials] == [trial.score for trial in second.trials]


def test_one_log_line_per_trial(caplog):
    config = job_config(hyperparameterOptimization="RANDOM_SEARCH", maxOptimizationIterations=3, searchSpace=TREE_SPACE)

    with caplog.at_level(logging.INFO, logger="quanttrain.trainer.search"):
        search(config)

    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("trial ")]
    assert len(lines) == 3
    for number, line in enumerate(lines, start=1):
        assert re.fullmatch(rf"trial {number}/3: params=\{{.*'max_depth': \d.*\}} ACCURACY=0\.\d{{4}} in \d+\.\d s", line)


def test_deadline_stops_search_and_keeps_best():
    config = job_config(hyperparameterOptimization="RANDOM_SEARCH", maxOptimizationIterations=5, searchSpace=TREE_SPACE)

    result = search(config, deadline=time.time())

    assert result.stopped_early is True
    assert len(result.trials) == 1
    assert result.best_params == result.trials[0].params
    assert result.best_score == result.trials[0].score


class FakeClock:
    """Wall clock that trial runners advance by hand; ``perf_counter`` stays real."""

    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now

    def perf_counter(self) -> float:
        return time.perf_counter()


def test_deadline_ends_search_between_batches(monkeypatch):
    config = job_config(hyperparameterOptimization="RANDOM_SEARCH", maxOptimizationIterations=20, searchSpace=TREE_SPACE)
    clock = FakeClock(1000.0)
    monkeypatch.setattr(search_module, "time", clock)
    X, y = trend_data()
    evaluate = functools.partial(_evaluate, config=config, X=X, y=y)

    def ten_second_runner(batch):
        clock.now += 10.0
        return run_locally(batch, evaluate, n_jobs=1)

    result = search(config, X, y, deadline=1025.0, trial_runner=ten_second_runner)

    assert result.stopped_early is True
    assert len(result.trials) == 3  # batches start at 1000, 1010 and 1020


def _evaluate(params, *, config, X, y):
    from quanttrain.trainer.search import evaluate_params

    return evaluate_params(params, X, y, cv=TimeSeriesSplit(n_splits=FOLDS, gap=1),
                           estimator_factory=functools.partial(make_estimator, config), metric="ACCURACY")


def test_trial_runner_receives_batches_of_batch_size():
    config = job_config(hyperparameterOptimization="BAYESIAN", maxOptimizationIterations=5, searchSpace=TREE_SPACE)
    X, y = trend_data()
    evaluate = functools.partial(_evaluate, config=config, X=X, y=y)
    batches = []

    def recording_runner(batch):
        batches.append(batch)
        return run_locally(batch, evaluate, n_jobs=1)

    result = search(config, X, y, trial_runner=recording_runner, batch_size=2)

    assert [len(batch) for batch in batches] == [2, 2, 1]
    assert [trial.params for trial in result.trials] == [params for batch in batches for params in batch]


def test_parallel_jobs_give_same_scores_as_one_job():
    space = {"n_estimators": [5, 10], "max_depth": [2, 4]}
    serial = job_config(hyperparameterOptimization="GRID_SEARCH", searchSpace=space)
    parallel = job_config(hyperparameterOptimization="GRID_SEARCH", searchSpace=space, parallelJobs=2)

    expected = search(serial)
    result = search(parallel)

    assert [trial.score for trial in result.trials] == [trial.score for trial in expected.trials]


def test_failing_trial_is_recorded_and_search_goes_on(caplog):
    config = job_config(hyperparameterOptimization="GRID_SEARCH", searchSpace={"max_depth": [-1, 3]})

    result = search(config)

    failed, succeeded = result.trials
    assert failed.score is None
    assert "max_depth" in failed.error
    assert succeeded.error is None
    assert result.best_params == {"max_depth": 3}
    assert "trial 1/2 failed" in caplog.text


def test_all_trials_failing_raises_first_error():
    config = job_config(hyperparameterOptimization="GRID_SEARCH", searchSpace={"max_depth": [-1, -2]})

    with pytest.raises(SearchError, match=r"all 2 trial\(s\) failed; the first, with params=\{'max_depth': -1\}"):
        search(config)


def test_unknown_search_parameter_raises_before_trials():
    config = job_config(hyperparameterOptimization="RANDOM_SEARCH", searchSpace={"n_trees": [5, 10]})

    with pytest.raises(ValueError, match="training.searchSpace: unknown RANDOM_FOREST parameter"):
        search(config, trial_runner=lambda batch: pytest.fail("no trial may run"))


class OneClassTestFold:
    """Two folds; the second fold's test rows hold only class 1."""

    def split(self, X, y=None, groups=None):
        yield np.arange(0, 100), np.arange(100, 140)
        yield np.arange(0, 150), np.arange(150, 190)

    def get_n_splits(self, X=None, y=None, groups=None):
        return 2


def test_fold_with_one_class_gives_undefined_roc_auc(caplog):
    X, y = trend_data(200)
    y[150:190] = 1
    config = job_config(scoringMetric="ROC_AUC", modelParameters={"n_estimators": 5})

    with caplog.at_level(logging.INFO, logger="quanttrain.trainer.search"):
        result = run_search(config, X, y, cv=OneClassTestFold(),
                            estimator_factory=functools.partial(make_estimator, config))

    first, second = result.best_fold_scores
    assert math.isnan(second)
    assert result.best_score == first
    assert result.to_dict()["best_fold_scores"] == [first, None]
    assert "ROC_AUC not defined in 1 of 2 folds" in caplog.text


def test_result_is_json_serialisable():
    config = job_config(hyperparameterOptimization="BAYESIAN", maxOptimizationIterations=3, searchSpace=TREE_SPACE)

    encoded = json.dumps(search(config).to_dict(), allow_nan=False)
    decoded = json.loads(encoded)

    assert decoded["n_trials"] == 3
    assert decoded["best_params"].keys() == {"n_estimators", "max_depth"}
    assert type(decoded["best_params"]["max_depth"]) is int


@pytest.mark.parametrize(("metric", "expected"), [
    ("PRECISION", lambda y, p: precision_score(y, p, average="weighted", zero_division=0)),
    ("RECALL", lambda y, p: recall_score(y, p, average="weighted", zero_division=0)),
    ("F1", lambda y, p: f1_score(y, p, average="weighted", zero_division=0)),
])
def test_fold_score_uses_weighted_averages(metric, expected):
    X, y = np.random.default_rng(2).normal(size=(150, 3)), np.arange(150) % 3
    model = make_estimator(job_config(modelParameters={"n_estimators": 5})).fit(X[:100], y[:100])

    assert fold_score(model, X[100:], y[100:], metric) == pytest.approx(expected(y[100:], model.predict(X[100:])))


def test_roc_auc_is_weighted_ovr():
    X, y = np.random.default_rng(3).normal(size=(150, 3)), np.arange(150) % 3
    model = make_estimator(job_config(modelParameters={"n_estimators": 5})).fit(X[:100], y[:100])
    expected = roc_auc_score(y[100:], model.predict_proba(X[100:]), multi_class="ovr", average="weighted")

    assert fold_score(model, X[100:], y[100:], "ROC_AUC") == pytest.approx(expected)


def test_roc_auc_handles_unseen_class():
    X, y = trend_data(200)
    y[150:] = 2  # a class the training rows lack
    model = make_estimator(job_config(modelParameters={"n_estimators": 5})).fit(X[:150], y[:150])

    score = fold_score(model, X[120:], y[120:], "ROC_AUC")

    assert 0.0 <= score <= 1.0


@pytest.mark.parametrize("model_type", ["XGB", "SVM", "LSTM"])
def test_search_runs_for_every_model_type(model_type):
    space = {"XGB": {"max_depth": [2, 3]}, "SVM": {"C": {"low": 0.1, "high": 10.0, "log": True}},
             "LSTM": {"hidden_size": [4, 8]}}[model_type]
    fixed = {"max_epochs": 3} if model_type == "LSTM" else {}
    config = job_config(model_type, hyperparameterOptimization="RANDOM_SEARCH", maxOptimizationIterations=2,
                        searchSpace=space, modelParameters=fixed, scoringMetric="F1")

    result = search(config)

    assert len(result.trials) == 2
    assert all(trial.error is None for trial in result.trials)
    assert len(result.best_fold_scores) == FOLDS


def sp500_config(model_type: str, **training) -> TrainingJobConfig:
    return TrainingJobConfig.model_validate({
        "strategy": {
            "name": "spx", "modelType": model_type, "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "sp500_daily.csv", "modelPath": "spx", "confidenceThreshold": 0.55,
            "trainingWindowDays": 365, "predictionHorizonMinutes": 1440,
            "featureConfiguration": {"sequenceLength": 10},
        },
        "features": {"targetVariable": "direction", "featureColumns": ["rsi", "momentum", "volatility"],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": [
            {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "normalization": "ZSCORE"},
            {"name": "momentum", "type": "TECHNICAL", "calculationMethod": "MOM", "lookbackPeriod": 10,
             "normalization": "ROBUST"},
            {"name": "volatility", "type": "VOLATILITY", "calculationMethod": "REALIZED_VOLATILITY",
             "lookbackPeriod": 20},
        ],
        "training": {"cvFolds": 3, "randomSeed": 5, **training},
    })


@pytest.mark.parametrize(("model_type", "space", "fixed"), [
    ("XGB", {"max_depth": [2, 3], "learning_rate": {"low": 0.03, "high": 0.3, "log": True}}, {"n_estimators": 50}),
    ("LSTM", {"hidden_size": [4, 8]}, {"max_epochs": 2, "batch_size": 128}),
])
def test_search_on_sp500_bars(model_type, space, fixed):
    from quanttrain.trainer.dataset import build_dataset
    from quanttrain.trainer.features import make_feature_scaler
    from quanttrain.trainer.market_data import arch_bars
    from quanttrain.trainer.splits import WalkForwardSplit

    config = sp500_config(model_type, hyperparameterOptimization="RANDOM_SEARCH", maxOptimizationIterations=2,
                          searchSpace=space, modelParameters=fixed, scoringMetric="ROC_AUC")
    dataset = build_dataset(arch_bars("sp500").iloc[-1500:], config)
    factory = functools.partial(make_estimator, config, n_classes=len(dataset.classes),
                                preprocessor=make_feature_scaler(config, dataset.feature_names))

    result = run_search(config, dataset.X, dataset.y, cv=WalkForwardSplit(3, gap=dataset.horizon),
                        estimator_factory=factory)

    assert len(result.trials) == 2
    assert all(trial.error is None for trial in result.trials)
    assert len(result.best_fold_scores) == 3
    assert 0.3 < result.best_score < 0.7  # next-day direction is close to a coin flip
