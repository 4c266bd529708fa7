"""Read workbook cells into typed, validated rows, with every problem located by file, sheet and cell.

Sheets are found by name in whichever files are given, so the three workbooks
and one workbook holding every sheet read alike.  Each file is loaded twice:
once for the values Excel cached, once for the formulas, because a formula
that was never calculated has no cached value and must be an error rather
than a silent default.  Every cell is typed by its column's :class:`Kind`, and
then each row is validated by the pydantic models its columns fill, so the
ranges and messages are the ones the CRD enforces.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import json
import math
import zipfile
from collections.abc import Sequence
from typing import Any

import openpyxl
from openpyxl.utils import get_column_letter
from openpyxl.utils.exceptions import InvalidFileException
from openpyxl.worksheet.formula import ArrayFormula, DataTableFormula
from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from quanttrain.operator.workbook import (
    IGNORED_SHEET_PREFIXES,
    NOTES_PREFIXES,
    SHEETS,
    SHEETS_BY_KEY,
    Column,
    Kind,
    Sheet,
    format_value,
    normalize_header,
    workbook_file_name,
)

TRUE_WORDS = frozenset({"true", "yes", "1"})
FALSE_WORDS = frozenset({"false", "no", "0"})


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem of the input: where it is, the value found, and what is wrong with it.

    ``cell`` is a cell reference (``G3``) or a row (``1:1``) on ``sheet``; for
    YAML inputs ``sheet`` is empty and ``cell`` is the field path.
    """

    file: str
    sheet: str
    cell: str
    value: Any
    message: str

    def location(self) -> str:
        if self.sheet:
            sheet = self.sheet if self.sheet.isalnum() else "'" + self.sheet.replace("'", "''") + "'"
            return f"{sheet}!{self.cell}" if self.cell else sheet
        return self.cell

    def __str__(self) -> str:
        where = self.location()
        return f"{self.file}: {where}: {self.message}" if where else f"{self.file}: {self.message}"


class CellError(ValueError):
    """A cell whose content cannot be read as its column's type."""


@dataclasses.dataclass
class Row:
    """One non-empty data row: its cells, typed values and the models it validated into."""

    file: str
    sheet: Sheet
    title: str
    number: int
    cells: dict[str, str]
    raw: dict[str, Any]
    values: dict[str, Any]
    models: dict[tuple[str, ...], BaseModel] = dataclasses.field(default_factory=dict)
    valid: bool = True

    def ref(self, key: str) -> str:
        """Return the cell of column ``key``, or the row's first cell when the column is absent."""
        return self.cells.get(key) or f"A{self.number}"

    def link(self) -> str:
        """Return the normalised Strategy Name or Indicator Name this row points at ('' when blank)."""
        column = self.sheet.columns[0]
        value = self.values.get(column.key)
        return normalize_header(value) if isinstance(value, str) and column.field is None else ""

    def problem(self, key: str, message: str) -> Problem:
        return Problem(self.file, self.title, self.ref(key), self.raw.get(key), message)


@dataclasses.dataclass
class SheetData:
    """A contract sheet as found in one file."""

    file: str
    sheet: Sheet
    title: str
    rows: list[Row]


@dataclasses.dataclass
class Reading:
    """Everything read from a set of workbooks."""

    files: list[str]
    sheets: dict[str, SheetData]
    problems: list[Problem]

    def rows(self, sheet_key: str) -> list[Row]:
        data = self.sheets.get(sheet_key)
        return data.rows if data is not None else []


