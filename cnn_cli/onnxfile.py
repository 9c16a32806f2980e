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

**Folding.** A node is folded when all its inputs are constants and its op
is in ``FOLDERS`` (a numpy function per op, with the opset differences of
Slice, Squeeze, Unsqueeze, Clip, Pad and the Reduce ops); ``Shape`` and
``Size`` are folded from static shapes even when their input is not
constant. Static shapes come from ``onnx.shape_inference.infer_shapes`` on
the graph that remains, with the input bound and small constants given as
initializers; inference and folding alternate until nothing changes (a
Reshape whose target was folded has a known shape only on the next round).
An op whose output may outgrow its inputs (ConstantOfShape, Expand,
Tile, Range...) checks the output's size against the element cap and the
budget before computing it, and all folded values together may take at
most ``max_bytes``. ``Identity`` and ``Dropout`` (without a used mask and not
in training mode) are removed: their outputs become aliases of their inputs
(see ``OnnxGraph.aliases``). Nodes that no graph output depends on are
dropped.

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
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .fileio import open_regular

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

#: Constants with at most this many elements are given to shape inference as
#: values (a Reshape's target, a Resize's scales); larger ones (weights) only
#: by their shape, so that inference never copies the weights.
_INFER_VALUE_ELEMENTS = 4096

_SHAPE_OPS = ("Shape", "Size")


class OnnxError(ValueError):
    """An ONNX file cannot be read; the message names the file, what is wrong and what to change."""


@dataclass
class Node:
    """One ONNX node as plain Python values.

    ``inputs`` and ``outputs`` are tensor names ("" for an omitted optional
    one). After ``read_onnx`` an input names a constant (in
    ``OnnxGraph.constants``), the image input or another node's output:
    never an alias. ``attrs`` holds ints, floats, str, lists of them and
    numpy arrays (TENSOR attributes; float32, int64 or bool, as constants).
    """

    name: str          # the node's name; "<op>_<index>" if the file gave none, "_2"... added to repeats
    op: str            # op_type
    domain: str        # "" for the default domain
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)


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


# ----------------------------------------------------------------------------- reading tensors

#: TensorProto data type -> (numpy dtype of its stored bytes, numpy dtype we compute in).
#: bfloat16 is stored as its 16 bits and computed in float32 (numpy has no bfloat16).
_DTYPES = {
    1: ("<f4", np.float32),    # FLOAT
    2: ("u1", np.uint8),       # UINT8
    3: ("i1", np.int8),        # INT8
    4: ("<u2", np.uint16),     # UINT16
    5: ("<i2", np.int16),      # INT16
    6: ("<i4", np.int32),      # INT32
    7: ("<i8", np.int64),      # INT64
    9: ("u1", np.bool_),       # BOOL
    10: ("<f2", np.float16),   # FLOAT16
    11: ("<f8", np.float64),   # DOUBLE
    12: ("<u4", np.uint32),    # UINT32
    13: ("<u8", np.uint64),    # UINT64
    16: ("<u2", np.float32),   # BFLOAT16
}
_TYPE_NAMES = {0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128"}
_FLOAT_TYPES = (1, 10, 11, 16)


def _type_name(code):
    try:
        from onnx import TensorProto

        return TensorProto.DataType.Name(code)
    except (ImportError, ValueError):
        return _TYPE_NAMES.get(code, f"type {code}")


def _onnx_type(dtype):
    """The TensorProto type code of a numpy dtype we compute in."""
    dtype = np.dtype(dtype)
    for code, (_, ours) in _DTYPES.items():
        if code != 16 and np.dtype(ours) == dtype:
            return code
    raise KeyError(dtype)


def count_elements(dims, what, *, max_elements=None, max_rank=None):
    """The element count of a tensor with ``dims``, checked before anything is allocated.

    Each dim must be a non-negative int, at most ``max_rank`` of them (default
    ``config.ONNX_MAX_RANK``), and their product at most ``max_elements``
    (default ``config.ONNX_MAX_ELEMENTS``). Raises ValueError naming ``what``.
    """
    max_elements = config.ONNX_MAX_ELEMENTS if max_elements is None else max_elements
    max_rank = config.ONNX_MAX_RANK if max_rank is None else max_rank
    dims = list(dims)
    if len(dims) > max_rank:
        raise ValueError(f"{what} has {len(dims)} dimensions; at most {max_rank} are read")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"{what} has the dimension {d!r}; dimensions are whole numbers >= 0")
    count = math.prod(int(d) for d in dims)  # at most 32 factors below 2**63: exact and quick
    if count > max_elements:
        raise ValueError(f"{what} declares {count:,} elements (shape {tuple(int(d) for d in dims)}); "
                         f"at most {max_elements:,} are read")
    return count


