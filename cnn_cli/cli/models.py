"""Commands that train and use models: train, evaluate, predict."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import (
    EXIT_PARTIAL, EXIT_USAGE, AugmentFill, Color, EvalSplit, MaxPixels, Optimizer, Schedule, app, echo, echo_json,
    exit_batch, fail, load_model_or_fail, report_failures, rich_table, stdout_console, stopped_by_signals,
)
from ..terminal import stderr_console

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


def _non_negative_or_none(value):
    return value if value is None else _non_negative(value)


def _augmentations(value):
    from ..augment import AugmentError, parse

    try:
        parse(value or "")
    except AugmentError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


@app.command()
def train(
    ctx: typer.Context,
    dataset: Annotated[Path, typer.Argument(help="Folder with one subfolder of images per class.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Model file to write (.npz).")] = Path("model.npz"),
    arch: Annotated[Optional[str], typer.Option(help="Architecture: lenet, alexnet, resnet, netvlad, or a file [default: lenet].")] = None,
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
    augment: Annotated[str, typer.Option(callback=_augmentations, help="Random augmentations, comma-separated NAME or NAME=VALUE: shift=F|Npx (0.0625), rotate=DEG (15), flip, vflip, scale=F (0.1), brightness=F (0.2), contrast=F (0.2), erase=P (0.5), noise=SIGMA (0.05); a bare name takes the default in brackets.")] = "",
    augment_fill: Annotated[AugmentFill, typer.Option(help="What fills the borders that shift, rotate and scale expose: black, the mirror image, or the edge pixel.")] = AugmentFill.zeros,
    label_smoothing: Annotated[float, typer.Option(callback=_fraction, help="Train towards 1 - EPS on the label and EPS / classes on every class.")] = 0.0,
    warmup: Annotated[int, typer.Option(min=0, help="Epochs of linear learning-rate warm-up, batch by batch, before the schedule's rate.")] = 0,
    patience: Annotated[Optional[int], typer.Option(min=1, help="Stop after this many epochs without a lower validation loss, and keep the best weights.")] = None,
    init_bank: Annotated[Optional[str], typer.Option(help="Start the first conv layer from this bank's kernels.")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue from a checkpoint (MODEL.ckpt.npz) with its settings.")] = None,
    from_model: Annotated[Optional[Path], typer.Option("--from", help="Start from this trained model (cnn train's, cnn import's, or an .onnx file): its layers, weights and preprocessing, with a new head for DATASET's classes.")] = None,
    head: Annotated[Optional[str], typer.Option(help="With --from: the node to cut after (a name or index, as cnn info lists them); global average pooling and a linear layer follow [default: before the model's classifier].")] = None,
    freeze: Annotated[Optional[str], typer.Option(help="With --from: keep the weights fixed up to and including this node, or 'all' (everything but the head) or 'none'; frozen batch norms keep their running statistics [default: none].")] = None,
    backbone_lr_mult: Annotated[Optional[float], typer.Option(callback=_non_negative_or_none, help="With --from: the learning rate of the unfrozen layers before the head, as a multiple of --lr [default: 0.1].")] = None,
    probe: Annotated[bool, typer.Option("--probe", help="With --from: train the head alone, on features computed once per image (no augmentation); the same head as --freeze all, in seconds rather than minutes, since each epoch costs the head alone. It pays whenever a frozen network is enough: a small data set, or a first look before fine-tuning.")] = False,
    find_lr: Annotated[bool, typer.Option("--find-lr", help="Only run the learning-rate range test: plot the loss against the rate in MODEL.lr.png and print a suggested --lr. Trains and saves no model.")] = False,
    max_pixels: MaxPixels = 100_000_000,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing model file.")] = False,
    no_html: Annotated[bool, typer.Option("--no-html", help="Write no HTML report (MODEL.report.html).")] = False,
):
    """Train a CNN by backpropagation on DATASET/<class>/<images>.

    Writes the model, MODEL.metrics.json, MODEL.curves.png,
    MODEL.confusion.png and MODEL.report.html (settings, curves, per-class
    scores, first-layer kernels, mistakes; it opens from the file system;
    --no-html skips it), and keeps a checkpoint MODEL.ckpt.npz while training.
    Ctrl-C (or SIGTERM) saves the checkpoint and exits 130 (143). Unreadable
    images are named and left out; the model is saved, and the exit code is 3.

    Examples:

      cnn train digits/ -o digits.npz

      cnn train photos/ --arch resnet --epochs 30 --augment shift,flip --optimizer sgd --lr 0.05

      cnn train digits/ -o digits.npz --augment shift=4px,rotate=10 --label-smoothing 0.1

      cnn train photos/ -o m.npz --find-lr

      cnn train photos/ -o m.npz --resume m.ckpt.npz

      cnn train faces/ -o f.npz --from rnet.npz --probe

      cnn train faces/ -o f.npz --from rnet.npz --freeze conv2 --epochs 10
    """
    import warnings

    from ..train import TrainConfig, TrainingError, claimed

    if find_lr and resume is not None:
        fail("--find-lr starts from fresh weights; leave out --resume", EXIT_USAGE)
    if resume is not None:
        _check_resume_options(ctx)
    _check_fine_tune(from_model, arch, head, freeze, backbone_lr_mult, probe, resume, init_bank, augment)
    fine_tune = {} if from_model is None else dict(
        from_model=str(from_model), head=head, freeze=freeze or ("all" if probe else "none"),
        backbone_lr_mult=0.1 if backbone_lr_mult is None else backbone_lr_mult, probe=probe)
    config = TrainConfig(arch=arch or "lenet", epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer.value,
                         momentum=momentum, weight_decay=weight_decay, schedule=schedule.value,
                         val_split=val_split, seed=seed, image_size=image_size,
                         color=color.value if color else None,
                         augment=[a.strip() for a in augment.split(",") if a.strip()],
                         patience=patience, init_bank=init_bank, max_pixels=max_pixels,
                         augment_fill=augment_fill.value, label_smoothing=label_smoothing, warmup=warmup,
                         **fine_tune)
    # Divergence is detected and reported in one line; numpy's overflow
    # warnings on the way there would only clutter it.
    warnings.filterwarnings("ignore", category=RuntimeWarning)
    say = lambda msg: echo(msg, err=True)  # noqa: E731
    # A signal stops training after the batch, with a checkpoint; a second one stops at once.
    with stopped_by_signals(gently=True) as stop, contextlib.ExitStack() as claim:
        try:  # MODEL is checked and locked before any image is read
            claim.enter_context(claimed(out, replace=force or resume is not None or find_lr, report=say))
        except TrainingError as exc:
            fail(str(exc))
        prep, history = _train_claimed(dataset, out, config, resume, find_lr, say, stop, html=not no_html,
                                       resume_epochs=epochs if _given(ctx, "epochs") else None)
        if prep is None:
            return
    result = prep.result
    if len(history) < prep.config.epochs:
        say(f"stopped early after epoch {len(history)}: no lower validation loss for {prep.config.patience} "
            f"epochs; kept the weights of epoch {result.kept_epoch}")
    elif result.kept_epoch != len(history):
        say(f"kept the weights of epoch {result.kept_epoch}, of the lowest validation loss")
    acc = result.final_val_accuracy
    say(f"saved {out} after {len(history)} epochs"
        + (f" (weights of epoch {result.kept_epoch})" if result.kept_epoch != len(history) else "")
        + (f"; validation accuracy {acc:.4f}" if acc is not None else ""))
    if not no_html:
        from ..train import sibling

        say(f"report: {sibling(out, '.report.html')}")
    if prep.skipped:  # as apply, predict and evaluate do when some inputs failed
        say(f"{len(prep.skipped)} unreadable images were skipped (named above); the model was trained without them")
        raise typer.Exit(EXIT_PARTIAL)


#: The options a resumed run takes from its checkpoint (--epochs may lengthen it).
_RECORDED = ("arch", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule", "val_split", "seed",
             "image_size", "color", "augment", "augment_fill", "label_smoothing", "warmup", "patience", "init_bank")


def _given(ctx, name):
    """Whether option ``name`` was given on the command line (not its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _check_resume_options(ctx):
    """Refuse, as a usage error, a setting given with --resume: the run goes on with the checkpoint's."""
    given = [name for name in _RECORDED if _given(ctx, name)]
    if given:
        options = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        fail(f"--resume goes on with the checkpoint's settings; leave out {options} "
             "(only --epochs may change, to train longer)", EXIT_USAGE)


def _check_fine_tune(from_model, arch, head, freeze, backbone_lr_mult, probe, resume, init_bank, augment):
    """Refuse, as usage errors, the fine-tuning options without --from and what --from cannot go with."""
    if from_model is None:
        given = [name for name, value in (("--head", head), ("--freeze", freeze), ("--probe", probe or None),
                                          ("--backbone-lr-mult", backbone_lr_mult)) if value is not None]
        if given:
            fail(f"{given[0]} applies to fine-tuning; give the model to start from with --from MODEL", EXIT_USAGE)
        return
    for name, value in (("--arch", arch), ("--resume", resume), ("--init-bank", init_bank)):
        if value is not None:
            fail(f"--from takes the model's own layers and weights; leave out {name}"
                 + (" (the checkpoint records --from)" if name == "--resume" else ""), EXIT_USAGE)
    if probe and augment:
        fail("--probe computes each image's features once, without augmentation; leave out --augment", EXIT_USAGE)
    if probe and freeze not in (None, "all"):
        fail(f"--probe trains the head alone (as --freeze all); leave out --freeze {freeze}", EXIT_USAGE)


def _train_claimed(dataset, out, config, resume, find_lr, say, stop, html=True, resume_epochs=None):
    """Prepare and train (or run the range test), while MODEL is locked: (prep, history), or (None, None)
    after --find-lr."""
    from ..data import DatasetError
    from ..filterbank import BankError
    from ..layersel import OptionError
    from ..train import Interrupted, TrainingError, fit, prepare

    try:
        prep = prepare(dataset, config, report=say, resume=resume, resume_epochs=resume_epochs)
    except OptionError as exc:  # a --head or --freeze node the model does not have
        fail(str(exc), EXIT_USAGE)
    except (DatasetError, TrainingError, BankError, ValueError) as exc:
        fail(str(exc))
    if stop.requested:
        fail("interrupted before training started; nothing was saved", stop.exit_code)
    prep.html = html
    cfg = prep.config
    if find_lr:
        _find_lr(prep, out, say)
        return None, None
    what = cfg.arch if cfg.from_model is None else f"{cfg.arch} from {cfg.from_model} (frozen: {cfg.freeze})"
    say(f"training {what} on {len(prep.y_train)} images ({len(prep.y_val)} for validation), "
        f"{len(prep.meta.classes)} classes, {cfg.image_size}x{cfg.image_size} {cfg.color}, "
        f"{cfg.optimizer} lr {cfg.lr:g}, {cfg.epochs} epochs")
    try:
        history = _fit_with_progress(prep, out, fit, lambda: stop.signum if stop.requested else None)
    except Interrupted as exc:
        say(f"interrupted: checkpoint saved to {exc.checkpoint}; continue with: "
            f"cnn train {dataset} -o {out} --resume {exc.checkpoint}")
        raise typer.Exit(stop.exit_code)
    except TrainingError as exc:
        fail(str(exc))
    except MemoryError:
        fail("out of memory; use a smaller --batch-size, --image-size or architecture")
    except OSError as exc:
        fail(f"cannot write the model: {exc.strerror or exc}")
    return prep, history


def _find_lr(prep, out, say):
    """The learning-rate range test: the plot next to MODEL, the suggestion on stdout."""
    from ..fileio import write_bytes_atomic
    from ..plots import lr_finder_png
    from ..train import TrainingError, find_lr, sibling

    say(f"learning-rate range test: {prep.config.arch}, {prep.config.optimizer}, batch {prep.config.batch_size}, "
        "rates from 1e-07 to 10; no model is trained or saved")
    try:
        finding = find_lr(prep)
    except TrainingError as exc:
        fail(str(exc))
    plot = sibling(out, ".lr.png")
    try:
        write_bytes_atomic(plot, lr_finder_png(finding))
    except OSError as exc:
        fail(f"cannot write {plot}: {exc.strerror or exc}")
    say(f"the loss came near its lowest at lr {finding.lowest:.2g} ({len(finding.rates)} batches); plot: {plot}")
    typer.echo(f"suggested --lr {finding.suggestion:.2g}")


def _fit_with_progress(prep, out, fit, should_stop):
    """Run ``fit`` with a live bar on a terminal, or one plain line per epoch otherwise."""
    epochs = prep.config.epochs

    if not sys.stderr.isatty():
        return fit(prep, out, on_epoch=lambda h: typer.echo(_plain(h, epochs), err=True), should_stop=should_stop)
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stats]}"),
                  TimeRemainingColumn(), console=stderr_console()) as progress:
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


