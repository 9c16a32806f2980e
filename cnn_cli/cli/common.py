"""What every command shares: the app, exit codes, option types, one-line errors, clusters.

Only the ``cnn_cli.cli`` package imports typer and rich. Commands import the
engine (and so Numba) inside their bodies, so ``cnn --help`` answers at once.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from .. import __version__, choices, config

# BLAS on one thread, and an allocator that reuses freed memory: see
# config.tune_process. This must happen before numpy is first imported.
config.tune_process()

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3

app = typer.Typer(
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
RawDtype = _choice("RawDtype", choices.DTYPES)
Colormap = _choice("Colormap", choices.COLORMAPS)
Optimizer = _choice("Optimizer", choices.OPTIMIZERS)
Schedule = _choice("Schedule", choices.SCHEDULES)
Pooling = _choice("Pooling", choices.POOLINGS)


MaxPixels = Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this (decompression bombs).")]


def fail(message, code=EXIT_FAILED):
    """Print one line, ``Error: ...``, to stderr and exit (no traceback)."""
    typer.echo(f"Error: {message}", err=True)
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
    except ValueError as exc:
        fail(str(exc))


def rich_table(header, rows, title):
    """A rich table of text rows; every cell is printed literally (no markup)."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(*(escape(str(cell)) for cell in header), title=escape(title))
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    return table
