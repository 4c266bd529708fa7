"""Typed job configuration: everything the trainer needs to train one strategy.

One :class:`TrainingJobConfig` is one strategy row of the workbooks, joined
with its Models, Features, Portfolio, Risk, Allocation, Indicators,
Parameters and Thresholds rows.  The same models are

* filled by the Excel converter (snake_case field names, one sheet row each),
* serialised into the MLTrainingJob's ``spec`` (camelCase aliases),
* turned into the CRD's OpenAPI schema (descriptions, enums and ranges), and
* read back by the trainer from the job's YAML.

Single-field ranges live on the fields, so the API server enforces them at
``kubectl apply`` time.  Rules across fields live in :func:`rule_violations`,
which returns every broken rule with its field path, so callers can report
them all at once (the converter maps paths to cells).

Units are in the field names where the sheet has one: ``..._days``,
``..._minutes``, ``..._hours``.  Ratios and percentages are fractions
(0.05 means 5 %).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

# Raw bar columns that Feature Columns may name without an indicator row.
RAW_COLUMNS = ("open", "high", "low", "close", "volume")


class CamelModel(BaseModel):
    """Base model: camelCase in YAML and JSON, snake_case in Python, no unknown keys."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )

    def to_spec(self) -> dict[str, Any]:
        """Serialise to the camelCase, JSON-compatible form stored in a resource."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class ModelType(str, enum.Enum):
    RANDOM_FOREST = "RANDOM_FOREST"
    XGB = "XGB"
    LSTM = "LSTM"
    SVM = "SVM"


class PredictionTarget(str, enum.Enum):
    PRICE_DIRECTION = "PRICE_DIRECTION"
    VOLATILITY = "VOLATILITY"
    SIGNAL = "SIGNAL"


class SearchMethod(str, enum.Enum):
    GRID_SEARCH = "GRID_SEARCH"
    RANDOM_SEARCH = "RANDOM_SEARCH"
    BAYESIAN = "BAYESIAN"
    NONE = "NONE"


class ScoringMetric(str, enum.Enum):
    ACCURACY = "ACCURACY"
    PRECISION = "PRECISION"
    RECALL = "RECALL"
    F1 = "F1"
    ROC_AUC = "ROC_AUC"


class PositionSizing(str, enum.Enum):
    FIXED = "FIXED"
    KELLY = "KELLY"
    VOLATILITY = "VOLATILITY"
    ML_BASED = "ML_BASED"


class ExitRuleType(str, enum.Enum):
    FIXED = "FIXED"
    ADAPTIVE = "ADAPTIVE"
    ML_PREDICTED = "ML_PREDICTED"


class IndicatorType(str, enum.Enum):
    TECHNICAL = "TECHNICAL"
    VOLUME = "VOLUME"
    VOLATILITY = "VOLATILITY"
    CUSTOM = "CUSTOM"


class Normalization(str, enum.Enum):
    NONE = "NONE"
    ZSCORE = "ZSCORE"
    MINMAX = "MINMAX"
    ROBUST = "ROBUST"


class FeatureOptions(CamelModel):
    """The Strategy sheet's Feature Configuration JSON: options for derived features and targets."""

    return_lags: list[int] = Field(
        default_factory=lambda: [1, 5, 10],
        description="Past-return features to add, each a lag in bars (1-252).",
    )
    signal_threshold: float = Field(
        default=0.002, gt=0.0, le=0.2,
        description="SIGNAL target: a future return above this fraction is BUY, below its "
        "negative is SELL, otherwise HOLD.",
    )
    volatility_window: int = Field(
        default=20, ge=2, le=252,
        description="VOLATILITY target: bars in the realised-volatility window.",
    )
    sequence_length: int = Field(
        default=30, ge=2, le=512, description="LSTM: bars in each input sequence window."
    )
    bar_interval_minutes: int | None = Field(
        default=None, ge=1, le=43200,
        description="Bar interval in minutes; inferred from the timestamps when absent.",
    )

    @field_validator("return_lags")
    @classmethod
    def _lags_in_range(cls, lags: list[int]) -> list[int]:
        bad = [lag for lag in lags if not 1 <= lag <= 252]
        if bad:
            raise ValueError(f"return lags must be between 1 and 252 bars, got {bad}")
        return lags


