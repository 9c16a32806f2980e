"""Training by backpropagation: data preparation, the epoch loop, checkpoints, metrics.

Randomness is drawn from independent streams (``random_stream``), keyed by
(seed, epoch) for the shuffle and (seed, epoch, batch) for augmentation and
dropout, so a run can stop after any batch and resume to exactly the weights
of an uninterrupted run.

Divergence stops a run: a loss that is not finite, or above ``DIVERGED``
times its early value (the run's first batch loss, or the loss of guessing
uniformly if that is higher), raises TrainingError before the batch updates
anything, and nothing is saved from the epoch it happened in.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import augment as A
from . import data as D
from .inference import predict_batches
from .meta import (RESIZE_NOTE, SCALE_NOTE, Architecture, Checkpoint, ModelMeta, Preprocessing, TrainConfig,
                   Training, TrainingResult)
from .fileio import check_output, held_lock, remove_stale, temporary_name
from .modelfile import build_network, first_conv, load_model, save_model
from .choices import COLORS, OPTIMIZERS, SCHEDULES
from .nn import Dropout, softmax_cross_entropy
from .optim import learning_rate, make_optimizer, warmup_factor
from .pipeline import load_architecture
from .lrfind import LR_FIND_WINDOW, LrFinding, find_lr  # noqa: F401 - the range test, in its own module

DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05}

#: A batch loss this many times the run's early loss means training diverged.
DIVERGED = 100

#: The random streams of a run, each keyed by (seed, position..., tag). The tag
#: comes last and is never 0, because numpy's SeedSequence ignores trailing
#: zeros: keyed [seed, epoch] and [seed, epoch, batch], epoch 0's shuffle,
#: every epoch's first batch of augmentations and the initial weights (seed
#: alone) drew the same numbers. On the textures, netvlad then scored 1.5
#: points below its torch twin over 10 seeds, whose draws are independent.
#: The split keeps its key (the seed) so that ``cnn evaluate`` finds the
#: held-out images of models trained before.
STREAM_TAGS = {"init": 1, "shuffle": 2, "batch": 3}


def random_stream(seed, name, *position):
    """The generator of the stream ``name`` (``STREAM_TAGS``) at ``position`` (epoch, batch)."""
    return np.random.default_rng([seed, *position, STREAM_TAGS[name]])


class TrainingError(ValueError):
    """Training cannot go on (diverged, or bad settings); the message says what to do."""


class Interrupted(Exception):
    """A signal asked training to stop; a checkpoint was saved at ``checkpoint``."""

    def __init__(self, checkpoint):
        super().__init__(str(checkpoint))
        self.checkpoint = checkpoint


@dataclass
class Prepared:
    """Everything the loop needs: normalised arrays, network, optimizer, metadata."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    network: object
    optimizer: object
    meta: ModelMeta
    config: TrainConfig
    skipped: list
    progress: Checkpoint = field(default_factory=Checkpoint)  # resume point and history
    best: dict = field(default_factory=dict)  # weights of the lowest validation loss so far
    augmenter: object = None                   # augment.Augmenter of config.augment
    result: object = None                      # meta.TrainingResult, once finished
    html: bool = True                          # write MODEL.report.html when finished
    val_names: list = field(default_factory=list)  # each validation image's path under the dataset
    trainer: object = None      # what the steps train, when not the whole network (finetune.Trainer)
    val_images: object = None   # the validation images, when x_val holds features (--probe)

    @property
    def trained(self):
        """What the training steps run: the network, or the part of it a fine-tune trains."""
        return self.network if self.trainer is None else self.trainer


#: What a run writes next to MODEL, by suffix (``sibling``), besides MODEL itself.
OUTPUT_SUFFIXES = (".ckpt.npz", ".metrics.json", ".curves.png", ".confusion.png", ".lr.png", ".report.html")


