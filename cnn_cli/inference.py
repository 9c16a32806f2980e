"""Using a trained model: class probabilities, top-k predictions for images, evaluation on a labelled folder.

The functions behind ``cnn predict`` and ``cnn evaluate``. They return plain
Python data (the JSON the commands print) and the problems met on the way;
they never print.
"""

from __future__ import annotations

import numpy as np

from .imageio import MAX_PIXELS


def predict_batches(network, x, batch_size=256):
    """Class probabilities (N, classes) in eval mode for normalised inputs ``x`` (N, C, H, W)."""
    out = []
    for i in range(0, len(x), batch_size):
        logits = network.forward(x[i:i + batch_size], train=False)
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        out.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def predict(network, meta, inputs, *, top_k=1, max_pixels=MAX_PIXELS):
    """The ``top_k`` most likely classes of every image among ``inputs`` (files, folders or globs).

    Returns (rows, errors): one row per readable image,
    ``{"input": path, "predictions": [{"class": name, "probability": p}, ...]}``
    best first (ties in class order), and one message per input that was not
    found or could not be read, in the order met.
    """
    from .imageio import ImageError, find_images, read_image
    from .modelfile import image_transform

    paths, problems = find_images(inputs)
    errors = [str(p) for p in problems]
    transform = image_transform(meta)
    k = min(top_k, len(meta.classes))
    rows = []
    for path in paths:
        try:
            x = transform(read_image(path, color=meta.preprocessing.color, max_pixels=max_pixels))
        except ImageError as exc:
            errors.append(str(exc))
            continue
        probs = predict_batches(network, x[None])[0]
        best = np.argsort(-probs, kind="stable")[:k]
        rows.append({"input": str(path),
                     "predictions": [{"class": meta.classes[i], "probability": float(probs[i])} for i in best]})
    return rows, errors


def load_labelled(dataset, meta, *, max_pixels=MAX_PIXELS):
    """Normalised images of DATASET (its val/ folder if it has train/ and val/) and their
    labels as indices into the model's classes; (path, reason) of each unreadable image.

    Raises ``DatasetError`` when a class folder is not one of the model's classes.
    """
    from .data import DatasetError, load_images, scan_classes
    from .modelfile import preprocess

    root = dataset / "val" if (dataset / "val").is_dir() and (dataset / "train").is_dir() else dataset
    classes, paths, labels = scan_classes(root)
    unknown = [c for c in classes if c not in meta.classes]
    if unknown:
        raise DatasetError(f"{root}: class folder(s) {unknown} are not classes of the model "
                           f"({', '.join(meta.classes)})")
    remap = np.array([meta.classes.index(c) for c in classes])
    images, ok, _, problems = load_images(paths, meta.preprocessing.image_size, max_pixels=max_pixels)
    return preprocess(images, meta), remap[labels[ok]], problems


def evaluate(network, meta, dataset, *, max_pixels=MAX_PIXELS):
    """Accuracy, per-class precision, recall and F1, and the confusion matrix on DATASET.

    Returns (report, problems): ``evaluation.report`` plus ``skipped`` (the
    unreadable images' paths), and (path, reason) for each of them. With no
    readable image the report counts 0 images.
    """
    from .evaluation import confusion_matrix, report

    x, y, problems = load_labelled(dataset, meta, max_pixels=max_pixels)
    predictions = predict_batches(network, x).argmax(axis=1) if len(y) else y
    result = report(confusion_matrix(y, predictions, len(meta.classes)), meta.classes)
    result["skipped"] = [str(p) for p, _ in problems]
    return result, problems
