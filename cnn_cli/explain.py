"""``cnn explain``: which pixels of an image decided a model's prediction.

For a target class c with logit y^c, and the maps A^k (k = 1..K, each h x w)
of a chosen layer, each method (``METHODS``) computes a map as its paper
defines it:

- ``gradcam`` (Selvaraju et al., 2017): ReLU(sum_k w_k A^k), where w_k is the
  mean over pixels of g^k = dy^c/dA^k.
- ``gradcam++`` (Chattopadhyay et al., 2018): w_k = sum_ij a^k_ij ReLU(g^k_ij),
  with a = g^2 / (2 g^2 + sum_ab A^k_ab g^3 + 1e-6) (their eq. 19, which writes
  the higher derivatives of exp(y^c) as powers of g), and a = 0 where g = 0.
- ``hirescam`` (Draelos & Carin, 2020): ReLU(sum_k g^k * A^k), element-wise,
  so no gradient is averaged away.
- ``scorecam`` (Wang et al., 2020, Algorithm 1): each A^k, upsampled to the
  input (bilinear, corners aligned) and scaled to [0, 1], masks the input;
  the softmax over k of the masked inputs' logits y^c gives w_k.
- ``occlusion`` (Zeiler & Fergus, 2014): a square patch of the training mean
  (0 after normalisation) slides over the input; each pixel's value is the
  mean drop of the class probability over the patch positions that cover it,
  then ReLU. It needs no layer and no gradient.

These are the formulas of pytorch-grad-cam, to which ``tests/test_explain.py``
compares our maps. A map is computed at its own resolution (the layer's, or
the model's input for occlusion), resized bilinearly to the image's own
resolution (the whole image is what the model sees, stretched to its input
size), and min-max scaled to [0, 1]. A map with no positive value is written
as zeros, with a note.

``randomization_check`` is Adebayo et al.'s (2018) cascading model-parameter
randomisation: the layers' parameters are drawn again from the top down, and
after each step the map's Spearman rank correlation with the original is
reported; a method that explains the model shows it falling towards 0.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import __version__, config, layersel, runner, viz
from .choices import EXPLAIN_METHODS
from .fileio import replace_dir, temporary_name, write_bytes_atomic
from .imageio import MAX_PIXELS, image_shape, read_image
from .inputs import safe_name
from .nn import Param
from .owned import foreign_files, refusal
from .report import write_explain_index, write_or_keep
from .stream import Progress

METHODS = EXPLAIN_METHODS
GRADIENT_METHODS = ("gradcam", "gradcam++", "hirescam")

#: Masked or occluded inputs per forward pass (Score-CAM, occlusion).
BATCH = 32

#: Grad-CAM++'s term that keeps a = g^2 / (2 g^2 + ...) finite (as pytorch-grad-cam).
GRADCAM_PP_EPS = 1e-6
#: Score-CAM's term in (A - min) / (max - min + eps) (as pytorch-grad-cam).
SCORECAM_EPS = 1e-8

#: A CAM whose largest value is below this fraction of its terms' magnitudes is rounding noise (zero).
ROUNDING = 1e-5

#: Predicted classes recorded in explain.json, at least (more when more targets are asked for).
PREDICTIONS = 5

#: Overlays of smaller images are enlarged (nearest neighbour) to this shorter side, so the legend fits.
OVERLAY_MIN_SIDE = 192
#: ... but never past this longer side: a 1x100000 strip enlarged 192 times would be 19 Mpx wide
#: (11 GB of overlay), so a long thin image is drawn at its own size.
OVERLAY_MAX_SIDE = 2048
#: The legend's largest font (pixels), whatever the overlay's width.
LEGEND_MAX_FONT = 32
#: How much of the overlay is the colour map (the rest is the image).
OVERLAY_ALPHA = 0.5
DEFAULT_CMAP = "magma"


class ExplainError(ValueError):
    """An explanation cannot be made as asked; the message says what to change."""


class OptionError(ExplainError, layersel.OptionError):
    """An option's value does not fit the model or the method (a usage error)."""


# --------------------------------------------------------------------------- layers


def map_layers(network):
    """Indices of the layers whose outputs are maps (C, H, W) and that feed further layers."""
    return [i for i, shape in enumerate(network.shapes[:-1]) if len(shape) == 3]


