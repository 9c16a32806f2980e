"""Turning feature maps and kernels into pictures.

Colour tables come from matplotlib's colormaps (``gray``, ``viridis``,
``magma`` and the diverging ``coolwarm``), read once into 256-entry lookup
tables, rather than typed in by hand. Labels use Pillow's built-in font.
"""

from __future__ import annotations

import functools
import io
import math
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .choices import COLORMAPS

#: Tiles in a grid are scaled so that their longer side lies in this range.
GRID_TILE_MIN, GRID_TILE_MAX = 64, 256
LABEL_HEIGHT, GAP = 16, 4
LABEL_MAX_WIDTH = 240
#: Labels are cut to this many characters (with an ellipsis in the middle)
#: before they are measured: far more than LABEL_MAX_WIDTH pixels hold, and
#: a 10,000-character name is then as quick to fit as a short one.
LABEL_MAX_CHARS = 64

#: Characters a label cannot draw (line breaks, tabs, other control characters).
_UNDRAWABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: A map is drawn as signed only if its smaller side exceeds this fraction of its larger one.
SIGN_TOLERANCE = 1e-4


@functools.lru_cache(maxsize=None)
def colormap_lut(name):
    """(256, 3) uint8 table for a colormap; gray is exact, the others are matplotlib's."""
    if name == "gray":
        ramp = np.arange(256, dtype=np.uint8)
        return np.stack([ramp] * 3, axis=1)
    if name not in COLORMAPS:
        raise ValueError(f"colormap must be one of {COLORMAPS}, but got {name!r}")
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0.0, 1.0, 256))
    return np.round(rgba[:, :3] * 255).astype(np.uint8)


def value_range(maps):
    """(min, max) of an array as Python floats."""
    return float(np.min(maps)), float(np.max(maps))


def scale_for(lo, hi, method):
    """The (low, high) values that map to the ends of the colour scale.

    ``per-map``/``per-layer``: the range of the map or of the whole layer; a
    range that crosses zero is made symmetric, so zero sits mid-scale and the
    sign of a response stays readable. ``none``: raw values, 0 to 1 (the range
    of input images). A constant map is drawn flat at the low end, never NaN.
    """
    if method == "none":
        return 0.0, 1.0
    if lo < 0 < hi:
        m = max(-lo, hi)
        if min(-lo, hi) <= SIGN_TOLERANCE * m:
            # One side is only rounding noise (an FFT of a non-negative map
            # leaves values like -1e-9): treat the map as one-signed.
            return (0.0, hi) if hi == m else (lo, 0.0)
        return -m, m
    return lo, hi


