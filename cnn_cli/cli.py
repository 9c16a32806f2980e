"""The ``cnn`` command line: a thin shell over the library.

Only this module imports typer and rich. It imports the engine (and so Numba)
inside the commands that need it, so ``cnn --help`` answers at once.

Exit codes: 0 success; 1 the tool refused or failed; 2 a usage error;
3 a batch finished but some inputs failed (each is listed on stderr).
"""

from __future__ import annotations

import math
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from . import __version__, config

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


MaxPixels = Annotated[int, typer.Option(min=1, help="Refuse images with more pixels than this (decompression bombs).")]


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
    model: Annotated[Optional[Path], typer.Option("--model", help="Show what a trained model's layers see (its own size and colour).")] = None,
    color: Annotated[Color, typer.Option(help="Read images as luminance (gray) or as R, G, B channels.")] = Color.gray,
    normalize: Annotated[Normalize, typer.Option(help="How PNG brightness is scaled: per map, per layer, or raw values in [0, 1].")] = Normalize.per_map,
    cmap: Annotated[Colormap, typer.Option(help="Colour map of the PNGs (coolwarm is diverging).")] = Colormap.gray,
    max_size: Annotated[Optional[int], typer.Option(min=1, help="Downscale images so the longer side is at most this many pixels.")] = None,
    max_pixels: MaxPixels = 100_000_000,
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

    if sum(x is not None and x != [] for x in (bank, pipeline, model)) > 1:
        fail("give only one of --bank, --pipeline and --model", EXIT_USAGE)
    paths, problems = find_images(inputs, exclude=[out])
    for problem in problems:
        typer.echo(f"Error: {problem}", err=True)
    if not paths:
        raise typer.Exit(EXIT_FAILED)
    options = ApplyOptions(color=color.value, max_size=max_size, max_pixels=max_pixels,
                           normalize=normalize.value, cmap=cmap.value, force=force)
    try:
        if model is not None:
            pipe, options.color, options.prepare = _model_pipeline(model)
        else:
            pipe = bank_pipeline(bank) if bank else load_pipeline(pipeline or DEFAULT_PIPELINE)
            pipe.bind(["gray"] if color is Color.gray else ["R", "G", "B"])
    except (BankError, ValueError) as exc:
        fail(str(exc))
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
    if len(results) + len(problems) > 1 or done:
        # A batch ends with a summary; a single failed input has said all in its one line.
        maps = sum(r.maps for r in done)
        typer.echo(f"{len(done)} image(s), {maps} maps written to {out}/; {len(failed)} failed", err=True)
    if failed:
        raise typer.Exit(EXIT_PARTIAL if done else EXIT_FAILED)


def _load_model(path):
    from .modelfile import load_model

    try:
        return load_model(path)
    except ValueError as exc:
        fail(str(exc))


