"""``cnn keypoints`` and ``cnn match``: corners of a response map as keypoints, and matched pairs of images.

A ``Detector`` runs a source's pipeline (``sources.load_source``: a pipeline
such as ``harris``, or a model's layers) over a pyramid of the image and
turns one layer's maps into keypoints (``cnn_cli.keypoints``): the response
layer (default: a pipeline's last layer, a model's last layer with maps),
and, for ``match``, the descriptor layer (default: a pipeline's first layer,
the image gradient for ``harris`` and ``shi_tomasi``; a model's response
layer). A layer of several channels responds with the norm over its
channels at each pixel.

``cnn keypoints`` is a ``runner.Sink``: per image, ``OUT/<name>/`` holds
``keypoints.csv`` (``x,y,score,scale,angle``), ``keypoints.json`` and
``overlay.png``. ``cnn match A B`` writes ``OUT/<a>__<b>/`` with
``matches.csv`` (``xa,ya,xb,yb,distance,inlier``), ``matches.png`` and
``match.json``. Every folder is built under a hidden ``.NAME.partial`` name
and renamed into place; an existing one is refused unless ``force``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, config, layersel, matching, runner, viz
from . import keypoint_overlay as pictures
from . import keypoints as kp
from .fileio import replace_dir, temporary_name, write_bytes_atomic
from .imageio import MAX_PIXELS, image_shape, read_image
from .inputs import safe_name
from .layersel import OptionError
from .pipeline import receptive_fields
from .stream import Progress


@dataclass
class KeypointOptions:
    """What ``cnn keypoints`` and ``cnn match`` take besides the source; see the CLI's help.
    The defaults, and the measurements behind them, are in ``cnn_cli.config``."""

    num: int = config.KEYPOINTS
    #: Keep peaks above this fraction of the image's strongest response.
    threshold: float = config.KEYPOINT_THRESHOLD
    #: D: no two points closer than this, by ``suppression`` (``keypoints.find_peaks``).
    min_distance: int = config.KEYPOINT_MIN_DISTANCE
    suppression: str = config.KEYPOINT_SUPPRESSION
    #: Pyramid levels, each ``config.KEYPOINT_SCALE_FACTOR`` smaller (cnn match: ``config.MATCH_SCALES``).
    scales: int = config.KEYPOINT_SCALES
    #: ``--layer`` and ``--descriptor`` (layersel's grammar); None for the defaults.
    layer: str | None = None
    descriptor: str | None = None
    ratio: float = config.MATCH_RATIO
    geometry: str = "homography"
    #: RANSAC: reprojection error (pixels of image B) under which a pair is an inlier; its seed.
    ransac_threshold: float = config.RANSAC_THRESHOLD
    seed: int = 0
    max_size: int | None = None
    max_pixels: int = MAX_PIXELS
    force: bool = False

    def check(self):
        """Raise OptionError for values that cannot work (the CLI's types catch most first)."""
        if self.num < 1:
            raise OptionError(f"-n must be at least 1, but got {self.num}")
        if self.min_distance < 1:
            raise OptionError(f"--min-distance must be at least 1, but got {self.min_distance}")
        if self.scales < 1:
            raise OptionError(f"--scales must be at least 1, but got {self.scales}")
        if not 0 <= self.threshold < 1:
            raise OptionError(f"--threshold is a fraction of the strongest response, in [0, 1), "
                              f"but got {self.threshold}")
        if self.suppression not in kp.SUPPRESSIONS:
            raise OptionError(f"--suppression must be one of {', '.join(kp.SUPPRESSIONS)}, "
                              f"but got {self.suppression!r}")
        if not 0 < self.ratio <= 1:
            raise OptionError(f"--ratio must be in (0, 1], but got {self.ratio}")
        if self.geometry not in (*matching.GEOMETRIES, "none"):
            raise OptionError(f"--geometry must be one of homography, affine, none, but got {self.geometry!r}")


@dataclass
class Features:
    """An image's keypoints (input pixels) and, when asked for, their descriptors (K, D) float32."""

    keypoints: kp.Keypoints
    descriptors: np.ndarray | None
    shape: tuple  # (H, W) of the image as read (after --max-size)


def read(path, source, options):
    """(image (C, H, W) in [0, 1] as read, (H, W) of the file itself): they differ under ``--max-size``."""
    image = read_image(path, color=source.color, max_size=options.max_size, max_pixels=options.max_pixels)
    original = image_shape(path)[1:] if options.max_size else image.shape[1:]
    return image, tuple(original)


def input_frame(shape, original):
    """The 3 x 3 map from the pixels of an image of ``shape`` (H, W) to those of the same view at
    ``original`` (H, W), pixel centres kept (``keypoints.to_image``); the identity when equal."""
    sy, sx = original[0] / shape[0], original[1] / shape[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def in_input(points, shape, original):
    """``points`` found on an image of ``shape`` placed in the file's own pixels (``original``)."""
    if tuple(shape) == tuple(original):
        return points
    frame = input_frame(shape, original)
    x, y = frame[0, 0] * points.x + frame[0, 2], frame[1, 1] * points.y + frame[1, 2]
    return kp.Keypoints(x, y, points.score, points.scale * np.sqrt(frame[0, 0] * frame[1, 1]), points.angle,
                        points.level)


# --------------------------------------------------------------------------- layers


def _records(source):
    return layersel.of(source.vector_layers, source.vector_names)


def _spatial_refusal(source):
    """A layersel ``refuse`` that names layers without positions (vectors, global pooling)."""
    count = len(source.pipeline.layers)
    fields = receptive_fields(source.pipeline.layers, source.pipeline.inputs)

    def refuse(record):
        if record.index >= count:
            return "gives a vector, not maps with positions"
        if fields[record.index] == "global":
            return "pools over the whole image, so its maps have no positions"
        return None

    return refuse


def resolve_layers(source, layer=None, descriptor=None):
    """(response layer, descriptor layer) indices for ``--layer`` and ``--descriptor``; OptionError names
    what may be chosen. Defaults: the last layer with maps; a pipeline's first layer, a model's response layer."""
    refuse = _spatial_refusal(source)
    records = _records(source)
    allowed = [r.index for r in records if not refuse(r)]
    if not allowed:
        raise OptionError("the source has no layer with maps that keep positions")
    response = allowed[-1] if layer is None else layersel.select_one(records, layer, option="--layer",
                                                                      refuse=refuse)
    if descriptor is not None:
        described = layersel.select_one(records, descriptor, option="--descriptor", refuse=refuse)
    else:
        described = allowed[0] if source.kind != "model" else response
    return response, described


def _steered(channels):
    """Whether a layer's two channels are an x and a y derivative (``sobel_x``, ``sobel_y``), which
    turn with the image: the descriptor then rotates them into each keypoint's frame."""
    if len(channels) != 2:
        return False
    a, b = (str(c) for c in channels)
    return a.endswith("_x") and b.endswith("_y") and a[:-2] == b[:-2]


class Detector:
    """Keypoints (and descriptors) of images from one source's layers (see the module docstring)."""

    def __init__(self, source, options):
        options.check()
        self.source, self.options = source, options
        self.layer, self.descriptor_layer = resolve_layers(source, options.layer, options.descriptor)
        self.steer = _steered(source.pipeline.channels[self.descriptor_layer])

    def describe_layers(self):
        """JSON records of the response and descriptor layers."""
        layers = self.source.pipeline.layers

        def record(i):
            return {"index": i, "name": f"layer{i}", "kind": layers[i].kind, "description": layers[i].describe()}

        return record(self.layer), {**record(self.descriptor_layer), "steered": self.steer}

    def settings(self):
        o = self.options
        return {"num": o.num, "threshold": o.threshold, "min_distance": o.min_distance,
                "suppression": o.suppression, "scales": o.scales, "scale_factor": config.KEYPOINT_SCALE_FACTOR}

    def features(self, image, *, descriptors=False):
        """``Features`` of ``image`` (C, H, W) in [0, 1], read in the source's colour.

        Raises ValueError when the source gives NaN or infinite maps, or
        refuses the image's size.
        """
        o = self.options
        shape = image.shape[1:]
        levels = kp.image_pyramid(image, o.scales)
        responses, maps = [], []
        for level in levels:
            x = self.source.prepare(level) if self.source.prepare is not None else level
            outputs = self.source.pipeline.forward(x[None])
            chosen = outputs[self.layer][0]
            if not np.all(np.isfinite(chosen)):
                raise ValueError(f"layer {self.layer} ({self.source.pipeline.layers[self.layer].kind}) "
                                 "gave NaN or infinite values")
            responses.append(kp.response_of(chosen))
            if descriptors:
                maps.append(outputs[self.descriptor_layer][0])
            del outputs
        points = kp.detect(responses, shape, num_peaks=o.num, threshold_rel=o.threshold,
                           min_distance=o.min_distance, suppression=o.suppression)
        points = kp.orientations([kp.grey(lv) for lv in levels], points, shape)
        described = self._describe(maps, levels, points, shape) if descriptors else None
        return Features(points, described, shape)

    def _describe(self, maps, levels, points, shape):
        out = None
        for level, (m, image) in enumerate(zip(maps, levels)):
            on = np.flatnonzero(points.level == level)
            if not np.all(np.isfinite(m)):
                raise ValueError(f"layer {self.descriptor_layer} gave NaN or infinite values")
            h, w = m.shape[1:]
            x, y = kp.level_position(points.take(on), shape, (h, w))
            stride = np.sqrt((h / image.shape[1]) * (w / image.shape[2]))
            d = matching.describe(m, x, y, points.angle[on], stride=stride, steer=self.steer)
            if out is None:
                out = np.zeros((len(points), d.shape[1]), np.float32)
            out[on] = d
        return out if out is not None else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- cnn keypoints


@dataclass
class KeypointSummary(runner.Summary):
    """What a run did (``runner.Summary``), and one record (keypoints.json, plus ``output``) per image written."""

    records: list = field(default_factory=list)


def run(inputs, out_root, source, options, *, progress=None):
    """Find keypoints in every image ``inputs`` names (files, folders, globs); write ``OUT/<name>/`` for each.

    Returns a ``KeypointSummary``; a bad input is recorded there and the others go on.
    Raises OptionError for a layer or option that cannot work, ValueError when OUT cannot be written.
    """
    progress = progress or Progress()
    detector = Detector(source, options)
    out_root = Path(out_root)
    summary = KeypointSummary()
    sink = KeypointSink(out_root, detector)
    with runner.Run(out_root, summary, progress=progress) as run_:

        def keep(result):
            if result.value is not None:
                summary.records.append(result.value)

        run_.stream(inputs, sink, on_result=keep)
    return summary


class KeypointSink(runner.Sink):
    """``cnn keypoints``'s part of a run (``runner.Sink``): one image at a time, its pyramid run and written."""

    batch_images = 1
    errors = (ValueError, OSError)

    def __init__(self, out_root, detector):
        self.out_root, self.detector = out_root, detector

    def early(self, item):
        out_dir = self.out_root / item.name
        if os.path.lexists(out_dir) and not self.detector.options.force:
            return runner.Result(item.path, error=f"{out_dir} exists; use --force to replace it")
        return item

    def load(self, item):
        image, original = read(item.path, self.detector.source, self.detector.options)
        return runner.Loaded(item, image, original)

    def compute(self, batch):
        (entry,) = batch
        features = self.detector.features(entry.image)
        return write_keypoints(entry.item.path, self.out_root / entry.item.name, entry.image, features,
                               self.detector, entry.extra)

    def deliver(self, batch, record):
        yield runner.Result(batch[0].item.path, value=record)


def keypoint_rows(keypoints):
    """[{"x", "y", "score", "scale", "angle"}, ...] for JSON."""
    return [dict(zip(("x", "y", "score", "scale", "angle"), row)) for row in keypoints.rows()]


def keypoints_csv(keypoints):
    """keypoints.csv's text: the header ``x,y,score,scale,angle`` and a line per keypoint, best first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("x", "y", "score", "scale", "angle"))
    for x, y, score, scale, angle in keypoints.rows():
        writer.writerow((f"{x:.3f}", f"{y:.3f}", f"{score:.6g}", f"{scale:.4f}", f"{angle:.2f}"))
    return buf.getvalue()


def write_keypoints(path, out_dir, image, features, detector, original):
    """Write one image's folder (keypoints.csv, keypoints.json, overlay.png); returns its record.

    Coordinates are in the pixels of the file (``original``, (H, W)), also
    when ``image`` was read smaller (``--max-size``); the overlay is drawn on ``image``.
    """
    layer, _ = detector.describe_layers()
    points = in_input(features.keypoints, features.shape, original)
    record = {
        "cnn_version": __version__,
        "input": str(path),
        "image_size": list(original),
        "processed_size": list(features.shape),
        "source": detector.source.describe(),
        "layer": layer,
        "settings": detector.settings(),
        "count": len(points),
        "files": {"csv": "keypoints.csv", "overlay": "overlay.png"},
        "keypoints": keypoint_rows(points),
    }
    with _Staging(out_dir, detector.options.force) as staging:
        write_bytes_atomic(staging / "keypoints.csv", keypoints_csv(points).encode())
        write_bytes_atomic(staging / "keypoints.json", json.dumps(record, indent=1).encode())
        write_bytes_atomic(staging / "overlay.png", viz.png_bytes(pictures.overlay_picture(image, features.keypoints)))
    return {**record, "output": str(out_dir)}


class _Staging:
    """A ``with`` block around a hidden ``.NAME.partial`` folder that becomes ``out_dir`` when it ends
    without an exception (``fileio.replace_dir``), and is removed when one is raised."""

    def __init__(self, out_dir, force):
        self.out_dir, self.force = Path(out_dir), force
        self.path = self.out_dir.parent / temporary_name(self.out_dir.name, ".partial")

    def __enter__(self):
        if os.path.lexists(self.path):  # left by a killed run: this run holds OUT's lock
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, mode=0o700)
        return self.path

    def __exit__(self, kind, exc, tb):
        if kind is None:
            try:
                replace_dir(self.path, self.out_dir, force=self.force)
                return
            except BaseException:
                shutil.rmtree(self.path, ignore_errors=True)
                raise
        shutil.rmtree(self.path, ignore_errors=True)
        return


# --------------------------------------------------------------------------- cnn match


@dataclass
class MatchResult:
    """``match.json``'s record (plus ``output``) and the time the pair took (seconds)."""

    record: dict
    seconds: float


def pair_name(a, b):
    """The folder of a pair under OUT: ``<a>__<b>`` from the images' file stems."""
    return f"{safe_name(Path(a).stem, 60)}__{safe_name(Path(b).stem, 60)}"


def match_pair(a, b, out_root, source, options, *, progress=None):
    """Match image ``a`` to image ``b`` and write ``OUT/<a>__<b>/``; returns a ``MatchResult``.

    Raises OptionError for a layer or option that cannot work, ValueError
    (ImageError among them) for an image that cannot be read or described, or
    an output that exists (without ``force``) or cannot be written.
    """
    progress = progress or Progress()
    detector = Detector(source, options)
    out_root = Path(out_root)
    out_dir = out_root / pair_name(a, b)
    summary = runner.Summary()
    with runner.Run(out_root, summary, progress=progress):
        if os.path.lexists(out_dir) and not options.force:
            raise ValueError(f"{out_dir} exists; use --force to replace it")
        start = time.perf_counter()
        (images, originals) = zip(*(read(p, source, options) for p in (a, b)))
        fa, fb = (detector.features(image, descriptors=True) for image in images)
        pairs, distance = matching.match_descriptors(fa.descriptors, fb.descriptors, ratio=options.ratio)
        # Matched and fitted in the pixels of the files themselves (which --max-size may have shrunk).
        pa, pb = in_input(fa.keypoints, fa.shape, originals[0]), in_input(fb.keypoints, fb.shape, originals[1])
        src = np.stack([pa.x[pairs[:, 0]], pa.y[pairs[:, 0]]], axis=1)
        dst = np.stack([pb.x[pairs[:, 1]], pb.y[pairs[:, 1]]], axis=1)
        if options.geometry == "none":
            matrix, inliers = None, None
        else:
            matrix, inliers = matching.ransac(src, dst, geometry=options.geometry, threshold=options.ransac_threshold,
                                        seed=options.seed)
        seconds = time.perf_counter() - start
        layer, descriptor = detector.describe_layers()
        record = {
            "cnn_version": __version__,
            "a": str(a), "b": str(b),
            "image_size": {"a": list(originals[0]), "b": list(originals[1])},
            "processed_size": {"a": list(fa.shape), "b": list(fb.shape)},
            "source": source.describe(),
            "layer": layer,
            "descriptor": {**descriptor, "dimension": int(fa.descriptors.shape[1]) if len(fa.keypoints) else 0},
            "settings": {**detector.settings(), "ratio": options.ratio, "geometry": options.geometry,
                         "ransac_threshold": options.ransac_threshold, "seed": options.seed},
            "keypoints": {"a": len(fa.keypoints), "b": len(fb.keypoints)},
            "matches": len(pairs),
            "inliers": None if inliers is None else int(inliers.sum()),
            "homography": None if matrix is None else [[float(v) for v in row] for row in matrix],
            "files": {"csv": "matches.csv", "picture": "matches.png"},
        }
        shown = np.ones(len(pairs), bool) if inliers is None else inliers
        with _Staging(out_dir, options.force) as staging:
            write_bytes_atomic(staging / "matches.csv", matches_csv(src, dst, distance, inliers).encode())
            write_bytes_atomic(staging / "match.json", json.dumps(record, indent=1).encode())
            picture = pictures.matches_picture(images[0], images[1], fa.keypoints, fb.keypoints, pairs, shown)
            write_bytes_atomic(staging / "matches.png", viz.png_bytes(picture))
    return MatchResult({**record, "output": str(out_dir)}, seconds)


def matches_csv(src, dst, distance, inliers):
    """matches.csv's text: ``xa,ya,xb,yb,distance,inlier``; ``inlier`` is 1 or 0, and empty with no geometry."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("xa", "ya", "xb", "yb", "distance", "inlier"))
    for n in range(len(src)):
        flag = "" if inliers is None else int(inliers[n])
        writer.writerow((f"{src[n, 0]:.3f}", f"{src[n, 1]:.3f}", f"{dst[n, 0]:.3f}", f"{dst[n, 1]:.3f}",
                         f"{distance[n]:.6f}", flag))
    return buf.getvalue()
