"""PReLU (``torch.nn.functional.prelu``): x where x > 0, else weight[c] * x, over channel axis 1."""

from __future__ import annotations

import numpy as np

from .. import config, kernels
from . import threads


def prelu(x, weight, *, in_place=False):
    """PReLU of ``x`` (N, C, ...) with one slope a channel, ``weight`` (C,), or one for all (1,).

    Bit for bit torch's ``x > 0 ? x : weight[c] * x`` (-0 and NaN included),
    in float32, in one pass. With ``in_place``, the result is written over
    ``x`` when it is a writeable C-contiguous float32 array (else a new array
    is returned, as without).
    """
    arr = np.asarray(x)
    if arr.ndim < 2 or arr.size == 0:
        raise ValueError(f"x must be (N, C, ...) with at least one value, but has shape {arr.shape}")
    a = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1)
    c = arr.shape[1]
    if a.size not in (1, c):
        raise ValueError(f"weight must hold one slope or one a channel ({c}), but has {a.size}")
    a = np.full(c, a[0], np.float32) if a.size != c else a
    mine = in_place and arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.writeable
    x3 = np.ascontiguousarray(arr, dtype=np.float32).reshape(arr.shape[0], c, -1)
    run = {"tasks": x3.shape[0] * c, "work": x3.size * config.PRELU_VALUE_WORK}
    if mine:
        threads.run(kernels.prelu.prelu_in_place, x3, a, **run)
        return arr
    out = np.empty(x3.shape, np.float32)
    threads.run(kernels.prelu.prelu, x3, a, out, **run)
    return out.reshape(arr.shape)
