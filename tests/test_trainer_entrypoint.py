"""``python -m quanttrain.trainer`` as a pod runs it: exit codes and the termination log."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml

from quanttrain.trainer.entrypoint import is_primary_rank
from quanttrain.trainer.summary import EXIT_CONFIG_ERROR, EXIT_GATE_FAILED, EXIT_OK, TrainingSummary

pytestmark = pytest.mark.slow

RESOURCE = {
    "apiVersion": "quanttrain.io/v1alpha1",
    "kind": "MLTrainingJob",
    "metadata": {"name": "entrypoint-test"},
    "spec": {
        "image": "quanttrain-trainer:test",
        "strategy": {
            "name": "Entry Point Test", "modelType": "RANDOM_FOREST", "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "sp500_daily.csv", "modelPath": "entrypoint-test", "confidenceThreshold": 0.55,
            "trainingWindowDays": 365, "predictionHorizonMinutes": 1440,
        },
        "training": {"cvFolds": 2, "modelParameters": {"n_estimators": 20, "max_depth": 3},
                     "overfittingDetection": False},
        "features": {"targetVariable": "direction", "featureColumns": ["rsi", "close"],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": [{"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI"}],
    },
}


@pytest.fixture(scope="module")
def data_dir(market_data_dir):
    return market_data_dir


def _run(tmp_path, data_dir, resource, *, environment=None):
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(resource))
    log = tmp_path / "termination-log"
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE")}
    env.update({"QUANTTRAIN_REGISTRY": str(tmp_path / "registry"), **(environment or {})})
    completed = subprocess.run(
        [sys.executable, "-m", "quanttrain.trainer", "--spec", str(spec), "--termination-log", str(log),
         "--data-dir", str(data_dir)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    return completed, log


def _changed(**spec_sections):
    resource = copy.deepcopy(RESOURCE)
    for section, values in spec_sections.items():
        resource["spec"][section].update(values)
    return resource


def test_trained_job_exits_zero_with_summary(tmp_path, data_dir):
    completed, log = _run(tmp_path, data_dir, RESOURCE)
    assert completed.returncode == EXIT_OK, completed.stderr
    summary = TrainingSummary.model_validate(json.loads(log.read_text()))
    assert summary.gate.passed
    assert summary.model.uri.endswith("/registry/entrypoint-test/1")


def test_failed_gate_exits_three(tmp_path, data_dir):
    completed, log = _run(tmp_path, data_dir, _changed(training={"minAccuracyThreshold": 0.99}))
    assert completed.returncode == EXIT_GATE_FAILED, completed.stderr
    summary = json.loads(log.read_text())
    assert summary["gate"]["passed"] is False


def test_invalid_spec_exits_two_with_field_path(tmp_path, data_dir):
    completed, log = _run(tmp_path, data_dir, _changed(features={"trainSplitRatio": 0.5}))
    assert completed.returncode == EXIT_CONFIG_ERROR
    assert "spec.features.trainSplitRatio" in log.read_text()
    assert not (tmp_path / "registry").exists()


def test_missing_dataset_exits_two_naming_the_file(tmp_path, data_dir):
    completed, log = _run(tmp_path, data_dir, _changed(strategy={"trainingDataset": "missing.csv"}))
    assert completed.returncode == EXIT_CONFIG_ERROR
    assert "missing.csv" in log.read_text()


def test_unreadable_yaml_exits_two(tmp_path, data_dir):
    spec = tmp_path / "job.yaml"
    spec.write_text("spec: [unclosed\n")
    completed = subprocess.run([sys.executable, "-m", "quanttrain.trainer", "--spec", str(spec)],
                               cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert completed.returncode == EXIT_CONFIG_ERROR
    assert "not valid YAML" in completed.stderr


def test_other_ranks_write_no_termination_log(tmp_path, data_dir):
    completed, log = _run(tmp_path, data_dir, _changed(features={"trainSplitRatio": 0.5}),
                          environment={"RANK": "1"})
    assert completed.returncode == EXIT_CONFIG_ERROR
    assert not log.exists()


def test_primary_rank_is_rank_zero_or_no_rank():
    assert is_primary_rank({})
    assert is_primary_rank({"RANK": "0"})
    assert not is_primary_rank({"RANK": "2"})
