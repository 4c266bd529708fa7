"""The training subcommands: ``train`` on this machine and ``models list|show|promote``.

``train`` runs the same :func:`quanttrain.trainer.pipeline.train_job` that the
pods run.  The trainer is imported inside the command functions, so that the
operator's commands never load the training libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from quanttrain.operator.api import kubernetes_name
from quanttrain.trainer.summary import EXIT_CONFIG_ERROR, EXIT_OK, EXIT_RETRYABLE

REGISTRY_ENV = "QUANTTRAIN_REGISTRY"
DEFAULT_REGISTRY = "registry"


def _default_registry() -> str:
    return os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY


def register(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="train strategies on this machine",
        description="Train each strategy of the workbooks or MLTrainingJob files with the code the pods run, "
                    "print its evaluation and register the model. Exit status: 0 passed the gate, 2 invalid "
                    "input, 3 gate failed, 1 unexpected error (the first failed strategy's status).")
    train.add_argument("inputs", nargs="+", metavar="WORKBOOK|JOB.yaml",
                       help="workbooks (.xlsx) or MLTrainingJob files (.yaml, .yml, .json)")
    train.add_argument("--strategy", action="append", metavar="NAME",
                       help="train only this strategy (its name or job name); repeat for several")
    train.add_argument("--registry", default=None, metavar="DIR",
                       help=f"model registry folder (default: ${REGISTRY_ENV}, else ./{DEFAULT_REGISTRY})")
    train.add_argument("--output", type=Path, default=None, metavar="FILE",
                       help="write the full result JSON here; with several strategies each gets FILE's name "
                            "plus -<job name>")
    train.set_defaults(func=run_train)

    models = subparsers.add_parser("models", help="list, show and promote registered models",
                                   description="Inspect the model registry and move aliases such as production. "
                                               "Exit status: 0 done, 2 invalid input (unknown registry folder, "
                                               "strategy, version or alias, or a version that failed the gate).")
    registry_help = f"model registry folder (default: ${REGISTRY_ENV}, else ./{DEFAULT_REGISTRY})"
    models.add_argument("--registry", default=None, metavar="DIR", help=registry_help)
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="one line per registered version")
    listing.set_defaults(func=run_models_list)

    show = actions.add_parser("show", help="print one version's metadata as JSON")
    show.add_argument("strategy", help="strategy name or job name")
    chosen = show.add_mutually_exclusive_group()
    chosen.add_argument("--version", help="version number (default: the latest)")
    chosen.add_argument("--alias", help="alias, for example production")
    show.set_defaults(func=run_models_show)

    promote = actions.add_parser("promote", help="point an alias at a version")
    promote.add_argument("strategy", help="strategy name or job name")
    promote.add_argument("version", help="version number to promote")
    promote.add_argument("--alias", required=True, help="alias to set, for example production or staging")
    promote.add_argument("--force", action="store_true",
                         help="promote the version even though it failed the performance gate")
    promote.set_defaults(func=run_models_promote)

    # --registry is accepted after the action too.  SUPPRESS leaves the value given before the
    # action in place when it is not repeated, instead of resetting it to a default.
    for action in (listing, show, promote):
        action.add_argument("--registry", default=argparse.SUPPRESS, metavar="DIR", help=registry_help)


# -- train ---------------------------------------------------------------------------


def _select(jobs: list[tuple[str, Any]], requested: list[str] | None) -> tuple[list[tuple[str, Any]], list[str]]:
    """Return the jobs named by ``requested`` (all without it) and the names that matched none."""
    if not requested:
        return jobs, []
    keys = {name.casefold() for name in requested} | {kubernetes_name(name) for name in requested}
    selected = [(name, spec) for name, spec in jobs if name in keys or spec.strategy.name.casefold() in keys]
    matched = {name for name, _ in selected} | {spec.strategy.name.casefold() for _, spec in selected}
    missing = [name for name in requested if name.casefold() not in matched and kubernetes_name(name) not in matched]
    return selected, missing


def _output_for(output: Path | None, name: str, several: bool) -> Path | None:
    if output is None or not several:
        return output
    return output.with_name(f"{output.stem}-{name}{output.suffix}")


def run_train(args: argparse.Namespace) -> int:
    from quanttrain.operator.job_inputs import InputError, load_job_specs

    try:
        jobs = load_job_specs(list(args.inputs))
    except InputError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        print(f"{len(error.problems)} problem(s) found; nothing was trained", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    selected, missing = _select(jobs, args.strategy)
    if missing:
        known = ", ".join(f"{spec.strategy.name} ({name})" for name, spec in jobs)
        print(f"quanttrain train: no strategy named {', '.join(map(repr, missing))}; the inputs hold: {known}",
              file=sys.stderr)
        return EXIT_CONFIG_ERROR

    registry = args.registry or _default_registry()
    statuses = [_train_one(name, spec, registry, _output_for(args.output, name, len(selected) > 1))
                for name, spec in selected]
    return next((status for status in statuses if status != EXIT_OK), EXIT_OK)


def _train_one(name: str, spec, registry: str, output: Path | None) -> int:
    import logging

    from quanttrain.trainer.pipeline import JobInputError, train_job

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        outcome = train_job(spec, registry_dir=registry, output_path=output, strategy_key=name)
    except JobInputError as error:
        print(f"quanttrain train: {spec.strategy.name}: invalid input: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except Exception as error:  # noqa: BLE001 - report and go on with the next strategy
        logging.getLogger("quanttrain.train").exception("training %s failed", spec.strategy.name)
        print(f"quanttrain train: {spec.strategy.name}: training failed: {type(error).__name__}: {error}",
              file=sys.stderr)
        return EXIT_RETRYABLE
    print(format_outcome(outcome, spec))
    if outcome.result_path is not None:
        print(f"result: {outcome.result_path}")
    return outcome.exit_code


def _number(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.2f} %" if percent else f"{value:.4f}"


def format_outcome(outcome, spec) -> str:
    """Render a training outcome as the readable report that ``quanttrain train`` prints."""
    summary = outcome.summary
    evaluation = summary.evaluation
    split = outcome.result.get("split", {})
    period = split.get("testPeriod") or ["?", "?"]
    fit_period = split.get("fitPeriod") or ["?", "?"]

    lines = [
        "",
        f"{summary.strategy} ({summary.model_type}, {spec.strategy.prediction_target.value}): "
        f"{evaluation.test_rows} test rows from {period[0][:10]} to {period[-1][:10]}",
        f"final model fitted on {split.get('fitRows', '?')} rows from {fit_period[0][:10]} to {fit_period[-1][:10]}",
        "",
        *_metric_table(evaluation, outcome.baselines, spec.strategy.confidence_threshold),
        "",
        "confusion matrix (rows true, columns predicted): " + ", ".join(evaluation.classes),
        *(f"  {label:>8} {' '.join(f'{count:6d}' for count in row)}"
          for label, row in zip(evaluation.classes, evaluation.confusion_matrix)),
    ]

    if evaluation.top_features:
        top = ", ".join(f"{item.name} {item.importance:.3f}" for item in evaluation.top_features[:5])
        lines += ["", f"top features: {top}"]
    if evaluation.strategy_metrics is not None:
        metrics = evaluation.strategy_metrics
        lines += ["", f"strategy on the test period: total return {_number(metrics.total_return, True)}, "
                      f"Sharpe {metrics.sharpe_ratio:.2f}, max drawdown {_number(metrics.max_drawdown, True)}, "
                      f"hit rate {_number(metrics.hit_rate, True)}, {metrics.trades} trades"]

    parameters = ", ".join(f"{key}={value}" for key, value in sorted(summary.best_hyperparameters.items()))
    lines += ["", f"best parameters: {parameters or 'model defaults'}"]
    gate = summary.gate
    lines.append("gate: passed" if gate.passed else "gate: FAILED: " + "; ".join(gate.reasons))
    if summary.model is not None:
        lines.append(f"model: {summary.model.uri} (version {summary.model.version}, "
                     f"sha256 {summary.model.sha256[:16]}...)")
    lines.append(f"duration: {summary.duration_seconds:.1f} s")
    return "\n".join(lines)


def _metric_table(evaluation, baselines: dict[str, dict[str, float]], threshold: float) -> list[str]:
    majority = baselines.get("majority", {})
    persistence = baselines.get("persistence", {})
    rows = [
        ("accuracy", evaluation.accuracy, "accuracy"),
        ("precision (weighted)", evaluation.precision, "precision"),
        ("recall (weighted)", evaluation.recall, "recall"),
        ("F1 (weighted)", evaluation.f1_score, "f1Score"),
        ("ROC AUC", evaluation.roc_auc, None),
        (f"coverage at {threshold:.2f}", evaluation.coverage_at_threshold, None),
        (f"precision at {threshold:.2f}", evaluation.precision_at_threshold, None),
        ("train accuracy", evaluation.train_accuracy, None),
        ("validation accuracy", evaluation.validation_accuracy, None),
    ]
    lines = [f"{'metric':<22} {'model':>8} {'majority':>9} {'persistence':>12}"]
    for label, value, key in rows:
        lines.append(f"{label:<22} {_number(value):>8} {_baseline(majority, key):>9} {_baseline(persistence, key):>12}")
    cross_validation = evaluation.cross_validation
    if cross_validation is not None:
        label = f"CV {cross_validation.metric.lower()} ({len(cross_validation.scores)} folds)"
        lines.append(f"{label:<22} {_number(cross_validation.mean):>8}   std {cross_validation.std:.4f}")
    return lines


def _baseline(scores: dict[str, float], key: str | None) -> str:
    if key is None:
        return ""
    return _number(scores.get(key))


# -- models ---------------------------------------------------------------------------


def _registry(args: argparse.Namespace):
    """Return the registry that ``--registry`` names, or None after reporting that its folder is missing."""
    from quanttrain.trainer.registry import ModelRegistry

    registry = ModelRegistry(args.registry or _default_registry())
    if not registry.root.is_dir():
        print(f"quanttrain models {args.action}: registry folder not found: {registry.root} "
              f"(pass --registry DIR or set ${REGISTRY_ENV})", file=sys.stderr)
        return None
    return registry


def _strategy_key(text: str) -> str:
    return kubernetes_name(text)


def run_models_list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    if registry is None:
        return EXIT_CONFIG_ERROR
    rows = registry.list()
    if not rows:
        print(f"no models registered in {registry.root}")
        return EXIT_OK
    header = f"{'STRATEGY':<32} {'VERSION':>7}  {'CREATED':<25} {'MODEL':<13} {'ACCURACY':>8}  {'GATE':<6} ALIASES"
    print(header)
    for row in rows:
        gate = {True: "passed", False: "failed"}.get(row["gatePassed"], "?")
        print(f"{row['strategy']:<32} {row['version']:>7}  {row['createdAt'] or '?':<25} "
              f"{row['modelType'] or '?':<13} {_number(row['accuracy']):>8}  {gate:<6} {', '.join(row['aliases'])}")
    return EXIT_OK


def run_models_show(args: argparse.Namespace) -> int:
    from quanttrain.trainer.registry import RegistryError

    registry = _registry(args)
    if registry is None:
        return EXIT_CONFIG_ERROR
    try:
        metadata = registry.show(_strategy_key(args.strategy), args.version, args.alias)
    except RegistryError as error:
        print(f"quanttrain models show: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(json.dumps(metadata, indent=2, sort_keys=True))
    return EXIT_OK


def run_models_promote(args: argparse.Namespace) -> int:
    from quanttrain.trainer.registry import RegistryError

    registry = _registry(args)
    if registry is None:
        return EXIT_CONFIG_ERROR
    strategy = _strategy_key(args.strategy)
    try:
        registry.promote(strategy, args.version, args.alias, force=args.force)
    except RegistryError as error:
        print(f"quanttrain models promote: {error}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    print(f"{strategy}: alias {args.alias} now points at version {args.version}")
    return EXIT_OK
