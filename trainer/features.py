"""Indicator features from OHLCV bars, computed only from past and current bars.

Each Indicators row becomes one feature column (named after the row) in four
steps, all causal (the value at bar ``t`` uses bars up to ``t`` only):

1. **Calculation.**  A TA-Lib function (through ``talib.abstract``) or a
   derived method of :mod:`quanttrain.trainer.indicator_catalog`.  Parameters
   are TA-Lib's defaults, overridden by ``lookback_period`` as ``timeperiod``
   when the method has one, overridden by the row's own ``parameters``.
   Multi-output methods give the output named by ``output``, or their first
   output when it is unset (MACD: ``macd``; BBANDS: ``upperband``).
2. **Smoothing.**  When on, an exponential moving average with
   ``alpha = smoothing_factor``: ``s[t] = alpha * x[t] + (1 - alpha) * s[t-1]``,
   started at the first defined value.
3. **Update Frequency.**  The value is recomputed on the first bar of each
   period of ``update_frequency_minutes`` (periods counted from midnight UTC,
   1970-01-01, so divisors of a day align with midnight) and held on the
   other bars.  It has no effect when it is not longer than the bar interval.
4. **Thresholds.**  When set, ``<name>_below_lower`` is 1 where the value is
   at or below ``lower`` and ``<name>_above_upper`` is 1 where it is at or
   above ``upper``, else 0.

Normalization and Feature Weight are fitted statistics, so they belong to the
model's pipeline: :class:`FeatureScaler` is fitted on the training rows of
each fold only.  Warm-up rows stay NaN here; the dataset drops them.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import talib
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data
from talib import abstract

from quanttrain.trainer.config import RAW_COLUMNS, IndicatorSettings, Normalization, TrainingJobConfig
from quanttrain.trainer.data import bar_interval_minutes
from quanttrain.trainer.indicator_catalog import MethodInfo, lookup

BELOW_LOWER_SUFFIX = "_below_lower"
ABOVE_UPPER_SUFFIX = "_above_upper"
RETURN_LAG_PREFIX = "return_lag_"


class FeatureError(ValueError):
    """An indicator or feature column that cannot be computed, with the fix."""


def compute_indicator(
    bars: pd.DataFrame, indicator: IndicatorSettings, interval_minutes: float | None = None
) -> pd.Series:
    """Compute one indicator row as a feature series named after the row.

    ``interval_minutes`` is the bar interval for Update Frequency; it is
    inferred from the timestamps when omitted.
    """
    method = lookup(indicator.calculation_method)
    if method is None:
        raise FeatureError(
            f"indicator {indicator.name!r}: unknown calculation method {indicator.calculation_method!r}; "
            "use a TA-Lib function name (RSI, MACD, ...) or a derived method "
            "(BB_POSITION, VOLUME_RATIO, RETURNS, LOG_RETURNS, REALIZED_VOLATILITY)"
        )
    parameters = indicator_parameters(indicator, method)
    if method.source == "derived":
        try:
            values = _derived(method.name, bars, parameters)
        except FeatureError as error:
            raise FeatureError(f"indicator {indicator.name!r}: {error}") from None
    else:
        values = _talib_output(indicator, method, bars, parameters)

    if indicator.smoothing:
        values = _smooth(values, indicator.smoothing_factor)
    if interval_minutes is None:
        interval_minutes = bar_interval_minutes(bars.index)
    values = _hold_between_updates(values, bars.index, indicator.update_frequency_minutes, interval_minutes)
    return pd.Series(values, index=bars.index, name=indicator.name)


def indicator_parameters(indicator: IndicatorSettings, method: MethodInfo) -> dict[str, Any]:
    """Merge TA-Lib's defaults, the lookback period and the row's parameters, in that order."""
    parameters = dict(method.parameters)
    if "timeperiod" in parameters:
        parameters["timeperiod"] = indicator.lookback_period
    for key, value in indicator.parameters.items():
        if key not in method.parameters:
            allowed = ", ".join(method.parameters) or "none"
            raise FeatureError(
                f"indicator {indicator.name!r}: {method.name} has no parameter {key!r}; its parameters are: {allowed}"
            )
        parameters[key] = _like_default(value, method.parameters[key], indicator.name, key)
    return parameters


def _like_default(value: Any, default: Any, name: str, key: str) -> Any:
    """Coerce a sheet value to the type of TA-Lib's default (periods must be ints)."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FeatureError(f"indicator {name!r}: parameter {key!r} must be a number, got {value!r}") from None
    if isinstance(default, int):
        if not number.is_integer():
            raise FeatureError(f"indicator {name!r}: parameter {key!r} must be a whole number, got {value!r}")
        return int(number)
    return number


