"""The depthwise convolution kernel: one filter per channel (groups = C_in = C_out), as in MobileNets.

The general grouped kernels would treat each channel as a group of one
filter, paying per group for set-up meant for many filters (and, on the
filter-blocked path, for three zero filters of each block of four); here a
task is one plane, worked a row at a time. Notation as in ``kernels.conv``.
"""

import numpy as np

from ._jit import helper, kernel
from .conv import clipped, store_clipped


@helper
def _row_3x3(acc, r0, r1, r2, wq, bias, dw, stride):
    """acc[k] = bias + the 3x3 taps of wq (a (9,) array) on the rows r0, r1, r2 at column k*stride.

    All nine taps in one pass: a sum is stored once, where a pass per tap
    loads and stores it nine times. Starting from ``bias``, not from an
    ``acc`` filled with it, spares a pass and a load a pixel, with the same
    bits: 4 x 144 planes of 56x56 took 1.49 ms of one core against 1.62,
    4 x 384 of 14x14 0.36 against 0.40 (medians of 61). Inlined with a
    literal ``stride``, so the reads at 2*k are a constant stride LLVM
    vectorises.
    """
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wq[0], wq[1], wq[2], wq[3], wq[4], wq[5], wq[6], wq[7], wq[8]
    # Slices at each tap's offset, read at q = k*stride >= 0: an index plus a
    # run-time offset would need a negative-index check on every read.
    a0, a1, a2 = r0[0:], r0[dw:], r0[2 * dw:]
    b0, b1, b2 = r1[0:], r1[dw:], r1[2 * dw:]
    c0, c1, c2 = r2[0:], r2[dw:], r2[2 * dw:]
    for k in range(acc.shape[0]):
        q = k * stride
        acc[k] = (bias + w0 * a0[q] + w1 * a1[q] + w2 * a2[q] + w3 * b0[q] + w4 * b1[q] + w5 * b2[q]
                   + w6 * c0[q] + w7 * c1[q] + w8 * c2[q])


@kernel
def conv_depthwise(x, w, bias, top, left, hp, wp, sh, sw, dh, dw, lo, hi, y, first, last):
    """y[n,c,oh,ow] = clip(bias[c] + sum_{i,j} w[c,0,i,j] * xp[n, c, oh*sh+i*dh, ow*sw+j*dw], lo, hi).

    ``xp`` is ``x`` zero-padded to H_p x W_p with ``top`` rows above and
    ``left`` columns before it; each task pads its own plane into a buffer
    that stays in its core's cache, so the padded input is never written
    out whole. Task t is the plane (n, c) = divmod(t, C).

    With one pixel of zeros all round, a 3x3 kernel at stride 1 reads the
    plane itself (``_plane_3x3``). Otherwise, at stride 1 it is one pass
    over the flat W_p-wide plane (output pixel k reads it at k + i*dh*W_p + j*dw, as in
    ``conv.conv_direct_stacked``), nine taps at once (``_row_3x3``), whose
    garbage columns are dropped as the rows are stored: rows of a small map
    are too short a loop on their own. At stride 2 (no dilation) the plane is
    padded into its four phase planes (even and odd rows by even and odd
    columns), where every tap reads at unit stride: one flat pass of the
    output's size, where strided reads, or every column computed at stride 1,
    took two to three times as long. Other kernels go a tap a pass along
    rows. The clip compares, so NaN stays NaN.
    """
    channels, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    nine = kh == 3 and kw == 3
    wide = nine and sh == 1 and sw == 1
    # One pixel of zeros all round, as MobileNets' layers have: no padded copy (``_plane_3x3``).
    same = wide and dh == 1 and dw == 1 and top == 1 and left == 1 and hp == ho + 2 and wp == wo + 2 \
        and x.shape[2] == ho and x.shape[3] == wo and ho >= 2 and wo >= 2
    if same:
        size = ho * wo
        xf, yf = x.reshape(x.size), y.reshape(y.size)
        for task in range(first, last):
            _plane_3x3(xf[task * size:(task + 1) * size], w[task % channels, 0].reshape(9), bias[task % channels],
                       lo, hi, yf[task * size:(task + 1) * size], ho, wo)
        return
    phased = nine and sh == 2 and sw == 2 and dh == 1 and dw == 1
    # Phase planes are W_out + 1 wide: output pixel (oh, ow) reads phase
    # (i % 2, j % 2) at (oh + i // 2, ow + j // 2), so W_out + 1 columns and
    # H_out + 1 rows are read, and one row more lets the flat pass run over.
    wq = wo + 1
    plane = np.zeros((4, (ho + 2) * wq) if phased else (1, hp * wp), np.float32)
    sums = np.empty(ho * wq if phased else ho * wp if wide else wo, np.float32)
    for task in range(first, last):
        n, c = task // channels, task % channels
        wq9 = w[c, 0].reshape(kh * kw)
        if phased:
            _pad_phases(x[n, c], top, left, ho, wo, plane)
            _phases_3x3(sums, plane[0], plane[1], plane[2], plane[3], wq9, bias[c], wq)
            _store_rows(y[n, c], sums, wq, lo, hi)
            continue
        flat = plane[0]
        _pad_plane(x[n, c], top, left, wp, flat)
        if wide:
            span = ho * wp - 2 * dw  # the last read is the plane's last pixel
            _row_3x3(sums[:span], flat, flat[dh * wp:], flat[2 * dh * wp:], wq9, bias[c], dw, 1)
            _store_rows(y[n, c], sums, wp, lo, hi)
            continue
        for oh in range(ho):
            at = oh * sh * wp
            if nine:
                _row_3x3(sums, flat[at:], flat[at + dh * wp:], flat[at + 2 * dh * wp:], wq9, bias[c], dw, sw)
            else:
                sums[:] = bias[c]
                for i in range(kh):
                    xrow = flat[at + i * dh * wp:]
                    for j in range(kw):
                        wv = wq9[i * kw + j]
                        off = j * dw
                        for k in range(wo):
                            sums[k] += wv * xrow[off + k * sw]
            store_clipped(y[n, c, oh], sums, lo, hi)


