"""An LSTM sequence classifier in PyTorch behind scikit-learn's estimator contract.

Rows are bars in chronological order.  Row ``t`` is classified from the
window of rows ``t - L + 1 .. t`` (``L = sequence_length``), so a prediction
never uses a later row.  The first ``L - 1`` rows have no full window: their
windows are padded at the front with copies of the first row, which is the
oldest data the estimator is given.  Predictions therefore depend on the rows
before each row in the array passed to ``predict``: pass the rows in order and
without gaps.

Training holds out the chronologically last ``validation_fraction`` of the
windows, after ``validation_gap`` dropped windows.  It stops when the loss on
them has not improved for ``patience`` epochs and keeps the weights of the
best epoch.  Only the training windows are shuffled between batches, which is
safe because each window already carries its own history.

The training loop is split into small methods (:meth:`_epoch_order`,
:meth:`_train_epoch`, :meth:`_validation_loss`, :meth:`_wrap_module`,
:meth:`_writes_checkpoints`) so that distributed training can replace the
sampler, wrap the network in ``DistributedDataParallel`` and let one rank write
checkpoints, without copying the loop.

The fitted model is saved as a plain dictionary of tensors and Python values
(:meth:`LSTMClassifier.state_dict`), which ``torch.load(..., weights_only=True)``
reads without unpickling code.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

logger = logging.getLogger("quanttrain.trainer.lstm")

CHECKPOINT_FILE = "lstm-checkpoint.pt"
# Windows per forward pass when predicting; large batches are cheap without gradients.
_PREDICT_BATCH = 4096


class LSTMNetwork(nn.Module):
    """Stacked LSTM over a window, then a linear layer on the last time step's output."""

    def __init__(self, n_features: int, n_classes: int, hidden_size: int, num_layers: int, dropout: float):
        super().__init__()
        # PyTorch applies LSTM dropout only between stacked layers.
        self.lstm = nn.LSTM(n_features, hidden_size, num_layers=num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.lstm(windows)
        return self.head(self.dropout(outputs[:, -1]))


class LSTMClassifier(ClassifierMixin, BaseEstimator):
    """LSTM classifier over sequence windows of time-ordered rows.

    Parameters
    ----------
    hidden_size : int, default=32
        Units in each LSTM layer.
    num_layers : int, default=1
        Stacked LSTM layers.
    dropout : float, default=0.0
        Dropout between LSTM layers and before the output layer.
    sequence_length : int, default=30
        Rows in each input window, the row itself included.
    learning_rate : float, default=1e-3
        Adam's learning rate.
    weight_decay : float, default=0.0
        Adam's L2 penalty.
    batch_size : int, default=64
        Windows per training batch.
    max_epochs : int, default=50
        Upper bound on passes over the training windows.
    patience : int or None, default=10
        Epochs without a lower validation loss before training stops; None
        trains for ``max_epochs``.
    validation_fraction : float, default=0.1
        Share of the windows, taken from the end, used for the validation loss.
        When it rounds to no window, training runs ``max_epochs`` epochs.
    validation_gap : int, default=0
        Windows dropped between the training and validation windows, so that
        targets that look ahead do not overlap the validation rows.
    device : str, default="auto"
        ``"cpu"``, ``"cuda"``, ``"cuda:N"``, or ``"auto"`` for CUDA when available.
    random_state : int or None, default=None
        Seed for weight initialisation, dropout and batch order; on the CPU the
        same seed gives the same model.
    checkpoint_dir : str or None, default=None
        Folder for a checkpoint of the training state, written every
        ``checkpoint_every`` epochs and at the end.  ``fit`` resumes from it when
        it was written for the same parameters and data.
    checkpoint_every : int, default=5
        Epochs between checkpoints.
    num_threads : int or None, default=1
        PyTorch CPU threads during ``fit`` and ``predict_proba``, restored
        afterwards; None keeps the process's setting.  The default of one
        thread suits the small networks and batches of a trading strategy,
        whose operations are too small to split across cores.  PyTorch's own
        default of one thread per core also ignores a container's CPU quota.
        Measured on a loaded 2-core machine, a 20-epoch fit on 252 rows took
        8.4 s with 2 threads and 0.55 s with 1.  Set a larger number, or None,
        for a network large enough to keep several cores busy.
    """

    def __init__(self, hidden_size: int = 32, num_layers: int = 1, dropout: float = 0.0,
                 sequence_length: int = 30, learning_rate: float = 1e-3, weight_decay: float = 0.0,
                 batch_size: int = 64, max_epochs: int = 50, patience: int | None = 10,
                 validation_fraction: float = 0.1, validation_gap: int = 0, device: str = "auto",
                 random_state: int | None = None, checkpoint_dir: str | None = None,
                 checkpoint_every: int = 5, num_threads: int | None = 1):
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dropout = dropout
        self.sequence_length = sequence_length
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.validation_gap = validation_gap
        self.device = device
        self.random_state = random_state
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.num_threads = num_threads

    # -- scikit-learn API -------------------------------------------------

    def fit(self, X, y):
        """Train on the rows in their given order; return self."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self._check_params()
        self.classes_, encoded = np.unique(y, return_inverse=True)
        device = self._resolve_device()
        self.device_ = str(device)

        windows = self._build_windows(X, device)
        targets = torch.from_numpy(encoded.astype(np.int64)).to(device)
        train_indices, validation_indices = self._split_indices(len(X))

        rng_devices = [device] if device.type == "cuda" else []
        with self._threads(), torch.random.fork_rng(devices=rng_devices, device_type=device.type):
            if self.random_state is not None:
                torch.manual_seed(self.random_state)
            self.model_ = LSTMNetwork(X.shape[1], len(self.classes_), self.hidden_size,
                                      self.num_layers, self.dropout).to(device)
            fingerprint = self._fingerprint(X, encoded) if self.checkpoint_dir else ""
            self._train(windows, targets, train_indices, validation_indices, fingerprint)
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Return class probabilities, one column per entry of ``classes_``."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float32, reset=False)
        device = next(self.model_.parameters()).device
        windows = self._build_windows(X, device)
        self.model_.eval()
        chunks = []
        with self._threads(), torch.no_grad():
            for start in range(0, len(windows), _PREDICT_BATCH):
                logits = self.model_(windows[start:start + _PREDICT_BATCH])
                chunks.append(torch.softmax(logits.float(), dim=1).cpu())
        return torch.cat(chunks).numpy().astype(np.float64)

    def predict(self, X) -> np.ndarray:
        """Return the most probable class of each row."""
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]

    # -- windows and splits -----------------------------------------------

    def _build_windows(self, X: np.ndarray, device: torch.device) -> torch.Tensor:
        """Return a (rows, sequence_length, features) view; row t's window ends at row t."""
        features = torch.from_numpy(np.array(X, dtype=np.float32)).to(device)
        padding = features[:1].expand(self.sequence_length - 1, -1)
        padded = torch.cat([padding, features])
        # unfold makes overlapping windows without copying: (rows, features, length).
        return padded.unfold(0, self.sequence_length, 1).transpose(1, 2)

    def _split_indices(self, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        n_validation = int(n_rows * self.validation_fraction)
        n_train = n_rows - n_validation - self.validation_gap if n_validation else n_rows
        if n_train < 1:
            raise ValueError(
                f"{n_rows} rows are too few for a validation_fraction of {self.validation_fraction} "
                f"and a validation_gap of {self.validation_gap}; use more rows or smaller values"
            )
        return torch.arange(n_train), torch.arange(n_rows - n_validation, n_rows)

    # -- training loop ------------------------------------------------------

    def _train(self, windows, targets, train_indices, validation_indices, fingerprint: str) -> None:
        module = self._wrap_module(self.model_)
        optimizer = torch.optim.Adam(module.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        generator = torch.Generator()
        generator.manual_seed(self.random_state if self.random_state is not None else torch.seed())
        state = self._initial_state()
        state = self._resume(state, optimizer, generator, fingerprint)

        while not state["completed"] and state["epoch"] < self.max_epochs:
            order = self._epoch_order(train_indices, generator, state["epoch"])
            train_loss = self._train_epoch(module, optimizer, windows, targets, order)
            validation_loss = self._validation_loss(module, windows, targets, validation_indices)
            state["epoch"] += 1
            state["history"].append({"epoch": state["epoch"], "train_loss": train_loss,
                                     "validation_loss": validation_loss})
            stop = self._track_best(state, validation_loss)
            state["completed"] = stop or state["epoch"] >= self.max_epochs
            if self.checkpoint_dir and (state["completed"] or state["epoch"] % self.checkpoint_every == 0):
                self._save_checkpoint(state, optimizer, generator, fingerprint)

        if state["best_model"] is not None:
            self.model_.load_state_dict(state["best_model"])
        self.history_ = state["history"]
        self.best_epoch_ = state["best_epoch"]
        self.model_.eval()

    def _initial_state(self) -> dict[str, Any]:
        return {"epoch": 0, "history": [], "best_loss": math.inf, "best_epoch": 0, "best_model": None,
                "epochs_without_improvement": 0, "completed": False}

    def _track_best(self, state: dict[str, Any], validation_loss: float) -> bool:
        """Record the epoch's validation loss; return True when early stopping ends training."""
        if math.isnan(validation_loss):
            # No validation windows: the last epoch is the best one.
            state["best_epoch"] = state["epoch"]
            state["best_model"] = None
            return False
        if validation_loss < state["best_loss"]:
            state["best_loss"] = validation_loss
            state["best_epoch"] = state["epoch"]
            state["best_model"] = copy.deepcopy(self.model_.state_dict())
            state["epochs_without_improvement"] = 0
            return False
        state["epochs_without_improvement"] += 1
        return self.patience is not None and state["epochs_without_improvement"] >= self.patience

    def _wrap_module(self, module: nn.Module) -> nn.Module:
        """Return the module that trains (distributed training wraps it in DistributedDataParallel)."""
        return module

    def _epoch_order(self, train_indices: torch.Tensor, generator: torch.Generator, epoch: int) -> torch.Tensor:
        """Return the training windows in this epoch's batch order (a shuffle of the training part only)."""
        return train_indices[torch.randperm(len(train_indices), generator=generator)]

    def _train_epoch(self, module, optimizer, windows, targets, order: torch.Tensor) -> float:
        """Run one pass over ``order`` in batches; return the mean training loss."""
        module.train()
        loss_function = nn.CrossEntropyLoss()
        total, count = 0.0, 0
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size].to(windows.device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(module(windows[batch]), targets[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            count += len(batch)
        return total / max(count, 1)

    def _validation_loss(self, module, windows, targets, indices: torch.Tensor) -> float:
        """Return the mean loss on the validation windows, or NaN when there are none."""
        if len(indices) == 0:
            return math.nan
        module.eval()
        loss_function = nn.CrossEntropyLoss(reduction="sum")
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(indices), _PREDICT_BATCH):
                batch = indices[start:start + _PREDICT_BATCH].to(windows.device)
                total += loss_function(module(windows[batch]), targets[batch]).item()
        return total / len(indices)

    # -- checkpoints ----------------------------------------------------------

    def _writes_checkpoints(self) -> bool:
        """Return whether this process writes checkpoints (in distributed training, rank 0 only)."""
        return True

    def _fingerprint(self, X: np.ndarray, encoded: np.ndarray) -> str:
        """Return a hash of the parameters and data, so a checkpoint resumes only the same training."""
        params = {key: value for key, value in self.get_params().items()
                  if key not in ("device", "checkpoint_dir", "checkpoint_every", "num_threads")}
        digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
        digest.update(np.ascontiguousarray(X).tobytes())
        digest.update(np.ascontiguousarray(encoded).tobytes())
        return digest.hexdigest()

    def _save_checkpoint(self, state, optimizer, generator, fingerprint: str) -> None:
        if not self._writes_checkpoints():
            return
        folder = Path(self.checkpoint_dir)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {**state, "fingerprint": fingerprint, "model": self.model_.state_dict(),
                   "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                   "rng": torch.get_rng_state()}
        # Write then rename, so a process killed mid-write leaves the previous checkpoint intact.
        partial = folder / (CHECKPOINT_FILE + ".partial")
        torch.save(payload, partial)
        os.replace(partial, folder / CHECKPOINT_FILE)

    def _resume(self, state, optimizer, generator, fingerprint: str) -> dict[str, Any]:
        if not self.checkpoint_dir:
            return state
        path = Path(self.checkpoint_dir) / CHECKPOINT_FILE
        if not path.exists():
            return state
        saved = torch.load(path, map_location=next(self.model_.parameters()).device, weights_only=True)
        if saved.get("fingerprint") != fingerprint:
            logger.warning("ignoring checkpoint %s: it was written for other parameters or data", path)
            return state
        self.model_.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        logger.info("resuming LSTM training from checkpoint %s after epoch %d", path, saved["epoch"])
        return {key: saved[key] for key in state}

    # -- saving -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return the fitted model as tensors and plain Python values (safe for ``weights_only`` loading)."""
        check_is_fitted(self)
        return {
            "params": self.get_params(),
            "classes": self.classes_.tolist(),
            "n_features_in": int(self.n_features_in_),
            "model": {key: value.detach().cpu() for key, value in self.model_.state_dict().items()},
            "best_epoch": int(self.best_epoch_),
            "history": self.history_,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: str | None = None) -> LSTMClassifier:
        """Rebuild a fitted classifier from :meth:`state_dict`'s output, on ``device`` or its saved device."""
        params = dict(state["params"])
        if device is not None:
            params["device"] = device
        estimator = cls(**params)
        estimator.classes_ = np.asarray(state["classes"])
        estimator.n_features_in_ = state["n_features_in"]
        estimator.best_epoch_ = state["best_epoch"]
        estimator.history_ = list(state["history"])
        target = estimator._resolve_device()
        estimator.device_ = str(target)
        estimator.model_ = LSTMNetwork(estimator.n_features_in_, len(estimator.classes_), estimator.hidden_size,
                                       estimator.num_layers, estimator.dropout)
        estimator.model_.load_state_dict(state["model"])
        estimator.model_.to(target).eval()
        return estimator

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`state_dict` to ``path`` with ``torch.save``."""
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | None = None) -> LSTMClassifier:
        """Read a model written by :meth:`save`; ``weights_only`` loading runs no code from the file."""
        return cls.from_state_dict(torch.load(path, map_location="cpu", weights_only=True), device)

    # -- helpers -------------------------------------------------------------------

    @contextlib.contextmanager
    def _threads(self):
        """Use ``num_threads`` PyTorch threads inside the block, when set."""
        if self.num_threads is None:
            yield
            return
        previous = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def _resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but no CUDA device is available; use 'cpu' or 'auto'")
        return device

    def _check_params(self) -> None:
        positive = {"hidden_size": self.hidden_size, "num_layers": self.num_layers,
                    "sequence_length": self.sequence_length, "batch_size": self.batch_size,
                    "max_epochs": self.max_epochs, "checkpoint_every": self.checkpoint_every}
        for name, value in positive.items():
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.num_threads is not None and (not isinstance(self.num_threads, (int, np.integer)) or self.num_threads < 1):
            raise ValueError(f"num_threads must be a positive integer or None, got {self.num_threads!r}")
        if self.patience is not None and (not isinstance(self.patience, (int, np.integer)) or self.patience < 1):
            raise ValueError(f"patience must be a positive integer or None, got {self.patience!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction!r}")
        if not isinstance(self.validation_gap, (int, np.integer)) or self.validation_gap < 0:
            raise ValueError(f"validation_gap must be a non-negative integer, got {self.validation_gap!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate!r}")
