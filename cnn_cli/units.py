"""``cnn units``: what each channel of a layer responds to, as the input patches that excite it most.

For every channel of each chosen layer, the k images of a set whose
strongest response in that channel is largest, each shown as the patch of
input under that response: the receptive field of the strongest position.
An image gives at most one patch per channel (its strongest position, the
first in row-major order on a tie), so the k patches are k different
images rather than k neighbouring positions of one; ties between images go
to the one met first.

The receptive field of output (y, x) covers input rows
``y * jump + offset`` to ``y * jump + offset + size - 1`` (and likewise
columns), where, layer by layer (Araujo et al., 2019, "Computing receptive
fields of convolutional neural networks")::

    size   += (kernel extent - 1) * jump
    offset -= padding before * jump
    jump   *= stride

A layer that declares no padding (a ResNet block) centres its window. Parts
of a patch outside the image are NaN in ``patches.npz`` and drawn in the
background colour.

The images stream (``cnn_cli.stream``): only the k best patches of each
channel are kept, so memory is bounded by k x channels x patch size,
whatever the number of images.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import __version__, config, layersel, runner
from . import functional as F
from .fileio import check_writable, replace_dir, save_npz_atomic, temporary_name, write_bytes_atomic
from .imageio import MAX_PIXELS, read_image, resize
from .layersel import OptionError
from .nn import iter_nodes, topology
from .owned import foreign_files, refusal
from .stream import Progress
from .viz import fit_label, png_bytes

#: Patches are drawn with their longer side between these (nearest-neighbour when enlarged).
TILE_MIN, TILE_MAX = 48, 96
LABEL_HEIGHT, GAP = 14, 3
ROW_LABEL_MAX = 160
BACKGROUND = (32, 32, 32)


class UnitsError(ValueError):
    """``cnn units`` cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Field:
    """Where an output position's receptive field lies in the input: (rows, columns) each."""

    size: tuple
    jump: tuple
    offset: tuple

    def box(self, y, x):
        """(top, left, bottom, right) of position (y, x)'s field in input pixels; bottom and right exclusive."""
        top = y * self.jump[0] + self.offset[0]
        left = x * self.jump[1] + self.offset[1]
        return top, left, top + self.size[0], left + self.size[1]

    def to_json(self):
        return {"size": list(self.size), "jump": list(self.jump), "offset": list(self.offset)}


def _padding_before(layer, window):
    """Rows and columns of padding before a layer's first window."""
    options = getattr(layer, "options", None)
    if options is not None and "padding" in options:
        stride = F.pair("stride", options.get("stride", 1), 1)
        top, _, left, _ = F.conv_padding(options["padding"], (window[0][0], window[1][0]), (1, 1), stride)
        return top, left
    padding = getattr(layer, "padding", None)
    if padding is not None:
        return F.pair("padding", padding, 0)
    return (window[0][0] - 1) // 2, (window[1][0] - 1) // 2


def receptive_fields(layers, inputs=None):
    """The ``Field`` of each layer's outputs, or None from a global layer on. In a graph
    (``inputs``, as ``nn.topology``), a node that reads several grows the widest field."""
    inputs, _ = topology(layers, inputs)
    image = Field((1, 1), (1, 1), (0, 0))
    fields = []
    for layer, ins in zip(layers, inputs):
        before = [image if j < 0 else fields[j] for j in ins]
        window = layer.window()
        if window is None or any(f is None for f in before):
            fields.append(None)
            continue
        base = max(before, key=lambda f: f.size)
        size, jump, offset = list(base.size), list(base.jump), list(base.offset)
        pads = _padding_before(layer, window)
        for axis, (extent, stride) in enumerate(window):
            offset[axis] -= pads[axis] * jump[axis]
            size[axis] += (extent - 1) * jump[axis]
            jump[axis] *= stride
        fields.append(Field(tuple(size), tuple(jump), tuple(offset)))
    return fields


