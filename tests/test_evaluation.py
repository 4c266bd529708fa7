"""Evaluation metrics on known predictions, checked against exact numbers and scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.linear_model import LogisticRegression

from quanttrain.trainer import evaluation

# Eight test rows, two classes; the model is right on rows 0-5 and wrong on 6-7.
Y_TRUE = np.array([0, 0, 0, 1, 1, 1, 1, 0])
P_UP = np.array([0.1, 0.2, 0.45, 0.9, 0.7, 0.55, 0.4, 0.8])
PROBABILITIES = np.column_stack([1 - P_UP, P_UP])


def test_confusion_matrix_counts_rows_per_class_pair():
    matrix = evaluation.confusion_matrix(Y_TRUE, PROBABILITIES.argmax(axis=1), 2)
    assert matrix.tolist() == [[3, 1], [1, 3]]


def test_scores_match_hand_computed_values():
    scores = evaluation.score_labels(Y_TRUE, PROBABILITIES.argmax(axis=1), 2)
    assert scores.accuracy == pytest.approx(6 / 8)
    assert scores.precision == pytest.approx(0.75)
    assert scores.recall == pytest.approx(0.75)
    assert scores.f1_score == pytest.approx(0.75)


def test_weighted_scores_match_scikit_learn_with_zero_division():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 3, 500)
    y_pred = np.where(rng.random(500) < 0.6, y_true, 0)  # class 2 is rarely predicted, class 1 sometimes never
    scores = evaluation.score_labels(y_true, y_pred, 3)
    options = {"average": "weighted", "zero_division": 0, "labels": [0, 1, 2]}
    assert scores.precision == pytest.approx(precision_score(y_true, y_pred, **options))
    assert scores.recall == pytest.approx(recall_score(y_true, y_pred, **options))
    assert scores.f1_score == pytest.approx(f1_score(y_true, y_pred, **options))


def test_binary_roc_auc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 2000)
    scores = np.round(rng.random(2000) * 0.5 + 0.3 * y_true, 1)  # rounding makes many ties
    assert evaluation.binary_roc_auc(scores, y_true == 1) == pytest.approx(roc_auc_score(y_true, scores))


def test_multiclass_roc_auc_is_one_vs_rest_weighted():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, 900)
    probabilities = rng.dirichlet([1, 1, 1], 900)
    probabilities[np.arange(900), y_true] += 0.3
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    expected = roc_auc_score(y_true, probabilities, multi_class="ovr", average="weighted")
    assert evaluation.roc_auc(y_true, probabilities) == pytest.approx(expected)


def test_roc_auc_is_none_when_test_set_lacks_a_class():
    y_true = np.array([0, 0, 0, 0])
    assert evaluation.roc_auc(y_true, PROBABILITIES[:4]) is None


def test_threshold_coverage_and_precision():
    coverage, precision = evaluation.threshold_scores(Y_TRUE, PROBABILITIES, 0.7)
    # Rows 0, 1, 3, 4 and 7 have a top probability of at least 0.7; row 7 is wrong.
    assert coverage == pytest.approx(5 / 8)
    assert precision == pytest.approx(4 / 5)


def test_threshold_precision_is_none_when_nothing_reaches_it():
    coverage, precision = evaluation.threshold_scores(Y_TRUE, PROBABILITIES, 0.99)
    assert coverage == 0.0
    assert precision is None


def test_persistence_labels_look_back_one_horizon():
    y_all = np.array([1, 0, 1, 1, 0, 0])
    known = evaluation.persistence_labels(y_all, np.array([1, 2, 4, 5]), horizon=2)
    assert known.tolist() == [-1, 1, 1, 1]


def test_baselines_score_majority_and_persistence():
    y_true = np.array([1, 1, 0, 1])
    baselines = evaluation.baseline_scores(y_true, 2, majority_class=1, known_labels=np.array([-1, 0, 0, 1]))
    assert baselines["majority"]["accuracy"] == pytest.approx(0.75)
    assert baselines["persistence"]["accuracy"] == pytest.approx(2 / 3)
    assert baselines["persistence"]["rows"] == 3


def test_overfitting_check_fails_only_when_enabled():
    assert evaluation.overfitting_check(0.95, 0.6, enabled=True).failed
    assert not evaluation.overfitting_check(0.95, 0.6, enabled=False).failed
    assert not evaluation.overfitting_check(0.65, 0.6, enabled=True).failed


def _frame(rng, rows: int) -> tuple[pd.DataFrame, np.ndarray]:
    X = pd.DataFrame({"signal": rng.normal(size=rows), "noise": rng.normal(size=rows)})
    y = (X["signal"] + 0.3 * rng.normal(size=rows) > 0).astype(np.int64).to_numpy()
    return X, y


def test_evaluate_reports_scores_baselines_and_native_importances():
    rng = np.random.default_rng(7)
    X, y = _frame(rng, 600)
    model = Pipeline([("preprocess", "passthrough"),
                      ("model", RandomForestClassifier(n_estimators=30, max_depth=4, random_state=0))])
    model.fit(X[:400], y[:400])
    report = evaluation.evaluate(
        model, X[500:], y[500:], ["0", "1"], confidence_threshold=0.6,
        known_labels=evaluation.persistence_labels(y, np.arange(500, 600), 1),
        train_data=(X[:400], y[:400]), validation_data=(X[400:500], y[400:500]),
    )
    result = report.evaluation
    assert result.test_rows == 100
    assert result.accuracy > result.baseline_accuracy
    assert result.roc_auc > 0.8
    assert report.importance_method == "native"
    assert result.top_features[0].name == "signal"
    assert set(report.baselines) == {"majority", "persistence"}


def test_evaluate_uses_permutation_importance_without_native_ones():
    rng = np.random.default_rng(8)
    X, y = _frame(rng, 300)
    model = Pipeline([("preprocess", "passthrough"), ("model", LogisticRegression())])
    model.fit(X[:200], y[:200])
    report = evaluation.evaluate(
        model, X[250:], y[250:], ["0", "1"], confidence_threshold=0.6,
        validation_data=(X[200:250], y[200:250]), random_seed=0,
    )
    assert report.importance_method == "permutation"
    assert report.feature_importances[0].name == "signal"


def test_overfitting_check_scores_the_check_estimator():
    rng = np.random.default_rng(9)
    X, y = _frame(rng, 300)
    check = Pipeline([("preprocess", "passthrough"), ("model", LogisticRegression())]).fit(X[:150], y[:150])
    # The final model trained on the validation rows too, so it must not judge overfitting.
    final = Pipeline([("preprocess", "passthrough"), ("model", LogisticRegression())]).fit(X[:250], y[:250])
    report = evaluation.evaluate(
        final, X[250:], y[250:], ["0", "1"], confidence_threshold=0.6,
        train_data=(X[:150], y[:150]), validation_data=(X[150:250], y[150:250]), check_estimator=check,
    )
    assert report.evaluation.train_accuracy == evaluation.accuracy_on(check, X[:150], y[:150])
    assert report.evaluation.validation_accuracy == evaluation.accuracy_on(check, X[150:250], y[150:250])


def test_lightest_cell_count_is_black():
    from quanttrain.trainer.plots import count_colors

    # Every count exceeds half the largest, yet 95 is drawn in the lightest blue.
    assert count_colors([[100, 95], [98, 99]])[0][1] == "black"


def test_darkest_cell_count_is_white():
    from quanttrain.trainer.plots import count_colors

    assert count_colors([[100, 95], [98, 99]])[0][0] == "white"