def show(value: Any) -> str:
    """Show a cell value in a message: text quoted, numbers and booleans as Excel shows them."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    return format_value(value)


# --- typing one cell ---------------------------------------------------------------


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(column: Column, value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, (datetime.date, datetime.time)):
        raise CellError(f"{column.header} {show(value)} is not text; write {column.allowed()}")
    if isinstance(value, (int, float)):
        return format_value(value)
    return str(value).strip()


def _number_from_text(column: Column, text: str) -> float:
    cleaned = text.strip()
    scale = 1.0
    if cleaned.endswith("%"):
        cleaned, scale = cleaned[:-1].strip(), 0.01
    try:
        number = float(cleaned)
    except ValueError:
        raise CellError(f"{column.header} {show(text)} is not a number; write {column.allowed()}") from None
    return number * scale


def _number(column: Column, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise CellError(f"{column.header} {show(value)} is not a number; write {column.allowed()}")
    number = _number_from_text(column, value) if isinstance(value, str) else value
    if not math.isfinite(number):
        raise CellError(f"{column.header} {show(value)} is not a finite number; write {column.allowed()}")
    return number


def _integer(column: Column, value: Any) -> int:
    if isinstance(value, str) and value.strip().endswith("%"):
        raise CellError(f"{column.header} {show(value)} is not a whole number; write {column.allowed()}")
    number = _number(column, value)
    if isinstance(number, float) and not number.is_integer():
        raise CellError(f"{column.header} {show(value)} is not a whole number; write {column.allowed()}")
    return int(number)


def _boolean(column: Column, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    word = str(value).strip().casefold()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise CellError(f"{column.header} {show(value)} is not a boolean; write {column.allowed()}")


def _choice(column: Column, value: Any) -> str:
    text = _text(column, value)
    for choice in column.choices():
        if text.casefold() == choice.casefold():
            return choice
    raise CellError(f"{column.header} {show(value)} is not allowed; choose {column.allowed()}")


def _json(column: Column, value: Any) -> dict[str, Any]:
    if not isinstance(value, str):
        raise CellError(f"{column.header} {show(value)} is not a JSON object; write {column.allowed()}")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise CellError(
            f"{column.header} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno} "
            f"(character {error.pos + 1}) of {show(value)}"
        ) from None
    if not isinstance(parsed, dict):
        raise CellError(f"{column.header} {show(value)} is JSON but not an object; write {column.allowed()}")
    return parsed


def scalar_from_text(text: str) -> int | float | bool | str:
    """Type a parameter value written as text: whole number, number, TRUE/FALSE, else the text."""
    word = text.strip()
    if word.casefold() in ("true", "false"):
        return word.casefold() == "true"
    for parse in (int, float):
        try:
            number = parse(word)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            break
        return number
    return word


def _scalar(column: Column, value: Any) -> int | float | bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(value, (datetime.date, datetime.time)):
        raise CellError(f"{column.header} {show(value)} is a date; write {column.allowed()}")
    return scalar_from_text(str(value))


def _mapping(column: Column, value: Any) -> dict[str, Any]:
    if isinstance(value, str) and value.strip().startswith("{"):
        return _json(column, value)
    text = _text(column, value)
    parsed: dict[str, Any] = {}
    for item in (part.strip() for part in text.replace(";", ",").split(",")):
        if not item:
            continue
        name, equals, raw = item.partition("=")
        if not equals or not name.strip() or not raw.strip():
            raise CellError(f"{column.header} item {item!r} of {show(value)} is not name=value; write {column.allowed()}")
        if name.strip() in parsed:
            raise CellError(f"{column.header} {show(value)} sets {name.strip()!r} twice; keep one")
        parsed[name.strip()] = scalar_from_text(raw)
    return parsed


def _list(column: Column, value: Any) -> list[str]:
    items = [item.strip() for item in _text(column, value).split(",") if item.strip()]
    seen: set[str] = set()
    for item in items:
        if item.casefold() in seen:
            raise CellError(f"{column.header} {show(value)} lists {item!r} twice; list each name once")
        seen.add(item.casefold())
    return items


_READERS = {
    Kind.TEXT: _text,
    Kind.PATH: _text,
    Kind.INTEGER: _integer,
    Kind.NUMBER: _number,
    Kind.BOOLEAN: _boolean,
    Kind.CHOICE: _choice,
    Kind.JSON: _json,
    Kind.MAPPING: _mapping,
    Kind.LIST: _list,
    Kind.SCALAR: _scalar,
}


def read_value(column: Column, value: Any) -> Any:
    """Type one non-blank cell value for ``column``; raise CellError with the fix."""
    return _READERS[column.kind](column, value)


# --- validating one row ------------------------------------------------------------


def _is_type_tag(part: Any) -> bool:
    """Tell pydantic's union-member tags (``list[any]``, ``function-after[...]``) from keys."""
    return isinstance(part, str) and "[" in part


