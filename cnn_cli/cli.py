"""The ``cnn`` command line: a thin shell over the library.

Only this module imports typer and rich. It imports the engine (and so Numba)
inside the commands that need it, so ``cnn --help`` answers at once.

Exit codes: 0 success; 1 the tool refused or failed; 2 a usage error;
3 a batch finished but some inputs failed (each is listed on stderr).
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import __version__

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


class Color(str, Enum):
    gray = "gray"
    rgb = "rgb"


class Normalize(str, Enum):
    per_map = "per-map"
    per_layer = "per-layer"
    none = "none"


class Colormap(str, Enum):
    gray = "gray"
    viridis = "viridis"
    magma = "magma"
    coolwarm = "coolwarm"


def fail(message, code=EXIT_FAILED):
    """Print one line, ``Error: ...``, to stderr and exit (no traceback)."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


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


@app.command()
def apply(
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders (walked recursively) or globs.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; each image gets OUT/<name>/.")] = Path("cnn-out"),
    bank: Annotated[Optional[List[str]], typer.Option("--bank", help="Apply this bank (name, file, or NAME:PATTERN) as one layer. Repeatable.")] = None,
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="Run this pipeline (name or file) instead of the default.")] = None,
    color: Annotated[Color, typer.Option(help="Read images as luminance (gray) or as R, G, B channels.")] = Color.gray,
    normalize: Annotated[Normalize, typer.Option(help="How PNG brightness is scaled: per map, per layer, or raw values in [0, 1].")] = Normalize.per_map,
    cmap: Annotated[Colormap, typer.Option(help="Colour map of the PNGs (coolwarm is diverging).")] = Colormap.gray,
    max_size: Annotated[Optional[int], typer.Option(min=1, help="Downscale images so the longer side is at most this many pixels.")] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this (decompression bombs).")] = 100_000_000,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output folders.")] = False,
):
    """Write every feature map of every layer as PNGs, grids, raw arrays and a manifest.

    With no --bank or --pipeline, the default pipeline runs: edges and Gabor
    textures, |x|, max-pool, local energy (Gaussian), max-pool.

    Examples:

      cnn apply photo.png

      cnn apply photos/ -o maps --pipeline harris

      cnn apply 'scans/*.tif' --bank edges --bank 'textures:laws_*' --force
    """
    from .apply import ApplyOptions, apply_images
    from .filterbank import BankError
    from .imageio import find_images
    from .pipeline import DEFAULT_PIPELINE, bank_pipeline, load_pipeline

    if bank and pipeline:
        fail("give --bank or --pipeline, not both", EXIT_USAGE)
    paths, problems = find_images(inputs)
    for problem in problems:
        typer.echo(f"Error: {problem}", err=True)
    if not paths:
        raise typer.Exit(EXIT_FAILED)
    try:
        pipe = bank_pipeline(bank) if bank else load_pipeline(pipeline or DEFAULT_PIPELINE)
        pipe.bind(["gray"] if color is Color.gray else ["R", "G", "B"])
    except BankError as exc:
        fail(str(exc))
    options = ApplyOptions(color=color.value, max_size=max_size, max_pixels=max_pixels,
                           normalize=normalize.value, cmap=cmap.value, force=force)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create output folder {out}: {exc.strerror or exc}")
    results = _with_progress(paths, lambda on_result: apply_images(paths, out, pipe, options, on_result))
    failed = [r for r in results if r.error] + [None] * len(problems)
    done = [r for r in results if not r.error]
    for r in results:
        if r.error:
            typer.echo(f"Error: {r.error}", err=True)
    maps = sum(r.maps for r in done)
    typer.echo(f"{len(done)} image(s), {maps} maps written to {out}/; {len(failed)} failed", err=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL if done else EXIT_FAILED)


def _with_progress(paths, run):
    """Run ``run(on_result)`` with a progress bar on stderr, shown only on a terminal."""
    if not sys.stderr.isatty() or len(paths) < 2:
        return run(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("apply"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=_stderr_console(), transient=True) as progress:
        task = progress.add_task("apply", total=len(paths))
        return run(lambda result: progress.advance(task))


@banks_app.callback()
def banks_list(ctx: typer.Context):
    """List the shipped banks (kernel count, sizes, description) and pipelines."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .filterbank import builtin_names, load_bank
    from .pipeline import load_pipeline

    table = Table("bank", "kernels", "size", "description", title="Filter banks")
    for name in builtin_names("bank"):
        bank = load_bank(name)
        sizes = sorted({k.size for k in bank.kernels})
        table.add_row(name, str(len(bank.kernels)), ", ".join(f"{h}x{w}" for h, w in sizes), escape(bank.description))
    pipes = Table("pipeline", "layers", "description", title="Pipelines")
    for name in builtin_names("pipeline"):
        pipe = load_pipeline(name)
        pipes.add_row(name, str(len(pipe.layers)), escape(pipe.description))
    console = Console()
    console.print(table)
    console.print(pipes)


@banks_app.command("show")
def banks_show(
    bank: Annotated[str, typer.Argument(help="A bank name, file, or NAME:PATTERN.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG file to write.")] = Path("kernels.png"),
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
):
    """Draw a bank's kernels, labelled, on a diverging scale (zero is mid-grey).

    Example: cnn banks show textures:gabor_* -o gabor.png
    """
    from .fileio import write_bytes_atomic
    from .filterbank import BankError, load_bank
    from .viz import grid, kernel_tiles, png_bytes

    if out.exists() and not force:
        fail(f"{out} exists; use --force to replace it")
    try:
        loaded = load_bank(bank)
    except BankError as exc:
        fail(str(exc))
    tiles = kernel_tiles([k.weights for k in loaded.kernels])
    image = grid(tiles, [k.name for k in loaded.kernels])
    try:
        write_bytes_atomic(out, png_bytes(image))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(f"{len(loaded.kernels)} kernels drawn to {out}", err=True)


@app.command()
def info(
    target: Annotated[str, typer.Argument(help="A pipeline name or file.", show_default=False)],
    size: Annotated[int, typer.Option(min=1, help="Input height and width for the shapes.")] = 512,
    color: Annotated[Color, typer.Option(help="Input channels: gray (1) or rgb (3).")] = Color.gray,
):
    """Show each layer: output shape, parameters and receptive field.

    Example: cnn info default --size 256
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .filterbank import BankError
    from .pipeline import load_pipeline

    try:
        pipe = load_pipeline(target).bind(["gray"] if color is Color.gray else ["R", "G", "B"])
        rows = pipe.summary(size, size)
    except BankError as exc:
        fail(str(exc))
    table = Table("#", "layer", "output (C, H, W)", "params", "receptive field",
                  title=f"{escape(pipe.name)}: {escape(pipe.description)}")
    for row in rows:
        rf = row.receptive_field if row.receptive_field == "global" else f"{row.receptive_field}x{row.receptive_field}"
        table.add_row(str(row.index), escape(row.layer.describe()), str(row.shape), str(row.layer.num_params), rf)
    Console().print(table)


def main():
    app()


if __name__ == "__main__":
    main()