class _Reader:
    """Reads tensors of one model file: in-file data, typed fields, or bounded external data."""

    def __init__(self, path, budget, max_bytes):
        self.path = Path(path)
        self.folder = self.path.parent
        self.budget = budget          # bytes that external data may still take
        self.max_bytes = max_bytes    # the limit for the file and its external data together
        self._files = {}              # location -> open file, size

    def close(self):
        for fh, _ in self._files.values():
            fh.close()
        self._files.clear()

    def array(self, t, what):
        """The numpy array of TensorProto ``t`` in the type we compute in (see ``_DTYPES``)."""
        if t.data_type not in _DTYPES:
            raise OnnxError(f"{self.path}: {what} is of type {_type_name(t.data_type)}, which cnn does not "
                            f"read; cnn reads float, integer and bool tensors")
        try:
            count = count_elements(t.dims, what)
        except ValueError as exc:
            raise OnnxError(f"{self.path}: {exc}") from None
        stored, ours = _DTYPES[t.data_type]
        itemsize = np.dtype(stored).itemsize
        shape = tuple(int(d) for d in t.dims)
        if t.data_location == 1:  # EXTERNAL
            raw = self._external(t, what, count * itemsize)
        elif t.HasField("raw_data"):
            raw = t.raw_data
            if len(raw) != count * itemsize:
                raise OnnxError(f"{self.path}: {what} declares shape {shape} ({count * itemsize:,} bytes) but "
                                f"stores {len(raw):,} bytes; the file is damaged or forged")
        else:
            return self._typed(t, what, count, shape, ours)
        arr = np.frombuffer(raw, dtype=stored, count=count)
        if t.data_type == 16:  # bfloat16: the high half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif t.data_type == 9:
            arr = arr != 0
        return arr.astype(ours, copy=True).reshape(shape)

    def _typed(self, t, what, count, shape, ours):
        code = t.data_type
        if code == 1:
            values = t.float_data
        elif code == 11:
            values = t.double_data
        elif code == 7:
            values = t.int64_data
        elif code in (12, 13):
            values = t.uint64_data
        else:  # int32_data holds INT8/16/32, UINT8/16, BOOL, and float16/bfloat16 bit patterns
            values = t.int32_data
        if len(values) != count:  # a repeated field's length is stored: no copy is made to check it
            raise OnnxError(f"{self.path}: {what} declares shape {shape} ({count:,} elements) but stores "
                            f"{len(values):,} values; the file is damaged or forged")
        if code == 10:
            return np.asarray(values, np.int64).astype(np.uint16).view(np.float16).reshape(shape)
        if code == 16:
            return (np.asarray(values, np.int64).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if code == 9:
            return (np.asarray(values, np.int64) != 0).reshape(shape)
        wide = np.float64 if code in (1, 11) else np.uint64 if code in (12, 13) else np.int64  # holds every value
        return np.asarray(values, dtype=wide).astype(ours).reshape(shape)

    def _external(self, t, what, nbytes):
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info.get("length", str(nbytes)))
        except ValueError:
            raise OnnxError(f"{self.path}: {what} has external data with offset {info.get('offset')!r} and "
                            f"length {info.get('length')!r}; both must be whole numbers") from None
        if offset < 0 or length != nbytes:
            raise OnnxError(f"{self.path}: {what} declares {nbytes:,} bytes but its external data says "
                            f"offset {offset}, length {length}; the file is damaged or forged")
        fh, size = self._open(location, what)
        if offset + length > size:
            raise OnnxError(f"{self.path}: {what} is stored at bytes {offset:,} to {offset + length:,} of "
                            f"'{location}', which holds only {size:,} bytes; the data file is truncated "
                            f"or belongs to another model")
        if length > self.budget:
            raise OnnxError(f"{self.path}: the model and its external data hold more than the "
                            f"{self.max_bytes:,}-byte limit for a model")
        self.budget -= length
        fh.seek(offset)
        raw = fh.read(length)
        if len(raw) != length:
            raise OnnxError(f"{self.path}: '{location}' ended early while reading {what}")
        return raw

    def _open(self, location, what):
        if location in self._files:
            return self._files[location]
        parts = location.replace("\\", "/").split("/")
        if (not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in parts[0]
                or ".." in parts or "\0" in location):
            raise OnnxError(f"{self.path}: {what} names the external data file {location!r}, which is not "
                            f"a file inside the model's folder; cnn reads external data only from beside "
                            f"the model")
        full = self.folder / location
        folder = os.path.realpath(self.folder)
        if os.path.commonpath([folder, os.path.realpath(full)]) != folder:  # a link that leads out
            raise OnnxError(f"{self.path}: the external data file '{location}' leads outside the model's "
                            f"folder; cnn reads external data only from beside the model")
        try:
            fh = open_regular(full, what="an external data file")
        except FileNotFoundError:
            raise OnnxError(f"{self.path}: {what} is stored in '{location}', which is missing; keep the data "
                            f"file beside the model, under the name it was saved with") from None
        except (OSError, ValueError) as exc:
            raise OnnxError(f"{self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        self._files[location] = (fh, os.fstat(fh.fileno()).st_size)
        return self._files[location]


# ----------------------------------------------------------------------------- attributes and nodes


def _attr_value(a, reader, what):
    """A python value for AttributeProto ``a``: int, float, str, lists of them, or a numpy array."""
    kind = a.type
    if kind == 1:
        return float(a.f)
    if kind == 2:
        return int(a.i)
    if kind == 3:
        return _decode(a.s, reader, what)
    if kind == 4:
        return reader.array(a.t, what)
    if kind == 6:
        return [float(v) for v in a.floats]
    if kind == 7:
        return [int(v) for v in a.ints]
    if kind == 8:
        return [_decode(s, reader, what) for s in a.strings]
    if kind == 9:
        return [reader.array(t, f"{what}[{i}]") for i, t in enumerate(a.tensors)]
    raise OnnxError(f"{reader.path}: {what} is of attribute type {a.type} (a graph, sparse tensor or type), "
                    f"which cnn does not read")


def _decode(data, reader, what):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxError(f"{reader.path}: {what} is not UTF-8 text") from None


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


# ----------------------------------------------------------------------------- folding: the op table


class _Fold:
    """What a fold function needs besides its inputs: the node, the opset, and the byte budget."""

    def __init__(self, node, opset, budget):
        self.node, self.opset, self.budget = node, opset, budget

    def claim(self, shape, dtype):
        """Check a value of ``shape`` and ``dtype`` against the limits before it is made.

        Ops whose output may be larger than their inputs (ConstantOfShape,
        Expand, Tile, Range, broadcasting, Gather, Concat, Pad, Cast, MatMul)
        call this first; every output is then counted against the budget
        once made (``_Folding._fold``), so a chain of ops can make at most
        one value over it, no larger than an input it already holds.
        """
        count = count_elements([int(d) for d in shape], f"the value node '{self.node.name}' computes")
        _check_budget(count * np.dtype(dtype).itemsize, self.budget)

    def attr(self, key, default=None):
        return self.node.attrs.get(key, default)


def _check_budget(nbytes, budget):
    if nbytes > budget[0]:
        raise ValueError(f"its values would take {nbytes:,} bytes, over what is left ({budget[0]:,} bytes) of "
                         "the limit for folded values (max_bytes, by default config.ONNX_MAX_BYTES)")


#: op type -> function(fold, inputs) -> list of output arrays; inputs are numpy arrays (None when omitted).
FOLDERS = {}


def _folds(*ops):
    def register(fn):
        for op in ops:
            FOLDERS[op] = fn
        return fn
    return register


def _ints(value, what="a shape"):
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integers, not {arr.dtype}")
    return [int(v) for v in arr.reshape(-1)]


def _axis(axis, rank):
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _input_or_attr(f, inputs, index, key, since):
    """A list of ints given as an attribute before opset ``since`` and as input ``index`` from it (or None)."""
    if f.opset < since:
        value = f.attr(key)
        return None if value is None else list(value)
    return _ints(inputs[index], key) if len(inputs) > index and inputs[index] is not None else None


@_folds("Constant")
def _constant(f, inputs):
    for key, make in (("value", np.asarray), ("value_float", lambda v: np.float32(v)),
                      ("value_floats", lambda v: np.asarray(v, np.float32)),
                      ("value_int", lambda v: np.int64(v)), ("value_ints", lambda v: np.asarray(v, np.int64))):
        if key in f.node.attrs:
            return [np.asarray(make(f.attr(key)))]
    raise ValueError(f"it has none of the attributes cnn reads (value, value_float(s), value_int(s)); "
                     f"it has {sorted(f.node.attrs)}")


@_folds("ConstantOfShape")
def _constant_of_shape(f, inputs):
    shape = _ints(inputs[0])
    value = f.attr("value", np.zeros(1, np.float32))
    f.claim(shape, value.dtype)
    return [np.full(shape, value.reshape(-1)[0], value.dtype)]


def _shape_slice(f, shape):
    start, end = f.attr("start", 0), f.attr("end", None)  # start and end: opset 15
    rank = len(shape)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = rank if end is None else min(max(end + rank if end < 0 else end, 0), rank)
    return np.asarray(shape[start:end], np.int64)


@_folds("Shape")
def _shape(f, inputs):
    return [_shape_slice(f, list(inputs[0].shape))]


@_folds("Size")
def _size(f, inputs):
    return [np.asarray(inputs[0].size, np.int64)]


@_folds("Gather")
def _gather(f, inputs):
    data, indices = inputs
    axis = _axis(f.attr("axis", 0), data.ndim)
    dim = data.shape[axis]
    idx = np.asarray(indices).astype(np.int64)
    if idx.size and (idx.min() < -dim or idx.max() >= dim):
        raise ValueError(f"an index is out of range for axis {axis} of size {dim}")
    idx = np.where(idx < 0, idx + dim, idx)
    f.claim(data.shape[:axis] + idx.shape + data.shape[axis + 1:], data.dtype)
    return [np.take(data, idx, axis=axis)]


@_folds("Unsqueeze")
def _unsqueeze(f, inputs):
    axes = _input_or_attr(f, inputs, 1, "axes", 13)
    if axes is None:
        raise ValueError("it has no axes")
    rank = inputs[0].ndim + len(axes)
    axes = sorted(_axis(a, rank) for a in axes)
    if len(set(axes)) != len(axes):
        raise ValueError(f"its axes {axes} repeat")
    out = inputs[0]
    for a in axes:
        out = np.expand_dims(out, a)
    return [out]


@_folds("Squeeze")
def _squeeze(f, inputs):
    data = inputs[0]
    axes = _input_or_attr(f, inputs, 1, "axes", 13)
    if axes is None:
        axes = [i for i, d in enumerate(data.shape) if d == 1]
    axes = tuple(_axis(a, data.ndim) for a in axes)
    if any(data.shape[a] != 1 for a in axes):
        raise ValueError(f"it squeezes axes {axes} of shape {data.shape}, which are not all 1")
    return [np.squeeze(data, axis=axes)]


@_folds("Concat")
def _concat(f, inputs):
    arrays = [x for x in inputs if x is not None]
    axis = _axis(f.attr("axis"), arrays[0].ndim)
    shape = list(arrays[0].shape)
    shape[axis] = sum(x.shape[axis] for x in arrays)
    f.claim(shape, arrays[0].dtype)
    return [np.concatenate(arrays, axis=axis).astype(arrays[0].dtype, copy=False)]


@_folds("Slice")
def _slice(f, inputs):
    data = inputs[0]
    if f.opset < 10:
        starts, ends, axes, steps = f.attr("starts"), f.attr("ends"), f.attr("axes"), None
    else:
        starts, ends = _ints(inputs[1], "starts"), _ints(inputs[2], "ends")
        axes = _ints(inputs[3], "axes") if len(inputs) > 3 and inputs[3] is not None else None
        steps = _ints(inputs[4], "steps") if len(inputs) > 4 and inputs[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, data.ndim)
        dim = data.shape[axis]
        if step == 0:
            raise ValueError("a step is 0")
        if step < 0 and end in (2**63 - 1, 2**31 - 1):
            end = -dim - 1  # ONNX Runtime reads "INT_MAX" as "through index 0" for a backward step
        start = start + dim if start < 0 else start
        end = end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:  # clamped to [-1, dim - 1]; -1 means "through index 0"
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis] = slice(start, end if end >= 0 else None, step)
    return [data[tuple(index)].copy()]


