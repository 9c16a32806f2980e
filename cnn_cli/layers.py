"""Layers: the vocabulary shared by pipelines (fixed banks) and networks.

Every layer, here, in ``filterlayers``, ``trainable``, ``blocks``, ``merges``, ``graphlayers`` and ``upsampling``, follows one protocol (``Layer``):
``build(in_shape, rng=None) -> out_shape`` sizes it, ``forward`` and
``backward`` run it on a batch, ``window`` gives its receptive field,
``channel_names`` names its output maps, and ``describe`` and ``num_params``
say what it is. Which layer types exist, and where each may be used, is
``cnn_cli.registry``. Layers never print.
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple

import numpy as np

from . import functional as F


class ActivationForm(NamedTuple):
    """One activation: f(x, a), df/dx given (x, y = f(x), a), its ONNX node (an op name, or a
    function (graph, x, slope, scope) -> output name) and its torch twin (slope -> torch.nn.Module).
    ``slope`` is the default of the one parameter ``a`` (the ONNX ``alpha``) for the forms that
    take one (leaky_relu, elu), None for the others. ``into(x, a)``, for the forms that are one
    ufunc, is f(x, a) written over the float32 array x: the same values, no new array.
    ``grad(g, x, a)``, where given, is g * df in one ufunc call, the same values without df's arrays."""

    f: Callable
    df: Callable
    onnx: object
    torch: Callable
    slope: float = None
    into: Callable = None
    grad: Callable = None


def torch_lambda(fn):
    """A ``torch.nn.Module`` computing ``fn(x)``, for twins torch has no module for (abs, square, add...)."""
    from torch import nn

    class Lambda(nn.Module):
        def forward(self, *xs):
            return fn(*xs)

    return Lambda()


def _torch_nn(name, *args):
    from torch import nn

    return getattr(nn, name)(*args)


#: SELU's constants (Klambauer et al., 2017), as torch and ONNX's Selu defaults give them.
SELU_ALPHA, SELU_SCALE = np.float32(1.6732632423543772), np.float32(1.0507009873554805)

#: Activations by name, each an ``ActivationForm`` on float32 arrays.
ACTIVATIONS = {
    "relu": ActivationForm(lambda x, a: np.maximum(x, 0, dtype=np.float32),
                           lambda x, y, a: (x > 0).astype(np.float32),
                           "Relu", lambda a: _torch_nn("ReLU"), into=lambda x, a: np.maximum(x, 0, out=x),
                           grad=lambda g, x, a: np.multiply(g, x > 0, dtype=np.float32)),
    "leaky_relu": ActivationForm(lambda x, a: np.where(x > 0, x, x * np.float32(a)).astype(np.float32),
                                 lambda x, y, a: np.where(x > 0, 1, a).astype(np.float32),
                                 "LeakyRelu", lambda a: _torch_nn("LeakyReLU", a), 0.01),
    "abs": ActivationForm(lambda x, a: np.abs(x), lambda x, y, a: np.sign(x),
                          "Abs", lambda a: torch_lambda(abs), into=lambda x, a: np.abs(x, out=x)),
    "square": ActivationForm(lambda x, a: np.square(x), lambda x, y, a: 2 * x,
                             lambda g, x, a, scope: g.op("Mul", [x, x], scope), lambda a: torch_lambda(lambda x: x * x),
                             into=lambda x, a: np.square(x, out=x)),
    "tanh": ActivationForm(lambda x, a: np.tanh(x), lambda x, y, a: 1 - y * y,
                           "Tanh", lambda a: _torch_nn("Tanh"), into=lambda x, a: np.tanh(x, out=x)),
    # The tanh form of the logistic function never overflows.
    "sigmoid": ActivationForm(lambda x, a: (0.5 * (np.tanh(0.5 * x) + 1)).astype(np.float32),
                              lambda x, y, a: y * (1 - y), "Sigmoid", lambda a: _torch_nn("Sigmoid")),
    # Clevert et al. (2016): x for x > 0, else alpha (e^x - 1), whose slope there is y + alpha.
    "elu": ActivationForm(lambda x, a: np.where(x > 0, x, np.float32(a) * np.expm1(np.minimum(x, 0))).astype(np.float32),
                          lambda x, y, a: np.where(x > 0, 1, y + np.float32(a)).astype(np.float32),
                          "Elu", lambda a: _torch_nn("ELU", a), 1.0),
    # Klambauer et al. (2017): SELU_SCALE * elu(x) with alpha SELU_ALPHA (torch's and ONNX's constants).
    "selu": ActivationForm(lambda x, a: (SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))))
                           .astype(np.float32),
                           lambda x, y, a: np.where(x > 0, SELU_SCALE, y + SELU_SCALE * SELU_ALPHA).astype(np.float32),
                           "Selu", lambda a: _torch_nn("SELU")),
    # log(1 + e^x) without overflow; its slope is the logistic function (in its tanh form).
    "softplus": ActivationForm(lambda x, a: np.logaddexp(np.float32(0), x).astype(np.float32),
                               lambda x, y, a: (0.5 * (np.tanh(0.5 * x) + 1)).astype(np.float32),
                               "Softplus", lambda a: _torch_nn("Softplus")),
}


