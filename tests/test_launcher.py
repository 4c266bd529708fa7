"""The trainer's torchrun launcher: the exit code a distributed pod reports.

The first tests check the choice of exit code from the workers' records.  The
others run the launcher for real: one torchrun agent with two worker
processes, c10d on 127.0.0.1 and gloo.  The workers run the trainer on the
S&P 500 daily bars from ``arch``, or a small script that exits with the codes
that the test chooses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml

from torchrun_support import child_environment, free_port

from quanttrain.trainer import launcher
from quanttrain.trainer.entrypoint import exit_status
from quanttrain.trainer.summary import EXIT_CONFIG_ERROR, EXIT_GATE_FAILED, EXIT_OK, EXIT_RETRYABLE

# Upper bound on one launcher run, so that a broken test fails instead of hanging.
RUN_TIMEOUT = 150


def _record(folder: Path, rank: int, code: int, attempt: int = 0) -> None:
    environ = {launcher.EXIT_CODE_DIR_ENV: str(folder), "RANK": str(rank), "TORCHELASTIC_RESTART_COUNT": str(attempt)}
    assert launcher.record_exit_code(code, environ)


# --- choosing the exit code ------------------------------------------------------------------


def test_rank_zero_permanent_code_wins_over_other_ranks():
    code, explanation = launcher.choose_exit_code(EXIT_RETRYABLE, {0: EXIT_GATE_FAILED, 1: EXIT_CONFIG_ERROR})
    assert code == EXIT_GATE_FAILED
    assert explanation == (
        "rank 0 recorded exit code 3 (performance gate failed); exiting with 3 instead of torchrun's 1"
    )


def test_lowest_rank_permanent_code_wins():
    code, _ = launcher.choose_exit_code(EXIT_RETRYABLE, {0: EXIT_RETRYABLE, 2: EXIT_GATE_FAILED, 1: EXIT_CONFIG_ERROR})
    assert code == EXIT_CONFIG_ERROR


@pytest.mark.parametrize("torchrun_code", [EXIT_OK, EXIT_RETRYABLE])
def test_torchrun_code_without_permanent_record(torchrun_code):
    code, _ = launcher.choose_exit_code(torchrun_code, {0: EXIT_RETRYABLE, 1: EXIT_OK})
    assert code == torchrun_code


def test_lost_ranks_without_records_keep_torchrun_failure():
    assert launcher.choose_exit_code(EXIT_RETRYABLE, {}) == (
        EXIT_RETRYABLE, "no worker recorded a permanent exit code; exiting with torchrun's 1",
    )


# --- the records the workers write ------------------------------------------------------------


def test_records_are_read_by_rank(tmp_path):
    _record(tmp_path, 0, EXIT_GATE_FAILED)
    _record(tmp_path, 1, EXIT_OK)
    assert launcher.read_exit_codes(tmp_path) == {0: EXIT_GATE_FAILED, 1: EXIT_OK}


def test_records_of_earlier_attempts_are_ignored(tmp_path):
    # torchrun restarted the workers and the ranks moved: rank 1's record is from the first attempt.
    _record(tmp_path, 1, EXIT_CONFIG_ERROR, attempt=0)
    _record(tmp_path, 0, EXIT_OK, attempt=1)
    assert launcher.read_exit_codes(tmp_path) == {0: EXIT_OK}


def test_unreadable_record_is_ignored(tmp_path):
    _record(tmp_path, 0, EXIT_GATE_FAILED)
    (tmp_path / "rank-1").write_text("{not json", encoding="utf-8")
    assert launcher.read_exit_codes(tmp_path) == {0: EXIT_GATE_FAILED}


def test_nothing_is_recorded_outside_the_launcher(tmp_path):
    assert not launcher.record_exit_code(EXIT_GATE_FAILED, {"RANK": "0"})
    assert list(tmp_path.iterdir()) == []


def test_worker_exits_zero_after_recording_a_permanent_code(tmp_path, monkeypatch):
    monkeypatch.setenv(launcher.EXIT_CODE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "1")
    assert exit_status(EXIT_GATE_FAILED) == EXIT_OK
    assert launcher.read_exit_codes(tmp_path) == {1: EXIT_GATE_FAILED}


def test_worker_keeps_a_retryable_code_for_torchrun(tmp_path, monkeypatch):
    monkeypatch.setenv(launcher.EXIT_CODE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("RANK", "0")
    assert exit_status(EXIT_RETRYABLE) == EXIT_RETRYABLE
    assert launcher.read_exit_codes(tmp_path) == {0: EXIT_RETRYABLE}


def test_worker_outside_the_launcher_keeps_its_code(monkeypatch):
    monkeypatch.delenv(launcher.EXIT_CODE_DIR_ENV, raising=False)
    assert exit_status(EXIT_GATE_FAILED) == EXIT_GATE_FAILED


# --- the launcher under real torchrun ---------------------------------------------------------


def _launch(folder: Path, *worker: str) -> subprocess.CompletedProcess[str]:
    """Run the launcher as the operator's pods do, on one node with two workers."""
    command = [
        sys.executable, "-m", "quanttrain.trainer.launcher", "--nnodes=1", "--nproc-per-node=2",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}", f"--rdzv-id={uuid.uuid4()}",
        "--rdzv-conf=join_timeout=60,read_timeout=30", "--max-restarts=0", "--monitor-interval=0.5",
        *worker,
    ]
    return subprocess.run(command, cwd=folder, env=child_environment(60), capture_output=True, text=True,
                          timeout=RUN_TIMEOUT, check=False)


