"""Numba kernels: compiled loops only, with no validation and no objects.

Every kernel here trusts its caller (``cnn_cli.functional``) for shapes, dtypes
(float32, C-contiguous) and argument ranges. Kernels write into an output array
the caller allocates. Each processes the tasks ``[first, last)`` of a fixed
numbering given in its docstring, and no two tasks write the same memory, so
the caller may split the range between threads (see ``_jit``).
"""
