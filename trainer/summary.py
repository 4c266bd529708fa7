"""The compact result that a trainer hands to the operator.

Rank 0 writes this summary to the container's termination message (which
Kubernetes caps at 4096 bytes), and the operator copies it into the
MLTrainingJob's ``status``.  The CRD's status schema is generated from these
models, so both sides agree on every key.  The full result, with every trial
and fold, is written next to the model instead.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from quanttrain.trainer.config import CamelModel

# Kubernetes truncates termination messages at 4096 bytes.
MAX_SUMMARY_BYTES = 4096
# Feature importances kept in the summary; the full list is in the result file.
TOP_FEATURES = 10

# Trainer exit codes.  The operator's pod failure policy fails the job at once
# on the permanent ones instead of retrying a pod that will fail the same way.
EXIT_OK = 0
EXIT_RETRYABLE = 1  # unexpected error, a lost rank or a collective timeout
EXIT_CONFIG_ERROR = 2  # invalid spec or unreadable dataset: permanent
EXIT_GATE_FAILED = 3  # trained, but the performance gate failed: permanent
PERMANENT_EXIT_CODES = (EXIT_CONFIG_ERROR, EXIT_GATE_FAILED)


class FeatureImportance(CamelModel):
    name: str
    importance: float


class CrossValidation(CamelModel):
    """Walk-forward cross-validation scores of the chosen model."""

    metric: str = Field(description="Scoring metric, e.g. ACCURACY.")
    scores: list[float] = Field(description="Score per fold, oldest fold first.")
    mean: float
    std: float


class StrategyMetrics(CamelModel):
    """Backtest of the model's signals over the test period."""

    total_return: float = Field(description="Compounded return as a fraction.")
    sharpe_ratio: float = Field(description="Annualised Sharpe ratio of per-bar returns.")
    max_drawdown: float = Field(description="Largest peak-to-trough loss as a fraction.")
    hit_rate: float = Field(description="Fraction of trades with a positive return.")
    trades: int = Field(ge=0)


class Evaluation(CamelModel):
    """Test-set metrics; precision, recall and F1 are class-weighted averages."""

    accuracy: float
    precision: float
    recall: float
    f1_score: float
    roc_auc: float | None = Field(default=None, description="Unset when not defined (one class in the test set).")
    confusion_matrix: list[list[int]] = Field(description="Rows are true classes, columns predicted classes.")
    classes: list[str] = Field(description="Class labels in confusion-matrix order.")
    test_rows: int = Field(ge=0)
    train_accuracy: float | None = None
    validation_accuracy: float | None = None
    baseline_accuracy: float | None = Field(default=None, description="Accuracy of always predicting the majority class.")
    coverage_at_threshold: float | None = Field(
        default=None, description="Fraction of test rows whose predicted probability reaches the confidence threshold."
    )
    precision_at_threshold: float | None = None
    cross_validation: CrossValidation | None = None
    top_features: list[FeatureImportance] = Field(default_factory=list)
    strategy_metrics: StrategyMetrics | None = None


class ModelReference(CamelModel):
    """Location of the registered model."""

    uri: str
    version: str
    sha256: str


class Gate(CamelModel):
    """The performance gate's outcome."""

    passed: bool
    reasons: list[str] = Field(default_factory=list, description="Why the gate failed; empty when it passed.")


class TrainingSummary(CamelModel):
    """The trainer's outcome that the operator writes to ``status``."""

    strategy: str
    model_type: str
    evaluation: Evaluation
    best_hyperparameters: dict[str, Any] = Field(default_factory=dict)
    model: ModelReference | None = None
    gate: Gate
    duration_seconds: float = Field(ge=0)
    message: str = ""

    def to_message(self) -> str:
        """Serialise for the termination message, dropping detail until it fits."""
        payload = self.to_spec()
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        evaluation = payload["evaluation"]
        while len(text.encode("utf-8")) > MAX_SUMMARY_BYTES and evaluation.get("topFeatures"):
            evaluation["topFeatures"] = evaluation["topFeatures"][:-1]
            text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        if len(text.encode("utf-8")) > MAX_SUMMARY_BYTES:
            payload["bestHyperparameters"] = {}
            payload["message"] = payload.get("message", "")[:200]
            evaluation.pop("crossValidation", None)
            text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        return text
