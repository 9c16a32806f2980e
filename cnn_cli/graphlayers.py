"""Layers of the networks people import: the activations and normalisations of classic image CNNs
that our own presets do not use (clip, hardsigmoid, hardswish, prelu, softmax, lrn), transpose, and
affine (a constant operand of ONNX's Add, Mul, Sub, Div). The merges (add, mul, concat) are in
``merges``.

Each follows ``cnn_cli.layers.Layer``: shape rule, forward, backward, ONNX
form, torch twin.
"""

from __future__ import annotations

import numpy as np

from . import functional as F
from .layers import Layer, LayerError, OnnxNode, maps_shape, torch_lambda
from .merges import binary, broadcast_shape, unbroadcast, with_unknown
from .trainable import Param


class Clip(Layer):
    """min(max(x, min), max): ReLU6 is clip 0, 6. The gradient passes where min < x < max."""

    kind = "clip"
    keeps_maps = True

    def __init__(self, min=0.0, max=6.0):
        for name, value in (("min", min), ("max", max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise LayerError(f"clip {name} must be a finite number, but got {value!r}")
        if min > max:
            raise LayerError(f"clip min ({min}) must not be above max ({max})")
        self.min, self.max = float(min), float(max)

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        return np.clip(x, np.float32(self.min), np.float32(self.max))

    def overwrite(self, x):
        return np.clip(x, np.float32(self.min), np.float32(self.max), out=x)

    def backward(self, grad):
        (x,) = self.saved
        return (grad * ((x > self.min) & (x < self.max))).astype(np.float32)

    def to_onnx(self, g, x, scope, prefix):
        return g.op("Clip", [x, g.const(f"{scope}/min", np.float32(self.min)),
                             g.const(f"{scope}/max", np.float32(self.max))], scope)

    def torch_twin(self, in_shape):
        return torch_lambda(lambda x: x.clamp(self.min, self.max))

    onnx_in = ("Clip",)

    @classmethod
    def from_onnx(cls, node, ctx):
        """Bounds as attributes (before opset 11) or constant inputs; a missing one is unbounded."""
        if ctx.opset < 11:
            low, high = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
        else:
            bounds = [ctx.const(n) if n else None for n in (list(node.inputs[1:]) + ["", ""])[:2]]
            if any(n and b is None for n, b in zip(node.inputs[1:3], bounds)):
                raise LayerError("the bounds must be constants")
            low, high = (-np.inf if b is None else float(b) for b in bounds)
        if not (np.isfinite(low) and np.isfinite(high)):
            if low == 0 and high == np.inf:  # a ReLU written as a clip
                return OnnxNode({"type": "relu"}, {}, [node.inputs[0]])
            raise LayerError(f"only finite bounds are supported, not [{low}, {high}]")
        return OnnxNode({"type": "clip", "min": float(low), "max": float(high)}, {}, [node.inputs[0]])

    def describe(self):
        return f"clip {self.min:g}, {self.max:g}"


class HardSigmoid(Layer):
    """max(0, min(1, alpha * x + beta)), as ONNX's HardSigmoid (torch's: alpha 1/6, beta 0.5)."""

    kind = "hardsigmoid"
    keeps_maps = True

    def __init__(self, alpha=1 / 6, beta=0.5):
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, x, train=False):
        z = x * np.float32(self.alpha) + np.float32(self.beta)
        if train:
            self.save_for_backward(z)
        return np.clip(z, 0, 1).astype(np.float32)

    def backward(self, grad):
        (z,) = self.saved
        return (grad * ((z > 0) & (z < 1)) * np.float32(self.alpha)).astype(np.float32)

    def to_onnx(self, g, x, scope, prefix):
        return g.op("HardSigmoid", [x], scope, alpha=self.alpha, beta=self.beta)

    def torch_twin(self, in_shape):
        return torch_lambda(lambda x: (x * self.alpha + self.beta).clamp(0, 1))

    onnx_in = ("HardSigmoid",)

    @classmethod
    def from_onnx(cls, node, ctx):
        table = {"type": "hardsigmoid", "alpha": float(node.attrs.get("alpha", 0.2)),
                 "beta": float(node.attrs.get("beta", 0.5))}
        return OnnxNode(table, {}, ctx.dynamic(node))

    def describe(self):
        return f"hardsigmoid {self.alpha:g}, {self.beta:g}"


class HardSwish(Layer):
    """x * hardsigmoid(x) with alpha 1/6 and beta 0.5 (MobileNetV3)."""

    kind = "hardswish"
    keeps_maps = True

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        return (x * np.clip(x / np.float32(6) + np.float32(0.5), 0, 1)).astype(np.float32)

    def backward(self, grad):
        (x,) = self.saved
        slope = np.where(x <= -3, 0, np.where(x >= 3, 1, x / np.float32(3) + np.float32(0.5)))
        return (grad * slope).astype(np.float32)

    def to_onnx(self, g, x, scope, prefix):
        return g.op("HardSwish", [x], scope)

    def torch_twin(self, in_shape):
        from torch import nn

        return nn.Hardswish()

    onnx_in = ("HardSwish",)

    @classmethod
    def from_onnx(cls, node, ctx):
        return OnnxNode({"type": "hardswish"}, {}, ctx.dynamic(node))


class PReLU(Param):
    """x where x > 0, else weight[c] * x: a learned slope per channel (``torch.nn.PReLU``)."""

    kind = "prelu"
    keeps_maps = True

    def __init__(self, init=0.25):
        self.init = float(init)
        self.params, self.buffers = {}, {}

    def build(self, in_shape, rng=None):
        c = in_shape[0]
        if self._fresh(rng):
            self.params = {"weight": np.full(c, self.init, np.float32)}
            self.zero_grad()
        if self.params["weight"].size not in (1, c):
            self._fits(self.params["weight"].size, c)
        return tuple(in_shape)

    def _slopes(self, x):
        w = self.params["weight"]
        return w.reshape((1, -1) + (1,) * (x.ndim - 2)) if w.size > 1 else w.reshape(())

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        return F.prelu(x, self.params["weight"])

    def overwrite(self, x):
        return F.prelu(x, self.params["weight"], in_place=True)

    def backward(self, grad):
        (x,) = self.saved
        axes = (0, *range(2, x.ndim)) if self.params["weight"].size > 1 else None
        self.grads["weight"] += np.sum(grad * np.minimum(x, 0), axis=axes).reshape(self.grads["weight"].shape)
        return np.where(x > 0, grad, grad * self._slopes(x)).astype(np.float32)

    def plan(self, in_shape):
        return tuple(in_shape), in_shape[0] or 0

    def to_onnx(self, g, x, scope, prefix):
        w = self.params["weight"]
        return g.op("PRelu", [x, g.const(f"{prefix}weight", w.reshape((-1, 1, 1)) if w.size > 1 else w)], scope)

    def torch_twin(self, in_shape):
        from torch import nn

        return self.load_into_torch(nn.PReLU(self.params["weight"].size))

    onnx_in = ("PRelu",)

    @classmethod
    def from_onnx(cls, node, ctx):
        """Slopes of shape (C, 1, 1), (1, C, 1, 1), (C,) or one for all."""
        slope = ctx.const(node.inputs[1])
        if slope is None or (slope.size > 1 and sorted(slope.shape)[:-1] != [1] * (slope.ndim - 1)):
            raise LayerError("the slope must be a constant, one per channel or one for all")
        return OnnxNode({"type": "prelu"}, {"weight": slope.reshape(-1).astype(np.float32)}, [node.inputs[0]])


class Softmax(Layer):
    """exp(x) / sum(exp(x)) over the features of a flat input (N, F), or the channels of maps."""

    kind = "softmax"

    def forward(self, x, train=False):
        z = np.exp(x - x.max(axis=1, keepdims=True))
        y = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
        if train:
            self.save_for_backward(y)
        return y

    def backward(self, grad):
        (y,) = self.saved
        return (y * (grad - np.sum(grad * y, axis=1, keepdims=True))).astype(np.float32)

    def window(self):
        return (1, 1), (1, 1)

    def to_onnx(self, g, x, scope, prefix):
        return g.op("Softmax", [x], scope, axis=1)

    def torch_twin(self, in_shape):
        return torch_lambda(lambda x: x.softmax(1))

    onnx_in = ("Softmax",)

    @classmethod
    def from_onnx(cls, node, ctx):
        """Over axis 1: before opset 13 the input is flattened from ``axis``, the same for (N, F)."""
        shape = ctx.shape(node.inputs[0]) or ()
        axis = int(node.attrs.get("axis", 1 if ctx.opset < 13 else -1)) % max(len(shape), 1)
        if axis != 1 or (ctx.opset < 13 and len(shape) != 2) or (ctx.opset >= 13 and len(shape) not in (2, 4)):
            raise LayerError(f"only a softmax over the features or channels (axis 1) is supported, "
                             f"not axis {axis} of {shape}")
        return OnnxNode({"type": "softmax"}, {}, [node.inputs[0]])


class LRN(Layer):
    """Local response normalisation across channels (Krizhevsky et al., 2012), as ONNX's LRN:
    y = x / (bias + alpha / size * sum of x² over ``size`` neighbouring channels) ** beta."""

    kind = "lrn"
    keeps_maps = True

    def __init__(self, size=5, alpha=1e-4, beta=0.75, bias=1.0):
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 255:
            raise LayerError(f"lrn size must be a whole number from 1 to 255, but got {size!r}")
        self.size, self.alpha, self.beta, self.bias = size, float(alpha), float(beta), float(bias)

    def build(self, in_shape, rng=None):
        return maps_shape(in_shape, self.kind)

    def _window_sum(self, sq):
        """Sum over channels c - floor((size-1)/2) .. c + ceil((size-1)/2), as ONNX defines it."""
        before, after = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        padded = np.pad(sq, ((0, 0), (before, after), (0, 0), (0, 0)))
        csum = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1, dtype=np.float64)], axis=1)
        return (csum[:, self.size:] - csum[:, :-self.size]).astype(np.float32)

    def forward(self, x, train=False):
        d = np.float32(self.bias) + np.float32(self.alpha / self.size) * self._window_sum(x * x)
        y = (x * d ** np.float32(-self.beta)).astype(np.float32)
        if train:
            self.save_for_backward(x, d)
        return y

    def backward(self, grad):
        x, d = self.saved
        # dy_c/dx_k = δ_ck d_c^-β − 2αβ/size · x_c x_k d_c^(-β-1), for k in c's window.
        first = grad * d ** np.float32(-self.beta)
        inner = grad * x * d ** np.float32(-self.beta - 1)
        # k is in c's window exactly when c is in k's mirrored window.
        before, after = (self.size - 1) // 2, self.size - 1 - (self.size - 1) // 2
        padded = np.pad(inner, ((0, 0), (after, before), (0, 0), (0, 0)))
        csum = np.concatenate([np.zeros_like(padded[:, :1]), np.cumsum(padded, axis=1, dtype=np.float64)], axis=1)
        mirrored = (csum[:, self.size:] - csum[:, :-self.size]).astype(np.float32)
        return (first - np.float32(2 * self.alpha * self.beta / self.size) * x * mirrored).astype(np.float32)

    def to_onnx(self, g, x, scope, prefix):
        return g.op("LRN", [x], scope, size=self.size, alpha=self.alpha, beta=self.beta, bias=self.bias)

    def torch_twin(self, in_shape):
        from torch import nn

        return nn.LocalResponseNorm(self.size, self.alpha, self.beta, self.bias)

    onnx_in = ("LRN",)

    @classmethod
    def from_onnx(cls, node, ctx):
        table = {"type": "lrn", "size": int(node.attrs["size"]), "alpha": float(node.attrs.get("alpha", 1e-4)),
                 "beta": float(node.attrs.get("beta", 0.75)), "bias": float(node.attrs.get("bias", 1.0))}
        return OnnxNode(table, {}, [node.inputs[0]])

    def describe(self):
        return f"lrn {self.size}, alpha {self.alpha:g}, beta {self.beta:g}, bias {self.bias:g}"


