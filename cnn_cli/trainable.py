"""The layers that only trained networks use, as in ``torch.nn``: Conv2d, Linear,
Flatten, Dropout and BatchNorm2d, and ``Param``, the base of layers with parameters.

They follow the protocol of ``cnn_cli.layers.Layer``: ``build(in_shape, rng)``
sizes a layer from its input shape (C, H, W) or (F,), creates its parameters
and returns its output shape; ``forward(x, train)`` and ``backward(grad_y) ->
grad_x`` run on the engine. Parameters use PyTorch's layouts and state-dict
names, so the weights load into the equivalent ``torch.nn`` module.
"""

from __future__ import annotations

import numpy as np

import copy

from . import functional as F
from .layers import Layer, LayerError, OnnxNode, maps_out, maps_shape, onnx_pads, onnx_pair, torch_conv

#: Limits that catch typos in architecture files before memory is allocated.
MAX_CHANNELS = 4096
MAX_KERNEL = 63
MAX_PARAMS = 2**27  # VGG's first classifier layer, 25088 x 4096, has 102.8 M weights


def whole_number(name, value, maximum, minimum=1):
    """An int in [minimum, maximum], or a LayerError that names the field."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= maximum:
        raise LayerError(f"{name} must be a whole number from {minimum} to {maximum}, but got {value!r}")
    return int(value)


def torch_uniform(rng, shape, fan_in):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): torch's default for the weights and biases of
    ``nn.Linear`` and ``nn.Conv2d``.

    For weights it is He et al.'s (2015) uniform init with torch's gain for a
    leaky ReLU of slope sqrt(5) (``kaiming_uniform_(a=sqrt(5))``), a third of
    the variance of He-normal's 2/fan_in. Measured against He-normal with our
    presets and torch's, it starts from logits near zero (a loss near
    log(classes), where He-normal started a 3-class LeNet at 4.2) and is the
    init a user of torch gets, so the same architecture and recipe train alike.
    """
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


class Grads(dict):
    """A layer's gradients, each made (zeros like its parameter) when first read: a network that only
    runs forward never holds them (45 MiB for a ResNet-18)."""

    def __init__(self, params):
        super().__init__()
        self._params = params

    def __missing__(self, key):
        self[key] = value = np.zeros_like(self._params[key])
        return value


class Param(Layer):
    """A layer with parameters; ``grads`` mirrors ``params`` and is summed into by ``backward``."""

    def _fresh(self, rng):
        """Whether ``build`` creates the parameters: with an ``rng``, or when there are none yet."""
        if rng is None and not self.params:
            raise LayerError(f"{self.kind} has no parameters yet; build it with an rng to create them")
        return rng is not None

    def _fits(self, built, given):
        """Refuse an input other than the one the kept parameters were made for."""
        if built != given:
            raise LayerError(f"{self.kind} was built for {built} input channels or features, but gets {given}")

    def zero_grad(self):
        self.grads = Grads(self.params)

    @property
    def num_params(self):
        return sum(v.size for v in self.params.values())

    def plan(self, in_shape):
        """Built on a copy (with throwaway weights if it has none): layers that allocate much count instead."""
        layer = copy.copy(self)
        out = layer.build(in_shape, None if layer.params else np.random.default_rng(0))
        return out, layer.num_params

    def load_into_torch(self, module):
        """Copy this layer's parameters and buffers into the torch ``module`` (same names); returns it."""
        import torch

        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state()}, strict=True)
        return module

    def state(self, prefix=""):
        """(name, array) pairs in torch's state-dict order: parameters, then buffers."""
        for k, v in self.params.items():
            yield prefix + k, v
        for k, v in self.buffers.items():
            yield prefix + k, v