class StrategySettings(CamelModel):
    """The Strategy sheet: what to predict, from which data, with which model."""

    name: str = Field(min_length=1, max_length=50, description="Strategy name as written in the workbook.")
    model_type: ModelType = Field(description="Model family to train.")
    prediction_target: PredictionTarget = Field(description="What the model predicts.")
    training_dataset: str = Field(
        min_length=1,
        description="Path of the bar data (CSV or Parquet) where the trainer runs; relative paths "
        "resolve against the dataset volume in a pod and the working directory locally.",
    )
    model_path: str = Field(
        min_length=1,
        description="Name of the model in the registry, or a path under the registry root.",
    )
    feature_configuration: FeatureOptions = Field(
        default_factory=lambda: FeatureOptions(),
        description="Options for derived features and targets (JSON object).",
    )
    confidence_threshold: float = Field(
        ge=0.5, le=0.99, description="Minimum predicted probability for a signal to be acted on."
    )
    training_window_days: int = Field(
        ge=30, le=365,
        description="Rolling training window in calendar days: each fit sees at most this much "
        "history before its evaluation period.",
    )
    prediction_horizon_minutes: int = Field(
        ge=1, le=1440, description="How far ahead the target looks, in minutes; converted to bars."
    )
    realtime_mode: bool = Field(default=False, description="Serve the model for real-time predictions.")


class ParameterRange(CamelModel):
    """A numeric search dimension; integers when both bounds are integers."""

    low: int | float = Field(description="Lower bound (inclusive).")
    high: int | float = Field(description="Upper bound (inclusive).")
    log: bool = Field(default=False, description="Sample on a log scale (needs low > 0).")

    @model_validator(mode="after")
    def _check_bounds(self) -> ParameterRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range needs low > 0, got low={self.low}")
        return self

    @property
    def is_integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


SearchDimension = list[Any] | ParameterRange


class TrainingSettings(CamelModel):
    """The Models sheet: search, validation, stopping, gate and compute settings."""

    hyperparameter_optimization: SearchMethod = Field(
        default=SearchMethod.NONE, description="Hyperparameter search method."
    )
    max_optimization_iterations: int = Field(
        default=20, ge=1, le=500, description="Trials for random and Bayesian search; a cap for grid search."
    )
    cv_folds: int = Field(default=5, ge=2, le=20, description="Walk-forward cross-validation folds.")
    scoring_metric: ScoringMetric = Field(default=ScoringMetric.ACCURACY, description="Metric the search maximises.")
    parallel_jobs: int = Field(default=1, ge=1, le=64, description="Trials run in parallel on one node.")
    random_seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Seed for every random choice.")
    search_space: dict[str, SearchDimension] = Field(
        default_factory=dict,
        description="Parameter name to a list of values, or to {low, high, log}.",
    )
    model_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Fixed hyperparameters passed to the model."
    )
    early_stopping: bool = Field(default=True, description="Stop training when validation loss stops improving.")
    early_stopping_patience: int = Field(
        default=10, ge=1, le=100, description="Epochs or boosting rounds without improvement before stopping."
    )
    checkpoint: bool = Field(default=False, description="Write checkpoints to the registry volume and resume from them.")
    max_training_time_minutes: int = Field(
        default=60, ge=1, le=10080, description="Wall-clock budget; the search stops and keeps the best so far."
    )
    min_accuracy_threshold: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Test accuracy below this fails the performance gate."
    )
    overfitting_detection: bool = Field(
        default=True, description="Fail when training accuracy exceeds validation accuracy by more than 0.1."
    )
    gpu_enabled: bool = Field(default=False, description="Train on CUDA when a GPU is present.")


class DistributedSettings(CamelModel):
    """Multi-node training under torchrun."""

    enabled: bool = Field(default=False, description="Run one pod per node under torchrun.")
    nodes: int = Field(default=1, ge=1, le=64, description="Pods (torchrun nodes).")
    procs_per_node: int = Field(default=1, ge=1, le=16, description="Worker processes per pod.")


