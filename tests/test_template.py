"""The blank workbooks: the reader's sheets and headers, dropdowns, input limits, comments, docs."""

from __future__ import annotations

import runpy
import zipfile
from pathlib import Path

import openpyxl
import pytest
from openpyxl.utils import get_column_letter

from quanttrain.operator.convert import build_jobs
from quanttrain.operator.excel_reader import read_workbooks
from quanttrain.operator.template import LISTS_SHEET, ZIP_ENTRY_TIME, write_templates
from quanttrain.operator.workbook import SHEETS, WORKBOOKS, Kind, markdown_tables

DOCS = Path(__file__).resolve().parent.parent / "docs" / "excel.md"
EXAMPLES = DOCS.parent.parent / "examples"


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    return write_templates(tmp_path_factory.mktemp("templates"))


@pytest.fixture(scope="module")
def books(templates):
    return {path.name: openpyxl.load_workbook(path) for path in templates}


def worksheet_of(books, sheet):
    return books[f"ML_CONFIG_{sheet.workbook}_1.0.0.xlsx"][sheet.name]


def validations_by_column(worksheet) -> dict[str, set[str]]:
    """Return the validation types that cover row 2 of each column letter."""
    found: dict[str, set[str]] = {}
    for validation in worksheet.data_validations.dataValidation:
        for cell_range in validation.sqref.ranges:
            if cell_range.min_row <= 2 <= cell_range.max_row:
                for column in range(cell_range.min_col, cell_range.max_col + 1):
                    found.setdefault(get_column_letter(column), set()).add(validation.type)
    return found


def test_template_writes_three_workbooks(templates):
    assert [path.name for path in templates] == [
        "ML_CONFIG_STRATEGY_1.0.0.xlsx", "ML_CONFIG_PORTFOLIO_1.0.0.xlsx", "ML_CONFIG_INDICATORS_1.0.0.xlsx"]


@pytest.mark.parametrize("kind", list(WORKBOOKS))
def test_template_has_the_contract_sheets(books, kind):
    titles = [ws.title for ws in books[f"ML_CONFIG_{kind}_1.0.0.xlsx"].worksheets if ws.title != LISTS_SHEET]

    assert titles == [sheet.name for sheet in WORKBOOKS[kind]]


@pytest.mark.parametrize("sheet", SHEETS, ids=[sheet.name for sheet in SHEETS])
def test_template_headers_are_the_contract_columns(books, sheet):
    worksheet = worksheet_of(books, sheet)

    headers = [cell.value for cell in worksheet[1]]

    assert headers == [column.header for column in sheet.columns]


@pytest.mark.parametrize("sheet", SHEETS, ids=[sheet.name for sheet in SHEETS])
def test_every_header_has_a_comment(books, sheet):
    worksheet = worksheet_of(books, sheet)

    for index, column in enumerate(sheet.columns, start=1):
        comment = worksheet.cell(row=1, column=index).comment
        assert comment is not None, column.header
        assert comment.text == column.comment()


def test_comment_states_meaning_unit_range_and_default(books):
    comment = worksheet_of(books, SHEETS[0]).cell(row=1, column=8).comment.text

    assert comment.splitlines()[1:] == [
        "Unit: days.", "Allowed: a whole number from 30 to 365.", "Required."]


@pytest.mark.parametrize("sheet", SHEETS, ids=[sheet.name for sheet in SHEETS])
def test_enum_and_boolean_columns_have_dropdowns(books, sheet):
    found = validations_by_column(worksheet_of(books, sheet))

    for index, column in enumerate(sheet.columns, start=1):
        if column.kind in (Kind.CHOICE, Kind.BOOLEAN):
            assert found.get(get_column_letter(index)) == {"list"}, column.header


@pytest.mark.parametrize("sheet", SHEETS, ids=[sheet.name for sheet in SHEETS])
def test_ranged_numbers_have_input_limits(books, sheet):
    found = validations_by_column(worksheet_of(books, sheet))

    for index, column in enumerate(sheet.columns, start=1):
        if column.kind in (Kind.INTEGER, Kind.NUMBER) and column.bounds().low is not None:
            expected = "whole" if column.kind is Kind.INTEGER else "decimal"
            assert found.get(get_column_letter(index)) == {expected}, column.header


