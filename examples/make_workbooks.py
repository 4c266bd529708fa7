"""Write the example workbooks: four strategies on the S&P 500 daily bars.

Run from the project root: ``python examples/make_workbooks.py [DIR]`` (DIR
defaults to this folder).  The rows start from the blank templates, so the
examples carry the same dropdowns and header comments, and unchanged rows
give byte-identical files.  The bar data itself
is exported at run time by ``python -m quanttrain.trainer.market_data
examples/data`` and never committed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from quanttrain.operator.template import build_workbook, save_workbook, template_paths
from quanttrain.operator.workbook import WORKBOOKS

DATASET = "examples/data/sp500_daily.csv"
FEATURES = "rsi, macd, bb_position, volume_ratio, atr"

ROWS: dict[str, list[dict[str, Any]]] = {
    "Strategy": [
        {"Strategy Name": "SP500 Momentum RF", "Model Type": "RANDOM_FOREST", "Prediction Target": "PRICE_DIRECTION",
         "Training Dataset": DATASET, "Model Path": "sp500-momentum-rf",
         "Feature Configuration": '{"returnLags": [1, 5, 10]}', "Confidence Threshold": 0.55,
         "Training Window": 365, "Prediction Horizon": 1440, "Real-time Mode": False},
        {"Strategy Name": "SP500 Trend XGB", "Model Type": "XGB", "Prediction Target": "PRICE_DIRECTION",
         "Training Dataset": DATASET, "Model Path": "sp500-trend-xgb",
         "Feature Configuration": '{"returnLags": [1, 2, 5]}', "Confidence Threshold": 0.6,
         "Training Window": 365, "Prediction Horizon": 1440, "Real-time Mode": False},
        {"Strategy Name": "SP500 Volatility SVM", "Model Type": "SVM", "Prediction Target": "VOLATILITY",
         "Training Dataset": DATASET, "Model Path": "sp500-volatility-svm",
         "Feature Configuration": '{"volatilityWindow": 20}', "Confidence Threshold": 0.55,
         "Training Window": 180, "Prediction Horizon": 1440, "Real-time Mode": False},
        {"Strategy Name": "SP500 Signal LSTM", "Model Type": "LSTM", "Prediction Target": "SIGNAL",
         "Training Dataset": DATASET, "Model Path": "sp500-signal-lstm",
         "Feature Configuration": '{"sequenceLength": 20, "signalThreshold": 0.004}',
         "Confidence Threshold": 0.5, "Training Window": 365, "Prediction Horizon": 1440,
         "Real-time Mode": True},
    ],
    "Models": [
        {"Strategy Name": "SP500 Momentum RF", "Hyperparameter Optimization": "NONE", "CV Folds": 3,
         "Scoring Metric": "ACCURACY", "Parallel Jobs": 1, "Random Seed": 42,
         "Model Parameters": '{"n_estimators": 200, "max_depth": 5}', "Early Stopping": False,
         "Checkpoint": False, "Max Training Time": 10, "Min Accuracy Threshold": 0.0,
         "Overfitting Detection": False, "GPU Enabled": False, "GPUs Per Node": 0,
         "Distributed Training": False, "Nodes": 1, "Processes Per Node": 1},
        {"Strategy Name": "SP500 Trend XGB", "Hyperparameter Optimization": "RANDOM_SEARCH",
         "Max Optimization Iterations": 8, "CV Folds": 3, "Scoring Metric": "F1", "Parallel Jobs": 1,
         "Random Seed": 7,
         # Shallow trees, few rounds, small steps and subsampling: deeper trees fit the noise of daily
         # bars and fail the overfitting check (train accuracy 0.74 against 0.50 on validation).
         "Search Space": '{"n_estimators": [50, 100], "max_depth": {"low": 1, "high": 3}, '
                         '"learning_rate": {"low": 0.01, "high": 0.1, "log": true}}',
         "Model Parameters": '{"subsample": 0.7, "colsample_bytree": 0.7, "min_child_weight": 5, '
                             '"reg_lambda": 5.0}',
         "Early Stopping": True, "Early Stopping Patience": 10,
         "Checkpoint": False, "Max Training Time": 20, "Min Accuracy Threshold": 0.0,
         "Overfitting Detection": True, "GPU Enabled": False, "GPUs Per Node": 0,
         "Distributed Training": False, "Nodes": 1, "Processes Per Node": 1},
        {"Strategy Name": "SP500 Volatility SVM", "Hyperparameter Optimization": "GRID_SEARCH",
         "Max Optimization Iterations": 6, "CV Folds": 3, "Scoring Metric": "ACCURACY",
         "Search Space": '{"C": [0.5, 1.0, 2.0], "kernel": ["rbf", "linear"]}',
         "Early Stopping": False, "Max Training Time": 20, "Min Accuracy Threshold": 0.0},
        {"Strategy Name": "SP500 Signal LSTM", "Hyperparameter Optimization": "NONE", "CV Folds": 2,
         "Scoring Metric": "ACCURACY", "Random Seed": 11,
         "Model Parameters": '{"hidden_size": 32, "num_layers": 1, "max_epochs": 20, "batch_size": 64}',
         "Early Stopping": True, "Early Stopping Patience": 5, "Checkpoint": True, "Max Training Time": 30,
         "Min Accuracy Threshold": 0.0, "GPU Enabled": False, "GPUs Per Node": 0,
         "Distributed Training": True, "Nodes": 2, "Processes Per Node": 1},
    ],
    "Features": [
        # A blank Strategy Name applies this row to every strategy without a row of its own.
        {"Target Variable": "direction", "Feature Columns": FEATURES,
         "Train Split Ratio": 0.7, "Validation Split Ratio": 0.15},
        {"Strategy Name": "SP500 Volatility SVM", "Target Variable": "volatility_regime",
         "Feature Columns": "atr, bb_position, rsi, volume_ratio",
         "Train Split Ratio": 0.7, "Validation Split Ratio": 0.15},
        {"Strategy Name": "SP500 Signal LSTM", "Target Variable": "signal", "Feature Columns": FEATURES,
         "Train Split Ratio": 0.7, "Validation Split Ratio": 0.15},
    ],
    "Portfolio": [
        {"Portfolio Name": "sp500-core", "Position Sizing Method": "FIXED", "Risk Management": True,
         "Max Position Size": 1.0, "Stop Loss Type": "FIXED", "Stop Loss %": 0.02,
         "Take Profit Type": "FIXED", "Take Profit %": 0.04, "Rebalance Frequency": 24,
         "ML Signal Weight": 1.0},
    ],
    "Risk": [
        {"Max Drawdown": 0.2, "Max Daily Loss": 0.05, "Max Leverage": 1.0, "Transaction Cost (bps)": 1.0},
    ],
    "Allocation": [
        {"Symbol": "SPY", "Weight": 1.0},
    ],
    "Indicators": [
        {"Indicator Name": "rsi", "Indicator Type": "TECHNICAL", "Calculation Method": "RSI",
         "Lookback Period": 14, "Smoothing": False, "Normalization": "NONE", "Feature Weight": 1.0,
         "Update Frequency": 1440},
        {"Indicator Name": "macd", "Indicator Type": "TECHNICAL", "Calculation Method": "MACD",
         "Parameters": '{"fastperiod": 12, "slowperiod": 26}', "Lookback Period": 26, "Smoothing": False,
         "Normalization": "ZSCORE", "Feature Weight": 1.0, "Update Frequency": 1440, "Output": "macdhist"},
        {"Indicator Name": "bb_position", "Indicator Type": "VOLATILITY", "Calculation Method": "BB_POSITION",
         "Lookback Period": 20, "Smoothing": False, "Normalization": "NONE", "Feature Weight": 1.0,
         "Update Frequency": 1440},
        {"Indicator Name": "volume_ratio", "Indicator Type": "VOLUME", "Calculation Method": "VOLUME_RATIO",
         "Lookback Period": 20, "Smoothing": True, "Smoothing Factor": 0.3, "Normalization": "ROBUST",
         "Feature Weight": 1.0, "Update Frequency": 1440},
        {"Indicator Name": "atr", "Indicator Type": "VOLATILITY", "Calculation Method": "ATR",
         "Lookback Period": 14, "Smoothing": False, "Normalization": "ZSCORE", "Feature Weight": 1.0,
         "Update Frequency": 1440},
    ],
    "Parameters": [
        {"Indicator Name": "rsi", "Parameter": "timeperiod", "Value": 14},
        {"Indicator Name": "macd", "Parameter": "signalperiod", "Value": 9},
        {"Indicator Name": "bb_position", "Parameter": "nbdev", "Value": 2.0},
    ],
    "Thresholds": [
        {"Indicator Name": "rsi", "Lower": 30, "Upper": 70},
    ],
}


def fill(workbook: Any, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Write rows under the template's headers, matching each key to its header."""
    for worksheet in workbook.worksheets:
        if worksheet.title not in rows:
            continue
        headers = {cell.value: cell.column for cell in worksheet[1]}
        for offset, values in enumerate(rows[worksheet.title], start=2):
            for header, value in values.items():
                worksheet.cell(row=offset, column=headers[header], value=value)


def main(directory: Path) -> None:
    for kind, path in template_paths(directory).items():
        workbook = build_workbook(kind)
        fill(workbook, {sheet.name: ROWS.get(sheet.name, []) for sheet in WORKBOOKS[kind]})
        save_workbook(workbook, path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
