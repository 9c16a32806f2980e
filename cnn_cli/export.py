"""ONNX export: a trained model or a filter-bank pipeline as a standard ONNX graph.

``model_to_onnx(network, meta)`` and ``pipeline_to_onnx(pipeline)`` build the
graph with ``onnx.helper``; ``export(target, out)`` is ``cnn export``: it reads
a model file, pipeline or bank, builds the graph, checks it and writes it
atomically. ``onnx`` is an optional dependency (``pip install
'cnn-cli[onnx]'``), imported only here and only when a graph is built.

What the graphs are:

- **A model**: input ``image``, float32 (N, C, S, S), values in [0, 1], at the
  model's image size S and in its colour (C = 1: luminance
  0.299 R + 0.587 G + 0.114 B; C = 3: R, G, B); ``(image - mean) / std``
  is the graph's first step. Outputs ``logits`` (N, classes) and
  ``probabilities`` (their softmax). The class names and the preprocessing
  are JSON strings in ``metadata_props``. The batch size N is dynamic.
- **A pipeline**: input ``image``, float32 (N, C, H, W) in [0, 1]; one output
  per layer, ``layer<i>``, which is what ``cnn apply`` writes under that key
  in ``features.npz`` (with the batch axis). N, H and W are dynamic. Output
  sizes that always equal the input's are named ``H`` and ``W``; others
  ``layer<i>_H`` and ``layer<i>_W``, as they depend on H and W.

Every layer becomes standard operators (opset ``DEFAULT_OPSET``, or any up to
``MAX_OPSET``): convolutions are ``Conv``, preceded by ``Pad`` for reflect
(``reflect``), replicate (``edge``) and circular padding (``wrap`` from
opset 19; ``Slice`` + ``Concat`` before); batch norm is
``BatchNormalization`` in inference form (running statistics); NetVLAD is
``ReduceL2``/``Max``/``Div`` (L2 normalisation as
``torch.nn.functional.normalize``, eps 1e-12), a 1x1 ``Conv``, ``Softmax``,
``MatMul`` and ``ReduceSum``. Each layer writes its own nodes
(``Layer.to_onnx``, with ``_Graph``'s helpers); a layer without an ONNX form
is refused with an ``ExportError`` that names it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from . import functional as F

#: The opset written by default, with IR version 8: ONNX Runtime has read both since 1.12 (2022).
DEFAULT_OPSET = 17

#: The newest opset ``--opset`` accepts: the newest that ONNX Runtime 1.30
#: loads, and the newest the tests run the graphs at.
MAX_OPSET = 26

#: What to install for ``cnn export``.
INSTALL_HINT = "pip install 'cnn-cli[onnx]'"

#: Probe sizes for naming a pipeline's output sizes (see ``_spatial_names``):
#: large enough for any kernel a bank may hold, H != W, one even and one odd,
#: so that only a size that follows the input's at every size matches both.
_PROBES = ((512, 640), (577, 703))


class ExportError(ValueError):
    """A model or pipeline cannot be exported; the message names the layer and what to do."""


class OnnxMissingError(ExportError):
    """The ``onnx`` package is not installed (a usage error for ``cnn export``)."""


def _onnx():
    """The ``onnx`` module, or an OnnxMissingError that says what to install."""
    try:
        import onnx
        import onnx.checker
        import onnx.defs
        import onnx.helper
        import onnx.numpy_helper
        import onnx.shape_inference
    except ImportError:
        raise OnnxMissingError(f"cnn export needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def check_opset(opset):
    """``opset`` as an int if it is one we write, else an ExportError (a usage error)."""
    if isinstance(opset, bool) or not isinstance(opset, int) or not DEFAULT_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset must be a whole number from {DEFAULT_OPSET} to {MAX_OPSET} "
                          f"(the newest ONNX Runtime 1.30 loads), but got {opset!r}")
    return opset


# ----------------------------------------------------------------------------- the graph


class _Graph:
    """Nodes and initializers of one graph, for one opset; every name it makes is unique."""

    def __init__(self, onnx, opset):
        self.onnx, self.helper, self.opset = onnx, onnx.helper, opset
        self.nodes, self.initializers = [], []
        self._used = set()
        self._exposed = set()  # tensors already given a graph output's name
        # Which nodes make and read each tensor, so a rename touches only those (a pass over
        # every node per exposed output made exporting a long pipeline quadratic).
        self._makers, self._readers = {}, {}

    def _name(self, hint):
        name, i = hint, 1
        while name in self._used:
            i += 1
            name = f"{hint}_{i}"
        self._used.add(name)
        return name

    def const(self, name, value, dtype=np.float32):
        """An initializer holding ``value``; returns its name (``name``, or a numbered variant)."""
        arr = np.ascontiguousarray(value, dtype=dtype)
        name = self._name(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def ints(self, name, values):
        return self.const(name, np.asarray(values, np.int64).reshape(-1), np.int64)

    def op(self, op_type, inputs, scope, **attrs):
        """One node of ``op_type`` under ``scope`` (e.g. ``layer3``); returns its output's name."""
        out = self._name(f"{scope}/{op_type}")
        self._append(self.helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def _append(self, node):
        self.nodes.append(node)
        for name in node.input:
            self._readers.setdefault(name, []).append(node)
        for name in node.output:
            self._makers.setdefault(name, []).append(node)

    def reduce(self, op_type, x, axes, scope, keepdims=1):
        """A Reduce* node over ``axes``: an attribute before opset 18 (ReduceSum: 13), an input after."""
        if op_type == "ReduceSum" or self.opset >= 18:
            return self.op(op_type, [x, self.ints(f"{scope}/axes", axes)], scope, keepdims=keepdims)
        return self.op(op_type, [x], scope, axes=list(axes), keepdims=keepdims)

    def rename(self, old, new):
        """Give the tensor ``old`` (a node's output) the name ``new``, everywhere it appears.

        ``new`` is an output's name (``layer<i>``, ``logits``), which no made-up
        name can take: those all contain "/" or ".".
        """
        self._used.add(new)
        for node in self._readers.pop(old, []):
            node.input[:] = [new if n == old else n for n in node.input]
            self._readers.setdefault(new, []).append(node)
        for node in self._makers.pop(old, []):
            node.output[:] = [new if n == old else n for n in node.output]
            self._makers.setdefault(new, []).append(node)

    def expose(self, x, name, scope):
        """Make ``x`` available under ``name`` (a graph output): renamed if a node made it, else copied."""
        if x not in self._exposed and self._makers.get(x):
            self.rename(x, name)
        else:  # the graph's input, or a tensor that already is an output (a layer that passes x on)
            self._append(self.helper.make_node("Identity", [x], [name], name=f"{scope}/Identity"))
            self._used.add(name)
        self._exposed.add(name)
        return name

    def pad(self, x, pads, mode, scope):
        """``x`` padded by (top, bottom, left, right) in ``mode`` (reflect, replicate or circular)."""
        top, bottom, left, right = pads
        if not any(pads):
            return x
        if mode == "circular" and self.opset < 19:
            return self._wrap_by_slices(x, pads, scope)
        onnx_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
        amounts = self.ints(f"{scope}/pads", [0, 0, top, left, 0, 0, bottom, right])
        return self.op("Pad", [x, amounts], scope, mode=onnx_mode)

    def _wrap_by_slices(self, x, pads, scope):
        """Circular padding from Slice and Concat (opset 17 and 18 have no ``wrap`` mode):
        the last ``top`` rows go above, the first ``bottom`` below, then the same for columns."""
        top, bottom, left, right = pads
        for axis, before, after in ((2, top, bottom), (3, left, right)):
            parts = []
            if before:
                parts.append(self.slice(x, axis, -before, np.iinfo(np.int64).max, scope))
            parts.append(x)
            if after:
                parts.append(self.slice(x, axis, 0, after, scope))
            if len(parts) > 1:
                x = self.op("Concat", parts, scope, axis=axis)
        return x

    def slice(self, x, axis, start, end, scope):
        return self.op("Slice", [x, self.ints(f"{scope}/starts", [start]), self.ints(f"{scope}/ends", [end]),
                                 self.ints(f"{scope}/axes", [axis])], scope)

    def conv(self, x, weight, bias, options, scope, names):
        """A Conv node for our conv2d(x, weight, bias, **options); ``names`` = (weight name, bias name)."""
        kernel = weight.shape[2:]
        stride = F.pair("stride", options.get("stride", 1), 1)
        dilation = F.pair("dilation", options.get("dilation", 1), 1)
        pads = F.conv_padding(options.get("padding", 0), kernel, dilation, stride)
        mode = options.get("padding_mode", "zeros")
        if mode != "zeros":
            x, pads = self.pad(x, pads, mode, scope), (0, 0, 0, 0)
        top, bottom, left, right = pads
        inputs = [x, self.const(names[0], weight)]
        if bias is not None:
            inputs.append(self.const(names[1], bias))
        return self.op("Conv", inputs, scope, kernel_shape=list(kernel), strides=list(stride),
                       dilations=list(dilation), pads=[top, left, bottom, right], group=int(options.get("groups", 1)))

    def channels(self, x, indices, scope):
        """The channels ``indices`` of x (N, C, H, W), in that order (Gather on axis 1)."""
        return self.op("Gather", [x, self.ints(f"{scope}/channels", indices)], scope, axis=1)

    def l2_normalize(self, x, axis, eps, scope):
        """x / max(||x||_2 along ``axis``, eps), as ``torch.nn.functional.normalize``."""
        norm = self.reduce("ReduceL2", x, [axis], scope)
        return self.op("Div", [x, self.op("Max", [norm, self.const(f"{scope}/eps", eps)], scope)], scope)

    def model(self, name, doc, inputs, outputs, metadata):
        """The checked ``ModelProto`` (shapes inferred, ``check_model(full_check=True)`` passed)."""
        onnx, helper = self.onnx, self.helper
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers, doc_string=doc)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="cnn", producer_version=__version__,
                                  doc_string=doc, ir_version=helper.find_min_ir_version_for(opsets))
        helper.set_model_props(model, metadata)
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        onnx.checker.check_model(model, full_check=True)
        return model


