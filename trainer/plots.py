"""PNG plots saved next to a registered model: confusion matrix, ROC curve and equity curve.

Figures are built with matplotlib's object API and rendered by its Agg
canvas, so plotting needs no display, works in a container and leaves no
global pyplot state (importing pyplot alone would cost almost half a second).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CONFUSION_MATRIX_FILE = "confusion_matrix.png"
ROC_CURVE_FILE = "roc_curve.png"
EQUITY_CURVE_FILE = "equity_curve.png"
DPI = 100


def import_matplotlib():
    """Import the parts of matplotlib that the plots use; return the figure and canvas classes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return Figure, FigureCanvasAgg


def _figure(size: tuple[float, float]):
    Figure, FigureCanvasAgg = import_matplotlib()  # noqa: N806 (class names)
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def plot_confusion_matrix(matrix: list[list[int]] | np.ndarray, classes: list[str], path: Path) -> Path:
    """Draw the confusion matrix with counts in each cell; rows are true classes."""
    matrix = np.asarray(matrix)
    figure = _figure((4 + 0.4 * len(classes), 3.5 + 0.4 * len(classes)))
    axes = figure.subplots()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    axes.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
             xlabel="Predicted class", ylabel="True class", title="Confusion matrix (test rows)")
    colors = count_colors(matrix)
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(count), ha="center", va="center", color=colors[row][column])
    return _save(figure, path)


def count_colors(matrix: list[list[int]] | np.ndarray) -> list[list[str]]:
    """Return the text colour of each cell's count: white on the darker half of the colour scale.

    imshow maps the smallest count to the lightest colour and the largest to
    the darkest, so the switch sits at the middle of that range, not at half
    the largest count.
    """
    matrix = np.asarray(matrix)
    middle = (matrix.min() + matrix.max()) / 2 if matrix.size else 0
    return [["white" if count > middle else "black" for count in row] for row in matrix]


def plot_roc_curve(y_true: np.ndarray, positive_scores: np.ndarray, roc_auc: float | None, path: Path) -> Path:
    """Draw the binary ROC curve of the positive class (code 1)."""
    from sklearn.metrics import roc_curve

    false_positive_rate, true_positive_rate, _ = roc_curve(y_true, positive_scores, pos_label=1)
    figure = _figure((4.5, 4.5))
    axes = figure.subplots()
    label = f"model (AUC {roc_auc:.3f})" if roc_auc is not None else "model"
    axes.plot(false_positive_rate, true_positive_rate, label=label)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axes.set(xlabel="False positive rate", ylabel="True positive rate", title="ROC curve (test rows)")
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_equity_curve(timestamps, equity: np.ndarray, path: Path) -> Path:
    """Draw the backtest's equity over the test period, starting from 1."""
    figure = _figure((7, 3.5))
    axes = figure.subplots()
    axes.plot(timestamps, equity, label="strategy")
    axes.axhline(1.0, linestyle="--", color="grey", linewidth=0.8)
    axes.set(xlabel="Time", ylabel="Equity (start = 1)", title="Equity curve (test period)")
    figure.autofmt_xdate()
    return _save(figure, path)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path
