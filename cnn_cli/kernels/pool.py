"""Pooling kernels, forward and backward. Task t is the plane (n, c) = divmod(t, C).

Windows are clipped to the unpadded input: max pooling pads with -inf and
average pooling with zeros (torch's ``count_include_pad=True``, so the divisor
is always kH*kW). Backward kernels own a whole plane of ``gx``, so their
scatter-adds never race.

Max pooling keeps torch's rule for ties (the first maximum in row-major
order wins): with the argmax, it visits each window's pixels in that order;
for values only, it takes the maximum along rows, then down columns, in
order (``max_pool_values``). Average pooling works a
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


@helper
def _fold(new, acc, out, n):
    """out[q] = new[q] if it beats acc[q] (``_beats``), else acc[q], for q < n.

    ``out`` is never ``acc``: ``acc[q] = v if ... else acc[q]`` compiles to a
    masked store (vmaskmovps), which is microcoded on this machine's AMD
    cores: a pass took 0.6-1 ns a value in L1, against 0.18 into another
    array, where it is a blend and a plain store.
    """
    for q in range(n):
        v, u = new[q], acc[q]
        out[q] = v if _beats(v, u) else u


@helper
def _fold2(new1, new2, acc, out, n):
    """``_fold`` of new1, then of new2, in one pass: half the passes over ``acc`` and ``out``."""
    for q in range(n):
        v, u = new1[q], acc[q]
        u = v if _beats(v, u) else u
        v = new2[q]
        out[q] = v if _beats(v, u) else u


@helper
def _fold_chain(src, start, step, count, n, tmp, out):
    """out[q] = the maximum under torch's rule of src[start + i*step + q] over i < count, for q < n.

    Taken in order of i, so the first of equal values (+0 and -0) wins and
    a NaN wins, as a scan in row-major order does. Passes take two terms at
    a time (``_fold2``) and alternate between the rows of ``tmp`` (2, >= n),
    the last writing ``out``.
    """
    acc = src[start:start + n]
    if count == 1:
        out[:n] = acc
    i = 1
    while i < count:
        dst = out if i + 2 >= count else tmp[i // 2 % 2]
        if i + 1 < count:
            _fold2(src[start + i * step:], src[start + (i + 1) * step:], acc, dst, n)
        else:
            _fold(src[start + i * step:], acc, dst, n)
        acc = dst
        i += 2


@helper
def _window_max(plane, i_lo, i_hi, j_lo, j_hi):
    """The maximum of plane[i_lo:i_hi, j_lo:j_hi] by a scan in row-major order (-inf if empty)."""
    acc = np.float32(-np.inf)
    for i in range(i_lo, i_hi):
        for j in range(j_lo, j_hi):
            v = plane[i, j]
            acc = v if _beats(v, acc) else acc
    return acc


@helper
def _sample(src, at, pitch, sw, dst, to, dst_pitch, rows, n):
    """dst[to + r*dst_pitch + q] = src[at + r*pitch + q*sw] for r < rows and q < n.

    Flat indices, not slices a row, which took as long as the copies on
    small planes (2x2 pooling of 64x64x8x8: 0.52 ms against 0.30); unsigned,
    or each access pays a check for a negative index (3x3/2 of 8x64x111x111:
    5.8-6.0 ms against 5.1-5.4). Strides 1 and 2 are literals, the common cases.
    """
    step = np.uint64(sw)
    for r in range(rows):
        a, b = np.uint64(at + r * pitch), np.uint64(to + r * dst_pitch)
        if sw == 1:
            for q in range(n):
                i = np.uint64(q)
                dst[b + i] = src[a + i]
        elif sw == 2:
            for q in range(n):
                i = np.uint64(q)
                dst[b + i] = src[a + i + i]
        else:
            for q in range(n):
                i = np.uint64(q)
                dst[b + i] = src[a + i * step]


@kernel_exact
def max_pool_values(x, kh, kw, sh, sw, ph, pw, band, y, first, last):
    """``max_pool_forward`` without the argmax, for inference: y[n,c,oh,ow] = max over the window; NaN wins.

    Any output size: windows are clipped to the input, so ceil mode's last
    row and column (windows that run past it) come out as torch makes them.
    The exact value torch's row-major scan keeps, signed zeros too: the
    maximum is separable, each window's maximum along its rows first, then
    down the column of those, both in order (``_fold_chain``).

    Work goes by blocks of contiguous input: bands of ``band`` output rows'
    input rows, or as many whole planes as that many rows when a plane is
    smaller. Over a whole block at once, in long vectorised passes, the
    maxima along the rows are taken at every start, then of those down the
    columns at every start (a pass a row, or a plane, spent more in its
    short loop's set-up and remainder than in its body); each output row
    then samples its row of those every ``sw`` columns. Starts whose window
    would cross a row's or plane's end are never sampled. Windows that reach
    into the padding or past the input, a row or column of them at an edge,
    are each taken alone by a scan (``_window_max``).
    """
    ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    # Output columns [q_lo, q_hi) have their windows inside the row, starting at k_lo + (q - q_lo) * sw.
    q_lo = min(-(-pw // sw), wo)
    q_hi = max(min(wo, (w - kw + pw) // sw + 1), q_lo)
    k_lo = q_lo * sw - pw
    span = (q_hi - 1 - q_lo) * sw + 1 if q_hi > q_lo else 0  # the starts from k_lo that are sampled
    planes = max(1, min(band // ho, last - first))  # a block's planes
    size = planes * h * w if planes > 1 else min(h, (band - 1) * sh + kh) * w
    # Two buffers to alternate between, then the maxima along the rows, then down the columns.
    runs = np.empty((4, size), np.float32)
    flat = x.reshape(x.size)
    for p0 in range(first, last, planes):
        p1 = min(p0 + planes, last)
        for o0 in range(0, ho, band):
            o1 = min(o0 + band, ho)
            r0 = max(o0 * sh - ph, 0)
            r1 = min((o1 - 1) * sh - ph + kh, h)
            at = p0 * h * w + r0 * w  # where the block starts in x
            along = (p1 - 1 - p0) * h * w + (r1 - r0) * w - kw + 1
            down = along - (kh - 1) * w
            if span:
                _fold_chain(flat[at:at + along + kw - 1], 0, 1, kw, along, runs, runs[2])
                if down > 0:
                    _fold_chain(runs[2], 0, w, kh, down, runs, runs[3])
            # Output rows [i0, i1) have all their window's rows inside the input.
            i0 = min(max(o0, -(-ph // sh)), o1)
            i1 = max(min(o1, (h - kh + ph) // sh + 1), i0)
            for plane in range(p0, p1):
                n, c = plane // ch, plane % ch
                src, out = x[n, c], y[n, c].reshape(ho * wo)
                if span:
                    start = plane * h * w + (i0 * sh - ph) * w + k_lo - at  # row i0's first sampled start
                    _sample(runs[3], start, sh * w, sw, out, i0 * wo + q_lo, wo, i1 - i0, q_hi - q_lo)
                for oh in range(o0, o1):
                    i_lo, i_hi = max(oh * sh - ph, 0), min(oh * sh - ph + kh, h)
                    q = 0
                    while q < wo:
                        if span and q == q_lo and i0 <= oh < i1:  # sampled above
                            q = q_hi
                            continue
                        out[oh * wo + q] = _window_max(src, i_lo, i_hi, max(q * sw - pw, 0), min(q * sw - pw + kw, w))
                        q += 1