@helper
def _plane_3x3(src, wq, bias, lo, hi, dst, h, w):
    """dst = clip(bias + the 3x3 taps of wq on src zero-padded by one pixel, lo, hi): flat h x w planes.

    Rows 1 .. h-2 are one pass over the flat plane, as ``_row_3x3`` goes over
    a padded copy, but with no copy: each row's first and last column read
    the ends of the rows beside them, and are taken again, one by one
    (``_edge_3x3``). Rows 0 and h-1 are passes of their own, whose row past
    the edge is zero. That spares the copy, the dropped padding columns and
    a pass to store, with the same bits (a padding tap adds w * 0, so a NaN
    or inf weight still reaches the border, as in torch). CPU time of one
    core against the padded copy (medians of 61, load average 2-3): 4 x 144
    planes of 56x56 0.97 ms against 1.44, 4 x 32 of 112x112 0.87 against
    1.27, 4 x 384 of 14x14 0.31 against 0.37, 4 x 960 of 7x7 0.35 against 0.50.
    """
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wq[0], wq[1], wq[2], wq[3], wq[4], wq[5], wq[6], wq[7], wq[8]
    zero = np.float32(0.0)
    a0, a1, a2 = src[0:], src[1:], src[2:]
    b0, b1, b2 = src[w:], src[w + 1:], src[w + 2:]
    c0, c1, c2 = src[2 * w:], src[2 * w + 1:], src[2 * w + 2:]
    inner = dst[w + 1:]
    for k in range((h - 2) * w - 2):
        inner[k] = clipped(bias + w0 * a0[k] + w1 * a1[k] + w2 * a2[k] + w3 * b0[k] + w4 * b1[k] + w5 * b2[k]
                           + w6 * c0[k] + w7 * c1[k] + w8 * c2[k], lo, hi)
    above = bias + w0 * zero + w1 * zero + w2 * zero
    first = dst[1:]
    for k in range(w - 2):
        first[k] = clipped(above + w3 * a0[k] + w4 * a1[k] + w5 * a2[k] + w6 * b0[k] + w7 * b1[k] + w8 * b2[k],
                           lo, hi)
    d0, d1, d2 = src[(h - 2) * w:], src[(h - 2) * w + 1:], src[(h - 2) * w + 2:]
    e0, e1, e2 = src[(h - 1) * w:], src[(h - 1) * w + 1:], src[(h - 1) * w + 2:]
    last = dst[(h - 1) * w + 1:]
    for k in range(w - 2):
        last[k] = clipped(bias + w0 * d0[k] + w1 * d1[k] + w2 * d2[k] + w3 * e0[k] + w4 * e1[k] + w5 * e2[k]
                          + w6 * zero + w7 * zero + w8 * zero, lo, hi)
    for r in range(1, h - 1):  # the first and last column: the padding's taps are w * 0, in order
        up, at, down = (r - 1) * w, r * w, (r + 1) * w
        dst[at] = clipped(bias + w0 * zero + w1 * src[up] + w2 * src[up + 1] + w3 * zero + w4 * src[at]
                          + w5 * src[at + 1] + w6 * zero + w7 * src[down] + w8 * src[down + 1], lo, hi)
        up, at, down = up + w - 2, at + w - 2, down + w - 2
        dst[at + 1] = clipped(bias + w0 * src[up] + w1 * src[up + 1] + w2 * zero + w3 * src[at] + w4 * src[at + 1]
                              + w5 * zero + w6 * src[down] + w7 * src[down + 1] + w8 * zero, lo, hi)
    for r in (0, h - 1):
        for col in (0, w - 1):
            dst[r * w + col] = clipped(_edge_3x3(src, h, w, r, col, wq, bias), lo, hi)


