"""The model registry: safe formats round-trip, versions count up, aliases move, tampering is caught."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from quanttrain.trainer.config import load_job_config
from quanttrain.trainer.features import make_feature_scaler
from quanttrain.trainer.models import make_estimator
from quanttrain.trainer.registry import (
    GateFailedError,
    ModelRegistry,
    RegistryError,
    TamperedArtifactError,
    sha256_file,
)

FEATURES = ["rsi", "momentum", "volume_ratio"]


def _config(model_type: str, **model_parameters):
    return load_job_config({
        "strategy": {
            "name": "Registry Test", "modelType": model_type, "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "bars.csv", "modelPath": "registry-test", "confidenceThreshold": 0.6,
            "trainingWindowDays": 365, "predictionHorizonMinutes": 1440,
        },
        "training": {"modelParameters": model_parameters, "randomSeed": 3},
        "features": {"targetVariable": "direction", "featureColumns": FEATURES,
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": [
            {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "normalization": "ZSCORE"},
            {"name": "momentum", "type": "TECHNICAL", "calculationMethod": "MOM", "normalization": "MINMAX",
             "featureWeight": 0.5},
            {"name": "volume_ratio", "type": "VOLUME", "calculationMethod": "VOLUME_RATIO"},
        ],
    })


def _data(rows: int = 400):
    rng = np.random.default_rng(5)
    X = pd.DataFrame(rng.normal(size=(rows, len(FEATURES))), columns=FEATURES)
    y = (X["rsi"] - 0.5 * X["momentum"] + 0.5 * rng.normal(size=rows) > 0).astype(np.int64).to_numpy()
    return X, y


def _fitted(model_type: str, **model_parameters):
    config = _config(model_type, **model_parameters)
    X, y = _data()
    pipeline = make_estimator(config, preprocessor=make_feature_scaler(config, FEATURES), n_classes=2)
    return pipeline.fit(X, y), X


METADATA = {"modelType": "TEST", "metrics": {"accuracy": 0.6}, "gate": {"passed": True}}


@pytest.mark.parametrize(("model_type", "parameters", "model_file"), [
    ("RANDOM_FOREST", {"n_estimators": 20, "max_depth": 4}, "model.skops"),
    ("XGB", {"n_estimators": 30, "max_depth": 3}, "model.ubj"),
    ("SVM", {"C": 1.0}, "model.skops"),
    ("LSTM", {"hidden_size": 8, "max_epochs": 2, "sequence_length": 5}, "model.pt"),
])
def test_saved_model_predicts_the_same_after_loading(tmp_path, model_type, parameters, model_file):
    pipeline, X = _fitted(model_type, **parameters)
    registry = ModelRegistry(tmp_path)
    reference = registry.save("registry-test", pipeline, metadata=METADATA)
    loaded = registry.load("registry-test")

    assert (tmp_path / "registry-test" / "1" / model_file).is_file()
    assert reference.version == "1"
    assert np.allclose(loaded.model.predict_proba(X), pipeline.predict_proba(X))


@pytest.mark.parametrize("model_type", ["RANDOM_FOREST", "SVM"])
def test_same_model_saves_with_the_same_sha256(tmp_path, model_type):
    registry = ModelRegistry(tmp_path)
    first = registry.save("registry-test", _fitted(model_type)[0], metadata=METADATA)
    second = registry.save("registry-test", _fitted(model_type)[0], metadata=METADATA)

    assert first.sha256 == second.sha256
    assert first.sha256 == registry.show("registry-test", "1")["modelSha256"]


def test_versions_count_up_and_never_overwrite(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    first = registry.save("registry-test", pipeline, metadata=METADATA)
    second = registry.save("registry-test", pipeline, metadata=METADATA)
    assert (first.version, second.version) == ("1", "2")
    assert registry.versions("registry-test") == ["1", "2"]


def test_concurrent_saves_get_distinct_versions(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    versions = []
    threads = [threading.Thread(target=lambda: versions.append(
        registry.save("registry-test", pipeline, metadata=METADATA).version)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(versions, key=int) == ["1", "2", "3", "4"]


def test_metadata_records_hashes_and_libraries(tmp_path):
    pipeline, _ = _fitted("XGB", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    reference = registry.save("registry-test", pipeline, metadata=METADATA, result={"ok": True})
    metadata = registry.show("registry-test", "1")
    assert metadata["modelSha256"] == reference.sha256
    assert set(metadata["artifacts"]) == {"model.ubj", "model.json", "preprocess.json", "result.json"}
    assert "xgboost" in metadata["libraryVersions"]


def test_promote_sets_alias_and_load_follows_it(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    registry.save("registry-test", pipeline, metadata=METADATA)
    registry.promote("registry-test", "1", "production")

    assert registry.aliases("registry-test") == {"production": "1"}
    assert registry.load("registry-test", alias="production").version == "1"
    assert registry.show("registry-test", alias="production")["aliases"] == ["production"]


def test_promote_rejects_unknown_version(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    with pytest.raises(RegistryError, match="no version '7'"):
        registry.promote("registry-test", "7", "production")


FAILED_GATE = {**METADATA, "gate": {"passed": False, "reasons": ["test accuracy 0.5000 is below 0.5500"]}}


def test_promote_rejects_version_that_failed_the_gate(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=FAILED_GATE)

    with pytest.raises(GateFailedError) as raised:
        registry.promote("registry-test", "1", "production")

    assert "version 1" in str(raised.value)
    assert "test accuracy 0.5000 is below 0.5500" in str(raised.value)
    assert "--force" in str(raised.value)
    assert registry.aliases("registry-test") == {}


def test_promote_with_force_sets_alias_of_failed_version(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=FAILED_GATE)

    registry.promote("registry-test", "1", "production", force=True)

    assert registry.aliases("registry-test") == {"production": "1"}


def test_tampered_model_file_is_rejected(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    model_file = tmp_path / "registry-test" / "1" / "model.skops"
    model_file.write_bytes(model_file.read_bytes() + b"\0")

    with pytest.raises(TamperedArtifactError, match="model.skops"):
        registry.load("registry-test")


def test_unfinished_version_is_ignored(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    (tmp_path / "registry-test" / "2").mkdir()  # a save that crashed before metadata.json

    assert registry.versions("registry-test") == ["1"]
    assert registry.load("registry-test").version == "1"


def test_failed_save_removes_its_version_folder(tmp_path):
    registry = ModelRegistry(tmp_path)
    with pytest.raises(RuntimeError), registry.new_version("registry-test"):
        raise RuntimeError("training failed")
    assert not (tmp_path / "registry-test" / "1").exists()


def test_list_shows_each_version_with_its_aliases(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    registry.promote("registry-test", "1", "staging")
    rows = registry.list()
    assert [(row["strategy"], row["version"], row["aliases"]) for row in rows] == [("registry-test", "1", ["staging"])]
    assert json.loads(json.dumps(rows)) == rows


def test_unknown_strategy_error_lists_known_ones(tmp_path):
    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    with pytest.raises(RegistryError, match="registered strategies: registry-test"):
        registry.load("other")


class _Untrusted(BaseEstimator, TransformerMixin):
    """A transformer from outside the registry's trusted types."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X