def _cast_to(value, code, f):
    if code not in _DTYPES:
        raise ValueError(f"it casts to {_type_name(code)}, which cnn does not compute in")
    dtype = _DTYPES[code][1]
    f.claim(value.shape, dtype)
    if np.dtype(dtype).kind in "iub" and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError("it casts a non-finite float to an integer type")
    return value.astype(dtype)


@_folds("Cast")
def _cast(f, inputs):
    return [_cast_to(inputs[0], f.attr("to"), f)]


@_folds("CastLike")
def _cast_like(f, inputs):
    return [_cast_to(inputs[0], _onnx_type(inputs[1].dtype), f)]


@_folds("Range")
def _range(f, inputs):
    start, limit, delta = (np.asarray(x).reshape(()) for x in inputs)
    if delta == 0:
        raise ValueError("its delta is 0")
    if start.dtype.kind in "iu":
        count = max(-(-(int(limit) - int(start)) // int(delta)), 0)  # ceil((limit - start) / delta)
    else:
        count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    f.claim([count], start.dtype)
    return [(start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)]


@_folds("Reshape")
def _reshape(f, inputs):
    data, shape = inputs[0], _ints(inputs[1])
    allow_zero = f.attr("allowzero", 0)
    target = [data.shape[i] if d == 0 and not allow_zero and i < data.ndim else d for i, d in enumerate(shape)]
    return [data.reshape(target).copy()]


def _broadcast_claim(f, arrays, dtype=None):
    shape = np.broadcast_shapes(*(a.shape for a in arrays))
    f.claim(shape, dtype or arrays[0].dtype)
    return shape


@_folds("Expand")
def _expand(f, inputs):
    data, shape = inputs[0], _ints(inputs[1])
    if any(d < 0 for d in shape):
        raise ValueError(f"the shape {shape} has a negative dimension")
    out = np.broadcast_shapes(data.shape, tuple(shape))
    f.claim(out, data.dtype)
    return [np.broadcast_to(data, out).copy()]


@_folds("Tile")
def _tile(f, inputs):
    data, repeats = inputs[0], _ints(inputs[1], "repeats")
    if len(repeats) != data.ndim or any(r < 0 for r in repeats):
        raise ValueError(f"its repeats {repeats} do not fit rank {data.ndim}")
    f.claim([d * r for d, r in zip(data.shape, repeats)], data.dtype)
    return [np.tile(data, repeats)]


@_folds("Transpose")
def _transpose(f, inputs):
    perm = f.attr("perm")
    return [np.ascontiguousarray(np.transpose(inputs[0], perm))]


@_folds("Flatten")
def _flatten(f, inputs):
    data = inputs[0]
    axis = f.attr("axis", 1)
    axis = axis + data.ndim if axis < 0 else axis
    return [data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:])).copy()]


