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
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .choices import COLORMAPS, SCALE_METHODS
from .pngfile import png_bytes  # noqa: F401  (the encoder of every picture a run writes)

#: Tiles in a grid are scaled so that their longer side lies in this range (a 32x32 input's
#: maps are drawn 3 times over, so the grid is not a postage stamp and its labels have room).
GRID_TILE_MIN, GRID_TILE_MAX = 96, 256
LABEL_HEIGHT, GAP = 16, 4
BACKGROUND, TEXT, NOTE_TEXT = (32, 32, 32), (230, 230, 230), (160, 160, 160)
#: A colour bar's size: wide enough for five tick labels of 3 significant digits.
COLORBAR_WIDTH, COLORBAR_HEIGHT = 320, 12
#: Pixels kept free between two tick labels of a colour bar.
COLORBAR_TICK_GAP = 12
#: A bar chart's rows and the width of its value axis; bars above zero, and below.
BAR_ROW, BAR_AXIS_WIDTH = 16, 240
POSITIVE_BAR, NEGATIVE_BAR = (230, 150, 70), (90, 150, 230)
LABEL_MAX_WIDTH = 240
#: Labels are cut to this many characters (with an ellipsis in the middle)
#: before they are measured: far more than LABEL_MAX_WIDTH pixels hold, and
#: a 10,000-character name is then as quick to fit as a short one.
LABEL_MAX_CHARS = 64

#: Characters a label cannot draw (line breaks, tabs, other control characters).
_UNDRAWABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")

#: A map is drawn as signed only if its smaller side exceeds this fraction of its larger one.
SIGN_TOLERANCE = 1e-4

#: ``robust`` scaling spans these percentiles. On photos, the Harris response
#: sits within about +-0.007 while one corner reaches 1.04: the 1 % of pixels
#: on each side that are clipped hold such peaks, and the rest gets the grey levels.
ROBUST_PERCENTILES = (1.0, 99.0)

#: ``asinh`` scaling is linear up to about this quantile of the nonzero
#: magnitudes, and logarithmic beyond. A larger one hides the corner maps
#: again: of the Harris response on photos, 0.58 of the pixels stand out
#: from the background at the median, 0.38 at 0.75, 0.25 at 0.9
#: (``bench/readability.py``'s measure).
ASINH_SOFTENING_QUANTILE = 0.5


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


def symmetric_range(lo, hi):
    """(low, high) for the range lo..hi: made symmetric when it crosses zero, so zero
    sits mid-scale and the sign of a response stays readable."""
    if lo < 0 < hi:
        m = max(-lo, hi)
        if min(-lo, hi) <= SIGN_TOLERANCE * m:
            # One side is only rounding noise (an FFT of a non-negative map
            # leaves values like -1e-9): treat the map as one-signed.
            return (0.0, hi) if hi == m else (lo, 0.0)
        return -m, m
    return lo, hi


@dataclass(frozen=True)
class Scale:
    """How values become the levels 0..255 of a picture (see ``fit_scale``).

    ``low`` and ``high`` are the values drawn as level 0 and 255; values
    beyond them are clipped. Between them the levels are linear in the value,
    except for ``asinh``, where they are linear in asinh(value / softening).
    A flat range (high <= low) draws every value at level 0.
    """

    method: str
    low: float
    high: float
    softening: float = 0.0

    def levels(self, m):
        """uint8 levels of the array ``m``."""
        if self.method != "asinh":
            return to_uint8(m, self.low, self.high)
        ends = np.arcsinh(np.array([self.low, self.high], np.float64) / self.softening)
        return _levels_of(asinh32(np.asarray(m, np.float32), self.softening), *ends)

    def value_at(self, fraction):
        """The value drawn at ``fraction`` (0 to 1) of the scale: the inverse of ``levels``."""
        if self.method != "asinh":
            return self.low + fraction * (self.high - self.low)
        lo, hi = np.arcsinh(np.array([self.low, self.high]) / self.softening)
        return float(self.softening * np.sinh(lo + fraction * (hi - lo)))

    def record(self, per, cmap):
        """The manifest's ``normalization`` entry: enough to map the PNG back to values."""
        entry = {"method": self.method, "per": per, "low": self.low, "high": self.high, "colormap": cmap}
        if self.method == "asinh":
            entry["softening"] = self.softening
        return entry


