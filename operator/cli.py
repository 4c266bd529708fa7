"""The ``quanttrain`` command line.

Each group of subcommands lives in its own module with a ``register`` function
that adds its parsers; the training commands import the trainer lazily, so the
operator's commands never load the training libraries.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that add subcommands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = ("commands_workbook", "commands_features", "commands_operator",
                                     "commands_train", "commands_serve")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quanttrain",
        description="Turn Excel strategy workbooks into MLTrainingJobs and train them.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(f"quanttrain.operator.{module_name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; each sets ``func`` on its parser and returns an exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader closed stdout early (``quanttrain models show ... | head``).  As the Python
        # documentation's SIGPIPE note advises, point stdout at devnull so that the flush at exit
        # does not raise again, and end quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