def _binary(fn, result=None):
    """A broadcasting op over two or more inputs; ``result`` is the output dtype (else the first input's)."""
    def fold(f, inputs):
        arrays = [x for x in inputs if x is not None]
        _broadcast_claim(f, arrays, result)
        out = arrays[0]
        for x in arrays[1:]:
            out = fn(out, x)
        return [np.asarray(out).astype(result or arrays[0].dtype, copy=False)]
    return fold


def _divide(a, b):
    if a.dtype.kind not in "iu":
        return np.divide(a, b)
    if np.any(b == 0):
        raise ValueError("it divides an integer by 0")
    q = np.abs(a) // np.abs(b)  # ONNX (C++) integer division truncates toward 0
    return np.where((a < 0) != (b < 0), -q, q)


def _power(a, b):
    if a.dtype.kind in "iu" and np.any(np.asarray(b) < 0):
        raise ValueError("it raises an integer to a negative power")
    return np.power(a.astype(np.float64) if a.dtype.kind == "f" else a, b)


for _op, _fn in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", _divide),
                 ("Pow", _power), ("Max", np.maximum), ("Min", np.minimum), ("Sum", np.add),
                 ("And", np.logical_and), ("Or", np.logical_or), ("Xor", np.logical_xor)):
    FOLDERS[_op] = _binary(_fn)