@app.command()
def evaluate(
    dataset: Annotated[Path, typer.Argument(help="Folder of class subfolders (its val/ if it has train/ and val/).", show_default=False)],
    model: Annotated[Path, typer.Option("--model", help="Model file from cnn train.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: accuracy, per_class, confusion.")] = False,
    split: Annotated[Optional[EvalSplit], typer.Option(help="Which images: val (held out), train or all [default: val when DATASET is the training folder or has train/ and val/, else all].")] = None,
    max_pixels: MaxPixels = 100_000_000,
):
    """Accuracy, per-class precision and recall, and the confusion matrix of a model on labelled images.

    When DATASET is the folder the model was trained on (the model records
    its file list, split and seed), only the held-out validation images are
    scored, unless --split says otherwise.

    Examples:

      cnn evaluate digits/ --model digits.npz

      cnn evaluate digits/ --model digits.npz --split all --json | jq .accuracy
    """

    from .. import inference
    from ..data import DatasetError

    network, meta, _ = load_model_or_fail(model)
    try:
        result, problems, note = inference.evaluate(network, meta, dataset, split=split and split.value,
                                                    max_pixels=max_pixels)
    except inference.SplitError as exc:
        fail(str(exc), EXIT_USAGE)
    except DatasetError as exc:
        fail(str(exc))
    except MemoryError:
        size = meta.preprocessing.image_size
        fail(f"{dataset}: out of memory scoring it at the model's {size}x{size} input; "
             "evaluate fewer images at a time (a folder of part of them)")
    echo(note, err=True)
    report_failures(problems)
    if result["images"] == 0:
        fail(f"{dataset}: no readable images")
    if as_json:
        echo_json(result)
    else:
        _print_report(result)
    if problems:
        raise typer.Exit(EXIT_PARTIAL)


