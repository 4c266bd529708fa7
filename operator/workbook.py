"""The workbook contract: every sheet and column, and the config field each column fills.

This module is the single source of truth for the reader (which headers exist,
how each cell is typed), the blank templates (dropdowns, input limits, header
comments) and docs/excel.md.  Ranges, allowed values, defaults and
descriptions are not repeated here: they come from the pydantic fields of
``trainer/config.py`` and ``operator/api.py``, so the reader, the CRD and the
documentation always agree.

Run ``python -m quanttrain.operator.workbook docs/excel.md`` to refresh the
generated tables in the documentation.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import unicodedata
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.alias_generators import to_camel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from quanttrain.operator.api import ResourceSettings
from quanttrain.trainer.config import (
    AllocationEntry,
    DistributedSettings,
    FeatureSettings,
    IndicatorSettings,
    PortfolioSettings,
    RiskLimits,
    SignalThresholds,
    StrategySettings,
    TrainingSettings,
)

# The version written into template file names; files of any version are read.
TEMPLATE_VERSION = "1.0.0"
# Header prefixes (after normalisation) that mark free-text columns the reader ignores.
NOTES_PREFIXES = ("notes", "#")
# Sheet name prefixes for sheets the reader ignores (the template's hidden lists sheet).
IGNORED_SHEET_PREFIXES = ("_", "notes", "#", "readme")


class Kind(enum.Enum):
    """Cell type of a column, which decides how the reader converts its cells."""

    TEXT = "text"
    PATH = "path"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    CHOICE = "choice"
    JSON = "JSON object"
    MAPPING = "parameters"
    LIST = "comma-separated list"
    SCALAR = "number, boolean or text"


class Link(enum.Enum):
    """Target of a sheet's rows: nothing, a strategy or an indicator."""

    NONE = "none"
    STRATEGY = "strategy"
    INDICATOR = "indicator"


