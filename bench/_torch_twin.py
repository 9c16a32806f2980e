"""A torch twin of one of our networks and of our augmentation, for bench/train.py.

``torch_module(network)`` walks the built layers of a ``cnn_cli.nn.Network``
and makes the equivalent ``torch.nn.Sequential``, with the same state-dict
names, then loads our network's weights into it: both sides start from the
very same numbers. ``TorchAugment`` draws the same augmentations from torch's
generator and applies them to a whole batch with ``affine_grid`` and
``grid_sample``, torch's batched resampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnn_cli.blocks import NetVLAD, Residual
from cnn_cli.layers import Activation, GlobalPool, Pool
from cnn_cli.trainable import BatchNorm2d, Conv2d, Dropout, Flatten, Linear


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, as ``cnn_cli.blocks.Residual``."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))


class TorchNetVLAD(nn.Module):
    """NetVLAD with a 1x1 conv for the soft assignment, as ``cnn_cli.blocks.NetVLAD``."""

    def __init__(self, clusters, dim):
        super().__init__()
        self.conv = nn.Conv2d(dim, clusters, 1, bias=True)
        self.centroids = nn.Parameter(torch.rand(clusters, dim))

    def forward(self, x):
        x = F.normalize(x, dim=1)
        a = F.softmax(self.conv(x).flatten(2), dim=1)
        xf = x.flatten(2)
        vlad = torch.einsum("nkp,ndp->nkd", a, xf) - self.centroids[None] * a.sum(2)[:, :, None]
        vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.flatten(1), dim=1)


def _module(layer, in_shape):
    if isinstance(layer, Conv2d):
        o = layer.options
        pad = o["padding"]
        return nn.Conv2d(in_shape[0], layer.out_channels, layer.kernel_size, stride=o["stride"],
                         padding=pad, dilation=o["dilation"], groups=o["groups"], bias=layer.use_bias,
                         padding_mode=o["padding_mode"])
    if isinstance(layer, Linear):
        return nn.Linear(in_shape[0], layer.out_features, bias=layer.use_bias)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p)
    if isinstance(layer, BatchNorm2d):
        return nn.BatchNorm2d(in_shape[0], eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, Residual):
        return BasicBlock(in_shape[0], layer.out_channels, layer.stride)
    if isinstance(layer, NetVLAD):
        return TorchNetVLAD(layer.clusters, in_shape[0])
    if isinstance(layer, Pool):
        cls = nn.MaxPool2d if layer.kind == "maxpool" else nn.AvgPool2d
        return cls(layer.kernel_size, layer.stride, layer.padding)
    if isinstance(layer, GlobalPool):
        return nn.AdaptiveAvgPool2d(1) if layer.kind == "globalavgpool" else nn.AdaptiveMaxPool2d(1)
    if isinstance(layer, Activation):
        return {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(),
                "leaky_relu": nn.LeakyReLU(layer.slope)}[layer.kind]
    raise ValueError(f"no torch twin for layer {layer.kind}")


def torch_module(network):
    """The ``nn.Sequential`` twin of ``network``, holding a copy of its current weights."""
    shapes = [network.input_shape] + network.shapes[:-1]
    module = nn.Sequential(*(_module(layer, shape) for layer, shape in zip(network.layers, shapes)))
    state = {k: torch.from_numpy(np.array(v)) for k, v in network.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return module


class TorchAugment:
    """Our augmentations (``cnn_cli.augment``) on a normalised torch batch, drawn from torch's generator.

    Flips, rotation, zoom and whole-pixel shifts make one matrix per image
    for ``affine_grid``; ``grid_sample`` resamples the batch (bilinear,
    ``zeros`` fill as black, ``border`` for edge, ``reflection`` for reflect,
    which repeats the edge pixel where ours does not).
    Brightness, contrast, noise and erasing are the same formulas in torch.
    """

    def __init__(self, augmentations, mean, std, fill="zeros"):
        from cnn_cli.augment import parse

        self.aug = {a.name: a for a in parse(augmentations)}
        self.mean = torch.tensor(np.asarray(mean, np.float32))[None, :, None, None]
        self.std = torch.tensor(np.asarray(std, np.float32))[None, :, None, None]
        self.fill = fill

    def __call__(self, x):
        if not self.aug:
            return x
        if any(k in self.aug for k in ("shift", "rotate", "flip", "vflip", "scale")):
            x = self._geometric(x)
        if any(k in self.aug for k in ("brightness", "contrast", "noise")):
            x = self._photometric(x)
        if "erase" in self.aug:
            x = self._erase(x)
        return x

    def _geometric(self, x):
        n, _, h, w = x.shape
        aug = self.aug
        ones = torch.ones(n, dtype=torch.float64)
        sy = torch.where(torch.rand(n) < 0.5, -1.0, 1.0).double() if "vflip" in aug else ones
        sx = torch.where(torch.rand(n) < 0.5, -1.0, 1.0).double() if "flip" in aug else ones
        angle = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.radians(aug["rotate"].value) \
            if "rotate" in aug else torch.zeros(n, dtype=torch.float64)
        zoom = 1 + (torch.rand(n, dtype=torch.float64) * 2 - 1) * aug["scale"].value if "scale" in aug else ones
        if "shift" in aug:
            s = aug["shift"]
            my, mx = (int(s.value),) * 2 if s.pixels else (max(1, int(s.value * h)), max(1, int(s.value * w)))
            dy = torch.randint(-my, my + 1, (n,)).double()
            dx = torch.randint(-mx, mx + 1, (n,)).double()
        else:
            dy = dx = torch.zeros(n, dtype=torch.float64)
        cos, sin = torch.cos(angle), torch.sin(angle)
        # In pixels, (y, x) about the centre: source = inv @ (dest - shift); affine_grid wants (x, y) in
        # [-1, 1] units, so scale by the half-sides.
        a_yy, a_yx = sy * cos / zoom, sy * sin / zoom
        a_xy, a_xx = -sx * sin / zoom, sx * cos / zoom
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = a_xx, a_xy * h / w
        theta[:, 1, 0], theta[:, 1, 1] = a_yx * w / h, a_yy
        theta[:, 0, 2] = -(a_xx * dx + a_xy * dy) * 2 / w
        theta[:, 1, 2] = -(a_yx * dx + a_yy * dy) * 2 / h
        grid = F.affine_grid(theta.float(), list(x.shape), align_corners=False)
        if self.fill == "zeros":
            black = -self.mean / self.std
            return F.grid_sample(x - black, grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=False) + black
        mode = {"edge": "border", "reflect": "reflection"}[self.fill]
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=mode, align_corners=False)

    def _photometric(self, x):
        n = x.shape[0]
        px = x * self.std + self.mean
        if "brightness" in self.aug:
            f = _factors(n, self.aug["brightness"].value)
            px = (px * f).clamp(0, 1)
        if "contrast" in self.aug:
            f = _factors(n, self.aug["contrast"].value)
            means = px.mean(dim=(2, 3))
            grey = means @ torch.tensor([0.299, 0.587, 0.114]) if px.shape[1] == 3 else means[:, 0]
            px = (f * px + (1 - f) * grey[:, None, None, None]).clamp(0, 1)
        if "noise" in self.aug:
            px = (px + self.aug["noise"].value * torch.randn_like(px)).clamp(0, 1)
        return (px - self.mean) / self.std

    def _erase(self, x):
        from cnn_cli.augment import ERASE_AREA, ERASE_ATTEMPTS, ERASE_RATIO

        x = x.clone()
        n, _, h, w = x.shape
        for i in range(n):
            if torch.rand(1).item() >= self.aug["erase"].value:
                continue
            for _ in range(ERASE_ATTEMPTS):
                area = h * w * (ERASE_AREA[0] + (ERASE_AREA[1] - ERASE_AREA[0]) * torch.rand(1).item())
                ratio = math.exp(math.log(ERASE_RATIO[0]) + math.log(ERASE_RATIO[1] / ERASE_RATIO[0])
                                 * torch.rand(1).item())
                eh, ew = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
                if 0 < eh < h and 0 < ew < w:
                    top = int(torch.randint(0, h - eh + 1, (1,)))
                    left = int(torch.randint(0, w - ew + 1, (1,)))
                    x[i, :, top:top + eh, left:left + ew] = 0
                    break
        return x


def _factors(n, spread):
    low = max(0.0, 1 - spread)
    return (low + (1 + spread - low) * torch.rand(n))[:, None, None, None]
