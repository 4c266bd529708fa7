"""Blank workbooks that document the contract: every sheet and column, dropdowns, input limits, comments.

Everything comes from :mod:`quanttrain.operator.workbook`, so a template always
has the headers the reader expects.
"""

from __future__ import annotations

import datetime
import io
import re
import zipfile
from pathlib import Path

from openpyxl import Workbook
from openpyxl.comments import Comment
from openpyxl.styles import Alignment, Font, PatternFill
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.datavalidation import DataValidation
from openpyxl.worksheet.worksheet import Worksheet

from quanttrain.operator.workbook import (
    TEMPLATE_VERSION,
    WORKBOOKS,
    Column,
    Kind,
    Link,
    Sheet,
    sheet as contract_sheet,
    workbook_file_name,
)
from quanttrain.trainer.indicator_catalog import DERIVED_METHODS, methods

# Rows below the header that carry dropdowns and input limits.
VALIDATED_ROWS = 1000
# Hidden sheet listing the calculation methods: too many for an inline dropdown list,
# whose formula Excel caps at 255 characters.  The reader ignores sheets starting with "_".
LISTS_SHEET = "_Lists"
# Creation and modification date stored in the files, so that a rebuild gives the same bytes.
DOCUMENT_DATE = datetime.datetime(2024, 1, 1)
# The earliest time a zip entry can carry (MS-DOS time starts in 1980).
ZIP_ENTRY_TIME = (1980, 1, 1, 0, 0, 0)
# openpyxl 3.1 writes the time of the save here, whatever the workbook's properties contain.
_MODIFIED = re.compile(rb"(<dcterms:modified[^>]*>)[^<]*(</dcterms:modified>)")
HEADER_FILL = PatternFill("solid", fgColor="DDEBF7")


# Input prompts for the columns whose dropdown lists names but also takes typed text.
_LIST_HINTS = {
    "calculation method": "a TA-Lib function name such as RSI, MACD or ATR, or a derived method: "
                          + ", ".join(DERIVED_METHODS) + ". Pick one from the list or type it.",
    "strategy name": "the Strategy Name of a row on the Strategy sheet, or blank to apply this row "
                     "to every strategy.",
    "indicator name": "the Indicator Name of a row on the Indicators sheet.",
}


def _validation(column: Column, lists: dict[str, str]) -> DataValidation | None:
    """Return the dropdown or input limit for a column, or None when it takes free text."""
    bounds = column.bounds()
    hint = _LIST_HINTS.get(column.key) if column.key in lists else None
    message = f"{column.header}: {hint or column.allowed() + '.'}"
    if column.kind is Kind.CHOICE:
        validation = DataValidation(type="list", formula1='"' + ",".join(column.choices()) + '"')
    elif column.kind is Kind.BOOLEAN:
        validation = DataValidation(type="list", formula1='"TRUE,FALSE"')
    elif column.key in lists:
        # Warn instead of stop: a blank link or a name typed ahead is fine, and the reader checks it.
        validation = DataValidation(type="list", formula1=lists[column.key], errorStyle="warning")
    elif column.kind in (Kind.INTEGER, Kind.NUMBER) and bounds.low is not None and bounds.high is not None:
        kind = "whole" if column.kind is Kind.INTEGER else "decimal"
        validation = DataValidation(type=kind, operator="between",
                                    formula1=str(bounds.low), formula2=str(bounds.high))
    else:
        return None
    validation.allow_blank = True
    validation.showErrorMessage = True
    validation.error = message
    validation.errorTitle = f"Invalid {column.header}"
    validation.showInputMessage = True
    validation.prompt = message[:255]
    validation.promptTitle = column.header[:32]
    return validation


def _column_width(column: Column) -> float:
    if column.kind in (Kind.JSON, Kind.MAPPING, Kind.LIST, Kind.PATH):
        return 36
    return min(max(len(column.header) + 4, 14), 40)


def _name_range(sheet_name: str, header: str) -> str:
    """Return the range of a column's data rows, as a dropdown source."""
    columns = [column.header for column in contract_sheet(sheet_name).columns]
    letter = get_column_letter(columns.index(header) + 1)
    return f"{sheet_name}!${letter}$2:${letter}${VALIDATED_ROWS + 1}"