def torch_conv(c_in, weight, bias, groups, options):
    """A ``torch.nn.Conv2d`` holding ``weight`` (C_out, C_in/groups, kH, kW) and ``bias`` (or None)."""
    import torch
    from torch import nn

    padding = options["padding"]
    asymmetric = isinstance(padding, (list, tuple)) and len(padding) == 4
    conv = nn.Conv2d(c_in, weight.shape[0], weight.shape[2:], stride=options["stride"],
                     padding=0 if asymmetric else padding, dilation=options["dilation"], groups=groups,
                     bias=bias is not None, padding_mode=options["padding_mode"])
    if asymmetric:  # torch's convolutions pad symmetrically: F.pad first, keeping the state-dict names
        import torch.nn.functional as tf

        top, bottom, left, right = padding
        mode = {"zeros": "constant", "replicate": "replicate"}.get(options["padding_mode"], options["padding_mode"])
        conv.register_forward_pre_hook(lambda module, args: (tf.pad(args[0], (left, right, top, bottom), mode),))
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))
    return conv


class OnnxNode(NamedTuple):
    """What a layer type makes of one ONNX node (``from_onnx``): the ``[[layer]]`` table
    (with ``type``), its arrays by state-dict suffix (``weight``...), and the tensors it reads.
    A ``table`` of None passes its one input on unchanged (a concatenation of one tensor)."""

    table: dict
    arrays: dict
    inputs: list


def onnx_pair(values, name, default):
    """An (h, w) pair from an ONNX attribute of two ints, or a LayerError."""
    values = list(values) if values is not None else [default, default]
    if len(values) != 2:
        raise LayerError(f"{name} must have 2 values for an image network, but has {values}")
    return [int(v) for v in values]