def _percent_hint(column: Column, value: Any, percent_cell: bool) -> str:
    """Suggest a percentage when a plain number like 5 was typed in a fraction column."""
    bounds = column.bounds()
    if column.kind is not Kind.NUMBER or percent_cell or not isinstance(value, (int, float)):
        return ""
    if bounds.high is None or bounds.high > 1:
        return ""
    if 1 < value <= 100 and bounds.contains(value / 100):
        return f"; did you mean {format_value(value)}%? write {format_value(value / 100)} or {format_value(value)}%"
    return ""


def _error_texts(errors: list[dict[str, Any]]) -> list[str]:
    """Word the errors of one cell, merging the alternatives pydantic reports for a union.

    A value that fails every member of a union (a Search Space entry is a list
    or a range) gets one error per member.  When one member got further (its
    error sits deeper), only that one is kept; the others at the same key are
    merged into one sentence.
    """
    found: dict[tuple[str, ...], list[str]] = {}
    for error in errors:
        path = tuple(str(part) for part in error["loc"][1:] if not _is_type_tag(part))
        message = error["msg"].removeprefix("Value error, ")
        if message not in found.get(path, []):
            found.setdefault(path, []).append(message)
    texts = []
    for path, messages in found.items():
        if any(other[:len(path)] == path and len(other) > len(path) for other in found):
            continue
        merged = messages[0] + "".join(
            ", or " + message.removeprefix("Input should be ") for message in messages[1:])
        texts.append(f"{'.'.join(path)}: {merged}" if path else merged)
    return texts


def _validate_section(
    row: Row, section: tuple[str, ...], columns: list[Column], percent_cells: set[str]
) -> list[Problem]:
    """Validate the values of one model's columns; return one problem per failing cell."""
    model = columns[0].model
    by_name = {}
    for column in columns:
        by_name[column.field] = column
        by_name[to_camel(column.field)] = column
    data = {column.field: row.values[column.key] for column in columns if column.key in row.values}
    try:
        row.models[section] = model.model_validate(data)
        return []
    except ValidationError as error:
        errors = error.errors(include_url=False)

    # A cell that failed to read is left out; rules across its model's fields would misfire.
    unread = any(column.key in row.raw and column.key not in row.values for column in columns)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for item in errors:
        loc = item["loc"]
        if item["type"] == "missing" and len(loc) == 1:
            continue  # a blank required cell or an absent column, already reported
        if unread and not loc:
            continue
        column = by_name.get(loc[0]) if loc else None
        column = column or next((c for c in columns if c.key in row.values), columns[0])
        grouped.setdefault(column.key, []).append(item)

    problems = []
    for key, items in grouped.items():
        texts = _error_texts(items)
        column = row.sheet.column(key)
        value = row.values.get(key)
        shown = show(row.raw.get(key)) if key in row.raw else "(blank)"
        bounds = column.bounds()
        bounded = bounds.low is not None or bounds.max_length is not None
        allowed = f"; allowed: {column.allowed()}" if bounded else ""
        hint = _percent_hint(column, value, key in percent_cells)
        problems.append(row.problem(key, f"{column.header} {shown} is invalid: {'; '.join(texts)}{allowed}{hint}"))
    return problems


def validate_row(row: Row, percent_cells: set[str]) -> list[Problem]:
    """Validate a typed row with the pydantic models of its columns; store the models on the row."""
    sections: dict[tuple[str, ...], list[Column]] = {}
    for column in row.sheet.columns:
        if column.model is not None:
            sections.setdefault(column.section, []).append(column)
    problems = []
    for section, columns in sections.items():
        problems.extend(_validate_section(row, section, columns, percent_cells))
    return problems


# --- reading sheets ----------------------------------------------------------------


@dataclasses.dataclass
class _Header:
    row: int
    columns: dict[int, Column]
    ignored: set[int]
    unlabelled: set[int]


