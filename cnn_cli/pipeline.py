"""Pipelines: layers in order, read from a TOML file, run on a batch of images.

A pipeline file lists ``[[layer]]`` tables, each with a ``type``::

    kind = "pipeline"
    description = "Edges, rectified and pooled"

    [[layer]]
    type = "conv"                    # filters from banks (see cnn_cli.filterbank)
    banks = ["edges:sobel_*"]
    mode = "mean"                    # or "depthwise"; see filterlayers.BankConv
    padding = "same"                 # int, [h, w], "same" or "valid"
    padding_mode = "reflect"         # zeros, reflect, replicate, circular
    stride = 1
    dilation = 1

    [[layer]]
    type = "abs"                     # an activation: a name in layers.ACTIVATIONS

    [[layer]]
    type = "maxpool"                 # or avgpool: kernel_size, stride, padding
    kernel_size = 2

Every type, the fields it takes and whether pipelines may use it are in
``cnn_cli.registry``; the file is read as ``cnn_cli.specfile`` describes.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import config, filterbank, registry
from .filterlayers import BankConv
from .layers import LayerError
from .nn import INPUT, topology
from .specfile import SpecFileError, read_spec

#: The pipeline ``cnn apply`` runs when no bank, pipeline or model is given.
DEFAULT_PIPELINE = "default"


def _layer(table, base_dir):
    """One layer from its ``[[layer]]`` table (checked against the registry)."""
    entry = registry.find(table)
    options = {k: (list(v) if isinstance(v, list) else v) for k, v in table.items() if k != "type"}
    if "banks" in entry.fields:
        options["banks"] = _load_banks(options.get("banks"), base_dir)
    return entry.make(options)


def _load_banks(specs, base_dir):
    if not isinstance(specs, list) or not specs or not all(isinstance(b, str) for b in specs):
        raise LayerError("conv needs banks = [\"name\", ...], a non-empty list of bank names or files")
    return [filterbank.load_bank(_relative(b, base_dir)) for b in specs]


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
    """Layers bound to the input's channel names: a chain, or a graph (see ``nn.Network``)."""

    def __init__(self, layers, name, description="", source="", inputs=None, names=None):
        self.layers = list(layers)
        self.inputs, self.names = topology(self.layers, inputs if inputs is not None else getattr(layers, "inputs", None),
                                           names if names is not None else getattr(layers, "names", None))
        self.name, self.description, self.source = name, description, source
        self.input_channels = []  # after bind()
        self.channels = []  # output channel names per layer, after bind()

    def _in(self, i, values, given):
        """Node ``i``'s input among ``values`` (per node), ``given`` being the image's: one, or a list."""
        got = [given if j == INPUT else values[j] for j in self.inputs[i]]
        return got[0] if self.layers[i].arity == 1 else got

    def bind(self, input_channels, memory_limit=None):
        """Build every layer for the ones before it, at any image size; name every map.

        What the layers' filters will take is estimated from their
        declarations first (``plan_layers``), and a pipeline over the memory
        limit (``memory_limit`` bytes, default ``config.memory_limit()``) is
        refused before anything is allocated.
        """
        self.input_channels, self.channels = list(input_channels), []
        image = (len(self.input_channels), None, None)
        check_memory(plan_layers(self.layers, image, blame=self._blame, inputs=self.inputs), self.source or self.name,
                     memory_limit)
        shapes = []
        for i, layer in enumerate(self.layers):
            with self._blame(i, layer):
                shapes.append(layer.build(self._in(i, shapes, image)))
                self.channels.append(layer.channel_names(self._in(i, self.channels, self.input_channels)))
        return self

    @contextmanager
    def _blame(self, i, layer):
        """Turn a layer's refusal into a SpecFileError that names the pipeline and the layer."""
        try:
            yield
        except (LayerError, ValueError) as exc:
            raise SpecFileError(f"{self.source or self.name}: layer {i} ({layer.kind}): {exc}") from None

    def forward(self, x):
        """Run the batch ``x`` (N, C, H, W) through all layers; return every layer's output."""
        outputs = []
        for i, layer in enumerate(self.layers):
            outputs.append(layer.forward(self._in(i, outputs, x)))
        return outputs

    def summary(self, height, width):
        """Output shape and receptive field of every layer for an input of height x width."""
        rows, fields = [], receptive_fields(self.layers, self.inputs)
        image, shapes = (len(self.input_channels), height, width), []
        for i, (layer, channels) in enumerate(zip(self.layers, self.channels)):
            with self._blame(i, layer):
                shapes.append(layer.build(self._in(i, shapes, image)))
            rows.append(LayerInfo(i, layer, channels, shapes[-1], fields[i]))
        return rows


