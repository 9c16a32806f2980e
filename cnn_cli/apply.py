"""``cnn apply``: run a pipeline over a stream of images and write their feature maps.

For each input image, a folder ``OUT/<name>/`` (``name`` mirrors where the
image was found; see ``cnn_cli.inputs``) holds, as ``ApplyOptions.save`` asks::

    manifest.json              always: input, layers, maps, value ranges
    features.npz               "raw": maps, key "layer<i>", shape (C, H, W)
    layer<i>_grid.png          "grids": every map of layer i, labelled with its filter
    layer<i>/<c>_<filter>.png  "maps": one picture per map
    index.html                 unless ``html`` is off: the image's page (``cnn_cli.report``)

and, at the end of a run, ``OUT/index.html`` lists its images and failures.

Images flow through three overlapping stages: ``cnn_cli.runner`` decodes
ahead on a reader thread and runs the engine on batches of same-sized images
on the calling thread, and ``ApplySink`` writes each image's folder
(``cnn_cli.mapfolder``) on a writer thread, its pictures and arrays made on a
few encoder threads (numpy, zlib and file writes release the GIL). Only a few
images are in flight at once, so memory does not grow with the number of inputs.

A folder is built under ``.<name>.partial`` beside its final path and renamed
into place when complete, so a final path never holds partial output, and an
output folder that exists is complete. The runner holds a lock on OUT, so the
temporary files and folders of an earlier, killed run are known to be stale:
each folder the run writes into is swept of them first, and the run says so.

Before an image is decoded, the memory and disk its maps will take are
estimated from its header (``estimate_bytes``); an image over the memory
limit, or over the free space on OUT's disk, is refused. Images being written
count against the limit until they are done, so a folder of large images
never holds more maps at once than the limit allows.
"""

from __future__ import annotations

import os
import shutil
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import choices, config, keypoint_overlay, layersel, runner
from .fileio import NotRegularFileError
from .imageio import MAX_PIXELS, ImageError, image_shape, read_image
from .mapfolder import Stopped, chosen_layers, write_outputs
from .owned import EXISTS, foreign_files, refusal
from .report import ApplyIndex
from .runner import output_lock  # noqa: F401  (OUT's lock, as apply has always offered it)
from .stream import Progress

SAVE_CHOICES = choices.SAVE

#: Images being written at once.
WRITERS = 2

#: Warn when one image's output or memory, or a whole run's output, is estimated above these.
LARGE_IMAGE_BYTES = 2**30
LARGE_RUN_BYTES = 10 * 2**30

#: Bytes per map pixel of a PNG as ``viz.png_bytes`` writes it, measured on
#: the default pipeline's maps of photos with the default asinh scaling: 0.85
#: to 0.95 on scikit-image's photos (astronaut, camera, coffee, rocket, brick,
#: grass), 0.94-0.95 on bench/apply.py's photo-like images; maps that deflate
#: would shrink little are stored (``cnn_cli.pngfile``). Gray; colour maps
#: take about twice as much.
PNG_BYTES_PER_PIXEL = 0.9

#: Peak memory over the float32 bytes of the input and every layer's maps:
#: PNG and npz encoding, padded copies and FFT tiles come on top. Measured
#: with the default pipeline: a 2048x2048 grey image peaked 660 MB above the
#: process's start for 492 MB of maps and input (1.34), and a 4096x4096 RGB
#: one at 2.43 GiB for 1.76 GiB of raw maps (README). About 157 bytes per
#: input pixel in all, against 138 bytes per pixel written to disk.
MEMORY_OVERHEAD = 1.4


@dataclass
class ApplyOptions:
    color: str = "gray"
    max_size: int | None = None
    max_pixels: int = MAX_PIXELS
    #: How maps become PNG levels (``viz.fit_scale``), and what one scale is fitted over:
    #: "map" or "layer". The older values "per-map" and "per-layer" of ``normalize``
    #: name a method and ``per`` at once (``choices.NORMALIZE_ALIASES``).
    normalize: str = choices.DEFAULT_NORMALIZATION
    per: str = "map"
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
    #: Refuse images whose maps are estimated to need more memory (bytes);
    #: None: ``config.memory_limit()``.
    max_memory: int | None = None
    #: Write the HTML report: a page in each folder and OUT/index.html (``cnn_cli.report``).
    html: bool = True

    def __post_init__(self):
        if self.normalize in choices.NORMALIZE_ALIASES:
            self.normalize, self.per = choices.NORMALIZE_ALIASES[self.normalize]


