"""Folding shape arithmetic into constants: the op table half of ``read_onnx``.

A node is folded when all its inputs are constants and its op is in
``FOLDERS`` (a numpy function per op, with the opset differences of Slice,
Squeeze, Unsqueeze, Clip, Pad and the Reduce ops); ``Shape`` and ``Size``
are folded from static shapes even when their input is not constant.
Static shapes come from ``onnx.shape_inference.infer_shapes`` on the graph
that remains (``onnxproto.static_shapes``), with the input bound and small
constants given as initializers; inference and folding alternate until
nothing changes (a Reshape whose target was folded has a known shape only
on the next round). An op whose output may outgrow its inputs
(ConstantOfShape, Expand, Tile, Range...) checks the output's size against
the element cap and the budget before computing it, and all folded values
together may take at most ``max_bytes``. ``Identity`` and ``Dropout``
(without a used mask and not in training mode) are removed: their outputs
become aliases of their inputs. Nodes that no graph output depends on are
dropped. ``Folding`` runs it for one graph and one bound input shape;
``onnxfile.read_onnx`` calls it.
"""

from __future__ import annotations

import math

import numpy as np

from .onnxproto import DTYPES, Node, OnnxError, count_elements, onnx_type, static_shapes, type_name

_SHAPE_OPS = ("Shape", "Size")


class _Fold:
    """What a fold function needs besides its inputs: the node, the opset, and the byte budget."""

    def __init__(self, node, opset, budget):
        self.node, self.opset, self.budget = node, opset, budget

    def claim(self, shape, dtype):
        """Check a value of ``shape`` and ``dtype`` against the limits before it is made.

        Ops whose output may be larger than their inputs (ConstantOfShape,
        Expand, Tile, Range, broadcasting, Gather, Concat, Pad, Cast, MatMul)
        call this first; every output is then counted against the budget
        once made (``Folding._fold``), so a chain of ops can make at most
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
    if code not in DTYPES:
        raise ValueError(f"it casts to {type_name(code)}, which cnn does not compute in")
    dtype = DTYPES[code][1]
    f.claim(value.shape, dtype)
    if np.dtype(dtype).kind in "iub" and value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise ValueError("it casts a non-finite float to an integer type")
    return value.astype(dtype)


@_folds("Cast")
def _cast(f, inputs):
    return [_cast_to(inputs[0], f.attr("to"), f)]


@_folds("CastLike")
def _cast_like(f, inputs):
    return [_cast_to(inputs[0], onnx_type(inputs[1].dtype), f)]


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



# ----------------------------------------------------------------------------- folding


class Folding:
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
        return static_shapes(self.onnx, self.model, self.todo, self.protos, self.constants, self.input_name,
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