def normalize_header(text: str) -> str:
    """Normalise a header or name for matching: NFKC, whitespace runs collapsed and trimmed, case-folded."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


@dataclasses.dataclass(frozen=True)
class Column:
    """One column: its header, how a cell is read, and the config field it fills.

    ``model`` and ``field`` name the pydantic field that validates the value.
    ``section`` is the key path from the sheet's place in the spec to that
    model, for example ``("training",)`` on the Models sheet.  Link columns
    (Strategy Name, Indicator Name on the linked sheets) fill no field.
    """

    header: str
    kind: Kind
    model: type[BaseModel] | None = None
    field: str | None = None
    section: tuple[str, ...] = ()
    unit: str = ""
    note: str = ""
    # For columns without a model field: whether a value is required, and what it means.
    link_required: bool = False
    link_description: str = ""

    @property
    def key(self) -> str:
        return normalize_header(self.header)

    @property
    def info(self) -> FieldInfo | None:
        if self.model is None or self.field is None:
            return None
        return self.model.model_fields[self.field]

    @property
    def path(self) -> tuple[str, ...]:
        """The camelCase key path of the filled field, relative to the sheet's place in the spec."""
        if self.field is None:
            return ()
        return self.section + (to_camel(self.field),)

    @property
    def required(self) -> bool:
        info = self.info
        return self.link_required if info is None else info.is_required()

    @property
    def description(self) -> str:
        info = self.info
        text = self.link_description if info is None else (info.description or "")
        return f"{text} {self.note}".strip()

    def default(self) -> Any:
        """Return the value a blank cell stands for, or PydanticUndefined when required."""
        info = self.info
        if info is None or info.is_required():
            return PydanticUndefined
        if info.default_factory is not None:
            return info.default_factory()
        return info.default

    def choices(self) -> tuple[str, ...]:
        info = self.info
        annotation = info.annotation if info is not None else None
        if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
            return tuple(member.value for member in annotation)
        return ()

    def bounds(self) -> Bounds:
        bounds = Bounds()
        info = self.info
        for item in info.metadata if info is not None else ():
            if isinstance(item, annotated_types.Ge):
                bounds = dataclasses.replace(bounds, low=item.ge)
            elif isinstance(item, annotated_types.Gt):
                bounds = dataclasses.replace(bounds, low=item.gt, low_open=True)
            elif isinstance(item, annotated_types.Le):
                bounds = dataclasses.replace(bounds, high=item.le)
            elif isinstance(item, annotated_types.Lt):
                bounds = dataclasses.replace(bounds, high=item.lt, high_open=True)
            elif isinstance(item, annotated_types.MaxLen):
                bounds = dataclasses.replace(bounds, max_length=item.max_length)
        return bounds

    def allowed(self) -> str:
        """Describe the accepted values in a few words, for messages and comments."""
        if self.kind is Kind.CHOICE:
            return "one of " + ", ".join(self.choices())
        if self.kind is Kind.BOOLEAN:
            return "TRUE or FALSE (Yes/No and 1/0 also work)"
        bounds = self.bounds()
        if self.kind in (Kind.INTEGER, Kind.NUMBER):
            noun = "a whole number" if self.kind is Kind.INTEGER else "a number"
            return f"{noun} {bounds.describe()}".strip()
        if self.kind in (Kind.TEXT, Kind.PATH) and bounds.max_length is not None:
            return f"text of at most {bounds.max_length} characters"
        return {
            Kind.JSON: "a JSON object",
            Kind.MAPPING: 'a JSON object or name=value pairs, for example "timeperiod=14, nbdev=2"',
            Kind.LIST: "names separated by commas",
            Kind.SCALAR: "a number, TRUE/FALSE or text",
            Kind.PATH: "a file path or name",
        }.get(self.kind, "text")

    def default_text(self) -> str:
        value = self.default()
        if value is PydanticUndefined:
            return "required" if self.required else "blank"
        return "blank" if value is None else format_value(value)

    def comment(self) -> str:
        """Return the header comment of the template: meaning, unit, range and default."""
        lines = [self.description]
        if self.unit:
            lines.append(f"Unit: {self.unit}.")
        lines.append(f"Allowed: {self.allowed()}.")
        lines.append("Required." if self.required else f"Default when blank: {self.default_text()}.")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Bounds:
    """A numeric range as pydantic declares it; open ends are exclusive."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    max_length: int | None = None

    def describe(self) -> str:
        if self.low is None or self.high is None:
            return ""
        if self.low_open or self.high_open:
            low_word = "above" if self.low_open else "at least"
            high_word = "below" if self.high_open else "at most"
            return f"{low_word} {format_value(self.low)} and {high_word} {format_value(self.high)}"
        return f"from {format_value(self.low)} to {format_value(self.high)}"

    def contains(self, value: float) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Sheet:
    """One sheet: its workbook, columns, and what its rows link to."""

    name: str
    workbook: str
    columns: tuple[Column, ...]
    required: bool
    link: Link
    # True when a strategy takes several rows of this sheet (Indicators, Allocation).
    multiple: bool
    purpose: str

    @property
    def key(self) -> str:
        return normalize_header(self.name)

    def column(self, key: str) -> Column:
        return next(column for column in self.columns if column.key == key)


def format_value(value: Any) -> str:
    """Show a value the way a workbook user writes it."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, BaseModel):
        return "{}"
    if value == {} or value == []:
        return "{}" if isinstance(value, dict) else "none"
    return str(value)


def _field(header: str, kind: Kind, model: type[BaseModel], field: str, **extra: Any) -> Column:
    return Column(header=header, kind=kind, model=model, field=field, **extra)


STRATEGY_LINK = Column(
    "Strategy Name", Kind.TEXT,
    link_description="The Strategy row this row belongs to; blank applies the row to every strategy.",
)
INDICATOR_LINK = Column(
    "Indicator Name", Kind.TEXT, link_required=True,
    link_description="The Indicators row (by Indicator Name) this row belongs to, in every strategy that has it.",
)

FRACTION_UNIT = "fraction (0.05 or 5%)"

_STRATEGY = Sheet(
    "Strategy", "STRATEGY", required=True, link=Link.NONE, multiple=False,
    purpose="One row per strategy; each row becomes one MLTrainingJob.",
    columns=(
        _field("Strategy Name", Kind.TEXT, StrategySettings, "name",
               note="Names must be unique; the Kubernetes name is derived from it."),
        _field("Model Type", Kind.CHOICE, StrategySettings, "model_type"),
        _field("Prediction Target", Kind.CHOICE, StrategySettings, "prediction_target"),
        _field("Training Dataset", Kind.PATH, StrategySettings, "training_dataset"),
        _field("Model Path", Kind.PATH, StrategySettings, "model_path"),
        _field("Feature Configuration", Kind.JSON, StrategySettings, "feature_configuration",
               note='Keys: returnLags, signalThreshold, volatilityWindow, sequenceLength, '
                    'barIntervalMinutes, for example {"returnLags": [1, 5]}.'),
        _field("Confidence Threshold", Kind.NUMBER, StrategySettings, "confidence_threshold",
               unit="probability"),
        _field("Training Window", Kind.INTEGER, StrategySettings, "training_window_days", unit="days"),
        _field("Prediction Horizon", Kind.INTEGER, StrategySettings, "prediction_horizon_minutes",
               unit="minutes"),
        _field("Real-time Mode", Kind.BOOLEAN, StrategySettings, "realtime_mode"),
    ),
)

