"""The fixed-filter layers of pipelines: convolution with banks of named kernels, and the
corner arithmetic built on them (channel products, the Harris and Shi-Tomasi responses,
normalisation). They follow ``cnn_cli.layers.Layer``; ``cnn_cli.registry`` lists them."""

from __future__ import annotations

import copy

import numpy as np

from . import functional as F
from .layers import Layer, LayerError, maps_out, maps_shape, torch_conv, torch_lambda


class Products(Layer):
    """All pairwise products of channels, c_i * c_j for i <= j (e.g. Ix², IxIy, Iy²)."""

    kind = "products"

    def build(self, in_shape, rng=None):
        c = in_shape[0]
        if c > 16:
            raise LayerError(f"products takes at most 16 channels, but gets {c}")
        self.pairs = [(i, j) for i in range(c) for j in range(i, c)]
        return (len(self.pairs), *in_shape[1:])

    def channel_names(self, names):
        return [f"{names[i]}*{names[j]}" for i, j in self.pairs]

    def forward(self, x, train=False):
        return np.stack([x[:, i] * x[:, j] for i, j in self.pairs], axis=1)

    def to_onnx(self, g, x, scope, prefix):
        firsts, seconds = zip(*self.pairs)
        return g.op("Mul", [g.channels(x, firsts, scope), g.channels(x, seconds, scope)], scope)

    def torch_twin(self, in_shape):
        firsts, seconds = (list(t) for t in zip(*self.pairs))
        return torch_lambda(lambda x: x[:, firsts] * x[:, seconds])


class CornerResponse(Layer):
    """Corner strength from the smoothed structure tensor (Sxx, Sxy, Syy), one map.

    Harris & Stephens (1988): det(M) - k·trace(M)². Shi & Tomasi (1994): the
    smaller eigenvalue of M. Both are large only where the gradient varies in
    two directions, that is at corners, and small (Harris: negative) on edges.
    """

    kind = "corner_response"

    def __init__(self, method="harris", k=0.05):
        if method not in ("harris", "shi_tomasi"):
            raise LayerError(f"corner_response method must be 'harris' or 'shi_tomasi', not {method!r}")
        self.method, self.k = method, k

    def build(self, in_shape, rng=None):
        if in_shape[0] != 3:
            raise LayerError(
                "corner_response needs the 3 channels Sxx, Sxy, Syy (a products layer over "
                f"x and y derivatives, then smoothing), but gets {in_shape[0]}"
            )
        return (1, *in_shape[1:])

    def channel_names(self, names):
        return [self.method]

    def forward(self, x, train=False):
        sxx, sxy, syy = x[:, 0], x[:, 1], x[:, 2]
        if self.method == "harris":
            r = sxx * syy - sxy * sxy - np.float32(self.k) * (sxx + syy) ** 2
        else:
            r = 0.5 * (sxx + syy) - np.sqrt(0.25 * (sxx - syy) ** 2 + sxy * sxy)
        return r[:, None].astype(np.float32)

    def to_onnx(self, g, x, scope, prefix):
        sxx, sxy, syy = (g.channels(x, [c], scope) for c in range(3))

        def mul(a, b):
            return g.op("Mul", [a, b], scope)

        def const(name, value):
            return g.const(f"{scope}/{name}", value)

        trace = g.op("Add", [sxx, syy], scope)
        if self.method == "harris":  # det - k * trace², in the order forward computes it
            det = g.op("Sub", [mul(sxx, syy), mul(sxy, sxy)], scope)
            return g.op("Sub", [det, mul(const("k", self.k), mul(trace, trace))], scope)
        diff = g.op("Sub", [sxx, syy], scope)  # shi_tomasi: trace/2 - sqrt((sxx - syy)²/4 + sxy²)
        root = g.op("Sqrt", [g.op("Add", [mul(const("quarter", 0.25), mul(diff, diff)), mul(sxy, sxy)], scope)],
                    scope)
        return g.op("Sub", [mul(const("half", 0.5), trace), root], scope)

    def torch_twin(self, in_shape):
        def response(x):
            sxx, sxy, syy = x[:, 0:1], x[:, 1:2], x[:, 2:3]
            if self.method == "harris":
                return sxx * syy - sxy * sxy - self.k * (sxx + syy) ** 2
            return 0.5 * (sxx + syy) - ((0.25 * (sxx - syy) ** 2 + sxy * sxy)).sqrt()
        return torch_lambda(response)

    def describe(self):
        return f"corner_response {self.method}" + (f", k={self.k}" if self.method == "harris" else "")


