"""Small labelled image folders for the training tests, written as real PNG files.

``write_patterns``: synthetic classes that a LeNet learns in a few epochs
(horizontal stripes, vertical stripes, a bright blob), with random phase,
position and noise so no two images are alike. ``write_digits``: scikit-learn's
8x8 digits upscaled with Pillow, split 75/25 into ``train/`` and ``val/``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

PATTERNS = ("blob", "horizontal", "vertical")


def pattern(kind, size, rng):
    """One (size, size) uint8 image of the given kind."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = rng.uniform(3.5, 5.0)
    phase = rng.uniform(0, 2 * np.pi)
    if kind == "horizontal":
        img = 0.5 + 0.4 * np.sin(2 * np.pi * yy / period + phase)
    elif kind == "vertical":
        img = 0.5 + 0.4 * np.sin(2 * np.pi * xx / period + phase)
    elif kind == "blob":
        cy, cx = rng.uniform(size * 0.3, size * 0.7, size=2)
        sigma = rng.uniform(size * 0.12, size * 0.2)
        img = 0.15 + 0.75 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    else:
        raise ValueError(kind)
    img = img + rng.normal(0, 0.05, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_patterns(root, per_class=12, size=16, classes=PATTERNS, seed=0, rgb=False):
    """``root/<class>/<i>.png`` for each class; returns the paths by class."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    paths = {}
    for kind in classes:
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        paths[kind] = []
        for i in range(per_class):
            img = pattern(kind, size, rng)
            if rgb:
                tint = rng.uniform(0.6, 1.0, size=3)
                img = Image.fromarray((img[..., None] * tint).astype(np.uint8), mode="RGB")
            else:
                img = Image.fromarray(img, mode="L")
            p = folder / f"{i:03d}.png"
            img.save(p)
            paths[kind].append(p)
    return paths


def write_digits(root, size=32, val_fraction=0.25, seed=0):
    """scikit-learn's digits as ``root/{train,val}/<digit>/<i>.png``, upscaled (bilinear)
    from 8x8 to ``size`` x ``size``; a seeded permutation picks the validation images.
    Returns (train count, val count)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images  # (1797, 8, 8) values 0..16
    labels = digits.target
    order = np.random.default_rng(seed).permutation(len(images))
    n_val = int(round(val_fraction * len(images)))
    val = set(order[:n_val].tolist())
    root = Path(root)
    for i, (img, label) in enumerate(zip(images, labels)):
        split = "val" if i in val else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray((img * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
        pil.resize((size, size), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")
    return len(images) - n_val, n_val