@helper
def _edge_3x3(src, h, w, r, col, wq, bias):
    """bias + the 3x3 taps of wq at pixel (r, col) of the flat h x w plane src, zero-padded, in the
    padded pass's order: a corner."""
    total = bias
    for i in range(3):
        for j in range(3):
            rr, cc = r + i - 1, col + j - 1
            inside = 0 <= rr < h and 0 <= cc < w
            total += wq[3 * i + j] * (src[rr * w + cc] if inside else np.float32(0.0))
    return total


@helper
def _pad_plane(src, top, left, wp, flat):
    """The plane ``src`` into the flat W_p-wide ``flat`` at (top, left), whose border stays as it was (zero).
    Row by row, element by element: a 2-D slice assignment took four times as long."""
    width = src.shape[1]
    for r in range(src.shape[0]):
        row, base = src[r], (top + r) * wp + left
        dst = flat[base:base + width]  # indexed from 0: an index plus an offset is checked for < 0 each time
        for k in range(width):
            dst[k] = row[k]


@helper
def _pad_phases(src, top, left, ho, wo, phases):
    """The plane ``src`` zero-padded by (top, left), as its four phase planes: padded pixel (r, k) goes to
    phases[2*(r % 2) + k % 2] at (r // 2, k // 2), in rows W_out + 1 wide. Pixels past what a 3x3 kernel at
    stride 2 reads (row 2*H_out, column 2*W_out) are left out; the border stays as it was (zero)."""
    wq = wo + 1
    rows = min(src.shape[0], 2 * ho + 1 - top)
    cols = min(src.shape[1], 2 * wo + 2 - left)
    pairs = cols // 2
    for r in range(rows):
        pr = top + r
        row = src[r]
        base = 2 * (pr % 2)  # the phases of this row's parity
        at = (pr // 2) * wq
        # Source columns 2m and 2m + 1 land on padded columns left + 2m and
        # left + 2m + 1: one even, one odd, both at the m-th place of their
        # phase row past (left // 2) and ((left + 1) // 2).
        first = phases[base + left % 2][at + left // 2:]
        second = phases[base + (left + 1) % 2][at + (left + 1) // 2:]
        # One loop reading each pair of one source row, which LLVM vectorises
        # as loads and shuffles: 0.18 ns a pixel, where a loop for each phase
        # took 0.3, a floor division for each pixel 1.7 (96 planes of 112x112).
        for m in range(pairs):
            first[m] = row[2 * m]
            second[m] = row[2 * m + 1]
        if cols % 2:
            first[pairs] = row[cols - 1]


@helper
def _phases_3x3(sums, p00, p01, p10, p11, wq9, bias, wq):
    """sums[k] = bias + the 3x3 taps of ``wq9`` at stride 2 for flat output pixel k (rows W_out + 1 wide),
    read at unit stride from the phase planes: tap (i, j) is phase (i % 2, j % 2) shifted by
    (i // 2) * wq + j // 2."""
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = wq9[0], wq9[1], wq9[2], wq9[3], wq9[4], wq9[5], wq9[6], wq9[7], wq9[8]
    a0, a2 = p00[0:], p00[1:]
    b0 = p01[0:]
    c0, c2 = p10[0:], p10[1:]
    d0 = p11[0:]
    e0, e2 = p00[wq:], p00[wq + 1:]
    f0 = p01[wq:]
    for k in range(sums.shape[0]):
        sums[k] = (bias + w0 * a0[k] + w1 * b0[k] + w2 * a2[k] + w3 * c0[k] + w4 * d0[k] + w5 * c2[k]
                   + w6 * e0[k] + w7 * f0[k] + w8 * e2[k])


@helper
def _store_rows(dst, sums, width, lo, hi):
    """dst[oh] = sums[oh*width : oh*width + W_out] clipped, for each output row: the flat rows' own pixels."""
    wo = dst.shape[1]
    for oh in range(dst.shape[0]):
        store_clipped(dst[oh], sums[oh * width:oh * width + wo], lo, hi)