@dataclass
class Result(runner.Result):
    """One input's outcome (``runner.Result``), with its folder and what was written there."""

    out_dir: Path | None = None
    maps: int = 0
    bytes: int = 0


@dataclass
class Summary(runner.Summary):
    """What a run did (``runner.Summary``), with the maps and bytes written."""

    maps: int = 0
    bytes: int = 0

    def add(self, result):
        super().add(result)
        if not (result.error or result.skipped):
            self.maps += result.maps
            self.bytes += result.bytes


# --------------------------------------------------------------------------- options


#: Above this many maps over all layers, ``--save`` defaults to grids alone: an imported
#: ResNet-18 at 224x224 has 11,200 maps, 98 MB of PNGs and raw maps per image (its grids:
#: 14 MB); the default pipeline has 55 and the presets a few hundred.
FULL_DUMP_MAX_MAPS = 2048


def default_save(pipeline):
    """What ``cnn apply`` writes when ``--save`` is not given: everything, or grids for a large network."""
    maps = sum(len(channels) for channels in pipeline.channels)
    return frozenset(SAVE_CHOICES) if maps <= FULL_DUMP_MAX_MAPS else frozenset({"grids"})


def parse_save(text):
    """'maps,grids,raw' (any of them) -> a frozenset; ValueError names what is wrong."""
    chosen = {part.strip() for part in str(text).split(",") if part.strip()}
    unknown = sorted(chosen - set(SAVE_CHOICES))
    if unknown or not chosen:
        raise ValueError(f"--save takes a comma-separated list of {', '.join(SAVE_CHOICES)}, but got {text!r}")
    return frozenset(chosen)


def select_layers(pipeline, text):
    """The sorted indices ``--layers text`` names (``cnn_cli.layersel``); OptionError lists the layers."""
    return layersel.select(layersel.of(pipeline.layers, pipeline.names), text, option="--layers")


def estimate_bytes(pipeline, image_shape, options):
    """(bytes written, bytes of memory) for one image of ``image_shape`` (C, H, W).

    From the layers' declarations (``pipeline.plan_layers``): no layer is
    built, so this may run beside ``Pipeline.forward`` on another thread.
    """
    from .pipeline import plan_layers

    plan = plan_layers(pipeline.layers, tuple(image_shape))
    chosen = chosen_layers(pipeline, options)
    values = sum(plan.layers[i].values for i in chosen)
    disk = 0
    if "raw" in options.save:
        disk += values * np.dtype(options.dtype).itemsize
    if "maps" in options.save:
        disk += int(values * PNG_BYTES_PER_PIXEL * (1 if options.cmap == "gray" else 2))
    memory = int(MEMORY_OVERHEAD * 4 * (plan.values + int(np.prod(image_shape))))
    return disk, memory


_size = config.describe_bytes


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


# --------------------------------------------------------------------------- the stages


def _triage(item, out_root, options):
    """A Result for an input that needs no work (its folder exists), else None."""
    out_dir = out_root / item.name
    if os.path.lexists(out_dir) and not options.force:
        if options.skip_existing:
            return Result(item.path, out_dir=out_dir, skipped=True)
        return Result(item.path, out_dir=out_dir, error=f"{out_dir}{EXISTS}")
    if options.force and (foreign := foreign_files(out_dir)):  # --force replaces only what cnn wrote
        return Result(item.path, out_dir=out_dir, error=refusal(out_dir, foreign))
    return None


