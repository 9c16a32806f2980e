"""The one place that says how kernels are compiled."""

from numba import njit

# Reassociation lets LLVM vectorise the sums; we leave out the "no NaN / no inf"
# assumptions so NaN and inf propagate through the engine as they do in torch.
FASTMATH = {"reassoc", "contract", "nsz", "arcp"}

#: A serial kernel, cached on disk so a second process does not compile again.
#: Numba's cache index is keyed by the CPU name and features, so it never serves
#: code built for another CPU.
serial = njit(cache=True, fastmath=FASTMATH, nogil=True)

#: A parallel driver over ``prange``.
parallel = njit(cache=True, fastmath=FASTMATH, nogil=True, parallel=True)

#: A parallel driver whose comparisons must see NaN exactly (max pooling).
parallel_exact = njit(cache=True, nogil=True, parallel=True)
