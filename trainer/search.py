"""Hyperparameter search over time-ordered data.

Each trial scores one parameter set by cross-validation with the caller's
splitter (walk-forward folds), building a fresh pipeline through the caller's
``estimator_factory`` so every scaler is fitted per fold.  The methods:

* ``GRID_SEARCH``: scikit-learn's :class:`~sklearn.model_selection.ParameterGrid`,
  capped at Max Optimization Iterations by a seeded sample of the grid,
* ``RANDOM_SEARCH``: :class:`~sklearn.model_selection.ParameterSampler`, ranges as
  scipy distributions,
* ``BAYESIAN``: scikit-optimize's :class:`~skopt.Optimizer` with a Gaussian
  process, asking for a batch of points each round,
* ``NONE``: one trial with the fixed Model Parameters, so the fold scores exist.

Trials run in batches through a *trial runner*: by default in this process or,
with Parallel Jobs above 1, in joblib worker processes.  Distributed search
passes its own runner, which spreads a batch over the ranks.  Proposals, the
deadline, logging and the result stay here, so both give results of the same
form.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from quanttrain.trainer.config import ParameterRange, ScoringMetric, SearchMethod, TrainingJobConfig
from quanttrain.trainer.models import check_model_params

logger = logging.getLogger("quanttrain.trainer.search")

# The score a failed trial reports to the Bayesian optimiser: the worst value of every metric.
_FAILED_TRIAL_SCORE = 0.0
# Draws per requested random-search trial, so that duplicates can be dropped.
_RANDOM_OVERSAMPLING = 20
# Rounds of asking for replacements when the optimiser proposes evaluated points again.
_MAX_ASK_ROUNDS = 10
# Random points evaluated before the Gaussian process proposes any: scikit-optimize's
# default of 10, lowered for small budgets so the model still picks half of the points.
_MAX_INITIAL_POINTS = 10


@dataclasses.dataclass
class Trial:
    """One evaluated parameter set.

    ``score`` is the mean of the fold scores that are defined (ROC AUC is NaN in
    a fold whose test rows hold one class), NaN when none is, and None when the
    trial raised ``error``.
    """

    number: int
    params: dict[str, Any]
    score: float | None
    fold_scores: list[float]
    seconds: float
    error: str | None = None
    traceback: str | None = dataclasses.field(default=None, repr=False)

    @property
    def succeeded(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """Return the trial as JSON-safe values; NaN becomes None."""
        return {
            "number": self.number,
            "params": to_plain(self.params),
            "score": _json_float(self.score),
            "fold_scores": [_json_float(score) for score in self.fold_scores],
            "seconds": round(self.seconds, 3),
            "error": self.error,
        }


@dataclasses.dataclass
class SearchResult:
    """The outcome of a search: the best trial's parameters and scores, and every trial."""

    method: str
    metric: str
    best_params: dict[str, Any]
    best_score: float | None
    best_fold_scores: list[float]
    trials: list[Trial]
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Return the result as values that ``json.dumps`` accepts with ``allow_nan=False``."""
        return {
            "method": self.method,
            "metric": self.metric,
            "best_params": to_plain(self.best_params),
            "best_score": _json_float(self.best_score),
            "best_fold_scores": [_json_float(score) for score in self.best_fold_scores],
            "n_trials": len(self.trials),
            "n_failed_trials": sum(1 for trial in self.trials if not trial.succeeded),
            "stopped_early": self.stopped_early,
            "trials": [trial.to_dict() for trial in self.trials],
        }


class SearchError(RuntimeError):
    """Every trial of a search failed."""


TrialRunner = Callable[[list[dict[str, Any]]], list[Trial]]


# -- scoring ------------------------------------------------------------------------


def fold_score(estimator, X, y, metric: ScoringMetric | str) -> float:
    """Score a fitted classifier on one test fold; ROC AUC is NaN when the fold contains one class.

    Precision, recall and F1 are support-weighted averages over the classes with
    ``zero_division=0``.  ROC AUC is one-versus-rest weighted by support, which
    equals the plain binary ROC AUC for two classes.
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    metric = ScoringMetric(metric)
    y = np.asarray(y)
    if metric is ScoringMetric.ROC_AUC:
        return _weighted_roc_auc(y, estimator.predict_proba(X), estimator.classes_)
    predicted = estimator.predict(X)
    if metric is ScoringMetric.ACCURACY:
        return float(accuracy_score(y, predicted))
    averaged = {ScoringMetric.PRECISION: precision_score, ScoringMetric.RECALL: recall_score,
                ScoringMetric.F1: f1_score}[metric]
    return float(averaged(y, predicted, average="weighted", zero_division=0))


