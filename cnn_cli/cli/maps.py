"""Commands that write feature maps and describe pipelines: apply, banks, info."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .. import choices
from .common import (
    EXIT_USAGE, BankOption, Color, Colormap, MaxPixels, ModelOption, Normalize, NormalizePer, PipelineOption, RawDtype,
    Scheduler, Workers, app, banks_app, check_one_source, check_output_or_fail, close_cluster, echo, echo_json,
    end_if_interrupted, exit_batch, fail, load_model_or_fail, memory_limit_option, open_cluster, out_of_memory,
    printable, report_failures, rich_table, stdout_console, stoppable,
)

#: What an interrupted apply leaves, and how to go on.
APPLY_KEPT = ("the images finished in {out}/ are kept, and no unfinished output is left; continue with the same "
              "command and --skip-existing")

@app.command()
def apply(
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders (walked recursively) or globs.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; each image gets OUT/<name>/, mirroring folder inputs.")] = Path("cnn-out"),
    bank: BankOption = None,
    pipeline: PipelineOption = None,
    model: ModelOption = None,
    save: Annotated[Optional[str], typer.Option(help="What to write besides manifest.json: any of maps (a PNG per map), grids, raw (features.npz), comma-separated.  [default: maps,grids,raw; grids alone for a network of over 2,048 maps, such as an imported ResNet]", show_default=False)] = None,
    layers: Annotated[Optional[str], typer.Option("--layers", help="Write only these layers, comma-separated: indices (negative from the end), 'last', names (layer<i>), kinds (every layer of that kind), or ranges such as 2-4 or 2: (e.g. 0,2 or maxpool).")] = None,
    dtype: Annotated[RawDtype, typer.Option(help="Type of the raw maps in features.npz; float16 halves them.")] = RawDtype.float32,
    color: Annotated[Color, typer.Option(help="Read images as luminance (gray) or as R, G, B channels.")] = Color.gray,
    normalize: Annotated[Normalize, typer.Option(help=(
        "How values become PNG brightness. asinh: min to max on an asinh curve, so weak and strong responses "
        "both show and nothing is clipped; robust: the 1st to 99th percentile, the rest clipped; minmax: min to "
        "max, linear; none: raw values, 0 to 1. Signed maps are symmetric, zero mid-grey. The older per-map and "
        "per-layer mean minmax --per map and minmax --per layer."))] = Normalize(choices.DEFAULT_NORMALIZATION),
    per: Annotated[Optional[NormalizePer], typer.Option("--per", help=(
        "Fit the scale to each map on its own (map), or one scale to all maps of a layer so they can be "
        "compared (layer; the grid gets a colour bar).  [default: map]"), show_default=False)] = None,
    cmap: Annotated[Colormap, typer.Option(help="Colour map of the PNGs (coolwarm is diverging).")] = Colormap.gray,
    max_size: Annotated[Optional[int], typer.Option(min=1, help="Downscale images so the longer side is at most this many pixels.")] = None,
    max_pixels: MaxPixels = 100_000_000,
    max_memory: Annotated[Optional[str], typer.Option("--max-memory", help="Refuse images whose maps would need more memory than this (e.g. 8G) [default: half this machine's memory, or CNN_MAX_MEMORY].", show_default=False)] = None,
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Keep inputs whose output folder exists (a finished image) and do the rest: resumes a stopped run.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output folders.")] = False,
    workers: Workers = None,
    scheduler: Scheduler = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's summary as one JSON object on stdout.")] = False,
    no_html: Annotated[bool, typer.Option("--no-html", help="Write no HTML report (OUT/index.html and each folder's index.html).")] = False,
):
    """Write every feature map of every layer as PNGs, grids, raw arrays and a manifest.

    With no --bank or --pipeline, the default pipeline runs: edges and Gabor
    textures, |x|, max-pool, local energy (Gaussian), max-pool.

    Each grid tile shows its map's value range; a layer of 1x1 maps (global
    pooling) is drawn as a bar chart, one bar per channel.

    An HTML report opens from the file system: OUT/index.html lists the
    images, and each folder's index.html shows its input, grids and maps
    (click one for full resolution) with their statistics; --no-html skips it.

    Examples:

      cnn apply photo.png

      cnn apply photos/ -o maps --pipeline harris --skip-existing

      cnn apply photo.png --normalize robust --per layer --cmap coolwarm

      cnn apply 'scans/*.tif' --bank edges --bank 'textures:laws_*' --force

      cnn apply photos/ -o feats --save raw --layers last --dtype float16 --workers 2
    """
    from ..apply import ApplyOptions, default_save, parse_save, run, select_layers
    from ..layersel import OptionError
    from ..sources import load_source

    if force and skip_existing:
        fail("give only one of --force and --skip-existing", EXIT_USAGE)
    alias = choices.NORMALIZE_ALIASES.get(normalize.value)
    if alias and per is not None and per.value != alias[1]:
        fail(f"--normalize {normalize.value} already fits one scale per {alias[1]}; "
             f"use --normalize {alias[0]} --per {per.value}", EXIT_USAGE)
    check_one_source(bank, pipeline, model)
    try:
        chosen = None if save is None else parse_save(save)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    memory_limit = memory_limit_option(max_memory)
    check_output_or_fail(out)
    cluster = open_cluster(workers, scheduler, inputs, out)
    try:
        source = load_source(banks=bank, pipeline=pipeline, model=model and str(model), color=color.value,
                             memory_limit=memory_limit)
        if chosen is None:
            chosen = default_save(source.pipeline)
            if chosen != frozenset(choices.SAVE):
                maps = sum(len(channels) for channels in source.pipeline.channels)
                echo(f"{maps:,} maps in {len(source.pipeline.layers)} layers: writing their grids "
                     "(--save maps,grids,raw writes every map and the raw arrays too)", err=True)
        options = ApplyOptions(color=source.color, max_size=max_size, max_pixels=max_pixels,
                               normalize=normalize.value, per=(per or NormalizePer.map).value,
                               cmap=cmap.value, force=force,
                               skip_existing=skip_existing, save=chosen, dtype=dtype.value,
                               prepare=source.prepare, max_memory=memory_limit, html=not no_html)
        if layers is not None:
            options.layers = select_layers(source.pipeline, layers)
    except OptionError as exc:  # a --layers the source does not have
        close_cluster(cluster)
        fail(str(exc), EXIT_USAGE)
    except (ValueError, MemoryError) as exc:
        close_cluster(cluster)
        fail(out_of_memory(exc, memory_limit))
    from ..terminal import ProgressDisplay

    kept = APPLY_KEPT.format(out=out)
    try:
        with ProgressDisplay("apply") as progress, stoppable(kept) as stopped:
            summary = run(inputs, out, source.pipeline, options, progress=progress, cluster=cluster)
    except ValueError as exc:  # OUT cannot be created, or another run holds it
        fail(str(exc))
    finally:
        close_cluster(cluster)
    end_if_interrupted(summary, stopped, kept)
    _report_batch(summary, out, json_out)


@banks_app.callback()
def banks_list(ctx: typer.Context):
    """List the shipped banks (kernel count, sizes, description), pipelines and architectures."""
    if ctx.invoked_subcommand is not None:
        return
    from ..summary import catalog

    console = stdout_console()
    for title, header, rows in catalog():
        console.print(rich_table(header, rows, title=title))


@banks_app.command("show")
def banks_show(
    bank: Annotated[Optional[str], typer.Argument(help="A bank name, file, or NAME:PATTERN.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--out", help="PNG file to write [default: NAME.kernels.png, which a later run replaces].")] = None,
    model: Annotated[Optional[Path], typer.Option("--model", help="Draw the learned first-layer kernels of this model instead.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
):
    """Draw a bank's kernels, labelled, on a diverging scale (zero is mid-grey).

    A multichannel kernel shows its channels side by side; those of a colour
    kernel are tinted red, green and blue, and lettered R, G, B.

    Examples:

      cnn banks show edges                 (writes edges.kernels.png)

      cnn banks show 'textures:gabor_*' -o gabor.png

      cnn banks show --model model.npz -o learned.png
    """
    from ..fileio import write_bytes_atomic
    from ..filterbank import BankError, builtin_names, load_bank
    from ..inputs import safe_name
    from ..owned import is_cnn_png, marked_png
    from ..viz import grid, kernel_tiles, png_bytes

    if bank is None and model is None:
        fail(f"give a bank to draw ({', '.join(builtin_names('bank'))}, or a bank file), or --model MODEL; "
             "for example: cnn banks show edges", EXIT_USAGE)
    if bank is not None and model is not None:
        fail("give a bank, or --model, to draw, not both", EXIT_USAGE)
    default = out is None  # named after what is drawn; a later run replaces the drawing it made
    if default:
        name = Path(model).stem if model else Path(bank).stem if bank.endswith(".toml") else bank
        out = Path(safe_name(name, 60) + ".kernels.png")
    check_output_or_fail(out)
    if out.exists() and not force and not (default and is_cnn_png(out)):
        fail(f"{out} exists; use --force to replace it" + ("" if default else " or leave out -o"))
    if model is not None:
        from ..modelfile import first_conv

        network, _, _ = load_model_or_fail(model)
        conv = first_conv(network)
        if conv is None:
            fail(f"{model}: the model has no conv layer to draw")
        weights = conv.params["weight"]
        kernels, labels = list(weights), [f"filter{i}" for i in range(len(weights))]
    else:
        try:
            loaded = load_bank(bank)
        except BankError as exc:
            fail(str(exc))
        kernels, labels = [k.weights for k in loaded.kernels], [k.name for k in loaded.kernels]
    try:
        image = grid(kernel_tiles(kernels), labels)
    except MemoryError as exc:
        fail(out_of_memory(exc))
    try:
        write_bytes_atomic(out, marked_png(png_bytes(image)))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    echo(f"{len(kernels)} kernels drawn to {out}", err=True)


@app.command()
def info(
    target: Annotated[str, typer.Argument(help="A model file (.npz), or a pipeline or architecture name or file.", show_default=False)],
    size: Annotated[int, typer.Option(min=1, help="Input height and width, for pipelines and architectures.")] = 512,
    color: Annotated[Color, typer.Option(help="Input channels, for pipelines and architectures: gray (1) or rgb (3).")] = Color.gray,
    profile: Annotated[bool, typer.Option("--profile", help="Time one forward pass of a model, step by step (a conv and the ReLU, clip or pooling fused into it are one step) and per kind, on random images at its own size.")] = False,
    batch: Annotated[int, typer.Option(min=1, max=1024, help="Images in the forward pass --profile times.")] = 1,
):
    """Show each layer: output shape, parameters and receptive field.

    For a model, also its classes and preprocessing. With --profile, where
    one forward pass of a model spends its time, as ONNX Runtime's profiler
    shows it: that is how to find a slow layer.

    Examples:

      cnn info default --size 256

      cnn info model.npz

      cnn info resnet --size 32

      cnn info resnet18.npz --profile --batch 8
    """
    from rich.markup import escape

    from ..summary import summarize

    if profile:
        _print_profile(target, batch)
        return

    try:
        summary = summarize(target, color=color.value, size=size)
    except (ValueError, MemoryError) as exc:  # ModelError, SpecFileError; memory past a raised limit
        fail(out_of_memory(exc))
    rows = [(r.index, r.layer, r.shape, r.params, r.receptive_field) for r in summary.rows]
    console = stdout_console()
    console.print(rich_table(("#", "layer", "output shape", "params", "receptive field"), rows, summary.title))
    for note in summary.notes:
        console.print(escape(printable(note)), highlight=False)


def _print_profile(target, batch):
    from ..summary import profile_model

    if not target.endswith((".npz", ".onnx")):
        fail("--profile times a model (.npz or .onnx); a pipeline's layers are timed by cnn apply", EXIT_USAGE)
    try:
        result = profile_model(target, batch=batch)
    except (ValueError, MemoryError) as exc:
        fail(out_of_memory(exc))
    console = stdout_console()
    rows = [(i, node.name, node.kind, node.shape, f"{node.ms:.2f}") for i, node in enumerate(result.nodes)]
    console.print(rich_table(("#", "node(s)", "kind", "output shape", "ms"), rows, result.title))
    kinds = [(k.kind, k.count, f"{k.ms:.2f}", f"{100 * k.share:.1f}%") for k in result.kinds]
    console.print(rich_table(("kind", "steps", "ms", "share"), kinds, "per layer kind"))
    gflops = 2 * result.multiply_adds / (result.total_ms * 1e6) if result.total_ms else 0.0
    console.print(f"{result.total_ms:.1f} ms in all; {result.multiply_adds / 1e9:.2f} G multiply-adds, "
                  f"{gflops:.1f} GFLOP/s", highlight=False)


def _report_batch(summary, out, json_out):
    """Print a batch's failures and summary; exit 3 when some inputs failed, 1 when all did.
    Inputs refused because their output exists are said in one line, with how to rerun."""
    from ..owned import EXISTS, is_cnn_page

    exist = [message for _, message in summary.failed if message.endswith(EXISTS)]
    if json_out or len(exist) < 2:
        report_failures(summary.failed)
    else:
        report_failures([failure for failure in summary.failed if not failure[1].endswith(EXISTS)])
        every = "all " if len(exist) == len(summary.failed) and not (summary.done or summary.skipped) else ""
        echo(f"Error: {every}{len(exist)} outputs exist in {out}/; rerun with --force to replace them "
             "or --skip-existing to keep them and write only the missing ones", err=True)
        if every:
            exit_batch(summary.failed, 0)
    report = Path(out) / "index.html"
    report = report if summary.done and is_cnn_page(report) else None
    total = summary.done + summary.skipped + len(summary.failed)
    if json_out:
        echo_json({
            "written": summary.done, "skipped": summary.skipped, "maps": summary.maps, "bytes": summary.bytes,
            "seconds": round(summary.seconds, 3), "output": str(out),
            "failed": [{"input": path, "error": message} for path, message in summary.failed],
            "removed": summary.removed, "report": report and str(report),
        })
    elif total > 1 or summary.done or summary.skipped:
        # A batch ends with a summary; a single failed input has said all in its one line.
        rate = summary.done / summary.seconds if summary.seconds else 0.0
        skipped = f", {summary.skipped} skipped (output exists)" if summary.skipped else ""
        echo(f"{summary.done} image(s), {summary.maps} maps, {summary.bytes / 2**20:.1f} MB written to "
             f"{out}/ in {summary.seconds:.1f} s ({rate:.1f} images/s){skipped}; "
             f"{len(summary.failed)} failed", err=True)
        if report:
            echo(f"report: {report}", err=True)
    exit_batch(summary.failed, summary.done or summary.skipped)
