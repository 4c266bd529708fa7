"""Test-set evaluation of a fitted classifier, with baselines beside every score.

The metrics are computed from the confusion matrix and from ranks, with no
per-row Python, so that scoring a million predictions stays well under a
second.  Definitions:

* precision, recall and F1 are averaged over classes weighted by their support,
  and a class with no predicted (or no true) rows scores 0, as scikit-learn's
  ``zero_division=0`` does;
* ROC AUC is binary for two classes and one-vs-rest weighted by support for
  more.  It is ``None`` when the test set lacks a class, because the curve of
  a missing class is undefined;
* a prediction is *acted on* only where its largest predicted probability
  reaches the confidence threshold: coverage is the fraction of rows acted on,
  and precision at the threshold is the fraction of those that are correct;
* the majority baseline always predicts the most frequent training class, and
  the persistence baseline predicts, at row ``t``, the label of row
  ``t - horizon``: the newest label already known at time ``t``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from quanttrain.trainer.summary import TOP_FEATURES, CrossValidation, Evaluation, FeatureImportance

logger = logging.getLogger(__name__)

# Training accuracy may exceed validation accuracy by at most this much before
# the overfitting check fails.
MAX_OVERFITTING_GAP = 0.1
# Rows and repeats for permutation importance: enough for a stable ranking
# while keeping it to seconds for the slow models (SVM, LSTM).
PERMUTATION_MAX_ROWS = 2000
PERMUTATION_REPEATS = 5


@dataclasses.dataclass(frozen=True)
class Scores:
    """Classification scores of one set of predictions."""

    accuracy: float
    precision: float
    recall: float
    f1_score: float
    confusion_matrix: np.ndarray

    def to_dict(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "precision": self.precision,
            "recall": self.recall,
            "f1Score": self.f1_score,
        }


@dataclasses.dataclass(frozen=True)
class OverfittingCheck:
    """Training against validation accuracy; ``failed`` only when the check is enabled."""

    enabled: bool
    train_accuracy: float | None
    validation_accuracy: float | None
    gap: float | None
    failed: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class EvaluationReport:
    """Everything the evaluation found: the summary model plus the detail for the result file."""

    evaluation: Evaluation
    baselines: dict[str, dict[str, float]]
    feature_importances: list[FeatureImportance]
    importance_method: str
    overfitting: OverfittingCheck
    probabilities: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluation": self.evaluation.to_spec(),
            "baselines": self.baselines,
            "featureImportances": [item.to_spec() for item in self.feature_importances],
            "importanceMethod": self.importance_method,
            "overfitting": self.overfitting.to_dict(),
        }


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count rows per (true, predicted) class pair; classes are the codes 0..n_classes-1."""
    pairs = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(pairs, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def scores_from_confusion(matrix: np.ndarray) -> Scores:
    """Accuracy and support-weighted precision, recall and F1 (0 where undefined)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    total = matrix.sum()
    if total == 0:
        return Scores(0.0, 0.0, 0.0, 0.0, matrix)

    true_positive = np.diag(matrix).astype(float)
    support = matrix.sum(axis=1).astype(float)
    predicted = matrix.sum(axis=0).astype(float)
    precision = np.divide(true_positive, predicted, out=np.zeros_like(true_positive), where=predicted > 0)
    recall = np.divide(true_positive, support, out=np.zeros_like(true_positive), where=support > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(true_positive), where=denominator > 0)

    weights = support / total
    return Scores(
        accuracy=float(true_positive.sum() / total),
        precision=float(weights @ precision),
        recall=float(weights @ recall),
        f1_score=float(weights @ f1),
        confusion_matrix=matrix,
    )


def score_labels(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> Scores:
    return scores_from_confusion(confusion_matrix(y_true, y_pred, n_classes))


def binary_roc_auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC as the Mann-Whitney statistic (ties count one half); None without both classes.

    It takes one sort and linear passes over groups of tied scores, so it
    avoids the extra work of ranking every row with ``scipy.stats.rankdata``.
    """
    positive = np.asarray(positive, dtype=bool)
    n_positive = int(positive.sum())
    n_negative = positive.size - n_positive
    if n_positive == 0 or n_negative == 0:
        return None
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    sorted_positive = positive[order]

    # Tied scores share one group; a positive beats every negative in a lower group
    # and half of the negatives in its own group.
    group = np.concatenate(([0], np.cumsum(sorted_scores[1:] != sorted_scores[:-1])))
    positives_per_group = np.bincount(group, weights=sorted_positive)
    negatives_per_group = np.bincount(group, weights=~sorted_positive)
    negatives_below = np.cumsum(negatives_per_group) - negatives_per_group
    wins = positives_per_group @ (negatives_below + 0.5 * negatives_per_group)
    return float(wins / (n_positive * n_negative))


def roc_auc(y_true: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Binary AUC of the last class, or one-vs-rest AUC weighted by support; None when a class is missing."""
    n_classes = probabilities.shape[1]
    support = np.bincount(y_true, minlength=n_classes)
    if (support == 0).any():
        return None
    if n_classes == 2:
        return binary_roc_auc(probabilities[:, 1], y_true == 1)
    per_class = [binary_roc_auc(probabilities[:, k], y_true == k) for k in range(n_classes)]
    return float(np.average(per_class, weights=support))


def threshold_scores(
    y_true: np.ndarray, probabilities: np.ndarray, threshold: float
) -> tuple[float, float | None]:
    """Coverage and precision of the predictions whose top probability reaches ``threshold``."""
    if y_true.size == 0:
        return 0.0, None
    acted = probabilities.max(axis=1) >= threshold
    coverage = float(acted.mean())
    if not acted.any():
        return coverage, None
    correct = probabilities[acted].argmax(axis=1) == y_true[acted]
    return coverage, float(correct.mean())


def persistence_labels(y_all: np.ndarray, rows: np.ndarray, horizon: int) -> np.ndarray:
    """Return the label known at each of ``rows``: that of row ``t - horizon``, or -1 before the first."""
    rows = np.asarray(rows, dtype=np.int64)
    source = rows - horizon
    known = np.full(rows.shape, -1, dtype=np.int64)
    valid = source >= 0
    known[valid] = np.asarray(y_all)[source[valid]]
    return known


def baseline_scores(
    y_true: np.ndarray,
    n_classes: int,
    *,
    majority_class: int,
    known_labels: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Scores of the majority-class and (when labels are known) persistence predictions."""
    majority = np.full(y_true.shape, majority_class, dtype=np.int64)
    baselines = {"majority": score_labels(y_true, majority, n_classes).to_dict()}
    if known_labels is not None:
        known = np.asarray(known_labels)
        available = known >= 0
        scores = score_labels(y_true[available], known[available], n_classes)
        baselines["persistence"] = {**scores.to_dict(), "rows": int(available.sum())}
    return baselines


def predict_probabilities(estimator, X, n_classes: int) -> np.ndarray:
    """Class probabilities with one column per class code, even for classes the model never saw."""
    probabilities = np.asarray(estimator.predict_proba(X), dtype=float)
    fitted_classes = getattr(estimator, "classes_", None)
    if probabilities.shape[1] == n_classes:
        return probabilities
    if fitted_classes is None:
        raise ValueError(
            f"the model returned {probabilities.shape[1]} probability columns for {n_classes} classes "
            "and has no classes_ attribute to map them"
        )
    full = np.zeros((probabilities.shape[0], n_classes))
    full[:, np.asarray(fitted_classes, dtype=np.int64)] = probabilities
    return full


def accuracy_on(estimator, X, y) -> float | None:
    if X is None or y is None or len(y) == 0:
        return None
    return float((np.asarray(estimator.predict(X)) == np.asarray(y)).mean())


def _accuracy_from(probabilities: np.ndarray, y) -> float | None:
    if y is None or len(y) == 0:
        return None
    return float((probabilities.argmax(axis=1) == np.asarray(y)).mean())


def overfitting_check(train_accuracy: float | None, validation_accuracy: float | None, *, enabled: bool) -> OverfittingCheck:
    """Fail when training accuracy beats validation accuracy by more than :data:`MAX_OVERFITTING_GAP`."""
    if train_accuracy is None or validation_accuracy is None:
        return OverfittingCheck(enabled, train_accuracy, validation_accuracy, None, False)
    gap = train_accuracy - validation_accuracy
    return OverfittingCheck(enabled, train_accuracy, validation_accuracy, gap, enabled and gap > MAX_OVERFITTING_GAP)


def feature_importances(
    estimator,
    feature_names: list[str],
    *,
    X=None,
    y=None,
    random_seed: int = 0,
    permutation_estimator=None,
) -> tuple[list[FeatureImportance], str]:
    """Rank features by the model's own importances, else by permutation importance on ``X``, largest first.

    ``permutation_estimator`` (default ``estimator``) is the model whose
    permutation importance is measured: one that did not train on ``X``.
    """
    from quanttrain.trainer.models import native_feature_importances

    values = native_feature_importances(estimator, feature_names)
    method = "native"
    if values is None:
        if X is None or y is None or len(y) == 0:
            return [], "none"
        scored = permutation_estimator if permutation_estimator is not None else estimator
        values = _permutation_importances(scored, X, y, feature_names, random_seed)
        method = "permutation"
    if isinstance(values, dict):
        pairs = list(values.items())
    else:
        pairs = list(zip(feature_names, np.asarray(values, dtype=float)))
    ranked = sorted(pairs, key=lambda pair: -abs(pair[1]))
    return [FeatureImportance(name=str(name), importance=float(value)) for name, value in ranked], method


def _permutation_importances(estimator, X, y, feature_names, random_seed) -> dict[str, float]:
    from sklearn.inspection import permutation_importance

    # The newest rows are the closest to the test period, so they are the ones kept.
    X_recent = X.iloc[-PERMUTATION_MAX_ROWS:] if hasattr(X, "iloc") else X[-PERMUTATION_MAX_ROWS:]
    y_recent = np.asarray(y)[-PERMUTATION_MAX_ROWS:]
    result = permutation_importance(
        estimator, X_recent, y_recent, n_repeats=PERMUTATION_REPEATS, random_state=random_seed, scoring="accuracy"
    )
    return dict(zip(feature_names, result.importances_mean))


def evaluate(
    estimator,
    X_test,
    y_test,
    classes: list[str],
    *,
    confidence_threshold: float,
    known_labels: np.ndarray | None = None,
    train_data: tuple[Any, Any] | None = None,
    validation_data: tuple[Any, Any] | None = None,
    overfitting_detection: bool = True,
    feature_names: list[str] | None = None,
    cross_validation: CrossValidation | None = None,
    random_seed: int = 0,
    probabilities: np.ndarray | None = None,
    validation_probabilities: np.ndarray | None = None,
    majority_labels: np.ndarray | None = None,
    check_estimator=None,
) -> EvaluationReport:
    """Evaluate a fitted classifier on the test rows.

    ``y_*`` hold class codes (indices into ``classes``).  ``known_labels`` is
    the label known at each test row's time (see :func:`persistence_labels`).
    ``train_data`` and ``validation_data`` are ``(X, y)`` pairs for the
    overfitting check and the majority class.  Permutation importance runs on
    the validation rows, or on the test rows when there are none.
    ``probabilities`` replaces ``estimator.predict_proba(X_test)`` when the
    caller predicted the test rows itself (a sequence model given the rows
    before the test period as history), and ``validation_probabilities``
    likewise for the validation rows, predicted by ``check_estimator``.
    ``majority_labels`` are the labels the majority class is taken from when
    ``train_data`` holds only some of them.
    ``check_estimator`` (default ``estimator``) is the model fitted on
    ``train_data`` alone, before the validation rows: the overfitting check
    and the permutation importance on the validation rows use it, because
    ``estimator`` may have trained on those rows.
    """
    check_estimator = check_estimator if check_estimator is not None else estimator
    n_classes = len(classes)
    y_test = np.asarray(y_test, dtype=np.int64)
    if probabilities is None:
        probabilities = predict_probabilities(estimator, X_test, n_classes)
    report_scores = score_labels(y_test, probabilities.argmax(axis=1), n_classes)
    coverage, precision_at_threshold = threshold_scores(y_test, probabilities, confidence_threshold)

    X_train, y_train = train_data if train_data is not None else (None, None)
    X_validation, y_validation = validation_data if validation_data is not None else (None, None)
    if majority_labels is None:
        majority_labels = y_train if y_train is not None else y_test
    majority_source = np.asarray(majority_labels, dtype=np.int64)
    majority_class = int(np.bincount(majority_source, minlength=n_classes).argmax()) if majority_source.size else 0
    baselines = baseline_scores(y_test, n_classes, majority_class=majority_class, known_labels=known_labels)

    overfitting = overfitting_check(
        accuracy_on(check_estimator, X_train, y_train),
        accuracy_on(check_estimator, X_validation, y_validation) if validation_probabilities is None
        else _accuracy_from(validation_probabilities, y_validation),
        enabled=overfitting_detection,
    )
    names = feature_names if feature_names is not None else [str(column) for column in getattr(X_test, "columns", [])]
    has_validation = y_validation is not None and len(y_validation) > 0
    importances, importance_method = feature_importances(
        estimator,
        names,
        X=X_validation if has_validation else X_test,
        y=y_validation if has_validation else y_test,
        random_seed=random_seed,
        permutation_estimator=check_estimator if has_validation else estimator,
    )

    evaluation = Evaluation(
        accuracy=report_scores.accuracy,
        precision=report_scores.precision,
        recall=report_scores.recall,
        f1_score=report_scores.f1_score,
        roc_auc=roc_auc(y_test, probabilities),
        confusion_matrix=report_scores.confusion_matrix.tolist(),
        classes=list(classes),
        test_rows=int(y_test.size),
        train_accuracy=overfitting.train_accuracy,
        validation_accuracy=overfitting.validation_accuracy,
        baseline_accuracy=baselines["majority"]["accuracy"],
        coverage_at_threshold=coverage,
        precision_at_threshold=precision_at_threshold,
        cross_validation=cross_validation,
        top_features=importances[:TOP_FEATURES],
    )
    return EvaluationReport(evaluation, baselines, importances, importance_method, overfitting, probabilities)