def test_calculation_method_dropdown_lists_known_methods(books):
    workbook = books["ML_CONFIG_INDICATORS_1.0.0.xlsx"]
    lists = workbook[LISTS_SHEET]

    names = [row[0] for row in lists.iter_rows(values_only=True)]

    assert lists.sheet_state == "hidden"
    assert {"RSI", "MACD", "BB_POSITION", "VOLUME_RATIO"} <= set(names)
    assert validations_by_column(workbook["Indicators"])["D"] == {"list"}


@pytest.mark.parametrize(("book", "sheet", "cell", "expected"), [
    ("INDICATORS", "Indicators", "D2", "Calculation Method: a TA-Lib function name such as RSI"),
    ("INDICATORS", "Parameters", "A2", "Indicator Name: the Indicator Name of a row on the Indicators sheet"),
    ("STRATEGY", "Models", "A2", "Strategy Name: the Strategy Name of a row on the Strategy sheet, or blank"),
])
def test_name_dropdowns_say_what_to_enter(books, book, sheet, cell, expected):
    worksheet = books[f"ML_CONFIG_{book}_1.0.0.xlsx"][sheet]
    validation = next(v for v in worksheet.data_validations.dataValidation if cell in v.sqref)

    assert validation.error.startswith(expected)
    assert validation.prompt == validation.error
    assert len(validation.error) <= 225


def test_template_names_one_existing_file_in_singular(tmp_path):
    paths = write_templates(tmp_path)
    for path in paths[1:]:
        path.unlink()

    with pytest.raises(FileExistsError) as raised:
        write_templates(tmp_path)
    assert str(raised.value) == f"{paths[0]} already exists; pass --force to overwrite"


def test_link_columns_offer_names_from_same_workbook(books):
    strategy_book = books["ML_CONFIG_STRATEGY_1.0.0.xlsx"]
    indicator_book = books["ML_CONFIG_INDICATORS_1.0.0.xlsx"]

    models = [v.formula1 for v in strategy_book["Models"].data_validations.dataValidation if "A2" in v.sqref]
    thresholds = [v.formula1 for v in indicator_book["Thresholds"].data_validations.dataValidation if "A2" in v.sqref]

    assert models == ["Strategy!$A$2:$A$1001"]
    assert thresholds == ["Indicators!$B$2:$B$1001"]


@pytest.mark.parametrize("sheet", SHEETS, ids=[sheet.name for sheet in SHEETS])
def test_header_row_is_frozen(books, sheet):
    assert worksheet_of(books, sheet).freeze_panes == "A2"


def test_template_reads_back_without_problems(templates):
    reading = read_workbooks([str(path) for path in templates])

    assert reading.problems == []
    assert set(reading.sheets) == {sheet.key for sheet in SHEETS}


def test_blank_template_asks_for_strategy_rows(templates):
    _, problems = build_jobs(read_workbooks([str(path) for path in templates]))

    assert [problem.message for problem in problems] == [
        "the Strategy sheet has no strategy rows; add one row per strategy"]


def test_template_refuses_to_overwrite(tmp_path):
    write_templates(tmp_path)

    with pytest.raises(FileExistsError):
        write_templates(tmp_path)


def test_template_overwrites_with_force(tmp_path):
    paths = write_templates(tmp_path)
    paths[0].write_bytes(b"old")

    write_templates(tmp_path, force=True)

    assert paths[0].read_bytes() != b"old"


def test_docs_list_every_column():
    text = DOCS.read_text(encoding="utf-8")

    assert markdown_tables() in text, "docs/excel.md is stale: run python -m quanttrain.operator.workbook docs/excel.md"


def test_templates_are_byte_reproducible(tmp_path):
    first = write_templates(tmp_path / "first")
    second = write_templates(tmp_path / "second")

    assert [path.read_bytes() for path in first] == [path.read_bytes() for path in second]


def test_template_carries_no_save_time(templates):
    with zipfile.ZipFile(templates[0]) as archive:
        times = {entry.date_time for entry in archive.infolist()}
        core = archive.read("docProps/core.xml").decode()

    assert times == {ZIP_ENTRY_TIME}
    assert '<dcterms:modified xsi:type="dcterms:W3CDTF">2024-01-01T00:00:00Z</dcterms:modified>' in core


def test_committed_examples_match_their_script(tmp_path):
    runpy.run_path(str(EXAMPLES / "make_workbooks.py"))["main"](tmp_path)

    for path in sorted(tmp_path.glob("*.xlsx")):
        assert path.read_bytes() == (EXAMPLES / path.name).read_bytes(), path.name
