"""Process groups for training under torchrun, and the collectives the trainer uses.

torchrun starts one worker process per GPU (or per CPU slot) on every node and
identifies each worker through environment variables: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``.  :func:`init_distributed` reads them and joins the process
group: NCCL when the worker trains on CUDA, gloo on CPU.  Without those
variables (or with ``WORLD_SIZE=1``) it returns a single-process context and
every collective here becomes a cheap local operation, so the same code runs
on a laptop, in a single pod and under torchrun.

Failures of other ranks surface as :class:`DistributedError`.  Its exit code
is ``EXIT_RETRYABLE``, because a lost node is a transient fault that the
Job's pod failure policy should retry, unlike an invalid spec.  Every
collective runs under the timeout given to :func:`init_distributed`, so a
rank that dies or hangs ends the job with a clear message instead of leaving
the others waiting forever.

Python objects (trial results, parameter sets) travel through a gloo group
even when the tensors use NCCL, because NCCL can only move CUDA tensors and
pickled objects are small.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from quanttrain.trainer.summary import EXIT_RETRYABLE

log = logging.getLogger(__name__)

# Collective timeout when the caller gives none.  Long enough for the slowest
# step that ranks wait on each other for (a validation pass or one search
# trial on the slowest rank), short enough that a dead rank is noticed within
# minutes.
DEFAULT_TIMEOUT_SECONDS = 600.0

# Environment variable that overrides the collective timeout (seconds) in pods.
TIMEOUT_ENV = "QUANTTRAIN_COLLECTIVE_TIMEOUT_SECONDS"

# Timeout of waits that last as long as a piece of work: a search trial on
# the slowest rank, or rank 0 evaluating and registering the model while the
# others wait for its exit code.  It equals the largest Max Training Time
# (7 days), because the Job's activeDeadlineSeconds ends a hung job sooner.
# A rank that dies still fails these waits at once, when its connections close.
LONG_WAIT_TIMEOUT_SECONDS = 7 * 24 * 3600.0

# Words in the messages of gloo's and NCCL's RuntimeErrors about lost or silent peers.
_COMMUNICATION_FAILURE = re.compile(
    r"gloo|nccl|connection|closed by peer|timed out|timeout|socket|rendezvous|store", re.IGNORECASE
)

_ENVIRONMENT_INTEGERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


class DistributedError(RuntimeError):
    """A distributed operation failed: a rank died, hung past the timeout or could not connect.

    The trainer exits with :attr:`exit_code` (``EXIT_RETRYABLE``), so the Job
    restarts the pods and training resumes from the latest checkpoint.
    """

    exit_code = EXIT_RETRYABLE


@dataclasses.dataclass(frozen=True)
class DistributedContext:
    """Identity of this process among the job's workers, and the address of the others."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str | None = None
    master_port: int | None = None
    # Restarts torchrun has made of this worker group (0 on the first start).
    restart_count: int = 0
    # torchrun's --rdzv-id: the same for every rank and every restart of one job.
    run_id: str | None = None
    backend: str | None = None
    device: str = "cpu"
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> DistributedContext:
        """Read the torchrun variables; raise ValueError naming any malformed one."""
        environ = os.environ if environ is None else environ
        values: dict[str, int] = {}
        problems = []
        for name in (*_ENVIRONMENT_INTEGERS, "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
            raw = environ.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[name] = int(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not an integer")
        if problems:
            raise ValueError("invalid torchrun environment: " + "; ".join(problems))

        world_size = values.get("WORLD_SIZE", 1)
        rank = values.get("RANK", 0)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"invalid torchrun environment: RANK={rank} must be in 0..WORLD_SIZE-1 "
                f"and WORLD_SIZE={world_size} at least 1"
            )
        return cls(
            rank=rank,
            world_size=world_size,
            local_rank=values.get("LOCAL_RANK", 0),
            local_world_size=values.get("LOCAL_WORLD_SIZE", 1),
            master_addr=environ.get("MASTER_ADDR") or None,
            master_port=values.get("MASTER_PORT"),
            restart_count=values.get("TORCHELASTIC_RESTART_COUNT", 0),
            run_id=environ.get("TORCHELASTIC_RUN_ID") or None,
        )

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_primary(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        """Return one line for logs: rank, world size, backend and device."""
        if not self.is_distributed:
            return f"single process on {self.device}"
        return (
            f"rank {self.rank}/{self.world_size} (local {self.local_rank}/{self.local_world_size}), "
            f"{self.backend} on {self.device}, master {self.master_addr}:{self.master_port}"
        )


_SINGLE_PROCESS = DistributedContext()
_active: DistributedContext = _SINGLE_PROCESS
# Groups created at start-up: every rank must create them in the same order.
_object_group: Any = None
_long_group: Any = None
# Set once a collective failed: the group is unusable, so no rank waits on it again.
_broken = False


def current_context() -> DistributedContext:
    """Return the context set by :func:`init_distributed`, or the single-process one."""
    return _active


def is_primary() -> bool:
    """Return whether this process is rank 0, the one that writes results (true outside torchrun)."""
    return _active.is_primary


def collective_timeout(environ: Mapping[str, str] | None = None) -> float:
    """Return the collective timeout in seconds: ``$QUANTTRAIN_COLLECTIVE_TIMEOUT_SECONDS`` or the default."""
    environ = os.environ if environ is None else environ
    raw = environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds, for example 600")
    return value


def init_distributed(gpu: bool, timeout_seconds: float | None = None) -> DistributedContext:
    """Join the torchrun process group, or return a single-process context outside torchrun.

    ``gpu`` requests CUDA: the worker then uses the GPU of its LOCAL_RANK and
    NCCL; without CUDA it falls back to the CPU and gloo, with a warning.
    ``timeout_seconds`` (default :func:`collective_timeout`) bounds every
    collective, so a dead rank raises :class:`DistributedError` within that time.
    """
    global _active, _object_group, _long_group, _broken
    import torch
    import torch.distributed as dist

    timeout_seconds = collective_timeout() if timeout_seconds is None else timeout_seconds
    _broken = False
    context = DistributedContext.from_environment()
    use_cuda = gpu and torch.cuda.is_available()
    if gpu and not use_cuda:
        log.warning("GPU Enabled is set but CUDA is not available; training on the CPU")
    device = f"cuda:{context.local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(context.local_rank)

    if not context.is_distributed:
        _active = dataclasses.replace(context, device=device, timeout_seconds=timeout_seconds)
        return _active

    backend = "nccl" if use_cuda else "gloo"
    timeout = datetime.timedelta(seconds=timeout_seconds)
    # Set before joining, so that a failure message names this rank.
    _active = dataclasses.replace(context, backend=backend, device=device, timeout_seconds=timeout_seconds)
    with translate_errors("joining the process group"):
        if use_cuda:
            dist.init_process_group(
                backend, timeout=timeout, device_id=torch.device(device)
            )
        else:
            dist.init_process_group(backend, timeout=timeout)
        _object_group = dist.new_group(backend="gloo", timeout=timeout) if use_cuda else None
        _long_group = dist.new_group(
            backend="gloo", timeout=datetime.timedelta(seconds=LONG_WAIT_TIMEOUT_SECONDS)
        )
    log.info("joined the process group as %s", _active.describe())
    return _active


def shutdown() -> None:
    """Leave the process group; safe to call more than once and outside torchrun."""
    global _active, _object_group, _long_group
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (RuntimeError, dist.DistError) as error:
            # A peer that already died can make the teardown fail; the job is over anyway.
            log.warning("leaving the process group failed: %s", error)
    _active = _SINGLE_PROCESS
    _object_group = None
    _long_group = None


@contextlib.contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Turn a failed collective into a DistributedError that names the operation."""
    import torch.distributed as dist

    try:
        yield
    except (dist.DistError, RuntimeError) as error:
        if not _is_communication_failure(error):
            raise
        global _broken
        _broken = True
        raise DistributedError(_failure_message(operation, error)) from error


def _is_communication_failure(error: BaseException) -> bool:
    import torch.distributed as dist

    # gloo reports a lost peer or a timeout as a plain RuntimeError, so its message decides.
    return isinstance(error, dist.DistError) or bool(_COMMUNICATION_FAILURE.search(str(error)))


def _failure_message(operation: str, error: BaseException) -> str:
    context = _active
    lines = str(error).strip().splitlines()
    cause = lines[0] if lines else type(error).__name__
    return (
        f"distributed training failed while {operation} on rank {context.rank} of "
        f"{context.world_size}: {cause}. Another rank probably died or stopped responding "
        f"(collective timeout {context.timeout_seconds:g} s). The job exits with code "
        f"{EXIT_RETRYABLE} so that it is retried and resumes from its latest checkpoint"
    )


def barrier(operation: str = "waiting for every rank") -> None:
    """Wait until every rank arrives; a no-op in a single process."""
    import torch.distributed as dist

    if not _active.is_distributed:
        return
    with translate_errors(operation):
        if _active.backend == "nccl":
            dist.barrier(device_ids=[_active.local_rank])
        else:
            dist.barrier()


def broadcast_object(value: Any, source: int = 0, *, long_wait: bool = False) -> Any:
    """Return rank ``source``'s ``value`` on every rank (picklable objects only).

    ``long_wait`` waits up to :data:`LONG_WAIT_TIMEOUT_SECONDS` instead of the
    collective timeout, for ranks that wait while others do a long piece of work.
    """
    import torch.distributed as dist

    if not _active.is_distributed:
        return value
    holder = [value if _active.rank == source else None]
    with translate_errors("broadcasting an object"):
        dist.broadcast_object_list(holder, src=source, group=_long_group if long_wait else _object_group)
    return holder[0]


def all_gather_objects(value: Any, *, long_wait: bool = False) -> list[Any]:
    """Return every rank's ``value``, ordered by rank, on every rank; ``long_wait`` as in :func:`broadcast_object`."""
    import torch.distributed as dist

    if not _active.is_distributed:
        return [value]
    gathered: list[Any] = [None] * _active.world_size
    with translate_errors("gathering results from every rank"):
        dist.all_gather_object(gathered, value, group=_long_group if long_wait else _object_group)
    return gathered


def claim_next(key: str) -> int:
    """Return the next value, from 0 up, of a counter that every rank shares under ``key``.

    Each value goes to exactly one rank, so ranks can take work items from a
    list one at a time.  A single process counts on its own.
    """
    if not _active.is_distributed:
        value = _local_counters.get(key, 0)
        _local_counters[key] = value + 1
        return value
    import torch.distributed as dist

    with translate_errors("claiming the next work item"):
        # NB: the default store is the key-value store that the ranks met through; its
        # atomic add gives a shared counter without another server.  The accessor is
        # private (checked against torch 2.13), so a torch upgrade may move it.
        store = dist.distributed_c10d._get_default_store()
        return int(store.add(key, 1)) - 1


_local_counters: dict[str, int] = {}


def gather_objects_to_primary(value: Any) -> list[Any] | None:
    """Return every rank's ``value``, ordered by rank, on rank 0, and None on the others."""
    import torch.distributed as dist

    if not _active.is_distributed:
        return [value]
    gathered: list[Any] | None = [None] * _active.world_size if _active.is_primary else None
    with translate_errors("gathering results on rank 0"):
        dist.gather_object(value, gathered, dst=0, group=_object_group)
    return gathered


def all_reduce_sum(values: list[float]) -> list[float]:
    """Return the element-wise sum of ``values`` over all ranks, the same on every rank."""
    import torch
    import torch.distributed as dist

    if not _active.is_distributed:
        return [float(value) for value in values]
    device = _active.device if _active.backend == "nccl" else "cpu"
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    with translate_errors("summing values over the ranks"):
        dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return totals.tolist()


def share_exit_code(code: int) -> int:
    """Return rank 0's exit code on every rank, so that all workers of a job exit alike.

    The other ranks wait here (up to :data:`LONG_WAIT_TIMEOUT_SECONDS`) while
    rank 0 evaluates and registers the model.  When rank 0 cannot be reached,
    each rank keeps its own code, and after a failed collective no rank waits.
    """
    import torch.distributed as dist

    if not _active.is_distributed or _long_group is None or _broken:
        return code
    holder = [code if _active.is_primary else None]
    try:
        dist.broadcast_object_list(holder, src=0, group=_long_group)
    except (dist.DistError, RuntimeError) as error:
        log.warning("could not learn rank 0's exit code (%s); exiting with %d", error, code)
        return code
    return int(holder[0])


def finish(code: int) -> int:
    """End this worker's part: agree on rank 0's exit code, leave the group, return the code to exit with."""
    code = share_exit_code(code)
    shutdown()
    return code


def exit_code_for(error: BaseException) -> int | None:
    """Return the exit code for a distributed failure, or None when ``error`` is not one."""
    import torch.distributed as dist

    if isinstance(error, DistributedError):
        return error.exit_code
    if isinstance(error, dist.DistError):
        return EXIT_RETRYABLE
    return None
