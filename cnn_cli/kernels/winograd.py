"""Winograd F(4x4, 3x3) transforms: 3x3 stride-1 correlation as 36 matrix products.

A 4x4 tile of outputs needs a 6x6 tile of input. In the transformed domain
the correlation is an element-wise product summed over input channels, so for
each of the 36 points xi it is one matrix product U[xi] (C_out x C_in) @
V[xi] (C_in x tiles): 36 multiply-adds per 16 outputs and channel pair where
the direct sum takes 144. These kernels make V (``input_tiles``), U
(``filters``) and the outputs from the products (``output_tiles``); the
matrices are Lavin and Gray's (arXiv:1509.09308), points 0, +-1, +-2, inf.
Tile t numbers (image, tile row, tile column) = (t // (TH*TW), t // TW % TH,
t % TW) over the output, TH x TW tiles an image.
"""

import numpy as np

from ._jit import helper, kernel
from .conv import clipped

#: Outputs along each side of a tile, and the input it reads (4 + 3 - 1).
M = 4
A = 6

# The transforms' factors as float32: a Python int times a float32 is a float64 in Numba, and the
# transforms then ran in float64, half as many values a vector, with a conversion each way.
_2, _4, _5, _8 = np.float32(2), np.float32(4), np.float32(5), np.float32(8)

#: (filter, channel) pairs ``filters`` transforms at once: its buffers (46 rows) stay in the first-level cache.
_PAIRS = 256


@kernel
def filters(w, u, first, last):
    """u[xi, co, ci] = (G w[co, ci] G^T) at point xi = 6*row + column; task t is filter t.

    ``w`` and ``u`` are C-contiguous. The (filter, channel) pairs go in
    chunks: their kernels are gathered nine rows of the chunk's pairs (one
    per kernel tap), t = G g combines the kernel's rows and u = t G^T its
    columns in vectorised passes along the chunk, and the chunk's 36 rows
    are copied into u. Each filter's passes along its channels, with a
    strided gather and views for every filter, took 1.6 times as long on
    128 x 128 filters (0.29 ms against 0.18) and 2.2 times on 64 x 16.
    """
    cin = w.shape[1]
    w9 = w.reshape(w.shape[0] * cin, 9)
    u2 = u.reshape(A * A, u.shape[1] * cin)
    g = np.empty((9, _PAIRS), np.float32)  # [3 * kernel row + kernel column, pair]
    t = np.empty((A, 3, _PAIRS), np.float32)  # [row of G g, kernel column, pair]
    out = np.empty((A * A, _PAIRS), np.float32)
    p0, end = first * cin, last * cin
    while p0 < end:
        n = min(_PAIRS, end - p0)
        src = w9[p0:p0 + n]
        for p in range(n):
            for k in range(9):
                g[k, p] = src[p, k]
        for j in range(3):
            _g_vec(g[j, :n], g[3 + j, :n], g[6 + j, :n],
                   t[0, j, :n], t[1, j, :n], t[2, j, :n], t[3, j, :n], t[4, j, :n], t[5, j, :n])
        for a in range(A):
            r = out[a * A:(a + 1) * A]
            _g_vec(t[a, 0, :n], t[a, 1, :n], t[a, 2, :n], r[0, :n], r[1, :n], r[2, :n], r[3, :n], r[4, :n], r[5, :n])
        for xi in range(A * A):
            dst = u2[xi, p0:p0 + n]
            for p in range(n):
                dst[p] = out[xi, p]
        p0 += n


@helper
def _g_vec(g0, g1, g2, o0, o1, o2, o3, o4, o5):
    """o = G g along a run: g0..g2 and o0..o5 are equally long 1-D arrays."""
    for k in range(g0.shape[0]):
        a, b, c = g0[k], g1[k], g2[k]
        o0[k] = a * np.float32(0.25)
        o1[k] = (a + b + c) * np.float32(-1 / 6)
        o2[k] = (a - b + c) * np.float32(-1 / 6)
        o3[k] = a * np.float32(1 / 24) + b * np.float32(1 / 12) + c * np.float32(1 / 6)
        o4[k] = a * np.float32(1 / 24) - b * np.float32(1 / 12) + c * np.float32(1 / 6)
        o5[k] = c


@helper
def _run(t, left, th, tw):
    """Tile t's (image, tile row, tile column) and how many of the ``left`` tiles from it lie in its tile row."""
    q0 = t % tw
    return t // (th * tw), t // tw % th, q0, min(tw - q0, left)


@helper
def _bt(d0, d1, d2, d3, d4, d5):
    """B^T (d0, ..., d5): one column or row of an input tile."""
    return (_4 * d0 - _5 * d2 + d4, d3 + d4 - _4 * (d1 + d2), d4 - d3 + _4 * (d1 - d2),
            d4 - d2 + _2 * (d3 - d1), d4 - d2 + _2 * (d1 - d3), _4 * d1 - _5 * d3 + d5)


