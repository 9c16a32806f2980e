"""One image's folder of ``cnn apply``: its maps as PNGs, grids and raw arrays, its manifest and page.

``write_outputs`` builds the folder under ``.<name>.partial`` beside its
final path and renames it into place when complete (``cnn_cli.apply`` says
what the folder holds, and why). The work is spread over a thread pool
(``encoders``): the npz, and each map's picture (its scale, levels and PNG,
one task a map) run side by side while the calling thread measures the maps
for the manifest, then draws each layer's grid once its maps are drawn. numpy,
zlib and file writes release the GIL, so the threads share the cores.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from concurrent.futures import wait

import numpy as np

from . import __version__, keypoint_overlay, viz
from .fileio import replace_dir, save_npz_atomic, temporary_name, write_bytes_atomic
from .inputs import safe_name
from .owned import INPUT_COPY, JPEG_MARK
from .report import apply_page


class Stopped(Exception):
    """A write was abandoned because the run is stopping; its folder was removed."""


def chosen_layers(pipeline, options):
    """Indices of the layers ``options`` (``apply.ApplyOptions``) writes."""
    return options.layers if options.layers is not None else tuple(range(len(pipeline.layers)))


def staging_dir(out_dir):
    """Where the folder ``out_dir`` is built before it is renamed into place."""
    return out_dir.parent / temporary_name(out_dir.name, ".partial")


def write_outputs(path, out_dir, layer_maps, image, pipeline, options, encoders, stop=None, name=None):
    """Write one image's folder; returns (maps, bytes).

    ``layer_maps`` holds the maps (C, H, W) of every layer of ``image`` (those not chosen are left out);
    pictures and the npz are made on ``encoders`` (a thread pool), keypoints as ``keypoint_overlay`` says.
    When ``stop`` (a threading.Event) is set, the write is abandoned at the
    next file, its folder removed, and ``Stopped`` raised. ``name`` is the
    folder's name under OUT (default: its own), for its page's link to OUT's index.
    """
    chosen = chosen_layers(pipeline, options)
    ranges = {}
    for i in chosen:  # min and max carry any NaN or inf: no pass of its own to look for them
        ranges[i] = [viz.value_range(m) for m in layer_maps[i]]
        if not all(math.isfinite(lo) and math.isfinite(hi) for lo, hi in ranges[i]):
            raise ValueError(f"layer {i} ({pipeline.layers[i].kind}) produced NaN or inf values")
    staging = staging_dir(out_dir)
    if os.path.lexists(staging):  # left by a killed run (the sweep removes these first); we hold OUT's lock
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    jobs = []
    try:
        if "raw" in options.save:
            arrays = {f"layer{i}": np.ascontiguousarray(layer_maps[i], dtype=options.dtype) for i in chosen}
            jobs.append(encoders.submit(save_npz_atomic, staging / "features.npz", arrays))
        layers = []
        for i in chosen:  # every picture is queued before any layer is waited for
            _check_stop(stop)
            layers.append(_LayerWrite(staging, i, layer_maps[i], ranges[i], pipeline, options, encoders, jobs))
        for layer in layers:  # grids' labels, while the encoders draw the maps
            _check_stop(stop)
            layer.draw_frame()
        manifest_layers = []
        for layer in layers:
            _check_stop(stop)
            manifest_layers.append(layer.finish())
        for job in jobs:
            _check_stop(stop)
            job.result()
        _check_stop(stop)
        corners = keypoint_overlay.apply_overlay(staging, image, layer_maps, pipeline, options.save)
        manifest = {
            "cnn_version": __version__,
            "input": str(path),
            "input_shape": list(image.shape),
            "color": options.color,
            "pipeline": {"name": pipeline.name, "source": pipeline.source, "description": pipeline.description},
            "normalization": options.normalize,
            "normalization_per": options.per,
            "colormap": options.cmap,
            "dtype": options.dtype,
            "saved": sorted(options.save),
            "layers": manifest_layers, **corners,
        }
        write_bytes_atomic(staging / "manifest.json", json.dumps(manifest, indent=2).encode())
        if options.html:  # the image's page is written into the folder, so it appears with it
            write_bytes_atomic(staging / "index.html", apply_page(manifest, out_dir, name or out_dir.name).encode())
            write_bytes_atomic(staging / INPUT_COPY, viz.input_copy(path, comment=JPEG_MARK))  # kept with OUT
        written = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        replace_dir(staging, out_dir, force=options.force)
        return sum(len(layer["maps"]) for layer in manifest_layers), written
    except BaseException:
        for job in jobs:  # no job may write into the folder once it is removed
            job.cancel()
        wait(jobs)
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _check_stop(stop):
    if stop is not None and stop.is_set():
        raise Stopped


class _LayerWrite:
    """Layer i's part of a folder: its pictures, queued on ``encoders`` (and in ``jobs``) as it is
    made, then (``finish``) its grid and its manifest entry."""

    def __init__(self, staging, i, maps, ranges, pipeline, options, encoders, jobs):
        self.staging, self.i, self.maps, self.pipeline, self.options = staging, i, maps, pipeline, options
        self.key = key = f"layer{i}"
        channels = pipeline.channels[i]
        self.ranges = ranges  # each map's (min, max)
        self.pictures, self.drawn, self.pngs, self.frame = None, [], [None] * len(maps), None
        if options.save & {"maps", "grids"}:
            self.pictures = viz.LayerPictures(maps, channels, options.normalize, options.per, options.cmap,
                                              self.ranges)
            if "maps" in options.save:
                (staging / key).mkdir()
                self.pngs = [f"{key}/{c:03d}_{safe_name(f, 60)}.png" for c, f in enumerate(channels)]
            self.drawn = [encoders.submit(self._draw, c) for c in range(len(maps))]
            jobs.extend(self.drawn)
        # Measured here, while the pictures are drawn.
        self.means = [float(m.mean(dtype=np.float64)) for m in maps]
        # A range on one side of zero holds no zero: most maps of photos (rectified, pooled), so
        # counting is skipped for them (np.count_nonzero took 4 ms of an image's 55 maps).
        self.zeros = [float((m.size - np.count_nonzero(m)) / m.size) if lo <= 0 <= hi else 0.0
                      for m, (lo, hi) in zip(maps, ranges)]

    def _draw(self, c):
        """Map c's picture: written as its PNG when maps are saved; its grid tile when grids are."""
        picture = self.pictures.image(c)
        if self.pngs[c] is not None:
            _write_png(self.staging / self.pngs[c], picture)
        if "grids" in self.options.save and not self.pictures.vector:
            return viz.thumbnail(picture)
        return None

    def draw_frame(self):
        """Draw the grid's labels and colour bar (``viz.GridFrame``): they need no picture."""
        if "grids" in self.options.save:
            self.frame = self.pictures.grid_frame()

    def finish(self):
        """Complete the grid once every map is drawn (on this thread, while the encoders draw
        later layers' maps); return the layer's manifest entry."""
        tiles = [job.result() for job in self.drawn]
        grid_png = None
        if self.frame is not None:
            grid_png = f"{self.key}_grid.png"
            _write_png(self.staging / grid_png, self.frame.fill(tiles))
        pipeline, i, pictures = self.pipeline, self.i, self.pictures
        entries = [{
            "channel": c, "filter": name, "png": self.pngs[c], "min": lo, "max": hi,
            "mean": self.means[c], "zero_fraction": self.zeros[c],
            # Fitting a scale costs a percentile pass per map: none is fitted when no picture is drawn.
            "normalization": pictures.record(c) if pictures else None,
        } for c, (name, (lo, hi)) in enumerate(zip(pipeline.channels[i], self.ranges))]
        return {
            "index": i, "name": self.key, "kind": pipeline.layers[i].kind, "description": pipeline.layers[i].describe(),
            "receptive_field": receptive_field(pipeline, i),
            "shape": list(self.maps.shape), "npz_key": self.key if "raw" in self.options.save else None,
            "grid": grid_png, "maps": entries,
            **_graph_record(pipeline, i),
        }


def _graph_record(pipeline, i):
    """A graph node's name and the nodes it reads, for the manifest (nothing for a chain's layer)."""
    if pipeline.names[i] == str(i) and pipeline.inputs[i] == (i - 1,):
        return {}
    return {"node": pipeline.names[i], "inputs": ["input" if j < 0 else pipeline.names[j] for j in pipeline.inputs[i]]}


def receptive_field(pipeline, i):
    """Input pixels (along rows) that one output of layer i sees, or "global"."""
    from .pipeline import receptive_fields

    return receptive_fields(pipeline.layers[:i + 1], pipeline.inputs[:i + 1])[i]


def _write_png(path, image):
    path.write_bytes(viz.png_bytes(image))
