"""Training plots with matplotlib (headless Agg backend), returned as PNG bytes."""

from __future__ import annotations

import io
import warnings

import numpy as np


def _figure(width, height):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Class names in scripts the font lacks draw as boxes; say nothing on stderr.
        warnings.simplefilter("ignore")
        fig.savefig(buf, format="png")
    return buf.getvalue()


def learning_curves_png(history):
    """Loss and accuracy per epoch, training and validation, side by side."""
    fig = _figure(9, 3.5)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for ax, key, title in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="training")
        val = [h[f"val_{key}"] for h in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [np.nan if v is None else v for v in val], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return _png(fig)


def confusion_png(matrix, classes):
    """The confusion matrix with counts in each cell; rows are true classes."""
    m = np.asarray(matrix)
    side = min(12, 2 + 0.5 * len(classes))
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(classes) <= 30:
        top = m.max() if m.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center",
                        color="black" if m[i, j] > top / 2 else "white", fontsize=8)
    fig.colorbar(im, ax=ax)
    return _png(fig)
