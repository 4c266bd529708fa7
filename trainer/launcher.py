"""torchrun with the trainer's exit codes: what distributed trainer pods run.

    python -m quanttrain.trainer.launcher [torchrun options] -m quanttrain.trainer [trainer options]

torchrun exits with 1 whenever a worker fails, whatever the worker's own exit
code, so on its own it would hide the trainer's permanent codes (2 invalid
spec or data, 3 gate failed) from the Job's pod failure policy.  This
launcher runs torchrun in the same process with ``$QUANTTRAIN_EXIT_CODE_DIR``
set to a fresh folder, where each worker records its final exit code as
``rank-<RANK>`` (see :func:`record_exit_code`).  When a worker of the latest
attempt recorded a permanent code, the launcher exits with it, rank 0's
first.  Otherwise it exits with torchrun's own outcome: 0, or 1 for failed or
lost workers.

A worker that records a permanent code exits with 0, so that torchrun does
not restart the whole worker group (``--max-restarts``) for a spec that is
still invalid or a model that would fail the gate again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from quanttrain.trainer.summary import (
    EXIT_CONFIG_ERROR,
    EXIT_GATE_FAILED,
    EXIT_OK,
    EXIT_RETRYABLE,
    PERMANENT_EXIT_CODES,
)

log = logging.getLogger("quanttrain.trainer.launcher")

EXIT_CODE_DIR_ENV = "QUANTTRAIN_EXIT_CODE_DIR"
_RECORD_PREFIX = "rank-"
_MEANINGS = {EXIT_CONFIG_ERROR: "invalid spec or data", EXIT_GATE_FAILED: "performance gate failed"}


def record_exit_code(code: int, environ: Mapping[str, str] | None = None) -> bool:
    """Record this worker's exit code for the launcher and return whether it was recorded.

    Outside the launcher (``$QUANTTRAIN_EXIT_CODE_DIR`` unset) it records nothing
    and returns False.  The file is written to a temporary name and renamed, so the launcher
    never reads half a record.
    """
    environ = os.environ if environ is None else environ
    folder = environ.get(EXIT_CODE_DIR_ENV)
    if not folder:
        return False
    rank = int(environ.get("RANK") or 0)
    # torchrun may restart the workers with other ranks, so the attempt number marks stale records.
    attempt = int(environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    path = Path(folder) / f"{_RECORD_PREFIX}{rank}"
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps({"exitCode": code, "attempt": attempt}), encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        log.warning("failed to record exit code %d in %s: %s; the launcher will see torchrun's code", code, path, error)
        return False
    return True


def read_exit_codes(folder: Path) -> dict[int, int]:
    """Return the exit code that each rank recorded in the latest attempt, by rank, skipping unreadable records."""
    records: dict[int, tuple[int, int]] = {}
    for path in folder.glob(f"{_RECORD_PREFIX}*"):
        try:
            rank = int(path.name.removeprefix(_RECORD_PREFIX))
            record = json.loads(path.read_text(encoding="utf-8"))
            records[rank] = (int(record["attempt"]), int(record["exitCode"]))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring the invalid exit code record %s: %s", path, error)
    if not records:
        return {}
    latest = max(attempt for attempt, _ in records.values())
    return {rank: code for rank, (attempt, code) in sorted(records.items()) if attempt == latest}


def choose_exit_code(torchrun_code: int, recorded: Mapping[int, int]) -> tuple[int, str]:
    """Return the code the pod exits with and a sentence that explains it.

    A permanent code recorded by rank 0 wins, then the lowest rank's.  Without
    one, the result is torchrun's own code.
    """
    permanent = {rank: code for rank, code in recorded.items() if code in PERMANENT_EXIT_CODES}
    if permanent:
        rank = 0 if 0 in permanent else min(permanent)
        code = permanent[rank]
        return code, (f"rank {rank} recorded exit code {code} ({_MEANINGS.get(code, 'permanent')}); "
                      f"exiting with {code} instead of torchrun's {torchrun_code}")
    return torchrun_code, f"no worker recorded a permanent exit code; exiting with torchrun's {torchrun_code}"


def run_torchrun(argv: list[str]) -> int:
    """Run torchrun in this process with ``argv`` and return 0 when every worker succeeded, else 1."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    try:
        torchrun_main(argv)
    except ChildFailedError as error:
        log.error("%s", error.format_msg())
        return EXIT_RETRYABLE
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Under tempfile's folder: $TMPDIR, the writable /tmp emptyDir in pods.
    folder = Path(tempfile.mkdtemp(prefix="quanttrain-exit-codes-"))
    previous = os.environ.get(EXIT_CODE_DIR_ENV)
    os.environ[EXIT_CODE_DIR_ENV] = str(folder)  # torchrun passes its environment on to the workers
    try:
        torchrun_code = run_torchrun(argv)
        code, explanation = choose_exit_code(torchrun_code, read_exit_codes(folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if previous is None:
            os.environ.pop(EXIT_CODE_DIR_ENV, None)
        else:
            os.environ[EXIT_CODE_DIR_ENV] = previous
    log.info("%s", explanation)
    return code


if __name__ == "__main__":
    sys.exit(main())
