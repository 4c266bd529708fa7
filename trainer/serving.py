"""Real-time predictions from a registered model, with the feature code of training.

A :class:`ServedModel` is one registered version: the estimator (loaded by
:meth:`ModelRegistry.load`, which checks every file's sha256 and unpickles
nothing), the job configuration it was trained with (from ``result.json``,
checked against the sha256 recorded in ``metadata.json``) and its classes.

A :class:`Predictor` is one stream of bars.  It keeps the latest
``history_bars`` bars and, for each new bar, runs
:func:`~quanttrain.trainer.features.build_feature_frame` on them, the same
function training ran on the whole file.  Every feature is causal, so the row
of the newest bar uses that bar and earlier ones only.

How long is long enough?  Moving averages need ``timeperiod`` bars.  But
recursive indicators (EMA, RSI, ATR, MACD, smoothing) depend on every earlier
bar, with weights that decay geometrically.  And Update Frequency keeps the
value of the first bar of its period.  :func:`required_history` measures the
need on a seeded random walk at the model's bar interval.  It computes the
features once on all bars and once on the last ``n`` bars, and takes the
smallest ``n`` for which the last :data:`CHECK_ROWS` rows agree within
:data:`FEATURE_TOLERANCE` of each feature's spread.  Features that never
agree (cumulative ones such as OBV or AD, whose level depends on where the
data starts) cannot be served, and loading the model fails with their names.

A bar is predicted once the stream contains ``warmup_bars`` bars: the history,
plus for an LSTM the ``sequence_length - 1`` earlier feature rows of its
input window.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from quanttrain.trainer.config import ConfigError, ModelType, PredictionTarget, TrainingJobConfig, load_job_config
from quanttrain.trainer.data import INDEX_NAME, OHLCV_COLUMNS, bar_interval_minutes
from quanttrain.trainer.features import build_feature_frame

logger = logging.getLogger(__name__)

BAR_FIELDS = ("timestamp", *OHLCV_COLUMNS)

# Online and offline features must agree to this fraction of each feature's
# spread (its standard deviation on the probe, at least 1).  On the S&P 500
# test data this leaves the predicted probabilities unchanged to 1e-12.
FEATURE_TOLERANCE = 1e-9

# Rows at the end of the probe that must all agree, so one lucky crossing of
# two decaying series does not pass for convergence.
CHECK_ROWS = 32

# Bars in the probe series; the longest history it can measure is half of it.
# For an RSI of 252 bars (the longest Lookback Period) on daily bars,
# required_history measures 5,248 bars: its start decays to 1e-9 after
# 252 * ln(1e9) = 5,222 bars.
PROBE_BARS = 16_384

# Seed of the probe's random walk, fixed so every load measures the same need.
PROBE_SEED = 20_240_601

# Bars needed before their median spacing is compared with the model's bar
# interval, and the relative difference allowed.  Bars of another interval
# would silently change every indicator's meaning (14 minutes instead of 14 days).
INTERVAL_CHECK_BARS = 20
INTERVAL_TOLERANCE = 0.1


class ServingError(Exception):
    """A registered model that cannot be served, with the reason and the fix."""


@dataclasses.dataclass(frozen=True)
class BarProblem:
    """One invalid field of a bar: its path, its value and the fix."""

    field: str
    value: Any
    message: str

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "value": _json_value(self.value), "message": self.message}

    def __str__(self) -> str:
        return f"{self.field}: {self.message} (got {_json_value(self.value)!r})"


class BarError(ValueError):
    """Invalid bars, with every problem found; nothing of the input was applied."""

    def __init__(self, problems: list[BarProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(str(problem) for problem in self.problems))


@dataclasses.dataclass(frozen=True)
class Bar:
    """One OHLCV bar; ``timestamp`` is naive UTC, ``timestamp_text`` is the text the client sent."""

    timestamp: pd.Timestamp
    timestamp_text: str
    open: float
    high: float
    low: float
    close: float
    volume: float


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The model's prediction for one bar.

    ``label`` is the most probable class in the labels of the training data
    (0/1, -1/+1, BUY/HOLD/SELL).  ``signal`` is the position the backtest
    would take (+1 long, -1 short, 0 none), None for a VOLATILITY target,
    which has no direction.  ``acted_on`` is whether the signal would be
    traded: a non-zero signal, or for VOLATILITY a confidence at or above
    the threshold.
    """

    timestamp: str
    label: Any
    probabilities: dict[str, float]
    confidence: float
    threshold: float
    threshold_reached: bool
    signal: int | None
    acted_on: bool
    strategy: str
    model_version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "timestamp": self.timestamp, "label": self.label, "probabilities": self.probabilities,
            "confidence": self.confidence, "threshold": self.threshold,
            "thresholdReached": self.threshold_reached, "signal": self.signal, "actedOn": self.acted_on,
            "strategy": self.strategy, "modelVersion": self.model_version,
        }


