"""The Winograd forward path: 3x3 convolutions at stride 1, as 36 matrix products on 4x4 output tiles.

``winograd(x, w, bias, spec)`` has the signature of ``paths.py``'s paths and
takes ``lo``/``hi`` too: the output is clipped to [lo, hi] as it is stored
(a ReLU is lo=0, a ReLU6 lo=0 and hi=6), so a conv and its activation are one
pass. It runs groups=1 and dilation 1 (``dispatch`` only takes it then).

The filters are transformed on every call (``kernels.winograd.filters``,
C_out x C_in small products): no cache to go stale when a weight is changed
in place. The tiles are then shared between threads in blocks: a task
transforms a block's input tiles (every channel), runs the 36 products with
every filter, and transforms the products back into the output, with the
bias and the clip, while they are in its core's cache. A map of one block
(49 tiles at 28x28) is split by filters instead, in two steps: the threads
transform the input tiles once, by channels, then each transforms its part
of the filters and runs their products and outputs. No input tile or
filter is transformed twice, whichever thread takes which part.

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
    n, c_out, ho, wo = spec.y_shape
    cin = w.shape[1]
    th, tw = -(-ho // 4), -(-wo // 4)
    xp = _padded(spec.pad(x), 4 * th + 2, 4 * tw + 2)
    y = np.empty(spec.y_shape, np.float32)
    b = bias if bias is not None else np.zeros(c_out, np.float32)
    tiles = n * th * tw
    # One way on a thread that runs one part of a split (a chunk of a batch, nn.Network.forward): its
    # share of the call then runs there alone, and blocks cut for two threads only lose (2 x 128 ->
    # 128 at 28x28: 3.25 ms against 3.02 on one thread).
    alone = not threads.parallel(n * c_out * ho * wo * cin * 9)
    ways = 1 if alone else config.THREADS
    run = _by_filters if ways > 1 and tiles <= config.WINOGRAD_BLOCK_TILES else _by_tiles
    run(xp, np.ascontiguousarray(w), b, np.float32(lo), np.float32(hi), th, tw, tiles, y, ways)
    return y


def _by_tiles(xp, w, b, lo, hi, th, tw, tiles, y, ways):
    """Transform the filters, then share blocks of tiles between ``ways`` threads: each block's input
    transform, its products with every filter and its output transform."""
    wk = kernels.winograd
    c_out, cin = w.shape[:2]
    u = np.empty((_POINTS, c_out, cin), np.float32)
    threads.run(wk.filters, w, u, tasks=c_out, work=c_out * cin * config.WINOGRAD_FILTER_COST)
    block = _block(tiles, ways)

    def worker(next_block):
        vbuf = np.empty(_POINTS * cin * block, np.float32)
        mbuf = np.empty(_POINTS * c_out * block, np.float32)
        task = next_block()
        while task is not None:
            t0 = task * block
            count = min(block, tiles - t0)
            v = vbuf[:_POINTS * cin * count].reshape(_POINTS, cin, count)
            wk.input_tiles(xp, th, tw, t0, v, 0, cin)
            m = mbuf[:_POINTS * c_out * count].reshape(_POINTS, c_out, count)
            threads.matmul(u, v, m)
            wk.output_tiles(m, b, lo, hi, th, tw, t0, 0, y, 0, c_out)
            task = next_block()

    threads.share(worker, -(-tiles // block), ways)


def _block(tiles, ways):
    """Tiles a block: ``config.WINOGRAD_BLOCK_TILES`` on one thread; split between threads, the fewest
    blocks of at most that many that give each thread an equal share, rounded down to a multiple of 8.

    A share of 98 tiles (64 channels at 56x56, batch 1) is two blocks of 48
    and a last one of 4, where blocks of 64 gave one thread 128 tiles and
    the other 68. Blocks of 49 (the share's exact half) lost to 48, whose
    products fill the vectors of the matrix product: 7.9 us a tile against
    7.5 for 64 channels, 22.4 against 21.9 for 128.
    """
    if ways == 1:
        return min(tiles, config.WINOGRAD_BLOCK_TILES)
    share = -(-tiles // ways)
    block = -(-share // -(-share // config.WINOGRAD_BLOCK_TILES))
    return block - block % 8 if block > 8 else block


def _by_filters(xp, w, b, lo, hi, th, tw, tiles, y, ways):
    """One block of tiles between ``ways`` threads: the input transform of every tile, shared by
    channels; then the filters in ``ways`` parts, each part's transform, products and output transform.

    Blocks of half the tiles would run the products on half as many
    columns (25 at 28x28), which took 1.55 ms of one core for 128 -> 128
    channels where halves of the filters took 1.37 and the whole product
    1.30; parts of the filters in blocks of every tile, as before, had each
    thread transform the same input tiles.
    """
    wk = kernels.winograd
    c_out, cin = w.shape[:2]
    u = np.empty((_POINTS, c_out, cin), np.float32)
    v = np.empty((_POINTS, cin, tiles), np.float32)
    chunks = min(cin, 2 * ways)  # a thread held up by other work takes fewer

    def inputs(i):
        wk.input_tiles(xp, th, tw, 0, v, cin * i // chunks, cin * (i + 1) // chunks)

    parts = min(ways, c_out)

    def part(i):
        c0, c1 = c_out * i // parts, c_out * (i + 1) // parts
        wk.filters(w, u, c0, c1)
        m = np.empty((_POINTS, c1 - c0, tiles), np.float32)
        threads.matmul(u[:, c0:c1], v, m)
        wk.output_tiles(m, b, lo, hi, th, tw, 0, c0, y, 0, c1 - c0)

    threads.share(lambda next_item: _each(next_item, inputs), chunks, ways)
    threads.share(lambda next_item: _each(next_item, part), parts, ways)


def _each(next_item, call):
    """``call(item)`` for each item ``next_item`` hands out, until it returns None (``threads.share``)."""
    item = next_item()
    while item is not None:
        call(item)
        item = next_item()


def _padded(xp, rows, cols):
    """``xp`` with zeros below and right up to rows x cols (tiles past the output read them), or as is."""
    if xp.shape[2] >= rows and xp.shape[3] >= cols:
        return xp
    out = np.zeros((*xp.shape[:2], max(rows, xp.shape[2]), max(cols, xp.shape[3])), np.float32)
    out[:, :, :xp.shape[2], :xp.shape[3]] = xp
    return out