for _op, _fn in (("Equal", np.equal), ("Less", np.less), ("Greater", np.greater),
                 ("LessOrEqual", np.less_equal), ("GreaterOrEqual", np.greater_equal)):
    FOLDERS[_op] = _binary(_fn, np.bool_)


@_folds("Mod")
def _mod(f, inputs):
    a, b = inputs
    _broadcast_claim(f, [a, b])
    if a.dtype.kind in "iu" and np.any(b == 0):
        raise ValueError("it takes an integer modulo 0")
    return [(np.fmod(a, b) if f.attr("fmod", 0) else np.mod(a, b)).astype(a.dtype)]


@_folds("Mean")
def _mean(f, inputs):
    _broadcast_claim(f, inputs)
    return [(sum(np.asarray(x, np.float64) for x in inputs) / len(inputs)).astype(inputs[0].dtype)]


@_folds("Where")
def _where(f, inputs):
    cond, x, y = inputs
    _broadcast_claim(f, [cond, x, y], x.dtype)
    return [np.where(cond, x, y).astype(x.dtype)]


def _unary(fn, floats_only=True):
    def fold(f, inputs):
        x = inputs[0]
        if floats_only and x.dtype.kind != "f":
            raise ValueError(f"it takes floats, not {x.dtype}")
        with np.errstate(all="ignore"):  # sqrt(-1) is NaN in ONNX Runtime too
            return [np.asarray(fn(x)).astype(x.dtype)]
    return fold