_MODELS = Sheet(
    "Models", "STRATEGY", required=True, link=Link.STRATEGY, multiple=False,
    purpose="Model, hyperparameter search, gate and compute settings; one row per strategy.",
    columns=(
        STRATEGY_LINK,
        _field("Hyperparameter Optimization", Kind.CHOICE, TrainingSettings, "hyperparameter_optimization",
               section=("training",)),
        _field("Max Optimization Iterations", Kind.INTEGER, TrainingSettings, "max_optimization_iterations",
               section=("training",), unit="trials"),
        _field("CV Folds", Kind.INTEGER, TrainingSettings, "cv_folds", section=("training",)),
        _field("Scoring Metric", Kind.CHOICE, TrainingSettings, "scoring_metric", section=("training",)),
        _field("Parallel Jobs", Kind.INTEGER, TrainingSettings, "parallel_jobs", section=("training",)),
        _field("Random Seed", Kind.INTEGER, TrainingSettings, "random_seed", section=("training",)),
        _field("Search Space", Kind.JSON, TrainingSettings, "search_space", section=("training",),
               note='For example {"n_estimators": [100, 300], "max_depth": {"low": 2, "high": 8}}.'),
        _field("Model Parameters", Kind.JSON, TrainingSettings, "model_parameters", section=("training",),
               note='For example {"n_estimators": 200, "max_depth": 5}.'),
        _field("Early Stopping", Kind.BOOLEAN, TrainingSettings, "early_stopping", section=("training",)),
        _field("Early Stopping Patience", Kind.INTEGER, TrainingSettings, "early_stopping_patience",
               section=("training",), unit="epochs or boosting rounds"),
        _field("Checkpoint", Kind.BOOLEAN, TrainingSettings, "checkpoint", section=("training",)),
        _field("Max Training Time", Kind.INTEGER, TrainingSettings, "max_training_time_minutes",
               section=("training",), unit="minutes"),
        _field("Min Accuracy Threshold", Kind.NUMBER, TrainingSettings, "min_accuracy_threshold",
               section=("training",), unit=FRACTION_UNIT),
        _field("Overfitting Detection", Kind.BOOLEAN, TrainingSettings, "overfitting_detection",
               section=("training",)),
        _field("GPU Enabled", Kind.BOOLEAN, TrainingSettings, "gpu_enabled", section=("training",),
               note="TRUE needs GPUs Per Node of at least 1."),
        _field("GPUs Per Node", Kind.INTEGER, ResourceSettings, "gpus_per_node", section=("resources",),
               unit="GPUs"),
        _field("Distributed Training", Kind.BOOLEAN, DistributedSettings, "enabled", section=("distributed",)),
        _field("Nodes", Kind.INTEGER, DistributedSettings, "nodes", section=("distributed",), unit="pods"),
        _field("Processes Per Node", Kind.INTEGER, DistributedSettings, "procs_per_node",
               section=("distributed",), unit="processes"),
    ),
)

_FEATURES = Sheet(
    "Features", "STRATEGY", required=True, link=Link.STRATEGY, multiple=False,
    purpose="Feature columns, target and chronological split; one row per strategy.",
    columns=(
        STRATEGY_LINK,
        _field("Target Variable", Kind.TEXT, FeatureSettings, "target_variable"),
        _field("Feature Columns", Kind.LIST, FeatureSettings, "feature_columns"),
        _field("Train Split Ratio", Kind.NUMBER, FeatureSettings, "train_split_ratio", unit=FRACTION_UNIT,
               note="Train + validation must be between 0.8 and 1.0."),
        _field("Validation Split Ratio", Kind.NUMBER, FeatureSettings, "validation_split_ratio",
               unit=FRACTION_UNIT),
        _field("Validation Dataset", Kind.PATH, FeatureSettings, "validation_dataset"),
        _field("Test Dataset", Kind.PATH, FeatureSettings, "test_dataset"),
    ),
)

