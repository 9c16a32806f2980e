"""Labelled image folders (torchvision's ImageFolder layout), splits, augmentation.

``DATASET/<class>/**/<image>``: one subfolder per class, walked recursively,
hidden entries and macOS ``._*`` files skipped, symbolic links not followed.
If ``DATASET/train`` and ``DATASET/val`` both exist they are the split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .choices import AUGMENTATIONS
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


def find_dataset(root, val_split, seed):
    """The dataset with its split: ``train``/``val`` folders if present, else stratified."""
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes, tp, tl = scan_classes(root / "train")
        val_classes, vp, vl = scan_classes(root / "val")
        if val_classes != classes:
            raise DatasetError(f"{root}: train/ and val/ must have the same class folders "
                               f"({classes} vs {val_classes})")
        return Dataset(classes, Split(tp, tl), Split(vp, vl), "folders train/ and val/")
    classes, paths, labels = scan_classes(root)
    train_idx, val_idx = stratified_split(labels, val_split, seed)
    pick = lambda idx: Split([paths[i] for i in idx], labels[idx])  # noqa: E731
    rule = f"stratified {val_split:g} of each class to validation, seed {seed}"
    return Dataset(classes, pick(train_idx), pick(val_idx), rule)


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


def augment(batch, kinds, rng):
    """Randomly transform a normalised batch (N, C, H, W), one draw per image.

    shift: translate by up to max(1, size/16) pixels, filling with 0 (the mean);
    flip: mirror left-right with probability 1/2; rotate: by up to ±15 degrees
    (bilinear, borders extended).
    """
    if not kinds:
        return batch
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"augmentations must be among {AUGMENTATIONS}, but got {unknown}")
    out = batch.copy()
    n, _, h, w = out.shape
    for i in range(n):
        if "flip" in kinds and rng.random() < 0.5:
            out[i] = out[i, :, :, ::-1]
        if "rotate" in kinds:
            from scipy.ndimage import rotate

            angle = rng.uniform(-15, 15)
            out[i] = rotate(out[i], angle, axes=(2, 1), reshape=False, order=1, mode="nearest")
        if "shift" in kinds:
            m = max(1, min(h, w) // 16)
            dy, dx = rng.integers(-m, m + 1, size=2)
            shifted = np.zeros_like(out[i])
            ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
            xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
            shifted[:, yd, xd] = out[i][:, ys, xs]
            out[i] = shifted
    return out