def asinh32(x, softening=None):
    """``np.arcsinh`` of a float32 array (of ``x / np.float32(softening)`` when given),
    as sign(x) * log(|x| + sqrt(x^2 + 1)).

    numpy's log and sqrt run vectorised and its arcsinh does not: on 2^20
    values this took 14-18 ms against 54. Within 4e-6 of the float64 value,
    and 1.4e-4 of it relative (at worst just above 1e-3; arcsinh's own float32
    error is 1e-7): under a tenth of a level unless the map's whole range spans
    less than 0.01 in asinh (drawn in 256 levels). Below 1e-3, asinh(x) is x
    to float32 precision and log(1 + x) is not, so x is kept; above 1e18 the
    square would overflow, and asinh(x) is log(2x). Two float32 arrays are
    made, as the pictures of a run make dozens of these each image.
    """
    if softening is None:
        a = np.abs(x)
    else:  # x / softening has the sign of x: the division makes the one array |x / softening| needs
        a = np.divide(x, np.float32(softening))
        np.abs(a, out=a)
    with np.errstate(over="ignore"):
        t = np.square(a)
    t += 1
    np.sqrt(t, out=t)
    t += a
    np.log(t, out=t)
    np.copyto(t, a, where=a < np.float32(1e-3))
    if np.fmax.reduce(a, axis=None, initial=0) > np.float32(1e18):  # fmax: NaNs are passed over
        large = a > np.float32(1e18)
        t[large] = np.log(a[large]) + np.float32(np.log(2.0))
    return np.copysign(t, x, out=t)


def quantile(values, q, *, overwrite=False):
    """``np.quantile(values, q)`` (linear interpolation) of a flat array, in one
    partition: the next order statistic is the least value above the cut.
    On a 512x512 map it takes 1.5 ms where np.quantile, which partitions
    twice, takes 3.4 (and a run draws dozens of maps per image). With
    ``overwrite``, ``values`` is partitioned in place rather than copied."""
    position = (values.size - 1) * q
    k = int(position)
    if overwrite:
        values.partition(k)
        parted = values
    else:
        parted = np.partition(values, k)
    low = float(parted[k])
    if k + 1 >= values.size or position == k:
        return low
    return low + (position - k) * (float(parted[k + 1:].min()) - low)


def fit_scale(values, method, span=None):
    """The ``Scale`` that draws ``values`` (one map, or every map of a layer) by ``method``;
    ``span`` is their (min, max) when the caller has it already.

    - ``minmax``: min to max.
    - ``robust``: the 1st to the 99th percentile (``ROBUST_PERCENTILES``);
      the rest is clipped, so a few extreme pixels no longer set the scale
      for all others. When those percentiles coincide (a map that is almost
      all one value), min to max instead, so the few other pixels still show.
    - ``asinh``: min to max on the curve asinh(value / softening), linear
      for values small against the softening and logarithmic beyond: weak
      and strong responses both show and nothing is clipped. The softening
      is the median magnitude of the nonzero values, so a typical response
      lands well inside the scale (``ASINH_SOFTENING_QUANTILE``).
    - ``none``: 0 to 1, the range of input images.

    A range that crosses zero is made symmetric (``symmetric_range``), so
    zero is mid-scale.
    """
    if method not in SCALE_METHODS:
        raise ValueError(f"normalisation must be one of {SCALE_METHODS}, but got {method!r}")
    if method == "none":
        return Scale("none", 0.0, 1.0)
    low, high = symmetric_range(*(span or value_range(values)))
    if method == "robust":
        p_lo, p_hi = (float(p) for p in np.percentile(values, ROBUST_PERCENTILES))
        if low < 0 < high:
            p_hi = max(-p_lo, p_hi)
            p_lo = -p_hi
        else:  # one-signed: keep the side that symmetric_range set to zero (rounding noise) at zero
            p_lo, p_hi = max(p_lo, low), min(p_hi, high)
        if p_hi > p_lo:
            low, high = p_lo, p_hi
    if method == "asinh":
        magnitudes = values[values != 0]
        np.abs(magnitudes, out=magnitudes)
        softening = quantile(magnitudes, ASINH_SOFTENING_QUANTILE, overwrite=True) if magnitudes.size else 0.0
        # Every value zero: a flat scale, with a softening that keeps the curve defined.
        return Scale("asinh", low, high, softening) if softening > 0 else Scale("asinh", 0.0, 0.0, 1.0)
    return Scale(method, low, high)