for _op, _fn, _floats in (("Neg", np.negative, False), ("Abs", np.abs, False), ("Sign", np.sign, False),
                          ("Not", np.logical_not, False), ("Sqrt", np.sqrt, True), ("Exp", np.exp, True),
                          ("Log", np.log, True), ("Reciprocal", np.reciprocal, True), ("Floor", np.floor, True),
                          ("Ceil", np.ceil, True), ("Round", np.round, True),  # half to even, as ONNX's Round
                          ("Relu", lambda x: np.maximum(x, 0), False),
                          ("Sigmoid", lambda x: 1 / (1 + np.exp(-x.astype(np.float64))), True),
                          ("Tanh", np.tanh, True)):
    FOLDERS[_op] = _unary(_fn, _floats)


@_folds("Clip")
def _clip(f, inputs):
    x = inputs[0]
    if f.opset < 11:
        low, high = f.attr("min", -np.inf), f.attr("max", np.inf)
    else:
        low = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
        high = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None
    out = x
    if low is not None:
        out = np.maximum(out, low)
    if high is not None:
        out = np.minimum(out, high)
    return [np.asarray(out).astype(x.dtype)]


_REDUCERS = {"ReduceSum": np.sum, "ReduceProd": np.prod, "ReduceMin": np.min, "ReduceMax": np.max,
             "ReduceMean": np.mean}


@_folds(*_REDUCERS)
def _reduce(f, inputs):
    x = inputs[0]
    since = 13 if f.node.op == "ReduceSum" else 18  # axes became an input
    axes = _input_or_attr(f, inputs, 1, "axes", since)
    if not axes:
        if f.opset >= since and f.attr("noop_with_empty_axes", 0):
            return [x.copy()]
        axes = list(range(x.ndim))
    axes = tuple(_axis(a, x.ndim) for a in axes)
    out = _REDUCERS[f.node.op](x, axis=axes, keepdims=bool(f.attr("keepdims", 1)))
    return [np.asarray(out).astype(x.dtype)]


@_folds("MatMul")
def _matmul(f, inputs):
    a, b = inputs
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError("MatMul takes tensors of rank 1 or more")
    a2, b2 = (a[None] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"shapes {a.shape} and {b.shape} do not multiply")
    f.claim(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]) + (a2.shape[-2], b2.shape[-1]), a.dtype)
    return [np.matmul(a, b).astype(a.dtype)]


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@_folds("Pad")
def _pad(f, inputs):
    x = inputs[0]
    mode = f.attr("mode", "constant")
    if mode not in _PAD_MODES:
        raise ValueError(f"mode '{mode}' is not one of {sorted(_PAD_MODES)}")
    if f.opset < 11:
        pads, value, axes = list(f.attr("pads")), f.attr("value", 0.0), None
    else:
        pads = _ints(inputs[1], "pads")
        value = inputs[2].reshape(-1)[0] if len(inputs) > 2 and inputs[2] is not None and inputs[2].size else 0
        axes = _ints(inputs[3], "axes") if len(inputs) > 3 and inputs[3] is not None else None
    axes = list(range(x.ndim)) if axes is None else [_axis(a, x.ndim) for a in axes]
    if len(pads) != 2 * len(axes):
        raise ValueError(f"it has {len(pads)} pads for {len(axes)} axes")
    width = [[0, 0] for _ in range(x.ndim)]
    for k, a in enumerate(axes):
        width[a] = [pads[k], pads[k + len(axes)]]
    crop = tuple(slice(max(-b, 0), x.shape[a] - max(-e, 0)) for a, (b, e) in enumerate(width))
    x = x[crop]  # negative pads crop first
    grow = [(max(b, 0), max(e, 0)) for b, e in width]
    f.claim([d + b + e for d, (b, e) in zip(x.shape, grow)], x.dtype)
    kwargs = {"constant_values": value} if mode == "constant" else {}
    return [np.pad(x, grow, mode=_PAD_MODES[mode], **kwargs).astype(x.dtype)]