_PORTFOLIO = Sheet(
    "Portfolio", "PORTFOLIO", required=False, link=Link.STRATEGY, multiple=False,
    purpose="Portfolio settings a strategy's signals are evaluated with; one row per strategy.",
    columns=(
        STRATEGY_LINK,
        _field("Portfolio Name", Kind.TEXT, PortfolioSettings, "name"),
        _field("Position Sizing Method", Kind.CHOICE, PortfolioSettings, "position_sizing"),
        _field("Risk Management", Kind.BOOLEAN, PortfolioSettings, "risk_management"),
        _field("Max Position Size", Kind.NUMBER, PortfolioSettings, "max_position_size", unit=FRACTION_UNIT),
        _field("Stop Loss Type", Kind.CHOICE, PortfolioSettings, "stop_loss_type"),
        _field("Stop Loss %", Kind.NUMBER, PortfolioSettings, "stop_loss_pct", unit=FRACTION_UNIT),
        _field("Take Profit Type", Kind.CHOICE, PortfolioSettings, "take_profit_type"),
        _field("Take Profit %", Kind.NUMBER, PortfolioSettings, "take_profit_pct", unit=FRACTION_UNIT),
        _field("Rebalance Frequency", Kind.INTEGER, PortfolioSettings, "rebalance_frequency_hours",
               unit="hours"),
        _field("ML Signal Weight", Kind.NUMBER, PortfolioSettings, "ml_signal_weight", unit=FRACTION_UNIT),
    ),
)

_RISK = Sheet(
    "Risk", "PORTFOLIO", required=False, link=Link.STRATEGY, multiple=False,
    purpose="Risk limits of a strategy's portfolio; one row per strategy, needs a Portfolio row.",
    columns=(
        STRATEGY_LINK,
        _field("Max Drawdown", Kind.NUMBER, RiskLimits, "max_drawdown", unit=FRACTION_UNIT),
        _field("Max Daily Loss", Kind.NUMBER, RiskLimits, "max_daily_loss", unit=FRACTION_UNIT),
        _field("Max Leverage", Kind.NUMBER, RiskLimits, "max_leverage", unit="times equity"),
        _field("Transaction Cost (bps)", Kind.NUMBER, RiskLimits, "transaction_cost_bps",
               unit="basis points (1 bps = 0.01%)"),
    ),
)

_ALLOCATION = Sheet(
    "Allocation", "PORTFOLIO", required=False, link=Link.STRATEGY, multiple=True,
    purpose="Symbol weights of a strategy's portfolio; one row per symbol, needs a Portfolio row.",
    columns=(
        STRATEGY_LINK,
        _field("Symbol", Kind.TEXT, AllocationEntry, "symbol"),
        _field("Weight", Kind.NUMBER, AllocationEntry, "weight", unit=FRACTION_UNIT,
               note="A strategy's weights add up to at most 1."),
    ),
)

_INDICATORS = Sheet(
    "Indicators", "INDICATORS", required=False, link=Link.STRATEGY, multiple=True,
    purpose="Indicators that become features; one row per indicator.",
    columns=(
        STRATEGY_LINK,
        _field("Indicator Name", Kind.TEXT, IndicatorSettings, "name",
               note="Starts with a letter; letters, digits and _ only."),
        _field("Indicator Type", Kind.CHOICE, IndicatorSettings, "type"),
        _field("Calculation Method", Kind.TEXT, IndicatorSettings, "calculation_method"),
        _field("Parameters", Kind.MAPPING, IndicatorSettings, "parameters"),
        _field("Lookback Period", Kind.INTEGER, IndicatorSettings, "lookback_period", unit="bars"),
        _field("Smoothing", Kind.BOOLEAN, IndicatorSettings, "smoothing"),
        _field("Smoothing Factor", Kind.NUMBER, IndicatorSettings, "smoothing_factor", unit="EMA alpha"),
        _field("Normalization", Kind.CHOICE, IndicatorSettings, "normalization"),
        _field("Feature Weight", Kind.NUMBER, IndicatorSettings, "feature_weight", unit=FRACTION_UNIT),
        _field("Update Frequency", Kind.INTEGER, IndicatorSettings, "update_frequency_minutes", unit="minutes"),
        _field("Output", Kind.TEXT, IndicatorSettings, "output"),
    ),
)

