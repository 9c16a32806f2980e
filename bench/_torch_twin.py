"""A torch twin of one of our networks and of our augmentation, for bench/train.py.

``torch_module(network)`` is the network's own twin (each layer type's
``torch_twin``, in ``cnn_cli``), with the same state-dict names and our
network's weights: both sides start from the very same numbers. ``TorchAugment`` draws the same augmentations from torch's
generator and applies them to a whole batch with ``affine_grid`` and
``grid_sample``, torch's batched resampling.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F



def torch_module(network):
    """The torch twin of ``network``, holding a copy of its current weights (``Network.torch_twin``)."""
    return network.torch_twin()


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
