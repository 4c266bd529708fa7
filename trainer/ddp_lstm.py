"""The LSTM's training loop under DistributedDataParallel.

The caller builds the sequence windows first and splits them in time:
validation windows are the chronologically last ones, and no training window
is ever evaluated as a validation window or the other way round.  Only then
are the training windows divided among the ranks, with torch's
``DistributedSampler`` in its unshuffled mode (rank r takes windows r, r+W,
...), so the split over ranks can never cross the chronological boundary.
The sampler pads the last step with a few repeated training windows so that
every rank runs the same number of steps, which DDP's gradient all-reduce
requires.

Validation windows are divided the same way without padding.  Each rank sums
its losses and the ranks all-reduce (sum, count), so every rank computes the
exact mean validation loss and takes the same early-stopping decision.

On CUDA the forward pass runs under ``torch.autocast`` (float16) with a
``GradScaler``; on the CPU both are off, because CPU autocast brings no gain
for an LSTM of this size.

With a checkpoint directory, rank 0 writes the training state every
``checkpoint_every`` epochs (see :mod:`quanttrain.trainer.checkpoint`).  On
start, rank 0 reads the newest checkpoint of the same run and broadcasts it,
so all ranks resume from the same epoch even when only rank 0 can read the
volume.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from quanttrain.trainer import checkpoint as checkpoints
from quanttrain.trainer import distributed

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """Settings of the distributed training loop."""

    max_epochs: int = 50
    # Windows per optimiser step on each rank; the global batch is this times the world size.
    batch_size: int = 64
    learning_rate: float = 1e-3
    early_stopping: bool = True
    patience: int = 10
    seed: int = 42
    checkpoint_dir: str | None = None
    checkpoint_every: int = 5
    # Identifies the run in its checkpoints; see checkpoint.fingerprint.
    fingerprint: str = ""
    # time.monotonic() value after which training stops and keeps the best epoch so far.
    deadline: float | None = None
    # Whether the estimator's forward pass may use autocast and a gradient scaler (CUDA only).
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {self.max_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1 epoch, got {self.checkpoint_every}")


@dataclasses.dataclass
class LoopResult:
    """What the loop leaves behind: the best weights and how training went."""

    best_state: dict[str, Any]
    best_loss: float
    best_epoch: int
    epochs_run: int
    # First epoch run by this process (0 unless it resumed from a checkpoint).
    start_epoch: int
    validation_losses: list[float]
    samples_per_second: float
    stopped_early: bool


def train_distributed(
    module: Any,
    train_windows: tuple[Any, Any],
    validation_windows: tuple[Any, Any],
    settings: LoopSettings,
    *,
    loss_fn: Callable[[Any, Any], Any] | None = None,
) -> LoopResult:
    """Train ``module`` on (inputs, labels) tensors with DDP across the active ranks.

    Works unchanged in a single process (no DDP wrapper, no collectives).
    ``module`` is left holding the best weights.  Raises
    :class:`~quanttrain.trainer.distributed.DistributedError` when another
    rank fails.
    """
    import torch

    context = distributed.current_context()
    device = torch.device(context.device)
    module.to(device)
    loss_fn = loss_fn or torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.learning_rate)
    use_amp = settings.mixed_precision and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    progress = _Progress()
    resumed = _resume(settings, module, optimizer, scaler, device)
    if resumed is not None:
        progress = resumed
    model = _wrap(module, context)
    train_loader, sampler = _train_loader(train_windows, settings, context)
    validation_part = _rank_share(validation_windows, context)

    start_epoch = progress.epoch
    processed = 0
    started = time.perf_counter()
    stopped_early = False
    for epoch in range(start_epoch, settings.max_epochs):
        torch.manual_seed(_epoch_seed(settings.seed, epoch, context.rank))
        sampler.set_epoch(epoch)
        train_loss, samples = _train_epoch(model, train_loader, optimizer, scaler, loss_fn, device, use_amp)
        processed += samples
        validation_loss, out_of_time = _validation_loss(module, validation_part, loss_fn, device, use_amp, settings)
        progress.record(epoch, validation_loss, module)
        if context.is_primary:
            log.info(
                "epoch %d/%d: train loss %.5f, validation loss %.5f (best %.5f after epoch %d)",
                epoch + 1, settings.max_epochs, train_loss, validation_loss,
                progress.best_loss, progress.best_epoch + 1,
            )
        _maybe_checkpoint(settings, context, progress, module, optimizer, scaler)
        if settings.early_stopping and progress.since_best >= settings.patience:
            stopped_early = True
            if context.is_primary:
                log.info("early stopping: no improvement for %d epochs", progress.since_best)
            break
        if out_of_time:
            stopped_early = True
            if context.is_primary:
                log.info("stopping: the training time budget is spent")
            break

    elapsed = time.perf_counter() - started
    module.load_state_dict(progress.best_state or _cpu_state(module))
    return LoopResult(
        best_state=progress.best_state or _cpu_state(module),
        best_loss=progress.best_loss,
        best_epoch=progress.best_epoch,
        epochs_run=progress.epoch,
        start_epoch=start_epoch,
        validation_losses=list(progress.losses),
        samples_per_second=_global_rate(processed, elapsed),
        stopped_early=stopped_early,
    )


@dataclasses.dataclass
class _Progress:
    """Early-stopping state, the same on every rank; saved in checkpoints."""

    epoch: int = 0  # epochs completed
    best_loss: float = math.inf
    best_epoch: int = -1
    since_best: int = 0
    losses: list[float] = dataclasses.field(default_factory=list)
    best_state: dict[str, Any] | None = None

    def record(self, epoch: int, loss: float, module: Any) -> None:
        self.epoch = epoch + 1
        self.losses.append(float(loss))
        if loss < self.best_loss:
            self.best_loss = float(loss)
            self.best_epoch = epoch
            self.since_best = 0
            self.best_state = _cpu_state(module)
        else:
            self.since_best += 1

    def to_state(self) -> dict[str, Any]:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "since_best": self.since_best,
            "losses": list(self.losses),
            "best_state": self.best_state,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Progress:
        return cls(
            epoch=int(state["epoch"]),
            best_loss=float(state["best_loss"]),
            best_epoch=int(state["best_epoch"]),
            since_best=int(state["since_best"]),
            losses=[float(loss) for loss in state["losses"]],
            best_state=state["best_state"],
        )


def _cpu_state(module: Any) -> dict[str, Any]:
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    # Seeded per epoch, so dropout after a resume draws what an uninterrupted run would.
    return (seed * 1_000_003 + epoch * 1_009 + rank) % (2**63)


def _wrap(module: Any, context: distributed.DistributedContext) -> Any:
    if not context.is_distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [context.local_rank] if context.backend == "nccl" else None
    with distributed.translate_errors("wrapping the model in DistributedDataParallel"):
        return DistributedDataParallel(module, device_ids=device_ids)


def _train_loader(windows: tuple[Any, Any], settings: LoopSettings, context: distributed.DistributedContext):
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    dataset = TensorDataset(*windows)
    if len(dataset) < context.world_size:
        raise ValueError(
            f"{len(dataset)} training windows cannot be split over {context.world_size} ranks; "
            "use more data, a shorter sequence length or fewer nodes"
        )
    # shuffle=False keeps each rank's windows in time order; the sampler only strides.
    sampler = DistributedSampler(
        dataset, num_replicas=context.world_size, rank=context.rank, shuffle=False, drop_last=False
    )
    loader = DataLoader(dataset, batch_size=settings.batch_size, sampler=sampler)
    return loader, sampler


def _rank_share(windows: tuple[Any, Any], context: distributed.DistributedContext) -> tuple[Any, Any]:
    inputs, labels = windows
    if len(inputs) == 0:
        raise ValueError("no validation windows: raise the validation split or the amount of data")
    return inputs[context.rank :: context.world_size], labels[context.rank :: context.world_size]


def _train_epoch(model, loader, optimizer, scaler, loss_fn, device, use_amp) -> tuple[float, int]:
    import torch

    model.train()
    total, count = 0.0, 0
    for inputs, labels in loader:
        inputs = inputs.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            loss = loss_fn(model(inputs), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    return (total / count if count else float("nan")), count


def _validation_loss(module, windows, loss_fn, device, use_amp, settings: LoopSettings) -> tuple[float, bool]:
    """The mean validation loss over all ranks, and whether any rank is past the deadline."""
    import torch

    inputs, labels = windows
    module.eval()
    loss_sum = 0.0
    with torch.no_grad():
        for start in range(0, len(inputs), settings.batch_size):
            batch = inputs[start : start + settings.batch_size].to(device)
            batch_labels = labels[start : start + settings.batch_size].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                logits = module(batch)
            loss_sum += float(loss_fn(logits.float(), batch_labels)) * len(batch_labels)
    out_of_time = settings.deadline is not None and time.monotonic() >= settings.deadline
    loss_total, count, late = distributed.all_reduce_sum([loss_sum, float(len(labels)), float(out_of_time)])
    return loss_total / count, late > 0


def _resume(settings: LoopSettings, module, optimizer, scaler, device) -> _Progress | None:
    """Load the newest checkpoint of this run on every rank; None when training starts fresh."""
    if settings.checkpoint_dir is None:
        return None
    state = None
    if distributed.is_primary():
        state = checkpoints.load_latest(settings.checkpoint_dir, settings.fingerprint)
    state = distributed.broadcast_object(state)
    if state is None:
        return None
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    progress = _Progress.from_state(state)
    if distributed.is_primary():
        log.info(
            "resuming from the checkpoint in %s at epoch %d of %d (best validation loss %.5f)",
            settings.checkpoint_dir, progress.epoch + 1, settings.max_epochs, progress.best_loss,
        )
    return progress


def _maybe_checkpoint(settings, context, progress: _Progress, module, optimizer, scaler) -> None:
    if settings.checkpoint_dir is None or not context.is_primary:
        return
    if progress.epoch % settings.checkpoint_every != 0:
        return
    state = {
        "fingerprint": settings.fingerprint,
        "model": _cpu_state(module),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scaler": scaler.state_dict(),
        **progress.to_state(),
    }
    path = checkpoints.save_checkpoint(settings.checkpoint_dir, progress.epoch, state)
    log.info("saved checkpoint %s", path)


def _global_rate(processed: int, elapsed: float) -> float:
    """Training windows per second over all ranks (padding windows included)."""
    total = distributed.all_reduce_sum([float(processed)])[0]
    return total / elapsed if elapsed > 0 else 0.0
