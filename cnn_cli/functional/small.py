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
from . import paths, threads
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
    else the FFT path on numpy's FFT.

    Both threads work at once (numpy's FFT and BLAS release the GIL, and the
    ``cnn`` command gives BLAS one thread): on images, or for one image, on
    groups of channels, or on filters when there is one group. Every share
    is computed as it would be alone, so an image gets the same bits in any
    batch.
    """
    n = x.shape[0]
    c_out, cin_g, kh, kw = spec.w_shape
    cout_g = c_out // spec.groups
    y = np.empty(spec.y_shape, np.float32)
    work = n * c_out * spec.out_hw[0] * spec.out_hw[1] * cin_g * kh * kw

    def images(lo, hi):
        y[lo:hi] = _conv(x[lo:hi], w, bias, spec.part(hi - lo, spec.groups, c_out))

    def groups(lo, hi):  # of one image
        f = slice(lo * cout_g, hi * cout_g)
        y[:, f] = _conv(x[:, lo * cin_g:hi * cin_g], w[f], _take(bias, f), spec.part(1, hi - lo, f.stop - f.start))

    def filters(lo, hi):  # of one image and one group: a transform each, so each is computed alone anyway
        y[:, lo:hi] = _conv(x, w[lo:hi], _take(bias, slice(lo, hi)), spec.part(1, 1, hi - lo))

    if n > 1:
        threads.run(images, tasks=n, work=work)
    elif spec.groups > 1:
        threads.run(groups, tasks=spec.groups, work=work)
    elif kh * kw > config.SMALL_IM2COL_MAX_TAPS:
        threads.run(filters, tasks=c_out, work=work)
    else:
        y[:] = _conv(x, w, bias, spec)
    return y


def _take(bias, part):
    return None if bias is None else bias[part]


def _conv(x, w, bias, spec):
    """``conv`` on this thread: a new float32 array of ``spec.y_shape``."""
    c_out, cin_g, kh, kw = spec.w_shape
    cout_g = c_out // spec.groups
    few = cin_g * cout_g <= config.SMALL_SHIFTS_MAX_PAIRS
    factors = _separable(w) if few and min(kh, kw) > 1 else None
    if factors is None and kh * kw > config.SMALL_IM2COL_MAX_TAPS:
        if not np.isfinite(x).all():  # a transform would spread one NaN or inf over the whole map
            return paths.direct(x, w, bias, spec)
        return fft(x, w, bias, spec, lib=NumpyFFT)
    xp = spec.pad(x)
    y = np.empty(spec.y_shape, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf propagate, as in torch
        for g in range(spec.groups):
            xg, filters = xp[:, g * cin_g:(g + 1) * cin_g], slice(g * cout_g, (g + 1) * cout_g)
            if factors is not None:
                _by_rows_then_columns(xg, factors[0][filters], factors[1][filters], spec, y[:, filters])
            else:
                (_by_shifts if few else _by_columns)(xg, w[filters], spec, y[:, filters])
        if bias is not None:
            y += bias[None, :, None, None]
    return y


def _separable(w):
    """(column factors (C_out, C_in/g, kH), row factors (C_out, C_in/g, kW)) whose outer products are
    the kernels, when every kernel is one such product (a Gaussian, a box, Sobel) to float32
    precision (second singular value under ``config.SMALL_SEPARABLE_TOLERANCE`` of the first); else None."""
    u, sigma, vt = np.linalg.svd(w.astype(np.float64))
    if np.any(sigma[..., 1] > config.SMALL_SEPARABLE_TOLERANCE * sigma[..., 0]):
        return None
    scale = np.sqrt(sigma[..., :1])
    return (u[..., :, 0] * scale).astype(np.float32), (vt[..., 0, :] * scale).astype(np.float32)


def _by_rows_then_columns(xg, columns, rows, spec, out):
    """out (N, C_out/groups, H_out, W_out) of kernels that are outer products: a pass along the rows
    per row factor tap, then down the columns per column factor tap (kH + kW passes, not kH * kW)."""
    (sh, sw), (dh, dw), (oh, ow) = spec.stride, spec.dilation, spec.out_hw
    out[:] = 0
    for f in range(rows.shape[0]):
        for c in range(rows.shape[1]):
            along = rows[f, c, 0] * xg[:, c, :, :(ow - 1) * sw + 1:sw]
            for j in range(1, rows.shape[2]):
                along += rows[f, c, j] * xg[:, c, :, j * dw:j * dw + (ow - 1) * sw + 1:sw]
            for i in range(columns.shape[2]):
                out[:, f] += columns[f, c, i] * along[:, i * dh:i * dh + (oh - 1) * sh + 1:sh]


def _taps(xg, spec):
    """(input channel, kernel row, kernel column, the (N, H_out, W_out) view of xg that tap reads)."""
    (sh, sw), (dh, dw), (oh, ow) = spec.stride, spec.dilation, spec.out_hw
    _, _, kh, kw = spec.w_shape
    for c in range(xg.shape[1]):
        for i in range(kh):
            for j in range(kw):
                yield c, i, j, xg[:, c, i * dh:i * dh + (oh - 1) * sh + 1:sh, j * dw:j * dw + (ow - 1) * sw + 1:sw]


def _by_shifts(xg, wg, spec, out):
    """out (N, C_out/groups, H_out, W_out) = the sum over taps of each tap's weight times the view it
    reads: a pass over the output per tap and filter, with no copy of the input (few channels)."""
    out[:] = 0
    for c, i, j, view in _taps(xg, spec):
        for f in range(wg.shape[0]):
            out[:, f] += wg[f, c, i, j] * view


def _by_columns(xg, wg, spec, out):
    """out (N, C_out/groups, H_out, W_out) = the filters (C_out/groups, taps) times each image's columns
    (taps, H_out * W_out), each row of those copied from one tap's view (many channels). One product an
    image, of the same shape whatever the batch, so an image gets the same bits in any batch."""
    n, (oh, ow) = xg.shape[0], spec.out_hw
    columns = np.empty((n, wg[0].size, oh, ow), np.float32)
    for k, (_, _, _, view) in enumerate(_taps(xg, spec)):
        columns[:, k] = view
    product = wg.reshape(wg.shape[0], -1) @ columns.reshape(n, columns.shape[1], -1)
    out[:] = product.reshape(n, -1, oh, ow)


def takes_pool(x_shape, kernel_size, stride, padding):
    """Does max pooling with these arguments run here: no kernel loaded yet and the input small?"""
    return not kernels_loaded() and int(np.prod(x_shape)) <= config.SMALL_MAX_POOL_INPUT


def max_pool(x, kernel_size, stride, padding, extra=(0, 0)):
    """``max_pool2d``: the maximum of each window, padding as -inf, NaN propagating (as the kernels do),
    one pass of ``np.maximum`` a window position, in row-major order. ``np.maximum`` returns its second
    argument on a tie, the maximum so far here, so the first of +0 and -0 wins, as in torch and the
    kernels. ``extra``: ceil mode's rows and columns of -inf below and right."""
    (eh, ew) = extra
    spec = PoolSpec((*x.shape[:2], x.shape[2] + eh, x.shape[3] + ew), kernel_size, stride, padding)
    (kh, kw), (sh, sw), (ph, pw) = spec.kernel, spec.stride, spec.padding
    oh, ow = spec.y_shape[2:]
    if ph or pw or eh or ew:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=-np.inf)
    y = np.full(spec.y_shape, -np.inf, np.float32)
    for i in range(kh):
        for j in range(kw):
            np.maximum(x[:, :, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw], y, out=y)
    return y
