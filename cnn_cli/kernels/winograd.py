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


@kernel
def filters(w, u, first, last):
    """u[xi, co, ci] = (G w[co, ci] G^T) at point xi = 6*row + column; task t is filter t.

    Each filter's channels are one vectorised pass: t = G g over the kernel's
    rows, then u = t G^T over its columns.
    """
    cin = w.shape[1]
    g = np.empty((3, 3, cin), np.float32)
    t = np.empty((A, 3, cin), np.float32)
    for co in range(first, last):
        for i in range(3):
            for j in range(3):
                g[i, j, :] = w[co, :, i, j]
        for j in range(3):
            _g_vec(g[0, j], g[1, j], g[2, j], t[0, j], t[1, j], t[2, j], t[3, j], t[4, j], t[5, j])
        for a in range(A):
            r = u[a * A:(a + 1) * A, co]
            _g_vec(t[a, 0], t[a, 1], t[a, 2], r[0], r[1], r[2], r[3], r[4], r[5])


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
    return (4 * d0 - 5 * d2 + d4, d3 + d4 - 4 * (d1 + d2), d4 - d3 + 4 * (d1 - d2),
            d4 - d2 + 2 * (d3 - d1), d4 - d2 + 2 * (d1 - d3), 4 * d1 - 5 * d3 + d5)


@kernel
def input_tiles(xp, th, tw, t0, v, first, last):
    """v[xi, ci, k] = (B^T d B)[xi] of tile t0 + k's 6x6 input d in channel ci; task t is channel t.

    ``xp`` is the padded input, at least 4*TH + 2 rows and 4*TW + 2 columns.
    The tiles of a tile row go together, in vectorised passes along them:
    the six input rows are split by column modulo 4 (tile q's columns are
    phase 0..3 at q, then phases 0 and 1 at q + 1), B^T combines the rows,
    and B each tile's columns, stored contiguously along the tiles. Every
    element is indexed, not sliced: views made for each run of tiles took
    a fifth of the time on 64 channels at 56x56.
    """
    count = v.shape[2]
    ph = np.empty((A, M, tw + 1), np.float32)  # [input row, column % 4, column // 4]
    rows = np.empty((A, M, tw + 1), np.float32)  # B^T of ph
    for ci in range(first, last):
        k = 0
        while k < count:
            n, r, q0, span = _run(t0 + k, count - k, th, tw)
            for i in range(A):
                row = M * r + i
                for e in range(span + 1):
                    ph[i, 0, e] = xp[n, ci, row, M * (q0 + e)]
                    ph[i, 1, e] = xp[n, ci, row, M * (q0 + e) + 1]
                for e in range(span):
                    ph[i, 2, e] = xp[n, ci, row, M * (q0 + e) + 2]
                    ph[i, 3, e] = xp[n, ci, row, M * (q0 + e) + 3]
            for p in range(M):
                for e in range(span + (1 if p < 2 else 0)):
                    o = _bt(ph[0, p, e], ph[1, p, e], ph[2, p, e], ph[3, p, e], ph[4, p, e], ph[5, p, e])
                    for a in range(A):
                        rows[a, p, e] = o[a]
            for a in range(A):
                for e in range(span):
                    o = _bt(rows[a, 0, e], rows[a, 1, e], rows[a, 2, e], rows[a, 3, e], rows[a, 0, e + 1],
                            rows[a, 1, e + 1])
                    for j in range(A):
                        v[a * A + j, ci, k + e] = o[j]
            k += span


@kernel
def output_tiles(m, bias, lo, hi, th, tw, t0, c0, y, first, last):
    """y[n, c0 + c, 4r:4r+4, 4q:4q+4] = clip(A^T m[:, c, k] A + bias, lo, hi) for tile t0 + k = (n, r, q),
    the parts inside y; task t is filter t of ``m`` (36, filters, tiles).

    The tiles of a tile row go together, in vectorised passes along them:
    A^T combines the rows of points, A each tile's columns into a row
    buffer, which is stored with the bias and the clip. The clip compares,
    so NaN stays NaN (lo = -inf and hi = inf clip nothing).
    """
    ho, wo = y.shape[2], y.shape[3]
    count = m.shape[2]
    s = np.empty((M, A, tw), np.float32)
    out = np.empty((M, tw), np.float32)
    for c in range(first, last):
        b0 = bias[c0 + c]
        k = 0
        while k < count:
            n, r, q0, span = _run(t0 + k, count - k, th, tw)
            for j in range(A):
                p0, p1, p2 = m[j, c, k:k + span], m[A + j, c, k:k + span], m[2 * A + j, c, k:k + span]
                p3, p4, p5 = m[3 * A + j, c, k:k + span], m[4 * A + j, c, k:k + span], m[5 * A + j, c, k:k + span]
                for e in range(span):
                    s[0, j, e] = p0[e] + p1[e] + p2[e] + p3[e] + p4[e]
                    s[1, j, e] = p1[e] - p2[e] + 2 * (p3[e] - p4[e])
                    s[2, j, e] = p1[e] + p2[e] + 4 * (p3[e] + p4[e])
                    s[3, j, e] = p1[e] - p2[e] + 8 * (p3[e] - p4[e]) + p5[e]
            x0 = M * q0
            width = min(M * span, wo - x0)
            for i in range(min(M, ho - M * r)):
                for e in range(span):
                    m0, m1, m2, m3, m4, m5 = s[i, 0, e], s[i, 1, e], s[i, 2, e], s[i, 3, e], s[i, 4, e], s[i, 5, e]
                    out[0, e] = m0 + m1 + m2 + m3 + m4 + b0
                    out[1, e] = m1 - m2 + 2 * (m3 - m4) + b0
                    out[2, e] = m1 + m2 + 4 * (m3 + m4) + b0
                    out[3, e] = m1 - m2 + 8 * (m3 - m4) + m5 + b0
                dst = y[n, c0 + c, M * r + i, x0:x0 + width]
                for x in range(width):
                    dst[x] = clipped(out[x % M, x // M], lo, hi)
            k += span