_PARAMETERS = Sheet(
    "Parameters", "INDICATORS", required=False, link=Link.INDICATOR, multiple=True,
    purpose="Indicator parameters, one row each; merged into the indicator's Parameters cell.",
    columns=(
        INDICATOR_LINK,
        Column("Parameter", Kind.TEXT, link_required=True,
               link_description="Parameter name of the calculation method (TA-Lib's name, such as timeperiod)."),
        Column("Value", Kind.SCALAR, link_required=True,
               link_description="Parameter value: a whole number, a number, TRUE/FALSE or text."),
    ),
)

_THRESHOLDS = Sheet(
    "Thresholds", "INDICATORS", required=False, link=Link.INDICATOR, multiple=False,
    purpose="Signal levels of an indicator; one row per indicator name.",
    columns=(
        INDICATOR_LINK,
        _field("Lower", Kind.NUMBER, SignalThresholds, "lower"),
        _field("Upper", Kind.NUMBER, SignalThresholds, "upper",
               note="Set Lower, Upper or both; Lower must be below Upper."),
    ),
)

SHEETS: tuple[Sheet, ...] = (
    _STRATEGY, _MODELS, _FEATURES,
    _PORTFOLIO, _RISK, _ALLOCATION,
    _INDICATORS, _PARAMETERS, _THRESHOLDS,
)
SHEETS_BY_KEY: dict[str, Sheet] = {sheet.key: sheet for sheet in SHEETS}

# Workbook kinds in file order, and the sheets each holds.
WORKBOOKS: dict[str, tuple[Sheet, ...]] = {
    kind: tuple(sheet for sheet in SHEETS if sheet.workbook == kind)
    for kind in ("STRATEGY", "PORTFOLIO", "INDICATORS")
}


def workbook_file_name(kind: str, version: str = TEMPLATE_VERSION) -> str:
    return f"ML_CONFIG_{kind}_{version}.xlsx"


def sheet(name: str) -> Sheet:
    return SHEETS_BY_KEY[normalize_header(name)]


# --- documentation -----------------------------------------------------------

DOCS_BEGIN = "<!-- BEGIN GENERATED SHEETS: python -m quanttrain.operator.workbook docs/excel.md -->"
DOCS_END = "<!-- END GENERATED SHEETS -->"


def _field_path(sheet_: Sheet, column: Column) -> str:
    base = {
        "strategy": "strategy", "models": "", "features": "features", "portfolio": "portfolio",
        "risk": "portfolio.risk", "allocation": "portfolio.allocation[]", "indicators": "indicators[]",
        "parameters": "indicators[].parameters", "thresholds": "indicators[].thresholds",
    }[sheet_.key]
    if column.field is None:
        if sheet_.key == "parameters" and column.key == "parameter":
            return f"`{base}` key"
        if sheet_.key == "parameters" and column.key == "value":
            return f"`{base}` value"
        return "link"
    parts = [part for part in (base, ".".join(column.path)) if part]
    return "`" + ".".join(parts) + "`"


def _cell_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_tables() -> str:
    """Render one Markdown table per sheet from the contract."""
    lines: list[str] = []
    for sheet_ in SHEETS:
        state = "required" if sheet_.required else "optional"
        lines += [
            f"### {sheet_.name}",
            "",
            f"Workbook `{workbook_file_name(sheet_.workbook, '<version>')}`, {state} sheet. {sheet_.purpose}",
            "",
            "| column | field | meaning | type and allowed values | unit | default |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for column in sheet_.columns:
            cells = [
                column.header, _field_path(sheet_, column), column.description,
                f"{column.kind.value}: {column.allowed()}", column.unit or "-", column.default_text(),
            ]
            lines.append("| " + " | ".join(_cell_text(cell) for cell in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def update_docs(path: Path) -> bool:
    """Rewrite the generated part of ``path``; return True when it changed."""
    text = path.read_text(encoding="utf-8")
    head, _, rest = text.partition(DOCS_BEGIN)
    _, _, tail = rest.partition(DOCS_END)
    updated = f"{head}{DOCS_BEGIN}\n\n{markdown_tables()}\n{DOCS_END}{tail}"
    if updated == text:
        return False
    path.write_text(updated, encoding="utf-8")
    return True


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m quanttrain.operator.workbook DOCS_FILE")
    print("updated" if update_docs(Path(sys.argv[1])) else "unchanged", sys.argv[1])
