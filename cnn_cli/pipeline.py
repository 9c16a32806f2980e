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

#: Fields each layer type accepts besides ``type``.
_FIELDS = {
    "conv": {"banks", "mode", "stride", "padding", "dilation", "padding_mode"},
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
        """Output shape and receptive field of every layer for an input of height x width.

        Receptive field (in input pixels): r_out = r_in + (k - 1) * j_in and
        j_out = j_in * stride, where k is the dilated kernel extent and j the
        distance in input pixels between neighbouring outputs.
        """
        rows, r, j, h, w = [], 1, 1, height, width
        for i, (layer, channels) in enumerate(zip(self.layers, self.channels)):
            try:
                h, w = layer.out_hw(h, w)
            except (LayerError, ValueError) as exc:
                raise BankError(f"{self.source or self.name}: layer {i} ({layer.kind}): {exc}") from None
            win = layer.window()
            if win is None or r == "global":
                r = "global"
            else:
                (k, s), _ = win
                r, j = r + (k - 1) * j, j * s
            rows.append(LayerInfo(i, layer, channels, (len(channels), h, w), r))
        return rows


def load_pipeline(spec):
    """A ``Pipeline`` from a shipped name or a file path (not yet bound)."""
    path = filterbank.resolve_file(spec, "pipeline")
    doc = filterbank._read_toml(path)
    tables = doc.get("layer")
    if not isinstance(tables, list) or not tables:
        raise BankError(f"{path}: a pipeline needs [[layer]] entries")
    layers = []
    for i, table in enumerate(tables):
        try:
            layers.append(_build_layer(table, path.parent))
        except BankError as exc:
            raise BankError(f"{path}: layer {i}: {exc}") from None
        except (LayerError, TypeError, ValueError) as exc:
            raise BankError(f"{path}: layer {i}: {exc}") from None
    return Pipeline(layers, path.stem, doc.get("description", ""), str(path))


def bank_pipeline(specs, **conv_options):
    """A one-layer pipeline that applies the given banks (``cnn apply --bank``)."""
    banks = [filterbank.load_bank(s) for s in specs]
    name = "+".join(b.name for b in banks)
    return Pipeline([BankConv(banks, **conv_options)], name, "banks given on the command line")
