"""Which path runs a convolution: the forward dispatcher and the weight-gradient dispatcher.

Every choice of path lives here, and every threshold comes from
``cnn_cli.config``. grad_x is columns scattered back where
``grad_input_by_columns`` says so, else a forward correlation (see
``conv.conv2d_backward``), whose path ``forward_path`` picks for that shape.
"""

from __future__ import annotations

import numpy as np

from .. import config
from . import gemm, paths, small, weight_grad
from .fft import fft
from .paths import BLOCKED_WIDTH
from .stem import stem
from .winograd import winograd


def forward_path(spec):
    """The forward path of ``paths`` (or ``fft``) for a call: ``spec.algorithm``, with "auto" resolved.

    "light" is "auto", except that a call of little work per image runs in
    numpy (``small.conv``), with no Numba kernel to load.

    "fft" is the FFT path; "stem" (which only "auto" takes) is ``stem.stem``,
    for inputs of few channels; "winograd" (which only "auto" takes) is
    ``winograd.winograd``; "im2col" is row im2col at stride 1 for kernels
    wider than one (``paths.rows``) and tiled matrix products otherwise
    (``gemm.gemm``, which "auto" also takes for small deep maps); "direct" is
    the depthwise kernel for one filter per channel, the stacked loops at
    stride 1 for kernels 3 wide or narrow maps, and the row-tile loops
    otherwise.
    """
    if small.takes(spec):
        return small.conv
    algorithm = spec.algorithm
    if algorithm in ("auto", "light"):
        algorithm = _choose_algorithm(spec)
    if algorithm == "fft":
        return fft
    if algorithm == "stem":
        return stem
    if algorithm == "winograd":
        return winograd
    kh, kw = spec.w_shape[2:]
    stride_1 = spec.stride == (1, 1)
    if algorithm == "gemm" or algorithm == "im2col" and not (stride_1 and kh * kw > 1):
        return gemm.gemm
    if algorithm == "im2col":
        return paths.rows
    if _depthwise(spec):
        return gemm.depthwise
    if stride_1 and (kw == BLOCKED_WIDTH or spec.out_hw[1] < config.NARROW_MAP):
        return paths.stacked
    return paths.direct


def _depthwise(spec):
    """One filter per channel, over several channels (MobileNet's 3x3 convolutions)."""
    c_out, cin_g = spec.w_shape[:2]
    return spec.groups > 1 and cin_g == 1 and c_out == spec.groups


def fused_max_pool_path(path, spec, pooling):
    """``paths.stacked_max_pool`` if a forward ``path`` followed by max pooling by ``pooling`` (a ``PoolSpec``)
    can run as one pass, else None: a 2x2 pool on the stacked path with an even padded height."""
    if path is paths.stacked and pooling.kernel == (2, 2) and spec.padded[0] % 2 == 0:
        return paths.stacked_max_pool
    return None


def _choose_algorithm(spec):
    """"auto" for a shape: "fft", "stem", "winograd", "im2col", "gemm" or "direct", by the thresholds in
    ``cnn_cli.config``."""
    n = spec.x_shape[0]
    c_out, cin_g, kh, kw = spec.w_shape
    cout_g = c_out // spec.groups
    stride_1 = spec.stride == (1, 1)
    if kh * kw >= config.FFT_MIN_TAPS and stride_1:
        return "fft"
    if spec.groups == 1 and cin_g <= config.STEM_MAX_CHANNELS:
        return "stem"
    if spec.groups == 1 and not stride_1 and kh * kw > 1 and cin_g <= config.STRIDED_STEM_MAX_CHANNELS \
            and spec.out_hw[1] >= config.STRIDED_STEM_MIN_WIDTH:
        return "stem"
    if _depthwise(spec):
        return "direct"
    if _winograd(spec):
        return "winograd"
    if kw == BLOCKED_WIDTH and stride_1:
        # The filter-blocked direct kernel, unless the layer is deep: then the
        # matrix products of row im2col on batches of larger maps, and the
        # tiled ones, which split one image's filters between threads, on
        # small maps.
        deep = cin_g * kh * kw >= config.ROWS_MIN_DEPTH and cout_g >= config.ROWS_MIN_OUT_CHANNELS
        pixels = spec.out_hw[0] * spec.out_hw[1]
        if deep and pixels < config.ROWS_MIN_PIXELS:
            return "gemm"
        return "im2col" if deep and n >= config.THREADS else "direct"
    if kh * kw == 1 and cin_g >= config.POINTWISE_MIN_DEPTH and cout_g >= config.POINTWISE_MIN_OUT_CHANNELS:
        return "gemm"
    if not stride_1 and cout_g >= config.STRIDED_GEMM_MIN_OUT_CHANNELS:
        return "gemm"
    if cin_g * kh * kw >= config.IM2COL_MIN_DEPTH and cout_g >= config.IM2COL_MIN_OUT_CHANNELS:
        return "im2col"
    return "direct"


