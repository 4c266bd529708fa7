"""The LSTM classifier trained with DistributedDataParallel across torchrun ranks.

:class:`DistributedLSTMClassifier` keeps :class:`~quanttrain.trainer.lstm.LSTMClassifier`'s
training loop and replaces its hooks:

* Windows are built and split in time first, so the validation windows are
  the chronologically last ones.  Only the training windows are then divided
  among the ranks, like torch's ``DistributedSampler`` does.  Every rank draws
  the same permutation of the training windows from a seed that rank 0
  chooses.  It pads the permutation with its first windows to a multiple of
  the world size W and takes every W-th window, starting at its rank.  A rank never sees a validation window,
  and all ranks run the same number of steps, which DDP's gradient
  all-reduce requires.
* Each rank computes the loss of its share of the validation windows, and the
  ranks all-reduce (sum, count).  Every rank thus gets the exact mean
  validation loss and takes the same early-stopping decision.
* On CUDA the forward pass runs under ``torch.autocast`` (float16) with a
  ``GradScaler``.  The CPU trains in float32, because CPU autocast does not
  speed up an LSTM of this size.
* Only rank 0 writes checkpoints, through :mod:`quanttrain.trainer.checkpoint`
  (atomic, ``weights_only`` loading, scaler state included).  On start, rank 0
  reads the newest checkpoint of the same parameters and data and broadcasts
  it, so every rank resumes from the same epoch even when only rank 0 can read
  the volume.

In a single process (no torchrun) the class trains like its parent, with the
checkpoint format above.  Search trials keep the plain classifier: only the
final fit trains across ranks (see :func:`prepare_final_fit`).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quanttrain.trainer import checkpoint as checkpoints
from quanttrain.trainer import distributed
from quanttrain.trainer.lstm import LSTMClassifier

log = logging.getLogger(__name__)


class DistributedLSTMClassifier(LSTMClassifier):
    """LSTMClassifier whose ``fit`` trains with DistributedDataParallel on every torchrun rank.

    Every rank must call ``fit`` with the same rows.  After ``fit`` every
    rank has the same weights.  Parameters are those of
    :class:`~quanttrain.trainer.lstm.LSTMClassifier`.
    """

    # -- device and wrapping ----------------------------------------------

    def _resolve_device(self) -> torch.device:
        device = super()._resolve_device()
        context = distributed.current_context()
        if device.type == "cuda" and context.is_distributed:
            # One GPU per worker: torchrun's LOCAL_RANK picks it.
            return torch.device(context.device)
        return device

    def _wrap_module(self, module: nn.Module) -> nn.Module:
        context = distributed.current_context()
        device = next(module.parameters()).device
        self._scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        # Every rank must shuffle alike; rank 0's seed wins when random_state is unset.
        seed = self.random_state if self.random_state is not None else random.randrange(2**31)
        self._order_seed = int(distributed.broadcast_object(seed))
        if not context.is_distributed:
            return module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index] if device.type == "cuda" else None
        with distributed.translate_errors("wrapping the LSTM in DistributedDataParallel"):
            # The constructor broadcasts rank 0's weights, so every rank starts alike.
            return DistributedDataParallel(module, device_ids=device_ids)

    # -- the split over ranks ----------------------------------------------

    def _epoch_order(self, train_indices: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        """Return this rank's training windows for ``epoch``: a strided share of one shared permutation."""
        context = distributed.current_context()
        shared = torch.Generator().manual_seed(self._order_seed + epoch)
        order = train_indices[torch.randperm(len(train_indices), generator=shared)]
        return rank_share(order, context.rank, context.world_size)

    # -- one epoch and the validation loss -------------------------------------

    def _train_epoch(self, module, optimizer, windows, targets, order: torch.Tensor) -> float:
        """Run this rank's batches with autocast and the gradient scaler; return its mean loss."""
        if not distributed.current_context().is_distributed:
            return self._run_batches(module, optimizer, windows, targets, order)
        # DDP all-reduces the gradients inside backward(); a lost rank surfaces there.
        with distributed.translate_errors("all-reducing gradients in DistributedDataParallel"):
            return self._run_batches(module, optimizer, windows, targets, order)

    def _run_batches(self, module, optimizer, windows, targets, order: torch.Tensor) -> float:
        module.train()
        loss_function = nn.CrossEntropyLoss()
        device = windows.device
        # Summed on the device: a .item() per batch would wait for the GPU at every step.
        total, count = torch.zeros((), device=device), 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=self._scaler.is_enabled()):
                loss = loss_function(module(windows[batch]), targets[batch])
            self._scaler.scale(loss).backward()
            self._scaler.step(optimizer)
            self._scaler.update()
            total += loss.detach().float() * len(batch)
            count += len(batch)
        return total.item() / max(count, 1)

    def _validation_loss(self, module, windows, targets, indices: torch.Tensor) -> float:
        """Return the mean validation loss over every rank's share, the same on all ranks."""
        context = distributed.current_context()
        if len(indices) == 0:
            return float("nan")
        network = getattr(module, "module", module)  # no DDP hooks are needed without gradients
        share = indices[context.rank::context.world_size]
        network.eval()
        loss_function = nn.CrossEntropyLoss(reduction="sum")
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(share), self.batch_size * 16):
                batch = share[start:start + self.batch_size * 16].to(windows.device)
                with torch.autocast(device_type=windows.device.type, dtype=torch.float16,
                                    enabled=self._scaler.is_enabled()):
                    logits = network(windows[batch])
                total += loss_function(logits.float(), targets[batch]).item()
        loss_sum, window_count = distributed.all_reduce_sum([total, float(len(share))])
        return loss_sum / window_count

    # -- checkpoints ---------------------------------------------------------------

    def _writes_checkpoints(self) -> bool:
        return distributed.is_primary()

    def _save_checkpoint(self, state, optimizer, generator, fingerprint: str) -> None:
        if not self._writes_checkpoints():
            return
        payload = {
            **state,
            "fingerprint": fingerprint,
            "model": self.model_.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": self._scaler.state_dict(),
            "generator": generator.get_state(),
            "rng": torch.get_rng_state(),
        }
        path = checkpoints.save_checkpoint(self.checkpoint_dir, state["epoch"], payload)
        log.info("saved checkpoint %s", path)

    def _resume(self, state, optimizer, generator, fingerprint: str) -> dict[str, Any]:
        if not self.checkpoint_dir:
            return state
        saved = None
        if distributed.is_primary():
            saved = checkpoints.load_latest(self.checkpoint_dir, fingerprint)
        saved = distributed.broadcast_object(saved)
        if saved is None:
            return state
        self.model_.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        self._scaler.load_state_dict(saved["scaler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        if distributed.is_primary():
            log.info(
                "resuming LSTM training from the checkpoint in %s after epoch %d of %d",
                self.checkpoint_dir, saved["epoch"], self.max_epochs,
            )
        return {key: saved[key] for key in state}


def rank_share(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Return rank ``rank``'s windows of ``order``: every ``world_size``-th, after padding.

    ``order`` is padded with its own first entries to a multiple of
    ``world_size``, as ``DistributedSampler`` does, so that every rank gets
    the same number of windows.
    """
    if world_size == 1:
        return order
    if len(order) < world_size:
        raise ValueError(
            f"{len(order)} training windows cannot be split over {world_size} ranks; "
            "use more data, fewer nodes or fewer processes per node"
        )
    padding = -len(order) % world_size
    padded = torch.cat([order, order[:padding]]) if padding else order
    return padded[rank::world_size]


def prepare_final_fit(pipeline: Any, checkpoint_dir: str | os.PathLike[str] | None = None) -> Any | None:
    """Return the pipeline this rank fits for the final model, or None when this rank has no part in it.

    Under torchrun the LSTM trains on every rank with
    :class:`DistributedLSTMClassifier`; the other models train on rank 0
    alone (see docs/distributed.md), so the other ranks get None.  With
    ``checkpoint_dir`` the LSTM writes checkpoints there and resumes from
    them; the other models ignore it.
    """
    model = pipeline.steps[-1][1]
    is_lstm = isinstance(model, LSTMClassifier)
    if is_lstm and checkpoint_dir is not None:
        model.set_params(checkpoint_dir=str(checkpoint_dir))
    context = distributed.current_context()
    if not context.is_distributed:
        return pipeline
    if not is_lstm:
        return pipeline if context.is_primary else None
    replacement = DistributedLSTMClassifier(**model.get_params())
    return pipeline.set_params(**{pipeline.steps[-1][0]: replacement})


def checkpoint_directory(registry_dir: str | os.PathLike[str], strategy_key: str, config_sha256: str) -> Path:
    """Return the folder for one configuration's checkpoints: ``<registry>/<strategy>/checkpoints/<config hash>``.

    Restarts of the same job find their checkpoints there; another
    configuration of the strategy gets its own folder.
    """
    return Path(registry_dir) / strategy_key / "checkpoints" / config_sha256[:16]
