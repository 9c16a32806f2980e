"""Numba kernels: compiled loops only, with no validation and no objects.

Every kernel here trusts its caller (``cnn_cli.functional``) for shapes, dtypes
(float32, C-contiguous) and argument ranges. Kernels write into an output array
the caller allocates, and no two ``prange`` iterations write the same memory.
"""