# --------------------------------------------------------------------------- what layers will take

#: Bytes of memory per parameter while a layer is built: float32 weights and
#: their gradients (a network) or the float64 kernels they are made from (a
#: bank), with the loaded copy of a model's weights.
BYTES_PER_PARAM = 20
#: Bytes per value of a layer's output (float32).
BYTES_PER_VALUE = 4
#: Bytes per map name that a pipeline keeps (a short Python string and its slot).
BYTES_PER_NAME = 80


@dataclass
class LayerPlan:
    index: int
    kind: str
    shape: tuple          # output shape for one image; H and W None while the size is unknown
    params: int           # parameters and buffers the layer will hold
    values: int           # values of its output for one image (0 while the size is unknown)


@dataclass
class Plan:
    """What building and running layers will allocate, from their declarations alone."""

    layers: list = field(default_factory=list)   # LayerPlan per layer

    @property
    def params(self):
        return sum(p.params for p in self.layers)

    @property
    def values(self):
        return sum(p.values for p in self.layers)

    @property
    def bytes(self):
        """Estimated memory: parameters while they are built, every layer's output for one image,
        and the maps' names."""
        names = sum(p.shape[0] for p in self.layers if len(p.shape) == 3 and p.shape[0])
        return self.params * BYTES_PER_PARAM + self.values * BYTES_PER_VALUE + names * BYTES_PER_NAME

    def largest(self):
        return max(self.layers, key=lambda p: p.params * BYTES_PER_PARAM + p.values * BYTES_PER_VALUE)


def plan_layers(layers, in_shape, blame=None, inputs=None):
    """The ``Plan`` of ``layers`` for an input of ``in_shape`` (C, H, W), H and W may be None.

    Shapes and parameter counts come from each layer's ``plan`` (its
    declaration: channels, kernel sizes, banks), so nothing large is allocated.
    ``inputs`` is the graph (``nn.topology``; by default what ``layers``
    carries, else a chain). ``blame(i, layer)`` is a context manager that
    turns a layer's refusal into the caller's error.
    """
    inputs, _ = topology(layers, inputs)
    plan, shapes = Plan(), []
    for i, layer in enumerate(layers):
        got = [tuple(in_shape) if j == INPUT else shapes[j] for j in inputs[i]]
        with blame(i, layer) if blame else _no_blame():
            shape, params = layer.plan(got[0] if layer.arity == 1 else got)
        shapes.append(tuple(shape))
        values = 0 if None in shape else _count(shape)
        plan.layers.append(LayerPlan(i, layer.kind, tuple(shape), params, values))
    return plan


@contextmanager
def _no_blame():
    yield


def _count(shape):
    total = 1
    for d in shape:
        total *= int(d)
    return total


def check_memory(plan, where, limit=None):
    """Refuse (SpecFileError) a ``plan`` whose estimated memory is over ``limit``
    (``config.memory_limit()`` by default), naming ``where`` and the largest layer."""
    limit = config.memory_limit() if limit is None else limit
    if plan.bytes <= limit or not plan.layers:
        return
    big = plan.largest()
    size = config.describe_bytes
    raise SpecFileError(
        f"{where}: would need about {size(plan.bytes)} of memory ({plan.params:,} parameters"
        + (f", {plan.values:,} map values per image" if all(None not in p.shape for p in plan.layers) else "")
        + f"), most of it for layer {big.index} ({big.kind}, output {_shape_text(big.shape)}); "
        + config.memory_hint())


def _shape_text(shape):
    return "x".join("?" if d is None else f"{d:,}" for d in shape)


def receptive_fields(layers, inputs=None):
    """The receptive field (input pixels, along rows) of each layer's outputs, or "global".

    r_out = r_in + (k - 1) * j_in and j_out = j_in * stride, where k is the
    dilated kernel extent and j the distance in input pixels between
    neighbouring outputs (Araujo et al., 2019, "Computing receptive fields").
    In a graph, a node that reads several takes the largest field of its
    inputs (the widest path) and the largest jump.
    """
    inputs, _ = topology(layers, inputs)
    fields, jumps = [], []
    for layer, ins in zip(layers, inputs):
        r = max((1 if j == INPUT else fields[j] for j in ins), key=lambda v: float("inf") if v == "global" else v)
        jump = max(1 if j == INPUT else jumps[j] for j in ins)
        win = layer.window()
        if win is None or r == "global":
            r = "global"
        else:
            (k, s), _ = win
            r, jump = r + (k - 1) * jump, jump * s
        fields.append(r)
        jumps.append(jump)
    return fields


#: The most layers a pipeline or architecture may list: DenseNet-201 and the largest
#: EfficientNets have about a thousand nodes; a file of 100,000 layers made `cnn info`
#: take 41 s and is no network anyone runs.
MAX_LAYERS = 10_000