def _read_header(file: str, sheet: Sheet, title: str, cells: Sequence[Any], number: int) -> tuple[_Header, list[Problem]]:
    header = _Header(number, {}, set(), set())
    problems = []
    known = {column.key: column for column in sheet.columns}
    seen: dict[str, str] = {}
    for index, cell in enumerate(cells):
        letter = get_column_letter(index + 1)
        if _is_blank(cell.value):
            header.unlabelled.add(index)
            continue
        key = normalize_header(str(cell.value))
        if key.startswith(NOTES_PREFIXES):
            header.ignored.add(index)
        elif key in seen:
            header.ignored.add(index)
            problems.append(Problem(file, title, f"{letter}{number}", cell.value,
                                    f"column {show(cell.value)} appears twice (first at {seen[key]}); remove one"))
        elif key in known:
            header.columns[index] = known[key]
            seen[key] = f"{letter}{number}"
        else:
            header.ignored.add(index)
            close = difflib.get_close_matches(key, list(known), n=1)
            guess = f"did you mean {sheet.column(close[0]).header!r}? " if close else ""
            problems.append(Problem(
                file, title, f"{letter}{number}", cell.value,
                f"unknown column {show(cell.value)}; {guess}the {sheet.name} columns are: "
                f"{', '.join(column.header for column in sheet.columns)}; start a header with 'Notes' to keep free text",
            ))

    present = {column.key for column in header.columns.values()}
    absent = [column.header for column in sheet.columns
              if column.key not in present and (column.required or column.field is None)]
    if absent:
        problems.append(Problem(
            file, title, f"{number}:{number}", None,
            f"missing required column(s): {', '.join(absent)}; add them to the header row",
        ))
    return header, problems


def _cell_content(cached: Any, formula: Any) -> tuple[Any, str | None]:
    """Return a cell's value, or an error when it is an uncalculated formula or an Excel error."""
    is_formula = formula.data_type == "f" or isinstance(formula.value, (ArrayFormula, DataTableFormula))
    if is_formula and cached.value is None:
        text = getattr(formula.value, "text", formula.value)
        return None, (f"holds the formula {show(str(text))} with no cached value; open and save the workbook "
                      "in Excel or LibreOffice so the result is stored, or type the value")
    if cached.data_type == "e":
        return None, f"shows the Excel error {cached.value}; fix the cell"
    return cached.value, None


def _read_row(file: str, sheet: Sheet, title: str, header: _Header, cached: Sequence[Any],
              formulas: Sequence[Any]) -> tuple[Row | None, list[Problem]]:
    number = cached[0].row if cached else 0
    contents = [(c, f) for c, f in zip(cached, formulas)]
    if all(_is_blank(c.value) and _is_blank(f.value) for index, (c, f) in enumerate(contents)
           if index not in header.ignored):
        return None, []

    row = Row(file, sheet, title, number, cells={}, raw={}, values={})
    for index, column in header.columns.items():
        row.cells[column.key] = f"{get_column_letter(index + 1)}{number}"
    problems: list[Problem] = []
    percent_cells: set[str] = set()
    for index, (cell, formula) in enumerate(contents):
        letter = get_column_letter(index + 1)
        column = header.columns.get(index)
        if column is None:
            if index in header.unlabelled and not (_is_blank(cell.value) and _is_blank(formula.value)):
                problems.append(Problem(file, title, f"{letter}{number}", cell.value,
                                        f"value {show(cell.value)} in column {letter}, which has no header; "
                                        "add a header or start one with 'Notes'"))
            continue
        problems.extend(_read_cell(row, column, cell, formula, percent_cells))

    for column in sheet.columns:
        if column.required and column.key in row.cells and column.key not in row.values and column.key not in row.raw:
            problems.append(row.problem(column.key, f"{column.header} is required; write {column.allowed()}"))
    # Cells that failed to read are left out, so validation reports only the other cells.
    problems.extend(validate_row(row, percent_cells))
    row.valid = not problems
    return row, problems


def _read_cell(row: Row, column: Column, cell: Any, formula: Any, percent_cells: set[str]) -> list[Problem]:
    value, error = _cell_content(cell, formula)
    if error is not None:
        row.raw[column.key] = formula.value
        return [row.problem(column.key, f"{column.header} {error}")]
    if _is_blank(value):
        return []
    row.raw[column.key] = value
    if "%" in (cell.number_format or ""):
        percent_cells.add(column.key)
    try:
        row.values[column.key] = read_value(column, value)
    except CellError as failure:
        return [row.problem(column.key, str(failure))]
    return []


