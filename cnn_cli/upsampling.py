"""Layers that resize maps other than by a window: transposed convolution (learned
upsampling), resize (nearest or bilinear interpolation) and explicit padding.

U-Nets, FPNs and segmentation heads are built from them, and ONNX exporters write
them as ConvTranspose, Resize (Upsample before opset 10) and Pad. Each follows
``cnn_cli.layers.Layer``: shape rule, forward and backward on the engine, ONNX
form and import, torch twin.
"""

from __future__ import annotations

import math

import numpy as np

from . import config
from . import functional as F
from .functional.specs import fold_padding
from .layers import (
    Layer,
    LayerError,
    OnnxNode,
    maps_out,
    maps_shape,
    onnx_pair,
    torch_lambda,
)
from .trainable import MAX_CHANNELS, MAX_KERNEL, Param, torch_uniform, whole_number


def _pair(name, value, minimum):
    try:
        return F.pair(name, value, minimum)
    except ValueError as exc:
        raise LayerError(str(exc)) from None


def _number(name, value, positive=False):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or (positive and value <= 0):
        raise LayerError(f"{name} must be a {'positive' if positive else 'finite'} number, but got {value!r}")
    return float(value)


def _const_input(node, ctx, k, what):
    """The constant at input ``k`` of ``node``, None if the input is absent, or a LayerError."""
    name = node.inputs[k] if len(node.inputs) > k else ""
    if not name:
        return None
    value = ctx.const(name)
    if value is None:
        raise LayerError(f"{what} must be a constant (shape arithmetic is folded at import for the input size)")
    return np.asarray(value)


# --------------------------------------------------------------------------- transposed convolution


