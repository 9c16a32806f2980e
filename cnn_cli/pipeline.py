"""Pipelines: layers in order, read from a TOML file, run on a batch of images.

A pipeline file lists ``[[layer]]`` tables, each with a ``type``::

    kind = "pipeline"
    description = "Edges, rectified and pooled"

    [[layer]]
    type = "conv"                    # filters from banks (see cnn_cli.filterbank)
    banks = ["edges:sobel_*"]
    mode = "mean"                    # or "depthwise"; see layers.BankConv
    padding = "same"                 # int, [h, w], "same" or "valid"
    padding_mode = "reflect"         # zeros, reflect, replicate, circular
    stride = 1
    dilation = 1

    [[layer]]
    type = "abs"                     # relu, leaky_relu (slope), abs, square, tanh, sigmoid

    [[layer]]
    type = "maxpool"                 # or avgpool: kernel_size, stride, padding
    kernel_size = 2

Other types: ``globalavgpool``, ``globalmaxpool``, ``products`` (pairwise
channel products), ``corner_response`` (method = "harris" or "shi_tomasi",
k), ``normalize`` (method = "l2" across channels or "standardize" per map).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import filterbank
from .filterbank import BankError
from .layers import (
    ACTIVATIONS,
    Activation,
    BankConv,
    CornerResponse,
    GlobalPool,
    LayerError,
    Normalize,
    Pool,
    Products,
)

#: The pipeline ``cnn apply`` runs when no bank, pipeline or model is given.
DEFAULT_PIPELINE = "default"

#: Fields each layer type accepts besides ``type``. A conv layer either takes
#: ``banks`` (fixed filters) or ``out_channels`` (learned filters, in networks).
_LEARNED_CONV = {"out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias", "padding_mode"}
_FIELDS = {
    "conv": {"banks", "mode", "stride", "padding", "dilation", "padding_mode"} | _LEARNED_CONV,
    "linear": {"out_features", "bias"},
    "flatten": set(),
    "dropout": {"p"},
    "batchnorm": set(),
    "residual": {"out_channels", "stride"},
    "netvlad": {"clusters"},
    "maxpool": {"kernel_size", "stride", "padding"},
    "avgpool": {"kernel_size", "stride", "padding"},
    "globalavgpool": set(),
    "globalmaxpool": set(),
    "products": set(),
    "corner_response": {"method", "k"},
    "normalize": {"method"},
    **{name: ({"slope"} if name == "leaky_relu" else set()) for name in ACTIVATIONS},
}


def _build_layer(table, base_dir):
    kind = table.get("type")
    if kind not in _FIELDS:
        raise BankError(f"type must be one of {', '.join(_FIELDS)}, but got {kind!r}")
    unknown = set(table) - _FIELDS[kind] - {"type"}
    if unknown:
        raise BankError(f"unknown field(s) {sorted(unknown)} for type '{kind}'; allowed: {sorted(_FIELDS[kind])}")
    options = {k: (list(v) if isinstance(v, list) else v) for k, v in table.items() if k != "type"}
    if "slope" in options and (isinstance(options["slope"], bool) or not isinstance(options["slope"], (int, float))):
        raise BankError(f"slope must be a number, but got {options['slope']!r}")
    if kind in _LEARNABLE or (kind == "conv" and "out_channels" in options):
        from . import nn

        if kind == "conv" and "banks" in options:
            raise BankError("a conv layer takes banks (fixed filters) or out_channels (learned), not both")
        return getattr(nn, _LEARNABLE.get(kind, "Conv2d"))(**options)
    if kind == "conv":
        banks = options.pop("banks", None)
        if not isinstance(banks, list) or not banks or not all(isinstance(b, str) for b in banks):
            raise BankError("conv needs banks = [\"name\", ...], a non-empty list of bank names or files")
        loaded = [filterbank.load_bank(_relative(b, base_dir)) for b in banks]
        return BankConv(loaded, **options)
    if kind in ("maxpool", "avgpool"):
        return Pool(kind, **options)
    if kind in ("globalavgpool", "globalmaxpool"):
        return GlobalPool(kind)
    if kind == "products":
        return Products()
    if kind == "corner_response":
        return CornerResponse(**options)
    if kind == "normalize":
        return Normalize(**options)
    return Activation(kind, **options)


_LEARNABLE = {"linear": "Linear", "flatten": "Flatten", "dropout": "Dropout", "batchnorm": "BatchNorm2d",
              "residual": "Residual", "netvlad": "NetVLAD"}


def _relative(bank_spec, base_dir):
    """Bank files named in a pipeline file are relative to that file."""
    name, sep, pattern = bank_spec.partition(":")
    candidate = base_dir / name
    if base_dir and Path(name).suffix and candidate.is_file():
        return f"{candidate}{sep}{pattern}"
    return bank_spec


@dataclass
class LayerInfo:
    index: int
    layer: object
    channels: list
    shape: tuple          # (C, H, W) for the input size given to ``summary``
    receptive_field: object  # int pixels, or "global"


class Pipeline:
    """A list of layers bound to the input's channel names."""

    def __init__(self, layers, name, description="", source=""):
        self.layers = list(layers)
        self.name, self.description, self.source = name, description, source
        self.channels = []  # output channel names per layer, after bind()

    def bind(self, input_channels):
        """Check every layer against the one before it; name every map."""
        self.channels = []
        channels = list(input_channels)
        for i, layer in enumerate(self.layers):
            try:
                channels = layer.bind(channels)
            except (LayerError, BankError, ValueError) as exc:
                raise BankError(f"{self.source or self.name}: layer {i} ({layer.kind}): {exc}") from None
            self.channels.append(channels)
        return self

    def forward(self, x):
        """Run the batch ``x`` (N, C, H, W) through all layers; return every layer's output."""
        outputs = []
        for layer in self.layers:
            x = layer.forward(x)
            outputs.append(x)
        return outputs

    def summary(self, height, width):
        """Output shape and receptive field of every layer for an input of height x width."""
        rows, h, w = [], height, width
        fields = receptive_fields(self.layers)
        for i, (layer, channels) in enumerate(zip(self.layers, self.channels)):
            try:
                h, w = layer.out_hw(h, w)
            except (LayerError, ValueError) as exc:
                raise BankError(f"{self.source or self.name}: layer {i} ({layer.kind}): {exc}") from None
            rows.append(LayerInfo(i, layer, channels, (len(channels), h, w), fields[i]))
        return rows


