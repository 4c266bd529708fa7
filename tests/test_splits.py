"""Chronological splits and walk-forward folds keep time order and purge the horizon."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from quanttrain.trainer.market_data import arch_bars
from quanttrain.trainer.splits import SplitError, WalkForwardSplit, chronological_split, max_train_rows


def test_chronological_split_takes_segments_in_order():
    split = chronological_split(100, 0.7, 0.15, gap=0)

    assert split.train.tolist() == list(range(70))
    assert split.validation.tolist() == list(range(70, 85))
    assert split.test.tolist() == list(range(85, 100))


def test_chronological_split_purges_gap_rows_before_each_later_segment():
    split = chronological_split(1000, 0.7, 0.15, gap=5)

    assert split.validation[0] - split.train[-1] == 6
    assert split.test[0] - split.validation[-1] == 6
    assert split.train.size == 695
    assert split.validation.size == 145


def test_chronological_split_without_validation_has_no_validation_rows():
    split = chronological_split(100, 0.8, 0.0, gap=3)

    assert split.validation.size == 0
    assert split.test[0] - split.train[-1] == 4


def test_chronological_split_using_every_row_leaves_no_test_rows():
    split = chronological_split(101, 0.7, 0.3, gap=3)

    assert split.test.size == 0
    assert split.validation[-1] == 100


def test_chronological_split_rejects_an_empty_segment():
    with pytest.raises(SplitError, match="validation segment"):
        chronological_split(20, 0.7, 0.15, gap=3)


def test_walk_forward_tests_after_training_plus_gap():
    folds = list(WalkForwardSplit(n_splits=4, gap=3).split(np.zeros(500)))

    for train, test in folds:
        assert train.max() + 3 < test.min()
        assert train[-1] == test[0] - 4


def test_walk_forward_folds_run_in_time_order_and_tile_the_end():
    folds = list(WalkForwardSplit(n_splits=4, gap=2).split(np.zeros(500)))

    tests = [test for _, test in folds]
    for earlier, later in zip(tests, tests[1:]):
        assert later[0] == earlier[-1] + 1
    assert tests[-1][-1] == 499
    assert all(np.all(np.diff(test) == 1) for test in tests)


def test_walk_forward_expanding_window_starts_at_zero():
    folds = list(WalkForwardSplit(n_splits=3).split(np.zeros(400)))

    assert all(train[0] == 0 for train, _ in folds)
    assert [train.size for train, _ in folds] == [100, 200, 300]


def test_walk_forward_rolling_window_respects_max_train_size():
    folds = list(WalkForwardSplit(n_splits=3, gap=1, max_train_size=60).split(np.zeros(400)))

    assert [train.size for train, _ in folds] == [60, 60, 60]
    assert all(train[-1] == test[0] - 2 for train, test in folds)


def test_walk_forward_rejects_too_few_rows():
    with pytest.raises(SplitError, match="8 rows are too few for 5 walk-forward folds"):
        list(WalkForwardSplit(n_splits=5, gap=3).split(np.zeros(8)))


def test_walk_forward_works_as_a_scikit_learn_cv():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 2))
    y = (X[:, 0] > 0).astype(int)

    scores = cross_val_score(LogisticRegression(), X, y, cv=WalkForwardSplit(n_splits=3, gap=2))

    assert scores.shape == (3,)
    assert WalkForwardSplit(n_splits=3).get_n_splits() == 3


def test_training_window_of_a_year_is_about_252_daily_bars():
    rows = max_train_rows(arch_bars("sp500").index, 365)

    assert 248 <= rows <= 254


def test_training_window_counts_hourly_session_bars():
    days = pd.bdate_range("2024-01-01", periods=60)
    index = pd.DatetimeIndex([day + pd.Timedelta(hours=hour) for day in days for hour in range(9, 16)])

    assert max_train_rows(index, 7) == 35


def test_training_window_longer_than_the_data_keeps_every_row():
    index = pd.date_range("2024-01-01", periods=20, freq="D")

    assert max_train_rows(index, 30) == 20