def default_layer(network):
    """The last convolutional layer's rectified maps: the last conv or residual layer
    with maps, moved on over the batch norm and activation that follow it.

    LeNet and AlexNet: the ReLU after the last conv; ResNet: the last residual
    block (its output is rectified); NetVLAD: the ReLU after the backbone's
    last conv, before the aggregation.
    """
    layers, maps = network.layers, set(map_layers(network))
    convs = [i for i in maps if layers[i].cam_source]
    if not convs:
        raise ExplainError("the model has no conv layer with maps for a CAM to weigh; use --method occlusion")
    i = max(convs)
    while i + 1 in maps and layers[i + 1].keeps_maps:
        i += 1
    return i


def resolve_layer(network, spec):
    """The layer index for ``--layer spec`` (``cnn_cli.layersel``); None gives ``default_layer``.
    The layer must give maps to later layers."""
    if spec is None:
        return default_layer(network)
    maps = set(map_layers(network))

    def refuse(record):
        if record.index in maps:
            return None
        return f"gives {'a vector' if len(network.shapes[record.index]) != 3 else 'the logits'}, not maps"

    records = layersel.of(network.layers, network.names)
    return layersel.select_one(records, spec, option="--layer", refuse=refuse)


def layer_record(network, index):
    """What explain.json says about a layer."""
    if index is None:
        return None
    record = {"index": index, "name": f"layer{index}", "kind": network.layers[index].kind,
              "shape": list(network.shapes[index])}
    if network.names[index] != str(index):  # a graph's node has a name of its own
        record["node"] = network.names[index]
    return record


# --------------------------------------------------------------------------- maps


