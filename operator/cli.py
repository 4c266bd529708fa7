"""The ``quanttrain`` command line.

Each group of subcommands lives in its own module with a ``register`` function
that adds its parsers; the training commands import the trainer lazily, so the
operator's commands never load the training libraries.
"""

from __future__ import annotations

import argparse
import importlib
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
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
