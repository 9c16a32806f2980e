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
def _beats(u, v):
    """Does u, later in row-major order, win over v: strictly larger, or NaN (torch's rule)?

    Bitwise ``|`` keeps the test free of a short-circuit branch.
    """
    return (u > v) | (u != u)


@helper
def _winner(src, i, j):
    """Index i, or j when src[j] beats src[i].

    Only the index is chosen, which is an integer select, so it compiles to a
    conditional move (see _jit.py); a float select becomes a branch on x86,
    which random data mispredicts half the time.
    """
    return j if _beats(src[j], src[i]) else i


@helper
def max_pool_2x2_row(pair, pitch, sw, out, arg, base, width):
    """One output row of a 2x2 max pooling; ``pair`` holds the two input rows, the second at ``pitch``.

    Window q covers pair[q*sw : q*sw+2] and pair[pitch + q*sw : pitch + q*sw + 2].
    out[q] gets the winner (by ``_beats``) and arg[q] its index
    base + i*width + q*sw + j, (i, j) being its place in the window. The
    winner of each row is chosen first, then between the two: the rule is
    associative, so this picks the pixel a row-major scan would. Only
    offsets are selected (conditional moves; see ``_winner``): selecting the
    values compiled to a branch. Each read is at q*sw plus an offset of 0,
    1, pitch or pitch + 1, where three ``_winner`` calls on flat indices paid
    for a negative-index check on every read (measurably slower on a tile in cache).
    """
    for q in range(out.shape[0]):
        k = q * sw
        j0 = 1 if _beats(pair[k + 1], pair[k]) else 0
        j1 = pitch + 1 if _beats(pair[pitch + k + 1], pair[pitch + k]) else pitch
        lower = _beats(pair[k + j1], pair[k + j0])
        j = j1 if lower else j0
        out[q] = pair[k + j]
        arg[q] = base + k + j - lower * (pitch - width)


@kernel_exact
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, argmax, first, last):
    """y[n,c,oh,ow] = max over the window at (oh*sh - ph, ow*sw - pw); NaN wins, as in torch.

    argmax[n,c,oh,ow] = where in the plane it is (ih*W + iw): ties go to the
    first maximum in row-major order, as in torch's CPU kernel.

    2x2 windows without padding (every pooling layer we ship) are unrolled
    (``max_pool_2x2_row``): a loop with a run-time trip count of two would
    cost several times more.
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
                top = oh * sh * w
                max_pool_2x2_row(src[top:top + 2 * w], w, sw, out[oh * wo:(oh + 1) * wo], arg[oh * wo:(oh + 1) * wo],
                                 top, w)
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


@kernel_exact
def max_pool_values(x, kh, kw, sh, sw, ph, pw, y, first, last):
    """``max_pool_forward`` without the argmax, for inference: y[n,c,oh,ow] = max over the window; NaN wins.

    Without an index to keep, the maximum is a select between values, which
    LLVM vectorises, and it is separable: each output row takes the maximum
    of its window's input rows down the columns (contiguous passes), then
    along that row across each window's columns (``_row_span`` keeps to
    columns inside the input, as average pooling does). The maximum under
    torch's rule is the same in any order: equal values are equal, and a
    NaN, once in, stays.
    """
    ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    column = np.empty(w, np.float32)
    acc = np.empty(wo, np.float32)
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        for oh in range(ho):
            i_lo, i_hi = max(oh * sh - ph, 0), min(oh * sh - ph + kh, h)
            column[:] = x[n, c, i_lo]
            for ih in range(i_lo + 1, i_hi):
                row = x[n, c, ih]
                for k in range(w):
                    v = row[k]
                    column[k] = v if _beats(v, column[k]) else column[k]
            acc[:] = -np.inf
            for j in range(kw):
                lo, hi = _row_span(wo, w, sw, pw, j)
                if hi <= lo:
                    continue
                # Read at (ow - lo) * sw >= 0 from a slice: no negative-index
                # checks, and a literal stride 2 that LLVM vectorises.
                src, out = column[lo * sw + j - pw:], acc[lo:hi]
                if sw == 2:
                    for q in range(hi - lo):
                        v = src[2 * q]
                        out[q] = v if _beats(v, out[q]) else out[q]
                else:
                    for q in range(hi - lo):
                        v = src[q * sw]
                        out[q] = v if _beats(v, out[q]) else out[q]
            y[n, c, oh, :] = acc
