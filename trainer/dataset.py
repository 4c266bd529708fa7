"""The model's input: feature rows and their labels, aligned and without gaps.

:func:`build_dataset` computes the features and the target of every bar and
keeps only the rows where both are known.  So warm-up rows (a feature is NaN)
and the last rows whose future is not in the data (no label) are dropped,
never filled.  Rows stay in time order.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from quanttrain.trainer.config import TrainingJobConfig
from quanttrain.trainer.data import bar_interval_minutes
from quanttrain.trainer.features import FeatureError, build_feature_frame
from quanttrain.trainer.targets import (
    LabelCoder,
    TargetError,
    build_target,
    horizon_bars,
    label_column,
    target_lookahead_bars,
)


@dataclasses.dataclass
class Dataset:
    """Feature rows with their labels, in time order.

    Attributes:
        X: unscaled features, one row per bar, indexed by timestamp.
        y: class codes 0..k-1 (see ``classes``).
        classes: class labels as text, in code order (``coder`` maps back).
        timestamps: the bar time of each row.
        horizon: bars the label at a row looks ahead.  Walk-forward folds and
            chronological splits need at least this gap, so that no training
            label overlaps the evaluation period.
        interval_minutes: bar interval (1440 for daily bars).
        close: close price of each row, for the strategy backtest.
        feature_names: the columns of ``X``.
        coder: the label coder, for mapping predictions back to labels.
        prediction_horizon: bars between a row and the bar its prediction is
            about (``horizon`` can be longer for the VOLATILITY target).
    """

    X: pd.DataFrame
    y: np.ndarray
    classes: list[str]
    timestamps: pd.DatetimeIndex
    horizon: int
    interval_minutes: float
    close: np.ndarray
    feature_names: list[str]
    coder: LabelCoder
    prediction_horizon: int

    def __len__(self) -> int:
        return len(self.y)


def build_dataset(bars: pd.DataFrame, config: TrainingJobConfig) -> Dataset:
    """Compute features and labels and keep the rows where every value is known.

    Raises:
        FeatureError: a feature has no value on any bar.
        TargetError: no row is left, or the labels contain a single class.
    """
    if len(bars) < 2:
        raise TargetError(f"{len(bars)} bar(s) are too few to train on; use a longer date range")
    interval = config.strategy.feature_configuration.bar_interval_minutes or bar_interval_minutes(bars.index)
    prediction_horizon = horizon_bars(config.strategy.prediction_horizon_minutes, interval)
    features = build_feature_frame(bars, config, interval)
    labels = build_target(bars, config, prediction_horizon)

    empty = [str(name) for name in features.columns[features.isna().all().to_numpy()]]
    if empty:
        raise FeatureError(
            f"feature(s) {', '.join(empty)} have no value on any of the {len(bars)} bars; the data may be too "
            "short for the lookback period, or the method undefined for these prices (ACOS of prices above 1)"
        )
    complete = features.notna().all(axis=1).to_numpy() & labels.notna().to_numpy()
    if not complete.any():
        raise TargetError(
            f"no row has every feature and a label: {len(bars)} bars are too few for the indicators' "
            f"warm-up and a horizon of {prediction_horizon} bars; use more data or shorter lookback periods"
        )
    coder = LabelCoder().fit(labels[complete])
    if len(coder.classes_) < 2:
        raise TargetError(
            f"the target {config.features.target_variable!r} has the single class {coder.classes_[0]!r} "
            f"over {int(complete.sum())} rows; a classifier needs at least two classes"
        )

    # A user's label column gets the prediction horizon: its own look-ahead is unknown.
    lookahead = prediction_horizon if label_column(bars, config) else target_lookahead_bars(config, prediction_horizon)
    X = features.loc[complete]
    return Dataset(
        X=X,
        y=coder.transform(labels[complete]),
        classes=list(coder.classes_),
        timestamps=X.index,
        horizon=lookahead,
        interval_minutes=float(interval),
        close=bars["close"].to_numpy(dtype=np.float64)[complete],
        feature_names=list(X.columns),
        coder=coder,
        prediction_horizon=prediction_horizon,
    )
