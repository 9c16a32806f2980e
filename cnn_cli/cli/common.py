"""What every command shares: the app, exit codes, option types, one-line errors, clusters, signals.

Everything a command prints that may hold a file or class name goes through
``printable`` (results, via ``echo``) or ``one_line`` (errors, via ``fail``
and ``report_failures``), so a name holding a newline or an escape sequence
can neither forge a line nor reach the terminal raw.

Only the ``cnn_cli.cli`` package imports typer and rich. Commands import the
engine (and so Numba) inside their bodies, so ``cnn --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from typer.core import TyperGroup

from .. import __version__, choices, config
from ..terminal import printable
from . import coercion

# BLAS on one thread, and an allocator that reuses freed memory: see
# config.tune_process. This must happen before numpy is first imported.
config.tune_process()

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
#: The reader of stdout went away (``cnn predict ... | head -1``): the status a
#: shell gives a tool that SIGPIPE ended, such as ``cat``; nothing is printed.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class StdoutClosedError(OSError):
    """A write to a standard output that was closed when cnn started (``cnn banks >&-``)."""


class _ClosedStdout(io.TextIOBase):
    """Stands in for ``sys.stdout`` when it was closed at start (Python sets it to None):
    writing raises StdoutClosedError, which the command turns into one line; flushing
    (as the interpreter does at exit) does nothing."""

    def writable(self):
        return True

    def write(self, text):
        raise StdoutClosedError(errno.EPIPE, "standard output is closed")

    def flush(self):
        pass


if sys.stdout is None:
    sys.stdout = _ClosedStdout()


class _Group(TyperGroup):
    """The command group: results that cannot reach stdout end a command cleanly, and
    options take plain values without Pydantic (``coercion``).

    A reader that went away (a broken pipe) ends it quietly with
    EXIT_BROKEN_PIPE, as ``head`` expects of the tools it reads; a stdout
    closed from the start is an error, since the results would be lost.
    """

    def parse_args(self, ctx, args):
        coercion.install(self, ctx)
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        return name, command and coercion.install(command, ctx), rest

    def invoke(self, ctx):
        try:
            try:
                return super().invoke(ctx)
            finally:  # results still buffered meet a full device here, where it can be said in one line
                sys.stdout.flush()
        except StdoutClosedError:
            fail("cannot write the results: standard output is closed (run without >&-, or redirect it "
                 "to a file)")
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except OSError as exc:  # a full disk or quota (cnn banks >/dev/full), or a failing device
            if exc.errno not in _DEVICE_FULL:
                raise
            _silence_stdout()
            fail(f"cannot write the results: {exc.strerror}")


#: The errors of a write that found no room: the message is one line, not a traceback.
_DEVICE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _silence_stdout():
    """Point stdout at /dev/null, so that flushing what is still buffered cannot fail again."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)

