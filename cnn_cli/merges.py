"""The merges of graph networks: ``add``, ``mul`` and ``concat``, which read several nodes.

Each follows ``cnn_cli.layers.Layer``: shape rule, forward, backward, ONNX
form, torch twin, with ``arity = None``: their ``build``, ``forward`` and
``backward`` take and give lists. ``add`` and ``mul`` broadcast as numpy and
ONNX do, so a squeeze-and-excitation product (N, C, H, W) * (N, C, 1, 1) is
one ``mul``. ``binary`` reads ONNX's Add, Mul, Sum, Sub and Div nodes, into a
merge or, with a constant operand, an ``affine`` layer (``graphlayers``).
"""

from __future__ import annotations

import functools
import operator

import numpy as np

from .layers import Layer, LayerError, OnnxNode, torch_lambda


def broadcast_shape(shapes, kind):
    try:
        return tuple(np.broadcast_shapes(*[tuple(1 if d is None else d for d in s) for s in shapes]))
    except ValueError:
        raise LayerError(f"{kind} needs inputs of shapes that broadcast, but got {[tuple(s) for s in shapes]}") \
            from None


def with_unknown(shape, shapes):
    """``shape`` with None where every input's size is unknown (an image size not known yet)."""
    return tuple(None if all(len(s) == len(shape) and s[k] is None for s in shapes) else d
                 for k, d in enumerate(shape))


def unbroadcast(grad, shape):
    """Sum ``grad`` (N, *out) over the axes where the input (N, *shape) was broadcast."""
    extra = grad.ndim - 1 - len(shape)
    if extra:
        grad = grad.sum(axis=tuple(range(1, 1 + extra)))
    axes = tuple(k + 1 for k, d in enumerate(shape) if d == 1 and grad.shape[k + 1] != 1)
    return grad.sum(axis=axes, keepdims=True) if axes else grad


class _Merge(Layer):
    """Base of layers that read two or more nodes."""

    arity = None

    def build(self, in_shapes, rng=None):
        if len(in_shapes) < 2:
            raise LayerError(f"{self.kind} reads two or more layers")
        self.in_shapes = [tuple(s) for s in in_shapes]
        return self._out_shape(self.in_shapes)

    def plan(self, in_shapes):
        return self._out_shape([tuple(s) for s in in_shapes]), 0

    def channel_names(self, names):
        return list(names[0])


class _Broadcast(_Merge):
    """A merge that combines its inputs one after another with ``combine`` (an operator that
    broadcasts as numpy, torch and ONNX's ``onnx_op`` do)."""

    keeps_maps = True  # per pixel: the default CAM layer moves on over a residual sum or a gate

    def _out_shape(self, shapes):
        return with_unknown(broadcast_shape(shapes, self.kind), shapes)

    def forward(self, xs, train=False):
        if train:
            self.save_for_backward(self._kept(xs))
        return functools.reduce(self.combine, xs).astype(np.float32, copy=False)

    def overwrite(self, xs, dying):
        """``forward(xs)`` written over the first or second input, if one of them is in ``dying``, has
        the output's shape and is not read again later in ``xs``: those two combine first, so the
        operations and their order are forward's."""
        shape = np.broadcast_shapes(*(x.shape for x in xs))
        into = next((xs[k] for k in dying if k < 2 and xs[k].shape == shape), None)
        if into is None or any(x.dtype != np.float32 for x in xs) or any(x is into for x in xs[2:]):
            return self.forward(xs)
        self.ufunc(xs[0], xs[1], out=into)
        for x in xs[2:]:
            self.ufunc(into, x, out=into)
        return into

    def to_onnx(self, g, xs, scope, prefix):
        return functools.reduce(lambda y, x: g.op(self.onnx_op, [y, x], scope), xs)

    def torch_twin(self, in_shapes):
        return torch_lambda(lambda *xs: functools.reduce(self.combine, xs))

    @classmethod
    def from_onnx(cls, node, ctx):
        return binary(node, ctx, cls.kind)