class Normalize(Layer):
    """``l2``: divide each pixel's channel vector by its norm; ``standardize``: each map to mean 0, std 1."""

    kind = "normalize"

    def __init__(self, method="l2", eps=1e-6):
        if method not in ("l2", "standardize"):
            raise LayerError(f"normalize method must be 'l2' or 'standardize', not {method!r}")
        self.method, self.eps = method, eps

    def forward(self, x, train=False):
        if self.method == "l2":
            norm = np.sqrt(np.sum(x * x, axis=1, keepdims=True, dtype=np.float64))
        else:
            x = x - x.mean(axis=(2, 3), keepdims=True, dtype=np.float64)
            norm = x.std(axis=(2, 3), keepdims=True, dtype=np.float64)
        return (x / (norm + self.eps)).astype(np.float32)

    def to_onnx(self, g, x, scope, prefix):
        eps = g.const(f"{scope}/eps", self.eps)
        if self.method == "l2":  # x / (||x|| over channels + eps)
            norm = g.op("Sqrt", [g.reduce("ReduceSumSquare", x, [1], scope)], scope)
        else:  # standardize: (x - mean) / (std + eps), per map
            x = g.op("Sub", [x, g.reduce("ReduceMean", x, [2, 3], scope)], scope)
            norm = g.op("Sqrt", [g.reduce("ReduceMean", g.op("Mul", [x, x], scope), [2, 3], scope)], scope)
        return g.op("Div", [x, g.op("Add", [norm, eps], scope)], scope)

    def torch_twin(self, in_shape):
        def normalize(x):
            if self.method == "l2":
                return x / ((x * x).sum(1, keepdim=True).sqrt() + self.eps)
            x = x - x.mean((2, 3), keepdim=True)
            return x / (x.std((2, 3), unbiased=False, keepdim=True) + self.eps)
        return torch_lambda(normalize)

    def describe(self):
        return f"normalize {self.method}"