app = typer.Typer(
    cls=_Group,
    name="cnn",
    help="Convolutional feature maps and small CNNs on the CPU.\n\n"
    "Example: cnn apply photo.png   (edge, texture and energy maps, layer by layer)",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
banks_app = typer.Typer(
    help="List the filter banks and pipelines, or draw a bank's kernels.\n\n"
    "Example: cnn banks   |   cnn banks show edges -o edges.png",
    invoke_without_command=True,
    no_args_is_help=False,
)
app.add_typer(banks_app, name="banks")


def _choice(name, values):
    """An option's Enum of ``values`` (from ``choices``); a member's name is its value with - as _."""
    return Enum(name, [(v.replace("-", "_"), v) for v in values], type=str, module=__name__)


Color = _choice("Color", choices.COLORS)
ImportColor = _choice("ImportColor", choices.IMPORT_COLORS)
Normalize = _choice("Normalize", choices.NORMALIZATIONS)
NormalizePer = _choice("NormalizePer", choices.NORMALIZE_PER)
RawDtype = _choice("RawDtype", choices.DTYPES)
Colormap = _choice("Colormap", choices.COLORMAPS)
Optimizer = _choice("Optimizer", choices.OPTIMIZERS)
Schedule = _choice("Schedule", choices.SCHEDULES)
Pooling = _choice("Pooling", choices.POOLINGS)
AugmentFill = _choice("AugmentFill", choices.AUGMENT_FILLS)
EvalSplit = _choice("EvalSplit", choices.EVAL_SPLITS)
ExplainMethod = _choice("ExplainMethod", choices.EXPLAIN_METHODS)


MaxPixels = Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this (decompression bombs).")]

# Where maps come from (``sources.load_source``): the same three options in every command that reads images.
BankOption = Annotated[Optional[List[str]], typer.Option("--bank", help="Use this bank (name, file, or NAME:PATTERN) as one layer. Repeatable.")]
PipelineOption = Annotated[Optional[str], typer.Option("--pipeline", help="Use this pipeline (name or file) instead of the default.")]
ModelOption = Annotated[Optional[Path], typer.Option("--model", help="Use a trained model's layers (its own size and colour).")]
Workers = Annotated[Optional[int], typer.Option(min=1, help="Run on a local Dask cluster of this many single-threaded worker processes (at most one per core; a run of fewer images than CNN_LOCAL_CLUSTER_MIN_IMAGES, 1000 by default, stays in one process).")]
Scheduler = Annotated[Optional[str], typer.Option(help="Run on an existing Dask cluster: its scheduler's address, tcp://HOST:PORT (e.g. tcp://host:8786).")]


#: Error lines longer than this are shortened in the middle (a message may
#: quote a value from a hostile file).
MAX_ERROR_CHARS = 2000


def one_line(message):
    """``message`` as one printable line (``printable``), at most MAX_ERROR_CHARS characters."""
    text = printable(message)
    if len(text) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        text = f"{text[:half]} … {text[-half:]}"
    return text


def echo(text, err=False):
    """Print a line of results (or a note, with ``err``) that may hold names: ``printable``."""
    typer.echo(printable(text), err=err)


def fail(message, code=EXIT_FAILED):
    """Print one line, ``Error: ...``, to stderr and exit (no traceback)."""
    typer.echo(f"Error: {one_line(message)}", err=True)
    raise typer.Exit(code)


def report_failures(failed):
    """One ``Error: ...`` line on stderr per failed input of a batch ((path, message) pairs)."""
    for _, message in failed:
        typer.echo(f"Error: {one_line(message)}", err=True)


def exit_batch(failed, succeeded):
    """End a batch in which some inputs failed: exit 3 when others ``succeeded``, else 1."""
    if failed:
        raise typer.Exit(EXIT_PARTIAL if succeeded else EXIT_FAILED)


def _version(value: bool):
    if value:
        typer.echo(f"cnn {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
):
    """Convolutional feature maps and small CNNs on the CPU."""


def check_one_source(bank, pipeline, model):
    if sum(bool(x) for x in (bank, pipeline, model)) > 1:
        fail("give only one of --bank, --pipeline and --model", EXIT_USAGE)


def check_cluster_options(workers, scheduler):
    if workers and scheduler:
        fail("give only one of --workers and --scheduler", EXIT_USAGE)


def open_cluster(workers, scheduler, inputs=(), out=None):
    """A Dask cluster for --workers / --scheduler, or None, saying on stderr what starts.

    ``--workers`` is capped at the machine's cores, and a run of fewer images
    than ``config.local_cluster_min_images()`` (counted from ``inputs``, the
    command's INPUT arguments, up to that number, leaving out ``out``) runs in this process instead: both
    are said in one line. A malformed --scheduler, or a missing Dask, is a
    usage error; a scheduler that cannot be reached, one ``Error:`` line.
    """
    check_cluster_options(workers, scheduler)
    if not (workers or scheduler):
        return None
    from ..cluster import Cluster, ClusterError, ClusterUsageError, capped_workers, require_dask, scheduler_address

    try:
        require_dask()
        if scheduler:
            scheduler_address(scheduler)
        else:
            workers, note = capped_workers(workers)
            if note:
                echo(note, err=True)
            if not _enough_for_local_cluster(workers, inputs, out):
                return None
            echo(f"starting a local Dask cluster: {workers} worker(s)…", err=True)
        return Cluster(workers=workers, scheduler=scheduler)
    except ClusterUsageError as exc:
        fail(str(exc), EXIT_USAGE)
    except ClusterError as exc:
        fail(str(exc), EXIT_USAGE if "pip install" in str(exc) else EXIT_FAILED)


def _enough_for_local_cluster(workers, inputs, out):
    """Whether the command's inputs repay a local cluster's start-up; when not, say so."""
    import itertools

    from ..cluster import local_cluster_repays
    from ..inputs import Input, iter_inputs

    try:
        threshold = config.local_cluster_min_images()
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    found = iter_inputs(inputs, exclude=[out] if out else [])
    images = sum(isinstance(entry, Input) for entry in itertools.islice(found, threshold))
    if local_cluster_repays(images):
        return True
    echo(f"--workers {workers}: {images} image(s) are too few to repay a local Dask cluster's start-up "
         f"(about 5 s with its workers' warm-up; it starts from {threshold} images, CNN_LOCAL_CLUSTER_MIN_IMAGES); running in one process, "
         "which uses every core already", err=True)
    return False


def close_cluster(cluster):
    if cluster is not None:
        cluster.close()


def load_model_or_fail(path):
    from ..modelfile import load_model

    try:
        return load_model(path)
    except (ValueError, MemoryError) as exc:
        fail(out_of_memory(exc))


def out_of_memory(exc, limit=None):
    """The message of a ValueError, or of a MemoryError (which can only come when the
    memory limit, ``limit`` or the default, was raised past what the machine has)."""
    if isinstance(exc, MemoryError):
        limit = config.memory_limit() if limit is None else limit
        return (f"out of memory ({exc}); the memory limit ({config.describe_bytes(limit)}) "
                "is more than this machine can give: lower --max-memory or CNN_MAX_MEMORY")
    return str(exc)


def memory_limit_option(text):
    """A ``--max-memory`` value in bytes, to pass to the library; None keeps the default
    (``config.memory_limit``). A bad value, or a bad CNN_MAX_MEMORY, is a usage error."""
    try:
        if text is None:
            config.memory_limit()
            return None
        return config.parse_bytes(text)
    except ValueError as exc:
        fail(f"--max-memory: {exc}" if text is not None else str(exc), EXIT_USAGE)


def check_output_or_fail(path):
    """Refuse, in one line, an output path that is a device node, pipe or socket (even with --force)."""
    from ..fileio import check_output

    try:
        check_output(path)
    except OSError as exc:
        fail(exc.strerror or str(exc))


class _Stop:
    """Which signal stopped a command: its name and exit status (128 + its number)."""

    def __init__(self):
        self.signum = signal.SIGINT
        self.requested = False

    @property
    def name(self):
        return signal.Signals(self.signum).name

    @property
    def exit_code(self):
        return 128 + int(self.signum)


#: The signals that stop a command that writes, cleanly.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


@contextlib.contextmanager
def stopped_by_signals(signals=STOP_SIGNALS, *, gently=False):
    """Turn SIGTERM and SIGHUP, like Ctrl-C, into KeyboardInterrupt while the block runs,
    so that the library cleans up as it does for Ctrl-C; yields which signal came.

    A second signal while cleaning up is ignored, so the clean-up finishes.
    With ``gently``, the first signal is only recorded (``requested``), for a
    command that stops at its next safe point (``train``: after the batch, with
    a checkpoint); a second one then raises KeyboardInterrupt at once.
    """
    stop = _Stop()
    numbers = [getattr(signal, name) for name in signals if hasattr(signal, name)]

    def on_signal(signum, frame):
        if gently and not stop.requested:
            stop.signum, stop.requested = signum, True
            return
        if not stop.requested:
            stop.signum = signum
        stop.requested = True
        for number in numbers:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(number, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = {}
    for number in numbers:
        with contextlib.suppress(ValueError, OSError):  # only the main thread may set handlers
            previous[number] = signal.signal(number, on_signal)
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(number, handler)


@contextlib.contextmanager
def stoppable(kept):
    """``stopped_by_signals`` for a command that writes: a signal that lands outside the
    library's own loop (which records it in its summary) ends the command with the same
    line as ``end_if_interrupted``. ``kept`` says what is left and how to continue."""
    with stopped_by_signals() as stopped:
        try:
            yield stopped
        except KeyboardInterrupt:
            fail(f"interrupted by {stopped.name}: {kept}", stopped.exit_code)


def run_with_progress(name, out, call):
    """A streaming command's library call ``call(progress)``, as every such command runs it: the
    progress bar, the signals, a usage error for a bad option (layersel's OptionError), one line
    for any other refusal, and each failed input named. Returns the run's summary."""
    from ..layersel import OptionError
    from ..terminal import ProgressDisplay

    kept = f"the images finished in {out}/ are kept, and no unfinished output is left"
    try:
        with ProgressDisplay(name) as progress, stoppable(kept) as stopped:
            summary = call(progress)
    except OptionError as exc:  # a --layer, --class or --patch the source does not have
        fail(str(exc), EXIT_USAGE)
    except ValueError as exc:  # OUT cannot be created, or another run holds it
        fail(str(exc))
    end_if_interrupted(summary, stopped, kept)
    report_failures(summary.failed)
    return summary


def end_if_interrupted(summary, stopped, kept):
    """Exit 128 + the signal's number, with one line, when the run stopped at a signal."""
    if summary.interrupted:
        fail(f"interrupted by {stopped.name}: {kept}", stopped.exit_code)


def stdout_console():
    """A rich console on stdout whose broken pipe ends the command as every other write does
    (rich's own answer is exit 1; see ``_Group``)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self):
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the reader of standard output went away")

    return _Console()


def echo_json(value):
    """Print ``value`` as one line of strict JSON: a NaN or an infinity (a model
    that yields them, a metric of an empty class) becomes null, because
    ``NaN`` is not JSON and would break the reader's parser."""
    import json
    import math

    def strict(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        return v

    typer.echo(json.dumps(strict(value), allow_nan=False))


def rich_table(header, rows, title):
    """A rich table of text rows; every cell is printed literally (no markup)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(*(escape(printable(cell)) for cell in header), title=escape(printable(title)))
    for row in rows:
        table.add_row(*(escape(printable(cell)) for cell in row))
    return table
