"""``cnn apply``: run a pipeline over a stream of images and write their feature maps.

For each input image, a folder ``OUT/<name>/`` (``name`` mirrors where the
image was found; see ``cnn_cli.inputs``) holds, as ``ApplyOptions.save`` asks::

    manifest.json              always: input, layers, maps, value ranges
    features.npz               "raw": maps, key "layer<i>", shape (C, H, W)
    layer<i>_grid.png          "grids": every map of layer i, labelled with its filter
    layer<i>/<c>_<filter>.png  "maps": one picture per map

Images flow through three overlapping stages: a reader thread decodes ahead,
the calling thread runs the engine on batches of same-sized images, and a
few writer threads encode and write (Pillow's encoder, zlib and file writes
release the GIL). Only a few images are in flight at once, so memory does not
grow with the number of inputs.

A folder is built under ``.<name>.partial`` beside its final path and renamed
into place when complete, so a final path never holds partial output, and an
output folder that exists is complete. A run holds a lock on OUT, so the
partial folder of an earlier, killed run is known to be stale and is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__, choices, viz
from .fileio import replace_dir, save_npz_atomic, write_bytes_atomic
from .imageio import MAX_PIXELS, ImageError, read_image
from .inputs import Input, Problem, iter_inputs, safe_name
from .stream import Batch, CompileNote, Progress, batched, read_ahead

SAVE_CHOICES = choices.SAVE

#: Images being written at once.
WRITERS = 2

#: Warn when one image's output or memory, or a whole run's output, is estimated above these.
LARGE_IMAGE_BYTES = 2**30
LARGE_RUN_BYTES = 10 * 2**30

#: Bytes per map pixel of a PNG at zlib level 2, measured on the default
#: pipeline's maps of photos (gray; colour maps take about twice as much).
PNG_BYTES_PER_PIXEL = 0.6

LOCK_NAME = ".cnn-apply.lock"


@dataclass
class ApplyOptions:
    color: str = "gray"
    max_size: int | None = None
    max_pixels: int = MAX_PIXELS
    normalize: str = "per-map"
    cmap: str = "gray"
    force: bool = False
    skip_existing: bool = False
    save: frozenset = frozenset(SAVE_CHOICES)
    #: Indices of the layers to write; None writes every layer.
    layers: tuple | None = None
    dtype: str = "float32"
    #: Maps a decoded image (C, H, W) in [0, 1] to the pipeline's input, e.g. a
    #: model's resize and normalisation; None feeds the image as it is.
    prepare: object = None


@dataclass
class Result:
    path: Path
    out_dir: Path
    maps: int = 0
    bytes: int = 0
    error: str | None = None
    skipped: bool = False


@dataclass
class Summary:
    """What a run did: counts, totals and every failure (path or argument, message)."""

    done: int = 0
    skipped: int = 0
    maps: int = 0
    bytes: int = 0
    seconds: float = 0.0
    failed: list = field(default_factory=list)

    def add(self, result):
        if result.error:
            self.failed.append((str(result.path), result.error))
        elif result.skipped:
            self.skipped += 1
        else:
            self.done += 1
            self.maps += result.maps
            self.bytes += result.bytes


@dataclass
class _Loaded:
    item: Input
    out_dir: Path
    image: np.ndarray = field(repr=False)


# --------------------------------------------------------------------------- options


def parse_save(text):
    """'maps,grids,raw' (any of them) -> a frozenset; ValueError names what is wrong."""
    chosen = {part.strip() for part in str(text).split(",") if part.strip()}
    unknown = sorted(chosen - set(SAVE_CHOICES))
    if unknown or not chosen:
        raise ValueError(f"--save takes a comma-separated list of {', '.join(SAVE_CHOICES)}, but got {text!r}")
    return frozenset(chosen)


def select_layers(pipeline, text):
    """Layer indices from '4', 'last', '0,2', 'layer3' or a layer kind that occurs once (e.g. 'corner')."""
    count = len(pipeline.layers)
    kinds = [layer.kind for layer in pipeline.layers]
    chosen = []
    for part in (p.strip() for p in str(text).split(",")):
        if part in ("last", "-1"):
            index = count - 1
        elif part.lstrip("-").isdigit() or (part.startswith("layer") and part[5:].isdigit()):
            index = int(part[5:] if part.startswith("layer") else part)
            index = index + count if index < 0 else index
        elif kinds.count(part) == 1:
            index = kinds.index(part)
        else:
            names = ", ".join(f"{i} ({k})" for i, k in enumerate(kinds))
            raise ValueError(f"--layers: no single layer {part!r}; give indices, 'last' or a kind, from: {names}")
        if not 0 <= index < count:
            raise ValueError(f"--layers: layer {part} does not exist; the pipeline has layers 0 to {count - 1}")
        if index not in chosen:
            chosen.append(index)
    return tuple(sorted(chosen))


def _chosen(pipeline, options):
    return options.layers if options.layers is not None else tuple(range(len(pipeline.layers)))


def estimate_bytes(pipeline, image_shape, options):
    """(bytes written, bytes of memory) for one image of ``image_shape`` (C, H, W)."""
    rows = pipeline.summary(*image_shape[1:])
    chosen = _chosen(pipeline, options)
    values = sum(int(np.prod(rows[i].shape)) for i in chosen)
    disk = 0
    if "raw" in options.save:
        disk += values * np.dtype(options.dtype).itemsize
    if "maps" in options.save:
        disk += int(values * PNG_BYTES_PER_PIXEL * (1 if options.cmap == "gray" else 2))
    memory = 4 * (sum(int(np.prod(r.shape)) for r in rows) + int(np.prod(image_shape)))
    return disk, memory


def _size(n):
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _large_warning(what, disk, memory, options):
    shrink = ["--max-size N"]
    if "maps" in options.save:
        shrink.append("--save raw (or grids)")
    if options.layers is None:
        shrink.append("--layers last")
    if options.dtype == "float32" and "raw" in options.save:
        shrink.append("--dtype float16")
    return (f"{what}: about {_size(disk)} of output and {_size(memory)} of memory per image; "
            f"to shrink it use {', '.join(shrink)}")


# --------------------------------------------------------------------------- one image


def _staging(out_dir):
    return out_dir.parent / f".{out_dir.name}.partial"


def write_outputs(path, out_dir, layer_maps, input_shape, pipeline, options, encoders):
    """Write one image's folder (see the module docstring); returns (maps, bytes).

    ``layer_maps`` holds the maps (C, H, W) of every layer; those not chosen
    are left out. PNGs and the npz are written on ``encoders`` (a thread pool).
    """
    chosen = _chosen(pipeline, options)
    for i in chosen:
        if not np.all(np.isfinite(layer_maps[i])):
            raise ValueError(f"layer {i} ({pipeline.layers[i].kind}) produced NaN or inf values")
    staging = _staging(out_dir)
    if os.path.lexists(staging):  # left by a killed run: this run holds OUT's lock
        shutil.rmtree(staging)
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir(mode=0o700)
    jobs = []
    try:
        if "raw" in options.save:
            arrays = {f"layer{i}": np.ascontiguousarray(layer_maps[i], dtype=options.dtype) for i in chosen}
            jobs.append(encoders.submit(save_npz_atomic, staging / "features.npz", arrays))
        manifest_layers = [_write_layer(staging, i, layer_maps[i], pipeline, options, encoders, jobs)
                           for i in chosen]
        for job in jobs:
            job.result()
        manifest = {
            "cnn_version": __version__,
            "input": str(path),
            "input_shape": list(input_shape),
            "color": options.color,
            "pipeline": {"name": pipeline.name, "source": pipeline.source, "description": pipeline.description},
            "normalization": options.normalize,
            "colormap": options.cmap,
            "dtype": options.dtype,
            "saved": sorted(options.save),
            "layers": manifest_layers,
        }
        write_bytes_atomic(staging / "manifest.json", json.dumps(manifest, indent=2).encode())
        written = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        replace_dir(staging, out_dir, force=options.force)
        return sum(len(layer["maps"]) for layer in manifest_layers), written
    except BaseException:
        for job in jobs:  # no job may write into the folder once it is removed
            job.cancel()
        wait(jobs)
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_layer(staging, i, maps, pipeline, options, encoders, jobs):
    """Queue layer i's PNGs on ``encoders`` (appending to ``jobs``); return its manifest entry."""
    key = f"layer{i}"
    layer, channels = pipeline.layers[i], pipeline.channels[i]
    pictures = bool(options.save & {"maps", "grids"})
    if "maps" in options.save:
        (staging / key).mkdir()
    layer_range = viz.value_range(maps)
    entries, tiles = [], []
    for c, (m, filter_name) in enumerate(zip(maps, channels)):
        lo, hi = viz.value_range(m)
        span = layer_range if options.normalize == "per-layer" else (lo, hi)
        low, high = viz.scale_for(*span, options.normalize)
        png = None
        if pictures:
            image = viz.colorize(viz.to_uint8(m, low, high), options.cmap)
            if "maps" in options.save:
                png = f"{key}/{c:03d}_{safe_name(filter_name, 60)}.png"
                jobs.append(encoders.submit(_write_png, staging / png, image))
            if "grids" in options.save:
                tiles.append(viz.thumbnail(image))
        entries.append({
            "channel": c, "filter": filter_name, "png": png, "min": lo, "max": hi,
            "normalization": {"method": options.normalize, "low": low, "high": high, "colormap": options.cmap},
        })
    grid_png = None
    if "grids" in options.save:
        grid_png = f"{key}_grid.png"
        jobs.append(encoders.submit(lambda: _write_png(staging / grid_png, viz.grid(tiles, channels))))
    return {
        "index": i, "name": key, "kind": layer.kind, "description": layer.describe(),
        "shape": list(maps.shape), "npz_key": key if "raw" in options.save else None,
        "grid": grid_png, "maps": entries,
    }


