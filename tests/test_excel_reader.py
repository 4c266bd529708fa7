"""The Excel reader: typing, ranges, booleans, percentages, formulas, headers and sheets, by cell."""

from __future__ import annotations

import re
import shutil
import zipfile
from pathlib import Path

import openpyxl
import pytest
from openpyxl.utils import get_column_letter

from quanttrain.operator.convert import build_jobs
from quanttrain.operator.excel_reader import read_workbooks
from quanttrain.operator.workbook import SHEETS, Column, Kind, Sheet

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KINDS = ("STRATEGY", "PORTFOLIO", "INDICATORS")


def example_paths(directory: Path) -> list[str]:
    """Copy the example workbooks into ``directory`` and return their paths."""
    paths = []
    for kind in KINDS:
        target = directory / f"ML_CONFIG_{kind}_1.0.0.xlsx"
        shutil.copy(EXAMPLES / target.name, target)
        paths.append(str(target))
    return paths


def edit(path: str, sheet: str, cells: dict[str, object], number_formats: dict[str, str] | None = None) -> None:
    workbook = openpyxl.load_workbook(path)
    for ref, value in cells.items():
        workbook[sheet][ref] = value
    for ref, number_format in (number_formats or {}).items():
        workbook[sheet][ref].number_format = number_format
    workbook.save(path)


def cell_of(sheet: Sheet, header: str, row: int = 2) -> str:
    index = [column.header for column in sheet.columns].index(header)
    return f"{get_column_letter(index + 1)}{row}"


def problems_at(reading_or_problems, sheet: str, cell: str) -> list[str]:
    problems = getattr(reading_or_problems, "problems", reading_or_problems)
    return [problem.message for problem in problems if problem.sheet == sheet and problem.cell == cell]


def jobs_and_problems(paths):
    return build_jobs(read_workbooks(paths))


@pytest.fixture
def paths(tmp_path):
    return example_paths(tmp_path)


def test_examples_read_without_problems(paths):
    reading = read_workbooks(paths)

    assert [str(problem) for problem in reading.problems] == []
    assert len(reading.rows("strategy")) == 4


# --- every column rejects a bad value, reported at its cell -------------------------


def bad_value(column: Column) -> tuple[object, str] | None:
    """Return a value the column must reject and a phrase its message contains, or None."""
    bounds = column.bounds()
    if column.kind is Kind.CHOICE:
        return "BOGUS", "is not allowed"
    if column.kind is Kind.BOOLEAN:
        return "maybe", "is not a boolean"
    if column.kind in (Kind.INTEGER, Kind.NUMBER) and bounds.high is not None:
        return bounds.high + 1000, "is invalid"
    if column.kind is Kind.NUMBER:
        return "abc", "is not a number"
    if column.kind is Kind.JSON:
        return "{bad", "is not valid JSON"
    if column.kind is Kind.MAPPING:
        return "timeperiod", "is not name=value"
    if column.kind is Kind.TEXT and bounds.max_length is not None:
        return "x" * (bounds.max_length + 1), "is invalid"
    return None


BAD_CELLS = [
    (sheet, column) for sheet in SHEETS for column in sheet.columns if bad_value(column) is not None
]


@pytest.fixture(scope="module")
def bad_reading(tmp_path_factory):
    """The examples with one bad value in the first data row of every checked column, read once."""
    paths = example_paths(tmp_path_factory.mktemp("bad"))
    for sheet, column in BAD_CELLS:
        path = paths[KINDS.index(sheet.workbook)]
        edit(path, sheet.name, {cell_of(sheet, column.header): bad_value(column)[0]})
    return read_workbooks(paths)


@pytest.mark.parametrize(("sheet", "column"), BAD_CELLS, ids=[f"{s.name}-{c.header}" for s, c in BAD_CELLS])
def test_bad_value_is_reported_at_its_cell(bad_reading, sheet, column):
    value, phrase = bad_value(column)

    messages = problems_at(bad_reading, sheet.name, cell_of(sheet, column.header))

    assert len(messages) == 1, messages
    assert messages[0].startswith(column.header)
    assert phrase in messages[0]


def test_range_error_names_allowed_range(paths):
    edit(paths[0], "Strategy", {"G2": 1.2})

    messages = problems_at(read_workbooks(paths), "Strategy", "G2")

    assert messages == ["Confidence Threshold 1.2 is invalid: Input should be less than or equal to 0.99; "
                        "allowed: a number from 0.5 to 0.99"]


