"""One runner for every command that streams images: ``apply``, ``embed``, ``explain`` and ``units``.

A command is a ``Sink``: what it does with one decoded image, or a batch of
same-sized ones. The runner does the rest, the same way for every command:

- ``Run``: holds the output's lock, so no two runs write one output, and
  sweeps the temporary files and folders that a killed run left there
  (``fileio.remove_stale``); it times the run.
- ``Run.stream``: walks the inputs (``inputs.iter_inputs``), counts them on a
  background thread for the progress bar, decodes ahead and batches
  (``stream``), says when the engine is compiling, turns a batch's
  ValueError or MemoryError into one failure per input, sends chunks to Dask
  workers when there is a cluster (``cluster``), and records every result
  in a ``Summary``.
- A KeyboardInterrupt (Ctrl-C, or SIGTERM and SIGHUP, which the CLI turns
  into one) stops the stream: writes not begun are cancelled, those under way
  finish or remove what they began, and ``Summary.interrupted`` is set. The
  command then writes nothing more, and the CLI says how to continue.

Adding a streaming command is a ``Sink`` and a CLI function.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .fileio import held_lock, remove_stale, temporary_name
from .imageio import ImageError
from .inputs import Input, Problem, iter_inputs
from .stream import BATCH_IMAGES, Batch, CompileNote, Progress, batched, read_ahead

#: The lock a run holds inside an output folder of per-image outputs (OUT/<name>/).
LOCK_NAME = ".cnn-apply.lock"

#: What a batch that ran out of memory tells each of its inputs.
OUT_OF_MEMORY = "out of memory; use --max-size to shrink the image"


@dataclass
class Result:
    """What became of one input: done (``value`` holds what the sink made), skipped, or failed (``error``)."""

    path: object
    error: str | None = None
    skipped: bool = False
    value: object = None


@dataclass
class Summary:
    """What a run did: counts and every failure (path or None for an argument, message)."""

    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    failed: list = field(default_factory=list)
    #: Temporary files and folders of killed runs removed from the output (paths).
    removed: list = field(default_factory=list)
    #: True when the run stopped at a KeyboardInterrupt (Ctrl-C, or a signal the CLI turns into one).
    interrupted: bool = False

    def add(self, result):
        if result.error:
            self.failed.append((None if result.path is None else str(result.path), result.error))
        elif result.skipped:
            self.skipped += 1
        else:
            self.done += 1


@dataclass
class Loaded:
    """A decoded input: ``image`` (C, H, W) is what goes to the engine in a batch; ``extra``, the sink's own."""

    item: Input
    image: object
    extra: object = None


class Sink:
    """What a command does with images; the runner calls these (see the module docstring).

    ``load`` runs on the reader thread; the rest on the thread that consumes
    the stream (or on a Dask worker, for a sink that is picklable). A sink is
    entered (``with``) around a stream, for the resources it holds while
    images flow (e.g. writer threads).
    """

    #: Images per engine batch at most (1: each image alone).
    batch_images = BATCH_IMAGES
    #: What a batch that ran out of memory tells each of its inputs.
    out_of_memory = OUT_OF_MEMORY
    #: Exceptions of ``compute`` that fail each input of the batch, with their message
    #: (ValueError: e.g. an image smaller than a kernel, or NaN maps).
    errors = (ValueError,)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def early(self, item):
        """On the client, before ``item`` goes out: a Result that answers it here, or the Input to process."""
        return item

    def counted(self, images):
        """The background count of the inputs has finished: ``images`` in all."""

    def load(self, item):
        """Decode ``item``: a ``Loaded``, or a Result (a refusal). ImageError becomes a failure."""
        raise NotImplementedError

    def compute(self, batch):
        """Run the engine on a ``Batch`` of ``Loaded``; ``errors`` and MemoryError fail each input."""
        raise NotImplementedError

    def deliver(self, batch, output):
        """Yield a Result per input of ``batch``, from ``compute``'s ``output``."""
        raise NotImplementedError

    def make_room(self, batch):
        """Yield Results that finish while waiting for room before ``batch`` runs."""
        return ()

    def drain(self):
        """Yield the Results still under way when the stream has ended."""
        return ()

    def failure(self, item, message):
        """The Result of an input that failed with ``message``."""
        return Result(item.path, error=message)


def process(items, sink, progress=None):
    """Yield a Result for each of ``items`` (``Input``s, or Results already answered), run through ``sink``.

    Decoding runs ahead on a thread, same-sized images go to the engine in
    batches (``stream``), and a batch's ValueError (an image smaller than a
    kernel) or MemoryError fails each of its inputs. Closing the generator
    stops the reader and leaves the sink (``__exit__``).
    """
    def load(item):
        if isinstance(item, Result):
            return item
        try:
            return sink.load(item)
        except ImageError as exc:
            return sink.failure(item, str(exc))

    with sink:
        note = CompileNote(progress)
        entries = batched(read_ahead(items, load), lambda e: e.image if isinstance(e, Loaded) else None,
                          max_images=sink.batch_images)
        try:
            for entry in entries:
                if isinstance(entry, Batch):
                    yield from _run_batch(entry, sink, note)
                else:
                    yield entry
            yield from sink.drain()
        finally:
            entries.close()
            note.cancel()


