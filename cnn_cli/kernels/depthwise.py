"""The depthwise convolution kernel: one filter per channel (groups = C_in = C_out), as in MobileNets.

The general grouped kernels would treat each channel as a group of one
filter, paying per group for set-up meant for many filters (and, on the
filter-blocked path, for three zero filters of each block of four); here a
task is one plane, worked a row at a time. Notation as in ``kernels.conv``.
"""

import numpy as np

from ._jit import helper, kernel


@helper
def _row_3x3(acc, r0, r1, r2, wq, dw, stride):
    """acc[k] = sum over the 3x3 taps of wq (a (9,) array) on the rows r0, r1, r2 at column k*stride.

    All nine taps in one pass: a sum is stored once, where a pass per tap
    loads and stores it nine times. Inlined with a literal ``stride``, so the
    reads at 2*k are a constant stride LLVM vectorises.
    """
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wq[0], wq[1], wq[2], wq[3], wq[4], wq[5], wq[6], wq[7], wq[8]
    # Slices at each tap's offset, read at q = k*stride >= 0: an index plus a
    # run-time offset would need a negative-index check on every read.
    a0, a1, a2 = r0[0:], r0[dw:], r0[2 * dw:]
    b0, b1, b2 = r1[0:], r1[dw:], r1[2 * dw:]
    c0, c1, c2 = r2[0:], r2[dw:], r2[2 * dw:]
    for k in range(acc.shape[0]):
        q = k * stride
        acc[k] += (w0 * a0[q] + w1 * a1[q] + w2 * a2[q] + w3 * b0[q] + w4 * b1[q] + w5 * b2[q]
                   + w6 * c0[q] + w7 * c1[q] + w8 * c2[q])


@kernel
def conv_depthwise(x, w, bias, top, left, hp, wp, sh, sw, dh, dw, lo, hi, y, first, last):
    """y[n,c,oh,ow] = clip(bias[c] + sum_{i,j} w[c,0,i,j] * xp[n, c, oh*sh+i*dh, ow*sw+j*dw], lo, hi).

    ``xp`` is ``x`` zero-padded to H_p x W_p with ``top`` rows above and
    ``left`` columns before it; each task pads its own plane into a buffer
    that stays in its core's cache, so the padded input is never written
    out whole. Task t is the plane (n, c) = divmod(t, C). A row's sums go to
    a task-local buffer, which LLVM knows aliases nothing, so the loop along
    the row is vectorised. 3x3 kernels take their nine taps in one pass
    (``_row_3x3``); other kernels a tap a pass. At stride 1 a 3x3 plane is one
    pass over its W_p-wide layout (output pixel k reads the flat padded plane
    at k + i*dh*W_p + j*dw, as in ``conv.conv_direct_stacked``), whose garbage
    columns are dropped as the rows are stored: rows of a small map are too
    short a loop on their own. At stride 2 a 3x3 row is computed at every
    column, which vectorises, and every other sum kept: twice the sums, in
    a third of the time of strided reads. The clip compares, so NaN stays NaN.
    """
    channels, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    h, wd = x.shape[2], x.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    acc = np.empty(wo, np.float32)
    plane = np.zeros((hp, wp), np.float32)
    nine = kh == 3 and kw == 3
    wide = np.empty(ho * wp if nine and sh == 1 and sw == 1 else 0, np.float32)
    full = np.empty(2 * wo - 1, np.float32)  # a row at stride 1, for stride 2
    for task in range(first, last):
        n, c = task // channels, task % channels
        plane[top:top + h, left:left + wd] = x[n, c]  # the border stays zero from the start
        wq = w[c, 0].reshape(kh * kw)
        if wide.shape[0]:
            flat = plane.reshape(hp * wp)
            span = ho * wp - 2 * dw  # the last read is the plane's last pixel
            sums = wide[:span]
            sums[:] = bias[c]
            _row_3x3(sums, flat, flat[dh * wp:], flat[2 * dh * wp:], wq, dw, 1)
            for oh in range(ho):
                _store(y[n, c, oh], wide[oh * wp:oh * wp + wo], lo, hi)
            continue
        for oh in range(ho):
            acc[:] = bias[c]
            top_row = oh * sh
            if nine:
                r0, r1, r2 = plane[top_row], plane[top_row + dh], plane[top_row + 2 * dh]
                if sw == 1:
                    _row_3x3(acc, r0, r1, r2, wq, dw, 1)
                elif sw == 2:  # every column at stride 1, vectorised, then every other one kept
                    full[:] = 0.0
                    _row_3x3(full, r0, r1, r2, wq, dw, 1)
                    for k in range(wo):
                        acc[k] += full[2 * k]
                else:
                    _row_3x3(acc, r0, r1, r2, wq, dw, sw)
            else:
                for i in range(kh):
                    xrow = plane[top_row + i * dh]
                    for j in range(kw):
                        wv = wq[i * kw + j]
                        off = j * dw
                        for k in range(wo):
                            acc[k] += wv * xrow[off + k * sw]
            _store(y[n, c, oh], acc, lo, hi)


@helper
def _store(dst, sums, lo, hi):
    """dst = sums clipped to [lo, hi] by comparisons (NaN stays NaN)."""
    for k in range(dst.shape[0]):
        value = sums[k]
        if value < lo:  # noqa: PLR1730 (comparisons, not min/max: NaN stays NaN)
            value = lo
        if value > hi:  # noqa: PLR1730
            value = hi
        dst[k] = value