@kernel
def input_tiles(xp, th, tw, t0, v, first, last):
    """v[xi, ci, k] = (B^T d B)[xi] of tile t0 + k's 6x6 input d in channel ci; task t is channel t.

    ``xp`` is the padded input, at least 4*TH + 2 rows and 4*TW + 2 columns.
    A channel's tiles are first gathered, each of a tile's 36 inputs along
    the block's tiles (d[i, j, k], from one view of each input row a run of
    tiles reads); B^T then combines the rows and B the columns in vectorised
    passes along all the block's tiles. Passes along one tile row's tiles
    (14 at 56x56, 7 at 28x28) had left most of each vector empty, and the
    gather indexing xp's four dimensions per element took longer than the
    arithmetic: on 64 blocks of 64 tiles at 56x56 0.21 ms a block became
    0.14, on 8 x 256 channels at 14x14 1.8 ms became 0.73.
    """
    count = v.shape[2]
    d = np.empty((A, A, count), np.float32)  # [input row, input column, tile]
    t = np.empty((A, A, count), np.float32)  # [B^T row, input column, tile]
    for ci in range(first, last):
        k = 0
        while k < count:
            n, r, q0, span = _run(t0 + k, count - k, th, tw)
            for i in range(A):
                src = xp[n, ci, M * r + i, M * q0:]
                for e in range(span):
                    d[i, 0, k + e] = src[M * e]
                    d[i, 1, k + e] = src[M * e + 1]
                    d[i, 2, k + e] = src[M * e + 2]
                    d[i, 3, k + e] = src[M * e + 3]
                    d[i, 4, k + e] = src[M * e + 4]
                    d[i, 5, k + e] = src[M * e + 5]
            k += span
        for j in range(A):
            for e in range(count):
                o = _bt(d[0, j, e], d[1, j, e], d[2, j, e], d[3, j, e], d[4, j, e], d[5, j, e])
                t[0, j, e] = o[0]
                t[1, j, e] = o[1]
                t[2, j, e] = o[2]
                t[3, j, e] = o[3]
                t[4, j, e] = o[4]
                t[5, j, e] = o[5]
        for a in range(A):
            for e in range(count):
                o = _bt(t[a, 0, e], t[a, 1, e], t[a, 2, e], t[a, 3, e], t[a, 4, e], t[a, 5, e])
                v[a * A, ci, e] = o[0]
                v[a * A + 1, ci, e] = o[1]
                v[a * A + 2, ci, e] = o[2]
                v[a * A + 3, ci, e] = o[3]
                v[a * A + 4, ci, e] = o[4]
                v[a * A + 5, ci, e] = o[5]


@kernel
def output_tiles(m, bias, lo, hi, th, tw, t0, c0, y, first, last):
    """y[n, c0 + c, 4r:4r+4, 4q:4q+4] = clip(A^T m[:, c, k] A + bias, lo, hi) for tile t0 + k = (n, r, q),
    the parts inside y; task t is filter t of ``m`` (36, filters, tiles).

    A^T combines the rows of points and A the columns in vectorised passes
    along all the block's tiles, into a buffer that holds each output row
    as it lies in y (tile after tile, four columns each), which is then
    stored with the clip. The clip compares, so NaN stays NaN (lo = -inf
    and hi = inf clip nothing). Per tile row, with each output taken from
    a buffer by column modulo 4, 64 filters on 64 tiles at 56x56 took
    0.20 ms, now 0.05; 128 on 49 tiles at 28x28 0.29, now 0.09.
    """
    ho, wo = y.shape[2], y.shape[3]
    count = m.shape[2]
    s = np.empty((M, A, count), np.float32)  # [output row, point column, tile]
    out = np.empty((M, M * count), np.float32)  # [output row, 4 * tile + output column]
    for c in range(first, last):
        b0 = bias[c0 + c]
        for j in range(A):
            for e in range(count):
                p0, p1, p2 = m[j, c, e], m[A + j, c, e], m[2 * A + j, c, e]
                p3, p4, p5 = m[3 * A + j, c, e], m[4 * A + j, c, e], m[5 * A + j, c, e]
                s[0, j, e] = p0 + p1 + p2 + p3 + p4
                s[1, j, e] = p1 - p2 + _2 * (p3 - p4)
                s[2, j, e] = p1 + p2 + _4 * (p3 + p4)
                s[3, j, e] = p1 - p2 + _8 * (p3 - p4) + p5
        for i in range(M):
            for e in range(count):
                m0, m1, m2, m3, m4, m5 = s[i, 0, e], s[i, 1, e], s[i, 2, e], s[i, 3, e], s[i, 4, e], s[i, 5, e]
                out[i, M * e] = m0 + m1 + m2 + m3 + m4 + b0
                out[i, M * e + 1] = m1 - m2 + _2 * (m3 - m4) + b0
                out[i, M * e + 2] = m1 + m2 + _4 * (m3 + m4) + b0
                out[i, M * e + 3] = m1 - m2 + _8 * (m3 - m4) + m5 + b0
        k = 0
        while k < count:
            n, r, q0, span = _run(t0 + k, count - k, th, tw)
            x0 = M * q0
            width = min(M * span, wo - x0)
            for i in range(min(M, ho - M * r)):
                dst = y[n, c0 + c, M * r + i, x0:x0 + width]
                src = out[i, M * k:M * k + width]
                for x in range(width):
                    dst[x] = clipped(src[x], lo, hi)
            k += span
