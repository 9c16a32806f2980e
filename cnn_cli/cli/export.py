"""The command that writes models and pipelines as ONNX: export."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import EXIT_USAGE, Color, app, echo, echo_json, fail, stoppable


@app.command()
def export(
    target: Annotated[str, typer.Argument(help="A model file (.npz), or a pipeline or bank (name, file, or NAME:PATTERN).", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="ONNX file to write.", show_default=False)],
    opset: Annotated[int, typer.Option(help="ONNX opset to write: 17 up to 26, the newest ONNX Runtime 1.30 reads.")] = 17,
    color: Annotated[Optional[Color], typer.Option(help="Input channels of a pipeline or bank: gray (1, luminance) or rgb (3), as in cnn apply [default: gray]. A model has its own.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print what was written (inputs, outputs, metadata) as one JSON object on stdout.")] = False,
):
    """Write a trained model or a filter-bank pipeline as an ONNX file, for ONNX Runtime or Netron.

    A model takes "image", float32 (N, C, S, S) in [0, 1] at its own size and
    colour (the normalisation is inside the graph), and gives "logits" and
    "probabilities"; its classes and preprocessing are in the file's
    metadata. A pipeline takes "image" (N, C, H, W) in [0, 1] at any size and
    gives one output per layer, "layer0", "layer1", ..., the arrays cnn apply
    writes to features.npz. Needs the onnx package: pip install 'cnn-cli[onnx]'.

    Examples:

      cnn export digits.npz -o digits.onnx

      cnn export harris -o harris.onnx

      cnn export my_pipeline.toml -o features.onnx --color rgb --opset 19

      cnn export 'edges:sobel_*' -o sobel.onnx --force --json
    """
    from ..export import ExportError, OnnxMissingError, check_opset
    from ..export import export as export_onnx

    try:
        check_opset(opset)
    except ExportError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        with stoppable(f"nothing was written to {out}"):
            summary = export_onnx(target, out, opset=opset, color=color and color.value, force=force)
    except OnnxMissingError as exc:
        fail(str(exc), EXIT_USAGE)
    except ValueError as exc:  # ExportError, ModelError, SpecFileError
        fail(str(exc))
    if json_out:
        echo_json(summary.to_json())
    else:
        outputs = ", ".join(o["name"] for o in summary.outputs)
        echo(f"{summary.kind} '{summary.name}' written to {summary.output} ({summary.bytes / 1024:.1f} kB, "
             f"opset {summary.opset}, IR version {summary.ir_version}); outputs: {outputs}", err=True)