def crop(image, box):
    """The pixels of ``image`` (C, H, W) in ``box`` (top, left, bottom, right), NaN outside the image."""
    top, left, bottom, right = box
    c, h, w = image.shape
    out = np.full((c, bottom - top, right - left), np.nan, np.float32)
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(bottom, h), min(right, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top:y1 - top, x0 - left:x1 - left] = image[:, y0:y1, x0:x1]
    return out


class TopPatches:
    """The k strongest responses of every channel of one layer, and their patches, as batches stream by.

    ``values`` (C, k) best first (-inf in slots not filled yet), ``positions``
    (C, k, 2), ``inputs`` (the image path of each slot) and ``patches``
    (C, k, image channels, field rows, field columns).

    Each image offers one patch per channel (its strongest position), so a
    channel never holds more patches than images were seen: the buffers grow
    with the images, up to k, and ``-k 1000000000`` over 36 images keeps 36.
    """

    def __init__(self, channels, k, field, image_channels):
        self.k, self.field = k, field
        self.values = np.full((channels, 0), -np.inf, np.float32)
        self.positions = np.zeros((channels, 0, 2), np.int64)
        self.inputs = [[] for _ in range(channels)]
        self.patches = np.full((channels, 0, image_channels, *field.size), np.nan, np.float32)

    def add(self, maps, images, paths):
        """Take a batch: ``maps`` (N, C, h, w) of the layer, the ``images`` (N, c, H, W) they came from, their paths."""
        n, c, h, w = maps.shape
        flat = maps.reshape(n, c, h * w)
        best = flat.argmax(axis=2)                                            # (N, C)
        values = np.take_along_axis(flat, best[:, :, None], axis=2)[:, :, 0]  # (N, C)
        kept = self.values.shape[1]
        slots = min(self.k, kept + n)
        combined = np.concatenate([self.values, values.T], axis=1)            # (C, kept + N): kept first
        order = np.argsort(-combined, axis=1, kind="stable")[:, :slots]
        if slots == kept and np.all(order == np.arange(kept)):
            return  # nothing in this batch makes any channel's top k
        needed = 2 * 4 * c * slots * int(np.prod(self.patches.shape[2:]))  # the old and the new patches
        limit = config.memory_limit()
        if needed > limit:
            raise UnitsError(f"the top {slots} patches of {c} channels take about {config.describe_bytes(needed)}, "
                              f"more than the memory limit of {config.describe_bytes(limit)}; use a smaller -k")
        new_values = np.take_along_axis(combined, order, axis=1)
        positions = np.zeros((c, slots, 2), np.int64)
        patches = np.full((c, slots, *self.patches.shape[2:]), np.nan, np.float32)
        inputs = [[None] * slots for _ in range(c)]
        for ch in range(c):
            for slot, source in enumerate(order[ch]):
                if source < kept:
                    positions[ch, slot] = self.positions[ch, source]
                    patches[ch, slot] = self.patches[ch, source]
                    inputs[ch][slot] = self.inputs[ch][source]
                else:
                    b = source - kept
                    y, x = divmod(int(best[b, ch]), w)
                    positions[ch, slot] = (y, x)
                    patches[ch, slot] = crop(images[b], self.field.box(y, x))
                    inputs[ch][slot] = str(paths[b])
        self.values, self.positions, self.patches, self.inputs = new_values, positions, patches, inputs

    def filled(self, ch):
        """How many slots of channel ``ch`` hold a patch (fewer than k when there were fewer images)."""
        return int(np.sum(np.isfinite(self.values[ch])))


# --------------------------------------------------------------------------- pictures


def _tile(patch, side):
    """A patch (c, R, R) in [0, 1] as an RGB picture whose longer side is ``side``; NaN is the background."""
    rgb = np.repeat(patch, 3, axis=0) if patch.shape[0] == 1 else patch
    rgb = np.moveaxis(rgb, 0, -1)
    outside = np.isnan(rgb).any(axis=-1)
    pixels = (np.clip(np.nan_to_num(rgb), 0, 1) * 255 + 0.5).astype(np.uint8)
    pixels[outside] = BACKGROUND
    image = Image.fromarray(pixels, mode="RGB")
    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    return image.resize(size, method)