@pytest.fixture(scope="module")
def bars_folder(tmp_path_factory) -> Path:
    from quanttrain.trainer.market_data import export_market_data

    folder = tmp_path_factory.mktemp("launcher")
    export_market_data(folder)
    return folder


def _spec(folder: Path, name: str, training: dict, split_ratio: float = 0.7) -> Path:
    spec = {
        "strategy": {
            "name": name, "modelType": "RANDOM_FOREST", "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "sp500_daily.csv", "modelPath": name, "confidenceThreshold": 0.55,
            "trainingWindowDays": 120, "predictionHorizonMinutes": 1440,
        },
        "training": {"hyperparameterOptimization": "NONE", "modelParameters": {"n_estimators": 10, "max_depth": 3},
                     "cvFolds": 2, "overfittingDetection": False, "randomSeed": 11, **training},
        "features": {"targetVariable": "direction", "featureColumns": ["rsi", "close"],
                     "trainSplitRatio": split_ratio, "validationSplitRatio": 0.15},
        "indicators": [{"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "lookbackPeriod": 14}],
        "distributed": {"enabled": True, "nodes": 1, "procsPerNode": 2},
    }
    document = {"apiVersion": "quanttrain.io/v1alpha1", "kind": "MLTrainingJob",
                "metadata": {"name": name}, "spec": spec}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def _train(folder: Path, spec: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    termination_log = folder / f"termination-{spec.stem}.txt"
    result = _launch(folder, "-m", "quanttrain.trainer", "--spec", str(spec), "--registry", str(folder / "registry"),
                     "--termination-log", str(termination_log))
    return result, termination_log


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_launcher_exits_with_the_gate_failure_code(bars_folder):
    spec = _spec(bars_folder, "sp500-gate", {"minAccuracyThreshold": 0.99})
    result, termination_log = _train(bars_folder, spec)
    assert result.returncode == EXIT_GATE_FAILED, result.stderr[-3000:]
    assert "rank 0 recorded exit code 3 (performance gate failed); exiting with 3" in result.stderr
    assert json.loads(termination_log.read_text(encoding="utf-8"))["gate"]["passed"] is False


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_launcher_exits_with_the_invalid_spec_code(bars_folder):
    spec = _spec(bars_folder, "sp500-invalid", {}, split_ratio=1.5)
    result, termination_log = _train(bars_folder, spec)
    assert result.returncode == EXIT_CONFIG_ERROR, result.stderr[-3000:]
    assert "spec.features.trainSplitRatio" in termination_log.read_text(encoding="utf-8")


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_launcher_exits_zero_when_the_model_passes(bars_folder):
    spec = _spec(bars_folder, "sp500-pass", {"minAccuracyThreshold": 0.0})
    result, termination_log = _train(bars_folder, spec)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    assert json.loads(termination_log.read_text(encoding="utf-8"))["gate"]["passed"] is True
    assert (bars_folder / "registry" / "sp500-pass" / "1").is_dir()


# A worker that exits as the trainer's entry point does, with the code given for its rank.
WORKER = textwrap.dedent("""
    import os, sys
    from quanttrain.trainer.entrypoint import exit_status
    sys.exit(exit_status(int(sys.argv[1 + int(os.environ["RANK"])])))
""")


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 30)
@pytest.mark.parametrize(("codes", "expected"), [
    ((EXIT_RETRYABLE, EXIT_OK), EXIT_RETRYABLE),
    ((EXIT_RETRYABLE, EXIT_CONFIG_ERROR), EXIT_CONFIG_ERROR),
])
def test_launcher_maps_failed_workers(tmp_path, codes, expected):
    script = tmp_path / "worker.py"
    script.write_text(WORKER, encoding="utf-8")
    result = _launch(tmp_path, str(script), *map(str, codes))
    assert result.returncode == expected, result.stderr[-3000:]
    assert "torchrun's 1" in result.stderr, "torchrun reports the failed worker"
