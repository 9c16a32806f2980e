"""Convolution and max pooling in numpy alone, for small calls: no Numba kernel to load.

Importing Numba and loading the cached machine code of the first few kernels
takes 0.6-0.8 s, longer than the whole of ``cnn apply`` on a 512 x 512 photo
once they are loaded. So:

- a convolution asked for with ``algorithm="light"`` (the fixed filter banks
  of pipelines) whose work per image is at most ``config.SMALL_MAX_MACS`` runs
  here: im2col and one matrix product for kernels of up to
  ``config.SMALL_IM2COL_MAX_TAPS`` taps, the FFT path on numpy's FFT for
  larger ones. The choice depends on the image's size and the bank alone, so
  an image gives the same maps alone, in any batch and in a resumed run;
- max pooling of a small input runs here until a kernel has loaded: the
  maximum is exact, so both paths give the same bits.

``conv(x, w, bias, spec) -> y`` has the signature of the paths in ``paths.py``.
"""

from __future__ import annotations

import sys

import numpy as np

from .. import config
from . import paths
from .fft import NumpyFFT, fft
from .specs import PoolSpec

_KERNELS = "cnn_cli.kernels._jit"  # imported by every kernel module, first


def kernels_loaded():
    """Has Numba been paid for in this process (any kernel module imported)?"""
    return _KERNELS in sys.modules


def takes(spec):
    """Does the convolution of ``spec`` run here: "light", and little work per image?"""
    if spec.algorithm != "light":
        return False
    c_out, cin_g, kh, kw = spec.w_shape
    return c_out * spec.out_hw[0] * spec.out_hw[1] * cin_g * kh * kw <= config.SMALL_MAX_MACS


def conv(x, w, bias, spec):
    """Cross-correlation as ``spec`` says: im2col and a matrix product per group for small kernels,
    else the FFT path on numpy's FFT."""
    c_out, cin_g, kh, kw = spec.w_shape
    if kh * kw > config.SMALL_IM2COL_MAX_TAPS:
        if not np.isfinite(x).all():  # a transform would spread one NaN or inf over the whole map
            return paths.direct(x, w, bias, spec)
        return fft(x, w, bias, spec, lib=NumpyFFT)
    xp = spec.pad(x)
    cout_g = c_out // spec.groups
    y = np.empty(spec.y_shape, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf propagate, as in torch
        for g in range(spec.groups):
            xg = xp[:, g * cin_g:(g + 1) * cin_g]
            y[:, g * cout_g:(g + 1) * cout_g] = _by_columns(xg, w[g * cout_g:(g + 1) * cout_g], spec)
        if bias is not None:
            y += bias[None, :, None, None]
    return y


def _by_columns(xg, wg, spec):
    """(N, C_out/groups, H_out, W_out): the windows of ``xg`` as rows of a matrix, times the flattened filters."""
    n, cin_g = xg.shape[:2]
    cout_g, _, kh, kw = wg.shape
    (sh, sw), (dh, dw), (oh, ow) = spec.stride, spec.dilation, spec.out_hw
    # (N, C, H_out, W_out, kH, kW) views, the taps spaced by the dilation.
    windows = np.lib.stride_tricks.sliding_window_view(xg, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    windows = windows[:, :, :(oh - 1) * sh + 1:sh, :(ow - 1) * sw + 1:sw, ::dh, ::dw]
    columns = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, cin_g * kh * kw)
    out = columns @ wg.reshape(cout_g, -1).T
    return out.reshape(n, oh, ow, cout_g).transpose(0, 3, 1, 2)


def takes_pool(x_shape, kernel_size, stride, padding):
    """Does max pooling with these arguments run here: no kernel loaded yet and the input small?"""
    return not kernels_loaded() and int(np.prod(x_shape)) <= config.SMALL_MAX_POOL_INPUT


def max_pool(x, kernel_size, stride, padding):
    """``max_pool2d``: the maximum of each window, padding as -inf, NaN propagating (as the kernels do),
    one pass of ``np.maximum`` a window position."""
    spec = PoolSpec(x.shape, kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = spec.kernel, spec.stride, spec.padding
    oh, ow = spec.y_shape[2:]
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    y = np.full(spec.y_shape, -np.inf, np.float32)
    for i in range(kh):
        for j in range(kw):
            np.maximum(y, x[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw], out=y)
    return y
