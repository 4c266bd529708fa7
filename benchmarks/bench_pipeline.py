"""Benchmark: ``quanttrain train`` against a bare script, evaluation of 1M predictions, registry saves.

Three measurements, each the median of several runs:

* ``quanttrain train JOB.yaml`` (XGB, no search) as a subprocess, against a
  bare script in a subprocess that does the same work with the libraries
  called directly.  The bare script reads the CSV, computes the features with
  TA-Lib, labels the bars and splits them chronologically.  It then
  cross-validates on the same walk-forward folds, fits the overfitting-check
  model on the Training Window before the validation rows and scores them,
  fits the final model on the Training Window that ends a horizon before the
  test rows, scores the test rows and saves the booster.  Both pay their imports.  quanttrain also writes the plots, the
  registry metadata, the backtest and the result JSON.  Target: within 1.15x.
* :func:`quanttrain.trainer.evaluation.evaluate` on 1M predictions given as
  probabilities, beside scikit-learn's metric functions.  Target: 0.5 s.
* :meth:`ModelRegistry.save` of the fitted XGB pipeline (booster, skops
  preprocessing, sha256 of every file, metadata), beside a bare
  ``save_model``.  Target: 0.5 s.

    .venv/bin/python benchmarks/bench_pipeline.py [--rows N] [--repeats R]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import yaml

from bench_features import EXAMPLE_CONFIG, synthetic_bars

TARGET_RATIO = 1.15
TARGET_SECONDS = 0.5
# One XGBoost thread in both programs: on a shared machine, idle OpenMP threads
# spin and inflate CPU time unevenly, which would hide the overhead measured here.
MODEL_PARAMETERS = {"n_estimators": 100, "max_depth": 6, "n_jobs": 1}
CV_FOLDS = 3
HORIZON_BARS = 60  # predictionHorizonMinutes 60 on one-minute bars
WINDOW_ROWS = 365 * 1440  # Training Window of 365 days of round-the-clock minute bars

QUANTTRAIN = Path(sys.executable).with_name("quanttrain")


def job_resource(csv_path: Path) -> dict:
    spec = copy.deepcopy(EXAMPLE_CONFIG)
    spec["strategy"]["trainingDataset"] = str(csv_path)
    spec["strategy"]["featureConfiguration"]["barIntervalMinutes"] = 1
    spec["training"] = {
        "hyperparameterOptimization": "NONE", "cvFolds": CV_FOLDS, "modelParameters": MODEL_PARAMETERS,
        "earlyStopping": False, "overfittingDetection": False, "randomSeed": 1,
    }
    spec["portfolio"] = {"name": "benchmark"}
    return {"apiVersion": "quanttrain.io/v1alpha1", "kind": "MLTrainingJob",
            "metadata": {"name": "benchmark"}, "spec": spec}


# -- the bare script -----------------------------------------------------------------------


def bare_training(csv_path: str, output_dir: str) -> None:
    """Do the pipeline's work with pandas, TA-Lib, scikit-learn and XGBoost called directly."""
    import pandas as pd
    from sklearn.metrics import f1_score, roc_auc_score
    from sklearn.model_selection import TimeSeriesSplit
    from xgboost import XGBClassifier

    from bench_features import direct_features

    bars = pd.read_csv(csv_path, engine="pyarrow", parse_dates=["timestamp"])
    ohlcv = ["open", "high", "low", "close", "volume"]
    bars[ohlcv] = bars[ohlcv].astype("float64")
    features = pd.DataFrame(direct_features(bars))
    close = bars["close"].to_numpy()
    future = np.full(close.shape, np.nan)
    future[:-HORIZON_BARS] = close[HORIZON_BARS:]
    complete = features.notna().all(axis=1).to_numpy() & ~np.isnan(future)
    X = features[complete].to_numpy()
    y = (future[complete] > close[complete]).astype(int)

    n_train, n_validation = int(len(y) * 0.7), int(len(y) * 0.15)
    train = slice(0, n_train - HORIZON_BARS)
    test = slice(n_train + n_validation, len(y))
    X_train, y_train = X[train], y[train]
    folds = TimeSeriesSplit(CV_FOLDS, gap=HORIZON_BARS, max_train_size=WINDOW_ROWS,
                            test_size=len(y_train) // (CV_FOLDS + 1))
    for fit_rows, score_rows in folds.split(X_train):
        model = XGBClassifier(tree_method="hist", random_state=1, **MODEL_PARAMETERS)
        model.fit(X_train[fit_rows], y_train[fit_rows])
        (model.predict(X_train[score_rows]) == y_train[score_rows]).mean()

    # The overfitting check: a model on the window before the validation rows, scored on them.
    check = XGBClassifier(tree_method="hist", random_state=1, **MODEL_PARAMETERS)
    check.fit(X_train[-WINDOW_ROWS:], y_train[-WINDOW_ROWS:])
    validation = slice(n_train, n_train + n_validation)
    (check.predict(X[validation]) == y[validation]).mean()

    # The final model: the newest window that ends a horizon before the test rows.
    final_end = n_train + n_validation - HORIZON_BARS - 1
    model = XGBClassifier(tree_method="hist", random_state=1, **MODEL_PARAMETERS)
    model.fit(X[max(0, final_end - WINDOW_ROWS):final_end], y[max(0, final_end - WINDOW_ROWS):final_end])
    probabilities = model.predict_proba(X[test])
    predicted = probabilities.argmax(axis=1)
    (predicted == y[test]).mean(), f1_score(y[test], predicted, average="weighted"), roc_auc_score(y[test], probabilities[:, 1])
    model.save_model(Path(output_dir) / "model.ubj")


# -- measurements ------------------------------------------------------------------------------


def median_seconds(action, repeats: int, clock=time.perf_counter) -> float:
    """Median time of ``action`` on ``clock`` (wall time, or ``time.process_time`` for this process's CPU time)."""
    action()  # warm up: imports and first-call caches are not what is measured
    timings = []
    for _ in range(repeats):
        start = clock()
        action()
        timings.append(clock() - start)
    return statistics.median(timings)


def run_command(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return its wall time and the CPU time (user + system) it used.

    Exit status 3 (the gate failed) still did all the work, so it counts.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode not in (0, 3):
        raise RuntimeError(f"{command[:3]} exited {completed.returncode}:\n{completed.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def bench_pipeline(folder: Path, repeats: int) -> list[tuple[str, float]]:
    """Time both commands in alternation, so that load from other processes hits both alike."""
    csv_path = folder / "bars.csv"
    job = folder / "job.yaml"
    job.write_text(yaml.safe_dump(job_resource(csv_path)))
    quanttrain = [str(QUANTTRAIN), "train", str(job), "--registry", str(folder / "registry"),
                  "--output", str(folder / "result.json")]
    bare = [sys.executable, str(Path(__file__).resolve()), "--bare", str(csv_path), str(folder)]
    bare_runs, pipeline_runs = [], []
    for _ in range(repeats):
        bare_runs.append(run_command(bare))
        pipeline_runs.append(run_command(quanttrain))
        result = json.loads((folder / "result.json").read_text())
        if result["split"]["fitRows"] < 1000:
            raise RuntimeError(f"quanttrain fitted only {result['split']['fitRows']} rows; check the job")

    def median(runs, which: int) -> float:
        return statistics.median(run[which] for run in runs)

    return [
        ("bare script, wall time", median(bare_runs, 0)),
        ("quanttrain train, wall time", median(pipeline_runs, 0)),
        ("bare script, CPU time", median(bare_runs, 1)),
        ("quanttrain train, CPU time", median(pipeline_runs, 1)),
    ]


def bench_evaluation(repeats: int) -> list[tuple[str, float]]:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score
    from sklearn.pipeline import Pipeline
    from xgboost import XGBClassifier

    from quanttrain.trainer.evaluation import evaluate, persistence_labels

    rng = np.random.default_rng(3)
    n = 1_000_000
    y = rng.integers(0, 2, n)
    up = np.clip(0.5 + 0.2 * (y - 0.5) + rng.normal(0, 0.2, n), 0, 1)
    probabilities = np.column_stack([1 - up, up])
    X = rng.normal(size=(n, 3))
    model = Pipeline([("model", XGBClassifier(n_estimators=5, max_depth=2))]).fit(X[:2000], y[:2000])
    known = persistence_labels(y, np.arange(n), HORIZON_BARS)

    def ours():
        evaluate(model, X, y, ["0", "1"], confidence_threshold=0.6, known_labels=known,
                 feature_names=["a", "b", "c"], probabilities=probabilities)

    def scikit_learn():
        predicted = probabilities.argmax(axis=1)
        accuracy_score(y, predicted)
        precision_recall_fscore_support(y, predicted, average="weighted", zero_division=0)
        roc_auc_score(y, probabilities[:, 1])
        confusion_matrix(y, predicted)

    return [("evaluate(), 1M predictions", median_seconds(ours, repeats)),
            ("evaluate(), 1M predictions, CPU time", median_seconds(ours, repeats, time.process_time)),
            ("scikit-learn metric functions, same predictions", median_seconds(scikit_learn, repeats))]


def bench_saving(folder: Path, repeats: int) -> list[tuple[str, float]]:
    import pandas as pd

    from quanttrain.trainer.config import load_job_config
    from quanttrain.trainer.features import make_feature_scaler
    from quanttrain.trainer.models import final_estimator, make_estimator
    from quanttrain.trainer.registry import ModelRegistry

    spec = job_resource(folder / "bars.csv")["spec"]
    config = load_job_config(spec)
    rng = np.random.default_rng(4)
    X = pd.DataFrame(rng.normal(size=(200_000, 8)), columns=[f"f{i}" for i in range(8)])
    y = (X["f0"] + rng.normal(size=len(X)) > 0).astype(int).to_numpy()
    pipeline = make_estimator(config, preprocessor=make_feature_scaler(config, list(X.columns))).fit(X, y)
    registry = ModelRegistry(folder / "save-registry")
    metadata = {"modelType": "XGB", "metrics": {"accuracy": 0.5}, "gate": {"passed": True}}
    booster = final_estimator(pipeline)
    return [
        ("ModelRegistry.save (XGB pipeline)",
         median_seconds(lambda: registry.save("benchmark", pipeline, metadata=metadata), repeats)),
        ("ModelRegistry.save (XGB pipeline), CPU time",
         median_seconds(lambda: registry.save("benchmark", pipeline, metadata=metadata), repeats, time.process_time)),
        ("XGBClassifier.save_model alone", median_seconds(lambda: booster.save_model(folder / "bare.ubj"), repeats)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="bars to generate (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (default 3)")
    parser.add_argument("--bare", nargs=2, metavar=("CSV", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_training(*args.bare)
        return 0

    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        bars = synthetic_bars(args.rows)
        pa_csv.write_csv(pa.Table.from_pandas(bars.reset_index(), preserve_index=False), folder / "bars.csv")
        sections = {
            f"training, {args.rows:,} one-minute bars": bench_pipeline(folder, args.repeats),
            "evaluation": bench_evaluation(args.repeats),
            "saving": bench_saving(folder, args.repeats),
        }

    for title, rows in sections.items():
        print(f"{title} (median of {args.repeats} runs)")
        for label, seconds in rows:
            print(f"  {label:<50} {seconds:8.3f} s")
    training = dict(sections[f"training, {args.rows:,} one-minute bars"])
    for kind in ("wall", "CPU"):
        ratio = training[f"quanttrain train, {kind} time"] / training[f"bare script, {kind} time"]
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        print(f"pipeline / bare script, {kind} time: {ratio:.2f} (target <= {TARGET_RATIO}: {verdict})")
    for title, label in (("evaluation", "evaluate(), 1M predictions"), ("saving", "ModelRegistry.save (XGB pipeline)")):
        seconds = dict(sections[title])[label]
        print(f"{label}: {seconds:.3f} s (target <= {TARGET_SECONDS} s: {'met' if seconds <= TARGET_SECONDS else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