def _new_graph(opset):
    onnx = _onnx()
    known = onnx.defs.onnx_opset_version()
    if check_opset(opset) > known:
        raise ExportError(f"onnx {onnx.__version__} knows opsets up to {known}, not {opset}; "
                          "upgrade onnx or give a lower --opset")
    return _Graph(onnx, opset)


def _own_onnx_form(cls):
    """Whether the class that gives ``cls`` its ``to_onnx`` also gives it its ``forward``
    (a subclass may compute something else than the base whose ONNX form it inherits)."""
    owner = next(c for c in cls.__mro__ if "to_onnx" in vars(c))
    return next(c for c in cls.__mro__ if "forward" in vars(c) or c is owner) is owner


def _emit_layers(g, graph, x, name_outputs=False):
    """Nodes for the layers of ``graph`` (a Network or Pipeline) from the tensor ``x``; returns
    each layer's output name.

    With ``name_outputs`` each output is named ``layer<i>``. Initializers take
    the state-dict names (``<name>.weight``...), so they match the model file.
    """
    outputs = []
    for i, (layer, ins, name) in enumerate(zip(graph.layers, graph.inputs, graph.names)):
        what = f"layer {i} ({layer.kind}, {type(layer).__name__}) cannot be exported to ONNX"
        if not _own_onnx_form(type(layer)):
            raise ExportError(f"{what}: its forward pass is its own, but its ONNX form would be its base class's")
        given = [x if j < 0 else outputs[j] for j in ins]
        try:
            y = layer.to_onnx(g, given[0] if layer.arity == 1 else given, f"layer{i}", f"{name}.")
        except NotImplementedError as exc:
            raise ExportError(f"{what}: {exc}") from None
        except (ValueError, KeyError) as exc:
            raise ExportError(f"layer {i} ({layer.kind}) cannot be exported to ONNX: {exc}") from None
        if name_outputs:
            y = g.expose(y, f"layer{i}", f"layer{i}")
        outputs.append(y)
    return outputs