@dataclasses.dataclass(frozen=True)
class Pending:
    """A bar accepted without a prediction: still warming up, or a feature undefined at this bar."""

    timestamp: str
    reason: str
    received_bars: int
    required_bars: int

    def to_json(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "reason": self.reason,
                "receivedBars": self.received_bars, "requiredBars": self.required_bars}


# -- bars ----------------------------------------------------------------------------


def parse_bar(payload: Any, field: str = "bar") -> Bar:
    """Validate one bar object; raise BarError listing every bad field."""
    if not isinstance(payload, dict):
        raise BarError([BarProblem(field, payload, "must be a JSON object with the fields "
                                                   f"{', '.join(BAR_FIELDS)}")])
    problems = []
    missing = [name for name in BAR_FIELDS if name not in payload]
    if missing:
        problems.append(BarProblem(field, sorted(payload), f"missing field(s) {', '.join(missing)}; "
                                                           f"a bar needs {', '.join(BAR_FIELDS)}"))
    unknown = sorted(str(name) for name in payload if name not in BAR_FIELDS)
    if unknown:
        problems.append(BarProblem(field, unknown, f"unknown field(s) {', '.join(unknown)}; "
                                                   f"a bar has only {', '.join(BAR_FIELDS)} (names are lower case)"))
    timestamp = _parse_timestamp(payload["timestamp"], f"{field}.timestamp", problems) if "timestamp" in payload else None
    values = {name: _parse_number(payload[name], f"{field}.{name}", problems)
              for name in OHLCV_COLUMNS if name in payload}
    if problems:
        raise BarError(problems)
    return Bar(timestamp, str(payload["timestamp"]), **values)


def parse_bars(payload: Any, field: str = "bars") -> list[Bar]:
    """Validate a list of bars in strictly increasing time order; raise BarError with every problem."""
    if not isinstance(payload, list) or not payload:
        raise BarError([BarProblem(field, _summary(payload), "must be a non-empty JSON array of bar objects")])
    bars: list[Bar] = []
    problems: list[BarProblem] = []
    for position, item in enumerate(payload):
        try:
            bar = parse_bar(item, f"{field}[{position}]")
        except BarError as error:
            problems.extend(error.problems)
            continue
        if bars and bar.timestamp <= bars[-1].timestamp:
            problems.append(_order_problem(f"{field}[{position}].timestamp", bar, bars[-1]))
        bars.append(bar)
    if problems:
        raise BarError(problems)
    return bars


def check_order(bar: Bar, last: Bar | None, field: str) -> None:
    """Raise BarError unless ``bar`` comes strictly after ``last``."""
    if last is not None and bar.timestamp <= last.timestamp:
        raise BarError([_order_problem(field, bar, last)])


def _order_problem(field: str, bar: Bar, last: Bar) -> BarProblem:
    relation = "repeats" if bar.timestamp == last.timestamp else "is older than"
    return BarProblem(field, bar.timestamp_text,
                      f"{relation} the last bar seen ({last.timestamp_text}); send bars in strictly increasing "
                      "time order, each bar once")