@contextlib.contextmanager
def claimed(model_path, *, replace=False, report=lambda msg: None):
    """Hold MODEL's lock while the block runs, after checking that the run's outputs can be written.

    It fails (TrainingError) before any image is read when MODEL exists and
    ``replace`` is false, when MODEL or any of its sibling outputs is a
    folder, a device or another special file, when its folder is missing, or
    when another run holds the lock. Temporaries of these outputs that a killed
    run left are removed, and ``report`` names them.
    """
    model_path = Path(model_path)
    folder = model_path.parent
    if not folder.is_dir():
        raise TrainingError(f"{model_path}: the folder {folder} does not exist; create it, or choose another -o")
    if model_path.is_dir():
        raise TrainingError(f"{model_path}: is a folder; give a file name, as in -o {model_path / 'model.npz'}")
    if model_path.exists() and not replace:
        raise TrainingError(f"{model_path} exists; use --force to replace it, or -o to choose another file")
    finals = [model_path] + [sibling(model_path, suffix) for suffix in OUTPUT_SUFFIXES]
    try:
        for final in finals:
            check_output(final)
            if final.is_dir():  # a file is never renamed over a folder: it would fail after training
                raise TrainingError(f"{final}: is a folder, where cnn train writes a file; move it, "
                                    "or choose another -o")
    except OSError as exc:
        raise TrainingError(exc.strerror or str(exc)) from None
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(held_lock(folder / temporary_name(model_path.name, ".lock"),
                                          f"another cnn train is writing {model_path}"))
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        for name in remove_stale(folder, kinds=("file",), of=[f.name for f in finals]):
            report(f"removed {folder / name}, left by a run that was killed")
        yield


def checkpoint_path(model_path):
    p = Path(model_path)
    return p.with_name(p.stem + ".ckpt.npz")


def sibling(model_path, suffix):
    """``model.npz`` -> ``model<suffix>``, for the metrics, curves and confusion files."""
    p = Path(model_path)
    return p.with_name(p.stem + suffix)