def _talib_output(
    indicator: IndicatorSettings, method: MethodInfo, bars: pd.DataFrame, parameters: dict[str, Any]
) -> np.ndarray:
    missing = [name for name in method.inputs if name not in RAW_COLUMNS]
    if missing:
        raise FeatureError(
            f"indicator {indicator.name!r}: {method.name} needs input(s) {missing} that bar data does not have"
        )
    if indicator.output is not None and indicator.output not in method.outputs:
        raise FeatureError(f"indicator {indicator.name!r}: {method.name} has no output {indicator.output!r}; "
                           f"its outputs are: {', '.join(method.outputs)}")
    inputs = {name: _column(bars, name) for name in set(method.inputs)}
    try:
        result = abstract.Function(method.name)(inputs, **parameters)
    except Exception as error:  # TA-Lib raises plain Exception for bad parameters
        raise FeatureError(f"indicator {indicator.name!r}: TA-Lib {method.name} failed with parameters "
                           f"{parameters}: {error}") from error
    outputs = result if isinstance(result, list) else [result]
    position = method.outputs.index(indicator.output) if indicator.output else 0
    return np.asarray(outputs[position], dtype=np.float64)


def _column(bars: pd.DataFrame, name: str) -> np.ndarray:
    return np.ascontiguousarray(bars[name].to_numpy(dtype=np.float64))


# Smallest timeperiod of each derived method: a moving average or a standard
# deviation needs two bars, as TA-Lib's SMA and BBANDS require.
_MIN_PERIODS = {"BB_POSITION": 2, "VOLUME_RATIO": 2, "RETURNS": 1, "LOG_RETURNS": 1, "REALIZED_VOLATILITY": 2}


def _derived(name: str, bars: pd.DataFrame, parameters: dict[str, Any]) -> np.ndarray:
    period = int(parameters["timeperiod"])
    if period < _MIN_PERIODS.get(name, 1):
        raise FeatureError(f"{name} needs a timeperiod (Lookback Period) of at least {_MIN_PERIODS[name]} bars, "
                           f"got {period}")
    if name == "BB_POSITION":
        return bollinger_position(_column(bars, "close"), period, float(parameters["nbdev"]))
    if name == "VOLUME_RATIO":
        return volume_ratio(_column(bars, "volume"), period)
    if name == "RETURNS":
        return period_returns(_column(bars, "close"), period)
    if name == "LOG_RETURNS":
        return log_returns(_column(bars, "close"), period)
    if name == "REALIZED_VOLATILITY":
        return realized_volatility(_column(bars, "close"), period)
    raise FeatureError(f"derived method {name!r} has no implementation")


def bollinger_position(close: np.ndarray, period: int, nbdev: float) -> np.ndarray:
    """Return where the close sits in its Bollinger bands: 0 at the lower band, 1 at the upper.

    A window of equal closes has zero-width bands and the close on the middle
    band, so its position is 0.5.
    """
    upper, _, lower = talib.BBANDS(close, timeperiod=period, nbdevup=nbdev, nbdevdn=nbdev, matype=0)
    width = upper - lower
    with np.errstate(divide="ignore", invalid="ignore"):
        position = (close - lower) / width
    position[width == 0] = 0.5
    return position


def volume_ratio(volume: np.ndarray, period: int) -> np.ndarray:
    """Return volume over its simple moving average; 1 where the average is 0 (no trading at all)."""
    average = talib.SMA(volume, timeperiod=period)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = volume / average
    ratio[average == 0] = 1.0
    return ratio


def period_returns(close: np.ndarray, period: int) -> np.ndarray:
    """Return ``close[t] / close[t - period] - 1``."""
    result = np.full(close.shape, np.nan)
    result[period:] = close[period:] / close[:-period] - 1.0
    return result


def log_returns(close: np.ndarray, period: int) -> np.ndarray:
    """Return ``log(close[t] / close[t - period])``."""
    result = np.full(close.shape, np.nan)
    result[period:] = np.log(close[period:] / close[:-period])
    return result


def realized_volatility(close: np.ndarray, period: int) -> np.ndarray:
    """Return the sample standard deviation (ddof 1) of the last ``period`` one-bar log returns.

    Per bar, not annualised: multiply by the square root of bars per year to annualise.
    """
    returns = pd.Series(log_returns(close, 1))
    return returns.rolling(period, min_periods=period).std().to_numpy()


def _smooth(values: np.ndarray, alpha: float) -> np.ndarray:
    smoothed = pd.Series(values).ewm(alpha=alpha, adjust=False).mean().to_numpy(copy=True)
    # ewm carries its last value over missing inputs; keep them missing instead.
    smoothed[np.isnan(values)] = np.nan
    return smoothed