class Transpose(Layer):
    """The axes of each example permuted: ``perm`` orders (C, H, W) as 0, 1, 2 (a flatten
    after (N, W, H, C)-order, as MTCNN's R- and O-Net write it, is ``perm = [2, 1, 0]``)."""

    kind = "transpose"

    def __init__(self, perm=(0, 1, 2)):
        if not isinstance(perm, (list, tuple)) or sorted(perm) != list(range(len(perm))) or len(perm) != 3:
            raise LayerError(f"transpose perm must order the axes 0, 1, 2 of (C, H, W), but got {perm!r}")
        self.perm = [int(p) for p in perm]

    def build(self, in_shape, rng=None):
        shape = maps_shape(in_shape, self.kind)
        return tuple(shape[p] for p in self.perm)

    def channel_names(self, names):
        return list(names) if self.perm[0] == 0 else [f"axis{self.perm[0]}.{i}" for i in range(len(names))]

    def forward(self, x, train=False):
        return np.ascontiguousarray(x.transpose(0, *(p + 1 for p in self.perm)))

    def backward(self, grad):
        return np.ascontiguousarray(grad.transpose(0, *(int(p) + 1 for p in np.argsort(self.perm))))

    def window(self):
        return None  # rows and columns change places: the field along rows is no longer defined

    def to_onnx(self, g, x, scope, prefix):
        return g.op("Transpose", [x], scope, perm=[0, *(p + 1 for p in self.perm)])

    def torch_twin(self, in_shape):
        return torch_lambda(lambda x: x.permute(0, *(p + 1 for p in self.perm)))

    onnx_in = ("Transpose",)

    @classmethod
    def from_onnx(cls, node, ctx):
        perm = list(node.attrs.get("perm", [0, 3, 2, 1]))
        if len(perm) != 4 or perm[0] != 0:
            raise LayerError(f"only a permutation of (C, H, W) that keeps the batch first is supported, not {perm}")
        return OnnxNode({"type": "transpose", "perm": [p - 1 for p in perm[1:]]}, {}, [node.inputs[0]])

    def describe(self):
        return f"transpose {self.perm}"


