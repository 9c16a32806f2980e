"""A model's metadata as typed objects: what it is, what it was trained on, how its input is made.

``ModelMeta.from_json`` reads the ``__meta__`` JSON of a model file and checks
every field's type, so a damaged or hand-edited file is refused with one
message naming the field; ``to_json`` gives back the same JSON, key for key
and in the same order, so files keep their content whichever way they pass.

The JSON object::

    {"format": "cnn-model", "format_version": 1, "cnn_version": "...",
     "architecture": {"name", "description", "layers": [layer tables]},
     "classes": [names],
     "preprocessing": {"image_size", "color", "channels", "mean", "std", "resize", "scale"},
     "training": {"config": {TrainConfig}, "split", "train_images", "val_images", "dataset_sha256",
                  then once finished: "epochs_run", "history", "final_val_loss",
                  "final_val_accuracy", "finished", "kept_epoch"},
     "checkpoint": {"epoch", "batch", "history", "sums", "best_loss", "bad_epochs",
                    "early_loss"}}   # checkpoints only

Keys marked optional below may be absent from files that other tools (or the
tests) wrote; an absent key stays absent when the file is written again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

from . import __version__
from .choices import CHANNEL_NAMES
from .imageio import MAX_PIXELS

FORMAT = "cnn-model"
FORMAT_VERSION = 1

#: How ``cnn train`` describes its preprocessing in the file, for a human reader.
RESIZE_NOTE = "Lanczos to image_size x image_size (aspect not kept)"
SCALE_NOTE = "pixel values in [0, 1], then (x - mean) / std per channel"

#: Bounds of a model's normalisation: pixels are in [0, 1], and ``cnn train``
#: writes means in [0, 1] and stds of at least 1e-3 (``data.channel_stats``).
#: Within them, (x - mean) / std stays below 1e9, far from float32's 3e38.
MAX_MEAN, MIN_STD, MAX_STD = 1e3, 1e-6, 1e6

#: Training settings that older files hold and this version ignores.
RETIRED_CONFIG_KEYS = ("follow_links",)


class ModelError(ValueError):
    """A model file cannot be used; the message says why."""


# ----------------------------------------------------------------------------- type checks

_NONE = type(None)

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", list: "a list", dict: "an object",
               bool: "true or false", _NONE: "null"}


def _is(value, kind):
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _check(value, kinds, name):
    """``value`` if it is one of ``kinds`` (a type or tuple of types), else a ModelError naming ``name``."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not any(_is(value, k) for k in kinds):
        wanted = " or ".join(_TYPE_NAMES[k] for k in kinds)
        raise ModelError(f"metadata field '{name}' must be {wanted}, not {value!r}"[:300])
    return value


def _list_of(value, kind, name):
    for i, item in enumerate(_check(value, list, name)):
        _check(item, kind, f"{name}[{i}]")
    return value


def _get(obj, key, kinds, where, default=None):
    """obj[key] checked against ``kinds``; ``default`` when absent (None: the key is required)."""
    name = f"{where}.{key}" if where else key
    if key not in obj:
        if default is None:
            raise ModelError(f"metadata has no '{name}'")
        return default
    return _check(obj[key], kinds, name)


class _Absent:
    """The value of an optional key that the file does not have; it is left out when written."""

    def __repr__(self):
        return "ABSENT"


_ABSENT = _Absent()


def _optional(obj, key, kinds, where):
    return _get(obj, key, kinds, where, default=_ABSENT)


def _present(items):
    """The (key, value) pairs whose value is not ``_ABSENT``, as a dict in their order."""
    return {k: v for k, v in items if v is not _ABSENT}


# ----------------------------------------------------------------------------- the parts


@dataclass
class Architecture:
    """The layer tables of the architecture file the network was built from."""

    name: str
    layers: list                       # [[layer]] tables; pipeline.build_layers checks their content
    description: object = _ABSENT      # str; optional

    @classmethod
    def from_json(cls, obj):
        _check(obj, dict, "architecture")
        layers = _list_of(_get(obj, "layers", list, "architecture"), dict, "architecture.layers")
        return cls(_get(obj, "name", str, "architecture"), layers,
                   _optional(obj, "description", str, "architecture"))

    def to_json(self):
        return _present([("name", self.name), ("description", self.description), ("layers", self.layers)])


