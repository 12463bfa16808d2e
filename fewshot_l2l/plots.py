"""Pictures: meta-training curves (``RUN_DIR/curves.png``) and the meta-learner's gates (Ravi & Larochelle, Fig. 2).

matplotlib (in requirements.txt) is imported only when a picture is drawn, so
the rest of the package does not need it. Figures are built with
``matplotlib.figure.Figure`` (no pyplot, no global backend switch) and saved
as PNG through :func:`fewshot_l2l.files.atomic_write`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import atomic_write

if TYPE_CHECKING:
    from .gates import GateStatistics

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


def _block_title(name: str) -> str:
    """``conv2.weight`` / ``bn2.bias`` -> ``block 3``; ``head.weight`` -> ``head``."""
    module = name.split(".")[0]
    return "head" if module == "head" else f"block {int(module.lstrip('convbn')) + 1}"


def _tensor_label(name: str) -> str:
    """The learner's parameter name, with what a batch-norm weight and bias are."""
    if name.startswith("bn"):
        return f"{name} ({'gamma' if name.endswith('weight') else 'beta'})"
    return name


def plot_gate_statistics(stats: GateStatistics, path: str | os.PathLike, title: str) -> Path:
    """Draw :class:`fewshot_l2l.gates.GateStatistics`: the input gate ``sigmoid(i_t)`` (the learned
    learning rate, top row) and the forget gate ``sigmoid(f_t)`` (bottom row) over the inner steps.

    One column per learner block (its conv weight, BN gamma and BN beta) and one
    for the classifier head; each line is the mean over the coordinates of one
    parameter tensor and all episodes, the band mean +- std, the dotted lines min and max.
    """
    groups: dict[str, list[int]] = {}  # column title -> indices of its parameter tensors
    for index, name in enumerate(stats.names):
        groups.setdefault(_block_title(name), []).append(index)
    steps = list(range(1, stats.inner_steps + 1))
    figure, axes = new_figure(2, len(groups), (3.1 * len(groups), 6.2), sharex=True, sharey="row")
    from matplotlib.ticker import MaxNLocator  # matplotlib is there: new_figure imported it
    colors = ("tab:blue", "tab:orange", "tab:green")
    for row, (gate, label) in enumerate(((stats.input, "input gate sigmoid(i_t)"), (stats.forget, "forget gate sigmoid(f_t)"))):
        for col, (group, indices) in enumerate(groups.items()):
            axis = axes[row, col]
            for color, index in zip(colors, indices):
                mean, std = gate["mean"][:, index], gate["std"][:, index]
                axis.plot(steps, mean, color=color, marker=".", label=_tensor_label(stats.names[index]))
                axis.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2)
                axis.plot(steps, gate["min"][:, index], color=color, linestyle=":", linewidth=0.8)
                axis.plot(steps, gate["max"][:, index], color=color, linestyle=":", linewidth=0.8)
            axis.grid(alpha=0.3)
            axis.ticklabel_format(axis="y", useOffset=False)  # forget gates sit near 1: print 0.9961, not 1e-4 + 0.996
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            if row == 0:
                axis.set_title(group)
                axis.legend(fontsize="small")
            else:
                axis.set_xlabel("inner step t")
            if col == 0:
                axis.set_ylabel(label)
    figure.suptitle(f"{title}\nmean ± std over coordinates and {stats.n_episodes} episodes (dotted: min, max)")
    figure.tight_layout()
    return save_png(figure, path)
