"""Pooling kernels, forward and backward. Task t is the plane (n, c) = divmod(t, C).

Windows are clipped to the unpadded input: max pooling pads with -inf and
average pooling with zeros (torch's ``count_include_pad=True``, so the divisor
is always kH*kW). Backward kernels own a whole plane of ``gx``, so their
scatter-adds never race.

Every kernel works a whole output row at a time: for each window offset
(i, j) it updates all the outputs of the row whose window has that pixel
inside the input, so the innermost loop is a branch-free pass along the row
that LLVM vectorises. Visiting the offsets in row-major order keeps torch's
rule for ties in max pooling (the first maximum wins).
"""

import numpy as np

from ._jit import helper, kernel, kernel_exact


@helper
def _row_span(ow_count, w, sw, pw, j):
    """The outputs [lo, hi) of a row whose window offset j lands inside the input: 0 <= ow*sw - pw + j < w."""
    lo = max(0, -((j - pw) // sw)) if j < pw else 0
    hi = min(ow_count, (w - 1 + pw - j) // sw + 1)
    return lo, hi


@helper
def _max_row(x, n, c, ih0, kh, kw, sh, sw, ph, pw, m, arg):
    """m[ow], arg[ow] = the max of window ow of the output row whose top input row is ih0, and its flat index."""
    h, w = x.shape[2], x.shape[3]
    wo = m.shape[0]
    m[:] = -np.inf
    for ow in range(wo):
        # torch starts at the window's first pixel inside the input.
        arg[ow] = max(ih0, 0) * w + max(ow * sw - pw, 0)
    for i in range(kh):
        ih = ih0 + i
        if ih < 0 or ih >= h:
            continue
        xrow = x[n, c, ih]
        for j in range(kw):
            lo, hi = _row_span(wo, w, sw, pw, j)
            for ow in range(lo, hi):
                iw = ow * sw - pw + j
                v = xrow[iw]
                take = v > m[ow] or v != v  # a strictly larger value, or NaN, as in torch
                m[ow] = v if take else m[ow]
                arg[ow] = ih * w + iw if take else arg[ow]


@kernel_exact
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, first, last):
    """y[n,c,oh,ow] = max over the window at (oh*sh - ph, ow*sw - pw); NaN wins, as in torch.

    argmax[n,c,oh,ow] = where in the plane it is (ih*W + iw): ties go to the
    first maximum in row-major order, as in torch's CPU kernel.
    """
    ch = x.shape[1]
    ho, wo = y.shape[2], y.shape[3]
    m = np.empty(wo, np.float32)
    arg = np.empty(wo, np.int64)
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        for oh in range(ho):
            _max_row(x, n, c, oh * sh - ph, kh, kw, sh, sw, ph, pw, m, arg)
            y[n, c, oh, :] = m
            argmax[n, c, oh, :] = arg


@kernel_exact
def max_pool_backward(gy, argmax, gx, first, last):
    """gx[n, c, argmax] += gy: each window's gradient goes to the pixel that won it."""
    ch, w = gx.shape[1], gx.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        gx[n, c, :, :] = 0.0
        for oh in range(ho):
            for ow in range(wo):
                a = argmax[n, c, oh, ow]
                gx[n, c, a // w, a % w] += gy[n, c, oh, ow]


@kernel
def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, y, first, last):
    """y[n,c,oh,ow] = sum of the window (zeros outside the input) / (kH*kW)."""
    ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    inv = np.float32(1.0 / (kh * kw))
    s = np.empty(wo, np.float32)
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        for oh in range(ho):
            s[:] = 0.0
            for i in range(kh):
                ih = oh * sh - ph + i
                if ih < 0 or ih >= h:
                    continue
                xrow = x[n, c, ih]
                for j in range(kw):
                    lo, hi = _row_span(wo, w, sw, pw, j)
                    for ow in range(lo, hi):
                        s[ow] += xrow[ow * sw - pw + j]
            for ow in range(wo):
                y[n, c, oh, ow] = s[ow] * inv


@kernel
def avg_pool_backward(gy, kh, kw, sh, sw, ph, pw, gx, first, last):
    """gx[window] += gy / (kH*kW) for every window that covers a pixel."""
    ch, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    inv = np.float32(1.0 / (kh * kw))
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        gx[n, c, :, :] = 0.0
        for oh in range(ho):
            grow = gy[n, c, oh]
            for i in range(kh):
                ih = oh * sh - ph + i
                if ih < 0 or ih >= h:
                    continue
                xrow = gx[n, c, ih]
                for j in range(kw):
                    lo, hi = _row_span(wo, w, sw, pw, j)
                    for ow in range(lo, hi):
                        xrow[ow * sw - pw + j] += grow[ow] * inv
