"""The public pooling API: max and average pooling, forward and backward (torch's rules).

Every window is ``kernel_size``, ``stride`` defaults to ``kernel_size``, and
``padding`` is at most half the kernel. Output size:
``(H + 2*padding - kernel_size) // stride + 1`` (floor mode), likewise for W;
``max_pool2d`` also takes ``ceil_mode`` (``ceil_mode_extra``).
"""

from __future__ import annotations

import numpy as np

from .. import config, kernels
from . import small, threads
from .specs import PoolSpec, as_float32, check_pool_options


def _pool_forward(kernel, x, kernel_size, stride, padding, *extra):
    x = as_float32("x", x, 4)
    spec = PoolSpec(x.shape, kernel_size, stride, padding)
    y = np.empty(spec.y_shape, np.float32)
    outputs = [np.empty(spec.y_shape, dtype) for dtype in extra]
    threads.run(kernel, x, *spec.args, y, *outputs, tasks=x.shape[0] * x.shape[1], work=spec.work)
    return (y, *outputs) if extra else y


def _pool_backward_args(x, grad_y, kernel_size, stride, padding):
    x = as_float32("x", x, 4)
    gy = as_float32("grad_y", grad_y, 4)
    spec = PoolSpec(x.shape, kernel_size, stride, padding)
    if gy.shape != spec.y_shape:
        raise ValueError(
            f"grad_y must have the shape of the pooling output {spec.y_shape}, but has {gy.shape}"
        )
    return x, gy, spec


def ceil_mode_extra(hw, kernel_size, stride=None, padding=0):
    """(rows, columns) that ceil mode adds below and right of the padded input (H, W) = ``hw``.

    As torch and ONNX count it: the output size is ceil((H + 2*padding -
    kernel_size) / stride) + 1, less one if that last window would start
    past the input and its top or left padding. Floor mode of the input
    padded with that many more rows of -inf gives the same windows.
    """
    kernel, stride, pads = check_pool_options(kernel_size, stride, padding)
    extra = []
    for size, k, s, p in zip(hw, kernel, stride, pads):
        n = -(-(size + 2 * p - k) // s) + 1
        if (n - 1) * s >= size + p:
            n -= 1
        extra.append(max((n - 1) * s + k - (size + 2 * p), 0))
    return tuple(extra)


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling over windows of ``kernel_size``; padding counts as -inf, and a NaN wins.

    ``stride`` defaults to ``kernel_size``; padding is at most half the kernel.
    Output size: ``(H + 2*padding - kernel_size) // stride + 1`` (floor mode);
    ``ceil_mode`` rounds up instead (``ceil_mode_extra``), the last windows
    running past the input. Ties keep the value torch's scan in row-major
    order keeps (+0 or -0). Without the argmax (``max_pool2d_with_argmax``)
    the maxima are taken along the rows, then down the columns, vectorised.
    """
    x = as_float32("x", x, 4)
    eh, ew = ceil_mode_extra(x.shape[2:], kernel_size, stride, padding) if ceil_mode else (0, 0)
    spec = PoolSpec((*x.shape[:2], x.shape[2] + eh, x.shape[3] + ew), kernel_size, stride, padding)
    if small.takes_pool(x.shape, kernel_size, stride, padding):
        return small.max_pool(x, kernel_size, stride, padding, extra=(eh, ew))
    band = max(1, config.POOL_BAND_VALUES // (spec.stride[0] * x.shape[3]))  # output rows whose input rows fit
    y = np.empty(spec.y_shape, np.float32)
    threads.run(kernels.pool.max_pool_values, x, *spec.args, band, y, tasks=x.shape[0] * x.shape[1],
                work=x.size * config.POOL_VALUE_WORK)
    return y


def max_pool2d_with_argmax(x, kernel_size, stride=None, padding=0):
    """``max_pool2d`` and, for each output, where its maximum lies in its plane (ih*W + iw, int64).

    A layer keeps the argmax from its forward pass, so its backward pass is a
    scatter (``max_pool2d_backward_from_argmax``) instead of a second search.
    """
    return _pool_forward(kernels.pool.max_pool_forward, x, kernel_size, stride, padding, np.int64)


def max_pool2d_backward(x, grad_y, kernel_size, stride=None, padding=0):
    """Gradient of ``max_pool2d``: each window's gradient goes to its first maximum."""
    x, gy, spec = _pool_backward_args(x, grad_y, kernel_size, stride, padding)
    _, argmax = _pool_forward(kernels.pool.max_pool_forward, x, kernel_size, stride, padding, np.int64)
    return _max_pool_scatter(x.shape, gy, argmax)


def max_pool2d_backward_from_argmax(x_shape, grad_y, argmax):
    """Gradient of ``max_pool2d`` from the argmax its forward pass returned: grad_x of shape ``x_shape``."""
    gy = as_float32("grad_y", grad_y, 4)
    argmax = np.ascontiguousarray(argmax, dtype=np.int64)
    if gy.shape != argmax.shape:
        raise ValueError(f"grad_y must have the shape of the pooling output {argmax.shape}, but has {gy.shape}")
    plane = int(x_shape[2]) * int(x_shape[3])
    if argmax.size and (argmax.min() < 0 or argmax.max() >= plane):
        raise ValueError(f"argmax must hold indices into a plane of {plane} pixels (0 to {plane - 1}), "
                         "as max_pool2d_with_argmax returns them")
    return _max_pool_scatter(x_shape, gy, argmax)


def _max_pool_scatter(x_shape, gy, argmax):
    gx = np.empty(x_shape, np.float32)
    threads.run(kernels.pool.max_pool_backward, gy, argmax, gx, tasks=x_shape[0] * x_shape[1], work=gy.size)
    return gx


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling with zero padding counted in the mean (torch's ``count_include_pad=True``).

    Every window is divided by kH*kW. Arguments and output size as ``max_pool2d``.
    """
    return _pool_forward(kernels.pool.avg_pool_forward, x, kernel_size, stride, padding)


def avg_pool2d_backward(x, grad_y, kernel_size, stride=None, padding=0):
    """Gradient of ``avg_pool2d``: each window spreads grad/(kH*kW) over its pixels."""
    x, gy, spec = _pool_backward_args(x, grad_y, kernel_size, stride, padding)
    gx = np.empty_like(x)
    threads.run(kernels.pool.avg_pool_backward, gy, *spec.args, gx, tasks=gx.shape[0] * gx.shape[1], work=spec.work)
    return gx