class FeatureSettings(CamelModel):
    """The Features sheet: inputs, target column and chronological split."""

    target_variable: str = Field(
        min_length=1,
        description="Target column: a name to create from the prediction target (for example "
        "'direction'), or a column of the dataset that already holds labels.",
    )
    feature_columns: list[str] = Field(
        description="Indicator names of this strategy or raw bar columns (open, high, low, close, volume).",
    )
    train_split_ratio: float = Field(gt=0.0, lt=1.0, description="Fraction of rows for training, oldest first.")
    validation_split_ratio: float = Field(
        ge=0.0, lt=1.0, description="Fraction of rows for validation, after the training rows."
    )
    validation_dataset: str | None = Field(default=None, description="Separate validation data file (optional).")
    test_dataset: str | None = Field(default=None, description="Separate test data file (optional).")


class RiskLimits(CamelModel):
    """The Risk sheet: limits applied when a strategy's signals are evaluated."""

    max_drawdown: float = Field(default=0.2, ge=0.01, le=1.0, description="Stop trading below this drawdown from the peak.")
    max_daily_loss: float = Field(default=0.05, ge=0.001, le=1.0, description="Largest loss allowed in one day.")
    max_leverage: float = Field(default=1.0, ge=1.0, le=10.0, description="Gross exposure over equity.")
    transaction_cost_bps: float = Field(
        default=1.0, ge=0.0, le=100.0, description="Cost of each position change, in basis points."
    )


class AllocationEntry(CamelModel):
    """An Allocation sheet row: a symbol's share of the portfolio."""

    symbol: str = Field(min_length=1, max_length=32, description="Instrument symbol.")
    weight: float = Field(ge=0.0, le=1.0, description="Share of capital, as a fraction.")


class PortfolioSettings(CamelModel):
    """The Portfolio sheet with its Risk and Allocation rows."""

    name: str = Field(min_length=1, max_length=63, description="Portfolio name.")
    position_sizing: PositionSizing = Field(default=PositionSizing.FIXED, description="How positions are sized.")
    risk_management: bool = Field(default=True, description="Apply stop loss, take profit and risk limits.")
    max_position_size: float = Field(default=0.1, ge=0.01, le=1.0, description="Largest position, as a fraction of capital.")
    stop_loss_type: ExitRuleType = Field(default=ExitRuleType.FIXED, description="How the stop loss level is set.")
    stop_loss_pct: float = Field(default=0.02, ge=0.01, le=0.5, description="Stop loss distance, as a fraction.")
    take_profit_type: ExitRuleType = Field(default=ExitRuleType.FIXED, description="How the take profit level is set.")
    take_profit_pct: float = Field(default=0.04, ge=0.01, le=1.0, description="Take profit distance, as a fraction.")
    rebalance_frequency_hours: int = Field(default=24, ge=1, le=168, description="Hours between rebalances.")
    ml_signal_weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Weight of the model's signal in sizing.")
    risk: RiskLimits = Field(default_factory=lambda: RiskLimits(), description="Risk limits.")
    allocation: list[AllocationEntry] = Field(default_factory=list, description="Symbol weights.")


class SignalThresholds(CamelModel):
    """A Thresholds sheet row: levels of an indicator that mark a signal."""

    lower: float | None = Field(default=None, description="At or below this level: a buy signal (for example RSI 30).")
    upper: float | None = Field(default=None, description="At or above this level: a sell signal (for example RSI 70).")

    @model_validator(mode="after")
    def _check_levels(self) -> SignalThresholds:
        if self.lower is None and self.upper is None:
            raise ValueError("set at least one of lower and upper")
        if self.lower is not None and self.upper is not None and not self.lower < self.upper:
            raise ValueError(f"lower ({self.lower}) must be below upper ({self.upper})")
        return self


