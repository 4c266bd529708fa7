"""Hyperparameter search with its trials spread over the torchrun ranks.

Rank 0 runs the ordinary search (:func:`~quanttrain.trainer.search.run_search`)
and alone decides what to try next and when to stop (Max Training Time, the
trial budget, Bayesian proposals).  Its trial runner sends each batch of
parameter sets to every rank.  Each rank takes the batch's next untaken trial
from a counter that all ranks share, evaluates it by walk-forward
cross-validation on its own copy of the data, and takes another until the
batch is used up; the trials are then gathered back into batch order.  Bayesian
search requests one point per rank and round; grid and random search request
four per rank, so a rank with quick trials takes more of them.  With Parallel
Jobs above 1, rank r instead takes trials r, r+W, ... (W ranks) and runs them
in its local worker processes.

The other ranks do not run the search loop at all: they follow rank 0's
messages until it sends the outcome.  Only one process ever compares the
clock with the deadline, so the ranks cannot disagree about stopping, which
would leave one of them waiting in a collective until the timeout.

The result is built by ``run_search`` itself, so it has the same fields and
the same trial numbering as a single-process search, and every rank returns
it (or raises rank 0's error).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

from quanttrain.trainer import distributed
from quanttrain.trainer import search as search_module
from quanttrain.trainer.config import SearchMethod, TrainingJobConfig

log = logging.getLogger(__name__)

Evaluate = Callable[[dict[str, Any]], "search_module.Trial"]


@dataclasses.dataclass(frozen=True)
class _Batch:
    params: list[dict[str, Any]]
    # Key of the shared counter that the ranks take this batch's trials from.
    claim_key: str = ""


# Trials per rank in a batch of grid or random search.  A rank that finishes a
# quick trial takes the next one, which evens out trials of unequal cost; the
# price is that Max Training Time is checked only between batches.
TRIALS_PER_RANK_PER_BATCH = 4


@dataclasses.dataclass(frozen=True)
class _Outcome:
    result: Any = None
    # Rank 0's error as text: exception objects with custom constructors do not always unpickle.
    error: str | None = None


class PrimarySearchError(RuntimeError):
    """The search failed on rank 0; the other ranks raise this with rank 0's message."""


class DistributedTrialRunner:
    """Rank 0's trial runner: evaluates a batch across all ranks and returns the trials in batch order."""

    def __init__(self, evaluate: Evaluate, n_jobs: int = 1) -> None:
        self._evaluate = evaluate
        self._n_jobs = n_jobs
        self._search_id = uuid.uuid4().hex
        self._batches = 0

    def __call__(self, batch: list[dict[str, Any]]) -> list[search_module.Trial]:
        self._batches += 1
        message = _Batch(list(batch), f"quanttrain/search/{self._search_id}/{self._batches}")
        distributed.broadcast_object(message, long_wait=True)
        return _evaluate_share(message, self._evaluate, self._n_jobs)

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        """Send the search's outcome to the other ranks, releasing them from :func:`follow`."""
        text = None if error is None else f"{type(error).__name__}: {error}"
        distributed.broadcast_object(_Outcome(result, text), long_wait=True)


def distributed_trial_runner(
    context: distributed.DistributedContext, evaluate: Evaluate, n_jobs: int = 1
) -> DistributedTrialRunner:
    """Return rank 0's trial runner; the other ranks call :func:`follow` with the same ``evaluate``."""
    if not context.is_primary:
        raise ValueError(f"only rank 0 runs the search loop; rank {context.rank} must call follow()")
    return DistributedTrialRunner(evaluate, n_jobs)


def follow(evaluate: Evaluate, n_jobs: int = 1) -> Any:
    """Evaluate this rank's share of each batch rank 0 sends; return its result or raise its error."""
    while True:
        # Waits while rank 0 gathers the previous batch and proposes the next one.
        message = distributed.broadcast_object(None, long_wait=True)
        if isinstance(message, _Outcome):
            if message.error is not None:
                raise PrimarySearchError(f"the search failed on rank 0: {message.error}")
            return message.result
        _evaluate_share(message, evaluate, n_jobs)


def _evaluate_share(message: _Batch, evaluate: Evaluate, n_jobs: int) -> list[search_module.Trial]:
    """Evaluate this rank's trials of the batch and gather every rank's trials in batch order.

    With one trial at a time per rank, each rank takes the next trial from a
    shared counter as soon as it is free.  With Parallel Jobs above 1, rank r
    takes trials r, r+W, ... and runs them in its local workers.
    """
    batch = message.params
    context = distributed.current_context()
    if n_jobs == 1:
        pairs = []
        while (index := distributed.claim_next(message.claim_key)) < len(batch):
            pairs.append((index, evaluate(batch[index])))
    else:
        positions = list(range(context.rank, len(batch), context.world_size))
        local = search_module.run_locally([batch[index] for index in positions], evaluate, n_jobs) if positions else []
        pairs = list(zip(positions, local))
    # Trials can outlast the collective timeout, so the gather waits as long as the slowest share takes.
    gathered = distributed.all_gather_objects(pairs, long_wait=True)
    ordered: list[Any] = [None] * len(batch)
    for pairs in gathered:
        for position, trial in pairs:
            ordered[position] = trial
    return ordered


def _batch_size(config: TrainingJobConfig, world_size: int, n_jobs: int) -> int:
    """Return the trials per batch: one point per rank and worker for Bayesian search, more for the others."""
    per_rank = n_jobs
    if config.training.hyperparameter_optimization is not SearchMethod.BAYESIAN and n_jobs == 1:
        per_rank = TRIALS_PER_RANK_PER_BATCH
    return world_size * per_rank


def run_distributed_search(
    config: TrainingJobConfig,
    X,
    y,
    *,
    cv,
    estimator_factory: Callable[[dict], Any],
    deadline: float | None = None,
) -> search_module.SearchResult:
    """Run the strategy's search over every rank; every rank returns the same result.

    Outside torchrun this is :func:`~quanttrain.trainer.search.run_search`.
    Raises what ``run_search`` raises on rank 0 and :class:`PrimarySearchError`
    with its message on the other ranks, or
    :class:`~quanttrain.trainer.distributed.DistributedError` when a rank fails.
    """
    context = distributed.current_context()
    if not context.is_distributed:
        return search_module.run_search(config, X, y, cv=cv, estimator_factory=estimator_factory, deadline=deadline)

    metric = config.training.scoring_metric
    evaluate = functools.partial(search_module.evaluate_params, X=X, y=y, cv=cv,
                                 estimator_factory=estimator_factory, metric=metric)
    n_jobs = max(1, min(config.training.parallel_jobs, os.cpu_count() or 1))
    if not context.is_primary:
        return follow(evaluate, n_jobs)

    runner = distributed_trial_runner(context, evaluate, n_jobs)
    batch_size = _batch_size(config, context.world_size, n_jobs)
    log.info("spreading the search over %d ranks, %d trial(s) per batch", context.world_size, batch_size)
    try:
        result = search_module.run_search(
            config, X, y, cv=cv, estimator_factory=estimator_factory, deadline=deadline,
            trial_runner=runner, batch_size=batch_size,
        )
    except distributed.DistributedError:
        raise  # the group is broken: the other ranks fail on their own collective
    except Exception as error:
        runner.finish(error=error)
        raise
    runner.finish(result=result)
    return result
