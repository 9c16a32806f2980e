"""The Winograd forward path: 3x3 convolutions at stride 1, as 36 matrix products on 4x4 output tiles.

``winograd(x, w, bias, spec)`` has the signature of ``paths.py``'s paths and
takes ``lo``/``hi`` too: the output is clipped to [lo, hi] as it is stored
(a ReLU is lo=0, a ReLU6 lo=0 and hi=6), so a conv and its activation are one
pass. It runs groups=1 and dilation 1 (``dispatch`` only takes it then).

The filters are transformed on every call (``kernels.winograd.filters``,
C_out x C_in small products, split between threads): no cache to go stale
when a weight is changed in place. The tiles are then shared between threads
in blocks: a task transforms a block's input tiles (every channel), runs the
36 products for a block of filters, and transforms the products back into
the output, with the bias and the clip, while they are in its core's cache.

Compared with the direct sum it rounds differently: about 1e-6 of the
output's largest value on ResNet's layers, within the engine's tolerance
(tests/test_functional_winograd.py measures it). NaN and inf reach the
outputs the direct sum gives them, through the fallback below.
"""

from __future__ import annotations

import numpy as np

from .. import config, kernels
from . import gemm, threads

_POINTS = 36  # (4 + 3 - 1)^2
_SAFE = np.float32(2.0**100)  # values up to this leave float32 a factor of 2^27 before it overflows


def winograd(x, w, bias, spec, lo=-np.inf, hi=np.inf):
    """3x3, stride 1, dilation 1, groups 1: Winograd F(4x4, 3x3), with the output clipped to [lo, hi].

    The transforms mix a tile's pixels, so a NaN or inf would reach outputs
    whose windows never hold it, and they scale values by up to 100, which
    could overflow where the direct sum does not: an input or filters with
    NaN, inf or values over ``_SAFE`` take ``gemm.gemm``.
    """
    within = kernels.pointwise.all_within
    if not (within(x.reshape(-1), _SAFE) and within(w.reshape(-1), _SAFE)):
        return gemm.gemm(x, w, bias, spec, lo, hi)
    wk = kernels.winograd
    n, c_out, ho, wo = spec.y_shape
    cin = w.shape[1]
    th, tw = -(-ho // 4), -(-wo // 4)
    xp = _padded(spec.pad(x), 4 * th + 2, 4 * tw + 2)
    y = np.empty(spec.y_shape, np.float32)
    b = bias if bias is not None else np.zeros(c_out, np.float32)
    u = np.empty((_POINTS, c_out, cin), np.float32)
    threads.run(wk.filters, w, u, tasks=c_out, work=c_out * cin * config.WINOGRAD_FILTER_COST)
    tiles = n * th * tw
    block, blocks, filters, parts = _plan(tiles, c_out)
    lo, hi = np.float32(lo), np.float32(hi)

    def worker(next_task):
        vbuf = np.empty(_POINTS * cin * block, np.float32)
        mbuf = np.empty(_POINTS * filters * block, np.float32)
        made = None
        task = next_task()
        while task is not None:
            tile_block, part = divmod(task, parts)
            t0 = tile_block * block
            count = min(block, tiles - t0)
            c0, c1 = part * filters, min(c_out, (part + 1) * filters)
            v = vbuf[:_POINTS * cin * count].reshape(_POINTS, cin, count)
            if made != tile_block:
                wk.input_tiles(xp, th, tw, t0, v, 0, cin)
                made = tile_block
            m = mbuf[:_POINTS * (c1 - c0) * count].reshape(_POINTS, c1 - c0, count)
            threads.matmul(u[:, c0:c1], v, m)
            wk.output_tiles(m, b, lo, hi, th, tw, t0, c0, y, 0, c1 - c0)
            task = next_task()

    work = n * c_out * ho * wo * cin * 9
    threads.share(worker, blocks * parts, None if work >= config.PARALLEL_MIN_WORK else 1)
    return y


def _padded(xp, rows, cols):
    """``xp`` with zeros below and right up to rows x cols (tiles past the output read them), or as is."""
    if xp.shape[2] >= rows and xp.shape[3] >= cols:
        return xp
    out = np.zeros((*xp.shape[:2], max(rows, xp.shape[2]), max(cols, xp.shape[3])), np.float32)
    out[:, :, :xp.shape[2], :xp.shape[3]] = xp
    return out


def _plan(tiles, c_out):
    """(tiles a block, blocks, filters a part, parts): blocks of ``config.WINOGRAD_BLOCK_TILES`` tiles,
    and the filters split into parts while there are too few blocks to keep every thread busy."""
    block = min(tiles, config.WINOGRAD_BLOCK_TILES)
    blocks = -(-tiles // block)
    parts = 1
    while blocks * parts < config.GEMM_MIN_TASKS_PER_THREAD * config.THREADS \
            and c_out // (2 * parts) >= config.GEMM_MIN_BLOCK_FILTERS:
        parts *= 2
    filters = -(-c_out // parts)
    return block, blocks, filters, -(-c_out // filters)