def test_fraction_in_whole_number_column_is_rejected(paths):
    edit(paths[0], "Strategy", {"H2": 30.5})

    messages = problems_at(read_workbooks(paths), "Strategy", "H2")

    assert messages == ["Training Window 30.5 is not a whole number; write a whole number from 30 to 365"]


def test_numbers_written_as_text_are_read(paths):
    edit(paths[0], "Strategy", {"H2": " 200 ", "G2": "0.6"})

    jobs, problems = jobs_and_problems(paths)

    assert problems == []
    assert jobs[0].spec.strategy.training_window_days == 200
    assert jobs[0].spec.strategy.confidence_threshold == 0.6


def test_missing_required_value_is_an_error(paths):
    edit(paths[0], "Strategy", {"D3": "   "})

    messages = problems_at(read_workbooks(paths), "Strategy", "D3")

    assert messages == ["Training Dataset is required; write a file path or name"]


def test_strings_and_choices_are_trimmed_and_case_insensitive(paths):
    edit(paths[0], "Strategy", {"B2": "  random_forest ", "D2": "  data/bars.csv  "})

    jobs, problems = jobs_and_problems(paths)

    assert problems == []
    assert jobs[0].spec.strategy.model_type.value == "RANDOM_FOREST"
    assert jobs[0].spec.strategy.training_dataset == "data/bars.csv"


def test_wrong_choice_lists_allowed_values(paths):
    edit(paths[0], "Strategy", {"B2": "GBM"})

    messages = problems_at(read_workbooks(paths), "Strategy", "B2")

    assert messages == ["Model Type 'GBM' is not allowed; choose one of RANDOM_FOREST, XGB, LSTM, SVM"]


# --- booleans ----------------------------------------------------------------------

# Early Stopping defaults to TRUE, so a blank read as FALSE would show.
EARLY_STOPPING = "J2"


@pytest.mark.parametrize(("cell", "expected"), [
    (None, True), (False, False), ("FALSE", False), ("no", False), (" Yes ", True), (0, False), ("1", True),
])
def test_boolean_forms(paths, cell, expected):
    edit(paths[0], "Models", {EARLY_STOPPING: cell})

    jobs, problems = jobs_and_problems(paths)

    assert problems == []
    assert jobs[0].spec.training.early_stopping is expected


def test_boolean_rejects_other_words(paths):
    edit(paths[0], "Models", {EARLY_STOPPING: "maybe"})

    messages = problems_at(read_workbooks(paths), "Models", EARLY_STOPPING)

    assert messages == ["Early Stopping 'maybe' is not a boolean; write TRUE or FALSE (Yes/No and 1/0 also work)"]


def test_boolean_rejects_other_numbers(paths):
    edit(paths[0], "Models", {EARLY_STOPPING: 2})

    assert len(problems_at(read_workbooks(paths), "Models", EARLY_STOPPING)) == 1


# --- percentages ---------------------------------------------------------------------

STOP_LOSS = "G2"


def stop_loss(paths) -> float:
    jobs, problems = jobs_and_problems(paths)
    assert problems == []
    return jobs[0].spec.portfolio.stop_loss_pct


def test_percent_formatted_cell_is_a_fraction(paths):
    edit(paths[1], "Portfolio", {STOP_LOSS: 0.05}, {STOP_LOSS: "0%"})

    assert stop_loss(paths) == 0.05


def test_percent_text_is_a_fraction(paths):
    edit(paths[1], "Portfolio", {STOP_LOSS: " 5 %"})

    assert stop_loss(paths) == pytest.approx(0.05)


def test_plain_percent_number_gets_a_hint(paths):
    edit(paths[1], "Portfolio", {STOP_LOSS: 5})

    messages = problems_at(read_workbooks(paths), "Portfolio", STOP_LOSS)

    assert len(messages) == 1
    assert messages[0].endswith("did you mean 5%? write 0.05 or 5%")


def test_percent_formatted_out_of_range_has_no_hint(paths):
    edit(paths[1], "Portfolio", {STOP_LOSS: 5}, {STOP_LOSS: "0%"})

    messages = problems_at(read_workbooks(paths), "Portfolio", STOP_LOSS)

    assert len(messages) == 1
    assert "did you mean" not in messages[0]


# --- formulas ------------------------------------------------------------------------


def test_formula_without_cached_value_is_an_error(paths):
    edit(paths[0], "Strategy", {"G2": "=0.5+0.05"})

    messages = problems_at(read_workbooks(paths), "Strategy", "G2")

    assert len(messages) == 1
    assert "holds the formula '=0.5+0.05' with no cached value" in messages[0]


