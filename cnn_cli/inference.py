"""Using a trained model: class probabilities, top-k predictions for images, evaluation on a labelled folder.

The functions behind ``cnn predict`` and ``cnn evaluate``. They return plain
Python data (the JSON the commands print) and the problems met on the way;
they never print.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    found, could not be read or did not fit in memory, in the order met.
    """
    from .imageio import ImageError, find_images, read_image
    from .modelfile import image_transform

    paths, problems = find_images(inputs)
    errors = [str(p) for p in problems]
    transform = image_transform(meta)
    k = min(top_k, len(meta.classes))
    side = meta.preprocessing.image_size
    rows = []
    for path in paths:
        try:
            x = transform(read_image(path, color=meta.preprocessing.color, max_pixels=max_pixels))
            probs = predict_batches(network, x[None])[0]
        except ImageError as exc:
            errors.append(str(exc))
            continue
        except MemoryError:
            errors.append(f"{path}: out of memory (the model reads {side}x{side} images)")
            continue
        best = np.argsort(-probs, kind="stable")[:k]
        rows.append({"input": str(path),
                     "predictions": [{"class": meta.classes[i], "probability": float(probs[i])} for i in best]})
    return rows, errors


class SplitError(ValueError):
    """The chosen part of a labelled folder cannot be told apart; the message says what to use instead."""


@dataclass
class EvalImages:
    """The labelled images to score: which part of the folder, and why."""

    paths: list
    names: list            # the class folder of each image
    split: str             # "val", "train" or "all"
    training_folder: bool  # the folder is the one the model was trained on
    note: str              # one line for a human: what is scored, and why


def choose_images(dataset, meta, split=None):
    """The images of DATASET to evaluate on: ``split`` "val", "train" or "all" (``choices.EVAL_SPLITS``).

    With ``split`` None, the held-out part when there is one: ``val/`` of a
    folder with ``train/`` and ``val/``, or the validation images of the
    folder the model was trained on, recognised by the SHA-256 of its file
    list (recorded at training) and split again by the recorded fraction and
    seed; otherwise every image. Raises SplitError when ``split`` asks for a
    part the folder does not have, and DatasetError when a class folder is
    not one of the model's classes.
    """
    from .data import files_sha256, has_split_folders

    root = Path(dataset)
    training = meta.training
    recorded = getattr(training, "dataset_sha256", None) if training is not None else None
    if has_split_folders(root):
        train, val = _labelled(root / "train", meta), _labelled(root / "val", meta)
        ours = recorded == files_sha256(root, train[0] + val[0])
        split = split or "val"
        paths, names = {"val": val, "train": train, "all": (train[0] + val[0], train[1] + val[1])}[split]
        where = {"val": "its val/ folder", "train": "its train/ folder", "all": "train/ and val/"}[split]
        why = "the folder the model was trained on" if ours else "split into train/ and val/"
        return EvalImages(paths, names, split, ours, f"{root} is {why}: scoring the {len(paths)} images of {where}")
    paths, names = _labelled(root, meta)
    config = getattr(training, "config", None)
    ours = recorded == files_sha256(root, paths) and hasattr(config, "val_split")
    if not ours:
        if split in ("val", "train"):
            reason = ("the model does not record the folder it was trained on" if not isinstance(recorded, str)
                      else "its files are not the ones the model was trained on")
            raise SplitError(f"{root}: cannot tell its {split} images apart ({reason}); use --split all")
        return EvalImages(paths, names, "all", False, f"scoring all {len(paths)} images of {root}")
    from .data import stratified_split

    classes = sorted(set(names))
    train_idx, val_idx = stratified_split(np.array([classes.index(c) for c in names]), config.val_split,
                                          config.seed)
    if split == "val" and not len(val_idx):
        raise SplitError(f"{root}: the model was trained on every image of it (--val-split 0); use --split all")
    split = split or ("val" if len(val_idx) else "all")
    idx = {"val": val_idx, "train": train_idx, "all": np.arange(len(paths))}[split]
    rule = f"{config.val_split:g} of each class held out, seed {config.seed}"
    what = {"val": f"its {len(idx)} held-out validation images ({rule}); --split all scores every image",
            "train": f"the {len(idx)} images the model was trained on ({rule}); their accuracy flatters it",
            "all": f"all {len(idx)} images, of which the model was trained on {len(train_idx)}"}[split]
    return EvalImages([paths[i] for i in idx], [names[i] for i in idx], split, True,
                      f"{root} is the folder the model was trained on: scoring {what}")


def _labelled(folder, meta):
    """(paths, class names) of the images under ``folder``; DatasetError for a class the model lacks."""
    from .data import DatasetError, scan_classes

    classes, paths, labels = scan_classes(folder)
    unknown = [c for c in classes if c not in meta.classes]
    if unknown:
        raise DatasetError(f"{folder}: class folder(s) {unknown} are not classes of the model "
                           f"({', '.join(meta.classes)})")
    return paths, [classes[i] for i in labels]


def load_labelled(chosen, meta, *, max_pixels=MAX_PIXELS):
    """Normalised images of ``chosen`` (an ``EvalImages``) and their labels as indices into the
    model's classes; (path, reason) of each unreadable image."""
    from .data import load_images
    from .modelfile import preprocess

    labels = np.array([meta.classes.index(c) for c in chosen.names], np.int64)
    images, ok, _, problems = load_images(chosen.paths, meta.preprocessing.image_size, max_pixels=max_pixels)
    return preprocess(images, meta), labels[ok], problems


def evaluate(network, meta, dataset, *, split=None, max_pixels=MAX_PIXELS):
    """Accuracy, per-class precision, recall and F1, and the confusion matrix on DATASET.

    ``split`` chooses the images (``choose_images``). Returns (report,
    problems, note): ``evaluation.evaluation_report`` plus ``split``, ``training_folder``
    and ``skipped`` (the unreadable images' paths); (path, reason) for each
    of them; and a line saying what was scored. With no readable image the
    report counts 0 images.
    """
    from .evaluation import evaluation_report

    chosen = choose_images(dataset, meta, split)
    x, y, problems = load_labelled(chosen, meta, max_pixels=max_pixels)
    predictions = predict_batches(network, x).argmax(axis=1) if len(y) else y
    result = evaluation_report(y, predictions, meta.classes)
    result["split"] = chosen.split
    result["training_folder"] = chosen.training_folder
    result["skipped"] = [str(p) for p, _ in problems]
    return result, problems, chosen.note
