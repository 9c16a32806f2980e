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


def text_label(name):
    """A name (a class folder's, say) as matplotlib text: drawn literally, on one line.

    Matplotlib reads text between two ``$`` as mathtext, and a name such as
    ``$\\foo$`` is then an error; ``\\$`` is a literal dollar sign.
    """
    from .viz import label_text

    return label_text(name).replace("$", r"\$")


def _png(fig):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Class names in scripts the font lacks draw as boxes; say nothing on stderr.
        warnings.simplefilter("ignore")
        fig.savefig(buf, format="png")
    return buf.getvalue()


def learning_curves_png(history):
    """Loss and accuracy per epoch, training and validation, side by side; the kept epoch
    is marked when early stopping kept an earlier one."""
    return _png(learning_curves(history))


def learning_curves(history):
    """The matplotlib Figure of ``learning_curves_png``."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(9, 3.5)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for ax, key, title in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label="training")
        val = [h[f"val_{key}"] for h in history]
        if any(v is not None for v in val):
            ax.plot(epochs, [np.nan if v is None else v for v in val], "s-", label="validation")
        kept = [h["epoch"] for h in history if h.get("kept")]
        if kept and kept[0] != epochs[-1]:
            ax.axvline(kept[0], color="0.5", ls=":", label=f"kept (epoch {kept[0]})")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no tick at 2.5
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_png(matrix, classes):
    """The confusion matrix with counts in each cell; rows are true classes."""
    m = np.asarray(matrix)
    side = min(12, 2 + 0.5 * len(classes))
    fig = _figure(side + 1, side)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="viridis")
    ax.set_xticks(range(len(classes)), [text_label(c) for c in classes], rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), [text_label(c) for c in classes])
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


def lr_finder_png(finding):
    """The learning-rate range test: loss against rate (log scale), the suggested rate marked."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    ax.plot(finding.rates, finding.losses, color="0.75", lw=1, label="batch loss")
    ax.plot(finding.rates, finding.smoothed, lw=2, label="smoothed")
    ax.axvline(finding.suggestion, color="C3", ls="--", label=f"suggested {finding.suggestion:.2g}")
    ax.axvline(finding.lowest, color="0.5", ls=":", label=f"near the lowest loss {finding.lowest:.2g}")
    ax.set_xscale("log")
    bottom, top = min(finding.losses), max(finding.smoothed[0], min(finding.smoothed)) * 1.5
    ax.set_ylim(bottom - 0.05 * (top - bottom), top)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _png(fig)
