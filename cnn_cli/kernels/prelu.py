"""PReLU (``torch.nn.PReLU``): x where x > 0, else a[c] * x. Task t is the plane (n, c) = divmod(t, C).

Maps are (N, C, L), L the pixels of a plane (1 after a linear layer).
"""

import numpy as np

from ._jit import helper, kernel_exact


@helper
def _prelu_plane(src, a, dst):
    """dst[i] = src[i] times 1 where src[i] > 0, else times a.

    Bit for bit torch's ``x > 0 ? x : a * x``: x * 1 is x exactly, and a
    NaN or -0 takes the a * x side there too. The factor is chosen, not the
    value: with ``dst`` being ``src``, a chosen value compiles to a masked
    store (see ``kernels.pool._fold``), 11 times slower a value here.
    """
    one = np.float32(1.0)
    for i in range(src.shape[0]):
        v = src[i]
        dst[i] = v * (one if v > 0 else a)


@kernel_exact
def prelu(x, a, out, first, last):
    """out[n, c] = PReLU of x[n, c] with the slope a[c]; ``out`` is another array than ``x``."""
    ch = x.shape[1]
    for plane in range(first, last):
        n, c = plane // ch, plane % ch
        _prelu_plane(x[n, c], a[c], out[n, c])


@kernel_exact
def prelu_in_place(x, a, first, last):
    """x[n, c] = PReLU of x[n, c] with the slope a[c].

    Its own kernel: given one array as both ``x`` and ``out``, ``prelu``'s
    vectorised loop would find them overlapping at run time and fall back
    to its scalar one.
    """
    ch = x.shape[1]
    for plane in range(first, last):
        v = x[plane // ch, plane % ch]
        _prelu_plane(v, a[plane % ch], v)