class ConvTranspose2d(Param):
    """Learned upsampling, like ``torch.nn.ConvTranspose2d``: weight (C_in, C_out/groups, kH, kW).

    The adjoint of a convolution with the same weight: each input pixel adds
    its weighted kernel into the output, ``stride`` pixels apart. Output size
    ``H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1``.

    It runs as one matrix product per group, every input pixel times every
    kernel tap (BLAS, as the engine's im2col path), and kH * kW strided adds
    of those products into the uncropped output, which ``padding`` then crops
    (col2im). That costs stride² less than the textbook identity, a
    correlation of the input spread out with zeros, and it is the same sum.
    The backward pass is its transpose: each tap's strided slice of the
    gradient gathered, then matrix products for dL/dx (the convolution of
    dL/dy with the same weight) and dL/dweight. Saves its input (x,).
    """

    kind = "convtranspose"
    cam_source = True

    def __init__(self, out_channels, kernel_size=2, *, stride=1, padding=0, output_padding=0, dilation=1,
                 groups=1, bias=True):
        self.out_channels = whole_number("out_channels", out_channels, MAX_CHANNELS)
        self.kernel_size = _pair("kernel_size", kernel_size, 1)
        whole_number("kernel_size", max(self.kernel_size), MAX_KERNEL)
        self.stride, self.padding = _pair("stride", stride, 1), _pair("padding", padding, 0)
        self.output_padding, self.dilation = _pair("output_padding", output_padding, 0), _pair("dilation", dilation, 1)
        self.groups = whole_number("groups", groups, MAX_CHANNELS)
        if any(op >= s for op, s in zip(self.output_padding, self.stride)):
            # torch also allows output_padding < dilation; the backward pass here needs it below the stride
            raise LayerError(f"output_padding must be smaller than stride {list(self.stride)}, "
                             f"but got {list(self.output_padding)}")
        if not isinstance(bias, bool):
            raise LayerError(f"bias must be true or false, but got {bias!r}")
        self.use_bias = bias
        self.params, self.buffers = {}, {}

    def _weight_shape(self, c_in):
        if c_in % self.groups or self.out_channels % self.groups:
            raise LayerError(f"groups={self.groups} must divide the input channels ({c_in}) "
                             f"and out_channels ({self.out_channels})")
        return (c_in, self.out_channels // self.groups, *self.kernel_size)

    def _out_hw(self, h, w):
        out = tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in zip(
            (h, w), self.stride, self.padding, self.dilation, self.kernel_size, self.output_padding))
        if min(out) < 1:
            raise LayerError(f"convtranspose padding {list(self.padding)} leaves no output for a {h}x{w} input; "
                             "use less padding")
        return out

    def build(self, in_shape, rng=None):
        c_in, h, w = maps_shape(in_shape, self.kind)
        shape = self._weight_shape(c_in)
        if self._fresh(rng):
            fan_in = shape[1] * shape[2] * shape[3]  # torch's: weight.size(1) * kH * kW
            self.params = {"weight": torch_uniform(rng, shape, fan_in)}
            if self.use_bias:
                self.params["bias"] = torch_uniform(rng, (self.out_channels,), fan_in)
            self.zero_grad()
        self._fits(self.params["weight"].shape[0], c_in)
        return maps_out(self.out_channels, h, w, self._out_hw)

    def plan(self, in_shape):
        if len(in_shape) != 3:
            return self.build(in_shape), 0  # refuses a flat input, saying where the layer belongs
        c_in, h, w = in_shape
        out = (self.out_channels, None, None) if h is None else (self.out_channels, *self._out_hw(h, w))
        return out, F.n_elements(self._weight_shape(c_in)) + (self.out_channels if self.use_bias else 0)

    def _options(self):
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}

    def _full_hw(self, h, w):
        """The output's size before ``padding`` crops it (with ``output_padding``'s rows and columns)."""
        return tuple((size - 1) * s + d * (k - 1) + 1 + op for size, s, d, k, op in zip(
            (h, w), self.stride, self.dilation, self.kernel_size, self.output_padding))

    def _taps(self, h, w):
        """(a, b, rows, columns) per kernel tap: where tap (a, b) of the input's pixels lands uncropped."""
        (sh, sw), (dh, dw), (kh, kw) = self.stride, self.dilation, self.kernel_size
        return [(a, b, slice(a * dh, a * dh + (h - 1) * sh + 1, sh), slice(b * dw, b * dw + (w - 1) * sw + 1, sw))
                for a in range(kh) for b in range(kw)]

    def _grouped_weight(self, c):
        """The weight as (groups, C_in/groups, C_out/groups * kH * kW)."""
        return self.params["weight"].reshape(self.groups, c // self.groups, -1)

    def forward(self, x, train=False):
        if train:
            self.save_for_backward(x)
        n, c, h, w = x.shape
        g, (kh, kw) = self.groups, self.kernel_size
        cout_g = self.out_channels // g
        # (1, g, C_out/g * kH * kW, C_in/g) @ (N, g, C_in/g, H * W): each pixel's contribution through each tap.
        products = np.matmul(self._grouped_weight(c).transpose(0, 2, 1)[None], x.reshape(n, g, c // g, h * w))
        products = products.reshape(n, g, cout_g, kh, kw, h, w)
        full = np.zeros((n, g, cout_g, *self._full_hw(h, w)), np.float32)
        for a, b, rows, columns in self._taps(h, w):
            full[:, :, :, rows, columns] += products[:, :, :, a, b]
        (ph, pw), (fh, fw) = self.padding, full.shape[3:]
        y = full.reshape(n, self.out_channels, fh, fw)[:, :, ph:fh - ph, pw:fw - pw]
        if self.use_bias:
            y = y + self.params["bias"][None, :, None, None]
        return np.ascontiguousarray(y, dtype=np.float32)

    def backward(self, grad):
        (x,) = self.saved
        n, c, h, w = x.shape
        g, (kh, kw), (ph, pw) = self.groups, self.kernel_size, self.padding
        cout_g = self.out_channels // g
        full = np.zeros((n, self.out_channels, *self._full_hw(h, w)), np.float32)
        full[:, :, ph:ph + grad.shape[2], pw:pw + grad.shape[3]] = grad
        full = full.reshape(n, g, cout_g, *full.shape[2:])
        gathered = np.empty((n, g, cout_g, kh, kw, h, w), np.float32)
        for a, b, rows, columns in self._taps(h, w):
            gathered[:, :, :, a, b] = full[:, :, :, rows, columns]
        gathered = gathered.reshape(n, g, cout_g * kh * kw, h * w)
        weight = self._grouped_weight(c)
        grad_w = np.matmul(x.reshape(n, g, c // g, h * w), gathered.transpose(0, 1, 3, 2)).sum(axis=0)
        self.grads["weight"] += grad_w.reshape(self.params["weight"].shape)
        if self.use_bias:
            self.grads["bias"] += grad.sum(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        return np.matmul(weight[None], gathered).reshape(n, c, h, w)

    def channel_names(self, names):
        return [f"filter{c}" for c in range(self.out_channels)]

    def window(self):
        # An output pixel sums the input pixels within ceil(extent / stride) of each other, so that is
        # its extent in input pixels. Outputs lie 1/stride input pixels apart, which the integer
        # arithmetic of ``pipeline.receptive_fields`` cannot hold: stride 1 keeps the spacing as it
        # was, so the fields of later layers are upper bounds rather than too small.
        return tuple((-(-(d * (k - 1) + 1) // s), 1)
                     for d, k, s in zip(self.dilation, self.kernel_size, self.stride))

    def to_onnx(self, g, x, scope, prefix):
        inputs = [x, g.const(f"{prefix}weight", self.params["weight"])]
        if self.use_bias:
            inputs.append(g.const(f"{prefix}bias", self.params["bias"]))
        ph, pw = self.padding
        return g.op("ConvTranspose", inputs, scope, kernel_shape=list(self.kernel_size), strides=list(self.stride),
                    pads=[ph, pw, ph, pw], dilations=list(self.dilation), group=self.groups,
                    output_padding=list(self.output_padding))

    def torch_twin(self, in_shape):
        from torch import nn

        return self.load_into_torch(nn.ConvTranspose2d(
            in_shape[0], self.out_channels, self.kernel_size, stride=self.stride, padding=self.padding,
            output_padding=self.output_padding, groups=self.groups, bias=self.use_bias, dilation=self.dilation))

    onnx_in = ("ConvTranspose",)

    @classmethod
    def from_onnx(cls, node, ctx):
        """Weights (C_in, C_out/group, kH, kW) and bias constant; pads symmetric, no ``output_shape``."""
        weight = ctx.const(node.inputs[1])
        bias = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if weight is None or weight.ndim != 4:
            raise LayerError("the weights must be a constant (C_in, C_out/groups, kH, kW) tensor")
        if "output_shape" in node.attrs:
            raise LayerError("ConvTranspose with output_shape is not supported; export with pads and output_padding")
        auto = node.attrs.get("auto_pad", "NOTSET")
        if auto not in ("NOTSET", "VALID"):
            raise LayerError(f"ConvTranspose with auto_pad {auto} is not supported; export with explicit pads")
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])] if auto == "NOTSET" else [0, 0, 0, 0]
        if len(pads) != 4 or pads[:2] != pads[2:]:
            raise LayerError(f"ConvTranspose with asymmetric pads {pads} is not supported")
        groups = int(node.attrs.get("group", 1))
        table = {"type": "convtranspose", "out_channels": int(weight.shape[1]) * groups,
                 "kernel_size": [int(k) for k in weight.shape[2:]],
                 "stride": onnx_pair(node.attrs.get("strides"), "strides", 1), "padding": pads[:2],
                 "output_padding": onnx_pair(node.attrs.get("output_padding"), "output_padding", 0),
                 "dilation": onnx_pair(node.attrs.get("dilations"), "dilations", 1),
                 "groups": groups, "bias": bias is not None}
        arrays = {"weight": weight.astype(np.float32)}
        if bias is not None:
            arrays["bias"] = bias.astype(np.float32)
        return OnnxNode(table, arrays, [node.inputs[0]])

    def describe(self):
        return (f"convtranspose {self.out_channels}x{self.kernel_size[0]}x{self.kernel_size[1]}, "
                f"stride {list(self.stride)}, padding {list(self.padding)}")


# --------------------------------------------------------------------------- resize


RESIZE_MODES = ("nearest", "linear")
#: Where output pixel o samples the input, with s = output size / input size (or the given scale):
#: asymmetric o / s; half_pixel (o + 0.5) / s - 0.5; pytorch_half_pixel the same, but 0 for a
#: one-pixel output; align_corners o * (in - 1) / (out - 1). ONNX's names for them.
COORDINATES = ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners")
#: How nearest rounds that position: ONNX's ``nearest_mode``.
NEAREST_MODES = {"floor": np.floor, "ceil": np.ceil,
                 "round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5)}


def _along(x, axis, taps):
    """``x`` resampled along ``axis``: output o is (1 - t) x[i0] + t x[i1] for taps (i0, i1, t)."""
    i0, i1, t = taps
    y = np.take(x, i0, axis=axis)
    if t.any():
        shape = [1] * x.ndim
        shape[axis] = -1
        y = y + (np.take(x, i1, axis=axis) - y) * t.reshape(shape)
    return y


def _along_adjoint(grad, axis, taps, size):
    """The adjoint of ``_along``: each output's gradient goes back to its taps, with their weights.

    Positions grow with the output index in every coordinate mode, so each tap's
    indices never decrease: the outputs that share a source pixel are a run,
    summed by one ``np.add.reduceat`` (``np.add.at`` took 0.8 s on 64 maps of 224²).
    """
    i0, i1, t = taps
    shape = list(grad.shape)
    shape[axis] = size
    out = np.zeros(shape, np.float32)
    weights = t.reshape([-1 if k == axis else 1 for k in range(grad.ndim)])
    for index, part in ((i0, grad * (1 - weights) if t.any() else grad), (i1, grad * weights if t.any() else None)):
        if part is None:
            continue
        sources, starts = np.unique(index, return_index=True)
        where = [slice(None)] * grad.ndim
        where[axis] = sources
        out[tuple(where)] += np.add.reduceat(part, starts, axis=axis)
    return out


class Resize(Layer):
    """Maps resized by ``scale`` (h, w) factors, output floor(H * scale), or to ``size`` (h, w):
    ``nearest`` or ``linear`` (bilinear) interpolation, sampling where ``coordinates`` says
    (``COORDINATES``); nearest rounds by ``nearest`` (``NEAREST_MODES``).

    torch's ``F.interpolate(mode="nearest")`` is asymmetric + floor, ``"nearest-exact"``
    half_pixel + round_prefer_ceil; ``mode="bilinear"`` is linear + half_pixel, or
    align_corners with ``align_corners=True``. Paddle writes half_pixel + round_prefer_floor.
    Linear interpolation clamps positions to the input, so the border repeats.
    The backward pass is the adjoint: each output pixel's gradient goes back to
    the input pixels it was made from, with their weights. Saves (input shape, taps).
    """

    kind = "resize"

    def __init__(self, scale=None, size=None, *, mode="nearest", coordinates="asymmetric", nearest="floor"):
        if scale is not None and size is not None:
            raise LayerError("resize takes scale or size, not both")
        if size is not None:
            self.scale, self.size = None, _pair("size", size, 1)
        else:
            scale = (2.0, 2.0) if scale is None else scale
            scale = (scale, scale) if not isinstance(scale, (list, tuple)) else scale
            if len(scale) != 2:
                raise LayerError(f"resize scale must be a number or (h, w) numbers, but got {scale!r}")
            self.scale, self.size = tuple(_number("resize scale", s, positive=True) for s in scale), None
        for name, value, allowed in (("mode", mode, RESIZE_MODES), ("coordinates", coordinates, COORDINATES),
                                     ("nearest", nearest, tuple(NEAREST_MODES))):
            if value not in allowed:
                raise LayerError(f"resize {name} must be one of {', '.join(allowed)}, but got {value!r}")
        self.mode, self.coordinates, self.nearest = mode, coordinates, nearest

    def _out_hw(self, h, w):
        out = self.size or tuple(math.floor(n * s) for n, s in zip((h, w), self.scale))
        if min(out) < 1 or max(out) > config.MAX_SIDE:
            raise LayerError(f"resize of a {h}x{w} input gives {out[0]}x{out[1]}; "
                             f"each side must be from 1 to {config.MAX_SIDE}")
        return out

    def build(self, in_shape, rng=None):
        c, h, w = maps_shape(in_shape, self.kind)
        if h is None and self.size:
            return c, *self.size
        return maps_out(c, h, w, self._out_hw)

    def _taps(self, n_in, n_out, scale):
        """(i0, i1, t) for one axis: output o = (1 - t[o]) x[i0[o]] + t[o] x[i1[o]]."""
        o = np.arange(n_out, dtype=np.float64)
        if self.coordinates == "align_corners":
            src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else 0 * o
        elif self.coordinates == "asymmetric":
            src = o / scale
        elif self.coordinates == "half_pixel" or n_out > 1:
            src = (o + 0.5) / scale - 0.5
        else:  # pytorch_half_pixel, one output pixel
            src = 0 * o
        if self.mode == "nearest":
            i = np.clip(NEAREST_MODES[self.nearest](src), 0, n_in - 1).astype(np.intp)
            return i, i, np.zeros(n_out, np.float32)
        src = np.clip(src, 0, n_in - 1)
        i0 = np.floor(src).astype(np.intp)
        return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)

    def _all_taps(self, h, w):
        out = self._out_hw(h, w)
        scales = self.scale or (out[0] / h, out[1] / w)
        return [self._taps(n, m, s) for n, m, s in zip((h, w), out, scales)]

    def forward(self, x, train=False):
        taps = self._all_taps(*x.shape[2:])
        if train:
            self.save_for_backward(x.shape, taps)
        return np.ascontiguousarray(_along(_along(x, 2, taps[0]), 3, taps[1]), np.float32)

    def backward(self, grad):
        shape, taps = self.saved
        return _along_adjoint(_along_adjoint(grad, 3, taps[1], shape[3]), 2, taps[0], shape[2])

    def window(self):
        # Nearest reads one input pixel, linear two neighbours. A reduction by 1/k moves k input pixels per
        # output; an enlargement's fractional spacing is kept at 1 (later fields are then upper bounds).
        extent = 1 if self.mode == "nearest" else 2
        steps = [max(1, round(1 / s)) for s in self.scale] if self.scale else [1, 1]
        return (extent, steps[0]), (extent, steps[1])

    def to_onnx(self, g, x, scope, prefix):
        attrs = {"mode": self.mode, "coordinate_transformation_mode": self.coordinates}
        if self.mode == "nearest":
            attrs["nearest_mode"] = self.nearest
        if self.size is None:
            scales = g.const(f"{scope}/scales", np.array([1, 1, *self.scale], np.float32))
            return g.op("Resize", [x, "", scales], scope, **attrs)
        # Before opset 18 sizes name every axis: the batch and channels are the input's own.
        kept = g.slice(g.op("Shape", [x], scope), 0, 0, 2, scope)
        sizes = g.op("Concat", [kept, g.ints(f"{scope}/size", self.size)], scope, axis=0)
        return g.op("Resize", [x, "", "", sizes], scope, **attrs)

    def torch_twin(self, in_shape):
        import torch.nn.functional as tf

        target = {"size": tuple(self.size)} if self.size else {"scale_factor": tuple(self.scale)}
        half = self.coordinates in ("half_pixel", "pytorch_half_pixel")
        if self.mode == "nearest" and self.coordinates == "asymmetric" and self.nearest == "floor":
            return torch_lambda(lambda x: tf.interpolate(x, mode="nearest", **target))
        if self.mode == "nearest" and half and self.nearest == "round_prefer_ceil":
            return torch_lambda(lambda x: tf.interpolate(x, mode="nearest-exact", **target))
        if self.mode == "linear" and (half or self.coordinates == "align_corners"):
            corners = self.coordinates == "align_corners"
            return torch_lambda(lambda x: tf.interpolate(x, mode="bilinear", align_corners=corners, **target))
        # ONNX Runtime is this form's oracle in the tests.
        raise NotImplementedError(f"torch has no {self.mode} interpolation with {self.coordinates} coordinates"
                                  + (f" rounded by {self.nearest}" if self.mode == "nearest" else ""))

    onnx_in = ("Resize", "Upsample")

    @classmethod
    def from_onnx(cls, node, ctx):
        """Resize (opset 10: X, scales; from 11: X, roi, scales, sizes) or Upsample (scales an attribute
        before opset 9, an input from 9), scales and sizes constant and leaving N and C as they are.

        Before opset 11 positions are asymmetric, and nearest takes the floor when enlarging and
        the ceiling when reducing (ONNX Runtime's reading of those opsets).
        """
        attrs = node.attrs
        mode = {"bilinear": "linear"}.get(attrs.get("mode", "nearest"), attrs.get("mode", "nearest"))
        if mode not in RESIZE_MODES:
            raise LayerError(f"{node.op} mode {mode} is not supported; cnn runs nearest and linear")
        old = node.op == "Upsample" or ctx.opset < 11
        if old:
            scales = attrs.get("scales")
            scales = _const_input(node, ctx, 1, "scales") if scales is None else np.asarray(scales)
            sizes, coordinates = None, "asymmetric"
        else:
            coordinates = attrs.get("coordinate_transformation_mode", "half_pixel")
            if coordinates not in COORDINATES:
                raise LayerError(f"coordinate_transformation_mode {coordinates} is not supported; "
                                 f"cnn runs {', '.join(COORDINATES)}")
            if attrs.get("antialias", 0) or attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
                raise LayerError("antialias and keep_aspect_ratio_policy are not supported")
            scales, sizes = _const_input(node, ctx, 2, "scales"), _const_input(node, ctx, 3, "sizes")
            if scales is not None and scales.size == 0:  # an empty placeholder beside sizes
                scales = None
        shape = ctx.shape(node.inputs[0])
        if shape is None or len(shape) != 4:
            raise LayerError("only maps (N, C, H, W) of a known size are resized")
        axes = [int(a) % 4 for a in attrs.get("axes", [0, 1, 2, 3])]
        given = scales if scales is not None else sizes
        if given is None or given.size != len(axes):
            raise LayerError(f"{node.op} needs scales or sizes, one per axis {axes}")
        full = np.array([1.0, 1.0, 1.0, 1.0]) if scales is not None else np.array(shape, np.float64)
        full[axes] = given.reshape(-1)
        if (scales is not None and list(full[:2]) != [1, 1]) or (sizes is not None and full[1] != shape[1]):
            raise LayerError(f"only the height and width are resized, not the batch or channels ({list(full)})")
        table = {"type": "resize", "mode": mode, "coordinates": coordinates}
        if scales is not None:
            table["scale"] = [float(s) for s in full[2:]]
        else:
            table["size"] = [int(s) for s in full[2:]]
        if mode == "nearest":
            if old:
                enlarging = {s >= 1 for s in full[2:]}
                if len(enlarging) > 1:
                    raise LayerError(f"nearest {node.op} that enlarges one axis and reduces the other is not supported")
                table["nearest"] = "floor" if enlarging.pop() else "ceil"
            else:
                table["nearest"] = attrs.get("nearest_mode", "round_prefer_floor")
                if table["nearest"] not in NEAREST_MODES:
                    raise LayerError(f"nearest_mode {table['nearest']} is not supported")
        return OnnxNode(table, {}, [node.inputs[0]])

    def describe(self):
        target = f"x{self.scale[0]:g},{self.scale[1]:g}" if self.scale else f"to {self.size[0]}x{self.size[1]}"
        how = f"{self.coordinates}" + (f", {self.nearest}" if self.mode == "nearest" else "")
        return f"resize {target} {self.mode} ({how})"


# --------------------------------------------------------------------------- padding


#: Pad modes, ONNX's names: constant (``value``), reflect (mirrored about the edge pixel, which is not
#: repeated; torch's "reflect") and edge (the edge pixel repeated; torch's "replicate").
PAD_MODES = ("constant", "reflect", "edge")
_FOLD_MODE = {"constant": "zeros", "reflect": "reflect", "edge": "replicate"}
_TORCH_MODE = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}


class Pad(Layer):
    """Maps padded by ``pads`` (top, bottom, left, right) pixels in ``mode`` (``PAD_MODES``):
    (C, H, W) -> (C, H + top + bottom, W + left + right). Its backward pass crops the
    gradient, adding the border's to the pixels it copied (reflect, edge). Saves nothing."""

    kind = "pad"

    def __init__(self, pads=(1, 1, 1, 1), mode="constant", value=0.0):
        if not isinstance(pads, (list, tuple)) or len(pads) != 4:
            raise LayerError(f"pad pads must be 4 amounts (top, bottom, left, right), but got {pads!r}")
        self.pads = [whole_number("pad pads", p, config.MAX_SIDE, minimum=0) for p in pads]
        if mode not in PAD_MODES:
            raise LayerError(f"pad mode must be one of {', '.join(PAD_MODES)}, but got {mode!r}")
        self.mode, self.value = mode, _number("pad value", value)

    def build(self, in_shape, rng=None):
        c, h, w = maps_shape(in_shape, self.kind)
        top, bottom, left, right = self.pads
        if self.mode == "reflect" and h is not None and (max(top, bottom) >= h or max(left, right) >= w):
            raise LayerError(f"reflect padding {self.pads} must be smaller than the {h}x{w} input; "
                             "use less padding or mode edge")
        return maps_out(c, h, w, lambda h, w: (h + top + bottom, w + left + right))

    def forward(self, x, train=False):
        top, bottom, left, right = self.pads
        widths = ((0, 0), (0, 0), (top, bottom), (left, right))
        if self.mode == "constant":
            return np.pad(x, widths, constant_values=np.float32(self.value))
        return np.pad(x, widths, mode=self.mode)

    def backward(self, grad):
        return fold_padding(grad, self.pads, _FOLD_MODE[self.mode])

    def to_onnx(self, g, x, scope, prefix):
        top, bottom, left, right = self.pads
        inputs = [x, g.ints(f"{scope}/pads", [0, 0, top, left, 0, 0, bottom, right])]
        if self.mode == "constant":
            inputs.append(g.const(f"{scope}/value", np.float32(self.value)))
        return g.op("Pad", inputs, scope, mode=self.mode)

    def torch_twin(self, in_shape):
        import torch.nn.functional as tf

        top, bottom, left, right = self.pads
        value = {"value": self.value} if self.mode == "constant" else {}
        return torch_lambda(lambda x: tf.pad(x, (left, right, top, bottom), mode=_TORCH_MODE[self.mode], **value))

    onnx_in = ("Pad",)

    @classmethod
    def from_onnx(cls, node, ctx):
        """Pads as an attribute (before opset 11) or a constant input (from 11, with ``axes`` from 18)."""
        mode = node.attrs.get("mode", "constant")
        if mode not in PAD_MODES:
            raise LayerError(f"Pad mode {mode} is not supported; cnn runs {', '.join(PAD_MODES)}")
        if ctx.opset < 11:
            pads, value = node.attrs.get("pads"), node.attrs.get("value", 0.0)
        else:
            pads = _const_input(node, ctx, 1, "pads")
            value = _const_input(node, ctx, 2, "the constant value")
            axes = _const_input(node, ctx, 3, "axes")
            if pads is not None and axes is not None:  # amounts for the listed axes only
                full = np.zeros(8, np.int64)
                for k, axis in enumerate(int(a) % 4 for a in axes.reshape(-1)):
                    full[axis], full[axis + 4] = pads.reshape(-1)[k], pads.reshape(-1)[k + axes.size]
                pads = full
        pads = None if pads is None else [int(p) for p in np.ravel(pads)]
        if pads is None or len(pads) != 8:
            raise LayerError(f"Pad needs 8 amounts for maps (N, C, H, W), but got {pads}")
        if any(pads[k] for k in (0, 1, 4, 5)):
            raise LayerError(f"only the height and width are padded, not the batch or channels ({pads})")
        if min(pads) < 0:
            raise LayerError(f"negative pads (cropping) are not supported ({pads})")
        table = {"type": "pad", "pads": [pads[2], pads[6], pads[3], pads[7]], "mode": mode}
        if mode == "constant":
            table["value"] = 0.0 if value is None else float(np.ravel(value)[0]) if np.size(value) else 0.0
        return OnnxNode(table, {}, [node.inputs[0]])

    def describe(self):
        return f"pad {self.pads} {self.mode}" + (f" {self.value:g}" if self.mode == "constant" else "")