def test_save_rejects_untrusted_types(tmp_path):
    X, y = _data()
    pipeline = Pipeline([("custom", _Untrusted()), ("model", LogisticRegression())]).fit(X, y)
    with pytest.raises(RegistryError, match="_Untrusted"):
        ModelRegistry(tmp_path).save("registry-test", pipeline, metadata=METADATA)
    assert not (tmp_path / "registry-test" / "1").exists()


def test_load_rejects_swapped_file_with_untrusted_types(tmp_path):
    import skops.io

    pipeline, _ = _fitted("RANDOM_FOREST", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    version = tmp_path / "registry-test" / "1"
    X, y = _data()
    skops.io.dump(Pipeline([("custom", _Untrusted()), ("model", LogisticRegression())]).fit(X, y),
                  version / "model.skops")
    # An attacker who can also rewrite metadata.json passes the sha256 check; the type check still holds.
    metadata = json.loads((version / "metadata.json").read_text())
    metadata["artifacts"]["model.skops"]["sha256"] = sha256_file(version / "model.skops")
    (version / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(TamperedArtifactError, match="not trusted"):
        registry.load("registry-test")


def test_load_rejects_preprocessing_json_naming_other_class(tmp_path):
    pipeline, _ = _fitted("XGB", n_estimators=5)
    registry = ModelRegistry(tmp_path)
    registry.save("registry-test", pipeline, metadata=METADATA)
    version = tmp_path / "registry-test" / "1"
    steps = json.loads((version / "preprocess.json").read_text())
    steps["steps"][0]["class"] = "subprocess.Popen"
    (version / "preprocess.json").write_text(json.dumps(steps))
    metadata = json.loads((version / "metadata.json").read_text())
    metadata["artifacts"]["preprocess.json"]["sha256"] = sha256_file(version / "preprocess.json")
    (version / "metadata.json").write_text(json.dumps(metadata))

    with pytest.raises(TamperedArtifactError, match="'subprocess.Popen' is not trusted"):
        registry.load("registry-test")
