"""The network that strings layers together, and the loss.

``Network`` builds its layers in order from the input shape and runs them as
``torch.nn.Sequential`` would, with the state-dict names ``<index>.<param>``.
The layers themselves are in ``cnn_cli.layers``, ``cnn_cli.trainable`` and
``cnn_cli.blocks``; their names stay importable from here.
"""

from __future__ import annotations

import numpy as np

from . import functional as F
from . import registry
from .blocks import NetVLAD, Residual
from .layers import Activation, LayerError, Pool
from .trainable import BatchNorm2d, Conv2d, Dropout, Flatten, Linear, Param

__all__ = ["BatchNorm2d", "Conv2d", "Dropout", "Flatten", "Linear", "NetVLAD", "Network", "Param", "Residual",
           "Segment", "softmax_cross_entropy"]


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of softmax(logits) against integer labels; returns (loss, dL/dlogits, probs).

    With ``label_smoothing`` eps, the target is (1 - eps) on the label plus
    eps / classes everywhere, as in ``torch.nn.functional.cross_entropy``.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    expz = np.exp(z)
    probs = expz / expz.sum(axis=1, keepdims=True)
    n, classes = logits.shape
    log_probs = z - np.log(expz.sum(axis=1, keepdims=True))
    eps = float(label_smoothing)
    loss = -(1 - eps) * log_probs[np.arange(n), labels].mean()
    grad = probs.copy()
    grad[np.arange(n), labels] -= 1 - eps
    if eps:
        loss -= eps * log_probs.mean(axis=1).mean()
        grad -= eps / classes
    return float(loss), (grad / n).astype(np.float32), probs


class Network:
    """Layers in sequence with their state-dict names ``<index>.<param>``, as in ``torch.nn.Sequential``."""

    def __init__(self, layers, input_shape, seed=0):
        self.layers = list(layers)
        self.input_shape = tuple(input_shape)
        rng = np.random.default_rng(seed)
        self.shapes = []
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            if not registry.allows(layer, registry.NETWORK):
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

    def segment(self, start=0, stop=None):
        """Layers ``start`` to ``stop - 1`` as a ``Segment``: run as in eval mode, with a backward pass.

        ``net.segment(0, i + 1)`` gives layer i's output, and ``net.segment(i + 1)``
        the logits from it and, backwards, the gradient at layer i.
        """
        return Segment(self.layers[start:stop])

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

    def torch_twin(self):
        """The equivalent ``torch.nn`` module, each layer's own twin, holding a copy of the current
        weights under the same state-dict names (for the tests and ``bench/``; needs torch)."""
        import torch
        from torch import nn

        shapes = [self.input_shape] + self.shapes[:-1]
        module = nn.Sequential(*(layer.torch_twin(shape) for layer, shape in zip(self.layers, shapes)))
        module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in self.state_dict().items()}, strict=True)
        return module


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
    values are exactly those of the two layers; the backward pass is theirs,
    from what this step saves for each of them.
    """

    def __init__(self, conv, pool):
        self.conv, self.pool = conv, pool

    def forward(self, x, train=False):
        weight = self.conv.params["weight"]
        y, argmax = F.conv2d_max_pool2d(x, weight, self.conv.params.get("bias"), pool=self.pool.kernel_size,
                                        **self.conv.options)
        if train:
            self.conv.save_for_backward(x)
            self.pool.save_for_backward((x.shape[0], *self.conv.build(x.shape[1:])), argmax)
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


class Segment:
    """Consecutive layers of a network, run as in eval mode, whose backward pass gives
    the gradient at the segment's input: what explanations (Grad-CAM) need at a layer.

    ``forward(x, keep=True)`` computes exactly the eval-mode outputs (batch norm
    with its running statistics, dropout letting everything through) and keeps
    what ``backward`` needs. The steps are the network's own (pooling before
    ReLU, conv + pool fused) within the segment, so its last output is exactly
    the last layer's. ``backward`` also sums the conv and linear layers'
    parameter gradients into their ``grads``, as training's backward does.
    """

    def __init__(self, layers):
        layers = [layer.evaluating() for layer in layers]
        self._steps = _fuse_conv_pool([layers[i] for i in _pool_before_relu(layers)])

    def forward(self, x, keep=False):
        for step in self._steps:
            x = step.forward(x, keep)
        return x

    def backward(self, grad):
        for step in reversed(self._steps):
            grad = step.backward(grad)
        return grad
