"""The weight-gradient paths of a convolution.

Every path has one signature, ``path(x, gy, spec) -> grad_w``: ``x`` is the
unpadded float32 input (N, C_in, H, W), ``gy`` = dL/dy (N, C_out, H_out, W_out),
``spec`` the call's ``ConvSpec``; ``grad_w`` is a new float32 array of
``spec.w_shape``. grad_weight sums over every pixel of every image.
``dispatch.weight_grad_path`` says which runs.

The W_p-wide layouts of stride 1 (``columns`` at stride 1, ``stacked``,
``small``) pair the zero grad_y of their garbage columns with input pixels
wrapped round from the next row: harmless unless such a pixel is inf or NaN
(0 * inf is NaN, where torch never touches it), so the dispatcher gives
them only inputs that are all finite.
"""

from __future__ import annotations

import numpy as np

from .. import kernels
from . import threads
from .paths import im2col_chunks, row_columns
from .specs import n_elements, stack


def columns(x, gy, spec):
    """Matrix products of grad_y with the im2col columns, summed over images in float64."""
    xp = spec.pad(x)
    n, c_out, ho, wo = gy.shape
    _, cin_g, kh, kw = spec.w_shape
    cout_g = c_out // spec.groups
    acc = np.zeros(spec.w_shape, np.float64)
    if spec.stride == (1, 1):
        # Kernel row i pairs grad_y (W_p wide, zeros in the garbage columns)
        # with the row columns shifted by i*dh*W_p.
        wp = xp.shape[3]
        gy_rows = _widen(gy, wp).reshape(n, c_out, ho * wp)
        for n0, g, col in row_columns(xp, spec.w_shape, spec.dilation[1], spec.groups):
            rows = slice(g * cout_g, (g + 1) * cout_g)
            gyc = gy_rows[n0:n0 + col.shape[0], rows]
            for i in range(kh):
                shift = i * spec.dilation[0] * wp
                products = np.empty((col.shape[0], cout_g, col.shape[1]), np.float32)
                threads.batched_matmul(gyc, col[:, :, shift:shift + ho * wp].transpose(0, 2, 1), products)
                acc[rows, :, i] += products.sum(axis=0, dtype=np.float64).reshape(cout_g, cin_g, kw)
    else:
        gy_cols = gy.reshape(n, c_out, ho * wo)
        for n0, g, col in im2col_chunks(xp, spec.w_shape, spec.stride, spec.dilation, spec.groups, spec.out_hw):
            rows = slice(g * cout_g, (g + 1) * cout_g)
            products = np.empty((col.shape[0], cout_g, col.shape[1]), np.float32)
            threads.batched_matmul(gy_cols[n0:n0 + col.shape[0], rows], col.transpose(0, 2, 1), products)
            acc[rows] += products.sum(axis=0, dtype=np.float64).reshape(cout_g, cin_g, kh, kw)
    grad_w = np.empty(spec.w_shape, np.float32)
    grad_w[...] = acc
    return grad_w


def phases(x, gy, spec):
    """Strides above 1: x split into the phases of the stride (``kernels.grad.split_phases``), where
    tap (i, j) reads plane (i % sh, j % sw) shifted by (i // sh, j // sw), and grad_y laid out as those
    planes, H_q x W_q an image, with zeros past its rows and columns; then register-blocked loops over
    the batch (``kernels.grad.grad_weight_phases``).

    im2col gathered each column value on its own, every sw-th pixel, for narrow products an image.
    3x3 at stride 2, 32 images, one thread, 31 interleaved calls (load 2.3-2.5): 16 -> 32 from 32x32
    4.2 -> 2.4 ms, 32 -> 64 from 16x16 2.4 -> 1.7. The zeros of grad_y meet pixels outside the
    windows, so x must be finite (see the module's docstring).
    """
    from ..kernels import grad

    n, c_in = x.shape[:2]
    c_out, _, kh, kw = spec.w_shape
    (sh, sw), (ho, wo) = spec.stride, spec.out_hw
    hq, wq = ho + (kh - 1) // sh, wo + (kw - 1) // sw
    total = n * hq * wq
    xq = np.zeros((c_in, sh * sw, total + (kh - 1) // sh * wq + (kw - 1) // sw), np.float32)  # the last taps run on
    threads.run(grad.split_phases, x, spec.pads[0], spec.pads[2], sh, sw, hq, wq, xq, tasks=n * c_in, work=x.size)
    cout_pad = -(-c_out // 4) * 4
    gys = stack(gy, 0, 0, (hq, wq), 1, cout_pad).reshape(cout_pad, total)
    grad_w = np.empty(spec.w_shape, np.float32)
    threads.run(grad.grad_weight_phases, xq, gys, kh, kw, sh, sw, wq, kernels.conv.GRAD_TILE, grad_w,
                tasks=cout_pad // 4, work=gy.size * n_elements(spec.w_shape[1:]))
    return grad_w


def stacked(x, gy, spec):
    """Stride 1, kernels 3 wide: register-blocked loops over the stacked padded input, four filters a
    pass when the filters a group come in fours (``kernels.grad.conv3_grad_weight_quad``: each input
    pixel loaded serves more filters), else two (``kernels.conv.conv3_grad_weight_stacked``)."""
    from ..kernels import grad

    xs = spec.stack(x)
    hp, wp = xs.shape[2:]
    groups = spec.groups
    cout_g = gy.shape[1] // groups
    block, loop = (4, grad.conv3_grad_weight_quad) if cout_g % 4 == 0 else (2, kernels.conv.conv3_grad_weight_stacked)
    cout_pad = -(-cout_g // block) * block
    gys = stack(gy, 0, 0, (hp, wp), groups, cout_pad)
    tile_rows = max(1, kernels.conv.GRAD_TILE // wp)
    grad_w = np.empty(spec.w_shape, np.float32)
    threads.run(loop, xs, gys, *spec.dilation, groups, tile_rows, grad_w,
                tasks=groups * cout_pad // block, work=gy.size * n_elements(spec.w_shape[1:]))
    return grad_w


def small(x, gy, spec):
    """Stride 1, narrow maps: direct loops over whole W_p-wide planes (``kernels.conv.conv_grad_weight_small``)."""
    xp = spec.pad(x)
    grad_w = np.empty(spec.w_shape, np.float32)
    c_out, cin_g = spec.w_shape[:2]
    threads.run(kernels.conv.conv_grad_weight_small, xp, _widen(gy, xp.shape[3]), *spec.dilation, spec.groups,
                grad_w, tasks=c_out * cin_g, work=gy.size * n_elements(spec.w_shape[1:]))
    return grad_w


def direct(x, gy, spec):
    """Direct loops, exact at any stride and for any input (``kernels.conv.conv_grad_weight_direct``)."""
    grad_w = np.empty(spec.w_shape, np.float32)
    c_out, cin_g = spec.w_shape[:2]
    threads.run(kernels.conv.conv_grad_weight_direct, spec.pad(x), gy, *spec.stride, *spec.dilation, spec.groups,
                grad_w, tasks=c_out * cin_g, work=gy.size * n_elements(spec.w_shape[1:]))
    return grad_w


def _widen(gy, width):
    """gy (N, C, H, W) padded with zeros on the right to ``width`` columns (gy itself if W = width).

    grad_y in the W_p-wide layout of ``im2col_rows`` and ``conv_grad_weight_small``:
    the zeros cancel the garbage columns in sums over pixels.
    """
    if gy.shape[3] == width:
        return gy
    wide = np.zeros((*gy.shape[:3], width), np.float32)
    wide[..., :gy.shape[3]] = gy
    return wide