def _write_png(path, image):
    path.write_bytes(viz.png_bytes(image))


# --------------------------------------------------------------------------- the stages


def _triage(item, out_root, options):
    """A Result for an input that needs no work (its folder exists), else None."""
    out_dir = out_root / item.name
    if os.path.lexists(out_dir) and not options.force:
        if options.skip_existing:
            return Result(item.path, out_dir, skipped=True)
        return Result(item.path, out_dir,
                      error=f"{out_dir} exists; use --skip-existing to keep it or --force to replace it")
    return None


def _load(item, out_root, options):
    """Decode one input: a _Loaded, or a failed Result."""
    out_dir = out_root / item.name
    try:
        image = read_image(item.path, color=options.color, max_size=options.max_size,
                           max_pixels=options.max_pixels)
        if options.prepare is not None:
            image = options.prepare(image)
    except ImageError as exc:
        return Result(item.path, out_dir, error=str(exc))
    return _Loaded(item, out_dir, image)


def process(items, out_root, pipeline, options, *, progress=None, triaged=False):
    """Run ``pipeline`` over ``items`` (``Input``s) and write their folders; yield a Result each.

    The three stages overlap (see the module docstring). With ``triaged``,
    the caller has already skipped or refused inputs whose folders existed,
    and a folder that exists now was written by an earlier attempt at the
    same task (a worker that died after writing it), so it counts as done.
    """
    out_root = Path(out_root)

    def load(item):
        early = _triage(item, out_root, options)
        if early is not None and triaged:
            return Result(item.path, early.out_dir)
        return early if early is not None else _load(item, out_root, options)

    writing = set()
    compile_note = CompileNote(progress)
    entries = batched(read_ahead(items, load), lambda e: e.image if isinstance(e, _Loaded) else None)
    with ThreadPoolExecutor(WRITERS, thread_name_prefix="cnn-apply-write") as writers, \
            ThreadPoolExecutor(WRITERS + 1, thread_name_prefix="cnn-apply-encode") as encoders:
        try:
            for entry in entries:
                if isinstance(entry, Batch):
                    yield from _run_batch(entry, pipeline, options, writers, encoders, writing, compile_note)
                else:
                    yield entry
            while writing:
                yield from _finished(writing, wait_for_one=True)
        finally:
            entries.close()
            compile_note.cancel()
            for job in writing:
                job.cancel()


