"""Figures of the MEI loop for run artifacts: training curves, held-out fit per unit, MEI grids."""

from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def training_curves(histories: dict[str, list[dict]]):
    """Train and validation loss per epoch, and validation correlation, one line per model."""
    plt = _pyplot()
    fig, (ax_loss, ax_corr) = plt.subplots(1, 2, figsize=(9, 3.2))
    for name, history in histories.items():
        epochs = [h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["train_loss"] for h in history], "-", label=f"{name} train")
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "--", label=f"{name} validation")
        ax_corr.plot(epochs, [h["val_corr"] for h in history], "-o", ms=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="Poisson loss", title="loss")
    ax_corr.set(xlabel="epoch", ylabel="mean correlation", title="validation correlation")
    ax_loss.legend(fontsize=7)
    ax_corr.legend(fontsize=7)
    fig.tight_layout()
    return fig


def heldout_bars(unit_ids: list[str], corr: dict[str, list[float]], truth: list[float] | None = None):
    """Held-out correlation per unit for each model (and against the noise-free truth when known)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(unit_ids)), 3))
    width = 0.8 / (len(corr) + (truth is not None))
    x = np.arange(len(unit_ids))
    for i, (name, values) in enumerate(corr.items()):
        ax.bar(x + i * width, values, width, label=f"{name} (single trials)")
    if truth is not None:
        ax.bar(x + len(corr) * width, truth, width, label="vs noise-free rate", color="k", alpha=0.6)
    ax.set_xticks(x + 0.4 - width / 2, unit_ids, rotation=90, fontsize=7)
    ax.set(ylabel="correlation", ylim=(0, 1), title="held-out prediction per unit")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def mei_grid(unit_ids: list[str], meis: np.ndarray, truth: np.ndarray | None = None, labels: list[str] | None = None):
    """The chosen MEI per unit (top row), with the true filter below it when known."""
    plt = _pyplot()
    rows = 1 if truth is None else 2
    cols = len(unit_ids)
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.25 * rows), squeeze=False)
    for j, unit in enumerate(unit_ids):
        limit = np.abs(meis[j]).max()
        axes[0, j].imshow(meis[j], cmap="gray", vmin=-limit, vmax=limit)
        axes[0, j].set_title(labels[j] if labels else unit, fontsize=6)
        if truth is not None:
            limit = np.abs(truth[j]).max()
            axes[1, j].imshow(truth[j], cmap="gray", vmin=-limit, vmax=limit)
        for ax in axes[:, j]:
            ax.axis("off")
    if truth is not None:
        axes[1, 0].set_title("true filter", fontsize=6)
    fig.tight_layout()
    return fig
