"""Benchmark hyperparameter search (trials per minute) and LSTM training (windows per second) on one machine.

    .venv/bin/python benchmarks/bench_search.py [--trials 8] [--repeats 3] [--epochs 3]

Data: the S&P 500 daily bars that ship with ``arch`` (1999-2018), turned into
features by ``build_dataset`` (RSI, ATR, MACD histogram, Bollinger band
position, volume ratio, return lags).

* Search: RANDOM_SEARCH over walk-forward folds for RANDOM_FOREST and XGB,
  with Parallel Jobs 1 and 2, against a bare loop that calls scikit-learn's
  ``cross_val_score`` on the same pipelines and parameter sets.
* LSTM: ``LSTMClassifier.fit`` on the CPU against a plain PyTorch loop that
  trains the same network on the same windows with the same batch size.

Times are medians over ``--repeats`` interleaved rounds, after one untimed
warm-up round.  The script prints Markdown tables
for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from quanttrain.trainer.config import TrainingJobConfig
from quanttrain.trainer.dataset import build_dataset
from quanttrain.trainer.features import make_feature_scaler
from quanttrain.trainer.lstm import LSTMClassifier, LSTMNetwork
from quanttrain.trainer.market_data import arch_bars
from quanttrain.trainer.models import make_estimator
from quanttrain.trainer.search import run_search
from quanttrain.trainer.splits import WalkForwardSplit

INDICATORS = [
    {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "lookbackPeriod": 14, "normalization": "ZSCORE"},
    {"name": "atr", "type": "VOLATILITY", "calculationMethod": "ATR", "lookbackPeriod": 14, "normalization": "ROBUST"},
    {"name": "macd", "type": "TECHNICAL", "calculationMethod": "MACD", "output": "macdhist"},
    {"name": "bb", "type": "VOLATILITY", "calculationMethod": "BB_POSITION", "lookbackPeriod": 20},
    {"name": "volume_ratio", "type": "VOLUME", "calculationMethod": "VOLUME_RATIO", "lookbackPeriod": 20},
]
SEARCH_SPACES = {
    "RANDOM_FOREST": {"n_estimators": [50, 100], "max_depth": {"low": 3, "high": 8}},
    "XGB": {"n_estimators": [100, 200], "max_depth": {"low": 2, "high": 6},
            "learning_rate": {"low": 0.02, "high": 0.2, "log": True}},
}
CV_FOLDS = 5


def job_config(model_type: str, **training) -> TrainingJobConfig:
    return TrainingJobConfig.model_validate({
        "strategy": {
            "name": "bench", "modelType": model_type, "predictionTarget": "PRICE_DIRECTION",
            "trainingDataset": "sp500_daily.csv", "modelPath": "bench", "confidenceThreshold": 0.55,
            "trainingWindowDays": 365, "predictionHorizonMinutes": 1440,
            "featureConfiguration": {"sequenceLength": 20},
        },
        "features": {"targetVariable": "direction", "featureColumns": [item["name"] for item in INDICATORS],
                     "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
        "indicators": INDICATORS,
        "training": {"cvFolds": CV_FOLDS, "randomSeed": 7, **training},
    })


def interleaved_medians(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Return each run's median seconds over ``repeats`` rounds that call every run once, in turn.

    Interleaving spreads the load of other processes on a shared machine
    evenly over the runs.  One untimed round comes first, because the first
    call loads libraries, starts worker processes and warms up caches.
    """
    for run in runs.values():
        run()
    timings: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in timings.items()}