def units_grid(top, names):
    """One picture for a layer: a row per channel, labelled with its filter name, and its patches,
    each labelled with its activation."""
    font = ImageFont.load_default(size=11)
    rows, k = top.values.shape
    longest = max(top.field.size)
    side = min(TILE_MAX, max(TILE_MIN, longest))
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = min(ROW_LABEL_MAX, max(int(measure.textlength(n, font=font)) for n in names) + 2 * GAP)
    cell_w = max(side, 44)
    row_h = side + LABEL_HEIGHT + GAP
    canvas = Image.new("RGB", (label_w + k * (cell_w + GAP) + GAP, rows * row_h + GAP), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for ch in range(rows):
        y = GAP + ch * row_h
        draw.text((GAP, y + LABEL_HEIGHT + side // 2 - 6), fit_label(draw, names[ch], label_w - 2 * GAP, font),
                  fill=(230, 230, 230), font=font)
        for slot in range(top.filled(ch)):
            x = label_w + slot * (cell_w + GAP)
            draw.text((x, y), f"{top.values[ch, slot]:.3g}", fill=(200, 200, 200), font=font)
            tile = _tile(top.patches[ch, slot], side)
            canvas.paste(tile, (x + (cell_w - tile.size[0]) // 2, y + LABEL_HEIGHT))
    return canvas


# --------------------------------------------------------------------------- a run


@dataclass
class UnitsOptions:
    #: ``--layer`` values: indices, ``layer<i>``, ``last`` or kinds (each may be comma-separated).
    layers: tuple = ("last",)
    k: int = 9
    max_size: int | None = None
    max_pixels: int = MAX_PIXELS
    force: bool = False


@dataclass
class UnitsSummary(runner.Summary):
    """What a run did (``runner.Summary``; ``done``: the images read), and what units.json says of each layer."""

    layers: list = field(default_factory=list)
    output: str = ""

    @property
    def images(self):
        return self.done


def resolve_layers(pipeline, specs):
    """Sorted layer indices for ``--layer`` values (``cnn_cli.layersel``), each a layer with local receptive fields."""
    records = layersel.of(pipeline.layers, pipeline.names)
    fields = receptive_fields(pipeline.layers, pipeline.inputs)

    def refuse(record):
        if fields[record.index] is None:
            return "pools over the whole image, so its patches would be whole images"
        return None

    chosen = set()
    for spec in specs or ("",):
        chosen.update(layersel.select(records, spec, option="--layer", refuse=refuse))
    return sorted(chosen)


class UnitsSink(runner.Sink):
    """``cnn units``'s part of a run (``runner.Sink``): offer each batch's maps to the layers' ``TopPatches``."""

    def __init__(self, source, options, tops):
        self.source, self.options, self.tops = source, options, tops

    def load(self, item):
        source, options = self.source, self.options
        image = read_image(item.path, color=source.color, max_size=options.max_size, max_pixels=options.max_pixels)
        x = source.prepare(image) if source.prepare is not None else image
        shown = image if image.shape[1:] == x.shape[1:] else resize(image, *x.shape[1:])
        return runner.Loaded(item, x, shown)

    def compute(self, batch):
        _take(batch, self.source.pipeline, self.tops)

    def deliver(self, batch, output):
        for entry in batch:
            yield runner.Result(entry.item.path)


def run(inputs, out_dir, source, options, *, progress=None):
    """Find the top ``options.k`` patches of every channel of the chosen layers over ``inputs``.

    ``source`` is a ``cnn_cli.sources.Source`` (banks, pipeline or model).
    Writes ``out_dir`` whole (built under a hidden name, then renamed):
    ``layer<i>.png`` per layer, ``patches.npz`` (key ``layer<i>``: (C, min(k, images),
    image channels, rows, columns), NaN outside the image) and
    ``units.json``. An existing ``out_dir`` is refused unless
    ``options.force``. Returns a ``UnitsSummary``.
    """
    progress = progress or Progress()
    out_dir = Path(out_dir)
    pipeline = source.pipeline
    chosen = resolve_layers(pipeline, options.layers)
    if options.k < 1:
        raise OptionError(f"-k must be at least 1, but got {options.k}")
    if os.path.lexists(out_dir) and not options.force:
        raise UnitsError(f"{out_dir} exists; use --force to replace it")
    if foreign := foreign_files(out_dir):  # --force replaces only what cnn wrote
        raise UnitsError(refusal(out_dir, foreign))
    fields = receptive_fields(pipeline.layers, pipeline.inputs)
    image_channels = 3 if source.color == "rgb" else 1
    tops = {i: TopPatches(len(pipeline.channels[i]), options.k, fields[i], image_channels) for i in chosen}
    summary = UnitsSummary(output=str(out_dir))
    sink = UnitsSink(source, options, tops)
    with runner.Run(out_dir, summary, progress=progress, whole=True) as run_:
        check_writable(out_dir)  # before any image is read: a run that could not save its result is refused
        run_.stream(inputs, sink)
        if summary.interrupted:  # nothing is written: the patches of the images seen so far are incomplete
            return summary
        if summary.images == 0:
            why = f" ({len(summary.failed)} failed; the first: {summary.failed[0][1]})" if summary.failed else ""
            raise UnitsError(f"no image could be used, so there are no patches to show{why}")
        summary.layers = _write(out_dir, source, tops, options, summary)
    return summary


def _take(batch, pipeline, tops):
    """Run a batch of same-sized images through ``pipeline`` and offer each chosen layer's maps to its ``TopPatches``."""
    x = np.stack([entry.image for entry in batch])
    shown = np.stack([entry.extra for entry in batch])
    paths = [entry.item.path for entry in batch]
    for i, y in iter_nodes(pipeline.layers, pipeline.inputs, x, last=max(tops)):
        if i in tops:
            if not np.all(np.isfinite(y)):
                raise ValueError(f"layer {i} ({pipeline.layers[i].kind}) produced NaN or inf values")
            tops[i].add(y, shown, paths)


def _write(out_dir, source, tops, options, summary):
    """Write the output folder whole; returns the layers' records."""
    pipeline = source.pipeline
    staging = out_dir.parent / temporary_name(out_dir.name, ".partial")
    if os.path.lexists(staging):  # left by a killed run: this run holds the output's lock
        shutil.rmtree(staging)
    staging.mkdir(mode=0o700)
    try:
        records = []
        for i, top in tops.items():
            names = list(pipeline.channels[i])
            grid = f"layer{i}.png"
            write_bytes_atomic(staging / grid, png_bytes(units_grid(top, names)))
            channels = []
            for ch, name in enumerate(names):
                patches = [{"input": top.inputs[ch][slot], "activation": float(top.values[ch, slot]),
                            "position": [int(v) for v in top.positions[ch, slot]],
                            "box": list(top.field.box(*(int(v) for v in top.positions[ch, slot])))}
                           for slot in range(top.filled(ch))]
                channels.append({"channel": ch, "filter": name, "patches": patches})
            records.append({"index": i, "name": f"layer{i}", "kind": pipeline.layers[i].kind,
                            "description": pipeline.layers[i].describe(), "receptive_field": top.field.to_json(),
                            "grid": grid, "npz_key": f"layer{i}", "channels": channels})
        save_npz_atomic(staging / "patches.npz", {f"layer{i}": top.patches for i, top in tops.items()})
        document = {"cnn_version": __version__, "source": source.describe(), "color": source.color,
                    "k": options.k, "images": summary.images, "layers": records,
                    "failed": [{"input": p, "error": m} for p, m in summary.failed]}
        write_bytes_atomic(staging / "units.json", json.dumps(document, indent=2).encode())
        replace_dir(staging, out_dir, force=options.force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return records
