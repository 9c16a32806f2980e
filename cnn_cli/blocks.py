"""Blocks made of several operations, with their own backward passes: the
ResNet basic block and NetVLAD aggregation."""

from __future__ import annotations

import copy

import numpy as np

from .layers import ACTIVATIONS, maps_shape
from .trainable import MAX_CHANNELS, BatchNorm2d, Conv2d, Param, whole_number


class _PartsGrads(dict):
    """A block's gradients under dotted names: its parts' own arrays, looked up when first read (the
    parts make theirs then too, see ``trainable.Grads``)."""

    def __init__(self, parts):
        super().__init__()
        self._parts = parts

    def __missing__(self, key):
        part, name = key.rsplit(".", 1)
        self[key] = value = self._parts[part].grads[name]
        return value


class Residual(Param):
    """ResNet basic block (He et al., 2016): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or a 1x1 strided conv + batch norm
    (``downsample``, as in torchvision) when the shape changes. Saves its
    output, where the last ReLU let the gradient through (bn1 keeps its own,
    its ReLU fused).
    """

    kind = "residual"
    cam_source = True

    def __init__(self, out_channels, stride=1):
        self.out_channels = whole_number("out_channels", out_channels, MAX_CHANNELS)
        self.stride = whole_number("stride", stride, 8)
        self.parts = {}
        self.params, self.buffers = {}, {}

    def build(self, in_shape, rng=None):
        c_in = maps_shape(in_shape, self.kind)[0]
        c = self.out_channels
        fresh = self._fresh(rng)
        if fresh:
            self.parts = {
                "conv1": Conv2d(c, 3, stride=self.stride, padding=1, bias=False),
                "bn1": BatchNorm2d(),
                "conv2": Conv2d(c, 3, padding=1, bias=False),
                "bn2": BatchNorm2d(),
            }
            if self.stride != 1 or c_in != c:
                self.parts["downsample.0"] = Conv2d(c, 1, stride=self.stride, bias=False)
                self.parts["downsample.1"] = BatchNorm2d()
        out = in_shape
        for name in ("conv1", "bn1", "conv2", "bn2"):
            out = self.parts[name].build(out, rng)
        if "downsample.0" in self.parts:
            self.parts["downsample.1"].build(self.parts["downsample.0"].build(in_shape, rng), rng)
        if fresh:
            self._collect()
        return out

    def _collect(self):
        """Expose the parts' arrays under dotted names (views, not copies)."""
        self.params = {f"{n}.{k}": v for n, p in self.parts.items() for k, v in p.params.items()}
        self.buffers = {f"{n}.{k}": v for n, p in self.parts.items() for k, v in p.buffers.items()}
        self.grads = _PartsGrads(self.parts)

    def zero_grad(self):
        for p in self.parts.values():
            p.zero_grad()
        self._collect()

    def forward(self, x, train=False):
        p = self.parts
        if not train:
            return self._infer(x)
        h = p["bn1"].forward(p["conv1"].forward(x, train), train, relu=True)
        y = p["bn2"].forward(p["conv2"].forward(h, train), train)
        if "downsample.0" in p:
            y += p["downsample.1"].forward(p["downsample.0"].forward(x, train), train)
        else:
            y += x
        np.maximum(y, 0, out=y)
        self.save_for_backward(y)
        return y

    def _infer(self, x):
        """Eval mode's output, the same values as ``forward``'s: batch norm, the ReLUs and the sum
        write over the convolutions' outputs, so the block makes no other array."""
        p = self.parts
        h = p["bn1"].overwrite(p["conv1"].forward(x))
        h = p["bn2"].overwrite(p["conv2"].forward(np.maximum(h, 0, out=h)))
        if "downsample.0" in p:
            h += p["downsample.1"].overwrite(p["downsample.0"].forward(x))
        else:
            h += x
        return np.maximum(h, 0, out=h)

    def backward(self, grad):
        p = self.parts
        (out,) = self.saved
        # The last ReLU's mask is applied by the batch norms' backward kernels as they read grad
        # (0.08 ms for 2**19 values), and on the identity shortcut by the ReLU layer's own backward
        # (a product): numpy's where, on a mask this random, took 2.2 ms.
        g = p["conv2"].backward(p["bn2"].backward(grad, relu_out=out))
        gx = p["conv1"].backward(p["bn1"].backward(g))  # bn1's fused ReLU masks g
        if "downsample.0" in p:
            gx += p["downsample.0"].backward(p["downsample.1"].backward(grad, relu_out=out))
        else:
            gx += ACTIVATIONS["relu"].grad(grad, out, None)
        return gx

    def channel_names(self, names):
        return [f"filter{c}" for c in range(self.out_channels)]

    def window(self):
        # Two 3x3 convs, the first strided: extent 3 + 2*stride, stride `stride`.
        return (3 + 2 * self.stride, self.stride), (3 + 2 * self.stride, self.stride)

    def plan(self, in_shape):
        c, s = self.out_channels, self.stride
        c_in, h, w = in_shape if len(in_shape) == 3 else (None, None, None)
        if c_in is None:
            return self.build(in_shape), 0
        params = c * c_in * 9 + c * c * 9 + 2 * (4 * c + 1)  # two convs and two batch norms
        if s != 1 or c_in != c:
            params += c * c_in + 4 * c + 1
        return (c, None if h is None else (h - 1) // s + 1, None if w is None else (w - 1) // s + 1), params

    def evaluating(self):
        """A shallow copy whose batch norms are frozen."""
        twin = copy.copy(self)
        twin.parts = {name: part.evaluating() for name, part in self.parts.items()}
        return twin

    def to_onnx(self, g, x, scope, prefix):
        parts = self.parts

        def part(name, h):
            return parts[name].to_onnx(g, h, f"{scope}/{name}", f"{prefix}{name}.")

        h = g.op("Relu", [part("bn1", part("conv1", x))], scope)
        h = part("bn2", part("conv2", h))
        short = x
        if "downsample.0" in parts:
            short = part("downsample.1", part("downsample.0", x))
        return g.op("Relu", [g.op("Add", [h, short], scope)], scope)

    def torch_twin(self, in_shape):
        """torchvision's ResNet basic block, holding this block's weights."""
        import torch.nn.functional as TF
        from torch import nn

        out = (self.out_channels,)
        made = {name: part.torch_twin(in_shape if name in ("conv1", "downsample.0") else out)
                for name, part in self.parts.items()}

        class BasicBlock(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1, self.bn1, self.conv2, self.bn2 = (made[n] for n in ("conv1", "bn1", "conv2", "bn2"))
                self.downsample = None
                if "downsample.0" in made:
                    self.downsample = nn.Sequential(made["downsample.0"], made["downsample.1"])

            def forward(self, x):
                h = TF.relu(self.bn1(self.conv1(x)))
                h = self.bn2(self.conv2(h))
                return TF.relu(h + (x if self.downsample is None else self.downsample(x)))

        return BasicBlock()

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
    Saves the intermediate values of the forward pass that its backward pass reuses.

    Initialisation, as the paper's: the centroids are random unit vectors
    with non-negative entries, where the normalised descriptors of ReLU maps
    lie, and the assignment starts as a soft nearest-centroid rule,
    w_k = 2 alpha c_k, b_k = -alpha |c_k|^2 with ``ALPHA``. Centroids drawn
    in [0, 1]^D instead sit far from every descriptor, so each V_k starts
    close to -c_k whatever the image, and on the digits the preset reached
    0.45 after 20 epochs where this init reaches 0.92.
    """

    #: Sharpness of the initial soft assignment (the paper's alpha): 10, 30
    #: and 100 trained alike on the digits and textures; 1 trained slower.
    ALPHA = 10.0

    kind = "netvlad"

    def __init__(self, clusters=8):
        self.clusters = whole_number("clusters", clusters, 1024)
        self.params, self.buffers = {}, {}

    def build(self, in_shape, rng=None):
        d = maps_shape(in_shape, self.kind)[0]
        k = self.clusters
        if self._fresh(rng):
            centroids = np.abs(rng.standard_normal((k, d)))
            centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
            self.params = {
                "conv.weight": (2 * self.ALPHA * centroids).reshape(k, d, 1, 1).astype(np.float32),
                "conv.bias": (-self.ALPHA * np.sum(centroids**2, axis=1)).astype(np.float32),
                "centroids": centroids.astype(np.float32),
            }
            self.zero_grad()
        self._fits(self.params["centroids"].shape[1], d)
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
            self.save_for_backward(x.shape, xs, xnorm, a, vn, vnorm, out, onorm)
        return out.astype(np.float32)

    def backward(self, grad):
        shape, xs, xnorm, a, vn, vnorm, out, onorm = self.saved
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

    def plan(self, in_shape):
        if len(in_shape) != 3:
            return self.build(in_shape), 0
        k, d = self.clusters, in_shape[0]
        return (k * d,), 2 * k * d + k

    def to_onnx(self, g, x, scope, prefix):
        """As ``forward``: xs = x / ||x|| over D at each pixel; a = softmax over K of conv1x1(xs);
        V = a·xsᵀ − Σ_p a ⊗ c (N, K, D); each V_k L2-normalised; flattened (N, K*D); L2-normalised."""
        k = self.clusters
        d = self.params["centroids"].shape[1]
        xs = g.l2_normalize(x, 1, 1e-12, f"{scope}/input_norm")
        scores = g.op("Conv", [xs, g.const(f"{prefix}conv.weight", self.params["conv.weight"]),
                               g.const(f"{prefix}conv.bias", self.params["conv.bias"])], scope, kernel_shape=[1, 1])
        a = g.op("Reshape", [g.op("Softmax", [scores], scope, axis=1), g.ints(f"{scope}/shape_nkp", [0, k, -1])],
                 scope)
        xs_flat = g.op("Reshape", [xs, g.ints(f"{scope}/shape_ndp", [0, d, -1])], scope)
        weighted = g.op("MatMul", [a, g.op("Transpose", [xs_flat], scope, perm=[0, 2, 1])], scope)  # (N, K, D)
        mass = g.reduce("ReduceSum", a, [2], scope)  # (N, K, 1)
        centres = g.op("Mul", [mass, g.const(f"{prefix}centroids", self.params["centroids"])], scope)
        v = g.l2_normalize(g.op("Sub", [weighted, centres], scope), 2, 1e-12, f"{scope}/intra_norm")
        flat = g.op("Flatten", [v], scope, axis=1)
        return g.l2_normalize(flat, 1, 1e-12, f"{scope}/output_norm")

    def torch_twin(self, in_shape):
        """NetVLAD with a 1x1 conv for the soft assignment, as ``forward``."""
        import torch
        import torch.nn.functional as TF
        from torch import nn

        clusters, dim = self.clusters, in_shape[0]

        class TorchNetVLAD(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(dim, clusters, 1, bias=True)
                self.centroids = nn.Parameter(torch.rand(clusters, dim))

            def forward(self, x):
                x = TF.normalize(x, dim=1)
                a = TF.softmax(self.conv(x).flatten(2), dim=1)
                vlad = torch.einsum("nkp,ndp->nkd", a, x.flatten(2)) - self.centroids[None] * a.sum(2)[:, :, None]
                return TF.normalize(TF.normalize(vlad, dim=2).flatten(1), dim=1)

        return self.load_into_torch(TorchNetVLAD())

    def describe(self):
        return f"netvlad {self.clusters} clusters"
