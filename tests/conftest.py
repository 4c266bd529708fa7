"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def market_data_dir(tmp_path_factory) -> Path:
    """The S&P 500 and NASDAQ daily bars exported from the arch package once per run; read-only."""
    from quanttrain.trainer.market_data import export_market_data

    folder = tmp_path_factory.mktemp("market-data")
    export_market_data(folder)
    return folder


@pytest.fixture(scope="session")
def serving_registry(market_data_dir, tmp_path_factory) -> Path:
    """A registry holding the serving tests' tiny model, trained once per run."""
    from serving_fixtures import train_tiny_model

    return train_tiny_model(market_data_dir, tmp_path_factory.mktemp("serving-registry"))
