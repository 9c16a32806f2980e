"""The public convolution API: ``conv2d``, ``conv2d_max_pool2d`` and ``conv2d_backward``.

Each validates its arguments into a ``ConvSpec``, asks ``dispatch`` for a
path, and runs it.
"""

from __future__ import annotations

import numpy as np

from .. import config
from . import dispatch, threads
from .pool import max_pool2d_with_argmax
from .specs import ConvSpec, PoolSpec, as_float32, check_bias, conv_spec


def conv2d(
    x,
    weight,
    bias=None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    algorithm="auto",
):
    """2-D cross-correlation of a batch of images with a filter bank.

    Parameters
    ----------
    x : array (N, C_in, H, W)
    weight : array (C_out, C_in/groups, kH, kW)
        One filter per output channel; each filter is C_in/groups kernels,
        whose responses are summed.
    bias : array (C_out,), optional
    stride, dilation : int or (int, int), at least 1
    padding : int, (int, int), "same" or "valid"
        "same" keeps H and W for stride 1, also for even kernels (the odd
        extra pixel goes to the bottom/right, as in torch).
    groups : int
        Split channels into groups that are convolved separately;
        ``groups = C_in = C_out`` is a depthwise bank.
    padding_mode : "zeros", "reflect", "replicate" or "circular"
    algorithm : "auto", "light", "direct", "im2col" or "fft"
        Force a code path. "auto" picks FFT for kernels of 14x14 and larger;
        the depthwise kernel for one filter per channel; for kernels 3 wide at
        stride 1, direct loops, or matrix products for deep layers (row
        im2col on batches of larger maps, tiled im2col on small maps);
        tiled matrix products for 1x1 kernels and strides above 1; otherwise
        direct loops for few channels and im2col for deep layers. "light" is
        "auto", except that a call of at most ``config.SMALL_MAX_MACS``
        multiply-adds per image runs in numpy alone (what the fixed filter
        banks use: a small ``cnn apply`` then never loads Numba).

    Returns
    -------
    y : float32 array (N, C_out, H_out, W_out), where
        ``H_out = (H + pad_top + pad_bottom - dilation*(kH-1) - 1) // stride + 1``
        and likewise for W_out.

    Examples
    --------
    >>> x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> conv2d(x, np.ones((1, 1, 2, 2)))[0, 0]
    array([[ 8., 12.],
           [20., 24.]], dtype=float32)
    """
    x, w, b, spec = _conv_arguments(x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm)
    return dispatch.forward_path(spec)(x, w, b, spec)


def _conv_arguments(x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm):
    """-> (x, weight, bias, spec) of a conv2d call, validated."""
    x = as_float32("x", x, 4)
    w = as_float32("weight", weight, 4)
    b = check_bias(bias, w.shape[0])
    spec = conv_spec(x.shape, w.shape, stride, padding, dilation, groups, padding_mode, algorithm)
    return x, w, b, spec


def conv2d_max_pool2d(
    x,
    weight,
    bias=None,
    *,
    pool=2,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    algorithm="auto",
):
    """``max_pool2d_with_argmax(conv2d(x, weight, bias, ...), pool)``, fused where it can be.

    The layer pair of every small CNN, conv then max pooling. For a 2x2
    ``pool`` on the stacked direct path (kernels 3 wide or narrow maps, at
    stride 1, with an even padded height) each tile of sums is pooled while
    it is in cache, and the unpooled output, four times larger, is never
    written; otherwise the two calls run one after the other. Either way the
    result is the same: the pooled maps (N, C_out, H_out // 2, W_out // 2)
    for a 2x2 pool, and, for each, where its maximum lies in its unpooled
    plane (oh*W_out + ow, int64), for ``max_pool2d_backward_from_argmax``
    with the unpooled shape (N, C_out, H_out, W_out). ``pool`` is the
    pooling's kernel_size (its stride too, without padding); the other
    arguments are ``conv2d``'s.
    """
    x, w, b, spec = _conv_arguments(x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm)
    try:
        pooling = PoolSpec(spec.y_shape, pool, None, 0)
    except ValueError as exc:
        raise ValueError(f"pool: {exc}") from None
    path = dispatch.forward_path(spec)
    fused = dispatch.fused_max_pool_path(path, spec, pooling)
    if fused is not None:
        return fused(x, w, b, spec)
    return max_pool2d_with_argmax(path(x, w, b, spec), pool)