def _winograd(spec):
    """Winograd F(4x4, 3x3) for a 3x3 convolution at stride 1, undilated and ungrouped, with enough
    channels and 4x4 output tiles to repay transforming the filters on each call (``config.WINOGRAD_*``)."""
    c_out, cin, kh, kw = spec.w_shape
    (ho, wo), th, tw = spec.out_hw, -(-spec.out_hw[0] // 4), -(-spec.out_hw[1] // 4)
    return (kh == kw == 3 and spec.stride == (1, 1) and spec.dilation == (1, 1) and spec.groups == 1
            and cin >= config.WINOGRAD_MIN_DEPTH and c_out >= config.WINOGRAD_MIN_OUT_CHANNELS
            and spec.x_shape[0] * th * tw >= config.WINOGRAD_MIN_TILES
            and ho * wo >= config.WINOGRAD_MIN_COVER * 16 * th * tw)


def grad_input_by_columns(spec):
    """Does grad_x run as columns W^T @ grad_y scattered back (``conv._grad_input_columns``) rather than
    as a correlation on a forward path? At strides above 1, where the correlation would multiply the
    stride's inserted zeros, and at stride 1 for layers that widen by
    ``config.GRAD_COLUMNS_MIN_WIDENING``; zero padding and "auto" only."""
    c_out, cin_g = spec.w_shape[:2]
    if spec.padding_mode != "zeros" or spec.algorithm not in ("auto", "light"):
        return False
    return spec.stride != (1, 1) or c_out // spec.groups >= config.GRAD_COLUMNS_MIN_WIDENING * cin_g


def weight_grad_path(x, spec):
    """The path of ``weight_grad`` for a call on input ``x``: ``spec.algorithm``, with "auto" resolved.

    "im2col" runs matrix products (``weight_grad.columns``), "direct" the
    direct loops; "fft" has no weight-gradient path of its own and runs
    "direct". "auto" takes the register-blocked loop for kernels 3 wide at
    stride 1, which beats BLAS there; for the others, matrix products beat
    the direct loops (more so the deeper the layer), as long as one image's
    columns fit ``config.IM2COL_MAX_BYTES``, and where the windows overlap
    (``_weight_phases``), the register-blocked loops over the phases of the
    stride (``weight_grad.phases``) beat the products. The W_p-wide layouts
    of stride 1 and the phases need an input that is all finite (see
    ``weight_grad``); any other takes the exact loops.
    """
    _, cin_g, kh, kw = spec.w_shape
    stride_1 = spec.stride == (1, 1)
    algorithm = spec.algorithm
    if algorithm in ("auto", "light"):
        if stride_1:  # row im2col: one kernel row's columns over the padded plane
            columns = cin_g * kw * spec.padded[0] * spec.padded[1] * 4
        else:
            columns = cin_g * kh * kw * spec.out_hw[0] * spec.out_hw[1] * 4
        blocked = kw == BLOCKED_WIDTH and stride_1
        algorithm = "direct" if blocked or columns > config.IM2COL_MAX_BYTES else "im2col"
    automatic = spec.algorithm in ("auto", "light")
    if algorithm == "im2col" and automatic and _weight_phases(spec) and bool(np.isfinite(x).all()):
        return weight_grad.phases
    if algorithm == "im2col" and not stride_1:
        return weight_grad.columns
    wide = stride_1 and bool(np.isfinite(x).all())
    if algorithm == "im2col" and wide:
        return weight_grad.columns
    if wide and kw == BLOCKED_WIDTH:
        return weight_grad.stacked
    if wide and spec.out_hw[1] < config.NARROW_MAP:
        return weight_grad.small
    return weight_grad.direct


def _weight_phases(spec):
    """Does the weight gradient where "auto" takes im2col split x into the phases of the stride
    (``weight_grad.phases``, one plane at stride 1) instead: zero padding, ungrouped, undilated, and
    windows that overlap (a 1x1 kernel at stride 2 would split x into four planes to read one: 0.29
    ms with columns, 0.61 with phases). Its zeros of grad_y meet pixels outside the windows, so x must
    also be finite. At stride 1 (kernels other than 3 wide), one core, 32 images against columns
    (load 1.9-3.0): LeNet's 1 -> 6 5x5 at 28x28 1.08 -> 0.32 ms and 6 -> 16 at 14x14 1.06 -> 0.55,
    the alexnet preset's 1 -> 16 5x5 at 32x32 2.46 -> 0.80, 3 -> 16 7x7 8.0 -> 4.0, 32 -> 64 5x5 at
    16x16 24.6 -> 21.9; 4 x 64 -> 64 5x5 at 32x32 19.8 -> 20.7."""
    (sh, sw), (kh, kw) = spec.stride, spec.w_shape[2:]
    return spec.padding_mode == "zeros" and spec.groups == 1 and spec.dilation == (1, 1) and (kh > sh or kw > sw)
