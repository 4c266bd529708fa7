"""``quanttrain train`` and ``quanttrain models`` on the example workbooks and real S&P 500 bars."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from quanttrain.operator.cli import main
from quanttrain.trainer.market_data import export_market_data
from quanttrain.trainer.summary import EXIT_CONFIG_ERROR, EXIT_GATE_FAILED, EXIT_OK

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WORKBOOKS = sorted(EXAMPLES.glob("ML_CONFIG_*_1.0.0.xlsx"))


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A working directory laid out like the project: workbooks, with the data under examples/data."""
    root = tmp_path_factory.mktemp("project")
    (root / "examples").mkdir()
    for workbook in WORKBOOKS:
        shutil.copy(workbook, root / "examples" / workbook.name)
    export_market_data(root / "examples" / "data")
    return root


@pytest.fixture(scope="module")
def trained(project):
    """Train the first example strategy once; return its exit status and printed output."""
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(project)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main(["train", *[f"examples/{path.name}" for path in WORKBOOKS], "--strategy", "SP500 Momentum RF",
                       "--registry", "registry", "--output", "out/result.json"])
    monkeypatch.undo()
    return status, buffer.getvalue()


def test_train_exits_zero_for_passing_strategy(trained):
    status, _ = trained
    assert status == EXIT_OK


def test_train_prints_metrics_beside_baselines(trained):
    _, output = trained
    header = next(line for line in output.splitlines() if line.startswith("metric"))
    assert header.split() == ["metric", "model", "majority", "persistence"]
    assert any(line.startswith("accuracy ") and len(line.split()) == 4 for line in output.splitlines())


def test_train_prints_the_final_fit_period(trained):
    _, output = trained
    line = next(line for line in output.splitlines() if line.startswith("final model fitted on "))
    assert line.split()[5] == "rows"
    assert "from 2015-" in line


def test_train_prints_parameters_gate_and_model(trained):
    _, output = trained
    assert "best parameters: max_depth=5, n_estimators=200" in output
    assert "gate: passed" in output
    assert "model: file://" in output
    assert "sp500-momentum-rf/1 (version 1" in output


def test_train_writes_the_result_file(trained, project):
    result = json.loads((project / "out" / "result.json").read_text())
    assert result["strategyKey"] == "sp500-momentum-rf"


def test_models_list_shows_the_version(trained, project, capsys):
    assert main(["models", "--registry", str(project / "registry"), "list"]) == EXIT_OK
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows[0][:2] == ["sp500-momentum-rf", "1"]


def test_models_promote_then_show_by_alias(trained, project, capsys):
    registry = str(project / "registry")
    assert main(["models", "--registry", registry, "promote", "sp500-momentum-rf", "1", "--alias", "production"]) == 0
    capsys.readouterr()
    assert main(["models", "--registry", registry, "show", "SP500 Momentum RF", "--alias", "production"]) == 0
    metadata = json.loads(capsys.readouterr().out)
    assert metadata["version"] == "1"
    assert metadata["aliases"] == ["production"]


def test_models_show_unknown_version_fails(trained, project, capsys):
    status = main(["models", "--registry", str(project / "registry"), "show", "sp500-momentum-rf", "--version", "9"])
    assert status != EXIT_OK
    assert "no version '9'" in capsys.readouterr().err


def test_train_unknown_strategy_exits_two(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    status = main(["train", *[f"examples/{path.name}" for path in WORKBOOKS], "--strategy", "No Such Strategy"])
    assert status == EXIT_CONFIG_ERROR
    assert "no strategy named 'No Such Strategy'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def failed(project, tmp_path_factory):
    """Train a job whose gate fails (Min Accuracy Threshold 0.99); return its status, output and registry."""
    folder = tmp_path_factory.mktemp("failed")
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.chdir(project)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["convert", *[f"examples/{path.name}" for path in WORKBOOKS], "--output-dir", str(folder)]) == 0
    job_file = folder / "sp500-momentum-rf.yaml"
    job = yaml.safe_load(job_file.read_text())
    job["spec"]["training"].update({"minAccuracyThreshold": 0.99, "cvFolds": 2,
                                    "modelParameters": {"n_estimators": 20, "max_depth": 3}})
    job_file.write_text(yaml.safe_dump(job))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        status = main(["train", str(job_file), "--registry", str(folder / "registry")])
    monkeypatch.undo()
    return status, buffer.getvalue(), folder / "registry"


def test_train_job_yaml_with_failed_gate_exits_three(failed):
    status, output, _ = failed
    assert status == EXIT_GATE_FAILED
    assert "gate: FAILED: test accuracy" in output


def test_models_promote_rejects_failed_gate(failed, capsys):
    _, _, registry = failed
    status = main(["models", "promote", "sp500-momentum-rf", "1", "--alias", "production", "--registry", str(registry)])
    error = capsys.readouterr().err
    assert status == EXIT_CONFIG_ERROR
    assert "version 1" in error
    assert "below Min Accuracy Threshold 0.9900" in error
    assert "--force" in error


def test_models_promote_with_force_sets_alias(failed, capsys):
    _, _, registry = failed
    status = main(["models", "promote", "sp500-momentum-rf", "1", "--alias", "staging", "--force",
                   "--registry", str(registry)])
    assert status == EXIT_OK
    assert "alias staging now points at version 1" in capsys.readouterr().out


def test_models_list_accepts_registry_after_the_action(trained, project, capsys):
    assert main(["models", "list", "--registry", str(project / "registry")]) == EXIT_OK
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows[0][:2] == ["sp500-momentum-rf", "1"]


def test_models_list_missing_registry_folder_exits_two(tmp_path, capsys):
    missing = tmp_path / "no-such-registry"
    assert main(["models", "list", "--registry", str(missing)]) == EXIT_CONFIG_ERROR
    assert f"registry folder not found: {missing}" in capsys.readouterr().err


def test_models_promote_unknown_version_exits_two(trained, project, capsys):
    status = main(["models", "promote", "sp500-momentum-rf", "9", "--alias", "production",
                   "--registry", str(project / "registry")])
    assert status == EXIT_CONFIG_ERROR
    assert "its versions: 1" in capsys.readouterr().err


def test_models_show_into_closed_pipe_ends_quietly(trained, project):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte, as after `| head` has read enough
    with os.fdopen(write_end, "wb") as closed_stdout:
        finished = subprocess.run(
            [sys.executable, "-m", "quanttrain.operator.cli", "models", "show", "sp500-momentum-rf",
             "--registry", str(project / "registry")],
            stdout=closed_stdout, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    assert "Traceback" not in finished.stderr
    assert "BrokenPipeError" not in finished.stderr