def _tensor(g, name, shape):
    return g.helper.make_tensor_value_info(name, g.onnx.TensorProto.FLOAT, list(shape))


# ----------------------------------------------------------------------------- models and pipelines


def model_to_onnx(network, meta, *, opset=DEFAULT_OPSET):
    """The ONNX ``ModelProto`` of a trained ``Network`` and its ``ModelMeta`` (see the module docstring)."""
    g = _new_graph(opset)
    pre = meta.preprocessing
    classes = list(meta.classes)
    out_shape = network.shapes[-1]
    if tuple(out_shape) != (len(classes),):
        raise ExportError(f"the network's last layer gives {tuple(out_shape)}, not one logit per class "
                          f"({len(classes)}); end the architecture with a linear layer of out_features = \"classes\"")
    shape = ["N", pre.channels, pre.image_size, pre.image_size]
    mean = np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    x = g.op("Sub", ["image", g.const("preprocessing.mean", mean)], "normalize")
    x = g.op("Div", [x, g.const("preprocessing.std", std)], "normalize")
    logits = _emit_layers(g, network, x)[-1]
    logits = g.expose(logits, "logits", "logits")
    g._append(g.helper.make_node("Softmax", [logits], ["probabilities"], name="probabilities", axis=1))
    doc = (f"cnn model '{meta.architecture.name}': image float32 (N, {pre.channels}, {pre.image_size}, "
           f"{pre.image_size}) in [0, 1], {_color_note(pre.color)}; (x - mean) / std is inside the graph. "
           f"Outputs logits and probabilities (N, {len(classes)}) over the classes in metadata 'classes'.")
    metadata = {
        "kind": "model",
        "architecture": meta.architecture.name,
        "classes": json.dumps(classes),
        "preprocessing": json.dumps({**pre.to_json(), "input": f"image in [0, 1], {_color_note(pre.color)}; "
                                     "resize to image_size x image_size before; normalisation is in the graph"}),
        "cnn_version": __version__,
    }
    outputs = [_tensor(g, "logits", ["N", len(classes)]), _tensor(g, "probabilities", ["N", len(classes)])]
    return g.model(meta.architecture.name, doc, [_tensor(g, "image", shape)], outputs, metadata)