def conv2d_backward(
    x,
    weight,
    grad_y,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    algorithm="auto",
    input_grad=True,
):
    """Gradients of a ``conv2d`` call with the same arguments.

    Given ``grad_y`` = dL/dy of shape (N, C_out, H_out, W_out), returns
    ``(grad_x, grad_weight, grad_bias)`` shaped like x, weight and (C_out,).
    ``input_grad=False`` skips grad_x (returned as None), which a network's
    first layer never needs.

    grad_x is itself a convolution: ``grad_y`` with ``stride - 1`` zeros
    inserted between its pixels, fully padded, correlated with the spatially
    flipped filters with in/out channels swapped. It therefore runs on the same
    algorithms as the forward pass (``algorithm`` picks one, as in ``conv2d``),
    except that "auto" takes one matrix product per image scattered back onto
    the input at strides above 1 and for widening layers
    (``dispatch.grad_input_by_columns``).
    grad_weight uses im2col + BLAS when ``algorithm`` is "im2col", or "auto"
    for a kernel that is not 3 wide at stride 1 and whose columns for one
    image fit ``config.IM2COL_MAX_BYTES``; direct loops otherwise (and, at
    stride 1, for an input that is not all finite: see
    ``dispatch.weight_grad_path``).
    """
    x = as_float32("x", x, 4)
    w = as_float32("weight", weight, 4)
    gy = as_float32("grad_y", grad_y, 4)
    spec = conv_spec(x.shape, w.shape, stride, padding, dilation, groups, padding_mode, algorithm)
    if gy.shape != spec.y_shape:
        raise ValueError(
            f"grad_y must have the shape of conv2d's output {spec.y_shape}, but has {gy.shape}"
        )

    # A layer too small to split its kernels between threads computes grad_x
    # on another thread meanwhile: the two need only x, weight and grad_y.
    grad_x_job = None
    if input_grad and config.THREADS > 1 and gy.size * w[0].size < config.PARALLEL_MIN_WORK \
            and not threads.in_pool():
        grad_x_job = threads.submit(_grad_input, gy, w, spec)

    # Each plane in float32 (numpy sums a contiguous row pairwise, so it stays
    # accurate, and faster than converting every pixel), the planes in float64.
    plane_sums = gy.reshape(*gy.shape[:2], -1).sum(axis=2)
    grad_bias = plane_sums.sum(axis=0, dtype=np.float64).astype(np.float32)

    try:
        grad_w = dispatch.weight_grad_path(x, spec)(x, gy, spec)
    except BaseException:
        if grad_x_job is not None and not grad_x_job.cancel():  # leave nothing running behind the error
            from concurrent.futures import wait

            wait([grad_x_job])
        raise
    if not input_grad:
        return None, grad_w, grad_bias
    grad_x = grad_x_job.result() if grad_x_job is not None else _grad_input(gy, w, spec)
    return grad_x, grad_w, grad_bias


def _grad_input(gy, w, spec):
    """grad_x of a conv2d call: a correlation with swapped channels, on the path ``dispatch`` picks for it."""
    top, bottom, left, right = spec.pads
    if dispatch.grad_input_by_columns(spec):
        return _grad_input_columns(gy, w, spec)
    if spec.padding_mode == "zeros":
        # The border's gradient would be dropped: compute the input's pixels only.
        rows, cols = (top, spec.padded[0] - bottom), (left, spec.padded[1] - right)
        return _grad_padded_input(gy, w, spec, rows, cols)
    grad_xp = _grad_padded_input(gy, w, spec, (0, spec.padded[0]), (0, spec.padded[1]))
    return spec.unpad_grad(grad_xp)


