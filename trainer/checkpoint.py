"""Training checkpoints: atomic writes, safe loads, resumption after a restart.

A checkpoint is a dictionary of state dicts and plain numbers (model,
optimizer, gradient scaler, epoch, best validation loss) saved with
``torch.save``.  It is loaded with ``torch.load(weights_only=True)``, which
reads tensors and plain containers only, so a tampered file on the shared
volume cannot run code in the trainer.

Writes are atomic: the file is written under a temporary name in the same
directory, flushed to disk and renamed over its final name, so a pod killed
mid-write leaves the previous checkpoint intact.  Only rank 0 writes; every
rank reads the same file when it resumes.

Each checkpoint carries a fingerprint of what it trains (hyperparameters and
data shape).  A checkpoint with a different fingerprint belongs to another
run, and :func:`load_latest` ignores it with a warning instead of resuming
from weights of the wrong shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Checkpoints kept per directory; older ones are deleted after each write.
# Two, so that a file that turns out unreadable still leaves one to resume from.
KEEP_LATEST = 2

_NAME = re.compile(r"^epoch-(\d{6})\.pt$")


def fingerprint(**facts: Any) -> str:
    """Return a short stable hash of JSON-serialisable facts about a training run."""
    text = json.dumps(facts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def checkpoint_path(directory: str | os.PathLike[str], epoch: int) -> Path:
    """Return the path of the checkpoint written after ``epoch`` epochs."""
    return Path(directory) / f"epoch-{epoch:06d}.pt"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[Path]:
    """Return the checkpoint files in ``directory``, oldest epoch first (empty when there is none)."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def save_checkpoint(directory: str | os.PathLike[str], epoch: int, state: dict[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of ``epoch`` atomically and prune older ones.

    ``state`` must hold only tensors, state dicts and plain Python values,
    because :func:`load_checkpoint` reads with ``weights_only=True``.
    """
    import torch

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    target = checkpoint_path(folder, epoch)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save({**state, "epoch": int(epoch)}, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(folder)
    for stale in list_checkpoints(folder)[:-KEEP_LATEST]:
        stale.unlink(missing_ok=True)
    return target


def _fsync_directory(folder: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # Some network file systems reject fsync on directories.
    finally:
        os.close(descriptor)


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; raise ValueError when it is unreadable."""
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or unsafe files
        raise ValueError(f"checkpoint {path} is unreadable or unsafe to load: {error}") from error
    if not isinstance(state, dict) or "epoch" not in state:
        raise ValueError(f"checkpoint {path} contains no training state (no 'epoch' key)")
    return state


def load_latest(
    directory: str | os.PathLike[str], expected_fingerprint: str, map_location: Any = "cpu"
) -> dict[str, Any] | None:
    """Return the newest readable checkpoint of this run in ``directory``, or None.

    Unreadable files and checkpoints of another run (a different fingerprint)
    are skipped with a warning.
    """
    for path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path, map_location=map_location)
        except ValueError as error:
            log.warning("skipping checkpoint: %s", error)
            continue
        if state.get("fingerprint") != expected_fingerprint:
            log.warning(
                "skipping checkpoint %s: it belongs to another run (fingerprint %s, expected %s)",
                path, state.get("fingerprint"), expected_fingerprint,
            )
            continue
        return state
    return None


def remove_checkpoints(directory: str | os.PathLike[str]) -> None:
    """Delete a run's checkpoint folder once its model is registered, so a new job starts fresh.

    ``directory`` must be dedicated to the run: everything in it is removed,
    and its parent too when nothing else is left there.
    """
    folder = Path(directory)
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # fails, as intended, while other runs' folders remain
