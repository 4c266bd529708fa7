"""The model factory: pipelines per model type, parameters, early stopping, complexity, importances."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import TimeSeriesSplit, cross_validate
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from xgboost import XGBClassifier

from quanttrain.trainer.config import TrainingJobConfig
from quanttrain.trainer.lstm import LSTMClassifier
from quanttrain.trainer.models import (
    HoldoutEarlyStopping,
    final_estimator,
    make_estimator,
    model_complexity,
    model_param_names,
    native_feature_importances,
)

torch.set_num_threads(1)

MODEL_TYPES = ["RANDOM_FOREST", "XGB", "SVM", "LSTM"]
# Small, fast settings per model type, so each fit takes well under a second.
FAST_PARAMETERS = {
    "RANDOM_FOREST": {"n_estimators": 20, "max_depth": 4},
    "XGB": {"n_estimators": 60, "max_depth": 3},
    "SVM": {"C": 1.0},
    "LSTM": {"hidden_size": 8, "max_epochs": 25, "learning_rate": 0.02, "batch_size": 32},
}


def job_config(model_type: str, *, strategy: dict | None = None, **training) -> TrainingJobConfig:
    return TrainingJobConfig.model_validate({
        "strategy": {
            "name": "trend", "modelType": model_type, "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "bars.csv", "modelPath": "trend", "confidenceThreshold": 0.6,
            "trainingWindowDays": 60, "predictionHorizonMinutes": 1440,
            "featureConfiguration": {"sequenceLength": 4}, **(strategy or {}),
        },
        "features": {"targetVariable": "direction", "featureColumns": ["close"],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "training": training,
    })


def trend_data(n_rows: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Time-ordered rows whose label follows the first feature, with noise and a drifting level."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 4))
    X[:, 3] += np.linspace(0, 50, n_rows)  # an unscaled, trending column
    y = (X[:, 0] + 0.4 * rng.normal(size=n_rows) > 0).astype(int)
    return X, y


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_each_model_type_learns_from_earlier_rows(model_type):
    X, y = trend_data()
    config = job_config(model_type, modelParameters=FAST_PARAMETERS[model_type])
    pipeline = make_estimator(config).fit(X[:300], y[:300])

    accuracy = float(np.mean(pipeline.predict(X[300:]) == y[300:]))
    probabilities = pipeline.predict_proba(X[300:])

    assert accuracy > 0.7
    assert probabilities.shape == (100, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_each_model_type_clones_with_same_parameters(model_type):
    pipeline = make_estimator(job_config(model_type, modelParameters=FAST_PARAMETERS[model_type]))
    copied = clone(pipeline)

    assert copied.get_params(deep=False).keys() == pipeline.get_params(deep=False).keys()
    assert repr(copied.named_steps["model"]) == repr(pipeline.named_steps["model"])


@pytest.mark.parametrize(("model_type", "steps"), [
    ("RANDOM_FOREST", ["preprocess", "model"]), ("XGB", ["preprocess", "model"]),
    ("SVM", ["preprocess", "scale", "model"]), ("LSTM", ["preprocess", "scale", "model"]),
])
def test_pipeline_steps_per_model_type(model_type, steps):
    assert [name for name, _ in make_estimator(job_config(model_type)).steps] == steps


def test_pipeline_uses_given_preprocessor():
    scaler = StandardScaler()

    pipeline = make_estimator(job_config("RANDOM_FOREST"), preprocessor=scaler)

    assert pipeline.named_steps["preprocess"] is scaler


def test_search_params_override_model_parameters():
    config = job_config("RANDOM_FOREST", modelParameters={"n_estimators": 10, "max_depth": 3})

    model = make_estimator(config, {"max_depth": 7}).named_steps["model"]

    assert model.n_estimators == 10
    assert model.max_depth == 7


def test_random_seed_sets_random_state():
    model = make_estimator(job_config("RANDOM_FOREST", randomSeed=7)).named_steps["model"]

    assert model.random_state == 7


def test_unknown_model_parameter_names_its_field():
    config = job_config("RANDOM_FOREST", modelParameters={"n_estimator": 10})

    with pytest.raises(ValueError, match="training.modelParameters") as raised:
        make_estimator(config)

    assert "'n_estimator'" in str(raised.value)
    assert "n_estimators" in str(raised.value)


def test_unknown_search_parameter_names_its_field():
    with pytest.raises(ValueError, match=r"training.searchSpace: unknown XGB parameter\(s\) 'depth'"):
        make_estimator(job_config("XGB"), {"depth": 3})


def test_reserved_parameter_names_its_setting():
    with pytest.raises(ValueError, match="'random_state' is set by training.randomSeed"):
        make_estimator(job_config("SVM", modelParameters={"random_state": 1}))


def test_svm_fits_calibrated_probabilities_without_warnings():
    X, y = trend_data(200)
    pipeline = make_estimator(job_config("SVM", modelParameters=FAST_PARAMETERS["SVM"]))

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.fit(X, y)

    assert np.allclose(pipeline.predict_proba(X).sum(axis=1), 1.0)


def test_model_param_names_lists_tunable_names():
    names = model_param_names("XGB")

    assert {"n_estimators", "max_depth", "learning_rate", "validation_fraction"} <= set(names)
    assert "random_state" not in names
    assert names == sorted(names)


def test_lstm_takes_sequence_length_and_patience_from_config():
    config = job_config("LSTM", earlyStoppingPatience=4, randomSeed=3)

    model = make_estimator(config).named_steps["model"]

    assert isinstance(model, LSTMClassifier)
    assert (model.sequence_length, model.patience, model.random_state) == (4, 4, 3)


def test_lstm_without_early_stopping_has_no_patience():
    model = make_estimator(job_config("LSTM", earlyStopping=False)).named_steps["model"]

    assert model.patience is None


def test_xgb_options_reach_its_constructor():
    model = make_estimator(job_config("XGB", earlyStoppingPatience=5), n_classes=3).named_steps["model"]
    booster = model.estimator

    assert isinstance(model, HoldoutEarlyStopping)
    assert booster.early_stopping_rounds == 5
    assert booster.eval_metric == "mlogloss"
    assert booster.device == "cpu"
    assert booster.tree_method == "hist"


def test_xgb_without_early_stopping_is_plain_classifier():
    model = make_estimator(job_config("XGB", earlyStopping=False)).named_steps["model"]

    assert isinstance(model, XGBClassifier)
    assert model.early_stopping_rounds is None
    assert model.eval_metric == "logloss"


def test_early_stopping_gap_is_horizon_in_bars():
    config = job_config("XGB", strategy={"predictionHorizonMinutes": 180,
                                         "featureConfiguration": {"barIntervalMinutes": 60}})

    assert make_estimator(config).named_steps["model"].validation_gap == 3


@pytest.mark.parametrize("model_type", ["XGB", "LSTM"])
def test_given_validation_gap_reaches_early_stopping(model_type):
    model = make_estimator(job_config(model_type), validation_gap=5).named_steps["model"]

    assert model.validation_gap == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback on machines without CUDA")
def test_gpu_enabled_without_cuda_trains_on_cpu(caplog):
    model = make_estimator(job_config("XGB", gpuEnabled=True)).named_steps["model"]

    assert model.estimator.device == "cpu"
    assert "no CUDA device" in caplog.text


class RecordingClassifier(ClassifierMixin, BaseEstimator):
    """Records the first column (a row number) of its training and evaluation rows."""

    fits: list[dict[str, np.ndarray]] = []

    def __init__(self, early_stopping_rounds=None):
        self.early_stopping_rounds = early_stopping_rounds

    def fit(self, X, y, eval_set=None, verbose=False):
        RecordingClassifier.fits.append({"train": X[:, 0].copy(), "eval": eval_set[0][0][:, 0].copy()})
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.zeros(len(X), dtype=int)

    def predict_proba(self, X):
        return np.full((len(X), len(self.classes_)), 1 / len(self.classes_))


def test_early_stopping_holds_out_last_rows():
    RecordingClassifier.fits.clear()
    X = np.arange(100, dtype=float).reshape(-1, 1)
    y = np.arange(100) % 2

    HoldoutEarlyStopping(RecordingClassifier(), validation_fraction=0.2, validation_gap=5).fit(X, y)

    fit = RecordingClassifier.fits[0]
    np.testing.assert_array_equal(fit["train"], np.arange(75))
    np.testing.assert_array_equal(fit["eval"], np.arange(80, 100))


def test_early_stopping_fold_uses_earlier_rows():
    RecordingClassifier.fits.clear()
    X = np.column_stack([np.arange(200, dtype=float), np.zeros(200)])
    y = np.arange(200) % 2
    splitter = TimeSeriesSplit(n_splits=3, gap=4)
    model = HoldoutEarlyStopping(RecordingClassifier())

    cross_validate(model, X, y, cv=splitter)

    for fit, (train, test) in zip(RecordingClassifier.fits, splitter.split(X)):
        assert fit["train"].max() < fit["eval"].min()
        assert fit["eval"].max() == train.max()
        assert fit["eval"].max() < test.min()


def test_xgb_early_stopping_stops_on_noise():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = rng.integers(0, 2, size=300)
    config = job_config("XGB", earlyStoppingPatience=3, modelParameters={"n_estimators": 200})

    pipeline = make_estimator(config).fit(X, y)

    assert final_estimator(pipeline).get_booster().num_boosted_rounds() < 200


def test_xgb_early_stopping_accepts_any_labels():
    X, y = trend_data(200)
    labels = np.where(y == 1, 1, -1)
    pipeline = make_estimator(job_config("XGB", modelParameters=FAST_PARAMETERS["XGB"])).fit(X, labels)

    assert pipeline.classes_.tolist() == [-1, 1]
    assert set(pipeline.predict(X)) <= {-1, 1}


def test_holdout_early_stopping_passes_estimator_checks():
    booster = XGBClassifier(n_estimators=10, early_stopping_rounds=2, n_jobs=1, random_state=0)

    results = check_estimator(HoldoutEarlyStopping(booster), on_skip=None)

    assert [result["check_name"] for result in results if result["status"] == "failed"] == []


@pytest.mark.parametrize(("model_type", "keys"), [
    ("RANDOM_FOREST", {"n_trees", "max_depth", "n_nodes", "n_parameters"}),
    ("XGB", {"n_trees", "max_depth", "n_nodes", "n_parameters", "best_iteration"}),
    ("SVM", {"n_support_vectors", "n_parameters"}),
    ("LSTM", {"n_parameters"}),
])
def test_model_complexity_per_model_type(model_type, keys):
    X, y = trend_data(200)
    pipeline = make_estimator(job_config(model_type, modelParameters=FAST_PARAMETERS[model_type])).fit(X, y)

    complexity = model_complexity(pipeline)

    assert keys <= complexity.keys()
    assert all(complexity[key] > 0 for key in keys - {"best_iteration"})


def test_model_complexity_counts_forest_trees_and_depth():
    X, y = trend_data(200)
    config = job_config("RANDOM_FOREST", modelParameters={"n_estimators": 7, "max_depth": 3})

    complexity = model_complexity(make_estimator(config).fit(X, y))

    assert complexity["n_trees"] == 7
    assert complexity["max_depth"] == 3


def test_model_complexity_measures_size_on_disk(tmp_path):
    X, y = trend_data(200)
    pipeline = make_estimator(job_config("XGB", modelParameters=FAST_PARAMETERS["XGB"])).fit(X, y)
    path = tmp_path / "model.ubj"
    final_estimator(pipeline).save_model(path)

    assert model_complexity(pipeline, path)["size_bytes"] == path.stat().st_size


@pytest.mark.parametrize("model_type", ["RANDOM_FOREST", "XGB"])
def test_tree_models_report_native_importances(model_type):
    X, y = trend_data(200)
    pipeline = make_estimator(job_config(model_type, modelParameters=FAST_PARAMETERS[model_type])).fit(X, y)

    importances = native_feature_importances(pipeline, ["signal", "noise_a", "noise_b", "trend"])

    assert list(importances) == ["signal", "noise_a", "noise_b", "trend"]
    assert max(importances, key=importances.get) == "signal"


@pytest.mark.parametrize("model_type", ["SVM", "LSTM"])
def test_models_without_importances_return_none(model_type):
    X, y = trend_data(100)
    pipeline = make_estimator(job_config(model_type, modelParameters=FAST_PARAMETERS[model_type])).fit(X, y)

    assert native_feature_importances(pipeline, ["a", "b", "c", "d"]) is None
