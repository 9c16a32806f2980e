"""Classification metrics: confusion matrix, per-class precision and recall."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels, predictions, num_classes):
    """counts[i, j] = images of true class i predicted as class j."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
    return m


def _scores(tp, predicted, actual):
    precision = tp / predicted if predicted else None
    recall = tp / actual if actual else None
    f1 = (2 * precision * recall / (precision + recall)
          if precision is not None and recall is not None and precision + recall > 0 else None)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def report(matrix, classes):
    """Accuracy, per-class precision/recall/F1/support, and the matrix, as plain Python data.

    A precision or recall with no images to count (0/0) is reported as None.
    """
    m = np.asarray(matrix)
    total = int(m.sum())
    per_class = {}
    for i, name in enumerate(classes):
        per_class[name] = _scores(int(m[i, i]), int(m[:, i].sum()), int(m[i].sum()))
    return {
        "accuracy": float(np.trace(m) / total) if total else None,
        "images": total,
        "per_class": per_class,
        "confusion": m.tolist(),
        "classes": list(classes),
    }


#: Up to this many classes, ``evaluate`` gives the whole confusion matrix (``confusion``,
#: ``classes`` × ``classes``). Above it the matrix would be classes² counts (10,000 classes:
#: 10^8, 9.5 GB and 240 s to print), so ``confusion`` lists only its non-zero cells, as
#: ``[true class, predicted class, count]``, most first: at most one per image.
DENSE_CLASSES_MAX = 200


def evaluation_report(labels, predictions, classes):
    """``report`` of the true ``labels`` and ``predictions`` (class indices), built without a
    dense matrix when there are more than DENSE_CLASSES_MAX ``classes``; ``confusion_format``
    says which form ``confusion`` has: "matrix" or "cells"."""
    if len(classes) <= DENSE_CLASSES_MAX:
        return {**report(confusion_matrix(labels, predictions, len(classes)), classes), "confusion_format": "matrix"}
    labels, predictions, n = np.asarray(labels, np.int64), np.asarray(predictions, np.int64), len(classes)
    tp = np.bincount(labels[labels == predictions], minlength=n)
    predicted, actual = np.bincount(predictions, minlength=n), np.bincount(labels, minlength=n)
    per_class = {name: _scores(int(tp[i]), int(predicted[i]), int(actual[i])) for i, name in enumerate(classes)}
    cells, counts = np.unique(np.stack([labels, predictions], axis=1), axis=0, return_counts=True) \
        if len(labels) else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    order = np.lexsort((cells[:, 1], cells[:, 0], -counts))
    return {
        "accuracy": float(tp.sum() / len(labels)) if len(labels) else None,
        "images": int(len(labels)),
        "per_class": per_class,
        "confusion": [[classes[cells[i, 0]], classes[cells[i, 1]], int(counts[i])] for i in order],
        "confusion_format": "cells",
        "classes": list(classes),
    }


def most_confused(result, n):
    """The ``n`` largest off-diagonal cells of an evaluation ``result``: (true, predicted, count), most first."""
    if result["confusion_format"] == "cells":
        cells = [cell for cell in result["confusion"] if cell[0] != cell[1]]
    else:
        classes = result["classes"]
        cells = [(classes[i], classes[j], count) for i, row in enumerate(result["confusion"])
                 for j, count in enumerate(row) if i != j and count]
        cells.sort(key=lambda cell: -cell[2])
    return cells[:n]