#: Beyond this many classes, evaluate prints the classes with images, worst F1 first, and the most
#: confused pairs instead of the whole matrix (--json holds everything).
PRINTED_CLASSES = 20


def _print_report(result):
    from ..evaluation import most_confused

    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    rows = list(result["per_class"].items())
    title = f"accuracy {fmt(result['accuracy'])} on {result['images']} images"
    many = len(rows) > PRINTED_CLASSES
    if many:
        rows = sorted((r for r in rows if r[1]["support"]), key=lambda r: r[1]["f1"] or 0.0)[:PRINTED_CLASSES]
        title += f"; the {len(rows)} classes of lowest F1 of {len(result['per_class'])} (--json has them all)"
    scores = [(name, fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"]), row["support"]) for name, row in rows]
    console = stdout_console()
    console.print(rich_table(("class", "precision", "recall", "f1", "images"), scores, title))
    if many:
        console.print(rich_table(("true", "predicted as", "images"), most_confused(result, PRINTED_CLASSES),
                                 f"the most confused pairs, at most {PRINTED_CLASSES} (--json has the confusion)"))
    else:
        console.print(rich_table(("true \\ predicted", *result["classes"]),
                                 [(name, *row) for name, row in zip(result["classes"], result["confusion"])],
                                 "confusion"))


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

    from .. import inference

    network, meta, _ = load_model_or_fail(model)
    rows, errors = inference.predict(network, meta, inputs, top_k=top_k, max_pixels=max_pixels)
    report_failures((None, message) for message in errors)
    if as_json:
        echo_json(rows)
    else:
        for r in rows:
            shown = ", ".join(f"{p['class']} ({p['probability']:.3f})" for p in r["predictions"])
            echo(f"{r['input']}: {shown}")
    exit_batch(errors, rows)
