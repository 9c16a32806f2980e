"""Trainable layers, the network that strings them together, and the loss.

Every layer has ``forward(x, train)`` and ``backward(grad_y) -> grad_x`` on
the engine; parameters use PyTorch's layouts and state-dict names, so the
weights load into the equivalent ``torch.nn`` module. ``build(shape)`` sizes a
layer from its input shape (C, H, W) or (F,) and returns its output shape.
"""

from __future__ import annotations

import numpy as np

from . import functional as F
from .layers import Activation, Layer, LayerError, Pool


#: Limits that catch typos in architecture files before memory is allocated.
MAX_CHANNELS = 4096
MAX_KERNEL = 63
MAX_PARAMS = 50_000_000


def _count(name, value, maximum, minimum=1):
    """An int in [minimum, maximum], or a LayerError that names the field."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not minimum <= value <= maximum:
        raise LayerError(f"{name} must be a whole number from {minimum} to {maximum}, but got {value!r}")
    return int(value)


def he_normal(rng, shape, fan_in):
    """He et al. (2015): N(0, 2 / fan_in), right for layers followed by ReLU."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


class Param(Layer):
    """A layer with parameters; ``grads`` mirrors ``params`` and is summed into by ``backward``."""

    in_pipelines = False

    def zero_grad(self):
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}

    @property
    def num_params(self):
        return sum(v.size for v in self.params.values())

    def state(self, prefix=""):
        """(name, array) pairs in torch's state-dict order: parameters, then buffers."""
        for k, v in self.params.items():
            yield prefix + k, v
        for k, v in self.buffers.items():
            yield prefix + k, v