def read_sheet(file: str, sheet: Sheet, cached_sheet: Any, formula_sheet: Any) -> tuple[SheetData, list[Problem]]:
    """Read one contract sheet: header, then every non-empty row, typed and validated."""
    data = SheetData(file, sheet, cached_sheet.title, rows=[])
    problems: list[Problem] = []
    header: _Header | None = None
    for cached, formulas in zip(cached_sheet.iter_rows(), formula_sheet.iter_rows()):
        if header is None:
            if all(_is_blank(cell.value) for cell in cached):
                continue
            header, found = _read_header(file, sheet, data.title, cached, cached[0].row)
            problems.extend(found)
            continue
        row, found = _read_row(file, sheet, data.title, header, cached, formulas)
        problems.extend(found)
        if row is not None:
            data.rows.append(row)
    if header is None and sheet.required:
        problems.append(Problem(file, data.title, "1:1", None,
                                f"sheet {sheet.name} is empty; it needs a header row with: "
                                f"{', '.join(column.header for column in sheet.columns)}"))
    return data, problems


# --- reading files -----------------------------------------------------------------


def _open(path: str) -> tuple[Any, Any]:
    cached = openpyxl.load_workbook(path, data_only=True)
    formulas = openpyxl.load_workbook(path, data_only=False)
    return cached, formulas


def _sheet_is_empty(worksheet: Any) -> bool:
    return all(_is_blank(value) for row in worksheet.iter_rows(values_only=True) for value in row)


def read_workbooks(paths: Sequence[str]) -> Reading:
    """Read every contract sheet from the given files; collect every problem instead of stopping."""
    reading = Reading(files=list(paths), sheets={}, problems=[])
    unreadable = False
    for path in paths:
        try:
            cached_book, formula_book = _open(path)
        except FileNotFoundError:
            reading.problems.append(Problem(path, "", "", None, "file not found; check the path"))
            unreadable = True
            continue
        except (OSError, zipfile.BadZipFile, InvalidFileException, KeyError, ValueError) as error:
            reading.problems.append(Problem(path, "", "", None, f"cannot be read as an Excel workbook (.xlsx): {error}"))
            unreadable = True
            continue
        # Chart sheets have no cells, so only worksheets are read.
        for cached_sheet in cached_book.worksheets:
            if not hasattr(cached_sheet, "iter_rows"):
                continue
            _read_file_sheet(reading, path, cached_sheet, formula_book[cached_sheet.title])

    # A missing sheet may well be in a file that could not be read, which is reported already.
    for sheet in () if unreadable else SHEETS:
        if sheet.required and sheet.key not in reading.sheets:
            reading.problems.append(Problem(
                ", ".join(paths) or "(no files)", sheet.name, "", None,
                f"sheet {sheet.name} not found; it is required and belongs in "
                f"{workbook_file_name(sheet.workbook, '<version>')}",
            ))
    return reading


def _read_file_sheet(reading: Reading, path: str, cached_sheet: Any, formula_sheet: Any) -> None:
    key = normalize_header(cached_sheet.title)
    sheet = SHEETS_BY_KEY.get(key)
    if sheet is None:
        if not (key.startswith(IGNORED_SHEET_PREFIXES) or cached_sheet.sheet_state != "visible"
                or _sheet_is_empty(cached_sheet)):
            reading.problems.append(Problem(
                path, cached_sheet.title, "", None,
                f"unknown sheet {cached_sheet.title!r}; the sheets are: {', '.join(s.name for s in SHEETS)}; "
                "start a sheet name with 'Notes' to keep free text",
            ))
        return
    if key in reading.sheets:
        reading.problems.append(Problem(
            path, cached_sheet.title, "", None,
            f"sheet {sheet.name} also appears in {reading.sheets[key].file}; keep it in one workbook",
        ))
        return
    data, problems = read_sheet(path, sheet, cached_sheet, formula_sheet)
    reading.sheets[key] = data
    reading.problems.extend(problems)
