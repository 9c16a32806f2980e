"""The forward convolution paths other than FFT (``fft.py``), and the im2col columns they share.

Every path has one signature, ``path(x, w, bias, spec) -> y``: ``x`` is the
unpadded float32 input (N, C_in, H, W), ``w`` the filters
(C_out, C_in/groups, kH, kW), ``bias`` (C_out,) or None, ``spec`` the call's
``ConvSpec``; ``y`` is a new float32 array of ``spec.y_shape``. Each path pads
``x`` the way its kernels want it. ``dispatch.forward_path`` says which runs.
"""

from __future__ import annotations

import numpy as np

from .. import config, kernels
from . import threads

#: The kernel width of the register-blocked kernels ``conv3_stacked`` and
#: ``conv3_grad_weight_stacked``: they exist for this width only.
BLOCKED_WIDTH = 3


def direct(x, w, bias, spec):
    """Direct loops over tiles of output rows (``kernels.conv.conv_direct``), at any stride."""
    xp = spec.pad(x)
    y = np.empty(spec.y_shape, np.float32)
    n = y.shape[0]
    tiles = -(-spec.out_hw[1] // kernels.conv.ROW_TILE)
    threads.run(kernels.conv.conv_direct, xp, w, _bias_or_zeros(bias, w), *spec.stride, *spec.dilation,
                spec.groups, y, tasks=n * spec.groups * spec.out_hw[0] * tiles, work=y.size * w[0].size)
    return y


def stacked(x, w, bias, spec):
    """Stride-1 direct loops over the batch stacked into one tall plane per channel, padded straight into
    that layout: one pass over x, not two (``kernels.conv.conv3_stacked``, ``conv_direct_stacked``)."""
    y = np.empty(spec.y_shape, np.float32)
    _correlate_stacked(spec.stack(x), w, _bias_or_zeros(bias, w), spec.dilation, spec.groups, y)
    return y


def stacked_max_pool(x, w, bias, spec):
    """``stacked`` with a 2x2 max pooling fused in -> (pooled y, argmax in the unpooled plane).

    Each tile of sums is pooled while it is in cache, and the unpooled
    output, four times larger, is never written. H_p must be even.
    """
    pooled_shape = (*spec.y_shape[:2], spec.out_hw[0] // 2, spec.out_hw[1] // 2)
    y = np.empty(pooled_shape, np.float32)
    argmax = np.empty(pooled_shape, np.int64)
    _correlate_stacked(spec.stack(x), w, _bias_or_zeros(bias, w), spec.dilation, spec.groups, y, argmax)
    return y, argmax


def rows(x, w, bias, spec):
    """Stride-1 im2col: one matrix product per kernel row, over shifted views of that image's row columns.

    Each thread takes whole images, the next one whenever it is free, and
    builds their columns (``kernels.conv.im2col_rows``) in its own buffer,
    which, for maps of moderate size, stays in its core's cache for the
    products that read it. Threads share the work only while their buffers
    together fit ``config.IM2COL_MAX_BYTES``.
    """
    xp = spec.pad(x)
    y = np.empty(spec.y_shape, np.float32)
    n, _, hp, wp = xp.shape
    c_out, cin_g, kh, kw = w.shape
    groups, dilation = spec.groups, spec.dilation
    cout_g = c_out // groups
    ho, wo = y.shape[2:]
    w_rows = [[np.ascontiguousarray(w[g * cout_g:(g + 1) * cout_g, :, i].reshape(cout_g, -1)) for i in range(kh)]
              for g in range(groups)]
    shifts = [i * dilation[0] * wp for i in range(kh)]

    def images(next_image):
        image = next_image()
        if image is None:
            return
        col = np.empty((1, cin_g * kw, hp * wp), np.float32)
        out = np.empty((1, cout_g, ho * wp), np.float32)
        while image is not None:
            for g in range(groups):
                kernels.conv.im2col_rows(xp, image, g * cin_g, kw, dilation[1], col, 0, cin_g * kw)
                _sum_of_products(w_rows[g], col, shifts, out)
                # Drop the garbage columns of the wide layout.
                y[image, g * cout_g:(g + 1) * cout_g] = out.reshape(cout_g, ho, wp)[..., :wo]
            image = next_image()

    buffers = 4 * (cin_g * kw * hp * wp + 2 * cout_g * ho * wp)  # columns, products and their sum
    threads.share(images, n, max(1, config.IM2COL_MAX_BYTES // buffers))
    return _add_bias(y, bias)


def _add_bias(y, bias):
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def _bias_or_zeros(b, w):
    return b if b is not None else np.zeros(w.shape[0], np.float32)


def _correlate_stacked(xs, w, b, dilation, groups, y, argmax=None):
    """Stride-1 direct correlation of the stacked padded input ``xs`` (C_in, N, H_p, W_p) into ``y``.

    With ``argmax``, ``y`` is the output max-pooled 2x2, with its argmax (see
    ``kernels.conv._store_tile``); H_p must be even.
    """
    n, hp, wp = xs.shape[1:]
    c_out, cin_g, kh, kw = w.shape
    tile_rows = max(1, config.STACKED_TILE // wp)
    if argmax is not None:  # tiles of whole pairs of rows
        tile_rows = max(2, tile_rows - tile_rows % 2)
    tasks = groups * -(-n * hp // tile_rows)
    work = n * c_out * (hp - dilation[0] * (kh - 1)) * (wp - dilation[1] * (kw - 1)) * w[0].size
    if kw == BLOCKED_WIDTH:
        cout_g = c_out // groups
        wq = np.zeros((groups, -(-cout_g // 4) * 4, cin_g, kh, kw), np.float32)  # whole blocks of 4 filters
        wq[:, :cout_g] = w.reshape(groups, cout_g, cin_g, kh, kw)
        threads.run(kernels.conv.conv3_stacked, xs, wq, b, *dilation, groups, tile_rows, y, argmax,
                    tasks=tasks, work=work)
    else:
        threads.run(kernels.conv.conv_direct_stacked, xs, w, b, *dilation, groups, tile_rows, y, argmax,
                    tasks=tasks, work=work)


def im2col_chunks(xp, w_shape, stride, dilation, groups, out_hw):
    """Yield (first image, group, columns) for chunks of images that fit the buffer limit.

    ``columns`` is (images, C_in/groups * kH * kW, H_out * W_out) and is reused
    between chunks, so consumers must use it before asking for the next one.
    """
    _, cin_g, kh, kw = w_shape
    depth = cin_g * kh * kw
    for n0, g, col in _column_chunks(xp.shape[0], groups, depth, out_hw[0] * out_hw[1]):
        threads.run(kernels.conv.im2col, xp, n0, g * cin_g, kh, kw, *stride, *dilation, *out_hw, col,
                    tasks=col.shape[0] * depth, work=col.size)
        yield n0, g, col


def row_columns(xp, w_shape, dw, groups):
    """``im2col_chunks`` for stride 1: columns for one kernel row, (images, C_in/groups * kW, H_p * W_p).

    Kernel row i reads them shifted by i*dh*W_p (see ``kernels.conv.im2col_rows``).
    """
    _, cin_g, _, kw = w_shape
    depth = cin_g * kw
    for n0, g, col in _column_chunks(xp.shape[0], groups, depth, xp.shape[2] * xp.shape[3]):
        threads.run(kernels.conv.im2col_rows, xp, n0, g * cin_g, kw, dw, col,
                    tasks=col.shape[0] * depth, work=col.size)
        yield n0, g, col


def _column_chunks(n, groups, depth, pixels):
    """Yield (first image, group, buffer) over chunks of images whose columns fit ``config.IM2COL_MAX_BYTES``.

    The buffer is (images, depth, pixels), reused from chunk to chunk.
    """
    batch = int(max(1, min(n, config.IM2COL_MAX_BYTES // (depth * pixels * 4))))
    buffer = np.empty((batch, depth, pixels), np.float32)
    for n0 in range(0, n, batch):
        for g in range(groups):
            yield n0, g, buffer[:min(batch, n - n0)]


def _sum_of_products(mats, col, shifts, out):
    """out[b] = sum over i of mats[i] @ col[b][:, shifts[i]:shifts[i] + L], L = out.shape[2]."""
    length = out.shape[2]
    part = np.empty_like(out) if len(mats) > 1 else None
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf propagate (see threads.matmul)
        np.matmul(mats[0], col[:, :, shifts[0]:shifts[0] + length], out=out)
        for mat, shift in zip(mats[1:], shifts[1:]):
            np.matmul(mat, col[:, :, shift:shift + length], out=part)
            out += part
