"""The registry of layer types: the one list of what a ``[[layer]]`` table may be.

Each ``LayerType`` maps a ``type`` name to the class that implements it, the
fields a table may set, and where the type may be used: in pipelines (fixed
filters, run by ``cnn apply``), in networks (trained by ``cnn train``), or
both. Reading pipeline and architecture files, telling them apart
(``specfile.kind_of``) and building a ``Network`` all ask it; so can anything
that walks layers (``type_of(layer)``).

Adding a layer type is one class that follows ``cnn_cli.layers.Layer`` and one
entry in ``LAYER_TYPES``. A name may have two forms, told apart by a field:
``conv`` with ``banks`` is ``BankConv`` (fixed filters, pipelines only), and
with ``out_channels`` it is ``Conv2d`` (learned, networks only).
"""

from __future__ import annotations

from dataclasses import dataclass

from .blocks import NetVLAD, Residual
from .filterlayers import BankConv, CornerResponse, Normalize, Products
from .graphlayers import (
    LRN,
    Affine,
    Clip,
    HardSigmoid,
    HardSwish,
    PReLU,
    Softmax,
    Transpose,
)
from .layers import ACTIVATIONS, Activation, GlobalPool, LayerError, Pool
from .merges import Add, Concat, Mul
from .trainable import BatchNorm2d, Conv2d, Dropout, Flatten, Linear
from .upsampling import ConvTranspose2d, Pad, Resize

PIPELINE, NETWORK = "pipeline", "network"
BOTH = frozenset({PIPELINE, NETWORK})
PIPELINE_ONLY, NETWORK_ONLY = frozenset({PIPELINE}), frozenset({NETWORK})


@dataclass(frozen=True)
class LayerType:
    """One ``type`` of layer: ``cls(**fields)`` builds it (``cls(name, **fields)`` if ``named``).

    Defaults and the checks of each field's value are the class's own.
    """

    name: str
    cls: type
    fields: tuple = ()
    where: frozenset = BOTH
    #: For a name with two forms: the field whose presence selects this form, and what the form is.
    key: str | None = None
    means: str = ""
    #: True for a class that serves several names and takes the name as its first argument.
    named: bool = False

    def make(self, options):
        """The layer for a table's ``options`` (its fields other than ``type``)."""
        return self.cls(self.name, **options) if self.named else self.cls(**options)


_CONV = ("stride", "padding", "dilation", "padding_mode")
_POOL = ("kernel_size", "stride", "padding", "ceil_mode")

LAYER_TYPES = (
    LayerType("conv", BankConv, ("banks", "mode", *_CONV), PIPELINE_ONLY, key="banks", means="fixed filters"),
    LayerType("conv", Conv2d, ("out_channels", "kernel_size", *_CONV, "groups", "bias"), NETWORK_ONLY,
              key="out_channels", means="learned"),
    LayerType("linear", Linear, ("out_features", "bias"), NETWORK_ONLY),
    LayerType("flatten", Flatten, (), NETWORK_ONLY),
    LayerType("dropout", Dropout, ("p",), NETWORK_ONLY),
    LayerType("batchnorm", BatchNorm2d, ("eps",), NETWORK_ONLY),
    LayerType("residual", Residual, ("out_channels", "stride"), NETWORK_ONLY),
    LayerType("netvlad", NetVLAD, ("clusters",), NETWORK_ONLY),
    LayerType("maxpool", Pool, _POOL, named=True),
    LayerType("avgpool", Pool, _POOL, named=True),
    LayerType("globalavgpool", GlobalPool, named=True),
    LayerType("globalmaxpool", GlobalPool, named=True),
    LayerType("products", Products, (), PIPELINE_ONLY),
    LayerType("corner_response", CornerResponse, ("method", "k"), PIPELINE_ONLY),
    LayerType("normalize", Normalize, ("method",), PIPELINE_ONLY),
    *(LayerType(name, Activation, ("slope",) if form.slope is not None else (), named=True)
      for name, form in ACTIVATIONS.items()),
    LayerType("add", Add),
    LayerType("mul", Mul),
    LayerType("concat", Concat),
    LayerType("clip", Clip, ("min", "max")),
    LayerType("hardsigmoid", HardSigmoid, ("alpha", "beta")),
    LayerType("hardswish", HardSwish),
    LayerType("prelu", PReLU, ("init",), NETWORK_ONLY),
    LayerType("softmax", Softmax),
    LayerType("lrn", LRN, ("size", "alpha", "beta", "bias")),
    LayerType("transpose", Transpose, ("perm",)),
    LayerType("affine", Affine, ("shape",), NETWORK_ONLY),
    LayerType("convtranspose", ConvTranspose2d,
              ("out_channels", "kernel_size", "stride", "padding", "output_padding", "dilation", "groups", "bias"),
              NETWORK_ONLY),
    LayerType("resize", Resize, ("scale", "size", "mode", "coordinates", "nearest")),
    LayerType("pad", Pad, ("pads", "mode", "value")),
)


def onnx_importers():
    """ONNX op type -> the class whose ``from_onnx`` imports it: each type lists its ops (``onnx_in``)."""
    table = {}
    for entry in LAYER_TYPES:
        for op in getattr(entry.cls, "onnx_in", ()):
            table.setdefault(op, entry.cls)
    return table


def names():
    """Every type name, in registry order."""
    return list(dict.fromkeys(t.name for t in LAYER_TYPES))


def _entries(name):
    return [t for t in LAYER_TYPES if t.name == name]


def _selected(entries, table):
    """The forms whose key the table gives; else the first form (the one a table without keys means)."""
    return [t for t in entries if t.key in table] or entries[:1]


def find(table):
    """The ``LayerType`` a ``[[layer]]`` table asks for; a LayerError says what to change."""
    name = table.get("type")
    entries = _entries(name)
    if not entries:
        raise LayerError(f"type must be one of {', '.join(names())}, but got {name!r}")
    given = set(table) - {"type"}
    allowed = {field for t in entries for field in t.fields}
    if given - allowed:
        raise LayerError(f"unknown field(s) {sorted(given - allowed)} for type '{name}'; allowed: {sorted(allowed)}")
    chosen = _selected(entries, table)
    if len(chosen) > 1:
        raise LayerError(f"a {name} layer takes {' or '.join(f'{t.key} ({t.means})' for t in chosen)}, not both")
    entry = chosen[0]
    misplaced = given - set(entry.fields)
    if misplaced:
        others = " or ".join(f"{t.key} ({t.means})" for t in entries if t is not entry)
        raise LayerError(f"field(s) {sorted(misplaced)} are for a {name} layer with {others}, "
                         f"not one with {entry.key} ({entry.means})")
    return entry


def network_only(table):
    """Whether a ``[[layer]]`` table can only be part of a network (its file is then an architecture)."""
    return any(t.where == NETWORK_ONLY for t in _selected(_entries(table.get("type")), table))


def type_of(layer):
    """The ``LayerType`` of a layer object, or None if its class is not registered."""
    return next((t for t in LAYER_TYPES if isinstance(layer, t.cls) and t.name == layer.kind), None)


def allows(layer, use):
    """Whether ``layer`` may be used in a ``use`` (PIPELINE or NETWORK)."""
    entry = type_of(layer)
    return entry is not None and use in entry.where
