"""The model factory: one scikit-learn pipeline per model type.

Every model the trainer builds is a :class:`~sklearn.pipeline.Pipeline` of

* ``preprocess``: the feature scaler the caller passes (or ``"passthrough"``),
* ``scale``: a :class:`~sklearn.preprocessing.StandardScaler`, only for SVM and
  LSTM, because kernels and neural networks need features on comparable scales,
* ``model``: the estimator.

Because every fitted step sits inside the pipeline, cross-validation refits the
scalers on each training fold, so they are never fitted on test rows.

XGBoost's early stopping needs an evaluation set.  :class:`HoldoutEarlyStopping`
takes it from the chronologically last rows of whatever training rows it is
given, so it works the same way inside a pipeline, a search and
cross-validation, and never looks at rows after the training rows.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from quanttrain.trainer.config import ModelType, TrainingJobConfig

logger = logging.getLogger("quanttrain.trainer.models")

# Parameters that other settings of the job control, with the setting that sets them.
_RESERVED_PARAMETERS: dict[ModelType, dict[str, str]] = {
    ModelType.RANDOM_FOREST: {"random_state": "training.randomSeed"},
    ModelType.XGB: {
        "random_state": "training.randomSeed",
        "device": "training.gpuEnabled",
        "early_stopping_rounds": "training.earlyStopping and training.earlyStoppingPatience",
    },
    ModelType.SVM: {
        "random_state": "training.randomSeed",
        "probability": "the trainer (it calibrates the SVC's decision values into probabilities)",
    },
    ModelType.LSTM: {
        "random_state": "training.randomSeed",
        "device": "training.gpuEnabled",
        "patience": "training.earlyStopping and training.earlyStoppingPatience",
        "checkpoint_dir": "training.checkpoint",
    },
}

# Share of each training fold that XGBoost holds out as its early-stopping evaluation set.
DEFAULT_VALIDATION_FRACTION = 0.1


class HoldoutEarlyStopping(ClassifierMixin, BaseEstimator):
    """Fit a classifier with early stopping on the last rows of its training data.

    ``fit(X, y)`` keeps the rows in their given (chronological) order.  It
    trains the wrapped estimator on the first rows and passes the last
    ``validation_fraction`` of them as its ``eval_set``.  ``validation_gap``
    rows in between are dropped, so that targets that look ahead do not overlap
    the evaluation rows.  The model is therefore trained on fewer rows than it
    is given, and uses no row after them.

    Labels may be any values: they are encoded to ``0..k-1`` for the wrapped
    estimator, and evaluation rows whose label the training part lacks are
    dropped, because the evaluation loss cannot score an unknown class.

    Parameters
    ----------
    estimator : classifier with ``fit(X, y, eval_set=..., verbose=...)``
        For example an ``xgboost.XGBClassifier`` with ``early_stopping_rounds``.
    validation_fraction : float, default=0.1
        Share of the rows, taken from the end, used as the evaluation set.
    validation_gap : int, default=0
        Rows dropped between the training part and the evaluation set.
    """

    def __init__(self, estimator=None, validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                 validation_gap: int = 0):
        self.estimator = estimator
        self.validation_fraction = validation_fraction
        self.validation_gap = validation_gap

    def fit(self, X, y):
        X, y = validate_data(self, X, y, ensure_all_finite="allow-nan")
        check_classification_targets(y)
        n_train, eval_start = self._split_points(len(X))

        self.label_encoder_ = LabelEncoder().fit(y[:n_train])
        self.classes_ = self.label_encoder_.classes_
        y_train = self.label_encoder_.transform(y[:n_train])

        X_eval, y_eval = X[eval_start:], y[eval_start:]
        known = np.isin(y_eval, self.classes_)
        self.estimator_ = clone(self.estimator)
        if not known.any():
            # NOTE: without evaluation rows the wrapped estimator trains for
            # all of its rounds; XGBoost requires early_stopping_rounds unset then.
            logger.warning("no evaluation row has a class of the training rows; training without early stopping")
            self.estimator_.set_params(early_stopping_rounds=None)
            self.estimator_.fit(X[:n_train], y_train, verbose=False)
            return self

        eval_set = [(X_eval[known], self.label_encoder_.transform(y_eval[known]))]
        self.estimator_.fit(X[:n_train], y_train, eval_set=eval_set, verbose=False)
        return self

    def _split_points(self, n_rows: int) -> tuple[int, int]:
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be between 0 and 1 (exclusive), got {self.validation_fraction!r}")
        n_eval = max(1, math.ceil(n_rows * self.validation_fraction))
        n_train = n_rows - n_eval - self.validation_gap
        if n_train < 2:
            raise ValueError(
                f"n_samples={n_rows} is too few to hold out {n_eval} evaluation rows after a gap of "
                f"{self.validation_gap}; use more rows or a smaller validation_fraction"
            )
        return n_train, n_rows - n_eval

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, ensure_all_finite="allow-nan", reset=False)
        return self.estimator_.predict_proba(X)

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, ensure_all_finite="allow-nan", reset=False)
        return self.label_encoder_.inverse_transform(self.estimator_.predict(X))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # XGBoost treats NaN as a missing value.
        tags.input_tags.allow_nan = True
        return tags

    @property
    def feature_importances_(self):
        return self.estimator_.feature_importances_


def model_param_names(model_type: ModelType | str) -> list[str]:
    """Return the parameter names a user may set for ``model_type``, sorted."""
    model_type = ModelType(model_type)
    reserved = _RESERVED_PARAMETERS[model_type]
    names = set(_bare_estimator(model_type).get_params(deep=False)) - set(reserved)
    if model_type is ModelType.XGB:
        names.add("validation_fraction")
    return sorted(names)


def _bare_estimator(model_type: ModelType):
    if model_type is ModelType.RANDOM_FOREST:
        return RandomForestClassifier()
    if model_type is ModelType.XGB:
        from xgboost import XGBClassifier

        return XGBClassifier()
    if model_type is ModelType.SVM:
        return SVC()
    from quanttrain.trainer.lstm import LSTMClassifier

    return LSTMClassifier()


def check_model_params(model_type: ModelType | str, params: dict[str, Any], source: str) -> None:
    """Raise ValueError naming ``source`` (a field path) when ``params`` contains a name the model lacks."""
    model_type = ModelType(model_type)
    reserved = _RESERVED_PARAMETERS[model_type]
    problems = []
    for name in params:
        if name in reserved:
            problems.append(f"{source}.{name}: {name!r} is set by {reserved[name]}; remove it here")
    unknown = [name for name in params if name not in reserved and name not in model_param_names(model_type)]
    if unknown:
        valid = ", ".join(model_param_names(model_type))
        problems.append(
            f"{source}: unknown {model_type.value} parameter(s) {', '.join(map(repr, unknown))}; "
            f"valid parameters: {valid}"
        )
    if problems:
        raise ValueError("\n".join(problems))


def make_estimator(
    config: TrainingJobConfig,
    params: dict[str, Any] | None = None,
    *,
    preprocessor=None,
    n_classes: int = 2,
    validation_gap: int | None = None,
) -> Pipeline:
    """Build the unfitted pipeline for the strategy's model type.

    ``params`` (plain parameter names, as in ``training.searchSpace``) override
    ``training.modelParameters``.  Unknown names raise ValueError.
    ``validation_gap`` is the number of rows that early stopping (XGB, LSTM)
    drops before its evaluation rows: pass the dataset's label look-ahead.
    It defaults to :func:`early_stopping_gap`.
    """
    model_type = config.strategy.model_type
    fixed = dict(config.training.model_parameters)
    overrides = dict(params or {})
    check_model_params(model_type, fixed, "training.modelParameters")
    check_model_params(model_type, overrides, "training.searchSpace")
    merged = {**fixed, **overrides}

    steps: list[tuple[str, Any]] = [("preprocess", preprocessor if preprocessor is not None else "passthrough")]
    if model_type in (ModelType.SVM, ModelType.LSTM):
        steps.append(("scale", StandardScaler()))
    gap = early_stopping_gap(config) if validation_gap is None else validation_gap
    steps.append(("model", _build_model(config, merged, n_classes, gap)))
    return Pipeline(steps)


def _build_model(config: TrainingJobConfig, params: dict[str, Any], n_classes: int, gap: int):
    model_type = config.strategy.model_type
    seed = config.training.random_seed
    if model_type is ModelType.RANDOM_FOREST:
        return RandomForestClassifier(random_state=seed, **params)
    if model_type is ModelType.SVM:
        # Platt scaling is fitted on out-of-fold decision values of a 5-fold split of the training rows
        # only; ensemble=False then refits one SVC on all of them, as SVC(probability=True) did.
        return CalibratedClassifierCV(SVC(random_state=seed, **params), method="sigmoid", ensemble=False)
    if model_type is ModelType.XGB:
        return _build_xgb(config, params, n_classes, gap)
    return _build_lstm(config, params, gap)


def _build_xgb(config: TrainingJobConfig, params: dict[str, Any], n_classes: int, gap: int):
    from xgboost import XGBClassifier

    training = config.training
    params = dict(params)
    validation_fraction = params.pop("validation_fraction", DEFAULT_VALIDATION_FRACTION)
    options = {
        "tree_method": "hist",
        "eval_metric": "logloss" if n_classes <= 2 else "mlogloss",
        **params,
        "device": _device(training.gpu_enabled, cuda_name="cuda"),
        "random_state": training.random_seed,
    }
    if not training.early_stopping:
        return XGBClassifier(**options)
    booster = XGBClassifier(early_stopping_rounds=training.early_stopping_patience, **options)
    return HoldoutEarlyStopping(booster, validation_fraction=validation_fraction,
                                validation_gap=gap)


def _build_lstm(config: TrainingJobConfig, params: dict[str, Any], gap: int):
    from quanttrain.trainer.lstm import LSTMClassifier

    training = config.training
    options = {
        "sequence_length": config.strategy.feature_configuration.sequence_length,
        "validation_gap": gap,
        **params,
        "patience": training.early_stopping_patience if training.early_stopping else None,
        "device": _device(training.gpu_enabled, cuda_name="cuda"),
        "random_state": training.random_seed,
    }
    return LSTMClassifier(**options)


def early_stopping_gap(config: TrainingJobConfig) -> int:
    """Return the bars a label looks ahead when the bar interval is configured, else 0.

    Early stopping drops this many rows between its training and evaluation
    parts, so that the labels of the last training rows do not overlap the
    evaluation rows.  Callers that know the dataset's look-ahead may set the
    estimator's gap to it instead (``make_estimator(..., validation_gap=...)``).
    """
    from quanttrain.trainer.targets import horizon_bars, target_lookahead_bars

    # NOTE: when the bar interval is left to inference from timestamps and the
    # caller passes no gap, none is dropped, which makes early stopping slightly optimistic.
    interval = config.strategy.feature_configuration.bar_interval_minutes
    if interval is None:
        return 0
    return target_lookahead_bars(config, horizon_bars(config.strategy.prediction_horizon_minutes, interval))


def _device(gpu_enabled: bool, cuda_name: str) -> str:
    if not gpu_enabled:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return cuda_name
    logger.warning("GPU Enabled is set but no CUDA device is available; training on the CPU")
    return "cpu"


def final_estimator(pipeline: Pipeline):
    """Return the fitted model inside ``pipeline``, unwrapping early stopping and calibration."""
    model = pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline
    if isinstance(model, HoldoutEarlyStopping):
        check_is_fitted(model)
        return model.estimator_
    if isinstance(model, CalibratedClassifierCV):
        check_is_fitted(model)
        return model.calibrated_classifiers_[0].estimator
    return model


def model_complexity(pipeline: Pipeline, path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Describe the size of a fitted model.

    Keys, where they apply: ``model`` (class name), ``n_trees``, ``max_depth``,
    ``n_nodes``, ``best_iteration`` (XGBoost with early stopping) and
    ``n_support_vectors``.  ``n_parameters`` counts learned numbers: one per
    tree node, the support vectors with their coefficients, or the network's
    weights.  ``size_bytes`` is the size of the saved model at ``path`` (a file
    or a folder).
    """
    model = final_estimator(pipeline)
    check_is_fitted(model)
    found: dict[str, Any] = {"model": type(model).__name__}
    if isinstance(model, RandomForestClassifier):
        found.update(_forest_complexity(model))
    elif isinstance(model, SVC):
        n_support = int(model.support_vectors_.shape[0])
        found["n_support_vectors"] = n_support
        found["n_parameters"] = int(model.support_vectors_.size + model.dual_coef_.size + model.intercept_.size)
    elif hasattr(model, "get_booster"):
        found.update(_booster_complexity(model))
    elif hasattr(model, "model_"):
        found["n_parameters"] = int(sum(parameter.numel() for parameter in model.model_.parameters()))
    if path is not None:
        found["size_bytes"] = _size_on_disk(Path(path))
    return found


