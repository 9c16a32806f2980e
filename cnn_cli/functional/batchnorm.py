"""Batch normalisation in training: the batch statistics and the normalised output in one
kernel, and the backward pass in another (``kernels.grad``), a channel a task.

numpy's expressions made four temporaries of the map's size in the forward
pass and six in the backward one, each a pass over memory; the kernels read
each array once per pass they need (two for the statistics, one to write).
"""

from __future__ import annotations

import numpy as np

from . import threads
from .specs import as_float32

#: Passes over the map per channel (two for the statistics, one to write; a
#: multiply-add a pixel each), for threads.run's measure of work.
_PASSES = 3


def batch_norm_train(x, weight, bias, eps, relu=False):
    """Training-mode batch norm of x (N, C, H, W) with the batch's statistics.

    Returns ``(y, xhat, mean, var)``: y = xhat * weight + bias, where
    xhat = (x - mean) / sqrt(var + eps) in float32; mean and the biased var
    are float64 (C,), as numpy's ``mean`` and ``var`` over (N, H, W) give them.
    With ``relu``, y = max(xhat * weight + bias, 0): a ReLU after the batch
    norm in the same pass (``batch_norm_backward`` then needs y).
    """
    from ..kernels import grad

    x = as_float32("x", x, 4)
    c = x.shape[1]
    gamma, beta = _per_channel(weight, c), _per_channel(bias, c)
    xhat, y = np.empty_like(x), np.empty_like(x)
    mean, var = np.empty(c, np.float64), np.empty(c, np.float64)
    threads.run(grad.batch_norm_train, x, gamma, beta, float(eps), bool(relu), xhat, y, mean, var,
                tasks=c, work=_PASSES * x.size)
    return y, xhat, mean, var


def batch_norm_backward(grad_y, xhat, inv_std, weight, relu_out=None):
    """Gradients of ``batch_norm_train``: ``(grad_x, grad_weight, grad_bias)``, from the saved xhat and
    inv_std = 1/sqrt(var + eps) (C,) float32; ``relu_out`` is its y when it ran with ``relu``."""
    from ..kernels import grad

    gy = as_float32("grad_y", grad_y, 4)
    c = gy.shape[1]
    for name, a in (("xhat", xhat), ("relu_out", relu_out)):
        if a is not None and np.shape(a) != gy.shape:
            raise ValueError(f"{name} must have grad_y's shape {gy.shape}, but has {np.shape(a)}")
    xhat = as_float32("xhat", xhat, 4)
    out = gy if relu_out is None else as_float32("relu_out", relu_out, 4)
    gx = np.empty_like(gy)
    sums = np.empty((c, 2), np.float64)
    threads.run(grad.batch_norm_backward, gy, xhat, _per_channel(inv_std, c), _per_channel(weight, c),
                relu_out is not None, out, gx, sums, tasks=c, work=_PASSES * gy.size)
    return gx, sums[:, 1].astype(np.float32), sums[:, 0].astype(np.float32)


def _per_channel(a, c):
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != (c,):
        raise ValueError(f"a per-channel array must have shape ({c},), but has {a.shape}")
    return a