def _model_pipeline(path):
    """(pipeline of the model's map layers, its colour, its input transform)."""
    from .modelfile import feature_pipeline, image_transform

    network, meta, _ = _load_model(path)
    return feature_pipeline(network, meta, str(path)), meta["preprocessing"]["color"], image_transform(meta)


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
    """List the shipped banks (kernel count, sizes, description), pipelines and architectures."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .filterbank import builtin_names, load_bank
    from .pipeline import load_architecture, load_pipeline

    table = Table("bank", "kernels", "size", "description", title="Filter banks")
    for name in builtin_names("bank"):
        bank = load_bank(name)
        sizes = sorted({k.size for k in bank.kernels})
        table.add_row(name, str(len(bank.kernels)), ", ".join(f"{h}x{w}" for h, w in sizes), escape(bank.description))
    pipes = Table("pipeline", "layers", "description", title="Pipelines")
    for name in builtin_names("pipeline"):
        pipe = load_pipeline(name)
        pipes.add_row(name, str(len(pipe.layers)), escape(pipe.description))
    archs = Table("architecture", "layers", "description", title="Architectures (cnn train --arch)")
    for name in builtin_names("architecture"):
        _, description, tables = load_architecture(name)
        archs.add_row(name, str(len(tables)), escape(description))
    console = Console()
    for t in (table, pipes, archs):
        console.print(t)


@banks_app.command("show")
def banks_show(
    bank: Annotated[Optional[str], typer.Argument(help="A bank name, file, or NAME:PATTERN.", show_default=False)] = None,
    out: Annotated[Path, typer.Option("-o", "--out", help="PNG file to write.")] = Path("kernels.png"),
    model: Annotated[Optional[Path], typer.Option("--model", help="Draw the learned first-layer kernels of this model instead.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing file.")] = False,
):
    """Draw a bank's kernels, labelled, on a diverging scale (zero is mid-grey).

    A multichannel kernel shows its channels side by side.

    Examples:

      cnn banks show 'textures:gabor_*' -o gabor.png

      cnn banks show --model model.npz -o learned.png
    """
    from .fileio import write_bytes_atomic
    from .filterbank import BankError, load_bank
    from .viz import grid, kernel_tiles, png_bytes

    if (bank is None) == (model is None):
        fail("give a bank, or --model, to draw", EXIT_USAGE)
    if out.exists() and not force:
        fail(f"{out} exists; use --force to replace it")
    if model is not None:
        from .nn import Conv2d

        network, _, _ = _load_model(model)
        conv = next((layer for layer in network.layers if isinstance(layer, Conv2d)), None)
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
    image = grid(kernel_tiles(kernels), labels)
    try:
        write_bytes_atomic(out, png_bytes(image))
    except OSError as exc:
        fail(f"cannot write {out}: {exc.strerror or exc}")
    typer.echo(f"{len(kernels)} kernels drawn to {out}", err=True)


@app.command()
def info(
    target: Annotated[str, typer.Argument(help="A model file (.npz), or a pipeline or architecture name or file.", show_default=False)],
    size: Annotated[int, typer.Option(min=1, help="Input height and width, for pipelines and architectures.")] = 512,
    color: Annotated[Color, typer.Option(help="Input channels, for pipelines and architectures: gray (1) or rgb (3).")] = Color.gray,
):
    """Show each layer: output shape, parameters and receptive field.

    For a model, also its classes and preprocessing.

    Examples:

      cnn info default --size 256

      cnn info model.npz

      cnn info resnet --size 32
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .filterbank import BankError
    from .pipeline import load_pipeline

    channels = ["gray"] if color is Color.gray else ["R", "G", "B"]
    notes = []
    try:
        if target.endswith(".npz"):
            network, meta, _ = _load_model(Path(target))
            title = f"{target}: {meta['architecture']['name']}"
            pre = meta["preprocessing"]
            notes = [f"classes ({len(meta['classes'])}): {', '.join(meta['classes'])}",
                     f"input: {pre['color']} {pre['image_size']}x{pre['image_size']}, mean {pre['mean']}, std {pre['std']}"]
            if "final_val_accuracy" in meta.get("training", {}):
                notes.append(f"validation accuracy: {meta['training']['final_val_accuracy']}")
            rows = _network_rows(network)
        elif _is_architecture(target):
            network = _architecture_network(target, len(channels), size)
            title = f"{target} (10 classes assumed)"
            rows = _network_rows(network)
        else:
            pipe = load_pipeline(target).bind(channels)
            title = f"{pipe.name}: {pipe.description}"
            rows = [(r.index, r.layer, r.shape, r.receptive_field) for r in pipe.summary(size, size)]
    except (BankError, ValueError) as exc:
        fail(str(exc))
    table = Table("#", "layer", "output shape", "params", "receptive field", title=escape(title))
    for index, layer, shape, rf in rows:
        rf = rf if rf == "global" else f"{rf}x{rf}"
        table.add_row(str(index), escape(layer.describe()), str(tuple(shape)), str(layer.num_params), rf)
    console = Console()
    console.print(table)
    for note in notes:
        console.print(escape(note), highlight=False)


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"


class Schedule(str, Enum):
    constant = "constant"
    step = "step"
    cosine = "cosine"


def _positive_float(value):
    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"must be a finite number above 0, not {value}")
    return value


def _fraction(value):
    if not (math.isfinite(value) and 0 <= value < 1):
        raise typer.BadParameter(f"must be at least 0 and below 1, not {value}")
    return value


def _non_negative(value):
    if not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"must be a finite number of at least 0, not {value}")
    return value