class ApplySink(runner.Sink):
    """``cnn apply``'s part of a run (``runner.Sink``): decode within the memory and disk budget,
    run the pipeline, and write each image's folder on ``WRITERS`` threads while the next batch runs.

    Picklable for Dask workers; the threads and the budget are made when the
    stream starts (``with``), and ``sizes`` (the client's estimates) stay behind.
    """

    def __init__(self, pipeline, options, out_root, sizes=None):
        self.pipeline, self.options, self.out_root, self.sizes = pipeline, options, Path(out_root), sizes

    def __getstate__(self):
        return {"pipeline": self.pipeline, "options": self.options, "out_root": self.out_root, "sizes": None}

    def __enter__(self):
        self.budget = _Budget(self.pipeline, self.options, self.out_root)
        self.writing = set()
        self.stop = threading.Event()  # set when the run stops early: writes under way give up
        self.writers = ThreadPoolExecutor(WRITERS, thread_name_prefix="cnn-apply-write")
        self.encoders = ThreadPoolExecutor(WRITERS + 1, thread_name_prefix="cnn-apply-encode")
        return self

    def __exit__(self, *exc):
        self.stop.set()  # when the stream ended early; a finished stream has no writes left
        for job in self.writing:
            job.cancel()
        self.writers.shutdown(wait=True)
        self.encoders.shutdown(wait=True)

    def early(self, item):
        if self.sizes is not None:
            self.sizes.check(item)
        return _triage(item, self.out_root, self.options) or item

    def counted(self, images):
        if self.sizes is not None:
            self.sizes.counted(images)

    def failure(self, item, message):
        return Result(item.path, out_dir=self.out_root / item.name, error=message)

    def load(self, item):
        """Decode one input: a Loaded, or a failed Result (also for an image over the budget)."""
        options, budget = self.options, self.budget
        out_dir = self.out_root / item.name
        if _triage(item, self.out_root, options) is not None:
            # The client sent it, so its folder was written by an earlier attempt
            # at this task (a Dask worker that died after writing it): done.
            return Result(item.path, out_dir=out_dir)
        if options.prepare is None:  # a model resizes every image to its own size: checked after decoding
            try:
                declared = image_shape(item.path, color=options.color)
                shape = image_shape(item.path, color=options.color, max_size=options.max_size)
            except (OSError, ImageError):
                declared = shape = None  # read_image says what is wrong with it
            # An image over --max-pixels is refused by read_image, in the words of that limit.
            refusal = shape and declared[1] * declared[2] <= options.max_pixels and budget.refusal(item.path, shape)
            if refusal:
                return self.failure(item, refusal)
        image = read_image(item.path, color=options.color, max_size=options.max_size,
                           max_pixels=options.max_pixels)
        if options.prepare is not None:
            image = options.prepare(image)
        refusal = budget.refusal(item.path, image.shape)
        if refusal:
            return self.failure(item, refusal)
        return runner.Loaded(item, image)

    def make_room(self, batch):
        need = sum(self.budget.memory(entry.image.shape) for entry in batch)
        while self.writing and self.budget.over(need):  # the maps being written, and this batch's, would pass
            yield from self._finished(wait_for_one=True)

    def compute(self, batch):
        return self.pipeline.forward(np.stack([entry.image for entry in batch]))

    def deliver(self, batch, outputs):
        chosen = set(chosen_layers(self.pipeline, self.options)) | keypoint_overlay.layers_needed(self.pipeline)
        for b, entry in enumerate(batch):
            while len(self.writing) >= WRITERS:
                yield from self._finished(wait_for_one=True)
            maps = [o[b] if i in chosen else None for i, o in enumerate(outputs)]
            job = self.writers.submit(self._write, entry, maps)
            self.budget.holding[job] = self.budget.memory(entry.image.shape)
            self.writing.add(job)
        del outputs
        yield from self._finished(wait_for_one=False)

    def drain(self):
        while self.writing:
            yield from self._finished(wait_for_one=True)

    def _write(self, entry, maps):
        item = entry.item
        path, out_dir = item.path, self.out_root / item.name
        try:
            count, written = write_outputs(path, out_dir, maps, entry.image, self.pipeline, self.options,
                                           self.encoders, self.stop, item.name)
        except Stopped:
            return self.failure(item, f"{path}: stopped before its output was complete")
        except FileExistsError:
            return self.failure(item, f"{out_dir}{EXISTS}")
        except NotRegularFileError as exc:
            return self.failure(item, f"{path}: cannot write output: {exc.strerror}")
        except (OSError, ValueError) as exc:
            return self.failure(item, f"{path}: cannot write output: {exc}")
        return Result(path, out_dir=out_dir, maps=count, bytes=written)

    def _finished(self, wait_for_one):
        done, _ = wait(self.writing, timeout=None if wait_for_one else 0, return_when=FIRST_COMPLETED)
        for job in done:
            self.writing.discard(job)
            self.budget.holding.pop(job, None)
            yield job.result()


