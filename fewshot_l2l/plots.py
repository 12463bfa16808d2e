"""Pictures: meta-training curves (``RUN_DIR/curves.png``).

matplotlib (in requirements.txt) is imported only when a picture is drawn, so
the rest of the package does not need it. Figures are built with
``matplotlib.figure.Figure`` (no pyplot, no global backend switch) and saved
as PNG through :func:`fewshot_l2l.utils.atomic_write`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .utils import atomic_write

DPI = 110


def require_matplotlib() -> Any:
    """``matplotlib.figure``, or an ``ImportError`` that says how to install matplotlib."""
    try:
        import matplotlib.figure
    except ImportError as error:
        raise ImportError(
            "drawing pictures (RUN_DIR/curves.png, scripts/plot_gates.py, loss-curve plots) needs matplotlib: "
            "pip install -r requirements.txt (or pip install matplotlib)"
        ) from error
    return matplotlib.figure


def new_figure(n_rows: int, n_cols: int, size: tuple[float, float], **subplot_kw) -> tuple[Any, Any]:
    """A ``(figure, axes)`` pair; ``axes`` is always a 2-D array ``[n_rows, n_cols]``."""
    figure = require_matplotlib().Figure(figsize=size)
    axes = figure.subplots(n_rows, n_cols, squeeze=False, **subplot_kw)
    return figure, axes


def save_png(figure: Any, path: str | os.PathLike) -> Path:
    """Save ``figure`` as a PNG at ``path`` atomically (missing folders are created); return the path."""
    return atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))


def plot_training_curves(rows: list[dict[str, float]], path: str | os.PathLike, title: str = "meta-training",
                         chance: float | None = None) -> Path:
    """Draw ``metrics.csv`` rows of :func:`fewshot_l2l.training.meta_train` against meta-training episodes.

    Left: the training meta-loss (query cross-entropy, mean since the previous
    validation). Right: training and validation query accuracy, the latter with
    its 95% confidence band, and the ``chance`` accuracy (``1 / n_way``) if given.
    """
    if not rows:
        raise ValueError(f"plot_training_curves: no metrics rows to draw into {path}")
    episodes = [row["episodes"] for row in rows]
    figure, axes = new_figure(1, 2, (10, 3.8))
    loss_axis, acc_axis = axes[0]
    loss_axis.plot(episodes, [row["train_loss"] for row in rows], marker=".", color="tab:red")
    loss_axis.set_title("training meta-loss (mean over each interval)")
    loss_axis.set_ylabel("query cross-entropy")
    val = [100 * row["val_acc"] for row in rows]
    ci = [100 * row["val_ci95"] for row in rows]
    acc_axis.plot(episodes, [100 * row["train_acc"] for row in rows], marker=".", color="tab:red", label="training (interval mean)")
    acc_axis.plot(episodes, val, marker=".", color="tab:blue", label="validation")
    acc_axis.fill_between(episodes, [v - c for v, c in zip(val, ci)], [v + c for v, c in zip(val, ci)],
                          color="tab:blue", alpha=0.2, label="validation 95% CI")
    if chance is not None:
        acc_axis.axhline(100 * chance, color="gray", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.0f}%)")
    acc_axis.set_title("query accuracy")
    acc_axis.set_ylabel("accuracy (%)")
    acc_axis.legend(loc="best", fontsize="small")
    for axis in (loss_axis, acc_axis):
        axis.set_xlabel("meta-training episodes")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return save_png(figure, path)
