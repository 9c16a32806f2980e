"""Affine resampling of a batch (``cnn train --augment``): validation, then ``kernels.affine``."""

import numpy as np

from . import threads

#: How a pixel read from outside the image is filled: a constant per channel, the
#: nearest edge pixel, or the mirror image about the edge (``kernels.affine``).
FILLS = ("constant", "edge", "reflect")


def affine_bilinear(x, matrices, *, fill="constant", value=None):
    """Resample each image of ``x`` (N, C, H, W) at its own affine map, bilinearly.

    Output pixel (oy, ox) of image n reads the input at
    ``matrices[n] @ (oy, ox, 1)`` (rows, columns; pixel centres at whole
    numbers), so ``matrices`` (N, 2, 3) maps output to input, as
    ``scipy.ndimage.affine_transform`` does. Pixels read from outside the
    image are ``value`` (C,) with ``fill="constant"`` (default zeros), the
    nearest edge pixel (``"edge"``) or its mirror image (``"reflect"``).
    Returns a new float32 (N, C, H, W) array.
    """
    from ..kernels.affine import FILL_CONSTANT, FILL_EDGE, FILL_REFLECT, affine_bilinear as kernel

    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), but got shape {x.shape}")
    n, c = x.shape[:2]
    m = np.ascontiguousarray(matrices, dtype=np.float64)
    if m.shape != (n, 2, 3):
        raise ValueError(f"matrices must be (N, 2, 3) = ({n}, 2, 3), one per image, but got shape {m.shape}")
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(FILLS)}, but got {fill!r}")
    value = np.zeros(c, np.float32) if value is None else np.ascontiguousarray(value, dtype=np.float32)
    if value.shape != (c,):
        raise ValueError(f"value must hold one number per channel ({c}), but got shape {value.shape}")
    mode = {"constant": FILL_CONSTANT, "edge": FILL_EDGE, "reflect": FILL_REFLECT}[fill]
    out = np.empty_like(x)
    threads.run(kernel, x, m, mode, value, out, tasks=n, work=8 * x.size)
    return out