def to_uint8(m, low, high):
    """Map values in [low, high] to 0..255 (clipped); a flat range gives zeros."""
    if not high > low:
        return np.zeros(np.shape(m), np.uint8)
    return _levels_of(np.array(m, np.float32), low, high)


def _levels_of(scaled, low, high):
    """``to_uint8`` of a float32 array that is ours to overwrite: the same float32 steps,
    (value - low) * (255 / (high - low)) + 0.5 clipped to [0, 255], each in place."""
    if not high > low:
        return np.zeros(scaled.shape, np.uint8)
    scaled -= np.float32(low)
    scaled *= np.float32(255.0 / (high - low))
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def colorize(levels, cmap):
    """uint8 levels (H, W) -> a Pillow image: mode L for gray, RGB otherwise."""
    if cmap == "gray":
        return Image.fromarray(levels, mode="L")
    return Image.fromarray(colormap_lut(cmap)[levels], mode="RGB")


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


def fit_label(draw, text, width, font, length=None):
    """The label, shortened with an ellipsis in the middle if it is wider than ``width``.

    The longest fitting form is found by bisection over the characters kept
    (the width grows with them), so a label takes a handful of measurements.
    ``length`` is the label's width when the caller measured it already.
    """
    text = label_text(text)
    if (length if length is not None else draw.textlength(text, font=font)) <= width:
        return text
    fits, too_long = 0, len(text)  # characters kept: _middle(text, fits) fits, too_long does not
    while too_long - fits > 1:
        keep = (fits + too_long) // 2
        if draw.textlength(_middle(text, keep), font=font) <= width:
            fits = keep
        else:
            too_long = keep
    return _middle(text, fits) if fits else "…"


def _thumbnail_size(size):
    """(thumbnail's (width, height), its scale) for a picture of ``size``."""
    w0, h0 = size
    longest = max(w0, h0)
    scale = min(1.0, GRID_TILE_MAX / longest) if longest > GRID_TILE_MIN else GRID_TILE_MIN / longest
    return (max(1, round(w0 * scale)), max(1, round(h0 * scale))), scale


def thumbnail(image):
    """``image`` resized for a grid: the longer side between GRID_TILE_MIN and
    GRID_TILE_MAX (nearest-neighbour when enlarging, so pixels stay visible)."""
    size, scale = _thumbnail_size(image.size)
    if size == image.size:
        return image
    if scale >= 1:
        return image.resize(size, Image.Resampling.NEAREST)
    factor = round(1 / scale)
    if image.size == (size[0] * factor, size[1] * factor):
        return image.reduce(factor)  # a box filter, several times faster than resize
    return image.resize(size, Image.Resampling.BILINEAR)


def grid(tiles, labels, *, notes=None, footer=None, background=BACKGROUND):
    """Lay out every tile (Pillow images of one size) with its label above it.

    Tiles are first passed through ``thumbnail``. Columns: ceil(sqrt(count)).
    Nothing is dropped. ``notes`` (one string per tile, such as its value
    range) adds a dimmer second label line; ``footer`` (a picture, such as a
    colour bar) is set under the tiles.
    """
    return GridFrame(tiles[0].size, labels, notes=notes, footer=footer, background=background).fill(tiles)