def _augmentations(value):
    from .data import AUGMENTATIONS

    kinds = [v.strip() for v in (value or "").split(",") if v.strip()]
    unknown = [k for k in kinds if k not in AUGMENTATIONS]
    if unknown:
        raise typer.BadParameter(f"unknown {unknown}; choose from {', '.join(AUGMENTATIONS)}, comma-separated")
    return value


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="Folder with one subfolder of images per class.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model file to write (.npz).")] = Path("model.npz"),
    arch: Annotated[str, typer.Option(help="Architecture: lenet, alexnet, resnet, netvlad, or a file.")] = "lenet",
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training images.")] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per gradient step.")] = 32,
    lr: Annotated[Optional[float], typer.Option(callback=_positive_float, help="Learning rate [default: 0.001 for adam, 0.05 for sgd].")] = None,
    optimizer: Annotated[Optimizer, typer.Option(help="adam, or sgd with momentum.")] = Optimizer.adam,
    momentum: Annotated[float, typer.Option(callback=_fraction, help="SGD momentum.")] = 0.9,
    weight_decay: Annotated[float, typer.Option(callback=_non_negative, help="L2 penalty added to the gradients.")] = 0.0,
    schedule: Annotated[Schedule, typer.Option(help="Learning-rate schedule over the epochs.")] = Schedule.constant,
    val_split: Annotated[float, typer.Option(callback=_fraction, help="Fraction of each class held out for validation (ignored when DATASET has train/ and val/).")] = 0.2,
    seed: Annotated[int, typer.Option(min=0, help="Seed for the split, initial weights, shuffling, augmentation and dropout.")] = 0,
    image_size: Annotated[Optional[int], typer.Option(min=4, max=1024, help="Resize every image to N x N [default: from the data].")] = None,
    color: Annotated[Optional[Color], typer.Option(help="gray or rgb [default: detected].")] = None,
    augment: Annotated[str, typer.Option(callback=_augmentations, help="Random augmentations, comma-separated: shift, flip, rotate.")] = "",
    patience: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many epochs without a lower validation loss, and keep the best weights.")] = None,
    init_bank: Annotated[Optional[str], typer.Option(help="Start the first conv layer from this bank's kernels.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue from a checkpoint (MODEL.ckpt.npz) with its settings.")] = None,
    max_pixels: MaxPixels = 100_000_000,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model file.")] = False,
):
    """Train a CNN by backpropagation on DATASET/<class>/<images>.

    Writes the model, MODEL.metrics.json, MODEL.curves.png and
    MODEL.confusion.png, and keeps a checkpoint MODEL.ckpt.npz while training.
    Ctrl-C (or SIGTERM) saves the checkpoint and exits 130 (143).

    Examples:

      cnn train digits/ -o digits.npz

      cnn train photos/ --arch resnet --epochs 30 --augment shift,flip --optimizer sgd --lr 0.05

      cnn train photos/ -o m.npz --resume m.ckpt.npz
    """
    import signal
    import warnings

    from .data import DatasetError
    from .filterbank import BankError
    from .train import Interrupted, TrainConfig, TrainingError, fit, prepare

    if out.exists() and not force and resume is None:
        fail(f"{out} exists; use --force to replace it, or -o to choose another file")
    config = TrainConfig(arch=arch, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer.value,
                         momentum=momentum, weight_decay=weight_decay, schedule=schedule.value,
                         val_split=val_split, seed=seed, image_size=image_size,
                         color=color.value if color else None,
                         augment=[a.strip() for a in augment.split(",") if a.strip()],
                         patience=patience, init_bank=init_bank, max_pixels=max_pixels)
    stop = {}

    def on_signal(signum, frame):
        if stop:  # a second Ctrl-C: stop at once
            raise KeyboardInterrupt
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Divergence is detected and reported in one line; numpy's overflow
    # warnings on the way there would only clutter it.
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    try:
        try:
            prep = prepare(dataset, config, report=say, resume=resume)
        except (DatasetError, TrainingError, BankError, ValueError) as exc:
            fail(str(exc))
        if stop:
            fail("interrupted before training started; nothing was saved", _signal_exit(stop["signal"]))
        cfg = prep.config
        say(f"training {cfg.arch} on {len(prep.y_train)} images ({len(prep.y_val)} for validation), "
            f"{len(prep.meta['classes'])} classes, {cfg.image_size}x{cfg.image_size} {cfg.color}, "
            f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.epochs} epochs")
        try:
            history = _fit_with_progress(prep, out, fit, lambda: stop.get("signal"))
        except Interrupted as exc:
            say(f"interrupted: checkpoint saved to {exc.checkpoint}; continue with: "
                f"cnn train {dataset} -o {out} --resume {exc.checkpoint}")
            raise typer.Exit(_signal_exit(stop["signal"]))
        except TrainingError as exc:
            fail(str(exc))
        except MemoryError:
            fail("out of memory; use a smaller --batch-size, --image-size or architecture")
        except OSError as exc:
            fail(f"cannot write the model: {exc.strerror or exc}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    last = history[-1]
    acc = last["val_accuracy"]
    say(f"saved {out} after {len(history)} epochs"
        + (f"; validation accuracy {acc:.4f}" if acc is not None else ""))


def _signal_exit(signum):
    import signal

    return 128 + int(signum if signum else signal.SIGINT)


def _fit_with_progress(prep, out, fit, should_stop):
    """Run ``fit`` with a live bar on a terminal, or one plain line per epoch otherwise."""
    epochs = prep.config.epochs

    if not sys.stderr.isatty():
        return fit(prep, out, on_epoch=lambda h: typer.echo(_plain(h, epochs), err=True), should_stop=should_stop)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                  TimeRemainingColumn(), console=_stderr_console()) as progress:
        task = progress.add_task("epoch", total=None, stats="")

        def on_batch(epoch, batch, batches, loss, acc, ips):
            progress.update(task, description=f"epoch {epoch + 1}/{epochs}", total=batches, completed=batch,
                            stats=f"loss {loss:.4f} acc {acc:.3f} {ips:.0f} img/s")

        def on_epoch(h):
            progress.console.print(_plain(h, epochs), markup=False, highlight=False)

        return fit(prep, out, on_batch=on_batch, on_epoch=on_epoch, should_stop=should_stop)