def _color_note(color):
    return ("1 channel: luminance 0.299 R + 0.587 G + 0.114 B" if color == "gray" else "3 channels: R, G, B")


def pipeline_to_onnx(pipeline, *, opset=DEFAULT_OPSET, color="gray"):
    """The ONNX ``ModelProto`` of a bound ``Pipeline``: outputs ``layer<i>`` (see the module docstring).

    ``color`` ("gray" or "rgb") is what the pipeline was bound for, recorded in the metadata.
    """
    g = _new_graph(opset)
    channels = len(pipeline.input_channels)
    if not channels:
        raise ExportError(f"pipeline '{pipeline.name}' is not bound to input channels; call bind() first")
    names = _emit_layers(g, pipeline, "image", name_outputs=True)
    sizes = _spatial_names(pipeline)
    outputs = [_tensor(g, name, ["N", len(maps), *hw]) for name, maps, hw in zip(names, pipeline.channels, sizes)]
    layers = [{"output": name, "kind": layer.kind, "description": layer.describe(), "channels": maps}
              for name, layer, maps in zip(names, pipeline.layers, pipeline.channels)]
    doc = (f"cnn pipeline '{pipeline.name}': {pipeline.description} Input image float32 (N, {channels}, H, W) "
           f"in [0, 1], {_color_note(color)}; outputs layer<i> as in cnn apply's features.npz.")
    metadata = {
        "kind": "pipeline",
        "pipeline": pipeline.name,
        "description": pipeline.description,
        "color": color,
        "input_channels": json.dumps(list(pipeline.input_channels)),
        "layers": json.dumps(layers),
        "cnn_version": __version__,
    }
    return g.model(pipeline.name, doc, [_tensor(g, "image", ["N", channels, "H", "W"])], outputs, metadata)


def _spatial_names(pipeline):
    """(H, W) names of each layer's output size: "H" and "W" where it equals the input's
    at every size, else ``layer<i>_H`` and ``layer<i>_W`` (a function of H and W)."""
    try:
        probes = [[row.shape[1:] for row in pipeline.summary(h, w)] for h, w in _PROBES]
    except ValueError:  # a pipeline that cannot take the probe sizes: name every size by its layer
        probes = [[(None, None)] * len(pipeline.layers)] * len(_PROBES)
    finally:
        pipeline.bind(pipeline.input_channels)
    names = []
    for i, sizes in enumerate(zip(*probes)):
        names.append(tuple(label if all(s[axis] == probe[axis] for s, probe in zip(sizes, _PROBES))
                           else f"layer{i}_{label}" for axis, label in enumerate("HW")))
    return names


