"""The template, validate and convert subcommands, in process and once as a real process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest
import yaml

from quanttrain.operator.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NAMES = [f"ML_CONFIG_{kind}_1.0.0.xlsx" for kind in ("STRATEGY", "PORTFOLIO", "INDICATORS")]
JOB_FILES = ["sp500-momentum-rf.yaml", "sp500-signal-lstm.yaml", "sp500-trend-xgb.yaml",
             "sp500-volatility-svm.yaml"]


@pytest.fixture
def workbooks(tmp_path):
    folder = tmp_path / "workbooks"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(EXAMPLES / name, folder / name)
    return [str(folder / name) for name in NAMES]


@pytest.fixture
def broken(workbooks):
    """The examples with Confidence Threshold 1.2 and Model Type GBM on the first strategy."""
    workbook = openpyxl.load_workbook(workbooks[0])
    workbook["Strategy"]["G2"] = 1.2
    workbook["Strategy"]["B2"] = "GBM"
    workbook.save(workbooks[0])
    return workbooks


def test_validate_accepts_examples(workbooks, capsys):
    status = main(["validate", *workbooks])

    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0] == "OK 'SP500 Momentum RF' -> sp500-momentum-rf (RANDOM_FOREST, PRICE_DIRECTION, 5 indicator(s))"
    assert len(lines) == 4


def test_validate_reports_both_cells(broken, capsys):
    status = main(["validate", *broken])

    errors = capsys.readouterr().err.splitlines()
    assert status == 1
    assert errors[0] == (f"{broken[0]}: Strategy!B2: Model Type 'GBM' is not allowed; "
                         "choose one of RANDOM_FOREST, XGB, LSTM, SVM")
    assert errors[1].startswith(f"{broken[0]}: Strategy!G2: Confidence Threshold 1.2 is invalid")
    assert errors[2] == "2 problem(s) found; the workbooks are not valid"


def test_validate_reports_missing_file_once(tmp_path, capsys):
    missing = str(tmp_path / "missing.xlsx")

    status = main(["validate", missing])

    assert status == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{missing}: file not found; check the path", "1 problem(s) found; the workbooks are not valid"]


def test_convert_and_template_say_wrote(workbooks, tmp_path, capsys):
    main(["template", str(tmp_path / "templates")])
    main(["convert", *workbooks, "--output-dir", str(tmp_path / "jobs")])

    verbs = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert verbs == {"wrote"}


def test_convert_writes_one_file_per_strategy(workbooks, tmp_path):
    status = main(["convert", *workbooks, "--output-dir", str(tmp_path / "jobs"), "--namespace", "trading"])

    document = yaml.safe_load((tmp_path / "jobs" / "sp500-trend-xgb.yaml").read_text())
    assert status == 0
    assert sorted(path.name for path in (tmp_path / "jobs").iterdir()) == JOB_FILES
    assert document["metadata"]["namespace"] == "trading"


def test_convert_writes_nothing_on_error(broken, tmp_path, capsys):
    status = main(["convert", *broken, "--output-dir", str(tmp_path / "jobs")])

    assert status == 1
    assert not (tmp_path / "jobs").exists()
    assert capsys.readouterr().err.splitlines()[-1] == "2 problem(s) found; nothing was written"


def test_convert_leaves_earlier_files_on_error(workbooks, tmp_path):
    output = tmp_path / "jobs"
    main(["convert", *workbooks, "--output-dir", str(output)])
    before = {path.name: path.read_bytes() for path in output.iterdir()}
    workbook = openpyxl.load_workbook(workbooks[0])
    workbook["Strategy"]["G3"] = 0.7
    workbook["Strategy"]["B2"] = "GBM"
    workbook.save(workbooks[0])

    status = main(["convert", *workbooks, "--output-dir", str(output)])

    assert status == 1
    assert {path.name: path.read_bytes() for path in output.iterdir()} == before


def test_convert_check_is_clean_after_convert(workbooks, tmp_path, capsys):
    output = str(tmp_path / "jobs")
    main(["convert", *workbooks, "--output-dir", output])
    capsys.readouterr()

    status = main(["convert", *workbooks, "--output-dir", output, "--check"])

    assert status == 0
    assert capsys.readouterr().out == f"{output}: 4 file(s) in step with the workbooks\n"


def test_convert_check_prints_diff_and_writes_nothing(workbooks, tmp_path, capsys):
    output = tmp_path / "jobs"
    main(["convert", *workbooks, "--output-dir", str(output)])
    (output / "sp500-trend-xgb.yaml").unlink()
    capsys.readouterr()

    status = main(["convert", *workbooks, "--output-dir", str(output), "--check"])

    assert status == 1
    assert f"+++ {output / 'sp500-trend-xgb.yaml'}" in capsys.readouterr().out
    assert not (output / "sp500-trend-xgb.yaml").exists()


def test_convert_reports_unwritable_output(workbooks, tmp_path, capsys):
    (tmp_path / "jobs").write_text("a file, not a folder")

    status = main(["convert", *workbooks, "--output-dir", str(tmp_path / "jobs")])

    assert status == 1
    assert capsys.readouterr().err.startswith(f"quanttrain convert: cannot write to {tmp_path / 'jobs'}")


def test_convert_rejects_invalid_namespace(workbooks, tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["convert", *workbooks, "--output-dir", str(tmp_path), "--namespace", "Trading_Desk"])

    assert caught.value.code == 2


def test_template_refuses_existing_files_without_force(tmp_path, capsys):
    assert main(["template", str(tmp_path)]) == 0
    first = (tmp_path / NAMES[0]).read_bytes()

    status = main(["template", str(tmp_path)])

    assert status == 1
    assert "pass --force to overwrite" in capsys.readouterr().err
    assert (tmp_path / NAMES[0]).read_bytes() == first


def test_template_overwrites_with_force(tmp_path):
    main(["template", str(tmp_path)])
    (tmp_path / NAMES[1]).write_bytes(b"")

    assert main(["template", str(tmp_path), "--force"]) == 0
    assert openpyxl.load_workbook(tmp_path / NAMES[1]).sheetnames == ["Portfolio", "Risk", "Allocation"]


def test_workbook_commands_skip_training_libraries():
    code = ("import sys, quanttrain.operator.commands_workbook, quanttrain.operator.job_inputs; "
            "print(sorted({'torch', 'xgboost', 'sklearn', 'skopt', 'pandas', 'talib'} & set(sys.modules)))")

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert result.stdout.strip() == "[]"


def test_console_script_validates_and_converts(broken, tmp_path):
    script = Path(sys.executable).with_name("quanttrain")

    validate = subprocess.run([str(script), "validate", *broken], capture_output=True, text=True,
                              cwd=tmp_path, timeout=120)
    convert = subprocess.run([str(script), "convert", *broken, "--output-dir", "jobs"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=120)

    assert validate.returncode == 1
    assert "Strategy!B2" in validate.stderr
    assert "Strategy!G2" in validate.stderr
    assert convert.returncode == 1
    assert not (tmp_path / "jobs").exists()
