"""The indicator catalog: readable without TA-Lib, and in step with the installed TA-Lib."""

import json
from importlib import resources

import pytest

from quanttrain.trainer import indicator_catalog


def test_catalog_file_matches_installed_talib():
    pytest.importorskip("talib")
    stored = json.loads(resources.files("quanttrain.trainer").joinpath("data", indicator_catalog.CATALOG_FILE)
                        .read_text("utf-8"))
    assert stored == indicator_catalog.describe_installed_talib(), (
        "the TA-Lib catalog is stale; run python -m quanttrain.trainer.indicator_catalog --write")


def test_lookup_ignores_case_and_spaces():
    assert indicator_catalog.lookup(" rsi ").name == "RSI"


def test_lookup_finds_derived_methods():
    assert indicator_catalog.lookup("bb_position").source == "derived"


def test_lookup_returns_none_for_unknown_names():
    assert indicator_catalog.lookup("NOT_A_METHOD") is None