def _forest_complexity(forest: RandomForestClassifier) -> dict[str, int]:
    trees = [estimator.tree_ for estimator in forest.estimators_]
    n_nodes = int(sum(tree.node_count for tree in trees))
    return {"n_trees": len(trees), "max_depth": int(max(tree.max_depth for tree in trees)),
            "n_nodes": n_nodes, "n_parameters": n_nodes}


def _booster_complexity(model) -> dict[str, int]:
    dump = model.get_booster().get_dump()
    # In XGBoost's text dump each node sits on its own line, indented by one tab per level.
    depth = max((len(line) - len(line.lstrip("\t")) for tree in dump for line in tree.splitlines()), default=0)
    n_nodes = sum(len(tree.splitlines()) for tree in dump)
    found = {"n_trees": len(dump), "max_depth": depth, "n_nodes": n_nodes, "n_parameters": n_nodes}
    best_iteration = getattr(model, "best_iteration", None) if model.get_params().get("early_stopping_rounds") else None
    if best_iteration is not None:
        found["best_iteration"] = int(best_iteration)
    return found


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def native_feature_importances(pipeline: Pipeline, feature_names: list[str]) -> dict[str, float] | None:
    """Return the model's own feature importances by name, or None when it has none (SVM, LSTM).

    ``feature_names`` are the pipeline's input columns.  When the preprocessing
    changes the columns, the names come from its ``get_feature_names_out``.
    """
    model = final_estimator(pipeline)
    importances = getattr(model, "feature_importances_", None)
    if importances is None:
        return None
    names = list(feature_names)
    if len(names) != len(importances):
        names = list(pipeline[:-1].get_feature_names_out(names))
    if len(names) != len(importances):
        raise ValueError(f"the model has {len(importances)} feature importances but {len(names)} feature names")
    return {name: float(value) for name, value in zip(names, importances)}
