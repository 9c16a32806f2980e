"""A convolution or a residual sum and the clip after it (ReLU: [0, inf); ReLU6: [0, 6]) in one call,
for inference.

``conv2d_clip`` is ``clip(conv2d(...), lo, hi)``. The paths that can clip as
they store their output (``winograd``, ``stem``, ``gemm.gemm``, ``gemm.depthwise``)
do it there, while each tile is in cache; after the others, the output is
clipped in place. Either way no second array is made, and NaN stays NaN.
``sum_clip`` adds an array into another and clips the sum in one pass.
"""

from __future__ import annotations

import numpy as np

from .. import config, kernels
from . import dispatch, gemm, threads
from .conv import _conv_arguments
from .stem import stem
from .winograd import winograd

#: The forward paths that take ``lo`` and ``hi`` after ``spec``.
_CLIPPING = (winograd, stem, gemm.gemm, gemm.depthwise)


def conv2d_clip(x, weight, bias=None, lo=-np.inf, hi=np.inf, *, stride=1, padding=0, dilation=1, groups=1,
                padding_mode="zeros", algorithm="auto"):
    """``np.clip(conv2d(x, weight, bias, ...), lo, hi)``, the clip fused into the convolution where the
    path allows; the other arguments are ``conv2d``'s."""
    x, w, b, spec = _conv_arguments(x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm)
    path = dispatch.forward_path(spec)
    if path in _CLIPPING:
        return path(x, w, b, spec, lo, hi)
    return gemm.clip_in_place(path(x, w, b, spec), lo, hi)


def sum_clip(into, other, lo=-np.inf, hi=np.inf):
    """``into`` = clip(into + other, lo, hi), in place and in one pass (a residual sum and its ReLU);
    both float32, C-contiguous and of one shape. Returns ``into``. An element costs what one of PReLU
    does, so calls are split between threads from the same size."""
    flat = into.reshape(-1)
    threads.run(kernels.pointwise.sum_clip, flat, other.reshape(-1), np.float32(lo), np.float32(hi),
                tasks=flat.size, work=flat.size * config.PRELU_VALUE_WORK)
    return into
