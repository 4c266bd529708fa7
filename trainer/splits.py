"""Chronological splits and walk-forward cross-validation for time-ordered rows.

Rows are never shuffled: every split keeps the rows in time order and puts
training data strictly before the data it is evaluated on.  A label at row
``t`` looks up to ``gap`` rows ahead, so ``gap`` rows are purged at the end of
each earlier segment; no training label then depends on a bar of the
validation or test period.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator


class SplitError(ValueError):
    """A split that would leave a segment or fold without rows."""


@dataclasses.dataclass(frozen=True)
class SplitIndices:
    """Row positions of the train, validation and test segments, each in time order."""

    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def chronological_split(n_rows: int, train_ratio: float, validation_ratio: float, gap: int) -> SplitIndices:
    """Split ``n_rows`` time-ordered rows into train, validation and test segments.

    Training takes the oldest ``floor(n_rows * train_ratio)`` rows, validation
    the next ``floor(n_rows * validation_ratio)``, test the rest.  The last
    ``gap`` rows of the train and validation segments are purged.  A ratio of
    0 for validation, or ratios adding up to 1 (no test rows), give an empty
    segment on purpose; any other empty segment raises :class:`SplitError`.
    """
    if not 0 < train_ratio < 1 or not 0 <= validation_ratio < 1:
        raise SplitError(f"ratios must be in (0, 1) and [0, 1), got train {train_ratio}, validation {validation_ratio}")
    if gap < 0:
        raise SplitError(f"gap must be 0 or more rows, got {gap}")
    n_train = math.floor(n_rows * train_ratio)
    n_validation = math.floor(n_rows * validation_ratio)
    wants_test = train_ratio + validation_ratio < 1 - 1e-9
    wants_validation = validation_ratio > 0

    validation_start = n_train
    test_start = n_train + n_validation
    train_end = n_train - gap if (wants_validation or wants_test) else n_train
    # Without a test segment, validation runs to the end (no row lost to rounding down).
    validation_end = test_start - gap if wants_test else n_rows

    segments = SplitIndices(
        train=np.arange(0, max(train_end, 0)),
        validation=np.arange(validation_start, max(validation_end, validation_start)) if wants_validation
        else np.arange(0),
        test=np.arange(test_start, n_rows) if wants_test else np.arange(0),
    )
    _check_segments(segments, n_rows, gap, wants_validation, wants_test)
    return segments


def _check_segments(segments: SplitIndices, n_rows: int, gap: int, wants_validation: bool, wants_test: bool) -> None:
    empty = [name for name, rows, wanted in (
        ("train", segments.train, True),
        ("validation", segments.validation, wants_validation),
        ("test", segments.test, wants_test),
    ) if wanted and rows.size == 0]
    if empty:
        raise SplitError(
            f"the {' and '.join(empty)} segment(s) would be empty: {n_rows} rows give train "
            f"{segments.train.size}, validation {segments.validation.size}, test {segments.test.size} rows "
            f"with {gap} rows purged between segments; use more data, a longer date range or other split ratios"
        )


class WalkForwardSplit(BaseCrossValidator):
    """Walk-forward cross-validation: each fold trains on the past and tests on the next block.

    The last ``n_splits * test_size`` rows are cut into consecutive test
    blocks, oldest first.  Each fold trains on the rows before its test block,
    minus the ``gap`` rows just before it, keeping at most ``max_train_size``
    of the most recent ones (a rolling window; None gives an expanding
    window).  ``test_size`` defaults to ``n_samples // (n_splits + 1)``.

    This follows scikit-learn's ``TimeSeriesSplit`` and adds clear errors
    when a fold would have no training or test rows.
    """

    def __init__(self, n_splits: int = 5, *, gap: int = 0, max_train_size: int | None = None,
                 test_size: int | None = None) -> None:
        self.n_splits = n_splits
        self.gap = gap
        self.max_train_size = max_train_size
        self.test_size = test_size

    def get_n_splits(self, X=None, y=None, groups=None) -> int:  # noqa: N803 (scikit-learn's names)
        return self.n_splits

    def split(self, X, y=None, groups=None):  # noqa: N803
        """Yield ``(train, test)`` row positions for each fold, in time order."""
        self._check_parameters()
        n_samples = len(X)
        test_size = self.test_size or n_samples // (self.n_splits + 1)
        first_test = n_samples - self.n_splits * test_size
        first_train_end = first_test - self.gap
        if test_size < 1 or first_train_end < 1:
            raise SplitError(
                f"{n_samples} rows are too few for {self.n_splits} walk-forward folds with a gap of "
                f"{self.gap} rows (test blocks of {test_size} rows leave {max(first_train_end, 0)} rows to train "
                "the first fold); use more data or fewer CV folds"
            )
        for fold in range(self.n_splits):
            test_start = first_test + fold * test_size
            train_end = test_start - self.gap
            train_start = 0 if self.max_train_size is None else max(0, train_end - self.max_train_size)
            yield np.arange(train_start, train_end), np.arange(test_start, test_start + test_size)

    def _iter_test_indices(self, X=None, y=None, groups=None):  # noqa: N803
        for _, test in self.split(X, y, groups):
            yield test

    def _check_parameters(self) -> None:
        if not isinstance(self.n_splits, (int, np.integer)) or self.n_splits < 2:
            raise SplitError(f"n_splits must be an integer of at least 2, got {self.n_splits!r}")
        if self.gap < 0:
            raise SplitError(f"gap must be 0 or more rows, got {self.gap}")
        if self.max_train_size is not None and self.max_train_size < 1:
            raise SplitError(f"max_train_size must be at least 1 row or None, got {self.max_train_size}")
        if self.test_size is not None and self.test_size < 1:
            raise SplitError(f"test_size must be at least 1 row or None, got {self.test_size}")


def max_train_rows(index: pd.DatetimeIndex, window_days: int) -> int:
    """Convert a training window in calendar days to a number of rows.

    Counts, for every row at least ``window_days`` after the first, the rows
    in the ``window_days`` before and including it, and returns the median
    count, so weekends, holidays and session hours are taken from the data.
    When the data spans less than the window, every row fits: ``len(index)``.
    """
    if window_days < 1:
        raise ValueError(f"window_days must be at least 1, got {window_days}")
    if len(index) == 0:
        return 0
    stamps = index.asi8
    window = pd.Timedelta(days=window_days) // pd.Timedelta(1, unit=index.unit)
    full = stamps - window >= stamps[0]
    if not full.any():
        return len(index)
    # Row t's window contains the rows whose timestamps are in (t - window, t].
    starts = np.searchsorted(stamps, stamps - window, side="right")
    counts = np.arange(len(stamps)) - starts + 1
    return int(np.median(counts[full]))