def store_cached_value(path: str, sheet_xml: str, formula: str, value: str) -> None:
    """Write the cached result of a formula, as Excel does when it saves (openpyxl cannot)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    text = members[sheet_xml].decode()
    text, count = re.subn(f"<f>{re.escape(formula)}</f><v ?/>", f"<f>{formula}</f><v>{value}</v>", text)
    assert count == 1
    members[sheet_xml] = text.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_formula_with_cached_value_uses_it(paths):
    edit(paths[0], "Strategy", {"G2": "=0.5+0.1"})
    store_cached_value(paths[0], "xl/worksheets/sheet1.xml", "0.5+0.1", "0.6")

    jobs, problems = jobs_and_problems(paths)

    assert problems == []
    assert jobs[0].spec.strategy.confidence_threshold == 0.6


# --- rows, headers and sheets --------------------------------------------------------


def test_empty_rows_are_skipped_anywhere(paths):
    workbook = openpyxl.load_workbook(paths[0])
    worksheet = workbook["Strategy"]
    worksheet.insert_rows(1, 2)  # before the header
    worksheet.insert_rows(5, 3)  # between strategies
    worksheet["C5"] = "   "  # whitespace only counts as empty
    workbook.save(paths[0])

    jobs, problems = jobs_and_problems(paths)

    assert problems == []
    assert [job.name for job in jobs] == [
        "sp500-momentum-rf", "sp500-trend-xgb", "sp500-volatility-svm", "sp500-signal-lstm"]


def test_unknown_header_is_an_error_at_its_cell(paths):
    edit(paths[0], "Strategy", {"K1": "Colour"})

    messages = problems_at(read_workbooks(paths), "Strategy", "K1")

    assert len(messages) == 1
    assert messages[0].startswith("unknown column 'Colour'")


def test_unknown_header_suggests_close_match(paths):
    edit(paths[0], "Strategy", {"B1": "Model Typ"})

    messages = problems_at(read_workbooks(paths), "Strategy", "B1")

    assert "did you mean 'Model Type'?" in messages[0]


def test_notes_columns_are_ignored(paths):
    edit(paths[0], "Strategy", {"K1": "Notes (desk)", "K2": "anything", "L1": "# owner", "L3": 42})

    assert read_workbooks(paths).problems == []


def test_header_is_normalised(paths):
    edit(paths[0], "Strategy", {"A1": " strategy\u00a0 NAME ", "B1": "ＭＯＤＥＬ TYPE"})

    assert read_workbooks(paths).problems == []


def test_missing_columns_are_one_header_error(paths):
    workbook = openpyxl.load_workbook(paths[0])
    workbook["Strategy"].delete_cols(2, 2)  # Model Type and Prediction Target
    workbook.save(paths[0])

    messages = problems_at(read_workbooks(paths), "Strategy", "1:1")

    assert messages == ["missing required column(s): Model Type, Prediction Target; add them to the header row"]


def test_missing_optional_column_uses_default(paths):
    workbook = openpyxl.load_workbook(paths[0])
    workbook["Strategy"].delete_cols(10)  # Real-time Mode
    workbook.save(paths[0])

    jobs, problems = jobs_and_problems(paths)

    assert problems == []
    assert jobs[3].spec.strategy.realtime_mode is False


def test_value_under_blank_header_is_an_error(paths):
    edit(paths[0], "Strategy", {"M2": "stray"})

    messages = problems_at(read_workbooks(paths), "Strategy", "M2")

    assert len(messages) == 1
    assert "which has no header" in messages[0]


def test_feature_columns_reject_repeated_names(paths):
    edit(paths[0], "Features", {"C2": "rsi, macd, RSI"})

    messages = problems_at(read_workbooks(paths), "Features", "C2")

    assert messages == ["Feature Columns 'rsi, macd, RSI' lists 'RSI' twice; list each name once"]


def test_json_error_names_cell_and_position(paths):
    edit(paths[0], "Models", {"H3": '{"max_depth": [2, 4,}'})

    messages = problems_at(read_workbooks(paths), "Models", "H3")

    assert messages == ["Search Space is not valid JSON: Expecting value at line 1 column 21 (character 21) "
                        "of '{\"max_depth\": [2, 4,}'"]


def test_json_must_be_an_object(paths):
    edit(paths[0], "Models", {"I2": "[1, 2]"})

    messages = problems_at(read_workbooks(paths), "Models", "I2")

    assert len(messages) == 1
    assert "is JSON but not an object" in messages[0]


def test_json_field_errors_name_the_key(paths):
    edit(paths[0], "Strategy", {"F2": '{"returnLags": [0]}'})

    messages = problems_at(read_workbooks(paths), "Strategy", "F2")

    assert len(messages) == 1
    assert "returnLags: return lags must be between 1 and 252 bars" in messages[0]


def test_search_space_errors_name_the_parameter(paths):
    edit(paths[0], "Models", {"H4": '{"C": 1.0, "kernel": ["rbf"]}'})

    messages = problems_at(read_workbooks(paths), "Models", "H4")

    assert len(messages) == 1
    assert messages[0].startswith("Search Space '{\"C\": 1.0, \"kernel\": [\"rbf\"]}' is invalid: "
                                  "C: Input should be a valid list, or a valid dictionary or instance of ParameterRange")


def test_search_space_error_keeps_the_closest_alternative(paths):
    edit(paths[0], "Models", {"H4": '{"gamma": {"low": 1}}'})

    messages = problems_at(read_workbooks(paths), "Models", "H4")

    assert messages == ["Search Space '{\"gamma\": {\"low\": 1}}' is invalid: gamma.high: Field required"]


def test_parameters_cell_takes_name_value_pairs(paths):
    edit(paths[2], "Indicators", {"E2": "timeperiod=10"})
    workbook = openpyxl.load_workbook(paths[2])
    workbook["Parameters"].delete_rows(2)  # the Parameters row that also sets rsi's timeperiod
    workbook.save(paths[2])

    jobs, problems = jobs_and_problems(paths)

    assert problems == []
    assert jobs[0].spec.indicators[0].parameters == {"timeperiod": 10}


def test_parameter_values_are_typed(paths):
    edit(paths[2], "Parameters", {"C2": "14", "C3": "TRUE", "C4": "2.5"})

    jobs, _ = jobs_and_problems(paths)

    indicators = {indicator.name: indicator.parameters for indicator in jobs[0].spec.indicators}
    assert indicators["rsi"]["timeperiod"] == 14
    assert indicators["macd"]["signalperiod"] is True
    assert indicators["bb_position"]["nbdev"] == 2.5


def test_one_workbook_with_every_sheet(paths, tmp_path):
    combined = openpyxl.Workbook()
    combined.remove(combined.active)
    for path in paths:
        for worksheet in openpyxl.load_workbook(path).worksheets:
            copy = combined.create_sheet(worksheet.title)
            for row in worksheet.iter_rows():
                for cell in row:
                    copy.cell(row=cell.row, column=cell.column, value=cell.value)
    single = tmp_path / "ML_CONFIG_ALL.xlsx"
    combined.save(single)

    jobs, problems = jobs_and_problems([str(single)])
    expected, _ = jobs_and_problems(paths)

    assert problems == []
    assert [job.spec for job in jobs] == [job.spec for job in expected]


def test_sheet_given_twice_is_an_error(paths):
    reading = read_workbooks(paths + [paths[0]])

    assert any("also appears in" in problem.message for problem in reading.problems)


def test_missing_required_sheet_is_an_error(paths):
    reading = read_workbooks(paths[1:])

    missing = [problem.sheet for problem in reading.problems if "not found" in problem.message]
    assert missing == ["Strategy", "Models", "Features"]


def test_unknown_sheet_with_content_is_an_error(paths):
    workbook = openpyxl.load_workbook(paths[1])
    workbook.create_sheet("Sheet1")  # empty: ignored
    workbook.create_sheet("Risks")["A1"] = "Strategy Name"
    workbook.save(paths[1])

    problems = read_workbooks(paths).problems

    assert [problem.sheet for problem in problems] == ["Risks"]


def test_unreadable_file_is_an_error(paths, tmp_path):
    broken = tmp_path / "broken.xlsx"
    broken.write_text("not a workbook")

    problems = read_workbooks(paths + [str(broken)]).problems

    assert [problem.file for problem in problems] == [str(broken)]


def test_missing_file_is_one_problem(paths, tmp_path):
    missing = str(tmp_path / "missing.xlsx")

    problems = read_workbooks([missing]).problems

    assert [(problem.file, problem.message) for problem in problems] == [(missing, "file not found; check the path")]


def test_unreadable_file_skips_missing_sheet_problems(paths, tmp_path):
    broken = tmp_path / "notes.txt"
    broken.write_text("not a workbook")

    problems = read_workbooks(paths[1:] + [str(broken)]).problems

    assert len(problems) == 1
    assert problems[0].message.startswith("cannot be read as an Excel workbook (.xlsx): ")
