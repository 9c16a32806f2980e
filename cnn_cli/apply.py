"""``cnn apply``: run a pipeline over images and write every feature map.

For each input image, a folder ``OUT/<name>/`` holds::

    manifest.json            what is where: input, layers, maps, value ranges
    features.npz             raw float32 maps, key "layer<i>", shape (C, H, W)
    layer<i>_grid.png        every map of layer i, labelled with its filter
    layer<i>/<c>_<filter>.png  one picture per map

The folder is built under a temporary name and renamed into place when it is
complete, so a final path never holds partial output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, viz
from .fileio import replace_dir, save_npz_atomic, write_bytes_atomic
from .imageio import MAX_PIXELS, ImageError, read_image

#: Consecutive images of one size go through the engine together, up to this
#: many input pixels per batch.
BATCH_PIXELS = 4 * 2**20


@dataclass
class ApplyOptions:
    color: str = "gray"
    max_size: int | None = None
    max_pixels: int = MAX_PIXELS
    normalize: str = "per-map"
    cmap: str = "gray"
    force: bool = False
    #: Maps a decoded image (C, H, W) in [0, 1] to the pipeline's input, e.g. a
    #: model's resize and normalisation; None feeds the image as it is.
    prepare: object = None


@dataclass
class Result:
    path: Path
    out_dir: Path
    maps: int = 0
    error: str | None = None


@dataclass
class _Loaded:
    path: Path
    name: str
    image: np.ndarray = field(repr=False)


def _safe(text, limit=80):
    """A file-name-safe version of ``text``: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"
    return cleaned[:limit]


def output_names(paths):
    """A distinct folder name for every input: its stem, plus a hash of its
    full path when two inputs share a stem, so no two inputs write together."""
    stems = [_safe(Path(p).stem) for p in paths]
    # Compared without case: on macOS and Windows "Photo" and "photo" are one folder.
    counts = Counter(stem.lower() for stem in stems)
    names = {}
    for p, stem in zip(paths, stems):
        if counts[stem.lower()] > 1:
            digest = hashlib.sha1(str(Path(p).resolve()).encode()).hexdigest()[:8]
            stem = f"{stem}-{digest}"
        names[p] = stem
    return names


def apply_images(paths, out_root, pipeline, options, on_result=None):
    """Run ``pipeline`` (already bound to the input channels) over ``paths``.

    Returns one ``Result`` per input; a bad image is recorded and skipped, the
    others go on. ``on_result`` is called after each image.
    """
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    names = output_names(paths)
    results, batch = [], []

    def flush():
        for result in _run_batch(batch, out_root, pipeline, options):
            results.append(result)
            if on_result:
                on_result(result)
        batch.clear()

    for path in paths:
        out_dir = out_root / names[path]
        try:
            if os.path.lexists(out_dir) and not options.force:
                raise FileExistsError(f"{out_dir} exists; use --force to replace it")
            image = read_image(path, color=options.color, max_size=options.max_size,
                               max_pixels=options.max_pixels)
            if options.prepare is not None:
                image = options.prepare(image)
        except (ImageError, FileExistsError) as exc:
            result = Result(path, out_dir, error=str(exc))
            results.append(result)
            if on_result:
                on_result(result)
            continue
        if batch and (batch[0].image.shape != image.shape
                      or (len(batch) + 1) * image[0].size > BATCH_PIXELS):
            flush()
        batch.append(_Loaded(path, names[path], image))
    if batch:
        flush()
    return results


def _run_batch(batch, out_root, pipeline, options):
    x = np.stack([item.image for item in batch])
    try:
        outputs = pipeline.forward(x)
    except ValueError as exc:  # e.g. an image smaller than a kernel
        return [Result(item.path, out_root / item.name, error=f"{item.path}: {exc}") for item in batch]
    except MemoryError:
        return [Result(item.path, out_root / item.name,
                       error=f"{item.path}: out of memory; use --max-size to shrink the image") for item in batch]
    results = []
    for b, item in enumerate(batch):
        out_dir = out_root / item.name
        try:
            maps = write_outputs(item.path, out_dir, [o[b] for o in outputs], item.image.shape,
                                 pipeline, options)
            results.append(Result(item.path, out_dir, maps))
        except (OSError, ValueError) as exc:
            results.append(Result(item.path, out_dir, error=f"{item.path}: cannot write output: {exc}"))
    return results


def write_outputs(path, out_dir, layer_maps, input_shape, pipeline, options):
    """Write one image's folder (see the module docstring); returns the number of maps.

    PNGs are encoded on two threads (Pillow releases the GIL) while the next
    maps are prepared, and the raw maps are written on a third; only small
    grid thumbnails are kept, so memory holds one layer's pictures at most.
    """
    for i, (maps, layer) in enumerate(zip(layer_maps, pipeline.layers)):
        if not np.all(np.isfinite(maps)):
            raise ValueError(f"layer {i} ({layer.kind}) produced NaN or inf values")
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        manifest_layers = []
        arrays = {f"layer{i}": np.ascontiguousarray(maps, dtype=np.float32) for i, maps in enumerate(layer_maps)}
        # Two threads encode PNGs; a third writes the raw maps meanwhile (file
        # writes and zip's checksums release the GIL).
        with ThreadPoolExecutor(max_workers=3) as pool:
            raw = pool.submit(save_npz_atomic, staging / "features.npz", arrays)
            pending = []
            for i, (maps, layer, channels) in enumerate(zip(layer_maps, pipeline.layers, pipeline.channels)):
                key = f"layer{i}"
                (staging / key).mkdir()
                layer_range = viz.value_range(maps)
                entries, tiles = [], []
                for c, (m, filter_name) in enumerate(zip(maps, channels)):
                    lo, hi = viz.value_range(m)
                    span = layer_range if options.normalize == "per-layer" else (lo, hi)
                    low, high = viz.scale_for(*span, options.normalize)
                    image = viz.colorize(viz.to_uint8(m, low, high), options.cmap)
                    png = f"{key}/{c:03d}_{_safe(filter_name, 60)}.png"
                    pending.append(pool.submit(_write_png, staging / png, image))
                    tiles.append(viz.thumbnail(image))
                    entries.append({
                        "channel": c, "filter": filter_name, "png": png, "min": lo, "max": hi,
                        "normalization": {"method": options.normalize, "low": low, "high": high,
                                          "colormap": options.cmap},
                    })
                grid_png = f"{key}_grid.png"
                pending.append(pool.submit(_write_png, staging / grid_png, viz.grid(tiles, channels)))
                manifest_layers.append({
                    "index": i, "name": key, "kind": layer.kind, "description": layer.describe(),
                    "shape": list(maps.shape), "npz_key": key, "grid": grid_png, "maps": entries,
                })
                # Wait for this layer's PNGs before the next, bounding memory.
                for job in pending:
                    job.result()
                pending.clear()
            raw.result()
        manifest = {
            "cnn_version": __version__,
            "input": str(path),
            "input_shape": list(input_shape),
            "color": options.color,
            "pipeline": {"name": pipeline.name, "source": pipeline.source, "description": pipeline.description},
            "normalization": options.normalize,
            "colormap": options.cmap,
            "layers": manifest_layers,
        }
        write_bytes_atomic(staging / "manifest.json", json.dumps(manifest, indent=2).encode())
        replace_dir(staging, out_dir, force=options.force)
        return sum(len(layer["maps"]) for layer in manifest_layers)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_png(path, image):
    path.write_bytes(viz.png_bytes(image))