def onnx_pads(node, ctx, kernel):
    """The padding of a Conv or pooling node with ``kernel`` (kH, kW), from ``pads`` or ``auto_pad``:
    [h, w] where it is symmetric, else [top, bottom, left, right]; or a LayerError.

    SAME_UPPER and SAME_LOWER pad a total of max((ceil(size / stride) - 1) * stride
    + dilation * (k - 1) + 1 - size, 0) per axis, the odd pixel at the end or the
    start (ONNX's definition); that needs the input's size, which import knows.
    """
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        shape = ctx.shape(node.inputs[0])
        if shape is None or len(shape) != 4:
            raise LayerError(f"auto_pad {auto} needs the input's size, which is not known")
        strides = onnx_pair(node.attrs.get("strides"), "strides", 1)
        dilations = onnx_pair(node.attrs.get("dilations"), "dilations", 1)
        begin, end = [], []
        for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
            total = max((-(-size // s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small = total // 2
            begin.append(small if auto == "SAME_UPPER" else total - small)
            end.append(total - begin[-1])
        pads = [*begin, *end]
    elif auto in ("NOTSET", "VALID"):
        pads = node.attrs.get("pads", [0, 0, 0, 0]) if auto == "NOTSET" else [0, 0, 0, 0]
    else:
        raise LayerError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, not {auto}")
    if len(pads) != 4 or min(pads) < 0:
        raise LayerError(f"pads must be 4 amounts of at least 0 for an image network, not {list(pads)}")
    top, left, bottom, right = (int(p) for p in pads)  # ONNX orders them (begins, then ends)
    return [top, left] if (top, left) == (bottom, right) else [top, bottom, left, right]


class LayerError(ValueError):
    """A layer cannot take the input it is given; the message says what to change."""


def maps_shape(shape, kind):
    """``shape`` if it is maps (C, H, W), else a LayerError that says where the layer belongs."""
    if len(shape) != 3:
        raise LayerError(f"{kind} needs maps (C, H, W), but its input is flat {tuple(shape)}; "
                         "move it before flatten")
    return tuple(shape)


def maps_out(channels, h, w, out_hw):
    """(channels, *out_hw(h, w)), or (channels, None, None) while the input size is unknown."""
    if h is None or w is None:
        return channels, None, None
    return (channels, *out_hw(h, w))


class Layer:
    """Base layer: no parameters, shape-preserving, identity receptive field.

    The protocol every layer follows:

    - ``build(in_shape, rng=None) -> out_shape`` checks the input and sizes the
      layer. Shapes are per example: (C, H, W) for maps, (F,) for features; H
      and W may be None when not known yet (a pipeline is bound before it sees
      an image), and are then None in the output too. Layers with parameters
      create them from ``rng``; with ``rng=None`` they keep the ones they have,
      which must fit. Building again with the same shape changes nothing.
    - ``forward(x, train=False)`` computes the output of a batch (N, *in_shape);
      with ``train=True`` it keeps what ``backward(grad_y) -> grad_x`` needs,
      through ``save_for_backward``, in ``saved``.
    - ``channel_names(names)``: the output maps' names, given the input's.
    - ``window()``, ``describe()`` and ``num_params``: receptive field, summary line, size.
    - ``plan(in_shape) -> (out_shape, parameter count)``: what building will allocate, without
      allocating it (``pipeline.plan_layers`` sums it before any weight exists).
    - ``evaluating()``: the layer as eval mode runs it, whose ``forward(x, train=True)`` keeps
      what its ``backward`` needs (explanations take gradients through it).
    - ``overwrite(x)``, optional: ``forward(x)`` in eval mode, bit for bit, written over ``x``
      (float32), which nothing reads afterwards (``nn`` calls it then, so that an inference pass
      makes no new array there); a merge's ``overwrite(xs, dying)`` may write over the inputs
      whose indices are in ``dying``. It may return a new array where it cannot write in place.
    - ``to_onnx(graph, x, scope, prefix) -> output name``: its ONNX nodes (``export._Graph``'s
      methods build them; ``prefix`` is its state-dict prefix, for the initializers' names).
    - ``torch_twin(in_shape) -> torch.nn.Module``: the equivalent torch module, with the same
      state-dict names, for the tests and ``bench/`` (torch is imported only there).
    - ``cam_source``: Grad-CAM may weigh its output maps (a convolution or block of them);
      ``keeps_maps``: it maps each pixel or channel on its own (batch norm, activations), so
      the default CAM layer moves on over it.

    Layers with parameters keep them in ``params`` and their gradients in
    ``grads`` (same names), and running statistics in ``buffers``. ``kind`` is
    the layer's type name in ``cnn_cli.registry``.
    """

    kind = "layer"
    params: dict = {}
    buffers: dict = {}
    #: What the last ``forward(x, train=True)`` kept for ``backward`` (see ``save_for_backward``).
    saved: tuple = ()
    cam_source = False
    keeps_maps = False
    #: How many nodes' outputs the layer reads: 1, or None for two or more (add, concat...).
    arity = 1

    def build(self, in_shape, rng=None):
        """Check ``in_shape`` and return the output shape (see the class docstring)."""
        return tuple(in_shape)

    def channel_names(self, names):
        """Names of the output maps, given the input maps' ``names`` (after ``build``)."""
        return list(names)

    def save_for_backward(self, *values):
        """Keep ``values`` in ``saved`` for ``backward``; each layer's docstring says what they are."""
        self.saved = values

    def window(self):
        """((kernel extent, stride) for rows, for columns), or None for a global layer."""
        return (1, 1), (1, 1)

    def plan(self, in_shape):
        """(output shape, parameter count) for ``in_shape``, without allocating weights.

        A shallow copy is built: the layer itself may be running on another
        thread, built for its real input. Layers whose build allocates weights
        count them from their declaration instead.
        """
        return copy.copy(self).build(in_shape), 0

    def evaluating(self):
        """This layer as eval mode runs it (see the class docstring): itself, unless training differs."""
        return self

    def to_onnx(self, g, x, scope, prefix):
        raise NotImplementedError(f"{type(self).__name__} has no ONNX form")

    def torch_twin(self, in_shape):
        raise NotImplementedError(f"{type(self).__name__} has no torch twin")

    @property
    def num_params(self):
        return 0

    def describe(self):
        return self.kind


class Activation(Layer):
    """An element-wise function from ``ACTIVATIONS``; saves its input and output (x, y)."""

    def __init__(self, kind, slope=None):
        if kind not in ACTIVATIONS:
            raise LayerError(f"unknown activation {kind!r}; use one of {', '.join(ACTIVATIONS)}")
        if slope is None:  # the form's own default (elu's alpha is 1), else a placeholder nothing reads
            slope = ACTIVATIONS[kind].slope if ACTIVATIONS[kind].slope is not None else 0.01
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not np.isfinite(slope):
            raise LayerError(f"slope must be a finite number, but got {slope!r}")
        self.kind = kind
        self.slope = slope

    def forward(self, x, train=False):
        y = ACTIVATIONS[self.kind].f(x, self.slope)
        if train:
            self.save_for_backward(x, y)
        return y

    def backward(self, grad):
        x, y = self.saved
        form = ACTIVATIONS[self.kind]
        if form.grad is not None:  # no df array: 32 x 8 x 16 x 16 values 42 -> 28 us, LeNet's pooled ReLU
            return form.grad(grad, x, self.slope)
        return (grad * form.df(x, y, self.slope)).astype(np.float32, copy=False)

    def overwrite(self, x):
        form = ACTIVATIONS[self.kind]
        return form.f(x, self.slope) if form.into is None else form.into(x, self.slope)

    keeps_maps = True

    def to_onnx(self, g, x, scope, prefix):
        op = ACTIVATIONS[self.kind].onnx
        if callable(op):
            return op(g, x, self.slope, scope)
        attrs = {"alpha": float(self.slope)} if ACTIVATIONS[self.kind].slope is not None else {}
        return g.op(op, [x], scope, **attrs)

    def torch_twin(self, in_shape):
        return ACTIVATIONS[self.kind].torch(self.slope)

    onnx_in = tuple(form.onnx for form in ACTIVATIONS.values() if isinstance(form.onnx, str))

    @classmethod
    def from_onnx(cls, node, ctx):
        kind = next(name for name, form in ACTIVATIONS.items() if form.onnx == node.op)
        table = {"type": kind}
        if ACTIVATIONS[kind].slope is not None:  # LeakyRelu's and Elu's alpha
            table["slope"] = float(node.attrs.get("alpha", ACTIVATIONS[kind].slope))
        if kind == "selu":
            given = [float(node.attrs.get(k, d)) for k, d in (("alpha", SELU_ALPHA), ("gamma", SELU_SCALE))]
            if not np.allclose(given, [SELU_ALPHA, SELU_SCALE], rtol=1e-6, atol=0):
                raise LayerError(f"only Selu with the standard alpha {SELU_ALPHA} and gamma {SELU_SCALE} "
                                 f"is supported, not alpha {given[0]}, gamma {given[1]}")
        return OnnxNode(table, {}, ctx.dynamic(node))

    def describe(self):
        return f"{self.kind} {self.slope}" if ACTIVATIONS[self.kind].slope is not None else self.kind


class Pool(Layer):
    """Max or average pooling (torch's defaults: stride = kernel, floor mode).

    Saved for backward: max pooling keeps (input shape, argmax), where each
    maximum was, so its backward pass is a scatter; average pooling keeps
    (input,). ``save_for_backward`` is public so that a fused conv + pool
    step (``nn.Network``) can save what it computed in one go.
    """

    def __init__(self, kind, kernel_size=2, stride=None, padding=0, ceil_mode=False):
        self.kind = kind  # "maxpool" or "avgpool"
        self.kernel_size = kernel_size
        self.stride = kernel_size if stride is None else stride
        self.padding = padding
        if not isinstance(ceil_mode, bool):
            raise LayerError(f"ceil_mode must be true or false, but got {ceil_mode!r}")
        self.ceil_mode = ceil_mode
        F.check_pool_options(kernel_size, self.stride, padding)

    def _extra(self, h, w):
        """(rows, columns) that ceil mode adds below and right: a last window that starts
        inside the input (or its top/left padding) but runs past it, as torch and ONNX count it."""
        if not self.ceil_mode:
            return 0, 0
        return F.ceil_mode_extra((h, w), self.kernel_size, self.stride, self.padding)

    def _padded(self, x):
        """``x`` with its padding and ceil mode's extra rows as -inf, for pooling with no padding."""
        ph, pw = F.pair("padding", self.padding, 0)
        eh, ew = self._extra(*x.shape[2:])
        return np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=-np.inf)

    def forward(self, x, train=False):
        args = (self.kernel_size, self.stride, self.padding)
        if self.kind == "avgpool":
            if self.ceil_mode:
                self._out_hw(*x.shape[2:])  # refuses windows that run past the input
            if train:
                self.save_for_backward(x)
            return F.avg_pool2d(x, *args)
        if not train:
            return F.max_pool2d(x, *args, ceil_mode=self.ceil_mode)
        if self._extra(*x.shape[2:]) != (0, 0):
            # Ceil mode in training pools a padded copy, whose argmax the backward pass scatters to.
            xp = self._padded(x)
            y, argmax = F.max_pool2d_with_argmax(xp, self.kernel_size, self.stride, 0)
            self.save_for_backward(xp.shape, argmax, x.shape)
            return y
        y, argmax = F.max_pool2d_with_argmax(x, *args)
        self.save_for_backward(x.shape, argmax)
        return y

    def backward(self, grad):
        if self.kind == "avgpool":
            return F.avg_pool2d_backward(*self.saved, grad, self.kernel_size, self.stride, self.padding)
        x_shape, argmax, *cropped = self.saved
        gx = F.max_pool2d_backward_from_argmax(x_shape, grad, argmax)
        if cropped:  # ceil mode pooled a padded copy: the input is inside it
            ph, pw = F.pair("padding", self.padding, 0)
            h, w = cropped[0][2:]
            gx = np.ascontiguousarray(gx[:, :, ph:ph + h, pw:pw + w])
        return gx

    def build(self, in_shape, rng=None):
        return maps_out(*maps_shape(in_shape, self.kind), self._out_hw)

    def _out_hw(self, h, w):
        eh, ew = self._extra(h, w)
        if (eh or ew) and self.kind == "avgpool":
            raise LayerError("avgpool with ceil_mode would average windows that run past the input; "
                             "cnn runs it only where the windows fit")
        try:
            if eh or ew:
                ph, pw = F.pair("padding", self.padding, 0)
                return F.PoolSpec((1, 1, h + 2 * ph + eh, w + 2 * pw + ew), self.kernel_size, self.stride, 0).y_shape[2:]
            return F.PoolSpec((1, 1, h, w), self.kernel_size, self.stride, self.padding).y_shape[2:]
        except ValueError as exc:
            raise LayerError(str(exc)) from None

    def window(self):
        k, s = F.pair("kernel_size", self.kernel_size, 1), F.pair("stride", self.stride, 1)
        return (k[0], s[0]), (k[1], s[1])

    def to_onnx(self, g, x, scope, prefix):
        kernel = F.pair("kernel_size", self.kernel_size, 1)
        stride = F.pair("stride", self.stride, 1)
        ph, pw = F.pair("padding", self.padding, 0)
        attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=[ph, pw, ph, pw],
                     ceil_mode=int(self.ceil_mode))
        if self.kind == "maxpool":
            return g.op("MaxPool", [x], scope, **attrs)
        return g.op("AveragePool", [x], scope, count_include_pad=1, **attrs)

    onnx_in = ("MaxPool", "AveragePool")

    @classmethod
    def from_onnx(cls, node, ctx):
        if len([o for o in node.outputs if o]) > 1 and ctx.used(node.outputs[1]):
            raise LayerError("MaxPool's indices output is not supported")
        if any(d != 1 for d in node.attrs.get("dilations", [1, 1])):
            raise LayerError("dilated pooling is not supported")
        kind = "maxpool" if node.op == "MaxPool" else "avgpool"
        kernel = onnx_pair(node.attrs.get("kernel_shape"), "kernel_shape", 1)
        stride, ceil_mode = onnx_pair(node.attrs.get("strides"), "strides", 1), bool(node.attrs.get("ceil_mode", 0))
        pads = onnx_pads(node, ctx, kernel)
        if len(pads) == 4:
            pads, ceil_mode = cls._pads_as_ceil_mode(kind, pads, kernel, stride, ceil_mode, ctx.shape(node.inputs[0]))
        if kind == "avgpool" and any(pads) and not node.attrs.get("count_include_pad", 0):
            raise LayerError("average pooling with count_include_pad=0 over padding is not supported yet")
        table = {"type": kind, "kernel_size": kernel, "stride": stride, "padding": pads, "ceil_mode": ceil_mode}
        return OnnxNode(table, {}, ctx.dynamic(node))

    @staticmethod
    def _pads_as_ceil_mode(kind, pads, kernel, stride, ceil_mode, shape):
        """Asymmetric pads (top, bottom, left, right) of a max pooling as the top and left ones on
        both sides, with ceil mode, where that is exact: ceil mode pads the bottom and right with
        -inf as ONNX's MaxPool pads, so if it makes as many windows, they are the same windows
        (TensorFlow's SAME_UPPER at stride 2 and above). Anything else is a LayerError."""
        top, bottom, left, right = pads
        refusal = LayerError(f"pooling with asymmetric pads (top, bottom, left, right) {pads} is supported "
                             "only for max pooling whose extra padding is at the bottom and right, as ceil mode adds it")
        if kind != "maxpool" or ceil_mode or shape is None or len(shape) != 4 or bottom < top or right < left:
            raise refusal
        want = [(size + begin + end - k) // s + 1
                for size, begin, end, k, s in zip(shape[2:], (top, left), (bottom, right), kernel, stride)]
        try:
            got = Pool(kind, kernel, stride, [top, left], ceil_mode=True).build((1, *shape[2:]))[1:]
        except ValueError:
            raise refusal from None
        if list(got) != want:
            raise refusal
        return [top, left], True

    def torch_twin(self, in_shape):
        from torch import nn

        cls = nn.MaxPool2d if self.kind == "maxpool" else nn.AvgPool2d
        return cls(self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def describe(self):
        return (f"{self.kind} {self.kernel_size}, stride {self.stride}, padding {self.padding}"
                + (", ceil mode" if self.ceil_mode else ""))


class GlobalPool(Layer):
    """Mean or max over each whole map: (N, C, H, W) -> (N, C, 1, 1). Saves its input (x,)."""

    def __init__(self, kind):
        self.kind = kind  # "globalavgpool" or "globalmaxpool"

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        reduce = np.mean if self.kind == "globalavgpool" else np.max
        return reduce(x, axis=(2, 3), keepdims=True).astype(np.float32)

    def backward(self, grad):
        (x,) = self.saved
        if self.kind == "globalavgpool":
            return np.broadcast_to(grad / np.float32(x.shape[2] * x.shape[3]), x.shape).astype(np.float32)
        # All of each map's gradient goes to its first maximum.
        n, c, h, w = x.shape
        flat = x.reshape(n * c, h * w)
        gx = np.zeros_like(flat)
        gx[np.arange(n * c), flat.argmax(axis=1)] = grad.reshape(n * c)
        return gx.reshape(x.shape)

    def build(self, in_shape, rng=None):
        return maps_shape(in_shape, self.kind)[0], 1, 1

    def window(self):
        return None

    def to_onnx(self, g, x, scope, prefix):
        return g.op("GlobalAveragePool" if self.kind == "globalavgpool" else "GlobalMaxPool", [x], scope)

    def torch_twin(self, in_shape):
        return _torch_nn("AdaptiveAvgPool2d" if self.kind == "globalavgpool" else "AdaptiveMaxPool2d", 1)

    onnx_in = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")

    @classmethod
    def from_onnx(cls, node, ctx):
        """Also a ReduceMean or ReduceMax over the spatial axes, keeping them (torch's dynamo
        exporter writes adaptive pooling to 1x1 so): axes an attribute, or an input from opset 18."""
        kind = "globalavgpool" if node.op in ("GlobalAveragePool", "ReduceMean") else "globalmaxpool"
        if node.op.startswith("Reduce"):
            axes = node.attrs.get("axes")
            if axes is None and len(node.inputs) > 1:
                axes = ctx.const(node.inputs[1])
            shape = ctx.shape(node.inputs[0]) or ()
            if axes is None or len(shape) != 4 or sorted(int(a) % 4 for a in np.ravel(axes)) != [2, 3] \
                    or not node.attrs.get("keepdims", 1):
                raise LayerError("only a reduction over the height and width of maps, keeping them, is supported")
        return OnnxNode({"type": kind}, {}, [node.inputs[0]])
