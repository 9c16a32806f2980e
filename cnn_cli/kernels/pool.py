"""Pooling kernels, forward and backward. Task t is the plane (n, c) = divmod(t, C).

Windows are clipped to the unpadded input: max pooling pads with -inf and
average pooling with zeros (torch's ``count_include_pad=True``, so the divisor
is always kH*kW). Backward kernels own a whole plane of ``gx``, so their
scatter-adds never race.

Max pooling visits each window's pixels in row-major order, which keeps
torch's rule for ties (the first maximum wins). Average pooling works a
whole output row at a time: for each window offset (i, j) it adds the pixel
to every output of the row whose window has it inside the input, so the
innermost loop is a branch-free pass along the row that LLVM vectorises.
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
def _winner(src, i, j):
    """Index i, or j when src[j] beats src[i]: strictly larger, or NaN (torch's rule).

    Only the index is chosen, which is an integer select, so it compiles to a
    conditional move (see _jit.py); a float select becomes a branch on x86,
    which random data mispredicts half the time. Bitwise ``|`` keeps the test
    itself free of a short-circuit branch.
    """
    u = src[j]
    return j if (u > src[i]) | (u != u) else i


@kernel_exact
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, first, last):
    """y[n,c,oh,ow] = max over the window at (oh*sh - ph, ow*sw - pw); NaN wins, as in torch.

    argmax[n,c,oh,ow] = where in the plane it is (ih*W + iw): ties go to the
    first maximum in row-major order, as in torch's CPU kernel.

    2x2 windows without padding (every pooling layer we ship) are unrolled
    as a tree of three comparisons: the rule above is associative, so the
    tree picks the same pixel as a row-major scan, and a loop with a run-time
    trip count of two would cost several times more.
    """
    ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        src = x[n, c].reshape(h * w)
        out = y[n, c].reshape(ho * wo)
        arg = argmax[n, c].reshape(ho * wo)
        if kh == 2 and kw == 2 and ph == 0 and pw == 0:
            for oh in range(ho):
                for ow in range(wo):
                    k = oh * sh * w + ow * sw
                    best = _winner(src, _winner(src, k, k + 1), _winner(src, k + w, k + w + 1))
                    out[oh * wo + ow] = src[best]
                    arg[oh * wo + ow] = best
            continue
        for oh in range(ho):
            i_lo, i_hi = max(oh * sh - ph, 0), min(oh * sh - ph + kh, h)
            for ow in range(wo):
                j_lo, j_hi = max(ow * sw - pw, 0), min(ow * sw - pw + kw, w)
                # torch starts at the window's first pixel inside the input.
                best = i_lo * w + j_lo
                for ih in range(i_lo, i_hi):
                    for iw in range(j_lo, j_hi):
                        best = _winner(src, best, ih * w + iw)
                out[oh * wo + ow] = src[best]
                arg[oh * wo + ow] = best


@kernel_exact
def max_pool_backward(gy, argmax, gx, first, last):
    """gx[n, c, argmax] += gy: each window's gradient goes to the pixel that won it."""
    ch, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        out = gx[n, c].reshape(h * w)  # flat, so the scatter needs no division per pixel
        out[:] = 0.0
        g = gy[n, c].reshape(ho * wo)
        a = argmax[n, c].reshape(ho * wo)
        for k in range(ho * wo):
            out[a[k]] += g[k]


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