def _hold_between_updates(
    values: np.ndarray, index: pd.DatetimeIndex, frequency_minutes: int, interval_minutes: float
) -> np.ndarray:
    if frequency_minutes <= interval_minutes or len(values) == 0:
        return values
    # asi8 counts from the Unix epoch in the index's unit (UTC for aware indexes).
    per_minute = pd.Timedelta(minutes=1) // pd.Timedelta(1, unit=index.unit)
    period = index.asi8 // (per_minute * frequency_minutes)
    is_update = np.empty(len(period), dtype=bool)
    is_update[0] = True
    is_update[1:] = period[1:] != period[:-1]
    # Each bar takes the value of the latest update bar at or before it.
    latest_update = np.maximum.accumulate(np.where(is_update, np.arange(len(period)), 0))
    return values[latest_update]


def threshold_flags(values: pd.Series, indicator: IndicatorSettings) -> dict[str, pd.Series]:
    """Return the 0/1 threshold columns of an indicator; NaN where the indicator is NaN."""
    flags: dict[str, pd.Series] = {}
    thresholds = indicator.thresholds
    if thresholds is None:
        return flags
    missing = values.isna()
    if thresholds.lower is not None:
        flags[indicator.name + BELOW_LOWER_SUFFIX] = (values <= thresholds.lower).astype(np.float64).mask(missing)
    if thresholds.upper is not None:
        flags[indicator.name + ABOVE_UPPER_SUFFIX] = (values >= thresholds.upper).astype(np.float64).mask(missing)
    return flags


def build_feature_frame(
    bars: pd.DataFrame, config: TrainingJobConfig, interval_minutes: float | None = None
) -> pd.DataFrame:
    """Build the unscaled feature matrix: Feature Columns, return lags, threshold flags.

    Columns come in that order: each Feature Column (an indicator's name as
    written on the Indicators sheet, or a raw bar column in lower case), then
    ``return_lag_<k>`` = ``close[t] / close[t - k] - 1`` for each of the
    strategy's return lags, then the threshold flags of those indicators.
    Warm-up rows are NaN.
    """
    if interval_minutes is None:
        interval_minutes = bar_interval_minutes(bars.index)
    indicators = {indicator.name.casefold(): indicator for indicator in config.indicators}
    columns: dict[str, pd.Series] = {}
    flags: dict[str, pd.Series] = {}
    for name in config.features.feature_columns:
        indicator = indicators.get(name.strip().casefold())
        if indicator is not None:
            values = compute_indicator(bars, indicator, interval_minutes)
            _add(columns, indicator.name, values)
            flags.update(threshold_flags(values, indicator))
        elif name.strip().casefold() in RAW_COLUMNS:
            raw = name.strip().casefold()
            _add(columns, raw, bars[raw].astype(np.float64))
        else:
            known = ", ".join([indicator.name for indicator in config.indicators] + list(RAW_COLUMNS))
            raise FeatureError(f"unknown feature column {name!r}; use an indicator of this strategy or a "
                               f"raw column: {known}")

    close = _column(bars, "close")
    for lag in config.strategy.feature_configuration.return_lags:
        _add(columns, f"{RETURN_LAG_PREFIX}{lag}", pd.Series(period_returns(close, lag), index=bars.index))
    for name, values in flags.items():
        _add(columns, name, values)
    return _frame(columns, bars.index)


def _add(columns: dict[str, pd.Series], name: str, values: pd.Series) -> None:
    if name in columns:
        raise FeatureError(f"feature column {name!r} appears twice; list each feature once")
    columns[name] = values


def _frame(columns: dict[str, pd.Series], index: pd.DatetimeIndex) -> pd.DataFrame:
    """Assemble the columns into one float block, copying each column once."""
    # Column-major, so each feature is contiguous: the layout of a pandas block.
    matrix = np.empty((len(index), len(columns)), dtype=np.float64, order="F")
    for position, values in enumerate(columns.values()):
        matrix[:, position] = values.to_numpy(dtype=np.float64)
    return pd.DataFrame(matrix, index=index, columns=list(columns), copy=False)