def _dropdown_lists(sheet: Sheet, sheets: tuple[Sheet, ...], method_range: str | None) -> dict[str, str]:
    """Return dropdown sources by column key: known methods, and names from a sheet of the same workbook."""
    names = {other.key for other in sheets}
    lists = {"calculation method": method_range} if method_range else {}
    if sheet.link is Link.STRATEGY and "strategy" in names:
        lists["strategy name"] = _name_range("Strategy", "Strategy Name")
    if sheet.link is Link.INDICATOR and "indicators" in names:
        lists["indicator name"] = _name_range("Indicators", "Indicator Name")
    return lists


def _write_sheet(worksheet: Worksheet, sheet: Sheet, lists: dict[str, str]) -> None:
    for index, column in enumerate(sheet.columns, start=1):
        letter = get_column_letter(index)
        cell = worksheet.cell(row=1, column=index, value=column.header)
        cell.font = Font(bold=True)
        cell.fill = HEADER_FILL
        cell.alignment = Alignment(vertical="top")
        text = column.comment()
        cell.comment = Comment(text, "quanttrain", width=360, height=40 + 16 * (len(text) // 50 + text.count("\n")))
        worksheet.column_dimensions[letter].width = _column_width(column)
        validation = _validation(column, lists)
        if validation is not None:
            worksheet.add_data_validation(validation)
            validation.add(f"{letter}2:{letter}{VALIDATED_ROWS + 1}")
    worksheet.freeze_panes = "A2"


def _write_lists(workbook: Workbook) -> str:
    """Add the hidden sheet of calculation method names; return the dropdown's range formula."""
    worksheet = workbook.create_sheet(LISTS_SHEET)
    names = sorted(methods())
    for row, name in enumerate(names, start=1):
        worksheet.cell(row=row, column=1, value=name)
    worksheet.sheet_state = "hidden"
    return f"'{LISTS_SHEET}'!$A$1:$A${len(names)}"


def build_workbook(kind: str) -> Workbook:
    """Build the blank workbook of one kind (STRATEGY, PORTFOLIO or INDICATORS)."""
    workbook = Workbook()
    workbook.remove(workbook.active)
    sheets = WORKBOOKS[kind]
    worksheets = [workbook.create_sheet(sheet.name) for sheet in sheets]
    method_range = _write_lists(workbook) if any(sheet.key == "indicators" for sheet in sheets) else None
    for worksheet, sheet in zip(worksheets, sheets):
        _write_sheet(worksheet, sheet, _dropdown_lists(sheet, sheets, method_range))
    workbook.active = 0
    workbook.properties.creator = "quanttrain"
    workbook.properties.created = DOCUMENT_DATE
    return workbook


def save_workbook(workbook: Workbook, path: Path) -> None:
    """Save a workbook so that the same content always gives the same bytes.

    openpyxl stamps the time of the save on the modified property and on every
    zip entry, so the archive is written again with fixed times.
    """
    buffer = io.BytesIO()
    workbook.save(buffer)
    stamp = DOCUMENT_DATE.strftime("%Y-%m-%dT%H:%M:%SZ").encode()
    output = io.BytesIO()
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "docProps/core.xml":
                data = _MODIFIED.sub(rb"\g<1>" + stamp + rb"\g<2>", data)
            fixed = zipfile.ZipInfo(entry.filename, date_time=ZIP_ENTRY_TIME)
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            target.writestr(fixed, data)
    path.write_bytes(output.getvalue())


def template_paths(directory: Path, version: str = TEMPLATE_VERSION) -> dict[str, Path]:
    return {kind: directory / workbook_file_name(kind, version) for kind in WORKBOOKS}


def write_templates(directory: Path, *, version: str = TEMPLATE_VERSION, force: bool = False) -> list[Path]:
    """Write the three blank workbooks; raise FileExistsError naming every existing file unless ``force``."""
    paths = template_paths(directory, version)
    existing = [str(path) for path in paths.values() if path.exists()]
    if existing and not force:
        verb = "already exists" if len(existing) == 1 else "already exist"
        raise FileExistsError(f"{', '.join(existing)} {verb}; pass --force to overwrite")
    directory.mkdir(parents=True, exist_ok=True)
    for kind, path in paths.items():
        save_workbook(build_workbook(kind), path)
    return list(paths.values())
