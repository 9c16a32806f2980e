"""Reading an untrusted ONNX file into a clean, bounded, folded description (the file half of ``cnn import``).

``read_onnx(path, size=(H, W))`` parses the file with the ``onnx`` package
(an optional dependency, imported only when a file is read), checks it, reads
every initializer and its external data with sizes bounded before anything
is allocated, binds the image input to (N, C, H, W), folds shape arithmetic
into constants and returns an ``OnnxGraph``: the nodes that remain, in
topological order, and the constants they read. Turning nodes into layers is
the op table's job (not this module's).

What is refused, with an ``OnnxError`` whose message names the file and
what to change:

- a file over ``max_bytes`` (``config.ONNX_MAX_BYTES``), more than
  ``config.ONNX_MAX_NODES`` nodes, a tensor declaring more than
  ``config.ONNX_MAX_ELEMENTS`` elements or more than ``config.ONNX_MAX_RANK``
  dimensions, or declaring more elements than its stored bytes hold;
- a default-domain opset below 7 or newer than the installed onnx knows;
- nodes in a custom domain, quantized, recurrent and control-flow nodes (all
  named in one message), model-local functions, sparse initializers; no
  subgraph is ever read, so graphs do not nest;
- anything but exactly one float image input of rank 4 with a fixed channel
  count; a spatial size that is neither fixed in the file nor given (an
  (N, H, W, C) input read only by a Transpose to (N, C, H, W), as tf2onnx
  writes Keras models, is taken as an (N, C, H, W) input without it);
- external data whose location leaves the model's folder, whose file is
  missing, or whose offset and length run past its end;
- a ``Shape`` whose input's shape is not known after folding.

Nothing is unpickled and no code runs: protobuf parsing, numpy and onnx's
shape inference only.

**Folding** (``onnxfold``): shape arithmetic is folded into constants for
the bound input, ``Identity`` and inference-mode ``Dropout`` are removed
(their outputs become aliases of their inputs: see ``OnnxGraph.aliases``),
and nodes no graph output depends on are dropped. Tensors, attributes and
nodes are read as plain values by ``onnxproto``, which both build on.

**The batch size.** ``input_shape[0]`` is the batch size the file fixes, or
None when it is symbolic. Folding and ``shapes`` use that size, or 1 when it
is None; then values that depend on the batch (a flatten written as
``x.view(x.size(0), -1)`` folds to the shape ``[1, -1]``) are computed again
for a batch of 2 and listed in ``OnnxGraph.batch_dependent``.

``sha256`` is the digest of the ``.onnx`` file alone (not its external data).

**dtypes in ``constants``.** Floating-point values (float16, bfloat16,
float64) become float32, integers int64, booleans stay bool. Folding itself
computes in each tensor's own type, as ONNX Runtime would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .fileio import open_regular
from .onnxfold import Folding
from .onnxproto import FLOAT_TYPES, Node, OnnxError, TensorReader, attr_value, count_elements, type_name

#: What to install to read ONNX files.
INSTALL_HINT = "pip install 'cnn-cli[onnx]'"

#: The default-domain opsets we read: 7 is the first with numpy-style broadcasting
#: everywhere (older files carry ``broadcast`` attributes), and the newest is
#: whatever the installed onnx knows (``onnx.defs.onnx_opset_version()``).
MIN_OPSET = 7

#: Op types refused outright, by why; any node in another domain than ""/"ai.onnx" is refused too.
REFUSED = {
    "quantized": ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "QuantizeLinear",
                  "DequantizeLinear", "DynamicQuantizeLinear"),
    "recurrent": ("LSTM", "GRU", "RNN"),
    "control flow": ("If", "Loop", "Scan", "SequenceMap"),
}
_REFUSED_OPS = {op: why for why, ops in REFUSED.items() for op in ops}


@dataclass
class OnnxGraph:
    """A checked, folded ONNX graph (see the module docstring).

    ``outputs`` are the graph output names as the file gives them; one may
    be an alias (an Identity's output that was removed), so find the tensor
    with ``resolve(name)``: a node output, a constant or ``input_name``.
    ``aliases`` maps every removed name to the name it stands for.
    ``shapes`` holds (N, ...) static shapes of non-constant tensors, at batch
    ``input_shape[0] or 1``. ``input_layout`` is "NHWC" when the file's
    input was (N, H, W, C) and read only by a Transpose to (N, C, H, W), as
    tf2onnx writes Keras models: that Transpose is removed (its output is
    an alias of the input), so the graph described here takes (N, C, H, W)
    as ``input_shape`` says. ``batch_dependent`` maps each folded constant
    whose value depends on the batch size to its value at batch 2 (empty
    when the file fixes N, or when the graph cannot be folded for a batch
    of 2: then it takes one image at a time). ``metadata`` is ``metadata_props``; ``cnn
    export`` writes ``kind`` ("model" or "pipeline"), ``cnn_version``, and
    for models ``architecture``, ``classes`` (JSON list) and
    ``preprocessing`` (JSON object), for pipelines ``pipeline``,
    ``description``, ``color``, ``input_channels`` and ``layers`` (JSON).
    """

    nodes: list
    constants: dict
    input_name: str
    input_shape: tuple     # (N, C, H, W): N is None when the file leaves it symbolic
    outputs: list
    shapes: dict
    opset: int
    metadata: dict
    producer: str
    sha256: str
    aliases: dict = field(default_factory=dict)
    batch_dependent: dict = field(default_factory=dict)
    input_layout: str = "NCHW"   # "NHWC": the file took (N, H, W, C) and transposed it; that Transpose is gone
    path: str = ""

    def resolve(self, name):
        """The tensor ``name`` stands for: itself, or what the removed Identity/Dropout passed on."""
        return self.aliases.get(name, name)


def _onnx():
    """The ``onnx`` module with the submodules used here, or an OnnxError that says what to install."""
    try:
        import onnx
        import onnx.defs
        import onnx.helper
        import onnx.numpy_helper
        import onnx.shape_inference
    except ImportError:
        raise OnnxError(f"reading ONNX needs the onnx package: {INSTALL_HINT}") from None
    return onnx


# ----------------------------------------------------------------------------- attributes and nodes


def _refusals(graph, functions):
    """(descriptions such as "node 'x' (LSTM)" of every node refused by category, why they are refused)."""
    named, kinds, others = [], [], []
    for i, n in enumerate(graph.node):
        label = f"node '{n.name or f'{n.op_type}_{i}'}' ({n.op_type}"
        if n.domain not in ("", "ai.onnx"):
            named.append(f"{label} in domain '{n.domain}')")
            others.append("operators outside ONNX's own domain")
        elif (n.domain, n.op_type) in functions:
            named.append(f"{label}, a function defined in the file)")
            others.append("functions defined in the file")
        elif n.op_type in _REFUSED_OPS or any(a.type in (5, 10) for a in n.attribute):  # 5, 10: GRAPH(S)
            named.append(label + ")")
            kind = _REFUSED_OPS.get(n.op_type, "control flow")
            (others if kind == "control flow" else kinds).append(kind)
        else:
            continue
    reasons = ([f"{' and '.join(dict.fromkeys(kinds))} layers"] if kinds else []) + list(dict.fromkeys(others))
    why = ", ".join(reasons[:-1]) + (" and " if len(reasons) > 1 else "") + reasons[-1] if reasons else ""
    return named, why


def _unique_name(name, op, index, used):
    name = name or f"{op}_{index}"
    candidate, k = name, 1
    while candidate in used:
        k += 1
        candidate = f"{name}_{k}"
    used.add(candidate)
    return candidate


def _topological(nodes, defined, path):
    """``nodes`` in an order where each comes after the makers of its inputs (ties keep file order)."""
    maker = {}
    for i, n in enumerate(nodes):
        for out in n.outputs:
            if not out:
                continue
            if out in maker or out in defined:
                raise OnnxError(f"{path}: the tensor '{out}' is made twice (by node '{n.name}' and another); "
                                "every tensor in an ONNX graph has one maker")
            maker[out] = i
    waiting = [0] * len(nodes)
    users = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for name in dict.fromkeys(x for x in n.inputs if x):
            if name in maker:
                waiting[i] += 1
                users[maker[name]].append(i)
            elif name not in defined:
                raise OnnxError(f"{path}: node '{n.name}' ({n.op}) reads '{name}', which no node, initializer "
                                "or input makes")
    import heapq

    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = [n.name for n, w in zip(nodes, waiting) if w][:5]
        raise OnnxError(f"{path}: the graph has a cycle through node(s) {', '.join(stuck)}; ONNX graphs are acyclic")
    return order



# ----------------------------------------------------------------------------- read_onnx


def _check_size(size, path):
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
        if any(isinstance(v, bool) or int(v) != v for v in size):
            raise ValueError
    except (TypeError, ValueError):
        raise OnnxError(f"{path}: --size must be two whole numbers H,W, not {size!r}") from None
    if not (1 <= h <= config.MAX_SIDE and 1 <= w <= config.MAX_SIDE):
        raise OnnxError(f"{path}: --size {h},{w}: each side must be from 1 to {config.MAX_SIDE}")
    return h, w


def _nhwc_transposes(graph, name):
    """The nodes that turn the input ``name`` from (N, H, W, C) to (N, C, H, W), if that is all that reads it.

    Keras models converted by tf2onnx take NHWC images and transpose them
    first (perm 0, 3, 1, 2). Empty when anything else reads the input.
    """
    readers = [n for n in graph.node if name in n.input]
    if readers and all(n.op_type == "Transpose" and list(n.input) == [name] and n.domain in ("", "ai.onnx")
                       and [list(a.ints) for a in n.attribute if a.name == "perm"] == [[0, 3, 1, 2]]
                       for n in readers) and name not in {v.name for v in graph.output}:
        return readers
    return []


def _image_input(graph, initializers, size, path):
    """(name, (N, C, H, W) with N None when symbolic, "NCHW" or "NHWC") of the one image input."""
    inputs = [v for v in graph.input if v.name not in initializers]
    if not inputs:
        raise OnnxError(f"{path}: has no input (every graph input is an initializer); cnn imports image "
                        "networks with one (N, C, H, W) input")
    if len(inputs) > 1:
        names = ", ".join(f"'{v.name}'" for v in inputs)
        raise OnnxError(f"{path}: has {len(inputs)} image inputs ({names}); cnn imports image networks with "
                        "one (N, C, H, W) input")
    v = inputs[0]
    if not v.type.HasField("tensor_type"):
        raise OnnxError(f"{path}: input '{v.name}' is not a tensor; cnn imports image networks with one "
                        "(N, C, H, W) input")
    t = v.type.tensor_type
    if t.elem_type not in FLOAT_TYPES:
        raise OnnxError(f"{path}: input '{v.name}' is of type {type_name(t.elem_type)}; cnn feeds images as "
                        "floats, so the input must be float (float32, float16, bfloat16 or double)")
    if not t.HasField("shape"):
        raise OnnxError(f"{path}: input '{v.name}' has no declared shape; cnn needs at least its channel "
                        "count: re-export it with a shape (N, C, H, W)")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
    if len(dims) != 4:
        raise OnnxError(f"{path}: input '{v.name}' has rank {len(dims)}; cnn imports image networks with one "
                        "(N, C, H, W) input")
    layout = "NHWC" if _nhwc_transposes(graph, v.name) else "NCHW"
    n, c, h, w = (dims[0], dims[3], dims[1], dims[2]) if layout == "NHWC" else dims
    if c is None:
        raise OnnxError(f"{path}: input '{v.name}' has no fixed channel count; cnn needs C fixed in the file "
                        "(re-export with a fixed number of channels)")
    if size is None:
        if h is None or w is None:
            raise OnnxError(f"{path}: input '{v.name}' has a symbolic height or width; give the image size "
                            "with --size H,W")
    else:
        fixed = [(label, d, s) for label, d, s in zip("HW", (h, w), size) if d is not None and d != s]
        if fixed:
            raise OnnxError(f"{path}: input '{v.name}' is fixed at {h or 'H'}x{w or 'W'} in the file, which "
                            f"--size {size[0]},{size[1]} contradicts; leave out --size or re-export with "
                            "dynamic height and width")
        h, w = size
    return v.name, (n, c, h, w), layout


def _parse(onnx, path, max_bytes):
    """(ModelProto, sha256, bytes read) of ``path``, its size checked before reading."""
    try:
        fh = open_regular(path, max_bytes=max_bytes, what="an ONNX file")
    except FileNotFoundError:
        raise OnnxError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise OnnxError(getattr(exc, "strerror", None) or str(exc)) from None
    with fh:
        data = fh.read()
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, and RecursionError on deep nesting
        raise OnnxError(f"{path}: not a readable ONNX file ({type(exc).__name__}: {exc})"[:500]) from None
    if not model.HasField("graph"):
        raise OnnxError(f"{path}: holds no graph; is it an ONNX model file?")
    return model, hashlib.sha256(data).hexdigest(), len(data)


def _opset(onnx, model, path):
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise OnnxError(f"{path}: declares no opset of the default ONNX domain; re-export it with an opset "
                        f"from {MIN_OPSET}")
    opset, newest = int(versions[0]), onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET:
        raise OnnxError(f"{path}: uses opset {opset}; cnn reads opsets {MIN_OPSET} to {newest}: convert it "
                        f"(onnx.version_converter.convert_version(model, 13)) or re-export it")
    if opset > newest:
        raise OnnxError(f"{path}: uses opset {opset}, newer than the installed onnx knows ({newest}); "
                        "upgrade onnx (pip install -U onnx) or re-export with an older opset")
    return opset


def read_onnx(path, *, size=None, max_bytes=None) -> OnnxGraph:
    """Read, check and fold the ONNX file ``path`` for an input of spatial size ``size`` = (H, W).

    ``size`` binds a symbolic height and width; it is required when the file
    leaves them symbolic and must agree with them when it fixes them.
    ``max_bytes`` bounds the file plus its external data (default
    ``config.ONNX_MAX_BYTES``). Returns an ``OnnxGraph``; raises
    ``OnnxError`` for everything the module docstring lists.
    """
    onnx = _onnx()
    path = Path(path)
    max_bytes = config.ONNX_MAX_BYTES if max_bytes is None else int(max_bytes)
    size = _check_size(size, path)
    model, digest, nbytes = _parse(onnx, path, max_bytes)
    graph = model.graph
    opset = _opset(onnx, model, path)
    if len(graph.node) > config.ONNX_MAX_NODES:
        raise OnnxError(f"{path}: has {len(graph.node):,} nodes; cnn imports graphs of at most "
                        f"{config.ONNX_MAX_NODES:,}")
    functions = {(f.domain, f.name) for f in model.functions}
    named, why = _refusals(graph, functions)
    if named:
        verb = "is" if len(named) == 1 else "are"
        raise OnnxError(f"{path}: {', '.join(named)} {verb} not supported: {why} cannot run on cnn's engine")
    if len(graph.sparse_initializer):
        raise OnnxError(f"{path}: holds sparse initializers, which cnn does not read; re-export with dense "
                        "weights")
    input_name, input_shape, layout = _image_input(graph, {t.name for t in graph.initializer}, size, path)
    reader = TensorReader(path, max_bytes - nbytes, max_bytes)
    try:
        constants = {}
        for t in graph.initializer:
            constants[t.name] = reader.array(t, f"initializer '{t.name}'")
        used = set()
        nodes, protos = [], {}
        for i, proto in enumerate(graph.node):
            name = _unique_name(proto.name, proto.op_type, i, used)
            attrs = {a.name: attr_value(a, reader, f"attribute '{a.name}' of node '{name}'")
                     for a in proto.attribute}
            node = Node(name, proto.op_type, "" if proto.domain == "ai.onnx" else proto.domain,
                        list(proto.input), list(proto.output), attrs)
            nodes.append(node)
            protos[id(node)] = proto
    finally:
        reader.close()
    outputs = [v.name for v in graph.output]
    defined = set(constants) | {input_name}
    nodes = _topological(nodes, defined, path)
    made = defined | {o for n in nodes for o in n.outputs if o}
    missing = [o for o in outputs if o not in made]
    if missing:
        raise OnnxError(f"{path}: graph output(s) {missing} are made by no node")
    transposes = {n.name for n in nodes if layout == "NHWC" and input_name in n.inputs}
    nhwc_aliases = {n.outputs[0]: input_name for n in nodes if n.name in transposes}
    nodes = [n for n in nodes if n.name not in transposes]  # the graph now takes (N, C, H, W)

    def fold(batch):
        bound = (batch, *input_shape[1:])
        folding = Folding(onnx, model, nodes, protos, constants, input_name, bound, outputs, opset, path,
                           max_bytes, nhwc_aliases)
        kept, shapes = folding.run()
        return folding, kept, shapes

    folding, kept, shapes = fold(input_shape[0] or 1)
    batch_dependent = {}
    if input_shape[0] is None:
        try:
            twice = fold(2)[0]
        except OnnxError:
            twice = None  # a graph that takes only one image at a time: the batch-1 values stand
        if twice is not None:
            batch_dependent = {name: _plain(twice.constants[name], path) for name in folding.folded
                               if name in twice.constants
                               and not np.array_equal(folding.constants[name], twice.constants[name])}
    for node in kept:  # TENSOR attributes handed out in the same dtypes as constants
        node.attrs = {k: _plain(v, path) if isinstance(v, np.ndarray) else v for k, v in node.attrs.items()}
    return OnnxGraph(
        nodes=kept,
        constants={name: _plain(v, path) for name, v in folding.constants.items()},
        input_name=input_name,
        input_shape=input_shape,
        outputs=outputs,
        shapes={k: v for k, v in shapes.items() if k not in folding.constants},
        opset=opset,
        metadata={p.key: p.value for p in model.metadata_props},
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        sha256=digest,
        aliases=dict(folding.aliases),
        batch_dependent=batch_dependent,
        input_layout=layout,
        path=str(path),
    )


def _plain(value, path):
    """``value`` as we hand it out: floats as float32, integers as int64, booleans as bool."""
    value = np.asarray(value)
    if value.dtype.kind == "f":
        with np.errstate(over="ignore"):  # a double beyond float32's range becomes inf, as a cast in ORT
            return value.astype(np.float32, copy=False)
    if value.dtype == np.uint64 and value.size and value.max() > np.iinfo(np.int64).max:
        raise OnnxError(f"{path}: a uint64 constant holds {value.max()}, which cnn's int64 cannot")
    if value.dtype.kind in "iu":
        return value.astype(np.int64, copy=False)
    return value

#: ``count_elements`` is also read from here (``tensorfile``); ``Node`` and ``OnnxError`` belong to
#: what ``read_onnx`` returns and raises.
__all__ = ["INSTALL_HINT", "MIN_OPSET", "REFUSED", "Node", "OnnxError", "OnnxGraph", "count_elements", "read_onnx"]
