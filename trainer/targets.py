"""Prediction targets built from future bars, and the coding of class labels.

The label at bar ``t`` describes what happens after ``t``, so the last rows of
a series have no label: they are NaN here and are dropped later, never filled.
Each target looks a known number of bars ahead (:func:`target_lookahead_bars`),
and the splits keep at least that many rows between training and evaluation
data so that no training label overlaps the period it is evaluated on.

Targets (``h`` is the prediction horizon in bars):

``PRICE_DIRECTION``
    1 when ``close[t + h] > close[t]``, else 0.  A tie (no change) is 0,
    because the model should learn when the price rises, not when it holds.
``VOLATILITY``
    1 when the realised volatility of the next ``w`` bars is above the median
    realised volatility known at ``t``, else 0.  ``w = max(h, volatility_window)``
    bars.  Realised volatility is the sample standard deviation (ddof 1) of
    one-bar log returns.  Future: the returns of bars ``t+1 .. t+w``.  Known at
    ``t``: the same measure over bars ``t-w+1 .. t``, and the threshold is its
    median over the last ``10 * w`` bars (at least ``w`` values).
``SIGNAL``
    From the future return ``close[t + h] / close[t] - 1`` against the
    strategy's ``signal_threshold``: ``BUY`` above it, ``SELL`` below its
    negative, ``HOLD`` otherwise (at exactly the threshold: HOLD).

When the Features sheet's Target Variable names a column of the data, that
column is the label as it is, in any coding (0/1, -1/+1, strings).  Its empty
cells mean "no label".
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from quanttrain.trainer.config import RAW_COLUMNS, PredictionTarget, TrainingJobConfig

SIGNAL_LABELS = ("BUY", "HOLD", "SELL")

# The VOLATILITY threshold is the median over this many realised-volatility
# windows: long enough to be stable, short enough to follow volatility regimes.
VOLATILITY_MEDIAN_WINDOWS = 10


class TargetError(ValueError):
    """A target that cannot be built from the data, with the fix."""


def horizon_bars(horizon_minutes: float, interval_minutes: float) -> int:
    """Convert the prediction horizon to whole bars, rounding up, at least 1.

    A daily bar counts as 1440 minutes (see ``bar_interval_minutes``), so any
    horizon up to a day is one bar on daily data.
    """
    if horizon_minutes <= 0 or interval_minutes <= 0:
        raise ValueError(
            f"horizon ({horizon_minutes}) and bar interval ({interval_minutes}) must be positive minutes"
        )
    # The small tolerance keeps 60 / 15.000000001 at 4 bars, not 5.
    return max(1, math.ceil(horizon_minutes / interval_minutes - 1e-9))


def label_column(bars: pd.DataFrame, config: TrainingJobConfig) -> str | None:
    """Return the data column that Target Variable names, or None when the target is computed."""
    requested = config.features.target_variable.strip().casefold()
    for name in bars.columns:
        if str(name).strip().casefold() == requested:
            if requested in RAW_COLUMNS:
                raise TargetError(
                    f"Target Variable {config.features.target_variable!r} is a price column; "
                    "name a column that contains labels, or a new name for the computed target"
                )
            return str(name)
    return None


def target_lookahead_bars(config: TrainingJobConfig, horizon: int) -> int:
    """Return how many bars after ``t`` the label at ``t`` depends on."""
    # NOTE: a user's own label column is taken to look at most `horizon` bars
    # ahead, because the file does not say how it was made.
    if config.strategy.prediction_target is PredictionTarget.VOLATILITY:
        return max(horizon, config.strategy.feature_configuration.volatility_window)
    return horizon


def build_target(bars: pd.DataFrame, config: TrainingJobConfig, horizon: int) -> pd.Series:
    """Build the label of every bar; NaN where the future it needs is not in the data."""
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1 bar, got {horizon}")
    name = config.features.target_variable
    column = label_column(bars, config)
    if column is not None:
        labels = bars[column].copy()
        labels.name = name
        return labels

    close = bars["close"].to_numpy(dtype=np.float64)
    target = config.strategy.prediction_target
    if target is PredictionTarget.PRICE_DIRECTION:
        values = _price_direction(close, horizon)
    elif target is PredictionTarget.VOLATILITY:
        window = target_lookahead_bars(config, horizon)
        values = _volatility_regime(close, window)
    else:
        threshold = config.strategy.feature_configuration.signal_threshold
        values = _signal(close, horizon, threshold)
    return pd.Series(values, index=bars.index, name=name)


def _future(values: np.ndarray, horizon: int) -> np.ndarray:
    """Shift values back by ``horizon`` rows: row t gets row t + horizon, NaN past the end."""
    shifted = np.full(values.shape, np.nan)
    if horizon < len(values):
        shifted[:-horizon] = values[horizon:]
    return shifted


def _price_direction(close: np.ndarray, horizon: int) -> np.ndarray:
    future = _future(close, horizon)
    labels = (future > close).astype(np.float64)
    labels[np.isnan(future)] = np.nan
    return labels


def _signal(close: np.ndarray, horizon: int, threshold: float) -> np.ndarray:
    future_return = _future(close, horizon) / close - 1.0
    labels = np.where(future_return > threshold, "BUY", np.where(future_return < -threshold, "SELL", "HOLD"))
    result = labels.astype(object)
    result[np.isnan(future_return)] = np.nan
    return result


def _volatility_regime(close: np.ndarray, window: int) -> np.ndarray:
    log_returns = pd.Series(np.log(close)).diff()
    trailing = log_returns.rolling(window, min_periods=window).std()
    # The future window of bar t (returns t+1 .. t+w) is the trailing window of bar t+w.
    future = _future(trailing.to_numpy(), window)
    threshold = trailing.rolling(VOLATILITY_MEDIAN_WINDOWS * window, min_periods=window).median().to_numpy()
    labels = (future > threshold).astype(np.float64)
    labels[np.isnan(future) | np.isnan(threshold)] = np.nan
    return labels


class LabelCoder:
    """Map class labels of any coding to 0..k-1 and back.

    Classes are sorted: numerically when every label is a number (so -1
    comes before 1), otherwise as strings.  ``classes_`` contains their text
    for reports (``1.0`` shows as ``"1"``), and ``values_`` contains the original values.
    """

    def fit(self, labels: Any) -> LabelCoder:
        values = _as_series(labels).dropna()
        if values.empty:
            raise TargetError("no labels to learn classes from")
        self.numeric_ = pd.api.types.infer_dtype(values, skipna=True) in _NUMERIC_KINDS
        if self.numeric_:
            unique = np.unique(values.to_numpy(dtype=np.float64))
            self.values_ = [int(value) if value.is_integer() else float(value) for value in unique]
        else:
            self.values_ = sorted(set(values.astype(str)))
        self.classes_ = [str(value) for value in self.values_]
        return self

    def transform(self, labels: Any) -> np.ndarray:
        values = _as_series(labels)
        if self.numeric_:
            keys = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            categories = np.asarray(self.values_, dtype=np.float64)
        else:
            keys = values.astype(str).where(values.notna())
            categories = self.classes_
        codes = pd.Index(categories).get_indexer(keys).astype(np.int64)
        if (codes < 0).any():
            unknown = sorted({str(value) for value in values[codes < 0]})
            raise TargetError(f"unknown or empty label(s) {unknown[:5]}; the known classes are {self.classes_}")
        return codes

    def fit_transform(self, labels: Any) -> np.ndarray:
        return self.fit(labels).transform(labels)

    def inverse_transform(self, codes: Any) -> np.ndarray:
        codes = np.asarray(codes, dtype=np.int64).ravel()
        if codes.size and (codes.min() < 0 or codes.max() >= len(self.values_)):
            raise ValueError(f"class codes must be between 0 and {len(self.values_) - 1}, got {codes.min()}..{codes.max()}")
        return np.asarray(self.values_, dtype=object)[codes]


# pandas.api.types.infer_dtype kinds that mean "every label is a number".
_NUMERIC_KINDS = frozenset({"integer", "floating", "mixed-integer-float", "decimal"})


def _as_series(labels: Any) -> pd.Series:
    if isinstance(labels, pd.Series):
        return labels.reset_index(drop=True)
    return pd.Series(np.asarray(labels, dtype=object).ravel())
