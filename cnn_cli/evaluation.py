"""Classification metrics: confusion matrix, per-class precision and recall."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes):
    """counts[i, j] = images of true class i predicted as class j."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def report(matrix, classes):
    """Accuracy, per-class precision/recall/F1/support, and the matrix, as plain Python data.

    A precision or recall with no images to count (0/0) is reported as None.
    """
    m = np.asarray(matrix)
    total = int(m.sum())
    per_class = {}
    for i, name in enumerate(classes):
        tp, predicted, actual = int(m[i, i]), int(m[:, i].sum()), int(m[i].sum())
        precision = tp / predicted if predicted else None
        recall = tp / actual if actual else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else None)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return {
        "accuracy": float(np.trace(m) / total) if total else None,
        "images": total,
        "per_class": per_class,
        "confusion": m.tolist(),
        "classes": list(classes),
    }
