"""The trainer's command line: what a pod runs, alone or under torchrun.

    python -m quanttrain.trainer --spec FILE [--registry DIR] [--output FILE]
                                 [--termination-log FILE] [--data-dir DIR]

FILE is an MLTrainingJob (YAML or JSON) or a bare job configuration.  The
exit status follows :mod:`quanttrain.trainer.summary`: 0 trained and passed
the gate, 2 invalid spec or data (the message names the field path or file),
3 trained but the gate failed, 1 anything unexpected (worth a retry).

Rank 0 (every process outside torchrun) writes the compact summary JSON to the
termination log, which Kubernetes shows as the container's termination
message and the operator copies into the job's status.  On an error the
termination log receives the error text instead.

Under :mod:`quanttrain.trainer.launcher` (distributed pods) each worker also
records its final code for the launcher, which torchrun alone would lose.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from quanttrain.trainer import distributed
from quanttrain.trainer.launcher import record_exit_code
from quanttrain.trainer.summary import (
    EXIT_CONFIG_ERROR,
    EXIT_OK,
    EXIT_RETRYABLE,
    MAX_SUMMARY_BYTES,
    PERMANENT_EXIT_CODES,
)

logger = logging.getLogger("quanttrain.trainer")

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
REGISTRY_ENV = "QUANTTRAIN_REGISTRY"
DATA_DIR_ENV = "QUANTTRAIN_DATA_DIR"


class SpecError(Exception):
    """The spec file cannot be read or does not hold a valid job."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m quanttrain.trainer",
        description="Train one MLTrainingJob: search, fit, evaluate, gate and register the model.",
    )
    parser.add_argument("--spec", required=True, metavar="FILE",
                        help="MLTrainingJob (YAML or JSON) or bare job configuration to train")
    parser.add_argument("--registry", metavar="DIR", default=None,
                        help=f"model registry folder (default: ${REGISTRY_ENV}, else ./registry)")
    parser.add_argument("--output", metavar="FILE", default=None,
                        help="also write the full result JSON here (it is always written next to the model)")
    parser.add_argument("--termination-log", metavar="FILE", default=None,
                        help=f"write the summary JSON here (default: {DEFAULT_TERMINATION_LOG} when it is writable)")
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help=f"folder that relative dataset paths resolve against "
                             f"(default: ${DATA_DIR_ENV}, else the working directory)")
    return parser


def is_primary_rank(environ: dict[str, str] | None = None) -> bool:
    """Return whether this process writes results: rank 0 under torchrun, or any process outside it."""
    environ = os.environ if environ is None else environ
    return environ.get("RANK", "0").strip() in ("", "0")


def default_termination_log() -> Path | None:
    path = Path(DEFAULT_TERMINATION_LOG)
    if path.exists() and os.access(path, os.W_OK):
        return path
    return None


def read_job(path: Path) -> tuple[Any, str | None]:
    """Read and validate the job in ``path``; return its config and the MLTrainingJob's name (if any)."""
    import yaml

    from quanttrain.trainer.config import ConfigError, load_job_config, spec_from_resource

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SpecError(f"{path}: cannot read the spec file: {error.strerror or error}") from error
    try:
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SpecError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {error}") from error
    if not isinstance(document, dict):
        raise SpecError(f"{path}: expected an MLTrainingJob or a job configuration mapping, "
                        f"got {type(document).__name__}")

    prefix = "spec." if document.get("kind") == "MLTrainingJob" else ""
    try:
        config = load_job_config(spec_from_resource(document))
    except ConfigError as error:
        lines = "\n".join(f"  {prefix}{violation}" for violation in error.violations)
        raise SpecError(f"{path}: {len(error.violations)} problem(s) in the job:\n{lines}") from error
    name = (document.get("metadata") or {}).get("name") if prefix else None
    return config, name


def write_termination_log(path: Path | None, text: str) -> None:
    """Write ``text`` to the termination log, cut to the 4096 bytes Kubernetes keeps."""
    if path is None:
        return
    data = text.encode("utf-8")[:MAX_SUMMARY_BYTES]
    try:
        path.write_bytes(data)
    except OSError as error:
        logger.warning("could not write the termination log %s: %s", path, error)


def run(args: argparse.Namespace) -> int:
    """Train the job that ``args`` name; return the exit status."""
    from quanttrain.trainer.pipeline import JobInputError, train_job

    primary = is_primary_rank()
    termination_log = Path(args.termination_log) if args.termination_log else default_termination_log()
    if not primary:
        termination_log = None
    registry = args.registry or os.environ.get(REGISTRY_ENV) or "registry"
    data_dir = args.data_dir or os.environ.get(DATA_DIR_ENV) or None

    try:
        config, name = read_job(Path(args.spec))
        # Joins the torchrun process group (a no-op outside torchrun); every rank reads the same spec first.
        distributed.init_distributed(gpu=config.training.gpu_enabled)
        outcome = train_job(config, registry_dir=registry, output_path=args.output, base_dir=data_dir,
                            progress=False, strategy_key=name, write_results=primary)
    except (SpecError, JobInputError) as error:
        logger.error("%s", error)
        write_termination_log(termination_log, f"invalid job input: {error}")
        return EXIT_CONFIG_ERROR
    except distributed.DistributedError as error:
        # The message names the failed collective and states that the Job retries, so no traceback is needed.
        logger.error("%s", error)
        write_termination_log(termination_log, str(error))
        return error.exit_code
    except Exception as error:  # noqa: BLE001 - any other failure is reported and retried by the Job
        logger.exception("training failed")
        write_termination_log(termination_log, f"training failed: {type(error).__name__}: {error}")
        return EXIT_RETRYABLE

    if outcome is None:
        return EXIT_OK  # a torchrun rank other than 0: its share of the work is done
    summary = outcome.summary
    write_termination_log(termination_log, summary.to_message())
    logger.info("%s: %s", summary.strategy, summary.message)
    if outcome.model is not None:
        logger.info("model %s version %s (sha256 %s)", outcome.model.uri, outcome.model.version, outcome.model.sha256)
    return outcome.exit_code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Under torchrun every rank exits with rank 0's code when rank 0 can still be reached.
    return exit_status(distributed.finish(run(args)))


def exit_status(code: int) -> int:
    """Return the status this process exits with once ``code`` is final.

    Under the launcher (:mod:`quanttrain.trainer.launcher`) the code is recorded for it,
    and a recorded permanent code becomes 0.  So torchrun does not restart the workers
    for a failure that would repeat, and the launcher exits with the recorded code.
    """
    if record_exit_code(code) and code in PERMANENT_EXIT_CODES:
        return EXIT_OK
    return code