def prepare(dataset_root, config, *, report=lambda msg: None, resume=None, resume_epochs=None):
    """Scan, check and load the dataset; build (or restore, from the checkpoint ``resume``) the network and optimizer.

    ``report`` receives one-line messages worth showing (image size chosen,
    files skipped, class imbalance). The caller's ``config`` is left as it
    is: the run's settings, defaults filled in, are ``Prepared.config``. A resumed run keeps the
    checkpoint's settings; ``resume_epochs`` (--epochs) may lengthen it, under a constant schedule.
    """
    if resume is not None:
        start = _Resumed(resume, resume_epochs)
    elif config.from_model is not None:
        from .finetune import FromModel

        start = FromModel(config)
    else:
        start = _Fresh(config)
    config = start.config
    optimizer = make_optimizer(config.optimizer, config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    dataset = D.find_dataset(dataset_root, config.val_split, config.seed)
    best = start.restore(dataset, dataset_root, optimizer, report)  # before any image is decoded
    size = config.image_size or D.default_image_size(dataset.train.paths)
    if config.image_size is None:
        report(f"image size {size}x{size} (median of the images' shorter sides; set --image-size to change)")
        config.image_size = size
    x_tr, ok_tr, gray_tr, bad_tr = D.load_images(dataset.train.paths, size, config.max_pixels)
    x_va, ok_va, gray_va, bad_va = D.load_images(dataset.val.paths, size, config.max_pixels)
    skipped = bad_tr + bad_va
    for path, reason in skipped:
        report(f"skipped {reason}")
    y_tr, y_va = dataset.train.labels[ok_tr], dataset.val.labels[ok_va]
    counts = np.bincount(y_tr, minlength=len(dataset.classes))
    for c, name in enumerate(dataset.classes):
        if counts[c] == 0:
            raise TrainingError(f"class '{name}' has no readable training images "
                                "(its images are unreadable, or all in the validation split)")
    if counts.max() > 10 * counts.min():
        report(f"warning: classes are imbalanced ({counts.min()} to {counts.max()} training images per class); "
               "accuracy may favour the large classes")
    if config.color is None:
        config.color = "gray" if gray_tr.all() else "rgb"
        report(f"colour: {config.color} (detected; set --color to change)")
    elif config.from_model is not None and resume is None:  # fine-tuning: the source's colour
        from .finetune import colour_note

        colour_note(config.color, gray_tr, report)
    x_tr, x_va = D.to_color(x_tr, config.color), D.to_color(x_va, config.color)
    network, meta = start.network_and_meta(dataset, x_tr, len(y_tr), len(y_va))
    mean, std = np.array(meta.preprocessing.mean, np.float32), np.array(meta.preprocessing.std, np.float32)
    augmenter = A.Augmenter(config.augment, mean=mean, std=std, fill=config.augment_fill)
    val_names = [Path(p).relative_to(dataset_root).as_posix() for p, ok in zip(dataset.val.paths, ok_va) if ok]
    prep = Prepared(D.normalize(x_tr, mean, std), y_tr, D.normalize(x_va, mean, std), y_va,
                    network, optimizer, meta, config, skipped, meta.checkpoint or Checkpoint(), best, augmenter,
                    val_names=val_names)
    if config.from_model is not None:
        from .finetune import attach

        attach(prep, report)
    return prep


def run_settings(config, source):
    """A checked copy of ``config`` with the learning rate's default filled in."""
    config = replace(config)
    _check_settings(config, source)
    if config.lr is None:
        config.lr = DEFAULT_LR[config.optimizer]
    return config


class _Fresh:
    """A run from new weights: the architecture of ``config``, read before any image is decoded."""

    def __init__(self, config):
        self.config = run_settings(config, "the settings")
        self.arch = load_architecture(self.config.arch)

    def restore(self, dataset, dataset_root, optimizer, report):
        return {}

    def network_and_meta(self, dataset, x_train, n_train, n_val):
        """New weights, and the metadata of the run (the images' mean and std normalise them)."""
        config = self.config
        mean, std = D.channel_stats(x_train)
        name, description, tables = self.arch
        meta = ModelMeta(
            Architecture(name, tables, description), dataset.classes,
            Preprocessing(config.image_size, config.color, x_train.shape[1], mean.tolist(), std.tolist(),
                          RESIZE_NOTE, SCALE_NOTE),
            Training(config, dataset.split_rule, int(n_train), int(n_val), dataset.sha256,
                     dataset_fingerprint=dataset.fingerprint))
        network = build_network(meta, seed=[config.seed, STREAM_TAGS["init"]])
        if config.init_bank:
            _init_from_bank(network, config.init_bank)
        return network, meta


class _Resumed:
    """A run that goes on from the checkpoint ``path``, with the settings it records."""

    def __init__(self, path, epochs=None):
        self.path = path
        self.network, meta, self.extra = load_model(path)
        if meta.checkpoint is None:
            raise TrainingError(f"{path}: is a finished model, not a checkpoint (*.ckpt.npz)")
        if meta.training is None or not isinstance(meta.training.config, TrainConfig):
            raise TrainingError(f"{path}: the checkpoint does not record its training settings")
        self.config = run_settings(meta.training.config, f"{path}: the checkpoint's settings")
        if epochs is not None and epochs != self.config.epochs:
            if epochs <= meta.checkpoint.epoch or self.config.schedule != "constant":
                raise TrainingError(f"--epochs {epochs}: the run has done {meta.checkpoint.epoch} of its "
                                    f"{self.config.epochs} epochs" + (f" on a {self.config.schedule} schedule, which "
                                    "--epochs would change mid-run" if self.config.schedule != "constant" else "")
                                    + "; leave out --epochs to finish it as it was set")
            self.config.epochs = epochs
        self.meta = replace(meta, training=replace(meta.training, config=self.config))

    def restore(self, dataset, dataset_root, optimizer, report):
        """Check the checkpoint whole against the dataset, then load its weights and state; the best weights."""
        _check_resume(self.path, self.meta, dataset, dataset_root)
        best = _restore(self.path, self.network, optimizer, self.extra)
        if not isinstance(self.meta.training.dataset_fingerprint, str):
            report(f"warning: {self.path} does not record its dataset's files (an older checkpoint), "
                   f"so it cannot be checked that {dataset_root} is the same")
        return best

    def network_and_meta(self, dataset, x_train, n_train, n_val):
        """The checkpoint's network and metadata, once its normalisation is checked against the images
        (a fine-tuned run's comes from its source model, which is not at hand)."""
        pre = self.meta.preprocessing
        if self.config.from_model is None and not all(
                np.allclose(theirs, ours, rtol=1e-5) for theirs, ours in zip((pre.mean, pre.std),
                                                                             D.channel_stats(x_train))):
            raise TrainingError(f"{self.path}: damaged checkpoint: its preprocessing mean {pre.mean} and std "
                                f"{pre.std} are not those of the training images it was made from")
        return self.network, self.meta


#: Each setting's rule, as (test, what it must be); the CLI's options enforce the same.
_RULES = {
    "arch": (lambda v: isinstance(v, str) and v != "", "a preset name or a file"),
    "epochs": (lambda v: _whole(v) and v >= 1, "a whole number, at least 1"),
    "batch_size": (lambda v: _whole(v) and v >= 1, "a whole number, at least 1"),
    "lr": (lambda v: v is None or (_number(v) and v > 0), "a finite number above 0"),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "at least 0 and below 1"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a finite number of at least 0"),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "val_split": (lambda v: _number(v) and 0 <= v < 1, "at least 0 and below 1"),
    "seed": (lambda v: _whole(v) and v >= 0, "a whole number, 0 or more"),
    "image_size": (lambda v: v is None or (_whole(v) and 4 <= v <= 1024), "a whole number from 4 to 1024"),
    "color": (lambda v: v is None or v in COLORS, f"one of {', '.join(COLORS)}"),
    "patience": (lambda v: v is None or (_whole(v) and v >= 1), "a whole number, at least 1"),
    "init_bank": (lambda v: v is None or (isinstance(v, str) and v != ""), "a bank name"),
    "max_pixels": (lambda v: _whole(v) and v >= 1, "a whole number, at least 1"),
    "label_smoothing": (lambda v: _number(v) and 0 <= v < 1, "at least 0 and below 1"),
    "warmup": (lambda v: _whole(v) and v >= 0, "a whole number of epochs, 0 or more"),
}


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_settings(config, source="the settings"):
    """Refuse settings no run can use, naming the first (the CLI checks its options first;
    a checkpoint's come unchecked); write the augmentations out in full."""
    from .finetune import RULES

    for name, (test, rule) in ({**_RULES, **RULES} if config.from_model is not None else _RULES).items():
        value = getattr(config, name)
        if not test(value):
            raise TrainingError(f"{source}: {name} must be {rule}, not {value!r}"[:300])
    try:
        config.augment = A.canonical(config.augment)
        A.check_fill(config.augment_fill)
    except A.AugmentError as exc:
        raise TrainingError(f"{source}: {exc}") from None


def _check_resume(path, meta, dataset, dataset_root):
    """Refuse a checkpoint whose run cannot go on here: another dataset, or a state
    that does not fit its own settings."""
    config, state, training = meta.training.config, meta.checkpoint, meta.training
    if config.image_size is None or config.color is None or config.lr is None:
        raise TrainingError(f"{path}: the checkpoint lacks its image size, colour or learning rate")
    if not (state.epoch <= config.epochs and len(state.history) == state.epoch):
        raise TrainingError(f"{path}: damaged checkpoint: it says {state.epoch} of {config.epochs} epochs are "
                            f"done, with {len(state.history)} in its history")
    if dataset.classes != meta.classes:
        raise TrainingError(f"{dataset_root}: classes {dataset.classes} differ from the checkpoint's {meta.classes}")
    loss_sum, correct, seen = state.sums
    batches = -(-len(dataset.train.paths) // config.batch_size)
    damage = [(state.batch < batches, f"batch {state.batch} of an epoch of {batches}"),
              (state.early_loss is None or (math.isfinite(state.early_loss)  # at least the loss of a guess
                                            and state.early_loss >= math.log(len(meta.classes)) - 1e-6),
               f"its divergence baseline (early_loss) is {state.early_loss!r}"),
              (math.isfinite(loss_sum) and loss_sum >= 0 and 0 <= correct <= seen <= state.batch * config.batch_size,
               f"its running sums are {state.sums}"),
              (state.best_loss is None or math.isfinite(state.best_loss), f"best_loss is {state.best_loss!r}")]
    for sound, what in damage:
        if not sound:
            raise TrainingError(f"{path}: damaged checkpoint: {what}; start a new run without --resume")
    recorded = [(training.dataset_sha256, dataset.sha256, "files were added, removed, renamed or moved"),
                (training.dataset_fingerprint, dataset.fingerprint, "files changed size")]
    for theirs, ours, what in recorded:
        if isinstance(theirs, str) and theirs != ours:
            raise TrainingError(f"{dataset_root}: is not the dataset {path} was trained on ({what}); resume with "
                                "the same images, or start a new run without --resume")


def _init_from_bank(network, bank_name):
    """Start the first conv layer from a bank's kernels (centred, averaged over input channels)."""
    from .filterbank import load_bank

    conv = first_conv(network)
    if conv is None:
        raise TrainingError("--init-bank needs a conv layer in the architecture")
    w = conv.params["weight"]
    c_out, c_in, kh, kw = w.shape
    bank = load_bank(bank_name)
    kernels = [k for k in bank.kernels if k.channels is None and k.size[0] <= kh and k.size[1] <= kw]
    if len(kernels) < c_out:
        raise TrainingError(f"--init-bank {bank_name}: the first conv layer needs {c_out} kernels of at most "
                            f"{kh}x{kw}, but the bank has {len(kernels)} that fit")
    for o, k in enumerate(kernels[:c_out]):
        h, ww = k.size
        top, left = (kh - 1) // 2 - (h - 1) // 2, (kw - 1) // 2 - (ww - 1) // 2
        w[o] = 0
        w[o, :, top:top + h, left:left + ww] = k.weights / c_in


def _restore(path, network, optimizer, extra):
    """Load a checkpoint's optimizer state into ``optimizer``; return its best weights.
    Every entry is checked against the network, so a crafted file fails in one line."""
    weights = network.state_dict()
    optim = {k.removeprefix("optim."): v for k, v in extra.items() if k.startswith("optim.")}
    best = {k.removeprefix("best."): v for k, v in extra.items() if k.startswith("best.")}
    unknown = [k for k in extra if not k.startswith(("optim.", "best."))]
    try:
        if unknown:
            raise ValueError(f"unknown entries {unknown[:3]}")
        optimizer.load_state_dict(optim, {name: p for name, p, _ in network.parameters()})
        for name, value in best.items():
            if name not in weights or value.shape != weights[name].shape or value.dtype != weights[name].dtype \
                    or not np.all(np.isfinite(value)):
                raise ValueError(f"best weights '{name}' do not fit the network")
        if best and best.keys() != weights.keys():
            raise ValueError("the best weights lack some of the network's")
    except ValueError as exc:
        raise TrainingError(f"{path}: damaged checkpoint: {exc}"[:400]) from None
    return best


def evaluate_arrays(network, x, y, batch_size=256):
    """(mean loss, accuracy, probabilities) on normalised arrays."""
    if len(x) == 0:
        return None, None, np.zeros((0, 0))
    probs = predict_batches(network, x, batch_size)
    loss = float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-12))))
    return loss, float(np.mean(probs.argmax(axis=1) == y)), probs


