"""Numba kernels: compiled loops only, with no validation and no objects.

Every kernel here trusts its caller (``cnn_cli.functional``) for shapes, dtypes
(float32, C-contiguous) and argument ranges. Kernels write into an output array
the caller allocates. Each processes the tasks ``[first, last)`` of a fixed
numbering given in its docstring, and no two tasks write the same memory, so
the caller may split the range between threads (see ``_jit``).

The submodules load on first use (``kernels.conv`` imports ``kernels/conv.py``
then): importing Numba and loading its cached machine code takes longer than a
whole ``cnn apply`` of a small photo, and a run whose every call is small
takes the numpy paths (``cnn_cli.functional.small``) and never needs them.
"""

import importlib

_SUBMODULES = frozenset({"affine", "conv", "depthwise", "grad", "pointwise", "pool", "prelu", "stem", "winograd"})


def __getattr__(name):
    # Once imported, the submodule is an attribute of this package and this
    # hook is not called again for it; the import lock makes threads safe.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
