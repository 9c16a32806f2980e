"""Streaming images through the engine: decode ahead on a thread, batch same-sized images.

Every streaming command reads a stream of inputs of any length, through
``cnn_cli.runner``. ``read_ahead`` decodes up to ``READ_AHEAD`` images on a background thread
(Pillow's decoders release the GIL) while the engine works on the last batch,
and ``batched`` groups consecutive images of one shape into engine batches,
so only a few images are in memory at any time.
"""

from __future__ import annotations

import contextlib
import queue
import threading

#: Decoded images waiting for the engine.
READ_AHEAD = 4

#: Consecutive images of one size go through the engine together, up to this
#: many images and input pixels per batch: enough to keep small images
#: efficient, few enough that a batch's maps (tens of bytes per input pixel)
#: stay small, and that memory reaches its plateau within a few dozen images.
BATCH_IMAGES = 32
BATCH_PIXELS = 2**20


class Progress:
    """What a long run tells its caller as it goes; the CLI draws it. Any method may be called from any thread."""

    def total(self, count):
        """The number of inputs, once a background count has found it."""

    def advance(self, result):
        """One input is finished (done, skipped or failed)."""

    def note(self, text):
        """A one-off message: the engine is compiling, the output will be large, ..."""


class Batch(list):
    """Consecutive entries whose images have one shape, for one engine call."""


def read_ahead(items, load, depth=READ_AHEAD):
    """Yield ``load(item)`` for each item in order, computed on a background thread up to ``depth`` ahead.

    An exception in ``items`` or ``load`` is raised here. Closing the
    generator stops the thread.
    """
    loaded = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(entry):
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                loaded.put(entry, timeout=0.1)
                return

    def read():
        try:
            for item in items:
                if stop.is_set():
                    return
                put((load(item),))
        except BaseException as exc:  # handed to the consuming thread, which raises it
            put(exc)
        put(end)

    threading.Thread(target=read, name="cnn-read-ahead", daemon=True).start()
    try:
        while (entry := loaded.get()) is not end:
            if isinstance(entry, BaseException):
                raise entry
            yield entry[0]
    finally:
        stop.set()


def batched(entries, image_of, max_images=BATCH_IMAGES, max_pixels=BATCH_PIXELS):
    """Group consecutive entries with images of one shape into ``Batch``es.

    ``image_of(entry)`` is the entry's image (C, H, W), or None for an entry
    that has none (a failure), which is yielded alone, at once.
    """
    batch = Batch()
    for entry in entries:
        image = image_of(entry)
        if image is None:
            yield entry
            continue
        first = image_of(batch[0]) if batch else None
        if batch and (first.shape != image.shape or len(batch) == max_images
                      or (len(batch) + 1) * image[0].size > max_pixels):
            yield batch
            batch = Batch()
        batch.append(entry)
    if batch:
        yield batch


class CompileNote:
    """Says, once, that the engine is compiling when the first batch takes long (a cold Numba cache)."""

    DELAY = 2.0
    TEXT = "compiling the engine's kernels; this happens once and takes several seconds"

    def __init__(self, progress):
        self.timer = None
        if progress is not None:
            self.timer = threading.Timer(self.DELAY, progress.note, [self.TEXT])
            self.timer.daemon = True

    def start(self):
        if self.timer is not None and not self.timer.is_alive() and not self.timer.finished.is_set():
            self.timer.start()

    def cancel(self):
        if self.timer is not None:
            self.timer.cancel()
