"""The command that brings in networks from other tools: import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..choices import IMPORT_ARCHITECTURES as ARCHITECTURES
from .common import EXIT_USAGE, ImportColor, app, echo, echo_json, fail, stoppable

#: The longest --classes file read: a name a line, for up to a few hundred thousand classes.
MAX_CLASSES_BYTES = 16 * 2**20


def _numbers(option, text, count):
    """``count`` comma-separated numbers (or one, repeated), or a usage error naming ``option``."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        fail(f"{option} takes numbers separated by commas, e.g. {','.join(['0.5'] * count)}; got {text!r}", EXIT_USAGE)
    if len(values) not in (1, count):
        fail(f"{option} takes 1 or {count} numbers, but got {len(values)}", EXIT_USAGE)
    return values * count if len(values) == 1 else values


def _size(text):
    values = _numbers("--size", text, 2)
    if not all(v.is_integer() and 1 <= v <= 4096 for v in values):
        fail(f"--size takes whole numbers from 1 to 4096 (H,W or one size), but got {text!r}", EXIT_USAGE)
    return tuple(int(v) for v in values)


def _classes(path):
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CLASSES_BYTES + 1)
    except OSError as exc:
        fail(f"--classes: cannot read {path}: {exc.strerror or exc}", EXIT_USAGE)
    if len(data) > MAX_CLASSES_BYTES:
        fail(f"--classes: {path} is over {MAX_CLASSES_BYTES // 2**20} MB; it should hold one class name a line",
             EXIT_USAGE)
    try:
        names = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        fail(f"--classes: {path} is not UTF-8 text with one class name a line", EXIT_USAGE)
    return names


@app.command("import")
def import_(
    source: Annotated[Path, typer.Argument(help="An ONNX file (.onnx; external data beside it is read too), or "
                                                "weights for --arch (.safetensors).", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model file to write (.npz).", show_default=False)],
    arch: Annotated[Optional[str], typer.Option(help=f"The network a .safetensors file holds weights for, with "
                                                     f"torchvision's state-dict names (timm's for resnets): "
                                                     f"{', '.join(ARCHITECTURES)}. "
                                                     "Example: --arch resnet18.", show_default=False)] = None,
    size: Annotated[Optional[str], typer.Option(help="Input size H,W (or one size) where the file leaves it open [default: the file's; 224 for --arch].")] = None,
    color: Annotated[Optional[ImportColor], typer.Option(help="Channels the network expects: rgb, bgr (Caffe, OpenCV) or gray [default: rgb for 3 channels].")] = None,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean R,G,B subtracted after scaling [default: ImageNet's 0.485,0.456,0.406 for RGB].")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std R,G,B divided by [default: ImageNet's 0.229,0.224,0.225 for RGB].")] = None,
    scale: Annotated[Optional[float], typer.Option(help="Pixel range the network expects: 1 for [0, 1] or 255 for [0, 255] [default: 1].")] = None,
    classes: Annotated[Optional[Path], typer.Option(help="Text file with one class name a line, in the order of the outputs.")] = None,
    output: Annotated[Optional[str], typer.Option(help="The graph output to use when there are several [default: the first].")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print what was imported as one JSON object on stdout.")] = False,
):
    """Import a network from another tool (an ONNX file, or safetensors weights with --arch) as a cnn model file.

    The result is an ordinary model: apply, predict, evaluate, info, embed,
    search, explain, units, export and train --from take it, and show every
    node's maps. Weights keep their names (layer1.0.conv1.weight, as torch
    writes them). Where the file says nothing about preprocessing, a 3-channel
    input is assumed to take ImageNet-normalised RGB in [0, 1]; what was
    assumed is printed and recorded. A model that cnn export wrote needs no
    options. Nodes cnn cannot run are all named before anything is written.
    ONNX files need the onnx package: pip install 'cnn-cli[onnx]'.

    A .safetensors file holds torchvision's (or timm's) weights for one of
    the architectures cnn ships (see cnn info resnet18 --size 224); every
    tensor's name and shape is checked against it, and the class count is
    read from the classifier. AlexNet and VGG end in adaptive pooling, which
    cnn does not have: they import at 224 (and the few sizes where that
    pooling does nothing); other sizes are refused, naming those that fit.

    Examples:

      cnn import resnet18.onnx -o resnet18.npz

      cnn import resnet50.safetensors --arch resnet50 -o resnet50.npz

      cnn import mobilenet_v2.safetensors --arch mobilenet_v2 --size 160 --classes imagenet.txt -o mnv2.npz

      cnn import mobilenet.onnx -o mobilenet.npz --size 224 --classes imagenet.txt

      cnn import rnet.onnx -o rnet.npz --scale 255 --mean 127.5 --std 128 --output prob

      cnn import digits.onnx -o digits_again.npz --force --json
    """
    from ..importing import ImportUsageError, run
    from ..onnxfile import INSTALL_HINT
    from ..onnximport import ImportOptions

    if arch is not None and arch not in ARCHITECTURES:
        fail(f"--arch takes one of {', '.join(ARCHITECTURES)}, but got {arch!r}", EXIT_USAGE)
    if scale is not None and scale not in (1, 255):
        fail(f"--scale takes 1 or 255, but got {scale:g}", EXIT_USAGE)
    options = ImportOptions(size=size and _size(size), color=color and color.value,
                            mean=mean and _numbers("--mean", mean, 3), std=std and _numbers("--std", std, 3),
                            scale=scale, classes=classes and _classes(classes), output=output)
    try:
        with stoppable(f"nothing was written to {out}"):
            summary = run(source, out, options, force=force, arch=arch)
    except ValueError as exc:  # OnnxError, TensorFileError, ImportRefused, ModelError, ImportFailed
        code = EXIT_USAGE if isinstance(exc, ImportUsageError) or INSTALL_HINT in str(exc) else 1
        fail(str(exc), code)
    for note in summary.assumed:
        echo(f"assumed: {note}", err=True)
    if json_out:
        echo_json(summary.to_json())
    else:
        c, h, w = summary.input
        what = (f"{summary.nodes} ONNX nodes" if summary.format == "onnx" else
                f"{summary.tensors} tensors for {summary.architecture}")
        echo(f"imported {what} as {summary.layers} layers ({summary.params:,} parameters, "
             f"input {c}x{h}x{w}, {summary.classes} outputs) into {summary.output}", err=True)
