"""Helpers for tests that start real torchrun processes on 127.0.0.1."""

from __future__ import annotations

import os
import socket

from quanttrain.trainer.launcher import EXIT_CODE_DIR_ENV

# Variables that torchrun sets for its workers; a child must not inherit a parent's values.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      EXIT_CODE_DIR_ENV)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_environment(collective_timeout_seconds: int) -> dict[str, str]:
    """Return this process's environment without torchrun's variables, with one thread per worker."""
    env = {key: value for key, value in os.environ.items() if key not in TORCHRUN_VARIABLES}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                "QUANTTRAIN_COLLECTIVE_TIMEOUT_SECONDS": str(collective_timeout_seconds)})
    return env
