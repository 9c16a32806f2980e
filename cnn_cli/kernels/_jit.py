"""The one place that says how kernels are compiled.

Every parallel kernel is compiled twice, as a ``prange`` driver and as a
serial loop, because starting the thread pool costs more than small calls
(a LeNet layer on a batch) take. The caller passes the amount of work and the
kernel picks its variant by ``config.PARALLEL_MIN_WORK``.
"""

import os
import types

import numba
from numba import njit

from .. import config

# numba's OpenMP layer leaves its workers spinning after each parallel loop,
# and OpenBLAS (behind numpy's matrix products) does the same; on a small or
# busy machine the two steal each other's cores. The workqueue layer's
# workers sleep instead. NUMBA_THREADING_LAYER still overrides this.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = config.THREADING_LAYER

# Reassociation lets LLVM vectorise the sums; we leave out the "no NaN / no inf"
# assumptions so NaN and inf propagate through the engine as they do in torch.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}


def _renamed(fn, suffix):
    """A copy of ``fn`` under another qualified name. Numba's on-disk cache is
    keyed by qualified name and signature, not by compile flags, so the serial
    and parallel variants must not share a name."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


class Kernel:
    """A kernel with a serial and a parallel variant; call it with ``work=`` (multiply-adds or so).

    The disk cache (``cache=True``) is keyed by the CPU name and features, so
    it never serves code built for another CPU.
    """

    def __init__(self, fn, fastmath):
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__
        options = dict(cache=True, nogil=True, fastmath=fastmath)
        self.serial = njit(**options)(_renamed(fn, "_serial"))
        self.parallel = njit(parallel=True, **options)(fn)

    def __call__(self, *args, work):
        variant = self.parallel if work >= config.PARALLEL_MIN_WORK else self.serial
        return variant(*args)


def parallel(fn):
    """A kernel whose arithmetic may be reassociated (sums, products)."""
    return Kernel(fn, FASTMATH)


def parallel_exact(fn):
    """A kernel whose comparisons must see NaN exactly (max pooling)."""
    return Kernel(fn, False)