def bench_search(model_type: str, dataset, trials: int, repeats: int) -> list[tuple[str, float]]:
    from sklearn.model_selection import cross_val_score

    cv = WalkForwardSplit(CV_FOLDS, gap=dataset.horizon)
    runs: dict[str, Callable[[], object]] = {}
    for parallel_jobs in (1, 2):
        config = job_config(model_type, hyperparameterOptimization="RANDOM_SEARCH", maxOptimizationIterations=trials,
                            searchSpace=SEARCH_SPACES[model_type], parallelJobs=parallel_jobs)
        factory = functools.partial(make_estimator, config, n_classes=len(dataset.classes),
                                    preprocessor=make_feature_scaler(config, dataset.feature_names))
        runs[f"`run_search`, Parallel Jobs {parallel_jobs}"] = functools.partial(
            run_search, config, dataset.X, dataset.y, cv=cv, estimator_factory=factory)

    candidates = [trial.params for trial in run_search(config, dataset.X, dataset.y, cv=cv,
                                                       estimator_factory=factory).trials]

    def bare_loop():
        for params in candidates:
            cross_val_score(factory(params), dataset.X, dataset.y, cv=cv, scoring="accuracy")

    runs["bare `cross_val_score` loop, one process"] = bare_loop
    medians = interleaved_medians(runs, repeats)
    return [(name, trials / seconds * 60) for name, seconds in medians.items()]


def lstm_windows(dataset, sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.preprocessing import StandardScaler

    X = StandardScaler().fit_transform(dataset.X.to_numpy()).astype(np.float32)
    windows = LSTMClassifier(sequence_length=sequence_length)._build_windows(X, torch.device("cpu"))
    return windows, torch.from_numpy(dataset.y.astype(np.int64))


def plain_torch_loop(windows, targets, n_classes: int, epochs: int, batch_size: int) -> None:
    """Train the same network with the textbook loop: shuffled batches, Adam, cross-entropy."""
    torch.manual_seed(0)
    network = LSTMNetwork(windows.shape[2], n_classes, hidden_size=32, num_layers=1, dropout=0.0)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    loss_function = torch.nn.CrossEntropyLoss()
    network.train()
    for _ in range(epochs):
        order = torch.randperm(len(windows))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss_function(network(windows[batch]), targets[batch]).backward()
            optimizer.step()


def bench_lstm(dataset, epochs: int, repeats: int) -> list[tuple[str, float]]:
    sequence_length, batch_size = 20, 64
    model = LSTMClassifier(hidden_size=32, sequence_length=sequence_length, batch_size=batch_size, max_epochs=epochs,
                           patience=None, validation_fraction=0.1, device="cpu", random_state=0)
    X = dataset.X.to_numpy()
    # The estimator trains on 90 % of the windows and computes the validation loss on the rest each epoch.
    n_train = len(X) - int(len(X) * 0.1)
    windows, targets = lstm_windows(dataset, sequence_length)
    medians = interleaved_medians({
        "`LSTMClassifier.fit` (with validation loss)": lambda: model.fit(X, dataset.y),
        "plain PyTorch loop (training only)": lambda: plain_torch_loop(
            windows[:n_train], targets[:n_train], len(dataset.classes), epochs, batch_size),
    }, repeats)
    return [(name, n_train * epochs / seconds) for name, seconds in medians.items()]


def print_table(title: str, unit: str, rows: list[tuple[str, float]]) -> None:
    print(f"\n{title}\n\n| measurement | {unit} |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value:,.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="trials per search")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement; the median is reported")
    parser.add_argument("--epochs", type=int, default=3, help="LSTM epochs per timed fit")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads for the LSTM measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = build_dataset(arch_bars("sp500"), job_config("RANDOM_FOREST"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"torch {torch.__version__}; data: {len(dataset)} rows x {len(dataset.feature_names)} features")
    for model_type in ("RANDOM_FOREST", "XGB"):
        print_table(f"{model_type} random search, {args.trials} trials x {CV_FOLDS} folds", "trials per minute",
                    bench_search(model_type, dataset, args.trials, args.repeats))
    print_table(f"LSTM on the CPU, {args.threads} thread(s), {args.epochs} epochs", "windows per second",
                bench_lstm(dataset, args.epochs, args.repeats))


if __name__ == "__main__":
    main()
