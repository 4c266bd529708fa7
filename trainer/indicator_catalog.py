"""Known indicator calculation methods, readable without TA-Lib.

The converter and the operator check the Calculation Method column against
this catalog, and neither may depend on TA-Lib's C library.  So the TA-Lib part
is a JSON file generated from the installed TA-Lib (a test keeps it in step),
and the derived methods that quanttrain computes itself are listed here.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from functools import cache
from importlib import resources
from typing import Any

CATALOG_FILE = "talib_functions.json"


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    """A calculation method: its price inputs, parameters with defaults, and outputs."""

    name: str
    group: str
    inputs: tuple[str, ...]
    parameters: dict[str, Any]
    outputs: tuple[str, ...]
    source: str  # "talib" or "derived"


# Methods computed by quanttrain from OHLCV bars; their parameters mean the
# same as TA-Lib's (`timeperiod` in bars).
DERIVED_METHODS: dict[str, MethodInfo] = {
    info.name: info
    for info in [
        MethodInfo("BB_POSITION", "Derived", ("close",),
                   {"timeperiod": 20, "nbdev": 2.0}, ("real",), "derived"),
        MethodInfo("VOLUME_RATIO", "Derived", ("volume",),
                   {"timeperiod": 20}, ("real",), "derived"),
        MethodInfo("RETURNS", "Derived", ("close",),
                   {"timeperiod": 1}, ("real",), "derived"),
        MethodInfo("LOG_RETURNS", "Derived", ("close",),
                   {"timeperiod": 1}, ("real",), "derived"),
        MethodInfo("REALIZED_VOLATILITY", "Derived", ("close",),
                   {"timeperiod": 20}, ("real",), "derived"),
    ]
}


def _talib_entries() -> dict[str, MethodInfo]:
    text = resources.files("quanttrain.trainer").joinpath("data", CATALOG_FILE).read_text("utf-8")
    entries = {}
    for row in json.loads(text):
        entries[row["name"]] = MethodInfo(
            name=row["name"],
            group=row["group"],
            inputs=tuple(row["inputs"]),
            parameters=dict(row["parameters"]),
            outputs=tuple(row["outputs"]),
            source="talib",
        )
    return entries


@cache
def methods() -> dict[str, MethodInfo]:
    """Return every known method by its upper-case name."""
    return {**_talib_entries(), **DERIVED_METHODS}


def lookup(name: str) -> MethodInfo | None:
    """Return the method named ``name`` (case-insensitive), or None when unknown."""
    return methods().get(name.strip().upper())


def describe_installed_talib() -> list[dict[str, Any]]:
    """Describe every function of the installed TA-Lib in the catalog's JSON form."""
    import talib
    from talib import abstract

    rows = []
    for name in sorted(talib.get_functions()):
        info = abstract.Function(name).info
        inputs: list[str] = []
        for value in info["input_names"].values():
            inputs.extend(value if isinstance(value, list) else [value])
        rows.append({
            "name": name,
            "group": info["group"],
            "inputs": inputs,
            "parameters": dict(info["parameters"]),
            "outputs": list(info["output_names"]),
        })
    return rows


def _write_catalog() -> None:
    path = resources.files("quanttrain.trainer").joinpath("data", CATALOG_FILE)
    text = json.dumps(describe_installed_talib(), indent=1, sort_keys=True) + "\n"
    with open(str(path), "w", encoding="utf-8") as handle:
        handle.write(text)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m quanttrain.trainer.indicator_catalog --write")
    _write_catalog()