def _parse_timestamp(value: Any, field: str, problems: list[BarProblem]) -> pd.Timestamp | None:
    if not isinstance(value, str):
        problems.append(BarProblem(field, value, "must be an ISO 8601 text such as 2018-12-28 or "
                                                 "2018-12-28T14:30:00Z"))
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        problems.append(BarProblem(field, value, "is not an ISO 8601 timestamp; use for example 2018-12-28 or "
                                                 "2018-12-28T14:30:00+00:00"))
        return None
    if parsed.tzinfo is not None:
        # Training data with UTC offsets is converted to UTC too (see data.load_bars).
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return pd.Timestamp(parsed)


def _parse_number(value: Any, field: str, problems: list[BarProblem]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        problems.append(BarProblem(field, value, "must be a number"))
        return math.nan
    try:
        number = float(value)
    except (ValueError, OverflowError):  # float() of an integer beyond 1e308 overflows
        problems.append(BarProblem(field, value, "is not a number; send a JSON number such as 1234.5"))
        return math.nan
    if not math.isfinite(number):
        problems.append(BarProblem(field, value, "must be a finite number, not NaN or infinity"))
    return number


def check_interval(timestamps: list[pd.Timestamp], interval_minutes: float, field: str) -> None:
    """Raise BarError when the median spacing of the bars differs from the model's bar interval."""
    if len(timestamps) < INTERVAL_CHECK_BARS:
        return
    actual = bar_interval_minutes(pd.DatetimeIndex(timestamps))
    if abs(actual - interval_minutes) > INTERVAL_TOLERANCE * interval_minutes:
        raise BarError([BarProblem(
            field, f"{actual:g} minutes",
            f"the bars are {actual:g} minutes apart (median), but the model was trained on "
            f"{interval_minutes:g}-minute bars; send bars of that interval",
        )])


def bars_frame(bars: list[Bar]) -> pd.DataFrame:
    """Arrange bars as ``load_bars`` returns them: float64 OHLCV columns on a timestamp index."""
    index = pd.DatetimeIndex([bar.timestamp for bar in bars], name=INDEX_NAME)
    columns = {name: np.fromiter((getattr(bar, name) for bar in bars), dtype=np.float64, count=len(bars))
               for name in OHLCV_COLUMNS}
    return pd.DataFrame(columns, index=index)


def _summary(value: Any) -> Any:
    """Return a short stand-in for a value too large to echo in an error."""
    if isinstance(value, (dict, list)):
        return f"<JSON {type(value).__name__} of {len(value)} item(s)>"
    return value


def _json_value(value: Any) -> Any:
    """Return a value short enough to echo in an error and to log, and valid in strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and len(value) > 80:
        return value[:77] + "..."
    if isinstance(value, dict) or (isinstance(value, list) and len(value) > 10):
        return _summary(value)
    return value


# -- the served model -----------------------------------------------------------------


def required_history(config: TrainingJobConfig, interval_minutes: float) -> int:
    """Return the bars of history after which online features match features over all earlier bars.

    An indicator held between updates shows the value of the first bar of its
    Update Frequency period, up to one period before the newest bar, so the
    history is the measured need plus the bars of the longest period.

    Raises:
        ServingError: a feature never matches within the probe, because its
            value depends on the whole history (OBV, AD, CUMSUM, ...).
    """
    unheld = config.model_copy(deep=True)
    for indicator in unheld.indicators:
        indicator.update_frequency_minutes = 1
    period_bars = max((math.ceil(indicator.update_frequency_minutes / interval_minutes - 1e-9)
                       for indicator in config.indicators), default=1)
    return _measured_history(unheld, interval_minutes) + max(period_bars, 1) - 1


def _measured_history(config: TrainingJobConfig, interval_minutes: float) -> int:
    probe = _probe_bars(PROBE_BARS, interval_minutes)
    everything = build_feature_frame(probe, config, interval_minutes)
    full = everything.to_numpy()[-CHECK_ROWS:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column has no spread
        spread = np.nan_to_num(np.nanstd(everything.to_numpy(), axis=0), nan=1.0)
    tolerance = FEATURE_TOLERANCE * np.maximum(spread, 1.0)

    def mismatched(length: int) -> np.ndarray:
        tail = build_feature_frame(probe.iloc[-length:], config, interval_minutes).to_numpy()[-CHECK_ROWS:]
        both_missing = np.isnan(tail) & np.isnan(full)
        close = np.abs(tail - full) <= tolerance
        return ~(close | both_missing).all(axis=0)

    # A tail much shorter than the probe starts far from where the probe starts.
    longest = PROBE_BARS // 2
    # Double until the features agree, then bisect down to the shortest length that agrees.
    low, high = CHECK_ROWS, CHECK_ROWS
    while mismatched(high).any():
        if high >= longest:
            bad = [str(name) for name, flag in zip(everything.columns, mismatched(longest)) if flag]
            raise ServingError(
                f"feature(s) {', '.join(bad)} depend on the whole price history (a cumulative indicator such as "
                "OBV or AD, whose level depends on where the data starts), so a server cannot reproduce the "
                "values the model was trained on; use a windowed indicator (for example ADOSC instead of AD) "
                "and retrain"
            )
        low, high = high, min(2 * high, longest)
    while low < high:
        middle = (low + high) // 2
        if mismatched(middle).any():
            low = middle + 1
        else:
            high = middle
    return high


def _probe_bars(count: int, interval_minutes: float) -> pd.DataFrame:
    """Return a seeded geometric random walk of OHLCV bars at the given interval."""
    # NOTE: adaptive methods (KAMA, MAMA) forget their start at a rate that depends on
    # the prices, so real data may need somewhat more history than this walk.
    rng = np.random.default_rng(PROBE_SEED)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, count)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1.0 + np.abs(rng.normal(0.0, 0.004, count)))
    low = np.minimum(open_, close) * (1.0 - np.abs(rng.normal(0.0, 0.004, count)))
    volume = rng.lognormal(13.0, 0.4, count)
    start = pd.Timestamp("2000-01-03")
    index = pd.DatetimeIndex(start + pd.to_timedelta(np.arange(count) * interval_minutes, unit="min"), name=INDEX_NAME)
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index)


def class_values(classes: list[str]) -> list[Any]:
    """Return the training labels behind the class texts of the metadata: numbers when every class is one."""
    # NOTE: labels that were digit strings in a Parquet file come back as numbers here,
    # because metadata.json records every class as text.
    try:
        numbers = [float(text) for text in classes]
    except ValueError:
        return list(classes)
    return [int(number) if number.is_integer() else number for number in numbers]


@dataclasses.dataclass
class ServedModel:
    """One registered model version, ready to predict; shared by every stream."""

    strategy: str
    version: str
    estimator: Any
    config: TrainingJobConfig
    metadata: dict[str, Any]
    classes: list[str]
    labels: list[Any]
    feature_names: list[str]
    interval_minutes: float
    history_bars: int
    context_rows: int

    @classmethod
    def load(cls, registry_dir: str | Path, strategy: str, version: str | None = None,
             alias: str | None = None) -> ServedModel:
        """Load a version from the registry and measure the history its features need.

        Raises:
            RegistryError: the version does not exist or a file's sha256 changed.
            ServingError: the stored configuration is unusable or a feature cannot be served.
        """
        from quanttrain.trainer.registry import ModelRegistry

        loaded = ModelRegistry(registry_dir).load(strategy, version, alias)
        result = _verified_result(loaded.path, loaded.metadata)
        config = _stored_config(loaded.path, result, loaded.metadata)
        interval = config.strategy.feature_configuration.bar_interval_minutes or result["data"]["intervalMinutes"]
        features = list(loaded.metadata["features"])
        probe_columns = list(build_feature_frame(_probe_bars(CHECK_ROWS, float(interval)), config, float(interval)).columns)
        if probe_columns != features:
            raise ServingError(
                f"{loaded.path}: the model was trained on features {features}, but this version of quanttrain "
                f"builds {probe_columns} from its configuration; serve it with the quanttrain version that trained it"
            )
        context = 0
        if config.strategy.model_type is ModelType.LSTM:
            context = config.strategy.feature_configuration.sequence_length - 1
        classes = list(loaded.metadata["classes"])
        model = cls(loaded.strategy, loaded.version, loaded.model, config, loaded.metadata, classes,
                    class_values(classes), features, float(interval), required_history(config, float(interval)),
                    context)
        logger.info("loaded %s version %s: %d features, %d bars of warm-up", model.strategy, model.version,
                    len(features), model.warmup_bars)
        gate = loaded.metadata.get("gate", {})
        if gate.get("passed") is False:
            logger.warning("serving %s version %s, which failed the performance gate: %s", model.strategy,
                           model.version, "; ".join(gate.get("reasons", [])) or "no reason recorded")
        return model

    @property
    def warmup_bars(self) -> int:
        """Bars a stream must hold before its first prediction."""
        return self.history_bars + self.context_rows

    @property
    def threshold(self) -> float:
        return self.config.strategy.confidence_threshold

    def describe(self) -> dict[str, Any]:
        """Return the facts a client needs: identity, classes, features, threshold, warm-up, trained metrics."""
        strategy = self.config.strategy
        return {
            "strategy": self.strategy, "strategyName": strategy.name, "version": self.version,
            "sha256": self.metadata.get("modelSha256"), "createdAt": self.metadata.get("createdAt"),
            "modelType": strategy.model_type.value, "predictionTarget": strategy.prediction_target.value,
            "classes": self.labels, "features": self.feature_names, "confidenceThreshold": self.threshold,
            "realtimeMode": strategy.realtime_mode, "intervalMinutes": self.interval_minutes,
            "warmupBars": self.warmup_bars, "metrics": self.metadata.get("metrics", {}),
            "gate": self.metadata.get("gate", {}),
        }

    def features(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Compute the unscaled features of every bar in ``frame``, exactly as training did."""
        return build_feature_frame(frame, self.config, self.interval_minutes)

    def probabilities(self, rows: pd.DataFrame) -> np.ndarray:
        """Return class probabilities for complete feature rows in time order (one column per class)."""
        from quanttrain.trainer.evaluation import predict_probabilities

        return predict_probabilities(self.estimator, rows, len(self.classes))

    def predictions(self, timestamps: list[str], probabilities: np.ndarray) -> list[Prediction]:
        """Turn probability rows into predictions with the label, threshold and signal of each."""
        from quanttrain.trainer.backtest import signals

        target = self.config.strategy.prediction_target
        directions: list[int | None]
        if target is PredictionTarget.VOLATILITY:
            directions = [None] * len(timestamps)
        else:
            directions = [int(value) for value in signals(probabilities, self.classes, target, self.threshold)[0]]
        return [self._prediction(text, row, direction) for text, row, direction in
                zip(timestamps, probabilities, directions)]

    def _prediction(self, timestamp: str, row: np.ndarray, direction: int | None) -> Prediction:
        best = int(np.argmax(row))
        confidence = float(row[best])
        reached = confidence >= self.threshold
        return Prediction(
            timestamp=timestamp, label=self.labels[best],
            probabilities={name: float(value) for name, value in zip(self.classes, row)},
            confidence=confidence, threshold=self.threshold, threshold_reached=reached, signal=direction,
            acted_on=reached if direction is None else direction != 0,
            strategy=self.strategy, model_version=self.version,
        )


def _verified_result(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    from quanttrain.trainer.registry import RESULT_FILE, TamperedArtifactError, sha256_file

    file = path / RESULT_FILE
    expected = metadata.get("artifacts", {}).get(RESULT_FILE, {}).get("sha256")
    if expected is None or not file.is_file():
        raise ServingError(f"{file}: missing or not recorded in metadata.json; the model's configuration is "
                           "unknown, so it cannot be served (train and register it again)")
    if sha256_file(file) != expected:
        raise TamperedArtifactError(f"{file}: sha256 differs from the one recorded at save time; not served")
    return json.loads(file.read_text(encoding="utf-8"))


def _stored_config(path: Path, result: dict[str, Any], metadata: dict[str, Any]) -> TrainingJobConfig:
    from quanttrain.trainer.pipeline import config_sha256

    try:
        config = load_job_config(result["config"])
    except (KeyError, ConfigError) as error:
        raise ServingError(f"{path / 'result.json'}: the stored configuration is invalid for this version of "
                           f"quanttrain: {error}") from error
    if metadata.get("configSha256") not in (None, config_sha256(config)):
        raise ServingError(f"{path / 'result.json'}: its configuration differs from the configSha256 in "
                           "metadata.json; train and register the model again")
    return config


# -- prediction -----------------------------------------------------------------------


class Predictor:
    """One stream of bars: a rolling buffer of the latest bars and a prediction per new bar."""

    def __init__(self, model: ServedModel) -> None:
        self.model = model
        self.received = 0
        self.last: Bar | None = None
        # The newest bar's feature row once the history is full, for inspection and tests.
        self.features: pd.Series | None = None
        self._bars: collections.deque[Bar] = collections.deque(maxlen=model.history_bars)
        # Complete feature rows after the warm-up: the input window of a sequence model.
        self._rows: collections.deque[np.ndarray] = collections.deque(maxlen=model.context_rows + 1)

    @property
    def is_warm(self) -> bool:
        return len(self._rows) == self._rows.maxlen

    def update(self, bar: Bar, field: str = "bar") -> Prediction | Pending:
        """Add the newest bar and predict it from the buffered bars; raise BarError for an out-of-order bar."""
        check_order(bar, self.last, f"{field}.timestamp")
        stamps = [item.timestamp for item in self._bars][-INTERVAL_CHECK_BARS + 1:]
        check_interval([*stamps, bar.timestamp], self.model.interval_minutes, f"{field}.timestamp")
        self._bars.append(bar)
        self.last = bar
        self.received += 1
        if len(self._bars) < self.model.history_bars:
            return self._pending(bar, "warming up the indicators")
        row = self.model.features(bars_frame(list(self._bars))).iloc[-1:]
        self.features = row.iloc[0]
        if row.isna().to_numpy().any():
            # Training drops such rows, and so does the input window of a sequence model.
            return self._pending(bar, _undefined(row.iloc[0]))
        self._rows.append(row.to_numpy()[0])
        if not self.is_warm:
            return self._pending(bar, "filling the model's input window")
        window = pd.DataFrame(np.vstack(self._rows), columns=row.columns)
        probabilities = self.model.probabilities(window)[-1:]
        return self.model.predictions([bar.timestamp_text], probabilities)[0]

    def _pending(self, bar: Bar, reason: str) -> Pending:
        return Pending(bar.timestamp_text, reason, self.received, self.model.warmup_bars)


def predict_history(model: ServedModel, bars: list[Bar]) -> tuple[list[Prediction], list[Pending]]:
    """Predict every bar of a history that has had its warm-up, in one pass over the features.

    Bar ``t`` is predicted when at least ``history_bars`` bars end at ``t``,
    as in :class:`Predictor`.  Its features come from all bars up to ``t``
    rather than the latest ``history_bars``, which agree within
    :data:`FEATURE_TOLERANCE` by the definition of ``history_bars``.
    """
    features = model.features(bars_frame(bars))
    complete = features.notna().all(axis=1).to_numpy()
    warm = np.arange(len(bars)) >= model.history_bars - 1
    usable = np.flatnonzero(complete & warm)
    skipped = [Pending(bars[index].timestamp_text, _undefined(features.iloc[index]), index + 1, model.warmup_bars)
               for index in np.flatnonzero(warm & ~complete)]
    if usable.size <= model.context_rows:
        return [], skipped
    probabilities = model.probabilities(features.iloc[usable])
    # A sequence model's first rows lack a full input window; they only feed the later ones.
    chosen = usable[model.context_rows:]
    predictions = model.predictions([bars[index].timestamp_text for index in chosen],
                                    probabilities[model.context_rows:])
    return predictions, skipped


def _undefined(row: pd.Series) -> str:
    missing = ", ".join(str(name) for name in row.index[row.isna().to_numpy()])
    return f"feature(s) {missing} undefined at this bar, so it is not predicted (training drops such rows too)"