class FeatureScaler(TransformerMixin, BaseEstimator):
    """Per-column Normalization and Feature Weight, fitted on the rows given to ``fit`` only.

    Parameters:
        normalizations: one of NONE, ZSCORE, MINMAX, ROBUST per column
            (None: NONE for every column).
        weights: a multiplier in [0, 1] per column, applied after scaling;
            a weight of 0 drops the column (None: 1 for every column).

    ZSCORE subtracts the mean and divides by the standard deviation, MINMAX
    maps the fitted minimum and maximum to 0 and 1, ROBUST subtracts the
    median and divides by the interquartile range.  A constant column has a
    scale of 1 so it maps to 0 instead of NaN.  Statistics ignore NaN.

    Inside a scikit-learn Pipeline it is refitted on the training rows of each
    cross-validation fold, so no statistic uses the rows a fold is scored on.
    """

    def __init__(self, normalizations: list[str] | None = None, weights: list[float] | None = None) -> None:
        self.normalizations = normalizations
        self.weights = weights

    def fit(self, X, y=None):  # noqa: N803 (scikit-learn's names)
        values = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan")
        methods, weights = self._settings(values.shape[1])
        center = np.zeros(values.shape[1])
        scale = np.ones(values.shape[1])
        for method in (Normalization.ZSCORE, Normalization.MINMAX, Normalization.ROBUST):
            columns = np.flatnonzero(methods == method.value)
            if columns.size:
                center[columns], scale[columns] = _statistics(method, values[:, columns])
        scale[~np.isfinite(scale) | (scale == 0)] = 1.0
        center[~np.isfinite(center)] = 0.0
        self.center_ = center
        self.scale_ = scale
        self.weight_ = weights
        self.keep_ = weights > 0
        return self

    def transform(self, X):  # noqa: N803
        check_is_fitted(self, "center_")
        values = validate_data(self, X, dtype=np.float64, ensure_all_finite="allow-nan", reset=False)
        if not (self.center_.any() or (self.scale_ != 1).any() or (self.weight_ != 1).any()):
            return values  # nothing to scale: skip the copies, which cost most on large inputs
        scaled = values - self.center_
        scaled /= self.scale_
        scaled *= self.weight_
        return scaled[:, self.keep_]

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "center_")
        if input_features is None:
            input_features = getattr(self, "feature_names_in_", None)
        if input_features is None:
            input_features = [f"x{position}" for position in range(self.n_features_in_)]
        return np.asarray(input_features, dtype=object)[self.keep_]

    def _settings(self, n_columns: int) -> tuple[np.ndarray, np.ndarray]:
        methods = np.asarray(self.normalizations or [Normalization.NONE.value] * n_columns, dtype=object)
        weights = np.asarray(self.weights if self.weights is not None else [1.0] * n_columns, dtype=np.float64)
        if len(methods) != n_columns or len(weights) != n_columns:
            raise ValueError(f"FeatureScaler has {len(methods)} normalizations and {len(weights)} weights "
                             f"for {n_columns} columns; give one of each per column")
        methods = np.asarray([_normalization_name(method) for method in methods], dtype=object)
        if ((weights < 0) | (weights > 1) | ~np.isfinite(weights)).any():
            raise ValueError(f"feature weights must be between 0 and 1, got {weights.tolist()}")
        return methods, weights


def _normalization_name(method: Any) -> str:
    name = method.value if isinstance(method, Normalization) else str(method).upper()
    if name not in Normalization.__members__:
        raise ValueError(f"unknown normalization {method!r}; use one of {', '.join(Normalization.__members__)}")
    return name


def _statistics(method: Normalization, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the center and scale of each column, ignoring NaN.

    An all-NaN column gives NaN statistics (numpy warns); the caller maps
    them to a center of 0 and a scale of 1.
    """
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if method is Normalization.ZSCORE:
            return np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        if method is Normalization.MINMAX:
            low = np.nanmin(values, axis=0)
            return low, np.nanmax(values, axis=0) - low
        low, median, high = np.nanpercentile(values, [25, 50, 75], axis=0)
        return median, high - low


def make_feature_scaler(config: TrainingJobConfig, columns: list[str]) -> FeatureScaler:
    """Build the scaler for the given feature columns from the strategy's indicator rows.

    An indicator's column takes its Normalization and Feature Weight; its
    threshold flags take its weight unscaled (they are 0/1 already).  Raw bar
    columns and return lags are neither scaled nor weighted.
    """
    settings: dict[str, tuple[str, float]] = {}
    for indicator in config.indicators:
        settings[indicator.name] = (indicator.normalization.value, indicator.feature_weight)
        for suffix in (BELOW_LOWER_SUFFIX, ABOVE_UPPER_SUFFIX):
            settings[indicator.name + suffix] = (Normalization.NONE.value, indicator.feature_weight)
    chosen = [settings.get(column, (Normalization.NONE.value, 1.0)) for column in columns]
    return FeatureScaler(
        normalizations=[method for method, _ in chosen],
        weights=[weight for _, weight in chosen],
    )
