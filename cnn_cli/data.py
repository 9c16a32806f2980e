"""Labelled image folders (torchvision's ImageFolder layout) and their splits.

``DATASET/<class>/**/<image>``: one subfolder per class, walked recursively,
hidden entries and macOS ``._*`` files skipped, symbolic links not followed.
If ``DATASET/train`` and ``DATASET/val`` both exist they are the split.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .imageio import EXTENSIONS, FORMATS, LUMA, MAX_PIXELS, ImageError, read_image, resize


class DatasetError(ValueError):
    """The dataset folder cannot be used as it is; the message says why."""


@dataclass
class Split:
    """Images of one split: paths and integer labels into ``classes``."""

    paths: list
    labels: np.ndarray


@dataclass
class Dataset:
    classes: list
    train: Split
    val: Split
    split_rule: str
    sha256: str = ""  # of the image files' paths under the root (``files_sha256``): which folder this is
    fingerprint: str = ""  # of their paths and sizes (``files_sha256(..., sizes=True)``): whether it changed
    skipped: list = field(default_factory=list)  # (path, reason) of files that could not be read


def _hidden(name):
    return name.startswith(".") or name.startswith("._")


def scan_classes(root):
    """Class names and (path, label) items under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder")
    classes = sorted(e.name for e in os.scandir(root)
                     if not _hidden(e.name) and e.is_dir(follow_symlinks=False))
    if len(classes) < 2:
        raise DatasetError(f"{root}: found {len(classes)} class folder(s); a classifier needs at least 2 "
                           "(one subfolder of images per class)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = []
        for folder, dirs, files in os.walk(root / name):
            dirs[:] = sorted(d for d in dirs if not _hidden(d))
            for f in sorted(files):
                p = Path(folder) / f
                if _hidden(f) or p.suffix.lower() not in EXTENSIONS:
                    continue
                if p.is_symlink() or not p.is_file():
                    continue
                found.append(p)
        if not found:
            raise DatasetError(f"{root / name}: class folder '{name}' holds no images")
        paths += found
        labels += [label] * len(found)
    return classes, paths, np.array(labels, dtype=np.int64)


def stratified_split(labels, fraction, seed):
    """(train indices, val indices): ``fraction`` of each class, at least one image
    when the class has two or more, chosen by a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        elif len(idx) < 2:
            n_val = 0  # a class of one image must keep it for training
        val += idx[:n_val].tolist()
        train += idx[n_val:].tolist()
    return np.array(sorted(train), dtype=np.int64), np.array(sorted(val), dtype=np.int64)


def has_split_folders(root):
    """Does ``root`` hold its own split, as ``train/`` and ``val/`` folders?"""
    return (Path(root) / "train").is_dir() and (Path(root) / "val").is_dir()


def find_dataset(root, val_split, seed):
    """The dataset with its split: ``train``/``val`` folders if present, else stratified."""
    root = Path(root)
    if has_split_folders(root):
        classes, tp, tl = scan_classes(root / "train")
        val_classes, vp, vl = scan_classes(root / "val")
        if val_classes != classes:
            raise DatasetError(f"{root}: train/ and val/ must have the same class folders "
                               f"({classes} vs {val_classes})")
        return Dataset(classes, Split(tp, tl), Split(vp, vl), "folders train/ and val/",
                       files_sha256(root, tp + vp), files_sha256(root, tp + vp, sizes=True))
    classes, paths, labels = scan_classes(root)
    train_idx, val_idx = stratified_split(labels, val_split, seed)
    pick = lambda idx: Split([paths[i] for i in idx], labels[idx])  # noqa: E731
    rule = f"stratified {val_split:g} of each class to validation, seed {seed}"
    return Dataset(classes, pick(train_idx), pick(val_idx), rule, files_sha256(root, paths),
                   files_sha256(root, paths, sizes=True))


def files_sha256(root, paths, *, sizes=False):
    """SHA-256 of the sorted paths relative to ``root``, one a line: the same folder
    of images, wherever it is, gives the same hash; adding, removing or renaming
    a file (or moving it to another class) changes it. Contents are not read;
    with ``sizes``, each line also holds the file's size (-1 if it cannot be
    read), so a folder whose images were replaced by others of the same
    names changes it too."""
    def size(p):
        try:
            return os.stat(p).st_size
        except OSError:
            return -1

    lines = sorted(Path(p).relative_to(root).as_posix() + (f"\t{size(p)}" if sizes else "") for p in paths)
    return hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def image_sizes(paths):
    """(width, height) of each readable image from its header only; None where unreadable."""
    sizes = []
    for p in paths:
        try:
            with Image.open(p, formats=FORMATS) as im:
                sizes.append(im.size)
        except Exception:  # noqa: BLE001 - any failure here is reported by load_images
            sizes.append(None)
    return sizes


def default_image_size(paths):
    """The median of the images' shorter sides, rounded to a multiple of 4, within [16, 128]."""
    sides = [min(s) for s in image_sizes(paths) if s]
    if not sides:
        return 32
    return int(np.clip(4 * round(np.median(sides) / 4), 16, 128))


def load_images(paths, size, max_pixels=MAX_PIXELS):
    """Decode and resize every image to (3, size, size) in [0, 1].

    Returns (images, ok, is_gray, problems): the float32 array of the images
    that decoded, a boolean mask over ``paths``, whether each decoded image is
    grey (all channels equal), and (path, reason) for each one that did not.
    """
    images, ok, gray, problems = [], [], [], []
    for p in paths:
        try:
            img = resize(read_image(p, color="rgb", max_pixels=max_pixels), size, size)
            images.append(img)
            gray.append(bool(np.abs(img - img[:1]).max() < 1e-3))
            ok.append(True)
        except ImageError as exc:
            problems.append((p, str(exc)))
            ok.append(False)
    arr = np.stack(images) if images else np.zeros((0, 3, size, size), np.float32)
    return arr, np.array(ok, dtype=bool), np.array(gray, dtype=bool), problems


def to_color(images, color):
    """(N, 3, H, W) in [0, 1] -> (N, 1, H, W) luminance for "gray", unchanged for "rgb"."""
    if color == "gray":
        return np.tensordot(images, LUMA, axes=([1], [0]))[:, None].astype(np.float32)
    return images


def channel_stats(images):
    """Per-channel mean and standard deviation (float64 sums), for normalisation."""
    mean = images.mean(axis=(0, 2, 3), dtype=np.float64)
    std = images.std(axis=(0, 2, 3), dtype=np.float64)
    return mean.astype(np.float32), np.maximum(std, 1e-3).astype(np.float32)


def normalize(images, mean, std):
    return ((images - mean[None, :, None, None]) / std[None, :, None, None]).astype(np.float32)
