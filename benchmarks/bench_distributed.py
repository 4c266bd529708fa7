"""Benchmark distributed training: search trials per minute and LSTM windows per second, 1 vs 2 ranks.

    .venv/bin/python benchmarks/bench_distributed.py [--trials 8] [--epochs 4]

Each measurement starts real torchrun workers on 127.0.0.1 (gloo backend,
``OMP_NUM_THREADS=1`` per worker, so one rank uses one core) on the S&P 500
daily bars that ship with ``arch``.  Times cover the search or the training
loop only, not process start-up, data loading or features.  The script
prints a Markdown table for docs/benchmarks.md.

Run with ``--worker`` it is the torchrun worker itself.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

_SPEC = {
    "strategy": {
        "name": "bench", "modelType": "RANDOM_FOREST", "predictionTarget": "PRICE_DIRECTION",
        "trainingDataset": "sp500_daily.csv", "modelPath": "bench", "confidenceThreshold": 0.55,
        "trainingWindowDays": 365, "predictionHorizonMinutes": 1440,
        "featureConfiguration": {"sequenceLength": 20},
    },
    "training": {"cvFolds": 3, "randomSeed": 7},
    "features": {"targetVariable": "direction", "featureColumns": ["rsi", "atr", "close", "volume"],
                 "trainSplitRatio": 0.7, "validationSplitRatio": 0.15},
    "indicators": [
        {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "lookbackPeriod": 14},
        {"name": "atr", "type": "VOLATILITY", "calculationMethod": "ATR", "lookbackPeriod": 14},
    ],
}

# Search spaces whose trials take about a second each on one core, so that
# process coordination is a small share of a trial.
_SEARCH_SPACES = {
    "RANDOM_FOREST": {"n_estimators": [150, 200], "max_depth": {"low": 4, "high": 10}},
    "XGB": {"n_estimators": [150, 200], "max_depth": {"low": 3, "high": 6}},
}


def _worker(task: dict) -> None:
    from quanttrain.trainer import distributed
    from quanttrain.trainer.config import load_job_config
    from quanttrain.trainer.dataset import build_dataset
    from quanttrain.trainer.market_data import arch_bars

    spec = json.loads(json.dumps(_SPEC))
    spec["strategy"]["modelType"] = task["model"]
    if task["kind"] == "search":
        spec["training"].update({
            "hyperparameterOptimization": "RANDOM_SEARCH", "maxOptimizationIterations": task["trials"],
            "searchSpace": _SEARCH_SPACES[task["model"]], "earlyStopping": False,
        })
    config = load_job_config(spec)
    context = distributed.init_distributed(gpu=task.get("gpu", False), timeout_seconds=600)
    dataset = build_dataset(arch_bars("sp500"), config)
    X, y = dataset.X.to_numpy(dtype="float64"), dataset.y
    measured = _search(config, X, y, dataset.horizon, task) if task["kind"] == "search" else _lstm(X, y, task)
    if context.is_primary:
        print("BENCH " + json.dumps(measured), flush=True)
    distributed.shutdown()


def _search(config, X, y, horizon: int, task: dict) -> dict:
    from quanttrain.trainer import distributed
    from quanttrain.trainer.distributed_search import run_distributed_search
    from quanttrain.trainer.models import make_estimator
    from quanttrain.trainer.splits import WalkForwardSplit

    distributed.barrier()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_distributed_search(config, X, y, cv=WalkForwardSplit(3, gap=horizon),
                                    estimator_factory=functools.partial(make_estimator, config))
    seconds = time.perf_counter() - started
    cpu_seconds = distributed.all_reduce_sum([time.process_time() - cpu_started])[0]
    trials = len(result.trials)
    return {
        "trials": trials, "seconds": seconds, "trials_per_minute": 60 * trials / seconds,
        "cpu_seconds_per_trial": cpu_seconds / trials,
    }


def _lstm(X, y, task: dict) -> dict:
    from quanttrain.trainer import distributed
    from quanttrain.trainer.ddp_lstm import DistributedLSTMClassifier

    model = DistributedLSTMClassifier(hidden_size=task["hidden_size"], sequence_length=20, batch_size=task["batch_size"],
                                      max_epochs=task["epochs"], patience=None, random_state=7,
                                      device="cuda" if task.get("gpu") else "cpu")
    # One-time costs (the first DistributedDataParallel construction took about 3 s here, and
    # first calls set up kernels) stay out of the timing: a short fit runs first.
    model.set_params(max_epochs=1).fit(X[:500], y[:500])
    model.set_params(max_epochs=task["epochs"])
    distributed.barrier()
    started = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - started
    n_train = len(X) - int(len(X) * model.validation_fraction)
    windows = n_train * task["epochs"]
    return {"windows": windows, "seconds": seconds, "windows_per_second": windows / seconds}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(task: dict, ranks: int) -> dict:
    """Run one measurement under torchrun with ``ranks`` workers on this machine."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={ranks}",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}", f"--rdzv-id={uuid.uuid4()}",
        __file__, "--worker", json.dumps(task),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=1800, check=False)
        log.seek(0)
        output = log.read()
    lines = [line for line in output.splitlines() if line.startswith("BENCH ")]
    if finished.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark worker failed with exit code {finished.returncode}:\n{output[-4000:]}")
    return json.loads(lines[-1][len("BENCH "):])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="search trials per model (default 8)")
    parser.add_argument("--epochs", type=int, default=4, help="LSTM epochs (default 4)")
    parser.add_argument("--lstm-batch", type=int, default=64, help="LSTM windows per step and rank (default 64)")
    parser.add_argument("--lstm-hidden", type=int, default=32, help="LSTM hidden units (default 32)")
    parser.add_argument("--skip-search", action="store_true", help="measure the LSTM only")
    parser.add_argument("--gpu", action="store_true", help="train the LSTM on CUDA (one GPU per rank)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(json.loads(args.worker))
        return 0

    rows, notes = [], []
    for model in () if args.skip_search else ("RANDOM_FOREST", "XGB"):
        task = {"kind": "search", "model": model, "trials": args.trials}
        single_rank, two_ranks = _launch(task, 1), _launch(task, 2)
        rows.append((f"{model} random search, {args.trials} trials, trials/min",
                     single_rank["trials_per_minute"], two_ranks["trials_per_minute"]))
        notes.append(
            f"{model}: CPU s per trial {single_rank['cpu_seconds_per_trial']:.2f} (1 rank) and "
            f"{two_ranks['cpu_seconds_per_trial']:.2f} (2 ranks, both ranks' CPU time)"
        )
    task = {"kind": "lstm", "model": "LSTM", "epochs": args.epochs, "gpu": args.gpu,
            "batch_size": args.lstm_batch, "hidden_size": args.lstm_hidden}
    single_rank, two_ranks = _launch(task, 1), _launch(task, 2)
    rows.append((f"LSTM DDP training, hidden {args.lstm_hidden}, batch {args.lstm_batch} per rank, "
                 f"{args.epochs} epochs, windows/s", single_rank["windows_per_second"],
                 two_ranks["windows_per_second"]))

    print(f"machine: {os.cpu_count()} CPU cores, Python {sys.version.split()[0]}")
    print("| measurement | 1 rank | 2 ranks | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    for name, single, double in rows:
        print(f"| {name} | {single:.1f} | {double:.1f} | {double / single:.2f}x |")
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