class GridFrame:
    """A ``grid`` drawn before its tiles exist: the labels and footer now, the tiles (``fill``) later.

    Text is the slow part of a grid (FreeType renders every glyph, holding
    the GIL: 110 labels took 30 ms), so ``cnn apply`` draws each layer's
    frame while its maps are still being drawn on other threads, and only
    pastes the tiles once they are done.
    """

    def __init__(self, picture_size, labels, *, notes=None, footer=None, background=BACKGROUND):
        lines = [[label_text(label)] for label in labels]
        if notes is not None:
            lines = [line + [label_text(note)] for line, note in zip(lines, notes)]
        count = len(lines)
        tw, th = _thumbnail_size(picture_size)[0]
        label_h = LABEL_HEIGHT * len(lines[0])
        font = _font()
        # Cells are wide enough for the longest label, up to LABEL_MAX_WIDTH;
        # longer names are shortened in the middle.
        lengths = {text: font.getlength(text) for line in lines for text in line}  # measured once each
        cell_w = max(tw, min(LABEL_MAX_WIDTH, math.ceil(max(lengths.values())) + 2))
        cols = math.ceil(math.sqrt(count))
        rows = math.ceil(count / cols)
        width = cols * cell_w + (cols + 1) * GAP
        height = rows * (th + label_h) + (rows + 1) * GAP
        if footer is not None:
            width = max(width, footer.size[0] + 2 * GAP)
            height += footer.size[1] + GAP
        self.canvas = canvas = Image.new("RGB", (width, height), background)
        draw = ImageDraw.Draw(canvas)
        self.corners = []  # where each tile goes
        for i, line in enumerate(lines):
            r, c = divmod(i, cols)
            x = GAP + c * (cell_w + GAP)
            y = GAP + r * (th + label_h + GAP)
            for k, (text, fill) in enumerate(zip(line, (TEXT, NOTE_TEXT))):
                draw.text((x, y + 1 + k * LABEL_HEIGHT), fit_label(draw, text, cell_w, font, lengths[text]),
                          fill=fill, font=font)
            self.corners.append((x + (cell_w - tw) // 2, y + label_h))
        if footer is not None:
            canvas.paste(footer.convert("RGB"), (GAP, height - GAP - footer.size[1]))

    def fill(self, tiles):
        """The grid: ``tiles`` (the pictures, or their thumbnails) pasted into the frame."""
        for tile, corner in zip(tiles, self.corners):
            self.canvas.paste(thumbnail(tile).convert("RGB"), corner)
        return self.canvas


def format_value(v):
    """A value in at most 3 significant digits: 0.000235, -1.2, 3.4e+06."""
    return f"{v:.3g}"


def range_note(lo, hi):
    """A map's value range as a short label, "-0.8…1.2" (one value when the map is constant)."""
    return format_value(lo) if lo == hi else f"{format_value(lo)}…{format_value(hi)}"


def colorbar(scale, cmap, width, title=""):
    """A horizontal colour bar for ``scale``: the ramp of ``cmap`` over ``width`` pixels, with
    the value at each tick (``Scale.value_at``, so asinh ticks are spaced as drawn) and ``title``
    above. The ends of a robust scale read "<=" and ">=": clipped values are drawn there."""
    font = _font()
    ramp = colormap_lut(cmap)[np.linspace(0, 255, width).round().astype(np.uint8)]
    bar = Image.fromarray(np.ascontiguousarray(np.repeat(ramp[None], COLORBAR_HEIGHT, axis=0)), mode="RGB")
    canvas = Image.new("RGB", (width, 2 * LABEL_HEIGHT + COLORBAR_HEIGHT + 2), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((0, 1), fit_label(draw, title, width, font), fill=NOTE_TEXT, font=font)
    canvas.paste(bar, (0, LABEL_HEIGHT))
    for fractions in ((0, 0.25, 0.5, 0.75, 1), (0, 0.5, 1), (0, 1)):
        texts = [format_value(scale.value_at(f)) for f in fractions]
        if scale.method == "robust":
            texts[0], texts[-1] = "<=" + texts[0], ">=" + texts[-1]
        widths = [font.getlength(t) for t in texts]
        # Fewer ticks when their labels would touch.
        if sum(widths) + COLORBAR_TICK_GAP * (len(texts) - 1) <= width:
            break
    y = LABEL_HEIGHT + COLORBAR_HEIGHT
    for f, text, w in zip(fractions, texts, widths):
        x = round(f * (width - 1))
        draw.line([(x, y), (x, y + 2)], fill=TEXT)
        left = min(max(0, x - w / 2), width - w)
        draw.text((left, y + 2), text, fill=TEXT, font=font)
    return canvas


def bar_axis(values):
    """The value axis of a bar chart of ``values``: from min(0, min) to max(0, max), so
    every bar starts at zero."""
    lo, hi = value_range(values)
    return min(0.0, lo), max(0.0, hi)


def bar_chart(values, labels, low, high):
    """One row per value: its label, a bar from zero on the axis ``low``..``high``
    (``bar_axis``; positive bars warm, negative cool, one pixel at least for a
    nonzero value), and the value. For 1x1 maps and feature vectors, whose
    pictures would be single pixels."""
    font = _font()
    labels = [label_text(label) for label in labels]
    texts = [format_value(float(v)) for v in values]
    label_w = min(LABEL_MAX_WIDTH, math.ceil(max(font.getlength(t) for t in labels)) + 2)
    value_w = math.ceil(max(font.getlength(t) for t in texts)) + 2
    width = label_w + BAR_AXIS_WIDTH + value_w + 4 * GAP
    canvas = Image.new("RGB", (width, len(texts) * BAR_ROW + 2 * GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    left = label_w + 2 * GAP
    span = high - low

    def x_of(v):
        return left + (round((v - low) / span * (BAR_AXIS_WIDTH - 1)) if span > 0 else 0)

    zero = x_of(0.0)
    for i, (v, label, text) in enumerate(zip(values, labels, texts)):
        y = GAP + i * BAR_ROW
        draw.text((GAP, y + 1), fit_label(draw, label, label_w, font), fill=TEXT, font=font)
        end = x_of(float(v))
        if v != 0 and end == zero:
            end += 1 if v > 0 else -1
        if end != zero:
            draw.rectangle([(min(zero, end), y + 3), (max(zero, end), y + BAR_ROW - 3)],
                           fill=POSITIVE_BAR if v > 0 else NEGATIVE_BAR)
        draw.text((left + BAR_AXIS_WIDTH + GAP, y + 1), text, fill=TEXT, font=font)
    draw.line([(zero, GAP), (zero, canvas.size[1] - GAP)], fill=NOTE_TEXT)
    return canvas


class LayerPictures:
    """The pictures of one layer: its maps (C, H, W), named ``names``, scaled by
    ``method`` (``fit_scale``) over each map or over the whole layer (``per``).

    A layer of 1x1 maps (global pooling) is drawn as bars instead, on one
    axis for the layer (``bar_chart``): a map of one pixel has no range to
    scale over, and its picture would be a single black pixel.
    """

    def __init__(self, maps, names, method, per, cmap, ranges=None):
        self.maps, self.names, self.method, self.cmap = maps, list(names), method, cmap
        #: (min, max) of each map, measured once: for the scales and the grid's notes.
        self.ranges = ranges if ranges is not None else [value_range(m) for m in maps]
        layer_span = (min(lo for lo, _ in self.ranges), max(hi for _, hi in self.ranges))
        self.vector = maps.shape[1:] == (1, 1)
        self.per = "layer" if self.vector else per
        if self.vector:
            self._scales = [Scale("bars", *bar_axis(maps))] * len(maps)  # one value per map
        elif per == "layer":
            self._scales = [fit_scale(maps, method, layer_span)] * len(maps)
        else:  # fitted as each map is drawn, so that threads drawing different maps fit theirs side by side
            self._scales = [None] * len(maps)

    def scale(self, c):
        """Map c's ``Scale``."""
        if self._scales[c] is None:
            self._scales[c] = fit_scale(self.maps[c], self.method, self.ranges[c])
        return self._scales[c]

    def record(self, c):
        """Map c's ``normalization`` entry for the manifest."""
        return self.scale(c).record(self.per, self.cmap)

    def image(self, c):
        """Map c's picture: its levels in the colour map, or its bar with name and value."""
        scale = self.scale(c)
        if self.vector:
            return bar_chart(self.maps[c].ravel(), self.names[c:c + 1], scale.low, scale.high)
        return colorize(scale.levels(self.maps[c]), self.cmap)

    def grid(self, tiles):
        """Every map's picture (``tiles``, thumbnails will do) under its name and value range,
        and a colour bar when one scale serves the whole layer; for 1x1 maps, the bar chart."""
        return self.grid_frame().fill(tiles)

    def grid_frame(self):
        """``grid``'s frame (``GridFrame``), drawn before the pictures are; for 1x1 maps, the
        finished bar chart, whose ``fill`` takes no tiles."""
        scale = self.scale(0)
        if self.vector:
            return _Drawn(bar_chart(self.maps.ravel(), self.names, scale.low, scale.high))
        notes = [range_note(*r) for r in self.ranges]
        footer = None
        if self.per == "layer":
            footer = colorbar(scale, self.cmap, COLORBAR_WIDTH, f"one scale for the layer ({scale.method})")
        return GridFrame(self.maps.shape[:0:-1], self.names, notes=notes, footer=footer)


class _Drawn:
    """A picture that needs no tiles, with a frame's ``fill``."""

    def __init__(self, picture):
        self.picture = picture

    def fill(self, tiles):
        return self.picture


#: The tint and letter of each channel of a 3-channel (RGB) kernel in ``kernel_tiles``.
CHANNEL_TINTS = (("R", (1.0, 0.4, 0.4)), ("G", (0.4, 1.0, 0.4)), ("B", (0.45, 0.55, 1.0)))


#: The copy of an input that its page shows, kept in its folder so that a copied or zipped
#: OUT keeps it: a JPEG whose longer side is at most INPUT_COPY_MAX (a JPEG, so that the
#: folder's PNGs stay one per map and one grid per layer; a 20 Mpx photo would copy at 60 MB).
INPUT_COPY_MAX, INPUT_COPY_QUALITY = 1024, 90


def input_copy(path, *, comment):
    """The image file ``path`` (already read once by the command) as JPEG bytes carrying
    ``comment``: grey when the file is (8-bit grey), else RGB; turned as its EXIF says, its
    longer side at most INPUT_COPY_MAX. A grey JPEG shows the same picture as an RGB one
    and took 2.9 ms of CPU for a 512² PNG where converting to RGB took 4.3."""
    import warnings

    from PIL import ImageOps

    from .fileio import open_regular

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the command has checked its size
    try:
        with open_regular(path, what="an image") as fh, warnings.catch_warnings(), Image.open(fh) as im:
            warnings.simplefilter("ignore")
            im.draft("RGB", (INPUT_COPY_MAX, INPUT_COPY_MAX))
            picture = ImageOps.exif_transpose(im)
            if picture.mode != "L":
                picture = picture.convert("RGB")
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    picture.thumbnail((INPUT_COPY_MAX, INPUT_COPY_MAX))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=INPUT_COPY_QUALITY, comment=comment)
    return buf.getvalue()


def kernel_tiles(kernels, cell=96):
    """Pictures of kernels on a diverging grey scale: zero is mid-grey, ± the
    kernel's largest magnitude are white and black. A multichannel kernel
    (C, kH, kW) shows its channels side by side; those of a 3-channel kernel,
    which reads R, G and B, are tinted in their colour and lettered below.
    Returns one RGB tile per kernel."""
    tiles = []
    for weights in kernels:
        w = np.asarray(weights, dtype=np.float64)
        w = w[None] if w.ndim == 2 else w
        m = float(np.abs(w).max())
        parts = [to_uint8(ch, -m, m) if m > 0 else np.full(ch.shape, 128, np.uint8) for ch in w]
        strip = np.concatenate([np.pad(p, ((0, 0), (0, 1)), constant_values=0) for p in parts], axis=1)[:, :-1]
        px = max(1, cell // max(strip.shape))
        pixels = np.repeat(np.kron(strip, np.ones((px, px), np.uint8))[..., None], 3, axis=2)
        if len(parts) == len(CHANNEL_TINTS):
            tiles.append(_lettered(pixels, (w.shape[2] + 1) * px))
        else:
            tiles.append(Image.fromarray(pixels, mode="RGB"))
    side = max(max(t.size) for t in tiles)
    # Pad every tile to one size so the grid is regular.
    out = []
    for t in tiles:
        canvas = Image.new("RGB", (side, side), (32, 32, 32))
        canvas.paste(t, ((side - t.size[0]) // 2, (side - t.size[1]) // 2))
        out.append(canvas)
    return out


def _lettered(pixels, part_width):
    """A colour kernel's strip (H, W, 3), each channel's part (``part_width`` columns) tinted, over its letter."""
    tinted = pixels.astype(np.float32)
    for i, (_, tint) in enumerate(CHANNEL_TINTS):
        tinted[:, i * part_width:(i + 1) * part_width] *= tint
    picture = Image.fromarray(tinted.astype(np.uint8), mode="RGB")
    canvas = Image.new("RGB", (picture.size[0], picture.size[1] + LABEL_HEIGHT), (32, 32, 32))
    canvas.paste(picture, (0, 0))
    draw, font = ImageDraw.Draw(canvas), _font()
    for i, (letter, tint) in enumerate(CHANNEL_TINTS):
        x = i * part_width + (part_width - font.getlength(letter)) / 2
        draw.text((x, picture.size[1] + 1), letter, fill=tuple(int(255 * t) for t in tint), font=font)
    return canvas
