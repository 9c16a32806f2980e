"""Commands that show why a model decided, and what its channels respond to: explain, units."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import (
    EXIT_USAGE, BankOption, Color, Colormap, ExplainMethod, MaxPixels, ModelOption, PipelineOption, app,
    check_one_source, echo, echo_json, end_if_interrupted, exit_batch, fail, load_model_or_fail, report_failures,
    rich_table, run_with_progress, stdout_console, stoppable,
)


@app.command()
def explain(
    images: Annotated[List[str], typer.Argument(help="Image files, folders (walked recursively) or globs.", show_default=False)],
    model: Annotated[Path, typer.Option("--model", help="Model file from cnn train.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; each image gets OUT/<name>/, named as cnn apply names it.")] = Path("cnn-explain"),
    method: Annotated[ExplainMethod, typer.Option("--method", help="gradcam (Selvaraju et al.), gradcam++ (Chattopadhyay et al.), hirescam (Draelos & Carin), scorecam (Wang et al.), or occlusion (Zeiler & Fergus).")] = ExplainMethod.gradcam,
    classes: Annotated[Optional[List[str]], typer.Option("--class", help="Explain this class (a class name of the model). Repeatable. [default: the top class]")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", min=1, help="Explain the K most likely classes.")] = None,
    layer: Annotated[Optional[str], typer.Option("--layer", help="Layer whose maps are weighed: an index (negative from the end), 'last', a name (layer<i>), or a kind that occurs once. [default: the last conv layer after its activation; ResNet: the last block; NetVLAD: the backbone's last conv]")] = None,
    patch: Annotated[Optional[int], typer.Option("--patch", min=1, help="Occlusion: side of the square patch, in pixels of the model's input. [default: an eighth of the input]")] = None,
    stride: Annotated[Optional[int], typer.Option("--stride", min=1, help="Occlusion: step of the patch, in pixels of the model's input. [default: half the patch]")] = None,
    check: Annotated[bool, typer.Option("--check", help="Also run the cascading model-parameter randomisation test (Adebayo et al., 2018) and report the Spearman correlation per step.")] = False,
    cmap: Annotated[Colormap, typer.Option("--cmap", help="Colour map of the overlays.")] = Colormap.magma,
    max_pixels: MaxPixels = 100_000_000,
    force: Annotated[bool, typer.Option("--force", help="Replace existing output folders.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array with each image's explain.json (and its output folder).")] = False,
    no_html: Annotated[bool, typer.Option("--no-html", help="Write no HTML report (OUT/index.html).")] = False,
):
    """Heat maps of the pixels that decided a model's prediction, one folder per image.

    Each folder holds cam_<class>.npy (float32, the image's own height and
    width, values in [0, 1]), overlay_<class>.png (the map over the image,
    with a legend) and explain.json (predictions, method, layer, files).
    OUT/index.html, a report that opens from the file system, shows every
    image's overlays and predictions; --no-html skips it.

    Examples:

      cnn explain photo.png --model model.npz

      cnn explain photos/ --model model.npz -o why --method gradcam++ --top-k 3

      cnn explain photo.png --model model.npz --method occlusion --patch 8 --stride 4

      cnn explain photo.png --model model.npz --class cat --check
    """
    from ..explain import ExplainOptions, run

    if classes and top_k is not None:
        fail("give only one of --class and --top-k", EXIT_USAGE)
    if method.value != "occlusion" and (patch is not None or stride is not None):
        fail("--patch and --stride are for --method occlusion", EXIT_USAGE)
    network, meta, _ = load_model_or_fail(model)
    options = ExplainOptions(method=method.value, layer=layer, classes=tuple(classes or ()), top_k=top_k or 1,
                             patch=patch, stride=stride, check=check, cmap=cmap.value, force=force,
                             max_pixels=max_pixels, model=str(model), html=not no_html)
    summary = run_with_progress("explain", out, lambda progress: run(images, out, network, meta, options,
                                                                     progress=progress))
    if json_out:
        echo_json(summary.records)
    else:
        _print_explanations(summary.records, check)
    exit_batch(summary.failed, summary.records)


def _print_explanations(records, check):
    from ..explain import CHECK_PASSES_BELOW

    console = stdout_console()
    for record in records:
        layer = record["layer"]
        where = f"{layer['name']} {layer['kind']}" if layer else f"patch {record['occlusion']['patch']}"
        shown = ", ".join(f"{t['class']} ({t['probability']:.3f})" for t in record["targets"])
        notes = [f"{t['class']}: {t['note']}" for t in record["targets"] if t["note"]]
        echo(f"{record['input']}: {shown} [{record['method']}, {where}] -> {record['output']}"
             + "".join(f"; {n}" for n in notes))
        if not check:
            continue
        for target in record["targets"]:
            rows = [(step, f"{s['name']} ({s['kind']})", "-" if s["spearman"] is None else f"{s['spearman']:.3f}")
                    for step, s in enumerate(target["check"], 1)]
            console.print(rich_table(("step", "re-initialised down to", "Spearman rho"), rows,
                                     f"randomisation check: {record['input']}, {target['class']}"))
            verdict = {True: "passed", False: "FAILED", None: "no verdict (the last map is constant)"}
            echo(f"rho compares each map with the original: near 1, the map ignores the weights re-initialised; "
                 f"near 0, it depends on them. The check passes when the last step's |rho| is below "
                 f"{CHECK_PASSES_BELOW}: {verdict[target['check_passed']]}")


@app.command()
def units(
    inputs: Annotated[List[str], typer.Argument(help="A dataset folder, image files, or globs (folders are walked recursively).", show_default=False)],
    layer: Annotated[List[str], typer.Option("--layer", help="Layers to show: indices (negative from the end), 'last', names (layer<i>), kinds (every layer of that kind), or ranges such as 2-4 or 2:. Repeatable, or comma-separated.")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder: layer<i>.png, patches.npz, units.json.")],
    k: Annotated[int, typer.Option("-k", min=1, help="Patches per channel.")] = 9,
    model: ModelOption = None,
    pipeline: PipelineOption = None,
    bank: BankOption = None,
    color: Annotated[Color, typer.Option(help="Read images as luminance (gray) or as R, G, B channels (banks and pipelines).")] = Color.gray,
    max_size: Annotated[Optional[int], typer.Option(min=1, help="Downscale images so the longer side is at most this many pixels.")] = None,
    max_pixels: MaxPixels = 100_000_000,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing output folder.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the run's summary as one JSON object on stdout.")] = False,
):
    """The input patches that excite each channel of a layer most: what each unit detects.

    For every channel, the k images whose strongest response is largest, each
    shown as the receptive field of that response. One grid per layer, a row
    per channel, labelled with the filter's name and each patch's activation.
    Memory stays bounded by k x channels however many images there are.
    With no --model, --pipeline or --bank, the default pipeline runs.

    Examples:

      cnn units photos/ --bank edges --layer 0 -o edge-units

      cnn units dataset/ --model model.npz --layer 3 -k 16 -o units

      cnn units 'scans/*.png' --pipeline default --layer 0,2 -o units --force
    """
    from ..layersel import OptionError
    from ..sources import load_source
    from ..terminal import ProgressDisplay
    from ..units import UnitsOptions, run

    check_one_source(bank, pipeline, model)
    try:
        source = load_source(banks=bank, pipeline=pipeline, model=model and str(model), color=color.value)
    except ValueError as exc:
        fail(str(exc))
    options = UnitsOptions(layers=tuple(layer), k=k, max_size=max_size, max_pixels=max_pixels, force=force)
    kept = f"nothing was written to {out}"
    try:
        with ProgressDisplay("units") as progress, stoppable(kept) as stopped:
            summary = run(inputs, out, source, options, progress=progress)
    except OptionError as exc:  # a --layer the source does not have, or one without local fields
        fail(str(exc), EXIT_USAGE)
    except ValueError as exc:  # OUT exists, or no image was readable
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    end_if_interrupted(summary, stopped, kept)
    report_failures(summary.failed)
    if json_out:
        echo_json({"images": summary.images, "output": summary.output, "k": k,
                   "layers": [{"index": r["index"], "name": r["name"], "kind": r["kind"],
                               "channels": len(r["channels"]), "grid": r["grid"]} for r in summary.layers],
                   "seconds": round(summary.seconds, 3),
                   "failed": [{"input": p, "error": m} for p, m in summary.failed]})
    else:
        grids = ", ".join(f"{r['grid']} ({len(r['channels'])} channels)" for r in summary.layers)
        echo(f"{summary.images} image(s): top {k} patches per channel in {out}/: {grids}; "
             f"{len(summary.failed)} failed", err=True)
    exit_batch(summary.failed, summary.images)