def _run_batch(batch, sink, note):
    yield from sink.make_room(batch)
    note.start()
    try:
        output = sink.compute(batch)
    except MemoryError:
        message = sink.out_of_memory
    except sink.errors as exc:
        message = str(exc)
    else:
        message = None
    finally:
        note.cancel()
    if message is not None:
        for entry in batch:
            yield sink.failure(entry.item, f"{entry.item.path}: {message}")
        return
    yield from sink.deliver(batch, output)
    del output


def run_chunk(items, sink):
    """A Dask task: process ``items`` (already answered by ``Sink.early`` on the client); return their Results."""
    return list(process(items, sink))


# --------------------------------------------------------------------------- a run


def output_lock(out_root):
    """Hold OUT's lock for a run (``fileio.held_lock``); a second run into the same OUT is refused (ValueError)."""
    out_root = Path(out_root)
    try:
        out_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output folder {out_root}: {exc.strerror or exc}") from None
    return held_lock(out_root / LOCK_NAME, f"another cnn run is writing to {out_root}")


def whole_output_lock(out):
    """Hold the lock of an output that is written whole and renamed into place (it sits beside it)."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"cannot create output folder {out.parent}: {exc.strerror or exc}") from None
    return held_lock(out.parent / temporary_name(out.name, ".lock"), f"another cnn run is writing {out}")


class Run:
    """A run into one output, as a ``with`` block: the lock, the sweep of a killed run's leftovers, the time.

    ``whole``: the output is one folder (or file) built beside its final path
    and renamed into place (``units``); otherwise a folder whose per-input
    outputs are each built beside their own (``apply``, ``explain``, ``embed``).
    """

    def __init__(self, out, summary, *, progress=None, whole=False):
        self.out, self.summary, self.whole = Path(out), summary, whole
        self.progress = progress or Progress()
        self.swept = set()

    def __enter__(self):
        self.start = time.perf_counter()
        self._lock = whole_output_lock(self.out) if self.whole else output_lock(self.out)
        self._lock.__enter__()
        try:
            if self.whole:
                self._sweep(self.out.parent, of=[self.out.name])
            else:
                self._sweep(self.out)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self._lock.__exit__(*exc)
        self.summary.seconds = time.perf_counter() - self.start

    def _sweep(self, folder, of=None):
        """Remove what killed runs left in ``folder`` (this run holds the lock, so none is running)."""
        self.swept.add(folder)
        removed = remove_stale(folder, of=of)
        if removed:
            self.summary.removed += [str(folder / name) for name in removed]
            shown = ", ".join(removed[:3]) + (f" and {len(removed) - 3} more" if len(removed) > 3 else "")
            self.progress.note(f"removed {len(removed)} unfinished output(s) that an interrupted run left "
                               f"in {folder}: {shown}")

    def stream(self, inputs, sink, *, cluster=None, on_result=None):
        """Run every image ``inputs`` names through ``sink``, recording each Result in the summary.

        ``on_result(result)`` sees each one too, on this thread. ``cluster``
        (a ``cluster.Cluster``) runs the sink on Dask workers, in chunks.
        A KeyboardInterrupt ends the stream and sets ``summary.interrupted``.
        """
        summary, progress = self.summary, self.progress
        if cluster is not None:  # the run's time counts the cluster's start-up, which came before it
            self.start = min(self.start, getattr(cluster, "started", self.start))

        def record(result):
            summary.add(result)
            if result.path is not None:
                progress.advance(result)
            if on_result is not None:
                on_result(result)

        def count():
            images = sum(isinstance(i, Input) for i in iter_inputs(inputs, exclude=[self.out]))
            progress.total(images)
            sink.counted(images)

        threading.Thread(target=count, daemon=True).start()
        stream = self._items(inputs, sink)
        if cluster is None:
            results = process(stream, sink, progress)
        else:
            results = cluster.map_chunks(_answered(stream, record), run_chunk, sink,
                                         lost=lambda item, message: sink.failure(item, f"{item.path}: {message}"))
        try:
            for result in results:
                record(result)
        except KeyboardInterrupt:
            # Closing the stream cancels the writes not yet begun and waits for
            # those under way, each of which finishes or removes what it began.
            summary.interrupted = True
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
        return summary

    def _items(self, inputs, sink):
        """Inputs, and Results for those answered before they go out (Problems, ``Sink.early``).

        Each folder of OUT is swept before the first input that writes into
        it goes out, so before any of this run's own writes there can begin.
        """
        for entry in iter_inputs(inputs, exclude=[self.out]):
            if isinstance(entry, Problem):
                yield Result(None, error=entry.message)
                continue
            if not self.whole:
                parent = (self.out / entry.name).parent
                if parent not in self.swept:
                    self._sweep(parent)
            yield sink.early(entry)


def _answered(stream, record):
    """For a cluster: Results answered on the client are recorded here and never sent."""
    for entry in stream:
        if isinstance(entry, Result):
            record(entry)
        else:
            yield entry