def train_step(prep, idx, rng, epoch, batch):
    """One minibatch of the images ``idx``: forward, loss, backward, update.

    ``rng`` drives augmentation and dropout. Returns (loss, number correct).
    Raises TrainingError, before updating anything, when the loss shows the
    run diverged (see the module's docstring).
    """
    net = prep.trained
    for layer in net.layers:
        if isinstance(layer, Dropout):
            layer.rng = rng
    xb = prep.augmenter(prep.x_train[idx], rng)
    net.zero_grad()
    logits = net.forward(xb, train=True)
    loss, grad, probs = softmax_cross_entropy(logits, prep.y_train[idx], prep.config.label_smoothing)
    where = f"at epoch {epoch + 1}, batch {batch + 1}"
    if not np.isfinite(loss):
        raise TrainingError(f"training diverged: the loss became {loss} {where}; "
                            f"try a lower --lr (now {prep.config.lr:g})")
    if prep.progress.early_loss is None:
        prep.progress.early_loss = max(loss, math.log(len(prep.meta.classes)))
    elif loss > DIVERGED * prep.progress.early_loss:
        raise TrainingError(f"training diverged: the loss rose to {loss:.3g} {where}, over {DIVERGED} times "
                            f"its early value {prep.progress.early_loss:.3g}; "
                            f"try a lower --lr (now {prep.config.lr:g})")
    net.backward(grad)
    prep.optimizer.step(net.parameters())
    return loss, int(np.sum(probs.argmax(axis=1) == prep.y_train[idx]))