class IndicatorSettings(CamelModel):
    """An Indicators sheet row with its Parameters and Thresholds rows."""

    name: str = Field(
        min_length=1, max_length=63, pattern=r"^[A-Za-z][A-Za-z0-9_]*$",
        description="Feature name; Feature Columns refer to it.",
    )
    type: IndicatorType = Field(description="Indicator family.")
    calculation_method: str = Field(
        min_length=1, description="A TA-Lib function (RSI, MACD, ...) or a derived method (BB_POSITION, ...)."
    )
    parameters: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="Method parameters; TA-Lib's names and defaults."
    )
    lookback_period: int = Field(default=14, ge=1, le=252, description="Bars of history; TA-Lib's timeperiod unless set.")
    smoothing: bool = Field(default=False, description="Smooth the output with an exponential moving average.")
    smoothing_factor: float = Field(default=0.5, ge=0.1, le=0.9, description="EMA alpha when smoothing is on.")
    normalization: Normalization = Field(default=Normalization.NONE, description="Scaling fitted on training rows only.")
    feature_weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Multiplier on the feature; 0 drops it.")
    update_frequency_minutes: int = Field(
        default=1, ge=1, le=1440, description="Recompute every this many minutes; held in between."
    )
    output: str | None = Field(default=None, description="Output to use for multi-output methods (for example macdhist).")
    thresholds: SignalThresholds | None = Field(default=None, description="Signal levels (optional).")


class TrainingJobConfig(CamelModel):
    """The whole configuration of one strategy: the trainer's input."""

    strategy: StrategySettings = Field(description="The Strategy sheet row: model, target, data and horizon.")
    training: TrainingSettings = Field(
        default_factory=lambda: TrainingSettings(),
        description="The Models sheet row: search, validation, stopping, gate and GPU settings.",
    )
    features: FeatureSettings = Field(description="The Features sheet row: feature columns, target and splits.")
    indicators: list[IndicatorSettings] = Field(
        default_factory=list,
        description="Indicators that Feature Columns may name, with their Parameters and Thresholds rows.",
    )
    portfolio: PortfolioSettings | None = Field(
        default=None, description="Portfolio, risk and allocation that the backtest of the signals uses."
    )
    distributed: DistributedSettings = Field(
        default_factory=lambda: DistributedSettings(), description="Training across nodes under torchrun."
    )


# Spec keys of an MLTrainingJob that the trainer does not read.
_KUBERNETES_ONLY_KEYS = frozenset({"image", "resources", "nodeSelector", "tolerations", "runPolicy", "storage"})

Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class Violation:
    """One broken rule: the field path (camelCase keys), the offending value and the fix."""

    path: Path
    value: Any
    message: str

    def dotted_path(self) -> str:
        parts: list[str] = []
        for part in self.path:
            if isinstance(part, int):
                parts.append(f"[{part}]")
            else:
                parts.append(("." if parts else "") + part)
        return "".join(parts)

    def __str__(self) -> str:
        return f"{self.dotted_path()}: {self.message} (got {self.value!r})"


class ConfigError(ValueError):
    """An invalid job configuration, with every violation found."""

    def __init__(self, violations: list[Violation]) -> None:
        self.violations = violations
        lines = "\n".join(f"  {violation}" for violation in violations)
        super().__init__(f"{len(violations)} problem(s) in the job configuration:\n{lines}")


def _alias_path(loc: tuple[str | int, ...]) -> Path:
    return tuple(to_camel(part) if isinstance(part, str) else part for part in loc)


def violations_from_validation_error(error: ValidationError) -> list[Violation]:
    """Turn pydantic's errors into violations with camelCase paths."""
    found = []
    for item in error.errors(include_url=False):
        loc = tuple(part for part in item["loc"] if not str(part).startswith(("function-", "list[", "union[")))
        found.append(Violation(_alias_path(loc), item.get("input"), item["msg"]))
    return found


