"""What every command shares: the app, exit codes, option types, one-line errors, clusters.

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
from typing import Annotated

import typer
from typer.core import TyperGroup

from .. import __version__, choices, config

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
    """The command group: results that cannot reach stdout end a command cleanly.

    A reader that went away (a broken pipe) ends it quietly with
    EXIT_BROKEN_PIPE, as ``head`` expects of the tools it reads; a stdout
    closed from the start is an error, since the results would be lost.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StdoutClosedError:
            fail("cannot write the results: standard output is closed (run without >&-, or redirect it "
                 "to a file)")
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None


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


#: Error lines longer than this are shortened in the middle (a message may
#: quote a value from a hostile file).
MAX_ERROR_CHARS = 2000


def one_line(message):
    """``message`` as one printable line: control characters (a newline in a file name)
    escaped, and at most MAX_ERROR_CHARS characters."""
    text = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in str(message))
    if len(text) > MAX_ERROR_CHARS:
        half = MAX_ERROR_CHARS // 2
        text = f"{text[:half]} … {text[-half:]}"
    return text


def fail(message, code=EXIT_FAILED):
    """Print one line, ``Error: ...``, to stderr and exit (no traceback)."""
    typer.echo(f"Error: {one_line(message)}", err=True)
    raise typer.Exit(code)


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


def open_cluster(workers, scheduler):
    """A Dask cluster for --workers / --scheduler, or None; a missing Dask is a usage error."""
    if not (workers or scheduler):
        return None
    from ..cluster import Cluster, ClusterError

    try:
        return Cluster(workers=workers, scheduler=scheduler)
    except ClusterError as exc:
        fail(str(exc), EXIT_USAGE if "pip install" in str(exc) else EXIT_FAILED)


def close_cluster(cluster):
    if cluster is not None:
        cluster.close()


def load_model_or_fail(path):
    from ..modelfile import load_model

    try:
        return load_model(path)
    except (ValueError, MemoryError) as exc:
        fail(out_of_memory(exc))


def out_of_memory(exc):
    """The message of a ValueError, or of a MemoryError (which can only come when the
    memory limit was raised past what the machine has)."""
    if isinstance(exc, MemoryError):
        return (f"out of memory ({exc}); the memory limit ({config.describe_bytes(config.memory_limit())}) "
                "is more than this machine can give: lower --max-memory or CNN_MAX_MEMORY")
    return str(exc)


def use_memory_limit(text):
    """Parse a ``--max-memory`` value (None: keep the default) and make it this process's
    limit (``config.MEMORY_ENV``), so every library call sees it; returns it in bytes."""
    try:
        if text is None:
            config.memory_limit()  # a bad CNN_MAX_MEMORY is a usage error too
            return None
        limit = config.parse_bytes(text)
    except ValueError as exc:
        fail(f"--max-memory: {exc}" if text is not None else str(exc), EXIT_USAGE)
    os.environ[config.MEMORY_ENV] = str(limit)
    return limit


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

    @property
    def name(self):
        return signal.Signals(self.signum).name

    @property
    def exit_code(self):
        return 128 + int(self.signum)


@contextlib.contextmanager
def stopped_by_signals(signals=("SIGINT", "SIGTERM", "SIGHUP")):
    """Turn SIGTERM and SIGHUP, like Ctrl-C, into KeyboardInterrupt while the block runs,
    so that the library cleans up as it does for Ctrl-C; yields which signal came.

    A second signal while cleaning up is ignored, so the clean-up finishes.
    """
    stop = _Stop()
    numbers = [getattr(signal, name) for name in signals if hasattr(signal, name)]

    def on_signal(signum, frame):
        stop.signum = signum
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

    table = Table(*(escape(str(cell)) for cell in header), title=escape(title))
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    return table