# ----------------------------------------------------------------------------- static shapes


def _static_shapes(onnx, model, nodes, protos, constants, input_name, input_shape, outputs, path):
    """{tensor name: static shape} for the graph ``nodes`` (with the input bound), by ONNX shape inference.

    Constants read by the nodes go in as initializers when they are small
    (their values matter: a Reshape's target) and as inputs of known shape
    otherwise (weights: only their shape matters). Names with a dimension
    inference could not fix are left out.
    """
    helper = onnx.helper
    graph_inputs = [helper.make_tensor_value_info(input_name, _input_type(model, input_name), list(input_shape))]
    initializers = []
    read = dict.fromkeys(x for n in nodes for x in n.inputs if x in constants)
    for name in read:
        value = constants[name]
        code = _onnx_type(value.dtype)
        graph_inputs.append(helper.make_tensor_value_info(name, code, list(value.shape)))
        if value.size <= _INFER_VALUE_ELEMENTS:
            initializers.append(onnx.numpy_helper.from_array(value, name))
    made = {out for n in nodes for out in n.outputs if out}
    graph_outputs = [helper.make_empty_tensor_value_info(name) for name in dict.fromkeys(outputs) if name in made]
    node_protos = []
    for n in nodes:
        proto = onnx.NodeProto()
        proto.CopyFrom(protos[id(n)])
        del proto.input[:]
        proto.input.extend(n.inputs)
        node_protos.append(proto)
    graph = helper.make_graph(node_protos, "shapes", graph_inputs, graph_outputs, initializers)
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = max(model.ir_version, 3)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False)
    except Exception as exc:  # onnx raises its own error types; all mean the same here
        raise OnnxError(f"{path}: ONNX shape inference failed on this graph: {exc}"[:1000]) from None
    shapes = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = v.type.tensor_type
        if v.name in constants or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if all(d is not None for d in dims):
            shapes[v.name] = tuple(int(d) for d in dims)
    return shapes


def _input_type(model, name):
    for v in model.graph.input:
        if v.name == name:
            return v.type.tensor_type.elem_type
    return 1


# ----------------------------------------------------------------------------- folding