def _run_batch(batch, pipeline, options, writers, encoders, writing, compile_note):
    x = np.stack([entry.image for entry in batch])
    compile_note.start()
    try:
        outputs = pipeline.forward(x)
    except ValueError as exc:  # e.g. an image smaller than a kernel
        for entry in batch:
            yield Result(entry.item.path, entry.out_dir, error=f"{entry.item.path}: {exc}")
        return
    except MemoryError:
        for entry in batch:
            yield Result(entry.item.path, entry.out_dir,
                         error=f"{entry.item.path}: out of memory; use --max-size to shrink the image")
        return
    finally:
        compile_note.cancel()
    chosen = set(_chosen(pipeline, options))
    for b, entry in enumerate(batch):
        while len(writing) >= WRITERS:
            yield from _finished(writing, wait_for_one=True)
        maps = [o[b] if i in chosen else None for i, o in enumerate(outputs)]
        writing.add(writers.submit(_write_entry, entry, maps, pipeline, options, encoders))
    del outputs
    yield from _finished(writing, wait_for_one=False)


def _write_entry(entry, maps, pipeline, options, encoders):
    path = entry.item.path
    try:
        count, written = write_outputs(path, entry.out_dir, maps, entry.image.shape, pipeline, options, encoders)
    except FileExistsError:
        return Result(path, entry.out_dir,
                      error=f"{entry.out_dir} exists; use --skip-existing to keep it or --force to replace it")
    except (OSError, ValueError) as exc:
        return Result(path, entry.out_dir, error=f"{path}: cannot write output: {exc}")
    return Result(path, entry.out_dir, count, written)


def _finished(jobs, wait_for_one):
    done, _ = wait(jobs, timeout=None if wait_for_one else 0, return_when=FIRST_COMPLETED)
    for job in done:
        jobs.discard(job)
        yield job.result()