def rule_violations(config: TrainingJobConfig) -> list[Violation]:
    """Check the rules that span fields; return every violation, in field order."""
    from quanttrain.trainer.indicator_catalog import lookup

    found: list[Violation] = []
    features = config.features
    split = features.train_split_ratio + features.validation_split_ratio
    if not 0.8 <= round(split, 9) <= 1.0:
        found.append(Violation(
            ("features", "trainSplitRatio"), features.train_split_ratio,
            f"train + validation split is {split:g}; it must be between 0.8 and 1.0 "
            "(for example 0.7 train and 0.15 validation)",
        ))
    if round(split, 9) >= 1.0 and not features.test_dataset:
        found.append(Violation(
            ("features", "validationSplitRatio"), features.validation_split_ratio,
            "train + validation use every row, so nothing is left to test on; "
            "lower a ratio or set Test Dataset",
        ))
    if not features.feature_columns:
        found.append(Violation(("features", "featureColumns"), [], "list at least one feature column"))

    indicator_names = [indicator.name for indicator in config.indicators]
    known = {name.casefold() for name in indicator_names} | set(RAW_COLUMNS)
    for index, column in enumerate(features.feature_columns):
        if column.casefold() not in known:
            choices = ", ".join(indicator_names + list(RAW_COLUMNS))
            found.append(Violation(
                ("features", "featureColumns", index), column,
                f"unknown feature {column!r}; use an indicator of this strategy or a raw column: {choices}",
            ))

    seen: set[str] = set()
    for index, indicator in enumerate(config.indicators):
        if indicator.name.casefold() in seen:
            found.append(Violation(("indicators", index, "name"), indicator.name, "duplicate indicator name"))
        seen.add(indicator.name.casefold())
        found.extend(_indicator_violations(index, indicator, lookup))

    found.extend(_training_violations(config.training))
    if config.portfolio is not None:
        total = sum(entry.weight for entry in config.portfolio.allocation)
        if total > 1.0 + 1e-9:
            found.append(Violation(
                ("portfolio", "allocation"), round(total, 6),
                "allocation weights add up to more than 1.0; scale them down",
            ))
    return found


def _indicator_violations(index: int, indicator: IndicatorSettings, lookup) -> list[Violation]:
    found = []
    method = lookup(indicator.calculation_method)
    if method is None:
        found.append(Violation(
            ("indicators", index, "calculationMethod"), indicator.calculation_method,
            "unknown calculation method; use a TA-Lib function name such as RSI, MACD or BBANDS, "
            "or a derived method: BB_POSITION, VOLUME_RATIO, RETURNS, LOG_RETURNS, REALIZED_VOLATILITY",
        ))
        return found
    for key in indicator.parameters:
        if key not in method.parameters:
            allowed = ", ".join(method.parameters) or "none"
            found.append(Violation(
                ("indicators", index, "parameters", key), indicator.parameters[key],
                f"{method.name} has no parameter {key!r}; its parameters are: {allowed}",
            ))
    if indicator.output is not None and indicator.output not in method.outputs:
        found.append(Violation(
            ("indicators", index, "output"), indicator.output,
            f"{method.name} has outputs {', '.join(method.outputs)}",
        ))
    return found


def _training_violations(training: TrainingSettings) -> list[Violation]:
    found = []
    method = training.hyperparameter_optimization
    if method is not SearchMethod.NONE and not training.search_space:
        found.append(Violation(
            ("training", "searchSpace"), {},
            f"{method.value} needs a search space, for example "
            '{"n_estimators": [100, 300], "max_depth": {"low": 2, "high": 8}}',
        ))
    for key, dimension in training.search_space.items():
        if isinstance(dimension, list) and not dimension:
            found.append(Violation(("training", "searchSpace", key), [], "list at least one value"))
        if method is SearchMethod.GRID_SEARCH and isinstance(dimension, ParameterRange):
            found.append(Violation(
                ("training", "searchSpace", key), dimension.to_spec(),
                "grid search needs a list of values, not a range",
            ))
    return found


def load_job_config(data: dict[str, Any]) -> TrainingJobConfig:
    """Validate a job configuration or an MLTrainingJob spec; raise ConfigError with every problem.

    Keys that only the operator reads (image, resources, ...) are ignored, so
    the trainer can read the spec of an MLTrainingJob as it is.
    """
    trimmed = {key: value for key, value in data.items() if key not in _KUBERNETES_ONLY_KEYS}
    try:
        config = TrainingJobConfig.model_validate(trimmed)
    except ValidationError as error:
        raise ConfigError(violations_from_validation_error(error)) from error
    violations = rule_violations(config)
    if violations:
        raise ConfigError(violations)
    return config


def spec_from_resource(resource: dict[str, Any]) -> dict[str, Any]:
    """Return the spec of an MLTrainingJob document, or the document when it is a bare config."""
    if resource.get("kind") == "MLTrainingJob":
        spec = resource.get("spec")
        if not isinstance(spec, dict):
            raise ConfigError([Violation(("spec",), spec, "an MLTrainingJob needs a spec mapping")])
        return spec
    return resource