class Add(_Broadcast):
    """The sum of its inputs, broadcast (a residual connection)."""

    kind = "add"
    onnx_op = "Add"
    onnx_in = ("Add", "Sum")
    combine = staticmethod(operator.add)
    ufunc = np.add

    def _kept(self, xs):
        return [x.shape[1:] for x in xs]  # a sum's gradient needs the shapes alone

    def backward(self, grad):
        (shapes,) = self.saved
        return [unbroadcast(grad, shape) for shape in shapes]


class Mul(_Broadcast):
    """The product of its inputs, broadcast (squeeze-and-excitation, swish as x * sigmoid(x))."""

    kind = "mul"
    onnx_op = "Mul"
    onnx_in = ("Mul",)
    combine = staticmethod(operator.mul)
    ufunc = np.multiply

    def _kept(self, xs):
        return list(xs)

    def backward(self, grad):
        (xs,) = self.saved
        grads = []
        for k, x in enumerate(xs):
            others = grad
            for m, other in enumerate(xs):
                if m != k:
                    others = others * other
            grads.append(unbroadcast(others, x.shape[1:]).astype(np.float32))
        return grads


class Concat(_Merge):
    """Its inputs' maps side by side, along the channels (inception, DenseNet, U-Net)."""

    kind = "concat"

    def _out_shape(self, shapes):
        if len({len(s) for s in shapes}) != 1 or len({tuple(s[1:]) for s in shapes}) != 1:
            raise LayerError(f"concat needs inputs that differ in channels only, but got {shapes}")
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def channel_names(self, names):
        return [f"{k}:{n}" for k, group in enumerate(names) for n in group]

    def forward(self, xs, train=False):
        if train:
            self.save_for_backward([x.shape[1] for x in xs])
        return np.concatenate(xs, axis=1)

    def backward(self, grad):
        (sizes,) = self.saved
        return np.split(grad, np.cumsum(sizes)[:-1], axis=1)

    def to_onnx(self, g, xs, scope, prefix):
        return g.op("Concat", list(xs), scope, axis=1)

    def torch_twin(self, in_shapes):
        import torch

        return torch_lambda(lambda *xs: torch.cat(xs, 1))

    onnx_in = ("Concat",)

    @classmethod
    def from_onnx(cls, node, ctx):
        rank = len(ctx.shape(node.outputs[0]) or (0, 0, 0, 0))
        if len(node.inputs) == 1:
            return OnnxNode(None, {}, list(node.inputs))
        if int(node.attrs["axis"]) % rank != 1 or any(ctx.const(i) is not None for i in node.inputs):
            raise LayerError("only a concatenation of computed maps along the channels (axis 1) is supported")
        return OnnxNode({"type": "concat"}, {}, list(node.inputs))


def binary(node, ctx, merge):
    """An Add, Mul, Sum, Sub or Div node: a ``merge`` layer of computed tensors, or an ``affine``
    layer when one operand is a constant (x + c, x * c, x - c, x / c, c - x...)."""
    consts = [ctx.const(name) for name in node.inputs]
    computed = [name for name, c in zip(node.inputs, consts) if c is None]
    if len(computed) == len(node.inputs) and merge:
        return OnnxNode({"type": merge}, {}, list(node.inputs))
    if len(node.inputs) != 2 or len(computed) != 1:
        raise LayerError(f"{node.op} is supported between a computed tensor and a constant"
                         + (", or between computed tensors" if merge else ""))
    first = consts[0] is None
    c = (consts[1] if first else consts[0]).astype(np.float32)
    if c.ndim > 3:  # (1, C, 1, 1) and the like: drop the batch axis
        if c.shape[0] != 1 or c.ndim > 4:
            raise LayerError(f"a constant of shape {c.shape} would change the batch")
        c = c[0]
    ones, zeros = np.ones_like(c), np.zeros_like(c)
    weight, bias = {"Add": (ones, c), "Sum": (ones, c), "Mul": (c, zeros),
                    "Sub": (ones, -c) if first else (-ones, c)}.get(node.op, (None, None))
    if node.op == "Div":
        if not first:
            raise LayerError("a constant divided by a tensor is not supported")
        weight, bias = 1 / c, zeros
    shape = [int(d) for d in (c.shape or (1,))]
    return OnnxNode({"type": "affine", "shape": shape}, {"weight": weight.reshape(shape), "bias": bias.reshape(shape)},
                    computed)

    def describe(self):
        return f"affine {list(self.shape)}"