class Conv2d(Param):
    """Learned convolution, like ``torch.nn.Conv2d``: weight (C_out, C_in/groups, kH, kW)."""

    kind = "conv"

    def __init__(self, out_channels, kernel_size=3, *, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros"):
        self.out_channels = _count("out_channels", out_channels, MAX_CHANNELS)
        self.kernel_size = F.pair("kernel_size", kernel_size, 1)
        _count("kernel_size", max(self.kernel_size), MAX_KERNEL)
        self.use_bias = bias
        self.options = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                            padding_mode=padding_mode)
        self.params, self.buffers = {}, {}

    def build(self, shape, rng):
        c_in, h, w = _spatial(shape, "conv")
        g = self.options["groups"]
        if c_in % g or self.out_channels % g:
            raise LayerError(f"groups={g} must divide the input channels ({c_in}) and out_channels ({self.out_channels})")
        fan_in = c_in // g * self.kernel_size[0] * self.kernel_size[1]
        self.params = {"weight": he_normal(rng, (self.out_channels, c_in // g, *self.kernel_size), fan_in)}
        if self.use_bias:
            self.params["bias"] = np.zeros(self.out_channels, np.float32)
        self.zero_grad()
        spec = F.ConvSpec((1, c_in, h, w), self.params["weight"].shape, algorithm="auto", **self.options)
        return (self.out_channels, *spec.out_hw)

    def forward(self, x, train=False):
        if train:
            self._x = x
        return F.conv2d(x, self.params["weight"], self.params.get("bias"), **self.options)

    #: False when nothing needs dL/dx (the network's first layer), which saves a convolution.
    input_grad = True

    def backward(self, grad):
        gx, gw, gb = F.conv2d_backward(self._x, self.params["weight"], grad, input_grad=self.input_grad,
                                       **self.options)
        self.grads["weight"] += gw
        if self.use_bias:
            self.grads["bias"] += gb
        return gx

    def bind(self, channels):
        return [f"filter{c}" for c in range(self.out_channels)]

    def out_hw(self, h, w):
        return F.ConvSpec((1, self.params["weight"].shape[1] * self.options["groups"], h, w),
                       self.params["weight"].shape, algorithm="auto", **self.options).out_hw

    def window(self):
        s = F.pair("stride", self.options["stride"], 1)
        d = F.pair("dilation", self.options["dilation"], 1)
        k = self.kernel_size
        return (d[0] * (k[0] - 1) + 1, s[0]), (d[1] * (k[1] - 1) + 1, s[1])

    def describe(self):
        return (f"conv {self.out_channels}x{self.kernel_size[0]}x{self.kernel_size[1]}, "
                f"stride {self.options['stride']}, padding {self.options['padding']!r}")


class Linear(Param):
    """y = x W^T + b, with W (out_features, in_features) as in ``torch.nn.Linear``."""

    kind = "linear"

    def __init__(self, out_features, *, bias=True):
        self.out_features, self.use_bias = _count("out_features", out_features, 1_000_000), bias
        self.params, self.buffers = {}, {}

    def build(self, shape, rng):
        if len(shape) != 1:
            raise LayerError(f"linear needs a flat input; put a flatten layer before it (input is {shape})")
        if shape[0] * self.out_features > MAX_PARAMS:
            raise LayerError(f"linear {shape[0]} -> {self.out_features} would have over {MAX_PARAMS} weights; "
                             "pool more before it or use a smaller --image-size")
        self.params = {"weight": he_normal(rng, (self.out_features, shape[0]), shape[0])}
        if self.use_bias:
            self.params["bias"] = np.zeros(self.out_features, np.float32)
        self.zero_grad()
        return (self.out_features,)

    def forward(self, x, train=False):
        if train:
            self._x = x
        y = x @ self.params["weight"].T
        if self.use_bias:
            y += self.params["bias"]
        return y

    def backward(self, grad):
        self.grads["weight"] += grad.T @ self._x
        if self.use_bias:
            self.grads["bias"] += grad.sum(axis=0)
        return grad @ self.params["weight"]

    def window(self):
        return None

    def describe(self):
        return f"linear {self.out_features}"


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W) in C order, as ``torch.flatten(x, 1)``."""

    kind = "flatten"
    in_pipelines = False

    def build(self, shape, rng):
        return (int(np.prod(shape)),)

    def forward(self, x, train=False):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def window(self):
        return None

    def backward(self, grad):
        return grad.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout: in training, zero each value with probability p and scale the rest by 1/(1-p)."""

    kind = "dropout"
    in_pipelines = False

    def __init__(self, p=0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
            raise LayerError(f"dropout p must be a number in [0, 1), but got {p!r}")
        self.p = p
        self.rng = np.random.default_rng(0)  # replaced by the trainer for every batch

    def build(self, shape, rng):
        return shape

    def forward(self, x, train=False):
        if not train or self.p == 0:
            self._mask = None
            return x
        self._mask = (self.rng.random(x.shape) >= self.p).astype(np.float32) / np.float32(1 - self.p)
        return x * self._mask

    def backward(self, grad):
        return grad if self._mask is None else grad * self._mask

    def describe(self):
        return f"dropout {self.p}"


class BatchNorm2d(Param):
    """``torch.nn.BatchNorm2d``: batch statistics in training (biased variance to
    normalise, unbiased for the running estimate, momentum 0.1), running ones in eval."""

    kind = "batchnorm"

    def __init__(self, eps=1e-5, momentum=0.1):
        self.eps, self.momentum = eps, momentum
        self.params, self.buffers = {}, {}

    def build(self, shape, rng):
        c = _spatial(shape, "batchnorm")[0]
        self.params = {"weight": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}
        self.buffers = {"running_mean": np.zeros(c, np.float32), "running_var": np.ones(c, np.float32),
                        "num_batches_tracked": np.zeros((), np.int64)}
        self.zero_grad()
        return shape

    def forward(self, x, train=False):
        gamma, beta = self.params["weight"], self.params["bias"]
        if train:
            count = x.shape[0] * x.shape[2] * x.shape[3]
            mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
            var = x.var(axis=(0, 2, 3), dtype=np.float64)
            m = self.momentum
            self.buffers["running_mean"][:] = (1 - m) * self.buffers["running_mean"] + m * mean
            self.buffers["running_var"][:] = (1 - m) * self.buffers["running_var"] + m * var * count / max(count - 1, 1)
            self.buffers["num_batches_tracked"] += 1
        else:
            mean, var = self.buffers["running_mean"], self.buffers["running_var"]
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(np.float32)
        xhat = (x - mean[None, :, None, None].astype(np.float32)) * inv_std[None, :, None, None]
        if train:
            self._saved = (xhat, inv_std)
        return (xhat * gamma[None, :, None, None] + beta[None, :, None, None]).astype(np.float32)

    def backward(self, grad):
        xhat, inv_std = self._saved
        self.grads["weight"] += (grad * xhat).sum(axis=(0, 2, 3))
        self.grads["bias"] += grad.sum(axis=(0, 2, 3))
        g = grad * self.params["weight"][None, :, None, None]
        mean_g = g.mean(axis=(0, 2, 3), keepdims=True)
        mean_gx = (g * xhat).mean(axis=(0, 2, 3), keepdims=True)
        return ((g - mean_g - xhat * mean_gx) * inv_std[None, :, None, None]).astype(np.float32)


class Residual(Param):
    """ResNet basic block (He et al., 2016): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or a 1x1 strided conv + batch norm
    (``downsample``, as in torchvision) when the shape changes.
    """

    kind = "residual"

    def __init__(self, out_channels, stride=1):
        self.out_channels = _count("out_channels", out_channels, MAX_CHANNELS)
        self.stride = _count("stride", stride, 8)
        self.parts = {}
        self.params, self.buffers = {}, {}

    def build(self, shape, rng):
        c_in = _spatial(shape, "residual")[0]
        c = self.out_channels
        self.parts = {
            "conv1": Conv2d(c, 3, stride=self.stride, padding=1, bias=False),
            "bn1": BatchNorm2d(),
            "conv2": Conv2d(c, 3, padding=1, bias=False),
            "bn2": BatchNorm2d(),
        }
        if self.stride != 1 or c_in != c:
            self.parts["downsample.0"] = Conv2d(c, 1, stride=self.stride, bias=False)
            self.parts["downsample.1"] = BatchNorm2d()
        out = shape
        for name in ("conv1", "bn1", "conv2", "bn2"):
            out = self.parts[name].build(out, rng)
        if "downsample.0" in self.parts:
            self.parts["downsample.1"].build(self.parts["downsample.0"].build(shape, rng), rng)
        self._collect()
        return out

    def _collect(self):
        """Expose the parts' arrays under dotted names (views, not copies)."""
        self.params = {f"{n}.{k}": v for n, p in self.parts.items() for k, v in p.params.items()}
        self.buffers = {f"{n}.{k}": v for n, p in self.parts.items() for k, v in p.buffers.items()}
        self.grads = {f"{n}.{k}": v for n, p in self.parts.items() for k, v in p.grads.items()}

    def zero_grad(self):
        for p in self.parts.values():
            p.zero_grad()
        self._collect()

    def forward(self, x, train=False):
        p = self.parts
        h = p["bn1"].forward(p["conv1"].forward(x, train), train)
        self._h1 = h > 0
        h = np.maximum(h, 0)
        h = p["bn2"].forward(p["conv2"].forward(h, train), train)
        if "downsample.0" in p:
            short = p["downsample.1"].forward(p["downsample.0"].forward(x, train), train)
        else:
            short = x
        y = h + short
        self._out = y > 0
        return np.maximum(y, 0)

    def backward(self, grad):
        p = self.parts
        grad = grad * self._out
        g = p["conv2"].backward(p["bn2"].backward(grad))
        gx = p["conv1"].backward(p["bn1"].backward(g * self._h1))
        if "downsample.0" in p:
            gx = gx + p["downsample.0"].backward(p["downsample.1"].backward(grad))
        else:
            gx = gx + grad
        return gx

    def bind(self, channels):
        return [f"filter{c}" for c in range(self.out_channels)]

    def out_hw(self, h, w):
        for name in ("conv1", "conv2"):
            h, w = self.parts[name].out_hw(h, w)
        return h, w

    def window(self):
        # Two 3x3 convs, the first strided: extent 3 + 2*stride, stride `stride`.
        return (3 + 2 * self.stride, self.stride), (3 + 2 * self.stride, self.stride)

    def describe(self):
        return f"residual {self.out_channels}, stride {self.stride}"


def _l2_normalize(v, axis, eps=1e-12):
    """v / max(||v||, eps) along ``axis``, as ``torch.nn.functional.normalize``; returns (y, norm)."""
    norm = np.maximum(np.sqrt(np.sum(v * v, axis=axis, keepdims=True)), eps)
    return v / norm, norm


def _l2_normalize_backward(grad, y, norm, axis):
    return (grad - y * np.sum(y * grad, axis=axis, keepdims=True)) / norm


class NetVLAD(Param):
    """NetVLAD aggregation (Arandjelović et al., 2016): local descriptors -> one global descriptor.

    With x (N, D, H, W) L2-normalised over D at each pixel, K cluster centres
    c_k and a 1x1 conv (w_k, b_k): a_k = softmax_k(w_k·x + b_k) softly assigns
    each pixel, V_k = Σ_pixels a_k (x - c_k) sums the residuals, each V_k is
    L2-normalised (intra-normalisation), then the flat (K*D,) vector is.
    Parameters: ``conv.weight`` (K, D, 1, 1), ``conv.bias`` (K,), ``centroids`` (K, D).
    """

    kind = "netvlad"

    def __init__(self, clusters=8):
        self.clusters = _count("clusters", clusters, 1024)
        self.params, self.buffers = {}, {}

    def build(self, shape, rng):
        d = _spatial(shape, "netvlad")[0]
        k = self.clusters
        self.params = {
            "conv.weight": he_normal(rng, (k, d, 1, 1), d),
            "conv.bias": np.zeros(k, np.float32),
            "centroids": rng.random((k, d)).astype(np.float32),
        }
        self.zero_grad()
        return (k * d,)

    def forward(self, x, train=False):
        n, d, h, w = x.shape
        k = self.clusters
        xs, xnorm = _l2_normalize(x.reshape(n, d, h * w).astype(np.float32), axis=1)
        wc = self.params["conv.weight"].reshape(k, d)
        s = np.einsum("kd,ndp->nkp", wc, xs) + self.params["conv.bias"][None, :, None]
        s = s - s.max(axis=1, keepdims=True)
        a = np.exp(s)
        a /= a.sum(axis=1, keepdims=True)
        c = self.params["centroids"]
        v = np.einsum("nkp,ndp->nkd", a, xs) - c[None] * a.sum(axis=2)[:, :, None]
        vn, vnorm = _l2_normalize(v, axis=2)
        flat = vn.reshape(n, k * d)
        out, onorm = _l2_normalize(flat, axis=1)
        if train:
            self._saved = (x.shape, xs, xnorm, a, vn, vnorm, out, onorm)
        return out.astype(np.float32)

    def backward(self, grad):
        shape, xs, xnorm, a, vn, vnorm, out, onorm = self._saved
        n, d, h, w = shape
        k = self.clusters
        g_flat = _l2_normalize_backward(grad, out, onorm, axis=1)
        g_v = _l2_normalize_backward(g_flat.reshape(n, k, d), vn, vnorm, axis=2)
        c = self.params["centroids"]
        self.grads["centroids"] += -np.einsum("nkd,nk->kd", g_v, a.sum(axis=2))
        # V = a·x^T - c·Σa: gradients to the assignments and to x.
        g_a = np.einsum("nkd,ndp->nkp", g_v, xs) - np.einsum("nkd,kd->nk", g_v, c)[:, :, None]
        g_xs = np.einsum("nkd,nkp->ndp", g_v, a)
        g_s = a * (g_a - np.sum(a * g_a, axis=1, keepdims=True))  # softmax over clusters
        wc = self.params["conv.weight"].reshape(k, d)
        self.grads["conv.weight"] += np.einsum("nkp,ndp->kd", g_s, xs).reshape(k, d, 1, 1)
        self.grads["conv.bias"] += g_s.sum(axis=(0, 2))
        g_xs += np.einsum("kd,nkp->ndp", wc, g_s)
        g_x = _l2_normalize_backward(g_xs, xs, xnorm, axis=1)
        return g_x.reshape(shape).astype(np.float32)

    def window(self):
        return None

    def describe(self):
        return f"netvlad {self.clusters} clusters"


def _spatial(shape, kind):
    if len(shape) != 3:
        raise LayerError(f"{kind} needs maps (C, H, W), but its input is flat {shape}; move it before flatten")
    return shape


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of softmax(logits) against integer labels; returns (loss, dL/dlogits, probs)."""
    z = logits - logits.max(axis=1, keepdims=True)
    expz = np.exp(z)
    probs = expz / expz.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    log_likelihood = z[np.arange(n), labels] - np.log(expz.sum(axis=1))
    grad = probs.copy()
    grad[np.arange(n), labels] -= 1
    return float(-log_likelihood.mean()), (grad / n).astype(np.float32), probs


class Network:
    """Layers in sequence with their state-dict names ``<index>.<param>``, as in ``torch.nn.Sequential``."""

    def __init__(self, layers, input_shape, seed=0):
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        rng = np.random.default_rng(seed)
        self.shapes = []
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            if not hasattr(layer, "build"):
                raise LayerError(f"layer {i} ({layer.kind}) cannot be part of a trained network")
            try:
                shape = layer.build(shape, rng)
            except (LayerError, ValueError) as exc:
                raise LayerError(f"layer {i} ({layer.kind}): {exc}") from None
            self.shapes.append(tuple(shape))
        if isinstance(self.layers[0], Conv2d):
            self.layers[0].input_grad = False
        self._order = _pool_before_relu(self.layers)
        self._steps = _fuse_conv_pool([self.layers[i] for i in self._order])

    def forward(self, x, train=False):
        for step in self._steps:
            x = step.forward(x, train)
        return x

    def backward(self, grad):
        for step in reversed(self._steps):
            grad = step.backward(grad)
        return grad

    def trainable(self):
        return [layer for layer in self.layers if isinstance(layer, Param)]

    def zero_grad(self):
        for layer in self.trainable():
            layer.zero_grad()

    def parameters(self):
        """(name, param, grad) for every parameter."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Param):
                for k, v in layer.params.items():
                    yield f"{i}.{k}", v, layer.grads[k]

    def state_dict(self):
        """Every parameter and buffer by torch's name (arrays are the live ones)."""
        out = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Param):
                out.update(layer.state(f"{i}."))
        return out

    def load_state_dict(self, state):
        """Copy arrays in; every name must be present with the right shape."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise LayerError(f"weights do not fit the architecture: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for name, arr in own.items():
            value = np.asarray(state[name])
            if value.shape != arr.shape:
                raise LayerError(f"weight '{name}' has shape {value.shape}, but the architecture needs {arr.shape}")
            arr[...] = value

    @property
    def num_params(self):
        return sum(layer.num_params for layer in self.trainable())


def _pool_before_relu(layers):
    """The order to run ``layers`` in: each ReLU followed by a max pooling swapped with it.

    Max pooling then ReLU computes exactly what ReLU then max pooling does:
    ReLU keeps the order of values, so each window keeps its value, and its
    gradient reaches the same pixel (or is zero either way, where the
    window's maximum is not positive). The swapped order runs the ReLU and
    its gradient on a quarter of the pixels of a 2x2 pooling.
    """
    order = list(range(len(layers)))
    i = 0
    while i + 1 < len(order):
        first, second = layers[order[i]], layers[order[i + 1]]
        if isinstance(first, Activation) and first.kind == "relu" and isinstance(second, Pool) \
                and second.kind == "maxpool":
            order[i], order[i + 1] = order[i + 1], order[i]
            i += 2
        else:
            i += 1
    return order


class _ConvPool:
    """A Conv2d and the max pooling after it, run as one step by ``F.conv2d_max_pool2d``.

    The fused kernel pools each tile of sums while it is in cache and never
    writes the conv output, four times the size of the pooled one. The
    values are exactly those of the two layers; the backward pass is theirs.
    """

    def __init__(self, conv, pool):
        self.conv, self.pool = conv, pool

    def forward(self, x, train=False):
        weight = self.conv.params["weight"]
        y, argmax = F.conv2d_max_pool2d(x, weight, self.conv.params.get("bias"), pool=self.pool.kernel_size,
                                        **self.conv.options)
        if train:
            self.conv._x = x
            self.pool._argmax = argmax
            self.pool._x_shape = (x.shape[0], weight.shape[0], *self.conv.out_hw(*x.shape[2:]))
        return y

    def backward(self, grad):
        return self.conv.backward(self.pool.backward(grad))


def _fuse_conv_pool(layers):
    """``layers`` with each Conv2d followed by a max pooling of stride = kernel_size, no padding, fused."""
    steps = []
    for layer in layers:
        if steps and isinstance(steps[-1], Conv2d) and isinstance(layer, Pool) and layer.kind == "maxpool" \
                and F.pair("stride", layer.stride, 1) == F.pair("kernel_size", layer.kernel_size, 1) \
                and F.pair("padding", layer.padding, 0) == (0, 0):
            steps[-1] = _ConvPool(steps[-1], layer)
        else:
            steps.append(layer)
    return steps
