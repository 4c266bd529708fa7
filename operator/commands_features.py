"""The ``features`` subcommand: write a strategy's feature matrix and target for inspection.

The trainer's libraries (pandas, TA-Lib) are imported inside the command, so
the operator and the converter never load them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

OUTPUT_SUFFIXES = (".csv", ".parquet")


def register(subparsers: argparse._SubParsersAction) -> None:
    features = subparsers.add_parser(
        "features", help="write a strategy's feature matrix and target",
        description="Compute a strategy's features and target from bar data and write them as CSV or Parquet "
                    "(by the output's suffix): one row per bar with a timestamp, the unscaled features in "
                    "training order and the target. Rows without every feature (indicator warm-up) or without "
                    "a target (the last horizon bars) are left out unless --all-rows is given.")
    features.add_argument("inputs", nargs="+", metavar="WORKBOOK|JOB.yaml",
                          help="strategy workbooks (.xlsx) or MLTrainingJob files (.yaml, .json)")
    features.add_argument("--data", type=Path,
                          help="bar data file (.csv or .parquet); default: the strategy's Training Dataset")
    features.add_argument("--output", type=Path, required=True, help="file to write (.csv or .parquet)")
    features.add_argument("--strategy", metavar="NAME",
                          help="strategy name or job name; required when the inputs hold more than one strategy")
    features.add_argument("--all-rows", action="store_true",
                          help="keep warm-up rows and rows without a target, with empty cells where unknown")
    features.set_defaults(func=run_features)


def run_features(args: argparse.Namespace) -> int:
    from quanttrain.operator.job_inputs import InputError, load_job_specs

    if args.output.suffix.lower() not in OUTPUT_SUFFIXES:
        return _fail(f"--output {args.output}: unknown file type {args.output.suffix!r}; use .csv or .parquet")
    try:
        specs = load_job_specs([str(path) for path in args.inputs])
    except InputError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return _fail(f"{len(error.problems)} problem(s) found; nothing was written")

    chosen = _choose(specs, args.strategy)
    if isinstance(chosen, str):
        return _fail(chosen)
    data_path = args.data or Path(chosen.strategy.training_dataset)

    from quanttrain.trainer.data import load_bars

    try:
        bars = load_bars(data_path)
        table, summary = _feature_table(bars, chosen, keep_all_rows=args.all_rows)
    except ValueError as error:
        return _fail(f"{error}\nnothing was written")
    _write_table(table, args.output)
    print(f"wrote {args.output}: {summary}")
    return 0


def _fail(message: str) -> int:
    print(f"quanttrain features: {message}", file=sys.stderr)
    return 1


def _choose(specs, requested: str | None):
    """Return the spec of the requested strategy, or an error message."""
    if requested is None:
        if len(specs) == 1:
            return specs[0][1]
        names = ", ".join(spec.strategy.name for _, spec in specs)
        return f"the inputs hold {len(specs)} strategies ({names}); choose one with --strategy NAME"
    for job_name, spec in specs:
        if requested in (job_name, spec.strategy.name):
            return spec
    names = ", ".join(f"{spec.strategy.name!r} ({job_name})" for job_name, spec in specs)
    return f"no strategy named {requested!r}; the inputs hold {names}"


def _feature_table(bars, config, *, keep_all_rows: bool):
    """Return the table to write and a one-line summary of it."""
    if keep_all_rows:
        from quanttrain.trainer.data import bar_interval_minutes
        from quanttrain.trainer.features import build_feature_frame
        from quanttrain.trainer.targets import build_target, horizon_bars

        interval = config.strategy.feature_configuration.bar_interval_minutes or bar_interval_minutes(bars.index)
        horizon = horizon_bars(config.strategy.prediction_horizon_minutes, interval)
        table = build_feature_frame(bars, config, interval)
        table[config.features.target_variable] = build_target(bars, config, horizon)
        summary = f"{len(table)} rows (all bars), {table.shape[1] - 1} features, horizon {horizon} bar(s)"
        return table, summary

    from quanttrain.trainer.dataset import build_dataset

    dataset = build_dataset(bars, config)
    table = dataset.X.copy()
    table[config.features.target_variable] = dataset.coder.inverse_transform(dataset.y)
    summary = (f"{len(table)} of {len(bars)} bars, {len(dataset.feature_names)} features, "
               f"horizon {dataset.prediction_horizon} bar(s), classes {', '.join(dataset.classes)}")
    return table, summary


def _write_table(table, output: Path) -> None:
    """Write beside the output and rename, so a failed write leaves no partial file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(handle)
    try:
        if output.suffix.lower() == ".csv":
            table.to_csv(temporary, index_label="timestamp")
        else:
            table.to_parquet(temporary)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
