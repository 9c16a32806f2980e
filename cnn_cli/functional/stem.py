"""The forward path of convolutions over few input channels: the first layer ("stem") of image networks.

``stem(x, w, bias, spec, lo, hi)`` has the signature of ``gemm.gemm``: the
output is clipped to [lo, hi] as it is stored. It splits the padded input
into phase planes, one per channel and (row, column) remainder of the
stride, and runs the direct kernel ``kernels.stem.conv_phases``, where every
tap is a unit-stride read of one of them. Groups 1, any stride, dilation and
padding mode; ``dispatch`` takes it for inputs of at most
``config.STEM_MAX_CHANNELS`` channels.
"""

from __future__ import annotations

import numpy as np

from .. import config, kernels
from . import threads


def stem(x, w, bias, spec, lo=-np.inf, hi=np.inf):
    """Direct correlation on phase planes (groups 1), with the output clipped to [lo, hi]."""
    n, c_out, ho = spec.y_shape[:3]
    _, cin, kh, kw = w.shape
    planes, hph, wph = phase_planes(x, spec)
    rows = max(1, min(ho, config.STEM_TILE_PIXELS // wph))
    tasks = n * -(-ho // rows)
    y = np.empty(spec.y_shape, np.float32)
    b = bias if bias is not None else np.zeros(c_out, np.float32)
    wq = w.reshape(c_out, cin * kh * kw)
    if c_out % 4:  # the kernel takes filters four at a time
        wq = np.concatenate([wq, np.zeros((4 - c_out % 4, wq.shape[1]), np.float32)])
    threads.run(kernels.stem.conv_phases, planes, wq, b, kh, kw, *spec.stride, *spec.dilation, hph, wph, rows,
                np.float32(lo), np.float32(hi), y, tasks=tasks, work=y.size * cin * kh * kw)
    return y


def phase_planes(x, spec):
    """-> (planes, H_ph, W_ph): the padded input's phase planes, (N, C * sH * sW * H_ph * W_ph + W_ph).

    Plane (c, a, b) of image n, at flat position ((c*sH + a)*sW + b)*H_ph*W_ph,
    holds xp[n, c, r*sH + a, q*sW + b] at row r and column q, zero past the
    padded input; H_ph, W_ph = ceil(H_p / sH), ceil(W_p / sW). The W_ph zeros
    at the end are read only by the garbage columns of the last rows. Zero
    padding is written straight into the planes, the other modes pad first.
    """
    (sh, sw), (hp, wp) = spec.stride, spec.padded
    n, c = x.shape[:2]
    top, left = spec.pads[0], spec.pads[2]
    if spec.padding_mode != "zeros":
        x, top, left = spec.pad(x), 0, 0
    hph, wph = -(-hp // sh), -(-wp // sw)
    planes = np.empty((n, c * sh * sw * hph * wph + wph), np.float32)
    threads.run(kernels.stem.phase_planes, x, top, left, sh, sw, hph, wph, planes, tasks=n * c, work=planes.size)
    return planes, hph, wph