class Conv2d(Param):
    """Learned convolution, like ``torch.nn.Conv2d``: weight (C_out, C_in/groups, kH, kW).

    Saved for backward: the input (x,), for the weight gradient. A fused conv
    + pool step (``Network``) saves it through ``save_for_backward`` too.
    """

    kind = "conv"
    cam_source = True

    def __init__(self, out_channels, kernel_size=3, *, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros"):
        self.out_channels = whole_number("out_channels", out_channels, MAX_CHANNELS)
        self.kernel_size = F.pair("kernel_size", kernel_size, 1)
        whole_number("kernel_size", max(self.kernel_size), MAX_KERNEL)
        self.use_bias = bias
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                            padding_mode=padding_mode)
        self.params, self.buffers = {}, {}

    def build(self, in_shape, rng=None):
        c_in, h, w = maps_shape(in_shape, self.kind)
        g = self.options["groups"]
        if c_in % g or self.out_channels % g:
            raise LayerError(f"groups={g} must divide the input channels ({c_in}) and out_channels ({self.out_channels})")
        if self._fresh(rng):
            fan_in = c_in // g * self.kernel_size[0] * self.kernel_size[1]
            self.params = {"weight": torch_uniform(rng, (self.out_channels, c_in // g, *self.kernel_size), fan_in)}
            if self.use_bias:
                self.params["bias"] = torch_uniform(rng, (self.out_channels,), fan_in)
            self.zero_grad()
        self._fits(self.params["weight"].shape[1] * g, c_in)
        if h is None:
            F.check_conv_options(**{k: v for k, v in self.options.items() if k != "groups"})
        weight_shape = self.params["weight"].shape
        return maps_out(self.out_channels, h, w, lambda h, w: F.ConvSpec(
            (1, c_in, h, w), weight_shape, algorithm="auto", **self.options).out_hw)

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        return F.conv2d(x, self.params["weight"], self.params.get("bias"), **self.options)

    #: False when nothing needs dL/dx (the network's first layer), which saves a convolution.
    input_grad = True

    def backward(self, grad):
        (x,) = self.saved
        gx, gw, gb = F.conv2d_backward(x, self.params["weight"], grad, input_grad=self.input_grad,
                                       **self.options)
        self.grads["weight"] += gw
        if self.use_bias:
            self.grads["bias"] += gb
        return gx

    def channel_names(self, names):
        return [f"filter{c}" for c in range(self.out_channels)]

    def window(self):
        s = F.pair("stride", self.options["stride"], 1)
        d = F.pair("dilation", self.options["dilation"], 1)
        k = self.kernel_size
        return (d[0] * (k[0] - 1) + 1, s[0]), (d[1] * (k[1] - 1) + 1, s[1])

    def plan(self, in_shape):
        c_in, h, w = in_shape if len(in_shape) == 3 else (None, None, None)
        if c_in is None:
            return self.build(in_shape), 0  # refuses a flat input, saying where the layer belongs
        g = self.options["groups"]
        weight = (self.out_channels, max(c_in // g, 1), *self.kernel_size)
        out = (self.out_channels, None, None) if h is None else (self.out_channels, *F.ConvSpec(
            (1, c_in, h, w), weight, algorithm="auto", **self.options).out_hw)
        return out, F.n_elements(weight) + (self.out_channels if self.use_bias else 0)

    def to_onnx(self, g, x, scope, prefix):
        return g.conv(x, self.params["weight"], self.params.get("bias"), self.options, scope,
                      (f"{prefix}weight", f"{prefix}bias"))

    def torch_twin(self, in_shape):
        return torch_conv(in_shape[0], self.params["weight"], self.params.get("bias"), self.options["groups"],
                          self.options)

    onnx_in = ("Conv",)

    @classmethod
    def from_onnx(cls, node, ctx):
        weight, bias = ctx.const(node.inputs[1]), ctx.const(node.inputs[2] if len(node.inputs) > 2 else "")
        if weight is None or weight.ndim != 4:
            raise LayerError("the weights must be a constant (C_out, C_in/groups, kH, kW) tensor")
        table = {"type": "conv", "out_channels": int(weight.shape[0]), "kernel_size": list(weight.shape[2:]),
                 "stride": onnx_pair(node.attrs.get("strides"), "strides", 1),
                 "padding": onnx_pads(node, ctx, weight.shape[2:]),
                 "dilation": onnx_pair(node.attrs.get("dilations"), "dilations", 1),
                 "groups": int(node.attrs.get("group", 1)), "bias": bias is not None}
        arrays = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        return OnnxNode(table, arrays, [node.inputs[0]])

    def describe(self):
        return (f"conv {self.out_channels}x{self.kernel_size[0]}x{self.kernel_size[1]}, "
                f"stride {self.options['stride']}, padding {self.options['padding']!r}")


class Linear(Param):
    """y = x W^T + b, with W (out_features, in_features) as in ``torch.nn.Linear``. Saves its input (x,)."""

    kind = "linear"

    def __init__(self, out_features, *, bias=True):
        self.out_features, self.use_bias = whole_number("out_features", out_features, 1_000_000), bias
        self.params, self.buffers = {}, {}

    def build(self, in_shape, rng=None):
        if len(in_shape) != 1:
            raise LayerError(f"linear needs a flat input; put a flatten layer before it (input is {tuple(in_shape)})")
        features = in_shape[0]
        if features * self.out_features > MAX_PARAMS:
            raise LayerError(f"linear {features} -> {self.out_features} would have over {MAX_PARAMS:,} weights; "
                             "pool more before it or use a smaller --image-size")
        if self._fresh(rng):
            self.params = {"weight": torch_uniform(rng, (self.out_features, features), features)}
            if self.use_bias:
                self.params["bias"] = torch_uniform(rng, (self.out_features,), features)
            self.zero_grad()
        self._fits(self.params["weight"].shape[1], features)
        return (self.out_features,)

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        y = x @ self.params["weight"].T
        if self.use_bias:
            y += self.params["bias"]
        return y

    def backward(self, grad):
        (x,) = self.saved
        self.grads["weight"] += grad.T @ x
        if self.use_bias:
            self.grads["bias"] += grad.sum(axis=0)
        return grad @ self.params["weight"]

    def window(self):
        return None

    def plan(self, in_shape):
        if len(in_shape) != 1:
            return self.build(in_shape), 0  # refuses maps, asking for a flatten layer
        features = in_shape[0] or 0  # None: the image size, and so the width, is not known yet
        return (self.out_features,), (features + 1) * self.out_features

    def to_onnx(self, g, x, scope, prefix):
        inputs = [x, g.const(f"{prefix}weight", self.params["weight"])]
        if self.use_bias:
            inputs.append(g.const(f"{prefix}bias", self.params["bias"]))
        return g.op("Gemm", inputs, scope, transB=1)

    def torch_twin(self, in_shape):
        from torch import nn

        return self.load_into_torch(nn.Linear(in_shape[0], self.out_features, bias=self.use_bias))

    onnx_in = ("Gemm", "MatMul")

    @classmethod
    def from_onnx(cls, node, ctx):
        """Y = alpha * A B' + beta * C with B' = B or Bᵀ (transB) and constant B, C: weight alpha * B'ᵀ."""
        b = ctx.const(node.inputs[1])
        if b is None or b.ndim != 2 or node.attrs.get("transA", 0) or ctx.const(node.inputs[0]) is not None:
            raise LayerError("only x @ W with a constant 2-D W is supported (no transA, no constant x)")
        weight = (b if node.attrs.get("transB", 0) else b.T) * np.float32(node.attrs.get("alpha", 1.0))
        c = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        arrays = {"weight": np.ascontiguousarray(weight, np.float32)}
        if c is not None:
            arrays["bias"] = np.broadcast_to(c * np.float32(node.attrs.get("beta", 1.0)),
                                             (weight.shape[0],)).astype(np.float32)
        table = {"type": "linear", "out_features": int(weight.shape[0]), "bias": c is not None}
        return OnnxNode(table, arrays, [node.inputs[0]])

    def describe(self):
        return f"linear {self.out_features}"


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in C order, as ``torch.flatten(x, 1)``. Saves the input's shape."""

    kind = "flatten"

    def build(self, in_shape, rng=None):
        return (None,) if None in in_shape else (F.n_elements(in_shape),)

    def forward(self, x, train=False):
        self.save_for_backward(x.shape)
        return x.reshape(x.shape[0], -1)

    def window(self):
        return None

    def backward(self, grad):
        (x_shape,) = self.saved
        return grad.reshape(x_shape)

    def to_onnx(self, g, x, scope, prefix):
        return g.op("Flatten", [x], scope, axis=1)

    def torch_twin(self, in_shape):
        from torch import nn

        return nn.Flatten()

    onnx_in = ("Flatten", "Reshape")

    @classmethod
    def from_onnx(cls, node, ctx):
        """Flatten from axis 1, or a Reshape to (N, -1): what a classifier head does."""
        out = ctx.shape(node.outputs[0])
        if node.op == "Flatten":
            if int(node.attrs.get("axis", 1)) != 1:
                raise LayerError("only Flatten from axis 1 is supported")
        elif out is None or len(out) != 2 or ctx.const(node.inputs[1]) is None:
            raise LayerError(f"only a Reshape to (N, features) is supported, not to {out}")
        return OnnxNode({"type": "flatten"}, {}, [node.inputs[0]])


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability p and scale the rest by 1/(1-p).

    Saves the mask it multiplied by (None when it let everything through).
    """

    kind = "dropout"

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise LayerError(f"dropout p must be a number in [0, 1), but got {p!r}")
        self.p = p
        self.rng = np.random.default_rng(0)  # replaced by the trainer for every batch

    def forward(self, x, train=False):
        if not train or self.p == 0:
            self.save_for_backward(None)
            return x
        mask = (self.rng.random(x.shape) >= self.p).astype(np.float32) / np.float32(1 - self.p)
        self.save_for_backward(mask)
        return x * mask

    def backward(self, grad):
        (mask,) = self.saved
        return grad if mask is None else grad * mask

    def evaluating(self):
        return _Identity()

    def to_onnx(self, g, x, scope, prefix):
        return x  # inference: dropout lets everything through

    def torch_twin(self, in_shape):
        from torch import nn

        return nn.Dropout(self.p)

    def describe(self):
        return f"dropout {self.p}"


class _Identity(Layer):
    """Dropout in eval mode."""

    kind = "dropout"

    def forward(self, x, train=False):
        return x

    def backward(self, grad):
        return grad


class BatchNorm2d(Param):
    """``torch.nn.BatchNorm2d``: batch statistics in training (biased variance to
    normalise, unbiased for the running estimate, momentum 0.1), running ones in eval.
    Saves (normalised input, 1/std, the output when a ReLU was fused, else None)."""

    kind = "batchnorm"
    keeps_maps = True

    def __init__(self, eps=1e-5, momentum=0.1):
        self.eps, self.momentum = eps, momentum
        self.params, self.buffers = {}, {}

    def build(self, in_shape, rng=None):
        c = maps_shape(in_shape, self.kind)[0]
        if self._fresh(rng):
            self.params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
            self.buffers = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32),
                            "num_batches_tracked": np.zeros((), np.int64)}
            self.zero_grad()
        self._fits(self.params["weight"].size, c)
        return tuple(in_shape)

    def forward(self, x, train=False, relu=False):
        """``relu=True`` (the ResNet block's) applies a ReLU to the output in the same pass."""
        if train:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            y, xhat, mean, var = F.batch_norm_train(x, self.params["weight"], self.params["bias"], self.eps, relu)
            m = self.momentum
            self.buffers["running_mean"][:] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"][:] = (1 - m) * self.buffers["running_var"] + m * var * count / max(count - 1, 1)
            self.buffers["num_batches_tracked"] += 1
            self.save_for_backward(xhat, (1.0 / np.sqrt(var + self.eps)).astype(np.float32), y if relu else None)
            return y
        if relu:
            return np.maximum(self.forward(x), 0)
        return self._normalize(x, np.empty(x.shape, np.float32))  # one new array, where numpy's expression made four

    def overwrite(self, x):
        return self._normalize(x, x)

    def _normalize(self, x, out):
        """Eval mode's output in ``out``: (x - running mean) * 1/std * weight + bias, float32, each
        operation in place (the operations and their order of the expression eval mode had)."""
        mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(np.float32)
        np.subtract(x, mean[None, :, None, None].astype(np.float32), out=out)
        out *= inv_std[None, :, None, None]
        out *= self.params["weight"][None, :, None, None]
        out += self.params["bias"][None, :, None, None]
        return out

    def backward(self, grad, relu_out=None):
        """``relu_out``: the output of a ReLU after this layer (a residual block's, after its sum), where
        grad is zero unless it is positive; the kernel masks grad as it reads it, as for a fused ReLU."""
        xhat, inv_std, fused = self.saved
        mask = fused if relu_out is None else relu_out
        gx, grad_weight, grad_bias = F.batch_norm_backward(grad, xhat, inv_std, self.params["weight"], mask)
        self.grads["weight"] += grad_weight
        self.grads["bias"] += grad_bias
        return gx

    def plan(self, in_shape):
        if len(in_shape) != 3:
            return self.build(in_shape), 0
        return tuple(in_shape), 4 * in_shape[0] + 1  # weight, bias, running mean and variance, a count

    def evaluating(self):
        return _FrozenBatchNorm(self)

    def to_onnx(self, g, x, scope, prefix):
        names = ("weight", "bias", "running_mean", "running_var")
        arrays = {**self.params, **self.buffers}
        inputs = [x] + [g.const(f"{prefix}{n}", arrays[n]) for n in names]
        return g.op("BatchNormalization", inputs, scope, epsilon=float(self.eps))

    def torch_twin(self, in_shape):
        from torch import nn

        return self.load_into_torch(nn.BatchNorm2d(in_shape[0], eps=self.eps, momentum=self.momentum))

    onnx_in = ("BatchNormalization",)

    @classmethod
    def from_onnx(cls, node, ctx):
        """The inference form: the ``momentum`` attribute of old opsets is about training, not a switch."""
        arrays = [ctx.const(name) for name in node.inputs[1:5]]
        if any(a is None or a.ndim != 1 for a in arrays) or ctx.used_beyond_first(node):
            raise LayerError("batch normalisation needs constant (C,) scale, bias, mean and variance, "
                             "and only its first output (training mode is not supported)")
        names = ("weight", "bias", "running_mean", "running_var")
        out = {n: a.astype(np.float32) for n, a in zip(names, arrays)}
        out["num_batches_tracked"] = np.zeros((), np.int64)
        return OnnxNode({"type": "batchnorm", "eps": float(node.attrs.get("epsilon", 1e-5))}, out, [node.inputs[0]])


class _FrozenBatchNorm(Layer):
    """A BatchNorm2d as eval mode runs it: per channel, the affine map
    y = (x - running_mean) * weight / sqrt(running_var + eps) + bias, whose
    gradient is grad * weight / sqrt(running_var + eps)."""

    kind = "batchnorm"

    def __init__(self, bn):
        self.bn = bn

    def forward(self, x, train=False, relu=False):
        y = self.bn.forward(x, train=False, relu=relu)
        self.save_for_backward(y if relu else None)
        return y

    def overwrite(self, x):
        return self.bn.overwrite(x)

    def backward(self, grad, relu_out=None):
        bn = self.bn
        if relu_out is None:
            relu_out = self.saved[0] if self.saved else None
        if relu_out is not None:
            grad = np.where(relu_out > 0, grad, np.float32(0))
        scale = bn.params["weight"] / np.sqrt(bn.buffers["running_var"] + np.float32(bn.eps))
        return (grad * scale[None, :, None, None]).astype(np.float32)
