"""The operator process stays free of the training libraries."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY_MODULES = ("torch", "xgboost", "sklearn", "skopt", "pandas")

SCRIPT = """
import json, sys
from quanttrain.operator import cli
cli.build_parser()  # every subcommand module, as `quanttrain operator --help` loads them
import quanttrain.operator.handlers, quanttrain.operator.runner, quanttrain.operator.crd
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in {heavy})))
"""


def test_operator_imports_no_training_libraries():
    script = SCRIPT.replace("{heavy}", repr(set(HEAVY_MODULES)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_operator_help_lists_the_scope_options():
    result = subprocess.run(
        [sys.executable, "-m", "quanttrain.operator.cli", "operator", "--help"],
        capture_output=True, text=True, timeout=60, check=True,
    )
    assert "--all-namespaces" in result.stdout
    assert "--namespace" in result.stdout