def softmax(logits):
    """Row-wise softmax of (N, classes) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def occlusion_positions(size, patch, stride):
    """Start positions of a ``patch`` sliding by ``stride`` over ``size`` pixels; the last one
    always ends at the border, so every pixel is covered."""
    last = size - patch
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return starts


def default_patch(size):
    """Occlusion's default patch side for a model input of ``size`` pixels: an eighth of it."""
    return max(1, size // 8)


class Explainer:
    """Maps of one method for a model (a ``Network``) at one layer.

    ``layer`` is a layer index (CAM methods); ``patch`` and ``stride`` are
    occlusion's, in pixels of the model's input (defaults: an eighth of the
    input, and half the patch).
    """

    def __init__(self, network, method, *, layer=None, patch=None, stride=None):
        if method not in METHODS:
            raise OptionError(f"--method must be one of {', '.join(METHODS)}, but got {method!r}")
        self.network, self.method = network, method
        self.layer = self.patch = self.stride = None
        if method == "occlusion":
            size = min(network.input_shape[1:])
            self.patch = patch or default_patch(size)
            self.stride = stride or max(1, self.patch // 2)
            if self.patch > size:
                raise OptionError(f"--patch {self.patch} is larger than the model's input ({size} pixels)")
            if self.stride > self.patch:
                raise OptionError(f"--stride {self.stride} is larger than --patch {self.patch}, which would leave "
                                  "pixels between the patch's positions without a value")
        else:
            self.layer = resolve_layer(network, layer)
            self.head = network.segment(0, self.layer + 1)
            self.tail = network.segment(self.layer + 1)

    def probabilities(self, x):
        """Class probabilities (classes,) of one normalised input ``x`` (1, C, S, S)."""
        return softmax(self.network.forward(x))[0]

    def maps(self, x, targets):
        """Maps (len(targets), h, w), float32, >= 0, not yet scaled, for the class indices ``targets``:
        at the layer's resolution, or the input's for occlusion."""
        targets = list(targets)
        if self.method == "occlusion":
            return self._occlusion(x, targets)
        a = self.head.forward(x)
        if self.method == "scorecam":
            return self._scorecam(x, a, targets)
        k = len(targets)
        self.tail.forward(np.repeat(a, k, axis=0), keep=True)
        seed = np.zeros((k, self.network.shapes[-1][0]), np.float32)
        seed[np.arange(k), targets] = 1
        g = self.tail.backward(seed)
        a = np.repeat(a, k, axis=0)
        if self.method == "hirescam":
            return _weighted_sum(g, a)
        if self.method == "gradcam":
            weights = g.mean(axis=(2, 3))
        else:
            g2 = g * g
            alpha = g2 / (2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g2 * g + GRADCAM_PP_EPS)
            alpha = np.where(g != 0, alpha, 0)
            weights = (np.maximum(g, 0) * alpha).sum(axis=(2, 3))
        return _weighted_sum(weights[:, :, None, None], a)

    def _scorecam(self, x, a, targets):
        maps = a[0]
        size = x.shape[2:]
        masks = resize_map(maps, *size, align_corners=True)
        lo = masks.min(axis=(1, 2), keepdims=True)
        hi = masks.max(axis=(1, 2), keepdims=True)
        masks = (masks - lo) / (hi - lo + np.float32(SCORECAM_EPS))
        scores = np.empty((len(maps), len(targets)), np.float64)
        for start in range(0, len(maps), BATCH):
            masked = x * masks[start:start + BATCH, None]
            scores[start:start + BATCH] = self.network.forward(masked.astype(np.float32))[:, targets]
        weights = softmax(scores.T)  # (targets, K): a softmax over the maps
        return _weighted_sum(weights[:, :, None, None], maps[None])

    def _occlusion(self, x, targets):
        _, _, h, w = x.shape
        ph, pw = min(self.patch, h), min(self.patch, w)
        windows = [(y, x0) for y in occlusion_positions(h, ph, self.stride)
                   for x0 in occlusion_positions(w, pw, self.stride)]
        base = softmax(self.network.forward(x).astype(np.float64))[0, targets]
        total = np.zeros((len(targets), h, w), np.float64)
        count = np.zeros((h, w), np.float64)
        for start in range(0, len(windows), BATCH):
            chunk = windows[start:start + BATCH]
            occluded = np.repeat(x, len(chunk), axis=0)
            for j, (y, x0) in enumerate(chunk):
                occluded[j, :, y:y + ph, x0:x0 + pw] = 0
            drops = base - softmax(self.network.forward(occluded).astype(np.float64))[:, targets]
            for j, (y, x0) in enumerate(chunk):
                total[:, y:y + ph, x0:x0 + pw] += drops[j][:, None, None]
                count[y:y + ph, x0:x0 + pw] += 1
        return np.maximum(total / count, 0).astype(np.float32)


def _weighted_sum(weights, a):
    """ReLU(sum_k weights_k * a_k) for (targets, K, h, w) operands: maps (targets, h, w).

    A map whose largest value is below ``ROUNDING`` of the largest sum of its
    terms' magnitudes is rounding noise, and is zero. (At NetVLAD's input the
    terms of HiResCAM cancel exactly: each pixel's descriptor is L2-normalised,
    so the model does not change when it is scaled, and sum_k A_k dy/dA_k = 0.)
    """
    terms = weights * a
    cam = terms.sum(axis=1)
    magnitude = np.abs(terms).sum(axis=1).max(axis=(1, 2))
    cam[cam.max(axis=(1, 2)) <= ROUNDING * magnitude] = 0
    return np.maximum(cam, 0).astype(np.float32)


def _interpolation(n_in, n_out, align_corners):
    """The (n_out, n_in) matrix of 1-D linear interpolation."""
    i = np.arange(n_out, dtype=np.float64)
    if align_corners:
        src = i * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    else:
        src = np.clip((i + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    low = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    high = np.minimum(low + 1, n_in - 1)
    frac = src - low
    out = np.zeros((n_out, n_in), np.float64)
    np.add.at(out, (np.arange(n_out), low), 1 - frac)
    np.add.at(out, (np.arange(n_out), high), frac)
    return out.astype(np.float32)


def resize_map(m, height, width, *, align_corners=False):
    """Bilinear resize of a map (h, w), or a stack (K, h, w), to (height, width).

    Pixel centres at half-integers with the edges clamped, as OpenCV's
    INTER_LINEAR and torch's ``align_corners=False``; with ``align_corners``,
    the corner pixels' centres meet, as torch's ``UpsamplingBilinear2d``.
    """
    m = np.asarray(m, np.float32)
    rows = _interpolation(m.shape[-2], height, align_corners)
    cols = _interpolation(m.shape[-1], width, align_corners)
    return (rows @ m @ cols.T).astype(np.float32)


def scale_map(m):
    """(m - min) / (max - min), float32 in [0, 1], and a note when the map is flat (then all zeros)."""
    lo, hi = float(m.min()), float(m.max())
    if not hi > lo:
        why = "no pixel has positive evidence" if hi <= 0 else "the map is constant"
        return np.zeros(m.shape, np.float32), f"all-zero map: {why} for this class"
    return ((m - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32), None


def spearman(a, b):
    """Spearman's rank correlation of two maps (ties get their mean rank), or None when either is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.ravel(a)), rankdata(np.ravel(b))
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


#: The randomisation check passes when, with every layer re-initialised, the map's Spearman
#: correlation with the original is below this in magnitude: the map depends on the weights.
#: (Adebayo et al. 2018 show edge detectors staying near 1 and faithful maps falling to about 0.)
CHECK_PASSES_BELOW = 0.5


def check_passed(steps):
    """Whether a ``randomization_check`` passed (see CHECK_PASSES_BELOW), or None when its last
    map was constant (no correlation to read)."""
    last = steps[-1]["spearman"] if steps else None
    return None if last is None else abs(last) < CHECK_PASSES_BELOW


def randomization_check(network, x, target, method, *, layer=None, patch=None, stride=None, seed=0):
    """Adebayo et al.'s (2018) cascading randomisation for one input ``x`` and class index ``target``.

    On a copy of ``network``, every layer with parameters is initialised
    again (as ``cnn train`` initialises it: He-normal weights, zero biases,
    batch norm back to the identity), from the logits down to the first
    layer, one layer more at each step. Returns one dict per step: the layer
    randomised (index, name, kind) and the Spearman rank correlation of the
    map (at its own resolution) with the original one, or None when either
    map is constant (e.g. all zero).
    """
    net = copy.deepcopy(network)
    original = Explainer(net, method, layer=layer, patch=patch, stride=stride).maps(x, [target])[0]
    rng = np.random.default_rng(seed)
    steps = []
    for i in reversed(range(len(net.layers))):
        layer_i = net.layers[i]
        if not isinstance(layer_i, Param):
            continue
        layer_i.build(net.in_shape(i), rng)
        again = Explainer(net, method, layer=layer, patch=patch, stride=stride).maps(x, [target])[0]
        steps.append({"layer": i, "name": f"layer{i}", "kind": layer_i.kind, "spearman": spearman(original, again)})
    return steps


# --------------------------------------------------------------------------- pictures


def overlay_scale(height, width):
    """The whole factor an image is enlarged by in its overlay: to OVERLAY_MIN_SIDE on its shorter
    side, but never past OVERLAY_MAX_SIDE on its longer side (1 when it is that long already)."""
    return max(1, min(-(-OVERLAY_MIN_SIDE // min(height, width)), OVERLAY_MAX_SIDE // max(height, width)))


def memory_needed(height, width, targets):
    """Bytes that explaining one (height, width) image for ``targets`` classes takes, about: the image
    as float32 and bytes (24 per pixel), and per class its map, scaled map and their temporaries
    (26 per pixel) and its overlay (6 per enlarged pixel, blended and enlarged)."""
    return height * width * (24 + targets * (26 + 6 * overlay_scale(height, width) ** 2))


def overlay_image(image, cam, caption, cmap=DEFAULT_CMAP):
    """The image (3, H, W) in [0, 1] with ``cam`` (H, W) in [0, 1] blended in, in colour map ``cmap``,
    and a legend below it: the colour scale from 0 to 1 and ``caption``. Small images are enlarged."""
    heat = Image.fromarray(viz.colormap_lut(cmap)[viz.to_uint8(cam, 0.0, 1.0)], mode="RGB")
    base = Image.fromarray(np.moveaxis(viz.to_uint8(image, 0.0, 1.0), 0, -1), mode="RGB")
    picture = Image.blend(base, heat, OVERLAY_ALPHA)
    h, w = cam.shape
    factor = overlay_scale(h, w)
    if factor > 1:
        picture = picture.resize((w * factor, h * factor), Image.Resampling.NEAREST)
    width = picture.size[0]
    font_size = max(11, min(width // 60, LEGEND_MAX_FONT))
    font = ImageFont.load_default(size=font_size)
    band = font_size + 10
    canvas = Image.new("RGB", (width, picture.size[1] + band), (24, 24, 24))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    top = picture.size[1] + 5
    bar_w = max(24, min(width // 4, 10 * font_size))
    zero_w = int(draw.textlength("0", font=font))
    ramp = viz.colormap_lut(cmap)[np.linspace(0, 255, bar_w).astype(np.uint8)]
    bar = Image.fromarray(np.repeat(ramp[None], font_size, axis=0), mode="RGB")
    draw.text((4, top - 1), "0", fill=(230, 230, 230), font=font)
    canvas.paste(bar, (8 + zero_w, top))
    draw.text((12 + zero_w + bar_w, top - 1), "1", fill=(230, 230, 230), font=font)
    left = 20 + 2 * zero_w + bar_w
    draw.text((left, top - 1), viz.fit_label(draw, caption, width - left - 4, font), fill=(230, 230, 230), font=font)
    return canvas


# --------------------------------------------------------------------------- a run


@dataclass
class ExplainOptions:
    method: str = "gradcam"
    #: ``--layer``: an index, ``layer<i>`` or a kind; None for the default.
    layer: str | None = None
    #: Class names to explain; empty for the top ``top_k``.
    classes: tuple = ()
    top_k: int = 1
    patch: int | None = None
    stride: int | None = None
    check: bool = False
    cmap: str = DEFAULT_CMAP
    force: bool = False
    max_pixels: int = MAX_PIXELS
    #: The model file, as explain.json names it.
    model: str | None = None
    #: Write DIR/index.html, the overlays of every image (``cnn_cli.report``).
    html: bool = True


@dataclass
class ExplainSummary(runner.Summary):
    """What a run did (``runner.Summary``), and one record (explain.json, plus ``output``) per image written."""

    records: list = field(default_factory=list)


def file_stems(classes):
    """A file-name-safe stem per class; names that clean to the same stem get their index appended."""
    stems = [safe_name(c, 60) for c in classes]
    taken = [s.lower() for s in stems]
    return [f"{s}-{i}" if taken.count(s.lower()) > 1 else s for i, s in enumerate(stems)]


def _targets(probs, classes, options):
    if options.classes:
        return [classes.index(c) for c in options.classes]
    return [int(i) for i in np.argsort(-probs, kind="stable")[:min(options.top_k, len(classes))]]


def check_options(network, meta, options):
    """An ``Explainer`` for ``options``, after checking them (OptionError says what to change)."""
    unknown = [c for c in options.classes if c not in meta.classes]
    if unknown:
        raise OptionError(f"--class {', '.join(unknown)}: not a class of the model; "
                           f"its classes are {', '.join(meta.classes)}")
    if options.method != "occlusion" and (options.patch or options.stride):
        raise OptionError("--patch and --stride are for --method occlusion")
    if options.method == "occlusion" and options.layer is not None:
        raise OptionError("--layer is not used by --method occlusion, which needs no layer")
    return Explainer(network, options.method, layer=options.layer, patch=options.patch, stride=options.stride)


def run(inputs, out_root, network, meta, options, *, progress=None):
    """Explain every image that ``inputs`` (files, folders, globs) names; write ``OUT/<name>/`` for each.

    Each folder (named as ``cnn apply`` names it) holds ``cam_<class>.npy``,
    ``overlay_<class>.png`` and ``explain.json``; it is built under a hidden
    name and renamed into place, and an existing one is refused unless
    ``options.force``. ``OUT/index.html`` shows them all, unless ``options.html``
    is off. Returns an ``ExplainSummary``; a bad input is recorded there and the
    others go on.
    """
    progress = progress or Progress()
    explainer = check_options(network, meta, options)
    out_root = Path(out_root)
    summary = ExplainSummary()
    sink = ExplainSink(out_root, explainer, meta, options)
    with runner.Run(out_root, summary, progress=progress) as run_:

        def keep(result):
            if result.value is not None:
                summary.records.append(result.value)

        run_.stream(inputs, sink, on_result=keep)
        if options.html and summary.records and not summary.interrupted:
            # An earlier run's index is replaced only with --force.
            write_or_keep(lambda: write_explain_index(out_root, summary.records, summary.failed,
                                                      replace=options.force),
                          out_root / "index.html", note=progress.note, failed=summary.failed, replaced_by="--force")
    return summary


class ExplainSink(runner.Sink):
    """``cnn explain``'s part of a run (``runner.Sink``): one image at a time, explained and written."""

    batch_images = 1
    out_of_memory = "out of memory"
    #: A folder that cannot be written fails its image, as a map that cannot be made does.
    errors = (ValueError, OSError)

    def __init__(self, out_root, explainer, meta, options):
        from .modelfile import image_transform

        self.out_root, self.explainer, self.meta, self.options = out_root, explainer, meta, options
        self.transform = image_transform(meta)
        self.stems = file_stems(meta.classes)

    def early(self, item):
        out_dir = self.out_root / item.name
        if os.path.lexists(out_dir) and not self.options.force:
            return runner.Result(item.path, error=f"{out_dir} exists; use --force to replace it")
        if foreign := foreign_files(out_dir):  # --force replaces only what cnn wrote
            return runner.Result(item.path, error=refusal(out_dir, foreign))
        try:  # from the header, before anything is decoded
            _, height, width = image_shape(item.path, color="rgb")
        except (ValueError, OSError):
            return item  # reading it says what is wrong
        targets = len(self.options.classes) or min(self.options.top_k, len(self.meta.classes))
        needed, limit = memory_needed(height, width, targets), config.memory_limit()
        if needed > limit:
            return runner.Result(item.path, error=f"{item.path}: explaining this {width}x{height} image takes about "
                                 f"{config.describe_bytes(needed)} of memory, more than the limit of "
                                 f"{config.describe_bytes(limit)} ({config.MEMORY_ENV}); use a smaller image")
        return item

    def load(self, item):
        from .data import to_color

        image = read_image(item.path, color="rgb", max_pixels=self.options.max_pixels)
        seen = image if self.meta.preprocessing.color == "rgb" else to_color(image[None], "gray")[0]
        return runner.Loaded(item, self.transform(seen), image)

    def compute(self, batch):
        (entry,) = batch
        item = entry.item
        return explain_one(item, self.out_root / item.name, (entry.extra, entry.image[None]), self.explainer,
                           self.meta, self.stems, self.options)

    def deliver(self, batch, record):
        yield runner.Result(batch[0].item.path, value=record)


def explain_one(item, out_dir, loaded, explainer, meta, stems, options):
    """Explain one decoded image and write its folder; returns its record (explain.json and ``output``)."""
    image, x = loaded
    probs = explainer.probabilities(x)
    targets = _targets(probs, meta.classes, options)
    raw = explainer.maps(x, targets)
    if not np.all(np.isfinite(raw)):
        raise ValueError("the model gave NaN or inf values for this image")
    height, width = image.shape[1:]
    shown = np.argsort(-probs, kind="stable")[:max(PREDICTIONS, len(targets))]
    # An image in a folder named after one of the classes (a labelled set) shows its true class.
    truth = Path(item.path).parent.name if Path(item.path).parent.name in meta.classes else None
    record = {
        "cnn_version": __version__,
        "input": str(item.path),
        "image_size": [height, width],
        "model": options.model,
        "method": explainer.method,
        "layer": layer_record(explainer.network, explainer.layer),
        "predictions": [{"class": meta.classes[i], "probability": float(probs[i])} for i in shown],
        "true_class": truth,
        "targets": [],
    }
    if explainer.method == "occlusion":
        record["occlusion"] = {"patch": explainer.patch, "stride": explainer.stride}
    staging = out_dir.parent / temporary_name(out_dir.name, ".partial")
    if os.path.lexists(staging):  # left by a killed run: this run holds OUT's lock
        shutil.rmtree(staging)
    staging.mkdir(parents=True, mode=0o700)
    try:
        for target, m in zip(targets, raw):
            cam, note = scale_map(resize_map(m, height, width))
            name = meta.classes[target]
            files = {"cam": f"cam_{stems[target]}.npy", "overlay": f"overlay_{stems[target]}.png"}
            np.save(staging / files["cam"], cam, allow_pickle=False)
            caption = (f"|  class {name}, p={probs[target]:.3f}" + (f", true class {truth}" if truth else "")
                       + ("  (all zero)" if note else ""))
            overlay = overlay_image(image, cam, caption, options.cmap)
            write_bytes_atomic(staging / files["overlay"], viz.png_bytes(overlay))
            peak = np.unravel_index(int(np.argmax(cam)), cam.shape)
            entry = {"class": name, "probability": float(probs[target]), **files,
                     "peak": [int(peak[0]), int(peak[1])] if note is None else None, "note": note}
            if options.check:
                entry["check"] = randomization_check(
                    explainer.network, x, target, explainer.method, layer=explainer.layer,
                    patch=explainer.patch, stride=explainer.stride)
                entry["check_passed"] = check_passed(entry["check"])
            record["targets"].append(entry)
        write_bytes_atomic(staging / "explain.json", json.dumps(record, indent=2).encode())
        replace_dir(staging, out_dir, force=options.force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {**record, "output": str(out_dir)}