def receptive_fields(layers):
    """The receptive field (input pixels, along rows) of each layer's outputs, or "global".

    r_out = r_in + (k - 1) * j_in and j_out = j_in * stride, where k is the
    dilated kernel extent and j the distance in input pixels between
    neighbouring outputs (Araujo et al., 2019, "Computing receptive fields").
    """
    fields, r, j = [], 1, 1
    for layer in layers:
        win = layer.window()
        if win is None or r == "global":
            r = "global"
        else:
            (k, s), _ = win
            r, j = r + (k - 1) * j, j * s
        fields.append(r)
    return fields


def build_layers(tables, where, base_dir=Path("."), substitutions=None):
    """Layers from a list of ``[[layer]]`` tables; errors name ``where`` and the layer.

    ``substitutions`` replaces string values such as ``out_features = "classes"``.
    """
    if not isinstance(tables, list) or not tables:
        raise BankError(f"{where}: needs [[layer]] entries")
    layers = []
    for i, table in enumerate(tables):
        if not isinstance(table, dict):
            raise BankError(f"{where}: layer {i}: must be a table")
        table = {k: (substitutions.get(v, v) if substitutions and isinstance(v, str) else v)
                 for k, v in table.items()}
        try:
            layers.append(_build_layer(table, base_dir))
        except (BankError, LayerError, TypeError, ValueError) as exc:
            raise BankError(f"{where}: layer {i}: {exc}") from None
    return layers


def load_pipeline(spec):
    """A ``Pipeline`` from a shipped name or a file path (not yet bound)."""
    path = filterbank.resolve_file(spec, "pipeline")
    doc = filterbank._read_toml(path)
    layers = build_layers(doc.get("layer"), path, path.parent)
    for i, layer in enumerate(layers):
        if not layer.in_pipelines:
            raise BankError(f"{path}: layer {i}: '{layer.kind}' needs learned weights; "
                            "use it in an architecture for cnn train (--arch)")
    return Pipeline(layers, path.stem, doc.get("description", ""), str(path))


def load_architecture(spec):
    """(name, description, layer tables) of a shipped or user architecture file."""
    path = filterbank.resolve_file(spec, "architecture")
    doc = filterbank._read_toml(path)
    tables = doc.get("layer")
    build_layers(tables, path, path.parent, {"classes": 2})  # check it now, with a stand-in class count
    return path.stem, doc.get("description", ""), tables


def bank_pipeline(specs, **conv_options):
    """A one-layer pipeline that applies the given banks (``cnn apply --bank``)."""
    banks = [filterbank.load_bank(s) for s in specs]
    name = "+".join(b.name for b in banks)
    return Pipeline([BankConv(banks, **conv_options)], name, "banks given on the command line")
