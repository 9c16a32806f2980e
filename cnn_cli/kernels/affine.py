"""Affine resampling of a batch, for augmentation. Task t is image t.

Each output pixel (oy, ox) of image n reads the input at

    sy = m[n, 0, 0] * oy + m[n, 0, 1] * ox + m[n, 0, 2]
    sx = m[n, 1, 0] * oy + m[n, 1, 1] * ox + m[n, 1, 2]

(pixel centres at whole numbers) by bilinear interpolation of its four
neighbours. A neighbour outside the image is ``fill[c]`` (``FILL_CONSTANT``),
the nearest edge pixel (``FILL_EDGE``) or its mirror image about the edge
pixel, which is not repeated (``FILL_REFLECT``: ... c b | a b c ... x y z | y x ...),
as ``numpy.pad``'s ``constant``, ``edge`` and ``reflect`` and the engine's
``reflect`` padding. These are ``scipy.ndimage.affine_transform``'s
``order=1`` with modes ``grid-constant``, ``nearest`` and ``mirror``.

Where (sy, sx) is a whole number, as it is for flips and shifts by whole
pixels, the weights are exactly 1 and 0 and the pixel is copied exactly.
"""

import math

import numpy as np

from ._jit import helper, kernel

FILL_CONSTANT = 0
FILL_EDGE = 1
FILL_REFLECT = 2


@helper
def _tap(i, n, mode):
    """The index to read for tap ``i`` of a side of ``n`` pixels; -1 for the constant fill."""
    if 0 <= i < n:
        return i
    if mode == FILL_EDGE:
        return 0 if i < 0 else n - 1
    if mode == FILL_REFLECT:
        if n == 1:
            return 0
        period = 2 * n - 2
        i %= period  # Python's modulo: never negative
        return i if i < n else period - i
    return -1


@helper
def _whole_pixels(m, n):
    """Is image n's map a flip and a shift by whole pixels, so that every pixel is a copy?"""
    return (m[n, 0, 1] == 0 and m[n, 1, 0] == 0 and abs(m[n, 0, 0]) == 1 and abs(m[n, 1, 1]) == 1
            and m[n, 0, 2] == math.floor(m[n, 0, 2]) and m[n, 1, 2] == math.floor(m[n, 1, 2]))


@kernel
def affine_bilinear(x, m, mode, fill, out, first, last):
    """out[n] = x[n] resampled at m[n] @ (oy, ox, 1), bilinear, borders by ``mode``.

    x, out: (N, C, H, W) float32; m: (N, 2, 3) float64; fill: (C,) float32.
    Maps that only flip and shift by whole pixels are copied pixel by pixel;
    others interpolate, without the border rules where all four neighbours
    are inside the image.
    """
    c_count, h, w = x.shape[1], x.shape[2], x.shape[3]
    for n in range(first, last):
        a00, a01, a02 = m[n, 0, 0], m[n, 0, 1], m[n, 0, 2]
        a10, a11, a12 = m[n, 1, 0], m[n, 1, 1], m[n, 1, 2]
        if _whole_pixels(m, n):
            for oy in range(h):
                ty = _tap(int(a00 * oy + a02), h, mode)
                for ox in range(w):
                    tx = _tap(int(a11 * ox + a12), w, mode)
                    for c in range(c_count):
                        out[n, c, oy, ox] = x[n, c, ty, tx] if ty >= 0 and tx >= 0 else fill[c]
            continue
        for oy in range(h):
            for ox in range(w):
                sy = a00 * oy + a01 * ox + a02
                sx = a10 * oy + a11 * ox + a12
                fy, fx = math.floor(sy), math.floor(sx)
                wy, wx = np.float32(sy - fy), np.float32(sx - fx)
                y0, x0 = int(fy), int(fx)
                if 0 <= y0 < h - 1 and 0 <= x0 < w - 1:
                    for c in range(c_count):
                        top = x[n, c, y0, x0] + wx * (x[n, c, y0, x0 + 1] - x[n, c, y0, x0])
                        bottom = x[n, c, y0 + 1, x0] + wx * (x[n, c, y0 + 1, x0 + 1] - x[n, c, y0 + 1, x0])
                        out[n, c, oy, ox] = top + wy * (bottom - top)
                    continue
                t0, t1 = _tap(y0, h, mode), _tap(y0 + 1, h, mode)
                l0, l1 = _tap(x0, w, mode), _tap(x0 + 1, w, mode)
                for c in range(c_count):
                    v00 = x[n, c, t0, l0] if t0 >= 0 and l0 >= 0 else fill[c]
                    v01 = x[n, c, t0, l1] if t0 >= 0 and l1 >= 0 else fill[c]
                    v10 = x[n, c, t1, l0] if t1 >= 0 and l0 >= 0 else fill[c]
                    v11 = x[n, c, t1, l1] if t1 >= 0 and l1 >= 0 else fill[c]
                    top = v00 + wx * (v01 - v00)
                    bottom = v10 + wx * (v11 - v10)
                    out[n, c, oy, ox] = top + wy * (bottom - top)