# ----------------------------------------------------------------------------- cnn export


@dataclass
class ExportSummary:
    """What ``export`` wrote: the file, what it came from, and its inputs and outputs."""

    output: str
    kind: str                          # "model", "pipeline" or "bank"
    name: str
    opset: int
    ir_version: int
    bytes: int
    inputs: list = field(default_factory=list)    # {"name", "shape"}; a shape entry is an int or a name
    outputs: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def to_json(self):
        return {"output": self.output, "kind": self.kind, "name": self.name, "opset": self.opset,
                "ir_version": self.ir_version, "bytes": self.bytes, "inputs": self.inputs,
                "outputs": self.outputs, "metadata": self.metadata}


def _value_infos(values):
    out = []
    for v in values:
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in v.type.tensor_type.shape.dim]
        out.append({"name": v.name, "shape": dims})
    return out


def load_target(target, color=None):
    """(kind, name, build) for a model file (``.npz``), a pipeline, or a bank (name or file).

    ``build(opset)`` makes the ModelProto. ``color`` (gray or rgb, default gray)
    binds a pipeline or bank; a model records its own and refuses another.
    Architectures have no weights and are refused with what to do.
    """
    if str(target).endswith(".npz"):
        from .modelfile import load_model

        network, meta, _ = load_model(target)
        if color is not None and color != meta.preprocessing.color:
            raise ExportError(f"{target} is a {meta.preprocessing.color} model; it takes no --color {color}")
        return "model", meta.architecture.name, lambda opset: model_to_onnx(network, meta, opset=opset)
    kind = _spec_kind(str(target))
    if kind == "architecture":
        raise ExportError(f"{target} is an architecture, which has no weights yet: train it "
                          f"(cnn train DATASET --arch {target} -o model.npz), then export the model file")
    from .sources import load_source

    color = color or "gray"
    source = load_source(**({"pipeline": target} if kind == "pipeline" else {"banks": [target]}), color=color)
    return kind, source.pipeline.name, lambda opset: pipeline_to_onnx(source.pipeline, opset=opset, color=color)


def _spec_kind(target):
    """"pipeline", "bank" or "architecture": what the file ``target`` is, or the shipped file of that name.

    A bank may be ``NAME:PATTERN``. A file's own errors (TOML syntax...) are raised as they are.
    """
    from .specfile import SpecFileError, builtin_names, kind_of, read_toml, resolve_file

    path = Path(target)
    if path.suffix and path.is_file():
        return kind_of(read_toml(path))
    for kind, spec in (("pipeline", target), ("architecture", target), ("bank", target.partition(":")[0])):
        try:
            resolve_file(spec, kind)
            return kind
        except SpecFileError:
            pass
    raise ExportError(f"no model file, pipeline or bank named '{target}': give a model file (.npz), a "
                      f"pipeline or bank file, or a shipped pipeline ({', '.join(builtin_names('pipeline'))}) "
                      f"or bank ({', '.join(builtin_names('bank'))})")


def export(target, out, *, opset=DEFAULT_OPSET, color=None, force=False):
    """``cnn export``: write ``target`` (a model file, pipeline or bank) to ``out`` as ONNX.

    The graph passes ``onnx.checker.check_model(full_check=True)`` before it is
    written, atomically. An existing ``out`` is refused unless ``force``.
    Returns an ``ExportSummary``. Raises ``OnnxMissingError`` without onnx,
    ``ExportError`` (or the ``ValueError`` of a damaged model or spec file)
    for everything else.
    """
    from .fileio import check_writable, write_bytes_atomic

    _onnx()
    check_opset(opset)
    out = Path(out)
    if os.path.lexists(out) and not force:  # lexists: a dangling link is there too
        raise ExportError(f"{out} exists; use --force to replace it")
    try:
        check_writable(out)  # before the graph is built and checked, which takes a while
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    kind, name, build = load_target(target, color)
    model = build(opset)
    data = model.SerializeToString()
    try:
        write_bytes_atomic(out, data)
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from None
    return ExportSummary(str(out), kind, name, opset, model.ir_version, len(data),
                         _value_infos(model.graph.input), _value_infos(model.graph.output),
                         {p.key: p.value for p in model.metadata_props})