def _weighted_roc_auc(y: np.ndarray, probabilities: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2:
        return math.nan
    column_of = {label: index for index, label in enumerate(classes)}
    total = 0.0
    for label, count in zip(present, counts):
        # A class the training fold lacked has no column: the model gives it probability 0.
        column = column_of.get(label)
        scores = probabilities[:, column] if column is not None else np.zeros(len(y))
        total += count * roc_auc_score(y == label, scores)
    return float(total / counts.sum())


def evaluate_params(params: dict[str, Any], X, y, *, cv, estimator_factory: Callable[[dict], Any],
                    metric: ScoringMetric | str) -> Trial:
    """Cross-validate one parameter set; a raised error is recorded in the trial, not re-raised.

    The returned trial has number 0: the search numbers trials in proposal order.
    """
    from sklearn.model_selection import cross_validate

    started = time.perf_counter()
    try:
        scores = cross_validate(
            estimator_factory(params), X, y, cv=cv, error_score="raise",
            scoring=functools.partial(_scorer, metric=ScoringMetric(metric)),
        )["test_score"]
    except Exception as error:  # noqa: BLE001 - a failed trial must not end the search
        return Trial(0, params, None, [], time.perf_counter() - started,
                     error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
    fold_scores = [float(score) for score in scores]
    return Trial(0, params, _nan_mean(fold_scores), fold_scores, time.perf_counter() - started)


def _scorer(estimator, X, y, metric: ScoringMetric) -> float:
    return fold_score(estimator, X, y, metric)


def _nan_mean(values: list[float]) -> float:
    defined = [value for value in values if not math.isnan(value)]
    return sum(defined) / len(defined) if defined else math.nan


# -- running trials -------------------------------------------------------------------


def run_locally(batch: list[dict[str, Any]], evaluate: Callable[[dict], Trial], n_jobs: int) -> list[Trial]:
    """Evaluate a batch of parameter sets in this process, or in ``n_jobs`` joblib worker processes."""
    n_jobs = min(n_jobs, len(batch))
    if n_jobs <= 1:
        return [evaluate(params) for params in batch]

    from joblib import Parallel, delayed, parallel_config

    # Each worker gets an equal share of the cores for its BLAS and OpenMP threads
    # (XGBoost, PyTorch), so parallel trials do not oversubscribe the machine.
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    with parallel_config(backend="loky", inner_max_num_threads=threads):
        return Parallel(n_jobs=n_jobs)(delayed(evaluate)(params) for params in batch)


def _parallel_jobs(requested: int) -> int:
    cores = os.cpu_count() or 1
    if requested > cores:
        logger.info("Parallel Jobs is %d but this machine has %d cores; running %d trials at a time",
                    requested, cores, cores)
        return cores
    return requested


# -- proposing parameters ----------------------------------------------------------------


class _FixedProposals:
    """Proposals known in advance (grid, random sample, or the single fixed trial)."""

    def __init__(self, candidates: list[dict[str, Any]]):
        self._candidates = candidates
        self.total = len(candidates)
        self._next = 0

    def ask(self, count: int) -> list[dict[str, Any]]:
        batch = self._candidates[self._next:self._next + count]
        self._next += len(batch)
        return batch

    def tell(self, trials: list[Trial]) -> None:
        return None


class _BayesianProposals:
    """scikit-optimize's ask/tell loop over a Gaussian process; scores are negated for minimisation."""

    def __init__(self, space: dict[str, Any], total: int, seed: int):
        from skopt import Optimizer

        self._names = list(space)
        dimensions = [_skopt_dimension(name, dimension) for name, dimension in space.items()]
        self.total = int(min(total, _combinations(space)))
        if self.total < total:
            # Beyond this, scikit-optimize would only repeat points it has evaluated.
            logger.info("search space has only %d combinations; running %d trials instead of %d",
                        self.total, self.total, total)
        self._optimizer = Optimizer(
            dimensions, base_estimator="GP", random_state=seed,
            n_initial_points=max(1, min(_MAX_INITIAL_POINTS, self.total // 2)),
        )
        self._pending: list[list[Any]] = []
        self._losses: dict[str, float] = {}

    def ask(self, count: int) -> list[dict[str, Any]]:
        """Return up to ``count`` points not evaluated before.

        scikit-optimize may propose a point again, above all in small discrete
        spaces.  Such a point gets its known loss at once instead of a trial,
        and the optimiser is asked again, for a bounded number of rounds.
        """
        chosen: list[list[Any]] = []
        keys: set[str] = set()
        for _ in range(_MAX_ASK_ROUNDS):
            for point in self._ask_points(count - len(chosen)):
                key = _point_key(point)
                if key in self._losses:
                    self._optimizer.tell(point, self._losses[key])
                elif key not in keys:
                    chosen.append(point)
                    keys.add(key)
            if len(chosen) == count:
                break
        self._pending = chosen
        return [to_plain(dict(zip(self._names, point))) for point in chosen]

    def _ask_points(self, count: int) -> list[list[Any]]:
        return self._optimizer.ask(n_points=count) if count > 1 else [self._optimizer.ask()]

    def tell(self, trials: list[Trial]) -> None:
        losses = []
        for point, trial in zip(self._pending, trials):
            usable = trial.succeeded and not math.isnan(trial.score)
            losses.append(-(trial.score if usable else _FAILED_TRIAL_SCORE))
            self._losses[_point_key(point)] = losses[-1]
        self._optimizer.tell(self._pending, losses)


def _point_key(point: list[Any]) -> str:
    return json.dumps(to_plain(point), default=str)


def _combinations(space: dict[str, Any]) -> int | float:
    """Return the number of distinct points in ``space``, ``math.inf`` when it has a real-valued range."""
    count = 1
    for dimension in space.values():
        if isinstance(dimension, ParameterRange):
            if not dimension.is_integer:
                return math.inf
            count *= dimension.high - dimension.low + 1
        else:
            count *= len(dimension)
    return count


def _skopt_dimension(name: str, dimension: Any):
    from skopt.space import Categorical, Integer, Real

    if isinstance(dimension, ParameterRange):
        prior = "log-uniform" if dimension.log else "uniform"
        kind = Integer if dimension.is_integer else Real
        return kind(dimension.low, dimension.high, prior=prior, name=name)
    return Categorical(list(dimension), name=name)


class _IntegerDistribution:
    """A scipy distribution whose samples are rounded down to integers (for log-scale integer ranges)."""

    def __init__(self, distribution):
        self._distribution = distribution

    def rvs(self, random_state=None) -> int:
        return int(math.floor(self._distribution.rvs(random_state=random_state)))


def _scipy_distribution(dimension: Any):
    from scipy import stats

    if not isinstance(dimension, ParameterRange):
        return list(dimension)
    low, high = dimension.low, dimension.high
    if dimension.is_integer and dimension.log:
        # Sampling [low, high + 1) and rounding down gives every integer up to high.
        return _IntegerDistribution(stats.loguniform(low, high + 1))
    if dimension.is_integer:
        return stats.randint(low, high + 1)
    if dimension.log:
        return stats.loguniform(low, high)
    return stats.uniform(low, high - low)


def _grid_proposals(space: dict[str, Any], cap: int, seed: int) -> _FixedProposals:
    from sklearn.model_selection import ParameterGrid

    ranges = [name for name, dimension in space.items() if isinstance(dimension, ParameterRange)]
    if ranges:
        raise ValueError(f"training.searchSpace: grid search needs lists of values, not ranges, for {ranges}")
    grid = ParameterGrid({name: list(values) for name, values in space.items()})
    chosen = range(len(grid))
    if len(grid) > cap:
        # A seeded sample covers the grid more evenly than its first points would.
        chosen = sorted(np.random.default_rng(seed).choice(len(grid), size=cap, replace=False))
        logger.info("grid has %d points; Max Optimization Iterations runs %d of them and skips %d",
                    len(grid), cap, len(grid) - cap)
    return _FixedProposals([to_plain(grid[index]) for index in chosen])


def _random_proposals(space: dict[str, Any], total: int, seed: int) -> _FixedProposals:
    from sklearn.model_selection import ParameterSampler

    distributions = {name: _scipy_distribution(dimension) for name, dimension in space.items()}
    limit = min(total, _combinations(space))
    distinct: dict[str, dict[str, Any]] = {}
    with warnings.catch_warnings():
        # ParameterSampler warns when a space of lists has fewer points than requested; logged below.
        warnings.simplefilter("ignore", UserWarning)
        # Integer ranges are sampled with replacement, so draw extra points and keep the first distinct ones.
        for params in ParameterSampler(distributions, total * _RANDOM_OVERSAMPLING, random_state=seed):
            distinct.setdefault(_point_key(params), to_plain(params))
            if len(distinct) >= limit:
                break
    candidates = list(distinct.values())
    if len(candidates) < total:
        logger.info("search space has only %d combinations; running %d trials instead of %d",
                    len(candidates), len(candidates), total)
    return _FixedProposals(candidates)


def _proposals(config: TrainingJobConfig):
    training = config.training
    method = SearchMethod(training.hyperparameter_optimization)
    space = training.search_space
    if method is SearchMethod.NONE:
        return _FixedProposals([to_plain(dict(training.model_parameters))])
    if not space:
        raise ValueError(f"training.searchSpace: {method.value} needs a search space; it is empty")
    check_model_params(config.strategy.model_type, space, "training.searchSpace")
    if method is SearchMethod.GRID_SEARCH:
        return _grid_proposals(space, training.max_optimization_iterations, training.random_seed)
    if method is SearchMethod.RANDOM_SEARCH:
        return _random_proposals(space, training.max_optimization_iterations, training.random_seed)
    return _BayesianProposals(space, training.max_optimization_iterations, training.random_seed)


# -- the search ------------------------------------------------------------------------------


def run_search(
    config: TrainingJobConfig,
    X,
    y,
    *,
    cv,
    estimator_factory: Callable[[dict], Any],
    deadline: float | None = None,
    trial_runner: TrialRunner | None = None,
    batch_size: int | None = None,
) -> SearchResult:
    """Search the strategy's hyperparameters by cross-validation and return every trial and the best.

    Parameters
    ----------
    config : the job configuration; its ``training`` settings choose the method,
        space, metric, budget, seed and parallel jobs.
    X, y : time-ordered rows and their labels.
    cv : a scikit-learn splitter that keeps time order (walk-forward folds).
    estimator_factory : builds an unfitted estimator from a dict of parameters.
    deadline : Unix time (``time.time()``) after which no new batch of trials
        starts; defaults to now plus Max Training Time.  The first batch always
        runs, and running trials finish, so the search may overrun by one batch.
    trial_runner : evaluates a batch of parameter sets and returns their trials
        in the same order; defaults to :func:`run_locally` with Parallel Jobs.
    batch_size : parameter sets per batch (a distributed runner passes its world
        size); defaults to Parallel Jobs.

    Raises
    ------
    ValueError : the search space names an unknown parameter, or a grid contains a range.
    SearchError : every trial failed; the message contains the first error.
    """
    training = config.training
    method = SearchMethod(training.hyperparameter_optimization)
    metric = ScoringMetric(training.scoring_metric)
    if deadline is None:
        deadline = time.time() + training.max_training_time_minutes * 60
    proposals = _proposals(config)
    n_jobs = _parallel_jobs(training.parallel_jobs)
    if trial_runner is None:
        evaluate = functools.partial(evaluate_params, X=X, y=y, cv=cv,
                                     estimator_factory=estimator_factory, metric=metric)
        trial_runner = functools.partial(run_locally, evaluate=evaluate, n_jobs=n_jobs)
    batch_size = batch_size or n_jobs

    logger.info("starting %s: %d trial(s), %d per batch, scoring %s", method.value, proposals.total,
                batch_size, metric.value)
    trials, stopped_early = _run_batches(proposals, trial_runner, batch_size, deadline, metric)
    return _result(method, metric, trials, stopped_early)


def _run_batches(proposals, trial_runner: TrialRunner, batch_size: int, deadline: float,
                 metric: ScoringMetric) -> tuple[list[Trial], bool]:
    trials: list[Trial] = []
    while len(trials) < proposals.total:
        if trials and time.time() >= deadline:
            logger.warning("Max Training Time reached after %d of %d trials; keeping the best so far",
                           len(trials), proposals.total)
            return trials, True
        batch = proposals.ask(min(batch_size, proposals.total - len(trials)))
        if not batch:
            break
        evaluated = trial_runner(batch)
        evaluated = [dataclasses.replace(trial, number=len(trials) + index + 1)
                     for index, trial in enumerate(evaluated)]
        for trial in evaluated:
            _log_trial(trial, proposals.total, metric)
        proposals.tell(evaluated)
        trials.extend(evaluated)
    return trials, False


def _log_trial(trial: Trial, total: int, metric: ScoringMetric) -> None:
    if not trial.succeeded:
        logger.warning("trial %d/%d failed after %.1f s: params=%s: %s\n%s", trial.number, total,
                       trial.seconds, trial.params, trial.error, trial.traceback or "")
        return
    undefined = sum(1 for score in trial.fold_scores if math.isnan(score))
    note = f" ({metric.value} not defined in {undefined} of {len(trial.fold_scores)} folds)" if undefined else ""
    logger.info("trial %d/%d: params=%s %s=%s in %.1f s%s", trial.number, total, trial.params,
                metric.value, _format_score(trial.score), trial.seconds, note)


def _format_score(score: float | None) -> str:
    return "n/a" if score is None or math.isnan(score) else f"{score:.4f}"


def _result(method: SearchMethod, metric: ScoringMetric, trials: list[Trial], stopped_early: bool) -> SearchResult:
    succeeded = [trial for trial in trials if trial.succeeded]
    if not succeeded:
        first = trials[0]
        raise SearchError(f"all {len(trials)} trial(s) failed; the first, with params={first.params}, "
                          f"raised {first.error}\n{first.traceback or ''}")
    scored = [trial for trial in succeeded if not math.isnan(trial.score)]
    # max() keeps the earliest trial among equal scores.
    best = max(scored, key=lambda trial: trial.score) if scored else succeeded[0]
    logger.info("best trial %d: params=%s %s=%s", best.number, best.params, metric.value, _format_score(best.score))
    return SearchResult(
        method=method.value, metric=metric.value, best_params=to_plain(best.params),
        best_score=best.score if scored else None, best_fold_scores=list(best.fold_scores),
        trials=trials, stopped_early=stopped_early,
    )


# -- plain values ----------------------------------------------------------------------------


def to_plain(value: Any) -> Any:
    """Convert numpy scalars and arrays inside dicts, lists and tuples to plain Python values."""
    if isinstance(value, dict):
        return {str(key): to_plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_float(value: float | None) -> float | None:
    if value is None or math.isnan(value):
        return None
    return float(value)
