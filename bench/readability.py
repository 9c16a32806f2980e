"""How much of each shipped pipeline's maps a picture shows, for each ``--normalize`` method.

    python bench/readability.py [--photos astronaut,coffee,camera,chelsea,brick] [--max-size 512]

Not a speed benchmark: this measures the pictures behind the choice of
``cnn apply``'s default normalisation. The photos are scikit-image's
(``skimage.data``), read as grey, as ``cnn apply`` reads them by default.

For every layer of every shipped pipeline, each map is turned into uint8
levels by each method (``viz.fit_scale``, over the map or over the layer),
and two numbers are averaged over the maps and photos:

- shown: the fraction of pixels more than ``BACKGROUND_LEVELS`` grey levels
  from the map's background (the most common level). A flat field with one
  white dot scores about 0.
- bits: the entropy of the levels' histogram, 0 (one level) to 8 (all 256
  equally used).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from cnn_cli import choices, viz  # noqa: E402
from cnn_cli.imageio import read_image  # noqa: E402
from cnn_cli.pipeline import load_pipeline  # noqa: E402

PIPELINES = ("default", "harris", "shi_tomasi", "laws_energy")
#: Levels within this distance of the background count as background: about
#: what an eye cannot tell apart on a screen.
BACKGROUND_LEVELS = 2


def shown(levels):
    """Fraction of pixels more than BACKGROUND_LEVELS from the most common level."""
    counts = np.bincount(levels.ravel(), minlength=256)
    background = int(np.argmax(counts))
    return float(np.mean(np.abs(levels.astype(np.int16) - background) > BACKGROUND_LEVELS))


def bits(levels):
    """Entropy of the levels' histogram, in bits."""
    p = np.bincount(levels.ravel(), minlength=256) / levels.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def photo(name, max_size, folder):
    """scikit-image's photo ``name`` as ``cnn apply`` reads it: (1, H, W), grey."""
    from PIL import Image
    from skimage import data

    path = Path(folder) / f"{name}.png"
    Image.fromarray(getattr(data, name)()).save(path)
    return read_image(path, max_size=max_size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", default="astronaut,coffee,camera,chelsea,brick")
    parser.add_argument("--max-size", type=int, default=512)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        images = [photo(name, args.max_size, folder) for name in args.photos.split(",")]
    methods = [(m, per) for per in choices.NORMALIZE_PER for m in choices.SCALE_METHODS if m != "none"]
    print(f"{'pipeline':12} {'layer':22}" + "".join(f" {m + '/' + per:>15}" for m, per in methods))
    print(f"{'':35}" + " shown  bits    " * len(methods))
    for name in PIPELINES:
        pipe = load_pipeline(name).bind(["gray"])
        scores = {}  # (layer, method) -> list of (shown, bits)
        for image in images:
            for i, maps in enumerate(pipe.forward(image[None])):
                maps = maps[0]
                for method, per in methods:
                    layer_scale = viz.fit_scale(maps, method) if per == "layer" else None
                    for m in maps:
                        levels = (layer_scale or viz.fit_scale(m, method)).levels(m)
                        scores.setdefault((i, method, per), []).append((shown(levels), bits(levels)))
        for i, layer in enumerate(pipe.layers):
            means = [np.mean(scores[i, m, p], axis=0) for m, p in methods]
            row = "".join(f" {shown_mean:6.3f} {bits_mean:5.2f}   " for shown_mean, bits_mean in means)
            print(f"{name:12} {i} {layer.describe()[:20]:20}{row}")


if __name__ == "__main__":
    main()