def _plain(h, epochs):
    val = "" if h["val_loss"] is None else f"  val loss {h['val_loss']:.4f} acc {h['val_accuracy']:.4f}"
    return (f"epoch {h['epoch']}/{epochs}  loss {h['train_loss']:.4f} acc {h['train_accuracy']:.4f}"
            f"{val}  {h['images_per_second'] or 0:.0f} img/s")


def _load_labelled(dataset, meta, max_pixels):
    """Normalised images and labels of DATASET (its val/ folder if it has one), in the model's classes."""
    import numpy as np

    from .data import load_images, scan_classes
    from .modelfile import preprocess

    root = dataset / "val" if (dataset / "val").is_dir() and (dataset / "train").is_dir() else dataset
    classes, paths, labels = scan_classes(root)
    unknown = [c for c in classes if c not in meta["classes"]]
    if unknown:
        fail(f"{root}: class folder(s) {unknown} are not classes of the model ({', '.join(meta['classes'])})")
    remap = np.array([meta["classes"].index(c) for c in classes])
    images, ok, _, problems = load_images(paths, meta["preprocessing"]["image_size"], max_pixels=max_pixels)
    for path, reason in problems:
        typer.echo(f"Error: {reason}", err=True)
    return preprocess(images, meta), remap[labels[ok]], problems


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="Folder of class subfolders (its val/ if it has train/ and val/).", show_default=False)],
    model: Annotated[Path, typer.Option("--model", help="Model file from cnn train.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: accuracy, per_class, confusion.")] = False,
    max_pixels: MaxPixels = 100_000_000,
):
    """Accuracy, per-class precision and recall, and the confusion matrix of a model on labelled images.

    Examples:

      cnn evaluate digits/ --model digits.npz

      cnn evaluate digits/ --model digits.npz --json | jq .accuracy
    """
    import json

    from .data import DatasetError
    from .evaluation import confusion_matrix, report
    from .train import predict_batches

    network, meta, _ = _load_model(model)
    try:
        x, y, problems = _load_labelled(dataset, meta, max_pixels)
    except DatasetError as exc:
        fail(str(exc))
    if len(y) == 0:
        fail(f"{dataset}: no readable images")
    predictions = predict_batches(network, x).argmax(axis=1)
    result = report(confusion_matrix(y, predictions, len(meta["classes"])), meta["classes"])
    result["skipped"] = [str(p) for p, _ in problems]
    if as_json:
        typer.echo(json.dumps(result))
    else:
        _print_report(result)
    if problems:
        raise typer.Exit(EXIT_PARTIAL)