class Layers(list):
    """Layers in file order, with the graph form's ``names`` and ``inputs`` (both None for a chain)."""

    names = None
    inputs = None


#: The name by which a graph-form table reads the image.
INPUT_NAME = "input"


def _graph_form(tables, where):
    """(names, inputs) of ``tables`` in the graph form, or (None, None) for a chain.

    A table may give ``name`` (default: its index) and ``inputs``, a list of
    earlier tables' names or ``"input"`` (default: the table before it).
    """
    if not any(isinstance(t, dict) and ("name" in t or "inputs" in t) for t in tables):
        return None, None
    names, inputs, index = [], [], {INPUT_NAME: INPUT}
    for i, table in enumerate(tables):
        name = table.get("name", str(i))
        if not isinstance(name, str) or not name.strip() or name in index:
            raise SpecFileError(f"{where}: layer {i}: name must be a new non-empty string "
                                f"(not {INPUT_NAME!r} or an earlier name), but got {name!r}")
        given = table.get("inputs", [names[-1] if names else INPUT_NAME])
        if not isinstance(given, list) or not given or not all(isinstance(n, str) for n in given):
            raise SpecFileError(f"{where}: layer {i} ({name}): inputs must be a list of earlier layers' names")
        unknown = [n for n in given if n not in index]
        if unknown:
            raise SpecFileError(f"{where}: layer {i} ({name}): inputs {unknown} are not earlier layers' names; "
                                f"a layer reads {INPUT_NAME!r} or layers listed before it")
        names.append(name)
        inputs.append(tuple(index[n] for n in given))
        index[name] = i
    return names, inputs


def build_layers(tables, where, base_dir=Path("."), substitutions=None):
    """Layers from a list of ``[[layer]]`` tables; errors name ``where`` and the layer.

    ``substitutions`` replaces string values such as ``out_features = "classes"``.
    """
    if not isinstance(tables, list) or not tables:
        raise SpecFileError(f"{where}: needs [[layer]] entries")
    if len(tables) > MAX_LAYERS:
        raise SpecFileError(f"{where}: {len(tables):,} layers; cnn takes at most {MAX_LAYERS:,}")
    if not all(isinstance(t, dict) for t in tables):
        raise SpecFileError(f"{where}: layer {next(i for i, t in enumerate(tables) if not isinstance(t, dict))}: "
                            "must be a table")
    layers = Layers()
    layers.names, layers.inputs = _graph_form(tables, where)
    for i, table in enumerate(tables):
        table = {k: (substitutions.get(v, v) if substitutions and isinstance(v, str) else v)
                 for k, v in table.items() if k not in ("name", "inputs")}
        try:
            layers.append(_layer(table, base_dir))
        except (TypeError, ValueError) as exc:  # LayerError and SpecFileError are ValueErrors
            raise SpecFileError(f"{where}: layer {i}: {exc}") from None
    return layers


def load_pipeline(spec):
    """A ``Pipeline`` from a shipped name or a file path (not yet bound)."""
    path, doc = read_spec(spec, "pipeline")
    layers = build_layers(doc.get("layer"), path, path.parent)
    for i, layer in enumerate(layers):
        if not registry.allows(layer, registry.PIPELINE):
            raise SpecFileError(f"{path}: layer {i}: '{layer.kind}' needs learned weights; "
                                "use it in an architecture for cnn train (--arch)")
    return Pipeline(layers, path.stem, doc.get("description", ""), str(path))


def load_architecture(spec):
    """(name, description, layer tables) of a shipped or user architecture file."""
    path, doc = read_spec(spec, "architecture")
    tables = doc.get("layer")
    # Check it now, with a stand-in class count, and the weights of its
    # convolutions (which do not depend on the image size) for RGB input.
    layers = build_layers(tables, path, path.parent, {"classes": 2})
    check_memory(plan_layers(layers, (3, None, None), blame=_blamer(path)), path)
    return path.stem, doc.get("description", ""), tables


def _blamer(where):
    """A ``blame`` for ``plan_layers`` whose errors name ``where`` and the layer."""
    @contextmanager
    def blame(i, layer):
        try:
            yield
        except (LayerError, ValueError) as exc:
            raise SpecFileError(f"{where}: layer {i} ({layer.kind}): {exc}") from None
    return blame


def bank_pipeline(specs, **conv_options):
    """A one-layer pipeline that applies the given banks (``cnn apply --bank``)."""
    banks = [filterbank.load_bank(s) for s in specs]
    name = "+".join(b.name for b in banks)
    return Pipeline([BankConv(banks, **conv_options)], name, "banks given on the command line")