@dataclass
class Preprocessing:
    """How an image becomes the network's input: resized to ``image_size`` square,
    read as ``color`` (``channels`` of them), then ``(x - mean) / std`` per channel."""

    image_size: int
    color: str                         # "gray" or "rgb"
    channels: int                      # 1 for gray, 3 for rgb
    mean: list                         # floats, one per channel
    std: list                          # floats above 0, one per channel
    resize: object = _ABSENT           # str for a human reader; optional
    scale: object = _ABSENT            # str for a human reader; optional

    @property
    def channel_names(self):
        """The input channels' names, as pipelines bind them."""
        return list(CHANNEL_NAMES[self.color])

    @classmethod
    def from_json(cls, obj):
        w = "preprocessing"
        _check(obj, dict, w)
        try:
            pre = cls(_get(obj, "image_size", int, w), _get(obj, "color", str, w), _get(obj, "channels", int, w),
                      _list_of(_get(obj, "mean", list, w), float, f"{w}.mean"),
                      _list_of(_get(obj, "std", list, w), float, f"{w}.std"),
                      _optional(obj, "resize", str, w), _optional(obj, "scale", str, w))
        except ModelError as exc:
            raise ModelError(f"damaged preprocessing metadata ({exc})") from None
        problems = pre._impossible()
        if problems:
            raise ModelError(f"impossible preprocessing: {'; '.join(problems)}")
        return pre

    def _impossible(self):
        """What could not have come from cnn train."""
        problems = []
        if self.color not in CHANNEL_NAMES or len(CHANNEL_NAMES[self.color]) != self.channels:
            problems.append(f"color {self.color!r} with {self.channels!r} channels")
        if not 1 <= self.image_size <= 4096:
            problems.append(f"image_size {self.image_size!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"mean/std of shapes ({len(self.mean)},)/({len(self.std)},)")
        elif not all(math.isfinite(v) for v in self.mean + self.std) or min(self.std) <= 0:
            problems.append("mean/std that are not finite, or std <= 0")
        elif max(abs(v) for v in self.mean) > MAX_MEAN or not MIN_STD <= min(self.std) <= max(self.std) <= MAX_STD:
            # (x - mean) / std of pixels in [0, 1] must stay well inside float32's range.
            problems.append(f"mean {self.mean} / std {self.std} outside |mean| <= {MAX_MEAN:g}, "
                            f"{MIN_STD:g} <= std <= {MAX_STD:g}")
        return problems

    def to_json(self):
        return _present((f.name, getattr(self, f.name)) for f in fields(self))


@dataclass
class TrainConfig:
    """The settings of a ``cnn train`` run, as its options give them."""

    arch: str = "lenet"
    epochs: int = 20
    batch_size: int = 32
    lr: Optional[float] = None          # None: train.DEFAULT_LR of the optimizer
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"
    val_split: float = 0.2
    seed: int = 0
    image_size: Optional[int] = None    # None: from the data (data.default_image_size)
    color: Optional[str] = None         # None: gray if every training image is grey
    augment: list = field(default_factory=list)   # "NAME=VALUE" strings (augment.canonical)
    patience: Optional[int] = None      # early stopping on validation loss
    init_bank: Optional[str] = None
    max_pixels: int = MAX_PIXELS        # refuse larger images (decompression bombs)
    # Settings added after the first files were written: a file without them
    # was trained as their defaults say.
    augment_fill: str = "zeros"         # borders that augmentation exposes (choices.AUGMENT_FILLS)
    label_smoothing: float = 0.0
    warmup: int = 0                     # epochs of linear learning-rate warm-up
    # Fine-tuning (``cnn train --from``); written only when ``from_model`` is set.
    from_model: Optional[str] = None    # the model file trained from
    head: Optional[str] = None          # the node cut after; None: before the model's classifier
    freeze: str = "none"                # "none", "all" (all but the head) or the last frozen node
    backbone_lr_mult: float = 0.1       # learning rate of the unfrozen nodes before the head, times lr
    probe: bool = False                 # train the head on features computed once

    @classmethod
    def from_json(cls, obj):
        where = "training.config"
        _check(obj, dict, where)
        known = {f.name: f for f in fields(cls)}
        unknown = [k for k in obj if k not in known and k not in RETIRED_CONFIG_KEYS]
        if unknown:
            raise ModelError(f"metadata field '{where}' has unknown settings {unknown}")
        config = cls(**{name: _check(value, _SETTING_TYPES[name], f"{where}.{name}")
                        for name, value in obj.items() if name in known})
        _list_of(config.augment, str, f"{where}.augment")
        return config

    def to_json(self):
        out = asdict(self)
        if self.from_model is None:  # a run from scratch writes the settings it always wrote
            for name in FINE_TUNE_KEYS:
                del out[name]
        return out


FINE_TUNE_KEYS = ("from_model", "head", "freeze", "backbone_lr_mult", "probe")

_SETTING_TYPES = {
    "arch": str, "epochs": int, "batch_size": int, "lr": (float, _NONE), "optimizer": str,
    "momentum": float, "weight_decay": float, "schedule": str, "val_split": float, "seed": int,
    "image_size": (int, _NONE), "color": (str, _NONE), "augment": list, "patience": (int, _NONE),
    "init_bank": (str, _NONE), "max_pixels": int, "augment_fill": str, "label_smoothing": float, "warmup": int,
    "from_model": (str, _NONE), "head": (str, _NONE), "freeze": str, "backbone_lr_mult": float, "probe": bool,
}


@dataclass
class TrainingResult:
    """What a finished run adds to its training metadata."""

    epochs_run: int
    history: list                      # one dict per epoch, as in MODEL.metrics.json
    final_val_loss: Optional[float]    # None without a validation split
    final_val_accuracy: Optional[float]
    finished: str                      # local time, ISO 8601
    kept_epoch: object = _ABSENT       # int: the epoch whose weights were saved; optional

    KEYS = ("epochs_run", "history", "final_val_loss", "final_val_accuracy", "finished", "kept_epoch")


@dataclass
class Training:
    """How the model was trained: its settings, the split, and once finished the result."""

    config: object = _ABSENT           # TrainConfig; optional
    split: object = _ABSENT            # str: how validation images were chosen; optional
    train_images: object = _ABSENT     # int; optional
    val_images: object = _ABSENT       # int; optional
    dataset_sha256: object = _ABSENT   # str: data.Dataset.sha256 of the folder trained on; optional
    result: Optional[TrainingResult] = None
    dataset_fingerprint: object = _ABSENT  # str: data.Dataset.fingerprint (paths and sizes); optional

    @classmethod
    def from_json(cls, obj):
        w = "training"
        _check(obj, dict, w)
        config = _optional(obj, "config", dict, w)
        training = cls(_ABSENT if config is _ABSENT else TrainConfig.from_json(config),
                       _optional(obj, "split", str, w), _optional(obj, "train_images", int, w),
                       _optional(obj, "val_images", int, w), _optional(obj, "dataset_sha256", str, w),
                       dataset_fingerprint=_optional(obj, "dataset_fingerprint", str, w))
        if any(k in obj for k in TrainingResult.KEYS):
            training.result = TrainingResult(
                _get(obj, "epochs_run", int, w), _list_of(_get(obj, "history", list, w), dict, f"{w}.history"),
                _get(obj, "final_val_loss", (float, _NONE), w), _get(obj, "final_val_accuracy", (float, _NONE), w),
                _get(obj, "finished", str, w), _optional(obj, "kept_epoch", int, w))
        return training

    def to_json(self):
        config = self.config if self.config is _ABSENT else self.config.to_json()
        out = _present([("config", config), ("split", self.split), ("train_images", self.train_images),
                        ("val_images", self.val_images), ("dataset_sha256", self.dataset_sha256),
                        ("dataset_fingerprint", self.dataset_fingerprint)])
        if self.result is not None:
            out.update(_present((k, getattr(self.result, k)) for k in TrainingResult.KEYS))
        return out


@dataclass
class Checkpoint:
    """Where an unfinished run stopped: the next epoch and batch, and the loop's running state."""

    epoch: int = 0                     # epochs complete
    batch: int = 0                     # batches of the next epoch complete
    history: list = field(default_factory=list)
    sums: list = field(default_factory=lambda: [0.0, 0, 0])  # loss sum, correct, seen in the epoch so far
    best_loss: Optional[float] = None  # lowest validation loss so far (early stopping); None: none yet
    bad_epochs: int = 0                # epochs since it fell
    early_loss: Optional[float] = None  # what divergence is measured against; None: not yet (not written)

    @classmethod
    def from_json(cls, obj):
        w = "checkpoint"
        _check(obj, dict, w)
        state = cls(_get(obj, "epoch", int, w), _get(obj, "batch", int, w),
                    _list_of(_get(obj, "history", list, w), dict, f"{w}.history"),
                    _list_of(_get(obj, "sums", list, w), float, f"{w}.sums"),
                    _get(obj, "best_loss", (float, _NONE), w), _get(obj, "bad_epochs", int, w),
                    _optional(obj, "early_loss", (float, _NONE), w))
        if state.early_loss is _ABSENT:
            state.early_loss = None
        if len(state.sums) != 3 or min(state.epoch, state.batch, state.bad_epochs) < 0:
            raise ModelError(f"damaged checkpoint metadata: epoch {state.epoch}, batch {state.batch}, "
                             f"sums {state.sums}")
        return state

    def to_json(self):
        out = asdict(self)
        if out["early_loss"] is None:
            del out["early_loss"]
        return out


# ----------------------------------------------------------------------------- the whole


@dataclass
class ModelMeta:
    """Everything a model file says besides its weights."""

    architecture: Architecture
    classes: list                      # class names, in the order of the network's outputs
    preprocessing: Preprocessing
    training: Optional[Training] = None
    checkpoint: Optional[Checkpoint] = None   # set in checkpoints only
    cnn_version: str = __version__     # of the cnn that started the run
    #: Where an imported or fine-tuned model came from: its format, file, SHA-256 and what was
    #: assumed; flat JSON values (str, int, float, bool, lists of str). None for a model trained here.
    source: Optional[dict] = None

    @classmethod
    def from_json(cls, obj):
        """Parse the ``__meta__`` object; ModelError names the first field that is missing or wrong."""
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise ModelError("not a cnn model file")
        if obj.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"model format version {obj.get('format_version')!r} is not supported "
                             f"(this cnn reads version {FORMAT_VERSION}); use the cnn version that wrote it")
        return cls.from_parts(obj, cnn_version=_get(obj, "cnn_version", str, "", default=__version__))

    @classmethod
    def from_parts(cls, obj, cnn_version=__version__):
        """Parse the parts of a ``__meta__`` object (no format keys needed), as a caller
        that builds a model from scratch writes them."""
        for key in ("architecture", "classes", "preprocessing"):
            if key not in obj:
                raise ModelError(f"metadata has no '{key}'")
        classes = _list_of(obj["classes"], str, "classes")
        if len(set(classes)) != len(classes) or not classes:
            raise ModelError(f"metadata field 'classes' must name each class once, not {classes!r}"[:300])
        training = _optional(obj, "training", dict, "")
        checkpoint = _optional(obj, "checkpoint", dict, "")
        source = _optional(obj, "source", dict, "")
        return cls(Architecture.from_json(obj["architecture"]), classes,
                   Preprocessing.from_json(obj["preprocessing"]),
                   None if training is _ABSENT else Training.from_json(training),
                   None if checkpoint is _ABSENT else Checkpoint.from_json(checkpoint), cnn_version,
                   None if source is _ABSENT else _lineage(source))

    def to_json(self):
        """The ``__meta__`` object, with the same keys in the same order as ``from_json`` read."""
        out = {"format": FORMAT, "format_version": FORMAT_VERSION, "cnn_version": self.cnn_version,
               "architecture": self.architecture.to_json(), "classes": list(self.classes),
               "preprocessing": self.preprocessing.to_json()}
        if self.training is not None:
            out["training"] = self.training.to_json()
        if self.checkpoint is not None:
            out["checkpoint"] = self.checkpoint.to_json()
        if self.source is not None:
            out["source"] = dict(self.source)
        return out


def _lineage(obj):
    """The ``source`` object, checked: string keys, flat JSON values or lists of strings."""
    def flat(v):
        return isinstance(v, (str, int, float, bool)) or v is None

    for key, value in obj.items():
        if not isinstance(key, str) or not (flat(value) or (isinstance(value, list)
                                                             and all(isinstance(x, str) for x in value))):
            raise ModelError(f"damaged source metadata at {key!r}"[:200])
    return dict(obj)