class _Folding:
    """Folds one graph for one bound input shape (see the module docstring)."""

    def __init__(self, onnx, model, nodes, protos, constants, input_name, input_shape, outputs, opset, path,
                 max_bytes, aliases):
        self.onnx, self.model, self.protos = onnx, model, protos
        self.input_name, self.input_shape, self.outputs = input_name, input_shape, outputs
        self.opset, self.path = opset, path
        self.constants = dict(constants)
        self.folded = []                    # names of the values folding made, in order
        self.aliases = dict(aliases)        # removed name -> the name it stands for
        self.budget = [max_bytes]
        self.todo = [Node(n.name, n.op, n.domain, list(n.inputs), list(n.outputs), n.attrs) for n in nodes]
        for new, old in zip(self.todo, nodes):
            protos[id(new)] = protos[id(old)]
        used = {}
        for n in self.todo:
            for x in n.inputs:
                used[x] = used.get(x, 0) + 1
        self.used = used

    def shapes(self):
        return _static_shapes(self.onnx, self.model, self.todo, self.protos, self.constants, self.input_name,
                              self.input_shape, self.outputs, self.path)

    def run(self):
        """Fold until nothing changes; returns (nodes, static shapes)."""
        shapes = None
        while True:
            progress = self._pass(shapes or {})
            blocked = [n for n in self.todo if n.op in _SHAPE_OPS]
            if not blocked:
                break
            if not progress and shapes is not None:
                names = ", ".join(f"node '{n.name}' ({n.op} of '{n.inputs[0]}')" for n in blocked[:5])
                raise OnnxError(f"{self.path}: {names}: the shape of its input is not known for the input "
                                f"{self.input_shape}, so it cannot be folded into a constant; cnn imports "
                                f"graphs whose shapes follow from the input size alone")
            shapes = self.shapes()
            progress = False
        if progress or shapes is None:
            shapes = self.shapes()
        self._prune()
        return self.todo, shapes

    def _pass(self, shapes):
        """One sweep over the remaining nodes in order; True if any was folded or removed."""
        remaining, progress = [], False
        for node in self.todo:
            node.inputs = [self.aliases.get(x, x) for x in node.inputs]
            if self._alias(node):
                progress = True
                continue
            value_inputs = [None if not x else self.constants.get(x) for x in node.inputs]
            known = all(v is not None for x, v in zip(node.inputs, value_inputs) if x)
            if node.op in _SHAPE_OPS and not known and node.inputs[0] in shapes:
                value_inputs = [_ShapeOnly(shapes[node.inputs[0]])]
                known = True
            if node.domain in ("", "ai.onnx") and node.op in FOLDERS and known:
                self._fold(node, value_inputs)
                progress = True
            else:
                remaining.append(node)
        self.todo = remaining
        return progress

    def _alias(self, node):
        """Remove an Identity or inference-mode Dropout by aliasing its output; True if it was removed."""
        if node.op == "Identity" or node.op == "Dropout" and self._dropout_is_identity(node):
            self.aliases[node.outputs[0]] = node.inputs[0]
            for k, v in self.aliases.items():  # keep every alias pointing at a real tensor
                if v == node.outputs[0]:
                    self.aliases[k] = node.inputs[0]
            return True
        return False

    def _dropout_is_identity(self, node):
        mask_used = len(node.outputs) > 1 and node.outputs[1] and (
            self.used.get(node.outputs[1]) or node.outputs[1] in self.outputs)
        training = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        if training is not None:
            value = self.constants.get(training)
            if value is None or bool(np.asarray(value).reshape(-1)[0]):
                return False  # training mode (or not known to be off): not an identity
        return not mask_used

    def _fold(self, node, inputs):
        try:
            with np.errstate(all="ignore"):
                values = [np.asarray(v) for v in FOLDERS[node.op](_Fold(node, self.opset, self.budget), inputs)]
            made = sum(v.nbytes for v in values)
            _check_budget(made, self.budget)
            self.budget[0] -= made
        except OnnxError:
            raise
        except (ValueError, TypeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
            raise OnnxError(f"{self.path}: node '{node.name}' ({node.op}) cannot be computed on its constant "
                            f"inputs: {exc}") from None
        for name, value in zip(node.outputs, values):
            if name:
                self.constants[name] = value
                self.folded.append(name)

    def _prune(self):
        """Drop nodes no graph output depends on."""
        needed = {self.aliases.get(x, x) for x in self.outputs}
        kept = []
        for node in reversed(self.todo):
            if any(out in needed for out in node.outputs if out):
                kept.append(node)
                needed.update(x for x in node.inputs if x)
        self.todo = kept[::-1]


class _ShapeOnly:
    """Stands for a non-constant input of Shape or Size: only its shape is known."""

    def __init__(self, shape):
        self.shape, self.size = tuple(shape), math.prod(shape)


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
    if t.elem_type not in _FLOAT_TYPES:
        raise OnnxError(f"{path}: input '{v.name}' is of type {_type_name(t.elem_type)}; cnn feeds images as "
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
    reader = _Reader(path, max_bytes - nbytes, max_bytes)
    try:
        constants = {}
        for t in graph.initializer:
            constants[t.name] = reader.array(t, f"initializer '{t.name}'")
        used = set()
        nodes, protos = [], {}
        for i, proto in enumerate(graph.node):
            name = _unique_name(proto.name, proto.op_type, i, used)
            attrs = {a.name: _attr_value(a, reader, f"attribute '{a.name}' of node '{name}'")
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
        folding = _Folding(onnx, model, nodes, protos, constants, input_name, bound, outputs, opset, path,
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
