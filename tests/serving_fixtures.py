"""A tiny registered model and bar payloads for the serving tests."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd

from quanttrain.trainer.config import load_job_config
from quanttrain.trainer.pipeline import train_job

STRATEGY_KEY = "serving-test"

# Recursive indicators (RSI, MACD, ATR, smoothing) are the hard case for a rolling buffer.
JOB = {
    "strategy": {
        "name": "Serving Test", "modelType": "RANDOM_FOREST", "predictionTarget": "PRICE_DIRECTION",
        "trainingDataset": "sp500_daily.csv", "modelPath": "serving-test", "confidenceThreshold": 0.52,
        "trainingWindowDays": 365, "predictionHorizonMinutes": 1440, "realtimeMode": True,
    },
    "training": {
        "hyperparameterOptimization": "NONE", "cvFolds": 2, "randomSeed": 3,
        "modelParameters": {"n_estimators": 8, "max_depth": 3}, "overfittingDetection": False,
    },
    "features": {
        "targetVariable": "direction", "featureColumns": ["rsi", "macd", "bb_position", "atr", "volume_ratio"],
        "trainSplitRatio": 0.7, "validationSplitRatio": 0.15,
    },
    "indicators": [
        {"name": "rsi", "type": "TECHNICAL", "calculationMethod": "RSI", "lookbackPeriod": 14,
         "thresholds": {"lower": 30, "upper": 70}},
        {"name": "macd", "type": "TECHNICAL", "calculationMethod": "MACD", "output": "macdhist",
         "normalization": "ZSCORE"},
        {"name": "bb_position", "type": "VOLATILITY", "calculationMethod": "BB_POSITION"},
        {"name": "atr", "type": "VOLATILITY", "calculationMethod": "ATR", "normalization": "ROBUST"},
        {"name": "volume_ratio", "type": "VOLUME", "calculationMethod": "VOLUME_RATIO", "smoothing": True,
         "smoothingFactor": 0.3},
    ],
}


def bar_payloads(bars: pd.DataFrame) -> list[dict]:
    """Return bars as the JSON objects a client sends, with dates as timestamps."""
    return [{"timestamp": stamp.strftime("%Y-%m-%d"), **{name: float(row[name]) for name in
             ("open", "high", "low", "close", "volume")}} for stamp, row in bars.iterrows()]


def train_tiny_model(data_dir: Path, registry: Path) -> Path:
    """Train and register the JOB model on the S&P 500 bars in ``data_dir``; return the registry."""
    config = load_job_config(copy.deepcopy(JOB))
    train_job(config, registry_dir=registry, base_dir=data_dir, progress=False, strategy_key=STRATEGY_KEY)
    return registry