class Affine(Param):
    """y = x * weight + bias, with ``weight`` and ``bias`` of ``shape``, broadcast over each example
    (a constant scale or shift in an imported graph: Mul, Div, Add or Sub by a constant)."""

    kind = "affine"
    keeps_maps = True

    def __init__(self, shape=(1,)):
        if not isinstance(shape, (list, tuple)) or len(shape) > 3 or \
                not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 20 for d in shape):
            raise LayerError(f"affine shape must list up to 3 sizes, but got {shape!r}")
        self.shape = tuple(shape)
        self.params, self.buffers = {}, {}

    def build(self, in_shape, rng=None):
        if self._fresh(rng):
            self.params = {"weight": np.ones(self.shape, np.float32), "bias": np.zeros(self.shape, np.float32)}
            self.zero_grad()
        return with_unknown(broadcast_shape([in_shape, self.shape], self.kind), [in_shape])

    def plan(self, in_shape):
        return self.build(in_shape) if self.params else \
            with_unknown(broadcast_shape([in_shape, self.shape], self.kind), [in_shape]), 2 * int(np.prod(self.shape))

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        return (x * self.params["weight"] + self.params["bias"]).astype(np.float32)

    def backward(self, grad):
        (x,) = self.saved
        self.grads["weight"] += unbroadcast(grad * x, self.shape).sum(axis=0).reshape(self.shape)
        self.grads["bias"] += unbroadcast(grad, self.shape).sum(axis=0).reshape(self.shape)
        return unbroadcast(grad * self.params["weight"], x.shape[1:]).astype(np.float32)

    def to_onnx(self, g, x, scope, prefix):
        scaled = g.op("Mul", [x, g.const(f"{prefix}weight", self.params["weight"])], scope)
        return g.op("Add", [scaled, g.const(f"{prefix}bias", self.params["bias"])], scope)

    def torch_twin(self, in_shape):
        import torch
        from torch import nn

        class TorchAffine(nn.Module):
            def __init__(self, shape):
                super().__init__()
                self.weight = nn.Parameter(torch.ones(shape))
                self.bias = nn.Parameter(torch.zeros(shape))

            def forward(self, x):
                return x * self.weight + self.bias

        return self.load_into_torch(TorchAffine(self.shape))

    onnx_in = ("Sub", "Div")

    @classmethod
    def from_onnx(cls, node, ctx):
        return binary(node, ctx, None)
