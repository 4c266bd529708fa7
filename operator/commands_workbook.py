"""The workbook subcommands: ``template``, ``validate`` and ``convert``."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from typing import TYPE_CHECKING

from quanttrain.operator.workbook import TEMPLATE_VERSION

if TYPE_CHECKING:
    from quanttrain.operator.excel_reader import Problem

# NB: the reader, converter and template modules import openpyxl, so they are
# imported inside the commands; `quanttrain operator` builds this parser too
# and starts faster without them.

# A Kubernetes namespace is a DNS-1123 label.
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def _namespace(text: str) -> str:
    if not _NAMESPACE.match(text):
        raise argparse.ArgumentTypeError(
            f"invalid namespace {text!r}: use at most 63 lower-case letters, digits and '-', "
            "starting and ending with a letter or digit")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    template = subparsers.add_parser(
        "template", help="write the three blank workbooks",
        description="Write blank workbooks with every sheet and column, dropdowns, input limits and "
                    "a comment on each header.")
    template.add_argument("directory", type=Path, help="folder to write the workbooks into (created if absent)")
    template.add_argument("--version", default=TEMPLATE_VERSION,
                          help=f"version in the file names (default {TEMPLATE_VERSION})")
    template.add_argument("--force", action="store_true", help="overwrite existing workbooks")
    template.set_defaults(func=run_template)

    validate = subparsers.add_parser(
        "validate", help="check workbooks and list every problem",
        description="Check workbooks; exit 0 when valid, else list every problem as FILE: Sheet!CELL: message "
                    "and exit 1.")
    validate.add_argument("workbooks", nargs="+", metavar="WORKBOOK", help="workbook files (.xlsx)")
    validate.set_defaults(func=run_validate)

    convert = subparsers.add_parser(
        "convert", help="write one MLTrainingJob YAML per strategy",
        description="Write one <name>.yaml MLTrainingJob per Strategy row. Nothing is written when any "
                    "workbook has a problem.")
    convert.add_argument("workbooks", nargs="+", metavar="WORKBOOK", help="workbook files (.xlsx)")
    convert.add_argument("--output-dir", type=Path, required=True, help="folder for the YAML files")
    convert.add_argument("--namespace", type=_namespace, help="metadata.namespace of every job (default: none)")
    convert.add_argument("--check", action="store_true",
                         help="write nothing; exit 1 with a unified diff when the folder is not in step")
    convert.set_defaults(func=run_convert)


def _report(problems: Sequence[Problem], outcome: str) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(problems)} problem(s) found; {outcome}", file=sys.stderr)
    return 1


def run_template(args: argparse.Namespace) -> int:
    from quanttrain.operator.template import write_templates

    try:
        paths = write_templates(args.directory, version=args.version, force=args.force)
    except OSError as error:  # FileExistsError included: existing workbooks without --force
        print(f"quanttrain template: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from quanttrain.operator.convert import jobs_from_workbooks

    jobs, problems = jobs_from_workbooks(args.workbooks)
    if problems:
        return _report(problems, "the workbooks are not valid")
    for job in jobs:
        spec = job.spec.strategy
        print(f"OK {spec.name!r} -> {job.name} ({spec.model_type.value}, {spec.prediction_target.value}, "
              f"{len(job.spec.indicators)} indicator(s))")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from quanttrain.operator.convert import jobs_from_workbooks, render_documents, write_documents

    jobs, problems = jobs_from_workbooks(args.workbooks)
    if problems:
        return _report(problems, "nothing was written")
    documents = render_documents(jobs, args.workbooks, args.namespace)
    if args.check:
        return _check(args.output_dir, documents, args.workbooks)
    try:
        outcomes = write_documents(args.output_dir, documents, args.workbooks)
    except OSError as error:
        print(f"quanttrain convert: cannot write to {args.output_dir}: {error}", file=sys.stderr)
        return 1
    for name, outcome in outcomes.items():
        print(f"{outcome} {args.output_dir / name}")
    return 0


def _check(output_dir: Path, documents: dict[str, str], workbooks: Sequence[str]) -> int:
    from quanttrain.operator.convert import diff_documents

    diff = diff_documents(output_dir, documents, workbooks)
    if diff:
        sys.stdout.write(diff)
        print(f"{output_dir} is not in step with the workbooks; run quanttrain convert without --check",
              file=sys.stderr)
        return 1
    print(f"{output_dir}: {len(documents)} file(s) in step with the workbooks")
    return 0
