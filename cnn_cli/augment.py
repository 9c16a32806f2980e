"""Random augmentation of training batches: what ``cnn train --augment`` accepts, and doing it.

A list of augmentations is written ``NAME`` or ``NAME=VALUE``, comma-separated,
as in ``shift=4px,rotate=10,flip``. A bare name takes its default (``DEFAULTS``).

============  ==========================================================  =======
item          what it does to each image                                   default
============  ==========================================================  =======
shift=F       move by whole pixels, up to F x the side (at least 1 px)     0.0625
shift=Npx     the same, up to N pixels
rotate=DEG    rotate by an angle uniform in [-DEG, DEG]                    15
flip          mirror left-right, with probability 1/2
vflip         mirror top-bottom, with probability 1/2
scale=F       zoom by a factor uniform in [1 - F, 1 + F]                   0.1
brightness=F  multiply the pixels by a factor uniform in [1 - F, 1 + F]    0.2
contrast=F    blend with the image's mean grey level, factor in [1-F, 1+F] 0.2
erase=P       with probability P, set a random rectangle to the mean       0.5
              (Zhong et al. 2017: 2-33% of the area, aspect 0.3 to 3.3)
noise=S       add Gaussian noise of standard deviation S                   0.05
============  ==========================================================  =======

Values are on the [0, 1] pixel scale, before normalisation; brightness,
contrast and noise clip to [0, 1], as torchvision's ColorJitter and
GaussianNoise do. The shift, rotation, zoom and flips of an image are one
affine map, resampled once (bilinear) by ``kernels.affine``; the pixels it
exposes at the borders are black (``zeros``), the mirror image (``reflect``)
or the edge pixel repeated (``edge``), as ``--augment-fill`` says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .choices import AUGMENT_FILLS, AUGMENTATIONS

#: The value a bare name stands for; None: the augmentation takes no value.
DEFAULTS = {"shift": "0.0625", "rotate": "15", "flip": None, "vflip": None, "scale": "0.1",
            "brightness": "0.2", "contrast": "0.2", "erase": "0.5", "noise": "0.05"}

#: Each value must be above the first number and at most the second.
_RANGES = {"shift": (0, 1), "rotate": (0, 180), "scale": (0, 1), "brightness": (0, 1), "contrast": (0, 1),
           "erase": (0, 1), "noise": (0, 1)}

#: Random erasing's area fraction and aspect ratio (Zhong et al. 2017; torchvision's RandomErasing).
ERASE_AREA = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10

_GEOMETRIC = ("shift", "rotate", "flip", "vflip", "scale")


class AugmentError(ValueError):
    """An augmentation list cannot be read; the message names the item and what to change."""


@dataclass(frozen=True)
class Augmentation:
    """One augmentation: its name, its value (None for flips) and, for shift, whether in pixels."""

    name: str
    value: float | None = None
    pixels: bool = False

    def __str__(self):
        if self.value is None:
            return self.name
        return f"{self.name}={self.value:g}{'px' if self.pixels else ''}"


def parse(items):
    """Augmentations from ``items``: a comma-separated string, or a list of ``NAME[=VALUE]`` strings.

    Bare names take their ``DEFAULTS``. Raises AugmentError naming the item.
    """
    if isinstance(items, str):
        items = items.split(",")
    found = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, sep, value = (part.strip() for part in item.partition("="))
        if name not in AUGMENTATIONS:
            raise AugmentError(f"unknown augmentation {name!r}; choose from {', '.join(AUGMENTATIONS)}, "
                               "comma-separated, as in shift=4px,rotate=10,flip")
        if any(a.name == name for a in found):
            raise AugmentError(f"{name} is given twice")
        found.append(_parse_value(name, value if sep else DEFAULTS[name]))
    return found


def _parse_value(name, text):
    if DEFAULTS[name] is None:
        if text is not None:
            raise AugmentError(f"{name} takes no value, but got {name}={text}")
        return Augmentation(name)
    pixels = name == "shift" and text.lower().endswith("px")
    if pixels:
        try:
            n = int(text[:-2])
        except ValueError:
            n = 0
        if not 1 <= n <= 4096:
            raise AugmentError(f"shift={text}: pixels must be a whole number from 1 to 4096, as in shift=4px")
        return Augmentation(name, float(n), pixels=True)
    try:
        value = float(text)
    except ValueError:
        raise AugmentError(f"{name}={text}: the value must be a number, as in {name}={DEFAULTS[name]}") from None
    low, high = _RANGES[name]
    if not (math.isfinite(value) and low < value <= high):
        unit = " (a fraction of the side), or pixels as in shift=4px" if name == "shift" else ""
        raise AugmentError(f"{name}={text}: the value must be above {low:g} and at most {high:g}{unit}")
    return Augmentation(name, value)


def canonical(items):
    """``items`` (as ``parse`` takes them) written out with every value: what the model file records."""
    return [str(a) for a in parse(items)]


def check_fill(fill):
    if fill not in AUGMENT_FILLS:
        raise AugmentError(f"augment fill must be one of {AUGMENT_FILLS}, but got {fill!r}")
    return fill


class Augmenter:
    """Applies augmentations to normalised batches (N, C, H, W): ``augmenter(batch, rng) -> batch``.

    ``augmentations`` is what ``parse`` takes. ``mean`` and ``std`` (per
    channel) are the normalisation, so that values and fills are on the
    pixel scale. Every random draw comes from ``rng``, a fixed number per
    image and augmentation, so a batch's result depends only on the batch
    and the generator's seed.
    """

    def __init__(self, augmentations, *, mean, std, fill="zeros"):
        self.augmentations = {a.name: a for a in parse(augmentations)}
        self.fill = check_fill(fill)
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)

    def __call__(self, batch, rng):
        if not self.augmentations or len(batch) == 0:
            return batch
        out = batch
        if any(k in self.augmentations for k in _GEOMETRIC):
            out = self._geometric(out, rng)
        if any(k in self.augmentations for k in ("brightness", "contrast", "noise")):
            out = self._photometric(out, rng)
        if "erase" in self.augmentations:
            out = self._erase(out if out is not batch else batch.copy(), rng)
        return out

    def matrices(self, n, h, w, rng):
        """(n, 2, 3) float64: the map from each output pixel (oy, ox, 1) to where it reads the input.

        The image is flipped, zoomed and rotated about its centre, then
        shifted; this is that map's inverse.
        """
        aug = self.augmentations
        sign_y = np.where(rng.random(n) < 0.5, -1.0, 1.0) if "vflip" in aug else np.ones(n)
        sign_x = np.where(rng.random(n) < 0.5, -1.0, 1.0) if "flip" in aug else np.ones(n)
        angle = np.radians(rng.uniform(-1, 1, n) * aug["rotate"].value) if "rotate" in aug else np.zeros(n)
        zoom = 1 + rng.uniform(-1, 1, n) * aug["scale"].value if "scale" in aug else np.ones(n)
        if "shift" in aug:
            s = aug["shift"]
            most_y, most_x = (int(s.value),) * 2 if s.pixels else (max(1, int(s.value * h)), max(1, int(s.value * w)))
            dy, dx = rng.integers(-most_y, most_y + 1, n), rng.integers(-most_x, most_x + 1, n)
        else:
            dy = dx = np.zeros(n)
        cos, sin = np.cos(angle), np.sin(angle)
        # inverse of (rotate . zoom . flip): flip . (1/zoom) . rotate(-angle)
        inv = np.empty((n, 2, 2))
        inv[:, 0, 0], inv[:, 0, 1] = sign_y * cos / zoom, sign_y * sin / zoom
        inv[:, 1, 0], inv[:, 1, 1] = -sign_x * sin / zoom, sign_x * cos / zoom
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        moved = centre[None] + np.stack([dy, dx], axis=1)
        m = np.empty((n, 2, 3))
        m[:, :, :2] = inv
        m[:, :, 2] = centre[None] - np.einsum("nij,nj->ni", inv, moved)
        return m

    def _geometric(self, batch, rng):
        from .functional import affine_bilinear

        n, _, h, w = batch.shape
        black = ((0 - self.mean) / self.std).astype(np.float32)  # zeros are black pixels, normalised
        fill = "constant" if self.fill == "zeros" else self.fill
        return affine_bilinear(batch, self.matrices(n, h, w, rng), fill=fill, value=black)

    def _photometric(self, batch, rng):
        aug = self.augmentations
        n = len(batch)
        mean, std = self.mean[None, :, None, None], self.std[None, :, None, None]
        px = batch * std + mean
        if "brightness" in aug:
            f = _factors(rng, n, aug["brightness"].value)
            px = np.clip(px * f[:, None, None, None], 0, 1)
        if "contrast" in aug:
            f = _factors(rng, n, aug["contrast"].value)[:, None, None, None]
            channel_means = px.mean(axis=(2, 3))
            if px.shape[1] == 3:
                from .imageio import LUMA

                grey = channel_means @ LUMA  # the mean of the image's luminance
            else:
                grey = channel_means[:, 0]
            px = np.clip(f * px + (1 - f) * grey[:, None, None, None], 0, 1)
        if "noise" in aug:
            px = np.clip(px + np.float32(aug["noise"].value) * rng.standard_normal(px.shape, np.float32), 0, 1)
        return ((px - mean) / std).astype(np.float32)

    def _erase(self, batch, rng):
        n, _, h, w = batch.shape
        hit = rng.random(n) < self.augmentations["erase"].value
        area = rng.uniform(*ERASE_AREA, (n, ERASE_ATTEMPTS)) * (h * w)
        ratio = np.exp(rng.uniform(*np.log(ERASE_RATIO), (n, ERASE_ATTEMPTS)))
        eh = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        ew = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
        where = rng.random((n, 2))
        for i in np.flatnonzero(hit & fits.any(axis=1)):
            k = int(np.argmax(fits[i]))
            top, left = int(where[i, 0] * (h - eh[i, k] + 1)), int(where[i, 1] * (w - ew[i, k] + 1))
            batch[i, :, top:top + eh[i, k], left:left + ew[i, k]] = 0
        return batch


def _factors(rng, n, spread):
    """n factors uniform in [max(0, 1 - spread), 1 + spread], as torchvision's ColorJitter draws them."""
    return rng.uniform(max(0.0, 1 - spread), 1 + spread, n).astype(np.float32)
