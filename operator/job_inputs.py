"""Load job specs from workbooks or from MLTrainingJob YAML/JSON files, reporting every problem at once.

The training commands accept either form: workbooks are converted in memory
exactly as ``quanttrain convert`` would, and YAML or JSON files are validated
with the same models and cross-field rules, with problems named by file and
field path (``job.yaml: spec.features.trainSplitRatio: ...``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quanttrain.operator.api import API_VERSION, KIND, MLTrainingJobSpec, kubernetes_name
from quanttrain.operator.convert import jobs_from_workbooks, spec_rule_violations
from quanttrain.operator.excel_reader import Problem
from quanttrain.trainer.config import Violation, violations_from_validation_error

WORKBOOK_SUFFIXES = (".xlsx", ".xlsm")
DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")
# metadata.name of an MLTrainingJob: a DNS-1123 subdomain, as Kubernetes requires.
_NAME_PATTERN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class InputError(ValueError):
    """Invalid job input, with every problem found in every file."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(str(problem) for problem in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the job input:\n{lines}")


def load_job_specs(paths: list[str]) -> list[tuple[str, MLTrainingJobSpec]]:
    """Return ``(job name, spec)`` for every strategy in the given workbooks and job files.

    Workbooks (.xlsx) are read together because their sheets may be spread
    over several files.  Each YAML or JSON file is read on its own and may
    contain several documents.  Raise :class:`InputError` listing every problem.
    """
    paths = [str(path) for path in paths]
    workbooks = [path for path in paths if Path(path).suffix.lower() in WORKBOOK_SUFFIXES]
    problems: list[Problem] = []
    specs: list[tuple[str, MLTrainingJobSpec]] = []
    if workbooks:
        jobs, found = jobs_from_workbooks(workbooks)
        problems.extend(found)
        specs.extend((job.name, job.spec) for job in jobs)
    for path in paths:
        if path in workbooks:
            continue
        if Path(path).suffix.lower() not in DOCUMENT_SUFFIXES:
            problems.append(Problem(path, "", "", None, (
                "unknown input type; give Excel workbooks (.xlsx) or MLTrainingJob files (.yaml, .yml, .json)")))
            continue
        loaded, found = _load_document_file(path)
        specs.extend(loaded)
        problems.extend(found)

    problems.extend(_duplicate_names(specs, paths))
    if problems:
        raise InputError(problems)
    return specs


def _duplicate_names(specs: list[tuple[str, MLTrainingJobSpec]], paths: Sequence[str]) -> list[Problem]:
    seen: set[str] = set()
    problems = []
    for name, _ in specs:
        if name in seen:
            problems.append(Problem(", ".join(paths), "", "metadata.name", name, (
                f"job name {name!r} comes from more than one strategy or file; give each job its own name")))
        seen.add(name)
    return problems


def _read_documents(path: str) -> tuple[list[Any], list[Problem]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return [], [Problem(path, "", "", None, f"cannot be read: {error}")]
    if path.lower().endswith(".json"):
        try:
            return [json.loads(text)], []
        except json.JSONDecodeError as error:
            return [], [Problem(path, "", f"line {error.lineno} column {error.colno}", None,
                                f"invalid JSON: {error.msg}")]
    try:
        return [document for document in yaml.safe_load_all(text) if document is not None], []
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        return [], [Problem(path, "", where, None, f"invalid YAML: {error.problem}")]
    except yaml.YAMLError as error:
        return [], [Problem(path, "", "", None, f"invalid YAML: {error}")]


def _load_document_file(path: str) -> tuple[list[tuple[str, MLTrainingJobSpec]], list[Problem]]:
    documents, problems = _read_documents(path)
    if not documents and not problems:
        problems.append(Problem(path, "", "", None, "holds no document; write an MLTrainingJob"))
    specs = []
    for index, document in enumerate(documents, start=1):
        label = path if len(documents) == 1 else f"{path} (document {index})"
        loaded, found = _load_document(label, document)
        problems.extend(found)
        if loaded is not None:
            specs.append(loaded)
    return specs, problems


def _load_document(label: str, document: Any) -> tuple[tuple[str, MLTrainingJobSpec] | None, list[Problem]]:
    """Validate one document: an MLTrainingJob, or a bare spec without apiVersion and kind."""
    if not isinstance(document, dict):
        return None, [Problem(label, "", "", type(document).__name__, "expected a mapping: an MLTrainingJob")]
    problems: list[Problem] = []
    prefix: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}
    spec_data: Any = document
    if "kind" in document or "apiVersion" in document:
        problems.extend(_check_header(label, document))
        prefix = ("spec",)
        spec_data = document.get("spec")
        metadata = document.get("metadata") if isinstance(document.get("metadata"), dict) else {}
        if not isinstance(spec_data, dict):
            return None, problems + [Problem(label, "", "spec", spec_data, "an MLTrainingJob needs a spec mapping")]

    try:
        spec = MLTrainingJobSpec.model_validate(spec_data)
    except ValidationError as error:
        return None, problems + [_field_problem(label, prefix, v) for v in violations_from_validation_error(error)]
    problems.extend(_field_problem(label, prefix, violation) for violation in spec_rule_violations(spec))

    name = metadata.get("name") or kubernetes_name(spec.strategy.name)
    if not isinstance(name, str) or not _NAME_PATTERN.match(name):
        problems.append(Problem(label, "", "metadata.name", name, (
            f"invalid name {name!r}; use lower-case letters, digits, '-' and '.', starting and ending "
            "with a letter or digit")))
    return (None if problems else (name, spec)), problems


def _check_header(label: str, document: dict[str, Any]) -> list[Problem]:
    problems = []
    if document.get("kind") != KIND:
        problems.append(Problem(label, "", "kind", document.get("kind"),
                                f"kind is {document.get('kind')!r}; expected {KIND!r}"))
    if document.get("apiVersion") != API_VERSION:
        problems.append(Problem(label, "", "apiVersion", document.get("apiVersion"),
                                f"apiVersion is {document.get('apiVersion')!r}; expected {API_VERSION!r}"))
    return problems


def _field_problem(label: str, prefix: tuple[str, ...], violation: Violation) -> Problem:
    path = Violation(prefix + violation.path, violation.value, violation.message)
    return Problem(label, "", path.dotted_path() or "spec", violation.value,
                   f"{violation.message} (got {violation.value!r})")