class _Budget:
    """The memory and disk each image's maps will take, and the refusals and waits they lead to.

    Estimates are kept per image shape. ``holding`` maps each write job to
    the memory of the image it holds, so a batch waits for writes to finish
    while the maps in flight and its own would pass the limit.
    """

    def __init__(self, pipeline, options, out_root):
        self.pipeline, self.options, self.out_root = pipeline, options, Path(out_root)
        self.limit = options.max_memory or config.memory_limit()
        self.known = {}
        self.holding = {}
        self.lock = threading.Lock()

    def estimate(self, shape):
        """(disk, memory) bytes for an image of ``shape`` (C, H, W)."""
        shape = tuple(int(d) for d in shape)
        with self.lock:
            if shape not in self.known:
                self.known[shape] = estimate_bytes(self.pipeline, shape, self.options)
            return self.known[shape]

    def refusal(self, path, shape):
        """Why an image of ``shape`` is refused (a message naming ``path``), or None."""
        try:
            disk, memory = self.estimate(shape)
        except ValueError:
            return None  # the pipeline refuses the size itself, and says why when it runs
        where = f"{path} ({shape[2]}x{shape[1]})"
        if memory > self.limit:
            return (f"{where}: its maps would need about {_size(memory)} of memory, over the limit of "
                    f"{_size(self.limit)}; shrink it with --max-size N, or raise the limit with --max-memory")
        try:
            free = shutil.disk_usage(self.out_root).free
        except OSError:
            return None
        if disk > free:
            return (f"{where}: would write about {_size(disk)}, but only {_size(free)} are free on the disk "
                    f"of {self.out_root}; write less with --max-size N, --save, --layers or --dtype float16")
        return None

    def memory(self, shape):
        """Estimated memory of an image of ``shape``; 0 for a size the pipeline refuses (it says why)."""
        try:
            return self.estimate(shape)[1]
        except ValueError:
            return 0

    def batch_memory(self, batch):
        return sum(self.memory(entry.image.shape) for entry in batch)

    def over(self, more):
        """Whether maps in flight plus ``more`` bytes pass the limit (never when nothing is in flight)."""
        held = sum(self.holding.values())
        return held > 0 and held + more > self.limit


# --------------------------------------------------------------------------- a run


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
    if options.max_memory is None:  # fixed here, so Dask workers use the same limit
        options = replace(options, max_memory=config.memory_limit())
    sink = ApplySink(pipeline, options, out_root, _Sizes(pipeline, options, progress))
    with runner.Run(out_root, summary, progress=progress) as run_:
        index = ApplyIndex(out_root) if options.html else None

        def note(result):
            if not result.error:
                index.add(result.out_dir, result.skipped)

        run_.stream(inputs, sink, cluster=cluster, on_result=note if index is not None else None)
        if index is not None:  # --force and --skip-existing redo or complete OUT, so they replace its index
            index.finish(summary, replace=options.force or options.skip_existing, note=progress.note)
    return summary


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

    def counted(self, images):
        """The run's inputs have been counted (``runner.Run.stream``): warn when the whole output is large."""
        with self.lock:
            self.images = images
            self._warn_run()

    def check(self, item):
        """Estimate the output of the first image of each new size (from its header)."""
        if len(self.seen) >= self.MOST or self.options.prepare is not None:
            return  # a model resizes every image to its own size
        try:
            shape = image_shape(item.path, color=self.options.color, max_size=self.options.max_size)
            if shape in self.seen:
                return
            self.seen.add(shape)
            disk, memory = estimate_bytes(self.pipeline, shape, self.options)
        except (ValueError, OSError):
            return  # the reader says what is wrong with the image
        if memory > (self.options.max_memory or config.memory_limit()):
            return  # refused as the image is read, in a line of its own
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
