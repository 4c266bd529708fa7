"""CUDA checks for distributed training: LSTM throughput and XGBoost on the GPU.

    python benchmarks/gpu_check.py [--epochs 5] [--rows 200000]

Run by benchmarks/gpu_check.sh on a machine with a CUDA GPU.  It prints:

1. LSTM training windows per second with :class:`DistributedLSTMClassifier`
   (one process, autocast float16 and GradScaler) against a plain PyTorch
   loop that trains the same network with the same settings on the same
   windows (target: at least 0.95 times the plain loop);
2. XGBoost ``hist`` fit time with ``device="cuda"`` against ``device="cpu"``
   on the same rows, with both models' accuracy on held-out rows.

The rows are seeded random-walk features with a learnable label, so the
check needs no data files.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def _rows(count: int, features: int = 8, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    generator = np.random.default_rng(seed)
    X = np.cumsum(generator.normal(size=(count, features)), axis=0).astype(np.float32)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    signal = X[:, 0] - np.roll(X[:, 1], 3) + 0.5 * generator.normal(size=count)
    return X, (signal > 0).astype(np.int64)


def _plain_loop(model, windows, targets, train_count: int, epochs: int, batch_size: int, lr: float) -> float:
    """Train like a hand-written PyTorch loop with AMP; return seconds."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda")
    loss_function = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(train_count, generator=generator)
        for start in range(0, train_count, batch_size):
            batch = order[start:start + batch_size].to(windows.device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                loss = loss_function(model(windows[batch]), targets[batch])
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def check_lstm(rows: int, epochs: int) -> float:
    import torch

    from quanttrain.trainer import distributed
    from quanttrain.trainer.ddp_lstm import DistributedLSTMClassifier
    from quanttrain.trainer.lstm import LSTMNetwork

    distributed.init_distributed(gpu=True)
    X, y = _rows(rows)
    params = dict(hidden_size=64, num_layers=2, sequence_length=30, batch_size=256, max_epochs=epochs,
                  patience=None, validation_fraction=0.1, random_state=7, device="cuda")
    estimator = DistributedLSTMClassifier(**params)
    estimator.fit(X[:2000], y[:2000])  # warm-up: CUDA context, cuDNN plans
    torch.cuda.synchronize()
    started = time.perf_counter()
    estimator.fit(X, y)
    torch.cuda.synchronize()
    ours = time.perf_counter() - started

    train_count = rows - int(rows * params["validation_fraction"])
    windows = estimator._build_windows(X, torch.device("cuda"))
    targets = torch.from_numpy(y).cuda()
    torch.manual_seed(7)
    network = LSTMNetwork(X.shape[1], 2, 64, 2, 0.0).cuda()
    plain = _plain_loop(network, windows, targets, train_count, epochs, 256, 1e-3)

    # Our fit also computes the validation loss each epoch; the plain loop does not.
    ours_rate = train_count * epochs / ours
    plain_rate = train_count * epochs / plain
    print(f"LSTM windows/s: quanttrain {ours_rate:,.0f}, plain PyTorch loop {plain_rate:,.0f}, "
          f"ratio {ours_rate / plain_rate:.3f} (target >= 0.95)")
    return ours_rate / plain_rate


def check_xgboost(rows: int) -> None:
    from sklearn.metrics import accuracy_score
    from xgboost import XGBClassifier

    X, y = _rows(rows)
    split = int(rows * 0.8)
    results = {}
    for device in ("cpu", "cuda"):
        model = XGBClassifier(n_estimators=300, max_depth=6, tree_method="hist", device=device, random_state=7)
        model.fit(X[:1000], y[:1000])  # warm-up
        started = time.perf_counter()
        model.fit(X[:split], y[:split])
        seconds = time.perf_counter() - started
        accuracy = accuracy_score(y[split:], model.predict(X[split:]))
        results[device] = seconds
        print(f"XGBoost device={device}: fit {seconds:.2f} s on {split:,} rows, held-out accuracy {accuracy:.4f}")
    print(f"XGBoost speed-up cuda over cpu: {results['cpu'] / results['cuda']:.1f}x")


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="LSTM epochs (default 5)")
    parser.add_argument("--rows", type=int, default=200_000, help="rows of features (default 200000)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: run this on a machine with a GPU", file=sys.stderr)
        return 1
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    check_lstm(args.rows, args.epochs)
    check_xgboost(args.rows * 5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