class BankConv(Layer):
    """A convolution whose filters come from banks of named kernels.

    How a kernel meets C_in input channels (``mode``):

    - ``mean``: a 2-D kernel is repeated over all C_in channels with weight
      1/C_in, so the filter sees the channel mean; one map per kernel. This is
      the seed's multichannel filter: C_in kernels whose responses are summed.
    - ``depthwise``: every kernel runs over every channel on its own
      (``groups = C_in``); C_in maps per kernel, named ``kernel@channel``.

    A kernel written for C_in channels (3-D in the bank file) is used as it is.
    Banks run one by one, each at its own kernel size, and their maps are
    concatenated; kernels of different sizes within a bank are centred in the
    largest (as "same" padding would centre them), so each gives the same map
    as it would alone.
    """

    kind = "conv"
    cam_source = True

    def __init__(self, banks, *, mode="mean", stride=1, padding="same", dilation=1, padding_mode="reflect"):
        if mode not in ("mean", "depthwise"):
            raise LayerError(f"conv mode must be 'mean' or 'depthwise', not {mode!r}")
        self.banks, self.mode = list(banks), mode
        self.options = dict(stride=stride, padding=padding, dilation=dilation, padding_mode=padding_mode)
        F.check_conv_options(**self.options)  # bad values are the file's fault: say so when it loads
        self.filters = []  # (weight, bias, groups) per bank, filled by build()

    def _per_channel(self, bank):
        """True when every kernel of ``bank`` runs on each input channel alone (depthwise, 2-D kernels)."""
        return self.mode == "depthwise" and all(k.channels is None for k in bank.kernels)

    def build(self, in_shape, rng=None):
        c_in, h, w = maps_shape(in_shape, self.kind)
        self.filters = []
        for bank in self.banks:
            side_h = max(k.size[0] for k in bank.kernels)
            side_w = max(k.size[1] for k in bank.kernels)
            per_kernel = [self._filter(k, c_in, side_h, side_w) for k in bank.kernels]
            if self._per_channel(bank):
                # (C_in * M, 1, kH, kW), output o = c*M + m reads input channel c.
                base = np.stack([p[0, 0] for p in per_kernel])
                weight = np.tile(base, (c_in, 1, 1)).reshape(-1, 1, side_h, side_w)
                self.filters.append((weight, np.tile([k.bias for k in bank.kernels], c_in), c_in))
            else:
                weight = np.stack([p[0] for p in per_kernel])
                self.filters.append((weight, np.array([k.bias for k in bank.kernels]), 1))
        self.filters = [(w.astype(np.float32), b.astype(np.float32), g) for w, b, g in self.filters]
        return maps_out(sum(len(b) for _, b, _ in self.filters), h, w, self._out_hw)

    def channel_names(self, names):
        out = []
        for bank in self.banks:
            if self._per_channel(bank):
                out += [f"{k.name}@{c}" for c in names for k in bank.kernels]
            else:
                out += [k.name for k in bank.kernels]
        return out

    def _filter(self, kernel, c_in, side_h, side_w):
        """Weights (1 or C_in, C_in or 1, side_h, side_w) for one kernel, centred."""
        kh, kw = kernel.size
        top = (side_h - 1) // 2 - (kh - 1) // 2
        left = (side_w - 1) // 2 - (kw - 1) // 2
        if kernel.channels is not None:
            if kernel.channels != c_in:
                raise LayerError(
                    f"kernel '{kernel.name}' is written for {kernel.channels} input channels, "
                    f"but the layer gets {c_in}; use --color rgb for 3-channel kernels"
                )
            if self.mode == "depthwise":
                raise LayerError(f"kernel '{kernel.name}' has channels, so it cannot run in depthwise mode")
            out = np.zeros((1, c_in, side_h, side_w))
            out[0, :, top:top + kh, left:left + kw] = kernel.weights
            return out
        out = np.zeros((1, 1, side_h, side_w))
        out[0, 0, top:top + kh, left:left + kw] = kernel.weights
        if self.mode == "mean":
            return np.repeat(out, c_in, axis=1) / c_in
        return out

    def forward(self, x, train=False):
        # "light": a bank over a small image runs in numpy, and a run of those never loads Numba.
        maps = [F.conv2d(x, w, b, groups=g, algorithm="light", **self.options) for w, b, g in self.filters]
        shapes = {m.shape[2:] for m in maps}
        if len(shapes) > 1:
            raise LayerError(
                f"banks in one conv layer give maps of different sizes {sorted(shapes)}; "
                "use padding = \"same\" or put the banks in separate layers"
            )
        return maps[0] if len(maps) == 1 else np.concatenate(maps, axis=1)

    def _padding_pairs(self):
        stride = F.pair("stride", self.options["stride"], 1)
        dilation = F.pair("dilation", self.options["dilation"], 1)
        out = []
        for w, _, _ in self.filters:
            pads = F.conv_padding(self.options["padding"], w.shape[2:], dilation, stride)
            out.append((pads, w.shape[2:]))
        return stride, dilation, out

    def _out_hw(self, h, w):
        stride, dilation, pads = self._padding_pairs()
        sizes = set()
        for (top, bottom, left, right), (kh, kw) in pads:
            try:
                sizes.add((
                    F.out_size(h + top + bottom, kh, stride[0], dilation[0], "height"),
                    F.out_size(w + left + right, kw, stride[1], dilation[1], "width"),
                ))
            except ValueError as exc:
                raise LayerError(str(exc)) from None
        if len(sizes) > 1:
            raise LayerError(
                f"banks in one conv layer give maps of different sizes {sorted(sizes)}; "
                "use padding = \"same\" or put the banks in separate layers"
            )
        return sizes.pop()

    def window(self):
        stride, dilation, pads = self._padding_pairs()
        kh = max(k[0] for _, k in pads)
        kw = max(k[1] for _, k in pads)
        return (dilation[0] * (kh - 1) + 1, stride[0]), (dilation[1] * (kw - 1) + 1, stride[1])

    @property
    def num_params(self):
        return sum(w.size + b.size for w, b, _ in self.filters)

    def plan(self, in_shape):
        """Its kernels times the input channels, from filters built for one channel (as large as the banks)."""
        layer = copy.copy(self)
        c_in, h, w = in_shape if len(in_shape) == 3 else (None, None, None)
        if c_in is None or any(k.channels is not None for bank in self.banks for k in bank.kernels):
            out = layer.build(in_shape)  # kernels written for C channels fix C: the bank holds them already
            return out, layer.num_params
        out = layer.build((1, h, w))
        per_channel = self.mode == "depthwise"
        channels = sum(len(bank.kernels) * (c_in if per_channel else 1) for bank in self.banks)
        return (channels, *out[1:]), layer.num_params * c_in

    def to_onnx(self, g, x, scope, prefix):
        maps = []
        for b, (weight, bias, groups) in enumerate(self.filters):
            bank = self.banks[b].name
            maps.append(g.conv(x, weight, bias, {**self.options, "groups": groups}, f"{scope}/{bank}",
                               (f"{scope}.{bank}.weight", f"{scope}.{bank}.bias")))
        return maps[0] if len(maps) == 1 else g.op("Concat", maps, scope, axis=1)

    def torch_twin(self, in_shape):
        import torch

        convs = [torch_conv(in_shape[0], w, b, g, self.options) for w, b, g in self.filters]
        return torch_lambda(lambda x: torch.cat([conv(x) for conv in convs], 1))

    def describe(self):
        banks = ", ".join(b.name for b in self.banks)
        return f"conv [{banks}] {self.mode}, padding {self.options['padding']!r} {self.options['padding_mode']}"