# --------------------------------------------------------------------------- a run


@contextlib.contextmanager
def output_lock(out_root):
    """Hold OUT's lock for a run; a second run into the same OUT is refused (ValueError).

    The lock file is removed when the run ends. A run that opened it just
    before then holds a lock on a file no longer there, so after locking, it
    checks that the file it locked is still the one at the path.
    """
    out_root = Path(out_root)
    path = out_root / LOCK_NAME
    while True:
        try:
            out_root.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a")
        except OSError as exc:
            raise ValueError(f"cannot create output folder {out_root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise ValueError(f"another cnn run is writing to {out_root} (it holds {path}); "
                             "wait for it to finish or choose another -o") from None
        try:
            if os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fh.close()


def run(inputs, out_root, pipeline, options, *, progress=None, cluster=None):
    """Apply ``pipeline`` (bound to the input channels) to every image that ``inputs`` names.

    ``inputs`` are files, folders and globs, streamed (``cnn_cli.inputs``).
    Returns a ``Summary``; a bad input is recorded there and the others go
    on. ``cluster``, a ``cnn_cli.cluster.Cluster``, runs the images on Dask
    workers instead of here, with the same outputs.
    """
    progress = progress or Progress()
    out_root = Path(out_root)
    summary = Summary()
    start = time.perf_counter()
    with output_lock(out_root):
        sizes = _Sizes(pipeline, options, progress)
        threading.Thread(target=sizes.count, args=(inputs, out_root), daemon=True).start()
        stream = _checked(iter_inputs(inputs, exclude=[out_root]), sizes, summary)
        if cluster is None:
            results = process(stream, out_root, pipeline, options, progress=progress)
        else:
            results = cluster.map_chunks(
                _triaged(stream, out_root, options, summary, progress), apply_chunk, out_root, pipeline, options,
                lost=lambda item, message: Result(item.path, out_root / item.name, error=f"{item.path}: {message}"))
        for result in results:
            summary.add(result)
            progress.advance(result)
    summary.seconds = time.perf_counter() - start
    return summary


def apply_chunk(items, out_root, pipeline, options):
    """A Dask task: process ``items`` (already triaged by the client) here; return their Results."""
    return list(process(items, out_root, pipeline, options, triaged=True))


class _Sizes:
    """Estimates of the output, said before it is written when they are large."""

    #: Image sizes looked at before the estimate stops (a folder of mixed sizes).
    MOST = 8

    def __init__(self, pipeline, options, progress):
        self.pipeline, self.options, self.progress = pipeline, options, progress
        self.seen = set()
        self.per_image = None
        self.images = None
        self.lock = threading.Lock()

    def count(self, inputs, out_root):
        """Count the inputs (a second, background walk) for the progress bar and the run's estimate."""
        images = sum(isinstance(i, Input) for i in iter_inputs(inputs, exclude=[out_root]))
        self.progress.total(images)
        with self.lock:
            self.images = images
            self._warn_run()

    def check(self, item):
        """Estimate the output of the first image of each new size (from its header)."""
        if len(self.seen) >= self.MOST or self.options.prepare is not None:
            return  # a model resizes every image to its own size
        from .imageio import image_shape

        try:
            shape = image_shape(item.path, color=self.options.color, max_size=self.options.max_size)
            if shape in self.seen:
                return
            self.seen.add(shape)
            disk, memory = estimate_bytes(self.pipeline, shape, self.options)
        except (ValueError, OSError):
            return  # the reader says what is wrong with the image
        if max(disk, memory) > LARGE_IMAGE_BYTES:
            self.progress.note(_large_warning(f"{item.path} ({shape[2]}x{shape[1]})", disk, memory,
                                              self.options))
        with self.lock:
            if self.per_image is None:
                self.per_image = (disk, memory)
                self._warn_run()

    def _warn_run(self):
        if self.images is None or self.per_image is None:
            return
        total = self.images * self.per_image[0]
        if total > LARGE_RUN_BYTES and self.per_image[0] <= LARGE_IMAGE_BYTES:
            self.progress.note(_large_warning(f"{self.images} images, about {_size(total)} in all",
                                              *self.per_image, self.options))


def _checked(stream, sizes, summary):
    """Inputs only: Problems go into the summary; new image sizes are checked for a large output."""
    for entry in stream:
        if isinstance(entry, Problem):
            summary.failed.append((None, entry.message))
            continue
        sizes.check(entry)
        yield entry


def _triaged(stream, out_root, options, summary, progress):
    """For a cluster: inputs whose folders exist are answered here and never sent."""
    for item in stream:
        early = _triage(item, out_root, options)
        if early is None:
            yield item
        else:
            summary.add(early)
            progress.advance(early)