def _grad_input_columns(gy, w, spec):
    """grad_x at strides above 1, and of widening layers: per image, the columns W^T @ grad_y
    (C_in/g * kH * kW, H_out * W_out, or H_out * W_p at stride 1) scattered back onto the input
    pixels they came from (``kernels.grad``'s col2im kernels).

    The correlation of ``_grad_padded_input`` would multiply the stride's
    inserted zeros too: at stride 2, three products in four. Images go in
    blocks whose columns stay in a core's cache between the product and the
    scatter.
    """
    from ..kernels import grad

    n, c_out, ho, wo = gy.shape
    _, cin_g, kh, kw = w.shape
    g = spec.groups
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    top, left = spec.pads[0], spec.pads[2]
    gx = np.empty(spec.x_shape, np.float32)
    if (sh, sw) == (1, 1):
        # grad_y widened to the padded width with zeros: each tap's sums are then one run (col2im_wide).
        wp = wo + dw * (kw - 1)
        gy_rows = np.zeros((n, c_out, ho, wp), np.float32)
        gy_rows[..., :wo] = gy
        gy_cols, pixels = gy_rows.reshape(n, c_out, ho * wp), ho * wp
        scatter, args = grad.col2im_wide, (kh, kw, ho, wp, dh, dw, top, left, gx)
    else:
        # Windows that overlap sum by phases of the stride; others give each pixel one value at most.
        gy_cols, pixels = gy.reshape(n, c_out, ho * wo), ho * wo
        overlap = dh * (kh - 1) >= sh or dw * (kw - 1) >= sw
        scatter = grad.col2im_phases if overlap else grad.col2im
        args = (kh, kw, ho, wo, sh, sw, dh, dw, top, left, gx)
    cout_g, depth = c_out // g, cin_g * kh * kw
    wt = [np.ascontiguousarray(w[k * cout_g:(k + 1) * cout_g].reshape(cout_g, depth).T) for k in range(g)]
    block = int(max(1, min(n, config.GEMM_TILE_BYTES // (depth * pixels * 4))))

    def images(first, last):
        cols = np.empty((min(block, last - first), depth, pixels), np.float32)
        for n0 in range(first, last, block):
            part = cols[:min(block, last - n0)]
            for k in range(g):
                threads.matmul(wt[k], gy_cols[n0:n0 + part.shape[0], k * cout_g:(k + 1) * cout_g], part)
                scatter(part, n0, k * cin_g, *args, 0, part.shape[0] * cin_g)

    parts = min(config.THREADS, n)
    if not threads.parallel(gy.size * depth) or parts < 2:
        images(0, n)
    else:
        threads.split(images, n, parts)
    return gx


def _grad_padded_input(gy, w, spec, rows, cols):
    """dL/d(padded x) over padded rows [rows[0], rows[1]) and columns [cols[0], cols[1]).

    Computed as a forward correlation (see ``conv2d_backward``) of grad_y,
    spread out by the stride and padded by the kernel's reach, with the
    flipped filters; only the part of the spread that the asked-for pixels
    see is built.
    """
    n, c_out, ho, wo = gy.shape
    _, cin_g, kh, kw = w.shape
    g = spec.groups
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    fh, fw = dh * (kh - 1), dw * (kw - 1)
    # Rows and columns past the last window (when the stride does not divide
    # evenly) never reached the output: their gradient is zero.
    reached = ((ho - 1) * sh + 1 + fh, (wo - 1) * sw + 1 + fw)
    out_hw = (max(0, min(rows[1], reached[0]) - rows[0]), max(0, min(cols[1], reached[1]) - cols[0]))
    grad_shape = (n, g * cin_g, rows[1] - rows[0], cols[1] - cols[0])
    if 0 in out_hw:
        return np.zeros(grad_shape, np.float32)
    # grad_y row oh lands on spread row fh + oh*sh - rows[0] (likewise columns).
    spread = np.zeros((n, c_out, out_hw[0] + fh, out_hw[1] + fw), np.float32)
    src_rows, dst_rows = _spread_slices(ho, sh, fh - rows[0], spread.shape[2])
    src_cols, dst_cols = _spread_slices(wo, sw, fw - cols[0], spread.shape[3])
    spread[:, :, dst_rows, dst_cols] = gy[:, :, src_rows, src_cols]
    # (C_out, C_in/g, kH, kW) -> (C_in, C_out/g, kH, kW), flipped in space.
    wt = w.reshape(g, c_out // g, cin_g, kh, kw).transpose(0, 2, 1, 3, 4)
    wt = np.ascontiguousarray(wt.reshape(g * cin_g, c_out // g, kh, kw)[:, :, ::-1, ::-1])
    part_spec = ConvSpec.valid(spread.shape, wt.shape, spec.dilation, g, spec.algorithm)
    part = dispatch.forward_path(part_spec)(spread, wt, None, part_spec)
    if part.shape == grad_shape:
        return part
    grad = np.zeros(grad_shape, np.float32)
    grad[:, :, :out_hw[0], :out_hw[1]] = part
    return grad


def _spread_slices(count, step, offset, size):
    """(source, destination) slices that put items 0..count-1 at offset + i*step, keeping those in [0, size)."""
    first = max(0, -(offset // step)) if offset < 0 else 0
    last = min(count, (size - 1 - offset) // step + 1)
    if last <= first:
        return slice(0, 0), slice(0, 0)
    return slice(first, last), slice(offset + first * step, offset + (last - 1) * step + 1, step)
