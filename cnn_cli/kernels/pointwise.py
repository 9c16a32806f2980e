"""Element-by-element passes over flat arrays: ``sum_clip`` (task t is element t) and ``all_within``
(one call, one pass).

numpy takes two passes, or a temporary array, where these take one pass,
and its NaN-propagating ``np.maximum`` ran at 0.5 ns an element here: a
residual sum and its ReLU over 0.8 M values took 0.72 ms as ``np.add``
then ``np.maximum`` in place, 0.14 ms as ``sum_clip`` (one thread's CPU).
"""

import numpy as np

from ._jit import kernel
from .conv import clipped


@kernel
def sum_clip(into, other, lo, hi, first, last):
    """into[k] = clip(into[k] + other[k], lo, hi) for the flat arrays' elements first .. last-1, comparing,
    so that NaN stays NaN (a residual sum and the ReLU or ReLU6 after it, written over the input that
    dies). Of two NaNs, either may be the sum (LLVM may swap the operands of an add): which NaN is
    unspecified in torch too.

    Two arrays, one read and written: given a third array for the output that is one of the inputs,
    the vectorised loop found them overlapping at run time and ran its scalar one (1.4 ms for 0.8 M
    values, against 0.2 here). Slices indexed from 0: an index in range(first, last) is checked for
    < 0 on every access, which also kept the loop from vectorising.
    """
    into, other = into[first:last], other[first:last]
    for k in range(into.shape[0]):
        into[k] = clipped(into[k] + other[k], lo, hi)


@kernel
def all_within(a, limit):
    """Whether every element of the flat array ``a`` is finite and at most ``limit`` in magnitude, in one
    vectorised pass with no temporary array (``np.isfinite(a).all()`` wrote a boolean array as large as
    ``a``: 3-4 times as long on a batch-8 ResNet-18's maps). A NaN or an inf makes its product by zero
    NaN (fastmath here keeps NaN and inf), and the sum of those products carries it."""
    nan_or_inf = np.float32(0.0)
    over = np.float32(0.0)  # counts the values over the limit (a running maximum did not vectorise)
    for k in range(a.shape[0]):
        value = a[k]
        nan_or_inf += value * np.float32(0.0)
        over += np.float32(1.0) if abs(value) > limit else np.float32(0.0)
    return nan_or_inf == 0.0 and over == 0.0