def _print_report(result):
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table("class", "precision", "recall", "f1", "images",
                  title=f"accuracy {fmt(result['accuracy'])} on {result['images']} images")
    for name, row in result["per_class"].items():
        table.add_row(escape(name), fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]), str(row["support"]))
    confusion = Table("true \\ predicted", *[escape(c) for c in result["classes"]], title="confusion")
    for name, row in zip(result["classes"], result["confusion"]):
        confusion.add_row(escape(name), *map(str, row))
    console = Console()
    console.print(table)
    console.print(confusion)


@app.command()
def predict(
    inputs: Annotated[List[str], typer.Argument(help="Image files, folders or globs.", show_default=False)],
    model: Annotated[Path, typer.Option("--model", help="Model file from cnn train.")],
    top_k: Annotated[int, typer.Option(min=1, help="How many classes to show per image.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of {input, predictions: [{class, probability}]}.")] = False,
    max_pixels: MaxPixels = 100_000_000,
):
    """The most likely classes of each image, with their probabilities.

    Examples:

      cnn predict photo.png --model model.npz --top-k 3

      cnn predict unsorted/ --model model.npz --json
    """
    import json

    import numpy as np

    from .imageio import ImageError, find_images, read_image
    from .modelfile import image_transform
    from .train import predict_batches

    network, meta, _ = _load_model(model)
    paths, problems = find_images(inputs)
    for problem in problems:
        typer.echo(f"Error: {problem}", err=True)
    transform = image_transform(meta)
    k = min(top_k, len(meta["classes"]))
    results, failures = [], len(problems)
    for path in paths:
        try:
            x = transform(read_image(path, color=meta["preprocessing"]["color"], max_pixels=max_pixels))
        except ImageError as exc:
            typer.echo(f"Error: {exc}", err=True)
            failures += 1
            continue
        probs = predict_batches(network, x[None])[0]
        best = np.argsort(-probs, kind="stable")[:k]
        results.append({"input": str(path),
                        "predictions": [{"class": meta["classes"][i], "probability": float(probs[i])} for i in best]})
    if as_json:
        typer.echo(json.dumps(results))
    else:
        for r in results:
            shown = ", ".join(f"{p['class']} ({p['probability']:.3f})" for p in r["predictions"])
            typer.echo(f"{r['input']}: {shown}")
    if failures:
        raise typer.Exit(EXIT_PARTIAL if results else EXIT_FAILED)


def _is_architecture(target):
    from .filterbank import BankError, resolve_file

    try:
        resolve_file(target, "architecture")
        return True
    except BankError:
        return False


def _architecture_network(target, channels, size):
    from .nn import Network
    from .pipeline import build_layers, load_architecture

    name, _, tables = load_architecture(target)
    return Network(build_layers(tables, name, substitutions={"classes": 10}), (channels, size, size))


def _network_rows(network):
    from .pipeline import receptive_fields

    fields = receptive_fields(network.layers)
    return [(i, layer, shape, rf) for i, (layer, shape, rf) in enumerate(zip(network.layers, network.shapes, fields))]


def main():
    """The ``cnn`` command: run it, then end the process without the interpreter's teardown.

    Every command has written and closed its outputs when it returns, and
    the teardown only frees memory: mostly Numba's and LLVM's, which takes
    0.15 s, a tenth of a cached ``cnn apply``. Under a profiler, a tracer or
    coverage, which write their results at exit, it exits normally.
    Exceptions other than the command's own exit propagate as usual.
    """
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = EXIT_FAILED
    if sys.getprofile() or sys.gettrace() or "coverage" in sys.modules:
        sys.exit(code)  # a profiler or coverage writes its results at exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
