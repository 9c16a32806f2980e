"""Precision@1 of `cnn search --evaluate` on a labelled folder of real photos, by embedding setting.

    python bench/retrieval.py [--per-class 16] [--folder DIR]

The folder: ``--per-class`` random 96x96 crops (half of them mirrored) of
each of ten scikit-image data photos (astronaut, brick, camera, chelsea,
coffee, grass, gravel, moon, rocket, coins), one class folder per photo,
seed 0. Each setting runs ``cnn embed`` as a user would, then
``cnn search --evaluate --json``. Issue 28: the default embedding (standardised)
against the pooled rows it replaced (``--no-standardize``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel", "moon", "rocket", "coins")
CROP = 96

SETTINGS = {
    "default (standardised)": [],
    "--no-standardize (before issue 28)": ["--no-standardize"],
    "--bank textures --pool stats": ["--bank", "textures", "--pool", "stats"],
    "--bank textures --pool stats --no-standardize": ["--bank", "textures", "--pool", "stats", "--no-standardize"],
}


def make_photos(folder, per_class, seed=0):
    """``folder/<photo>/NNN.png``: ``per_class`` crops of each photo."""
    import skimage.data

    rng = np.random.default_rng(seed)
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        (folder / name).mkdir(parents=True, exist_ok=True)
        h, w = image.shape[:2]
        for i in range(per_class):
            y, x = rng.integers(0, h - CROP), rng.integers(0, w - CROP)
            crop = image[y:y + CROP, x:x + CROP]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            Image.fromarray(np.ascontiguousarray(crop)).save(folder / name / f"{i:03d}.png")


def cnn(*args):
    proc = subprocess.run([sys.executable, "-m", "cnn_cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cnn {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=16)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cnn-bench-retrieval-") as scratch:
        photos = args.folder or Path(scratch) / "photos"
        if not photos.exists():
            make_photos(photos, args.per_class)
        print(f"{len(PHOTOS)} classes x {args.per_class} crops of {CROP}x{CROP} in {photos}")
        print(f"{'setting':48} {'p@1':>6} {'p@5':>6} {'mAP':>6}")
        for i, (name, extra) in enumerate(SETTINGS.items()):
            index = Path(scratch) / f"index{i}"
            cnn("embed", photos, "-o", index, *extra)
            scores = json.loads(cnn("search", "--evaluate", "--index", index, "--json"))
            print(f"{name:48} {scores['precision_at_1']:6.3f} {scores['precision_at_k']:6.3f} "
                  f"{scores['mean_average_precision']:6.3f}")


if __name__ == "__main__":
    main()
