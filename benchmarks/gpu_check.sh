#!/usr/bin/env bash
# CUDA checks of distributed training, for a machine with an NVIDIA GPU.
#
#   benchmarks/gpu_check.sh
#
# Needs a Python environment with the project and CUDA builds of torch and
# xgboost installed (PYTHON, default .venv/bin/python).  Prints the GPU, the
# LSTM windows per second against a plain PyTorch loop (target >= 0.95x) and
# XGBoost's fit time with device="cuda" against the CPU.  Record the output
# in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c 'import torch, xgboost; assert torch.cuda.is_available(), "torch has no CUDA device"; print("torch", torch.__version__, "xgboost", xgboost.__version__)'
PYTHONUNBUFFERED=1 "$PYTHON" benchmarks/gpu_check.py "$@"