def run_epoch(prep, epoch, *, start_batch=0, sums=(0.0, 0, 0), on_batch=None, should_stop=lambda: None):
    """Train one epoch from ``start_batch``.

    Returns ((loss sum, correct, seen), next batch): the next batch is None
    when the epoch is complete, and set when ``should_stop()`` fired first.
    """
    cfg = prep.config
    n, bs = len(prep.x_train), cfg.batch_size
    batches = max(1, -(-n // bs))
    rate = learning_rate(cfg.lr, cfg.schedule, epoch, cfg.epochs)
    order = random_stream(cfg.seed, "shuffle", epoch).permutation(n)
    loss_sum, correct, seen = sums
    t0 = time.perf_counter()
    for b in range(start_batch, batches):
        prep.optimizer.lr = rate * warmup_factor(epoch, b, batches, cfg.warmup)
        idx = order[b * bs:(b + 1) * bs]
        loss, right = train_step(prep, idx, random_stream(cfg.seed, "batch", epoch, b), epoch, b)
        loss_sum, correct, seen = loss_sum + loss * len(idx), correct + right, seen + len(idx)
        if on_batch:
            on_batch(epoch, b + 1, batches, loss_sum / seen, correct / seen, seen / (time.perf_counter() - t0))
        if b + 1 < batches and should_stop():
            return (loss_sum, correct, seen), b + 1
    # A diverging update shows up in the next batch's loss; the last one of an
    # epoch has no next batch, so look at the weights themselves.
    for name, p, _ in prep.trained.parameters():
        if not np.all(np.isfinite(p)):
            raise TrainingError(f"training diverged: weight '{name}' became NaN or infinite at epoch {epoch + 1}, "
                                f"batch {batches}; try a lower --lr (now {cfg.lr:g})")
    return (loss_sum, correct, seen), None


def fit(prep, model_path, *, on_batch=None, on_epoch=None, should_stop=lambda: None):
    """Train; write the model, metrics, plots and a checkpoint after every epoch.

    ``should_stop()`` is polled after every batch: a true answer saves a
    checkpoint at that point and raises ``Interrupted``. Returns the history;
    ``prep.result`` is the ``TrainingResult`` written into the model.
    A TrainingError (divergence) leaves the last checkpoint as it was and
    says which epoch it holds.
    """
    net, progress = prep.network, prep.progress
    history, best = progress.history, prep.best
    best_loss = float("inf") if progress.best_loss is None else progress.best_loss
    bad_epochs = progress.bad_epochs
    start_batch = progress.batch
    for epoch in range(progress.epoch, prep.config.epochs):
        t0 = time.perf_counter()
        try:
            sums, stopped_at = run_epoch(prep, epoch, start_batch=start_batch,
                                         sums=progress.sums if start_batch else (0.0, 0, 0),
                                         on_batch=on_batch, should_stop=should_stop)
            val_loss, val_acc, _ = (None, None, None) if stopped_at is not None else \
                evaluate_arrays(prep.trained, prep.x_val, prep.y_val)
            if val_loss is not None and not np.isfinite(val_loss):
                raise TrainingError(f"training diverged: the validation loss became {val_loss} after epoch "
                                    f"{epoch + 1}; try a lower --lr (now {prep.config.lr:g})")
        except TrainingError as exc:
            raise TrainingError(f"{exc}; {_kept_checkpoint(model_path, len(history))}") from None
        if stopped_at is not None:
            state = Checkpoint(epoch, stopped_at, history, list(sums), _finite_or_none(best_loss), bad_epochs,
                               progress.early_loss)
            _save_checkpoint(prep, model_path, state, best)
            raise Interrupted(checkpoint_path(model_path))
        start_batch = 0
        seconds = time.perf_counter() - t0
        loss_sum, correct, seen = sums
        history.append({"epoch": epoch + 1, "lr": prep.optimizer.lr, "train_loss": loss_sum / seen,
                        "train_accuracy": correct / seen, "val_loss": val_loss, "val_accuracy": val_acc,
                        "seconds": seconds, "images_per_second": seen / seconds if seconds > 0 else None})
        stop_early = False
        if prep.config.patience is not None and val_loss is not None:
            if val_loss < best_loss:
                best_loss, bad_epochs = val_loss, 0
                best = {k: v.copy() for k, v in net.state_dict().items()}
            else:
                bad_epochs += 1
                stop_early = bad_epochs >= prep.config.patience
        state = Checkpoint(epoch + 1, 0, history, [0.0, 0, 0], _finite_or_none(best_loss), bad_epochs,
                           progress.early_loss)
        _save_checkpoint(prep, model_path, state, best)
        if on_epoch:
            on_epoch(history[-1])
        if stop_early:
            break
        if should_stop():
            raise Interrupted(checkpoint_path(model_path))
    if best:
        net.load_state_dict(best)
    # Early stopping keeps the first epoch of the lowest validation loss.
    kept = int(np.argmin([h["val_loss"] for h in history])) + 1 if best else len(history)
    prep.result = finish(prep, model_path, history, kept)
    return history


def _kept_checkpoint(model_path, epochs_done):
    """What a run that stops with an error leaves behind, in words."""
    if epochs_done and checkpoint_path(model_path).exists():
        return f"no model was written; {checkpoint_path(model_path)} still holds epoch {epochs_done}"
    return "no model was written"


def _finite_or_none(value):
    """JSON has no infinity: the metadata stores None for "no best loss yet"."""
    return value if np.isfinite(value) else None


def _save_checkpoint(prep, model_path, state, best):
    extra = {f"optim.{k}": v for k, v in prep.optimizer.state_dict().items()}
    extra.update({f"best.{k}": v for k, v in best.items()})
    save_model(checkpoint_path(model_path), prep.network, replace(prep.meta, checkpoint=state), extra)


def finish(prep, model_path, history, kept):
    """Write the final model with its metrics, learning curves and confusion matrix; return its TrainingResult.

    ``kept`` is the (1-based) epoch whose weights the network holds; its
    entry in the history and the metrics says ``"kept": true``.
    """
    import json

    from .evaluation import confusion_matrix
    from .fileio import write_bytes_atomic
    from .plots import confusion_png, learning_curves_png

    for entry in history:
        entry["kept"] = entry["epoch"] == kept
    val_loss, val_acc, probs = evaluate_arrays(prep.trained, prep.x_val, prep.y_val)
    result = TrainingResult(len(history), history, val_loss, val_acc, time.strftime("%Y-%m-%dT%H:%M:%S%z"), kept)
    meta = replace(prep.meta, checkpoint=None, training=replace(prep.meta.training, result=result))
    save_model(model_path, prep.network, meta)
    checkpoint_path(model_path).unlink(missing_ok=True)  # the run is complete; the model supersedes it
    write_bytes_atomic(sibling(model_path, ".metrics.json"), json.dumps(history, indent=2).encode())
    write_bytes_atomic(sibling(model_path, ".curves.png"), learning_curves_png(history))
    if len(prep.y_val):
        matrix = confusion_matrix(prep.y_val, probs.argmax(axis=1), len(prep.meta.classes))
        write_bytes_atomic(sibling(model_path, ".confusion.png"), confusion_png(matrix, prep.meta.classes))
    report = sibling(model_path, ".report.html")
    if prep.html:  # last: the report shows the files above
        from .report import train_report, write_page

        images = prep.x_val if prep.val_images is None else prep.val_images
        write_page(report, train_report(model_path, meta, prep.network, images, prep.y_val, probs,
                                        prep.val_names), replace=True)
    else:  # a report left by an earlier run would describe another model
        report.unlink(missing_ok=True)
    return result