def to_uint8(m, low, high):
    """Map values in [low, high] to 0..255 (clipped); a flat range gives zeros."""
    if not high > low:
        return np.zeros(m.shape, np.uint8)
    scaled = (m.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def colorize(levels, cmap):
    """uint8 levels (H, W) -> a Pillow image: mode L for gray, RGB otherwise."""
    if cmap == "gray":
        return Image.fromarray(levels, mode="L")
    return Image.fromarray(colormap_lut(cmap)[levels], mode="RGB")


def png_bytes(image, compress_level=2):
    """PNG-encode a Pillow image. zlib level 2 is about twice as fast as the
    default (6) and, on feature maps, only about a quarter larger."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def _font(size=11):
    return ImageFont.load_default(size=size)


def _middle(text, keep):
    """``text`` with all but ``keep`` characters replaced by one ellipsis in the middle."""
    return text if keep >= len(text) else text[: (keep + 1) // 2] + "…" + text[len(text) - keep // 2:]


def label_text(text):
    """A label that can be drawn on one line: control characters shown as '?', at most
    LABEL_MAX_CHARS characters (shortened in the middle)."""
    return _middle(_UNDRAWABLE.sub("?", str(text)), LABEL_MAX_CHARS - 1)


def _fit_label(draw, text, width, font):
    """The label, shortened with an ellipsis in the middle if it is wider than ``width``.

    The longest fitting form is found by bisection over the characters kept
    (the width grows with them), so a label takes a handful of measurements.
    """
    text = label_text(text)
    if draw.textlength(text, font=font) <= width:
        return text
    fits, too_long = 0, len(text)  # characters kept: _middle(text, fits) fits, too_long does not
    while too_long - fits > 1:
        keep = (fits + too_long) // 2
        if draw.textlength(_middle(text, keep), font=font) <= width:
            fits = keep
        else:
            too_long = keep
    return _middle(text, fits) if fits else "…"


def thumbnail(image):
    """``image`` resized for a grid: the longer side between GRID_TILE_MIN and
    GRID_TILE_MAX (nearest-neighbour when enlarging, so pixels stay visible)."""
    w0, h0 = image.size
    longest = max(w0, h0)
    scale = min(1.0, GRID_TILE_MAX / longest) if longest > GRID_TILE_MIN else GRID_TILE_MIN / longest
    size = (max(1, round(w0 * scale)), max(1, round(h0 * scale)))
    if size == image.size:
        return image
    if scale >= 1:
        return image.resize(size, Image.Resampling.NEAREST)
    factor = round(1 / scale)
    if image.size == (size[0] * factor, size[1] * factor):
        return image.reduce(factor)  # a box filter, several times faster than resize
    return image.resize(size, Image.Resampling.BILINEAR)


def grid(tiles, labels, *, background=(32, 32, 32)):
    """Lay out every tile (Pillow images of one size) with its label above it.

    Tiles are first passed through ``thumbnail``. Columns: ceil(sqrt(count)).
    Nothing is dropped.
    """
    tiles = [thumbnail(t) for t in tiles]
    labels = [label_text(label) for label in labels]
    count = len(tiles)
    tw, th = tiles[0].size
    font = _font()
    # Cells are wide enough for the longest label, up to LABEL_MAX_WIDTH;
    # longer names are shortened in the middle.
    longest = max(font.getlength(label) for label in labels)
    cell_w = max(tw, min(LABEL_MAX_WIDTH, math.ceil(longest) + 2))
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    width = cols * cell_w + (cols + 1) * GAP
    height = rows * (th + LABEL_HEIGHT) + (rows + 1) * GAP
    canvas = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(canvas)
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(i, cols)
        x = GAP + c * (cell_w + GAP)
        y = GAP + r * (th + LABEL_HEIGHT + GAP)
        draw.text((x, y + 1), _fit_label(draw, label, cell_w, font), fill=(230, 230, 230), font=font)
        canvas.paste(tile.convert("RGB"), (x + (cell_w - tw) // 2, y + LABEL_HEIGHT))
    return canvas


def kernel_tiles(kernels, cell=96):
    """Pictures of kernels on a diverging grey scale: zero is mid-grey, ± the
    kernel's largest magnitude are white and black. A multichannel kernel
    (C, kH, kW) shows its channels side by side. Returns one tile per kernel."""
    tiles = []
    for weights in kernels:
        w = np.asarray(weights, dtype=np.float64)
        w = w[None] if w.ndim == 2 else w
        m = float(np.abs(w).max())
        parts = []
        for ch in w:
            levels = to_uint8(ch, -m, m) if m > 0 else np.full(ch.shape, 128, np.uint8)
            parts.append(levels)
        strip = np.concatenate([np.pad(p, ((0, 0), (0, 1)), constant_values=0) for p in parts], axis=1)[:, :-1]
        px = max(1, cell // max(strip.shape))
        tiles.append(Image.fromarray(np.kron(strip, np.ones((px, px), np.uint8)), mode="L"))
    side = max(max(t.size) for t in tiles)
    # Pad every tile to one size so the grid is regular.
    out = []
    for t in tiles:
        canvas = Image.new("L", (side, side), 32)
        canvas.paste(t, ((side - t.size[0]) // 2, (side - t.size[1]) // 2))
        out.append(canvas)
    return out
