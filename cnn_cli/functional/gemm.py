"""The matrix-product and depthwise forward paths of deep networks' layers.

Both have the signature of ``paths.py``'s paths, ``path(x, w, bias, spec) -> y``.

``gemm`` runs a convolution as matrix products, (filters x C_in/groups*kH*kW)
@ (columns of a tile of output pixels), with BLAS on one thread per task and
the tasks shared between the engine's threads. A task is one image's group,
a tile of its output rows and a block of its filters: tiles keep each
thread's columns in its own core's cache from the copy that makes them to the
product that reads them, and the filters are split into blocks only when the
batch and tiles are too few to keep every thread busy (a batch of one 7x7
map). A 1x1 convolution at stride 1 needs no columns at all: the input's
planes already are the matrix, read in place.

``depthwise`` runs one filter per channel (``kernels.depthwise``).
"""

from __future__ import annotations

import numpy as np

from .. import config, kernels
from . import threads


def gemm(x, w, bias, spec, lo=-np.inf, hi=np.inf):
    """Tiled im2col + BLAS at any stride, dilation and groups; 1x1 at stride 1 without columns.
    The output is clipped to [lo, hi] (a fused ReLU or ReLU6) as each tile gets its bias."""
    if spec.stride == (1, 1) and spec.w_shape[2] > 1 and spec.out_hw[1] >= config.GEMM_ROW_COLUMNS_MIN_WIDTH:
        return _row_columns(x, w, bias, spec, lo, hi)
    per = _images_a_tile(spec)
    if per > 1:
        return _images(x, w, bias, spec, lo, hi, per)
    if _one_small_image(spec):
        return _shared_columns(x, w, bias, spec, lo, hi)
    xp, y = spec.pad(x), np.empty(spec.y_shape, np.float32)
    (n, c_out, ho, wo), (cin_g, kh, kw), groups = y.shape, w.shape[1:], spec.groups
    cout_g = c_out // groups
    depth = cin_g * kh * kw
    pointwise = kh == kw == 1 and spec.stride == (1, 1)  # then H_out, W_out = H_p, W_p
    wmat = w.reshape(c_out, depth)
    y_flat = y.reshape(n, c_out, ho * wo)
    parallel = threads.parallel(n * c_out * ho * wo * depth)
    if pointwise and groups == 1 and not parallel:  # one product a image, on this thread: no tasks to plan
        threads.matmul(wmat, xp.reshape(n, cin_g, ho * wo), y_flat)
        if bias is not None or lo > -np.inf or hi < np.inf:  # one pass, where numpy's would take two
            kernels.conv.bias_clip(y_flat, bias if bias is not None else np.zeros(c_out, np.float32),
                                   np.float32(lo), np.float32(hi), 0, n * c_out)
        return y
    tile_rows, tiles, blocks, block = _plan(n, groups, cout_g, ho, wo, depth, parallel)

    def worker(next_task):
        buffer = None if pointwise else np.empty(depth * tile_rows * wo, np.float32)
        made = None  # the (image, group, tile) whose columns are in buffer
        task = next_task()
        while task is not None:
            b, g, tile, c0, c1 = _task(task, groups, tiles, blocks, cout_g, block)
            oh0 = tile * tile_rows
            p0, p1 = oh0 * wo, min(ho, oh0 + tile_rows) * wo
            if pointwise:
                cols = xp[b, g * cin_g:(g + 1) * cin_g].reshape(cin_g, -1)[:, p0:p1]
            else:
                cols = buffer[:depth * (p1 - p0)].reshape(depth, p1 - p0)
                if made != (b, g, tile):
                    kernels.conv.im2col_tile(xp, b, g * cin_g, kh, kw, *spec.stride, *spec.dilation, oh0, wo,
                                             cols, 0, depth)
                    made = (b, g, tile)
            out = y_flat[b, c0:c1, p0:p1]
            threads.matmul(wmat[c0:c1], cols, out)
            _finish(out[None], bias, c0, lo, hi)
            task = next_task()

    threads.share(worker, n * groups * tiles * blocks, None if parallel else 1)
    return y


def _row_columns(x, w, bias, spec, lo, hi):
    """``gemm`` at stride 1 on wide maps: one product per kernel row, on a tile's row columns.

    As ``paths.rows`` does for a whole image, a tile's outputs are computed
    in the W_p-wide layout, where kernel row i reads one shared set of
    columns (C_in/groups * kW rows) shifted by i*dh*W_p: a third of the
    copying of full columns for a 3x3 kernel. The garbage columns past W_out
    are dropped as the tile is stored, with the bias added.
    """
    xp, y = spec.pad(x), np.empty(spec.y_shape, np.float32)
    (n, c_out, ho, wo), (cin_g, kh, kw), groups = y.shape, w.shape[1:], spec.groups
    cout_g = c_out // groups
    wp = xp.shape[3]
    dh, dw = spec.dilation
    depth = cin_g * kw
    reach = (kh - 1) * dh * wp
    w_rows = [np.ascontiguousarray(w[:, :, i].reshape(c_out, depth)) for i in range(kh)]
    parallel = threads.parallel(n * c_out * ho * wo * depth * kh)
    tile_rows, tiles, blocks, block = _plan(n, groups, cout_g, ho, wp, depth, parallel)

    def worker(next_task):
        buffer = np.empty(depth * (tile_rows * wp + reach), np.float32)
        wide = np.empty(block * tile_rows * wp, np.float32)
        part = np.empty_like(wide)
        made = None
        task = next_task()
        while task is not None:
            b, g, tile, c0, c1 = _task(task, groups, tiles, blocks, cout_g, block)
            oh0 = tile * tile_rows
            rows = min(ho, oh0 + tile_rows) - oh0
            length = rows * wp
            cols = buffer[:depth * (length + reach)].reshape(depth, length + reach)
            if made != (b, g, tile):
                kernels.conv.im2col_rows_tile(xp, b, g * cin_g, kw, dw, oh0 * wp, cols, 0, depth)
                made = (b, g, tile)
            out = wide[:(c1 - c0) * length].reshape(c1 - c0, length)
            tmp = part[:(c1 - c0) * length].reshape(c1 - c0, length)
            threads.matmul(w_rows[0][c0:c1], cols[:, :length], out)
            for i in range(1, kh):
                threads.matmul(w_rows[i][c0:c1], cols[:, i * dh * wp:i * dh * wp + length], tmp)
                out += tmp
            dst = y[b, c0:c1, oh0:oh0 + rows]
            dst[...] = out.reshape(c1 - c0, rows, wp)[:, :, :wo]
            _finish(dst.reshape(1, c1 - c0, rows * wo), bias, c0, lo, hi)
            task = next_task()

    threads.share(worker, n * groups * tiles * blocks, None if parallel else 1)
    return y


def _one_small_image(spec):
    """Whether ``gemm`` takes ``_shared_columns``: one image of a small map (under
    ``config.GEMM_IMAGES_MAX_PIXELS`` pixels), ungrouped, with work enough to split."""
    (n, c_out, ho, wo), w_shape = spec.y_shape, spec.w_shape
    return n == 1 and spec.groups == 1 and ho * wo < config.GEMM_IMAGES_MAX_PIXELS \
        and threads.parallel(c_out * ho * wo * w_shape[1] * w_shape[2] * w_shape[3])


def _shared_columns(x, w, bias, spec, lo, hi):
    """``gemm`` on one image of a small map (ResNet's 14x14 and 7x7 layers at batch 1): its columns
    are made once, and the threads split the product by filters.

    Tiles of output rows would be narrow products (BLAS ran 256 x 2304 @ 2304 x 196 in 2.6 ms on
    one thread, and two threads each taking half the filters in 1.5), and each thread taking a
    block of filters of a whole-image tile made the same columns again.
    """
    xp, y = spec.pad(x), np.empty(spec.y_shape, np.float32)
    (_, c_out, ho, wo), (cin, kh, kw) = y.shape, w.shape[1:]
    depth = cin * kh * kw
    if kh == kw == 1 and spec.stride == (1, 1):
        cols = xp.reshape(depth, ho * wo)
    else:
        cols = np.empty((depth, ho * wo), np.float32)
        kernels.conv.im2col_images(xp, 0, 0, kh, kw, *spec.stride, *spec.dilation, ho, wo, cols, 0, depth)
    wmat, out = w.reshape(c_out, depth), y.reshape(c_out, ho * wo)

    def filters(c0, c1):
        threads.matmul(wmat[c0:c1], cols, out[c0:c1])
        _finish(out[None, c0:c1], bias, c0, lo, hi)

    threads.split(filters, c_out, config.THREADS)
    return y


def _images_a_tile(spec):
    """Whole images a tile of ``_images`` holds, or 1 (tiles of rows within an image, as ``gemm``): a batch of
    maps under ``config.GEMM_IMAGES_MAX_PIXELS`` pixels goes ``config.GEMM_IMAGES_COLUMNS`` columns a tile,
    but leaves a tile to each thread."""
    n, hw = spec.x_shape[0], spec.out_hw[0] * spec.out_hw[1]
    if n < 2 or hw >= config.GEMM_IMAGES_MAX_PIXELS:
        return 1
    return max(1, min(-(-config.GEMM_IMAGES_COLUMNS // hw), -(-n // config.THREADS)))


def _images(x, w, bias, spec, lo, hi, per):
    """``gemm`` on a batch of small maps: ``per`` images' columns side by side make one product.

    One image's columns of a 7x7 or 14x14 map are 49 or 196 wide, where
    BLAS (one thread) ran 512-filter products at 50-76 GFLOP/s, against
    about 80 from 392 columns. The product lands in a buffer, and each
    image's part is stored with the bias and the clip.
    """
    xp, y = spec.pad(x), np.empty(spec.y_shape, np.float32)
    (n, c_out, ho, wo), (cin_g, kh, kw), groups = y.shape, w.shape[1:], spec.groups
    cout_g, plane = c_out // groups, ho * wo
    depth = cin_g * kh * kw
    pointwise = kh == kw == 1 and spec.stride == (1, 1)
    wmat = w.reshape(c_out, depth)
    y_flat = y.reshape(n, c_out, plane)
    parallel = threads.parallel(n * c_out * plane * depth)
    tiles = -(-n // per)
    blocks, block = _filter_blocks(tiles * groups, cout_g, parallel)

    def worker(next_task):
        columns = np.empty(depth * per * plane, np.float32)
        products = np.empty(block * per * plane, np.float32)
        made = None  # the (tile, group) whose columns are in ``columns``
        task = next_task()
        while task is not None:
            tile, g, _, c0, c1 = _task(task, groups, 1, blocks, cout_g, block)  # a tile of images is an "image"
            b0 = tile * per
            count = min(per, n - b0)
            cols = columns[:depth * count * plane].reshape(depth, count * plane)
            if made != (tile, g):
                if pointwise:
                    group = xp[b0:b0 + count, g * cin_g:(g + 1) * cin_g].reshape(count, cin_g, plane)
                    cols.reshape(depth, count, plane)[...] = group.transpose(1, 0, 2)
                else:
                    kernels.conv.im2col_images(xp, b0, g * cin_g, kh, kw, *spec.stride, *spec.dilation, ho, wo,
                                               cols, 0, depth)
                made = (tile, g)
            out = products[:(c1 - c0) * count * plane].reshape(c1 - c0, count * plane)
            threads.matmul(wmat[c0:c1], cols, out)
            dst = y_flat[b0:b0 + count, c0:c1]
            dst[...] = out.reshape(c1 - c0, count, plane).transpose(1, 0, 2)
            _finish(dst, bias, c0, lo, hi)
            task = next_task()

    threads.share(worker, tiles * groups * blocks, None if parallel else 1)
    return y


def _finish(out, bias, c0, lo, hi):
    """out[n, c] += bias[c0 + c] (None: no bias), then clipped to [lo, hi], in place, in one pass while the
    tile is in cache (``kernels.conv.bias_clip``; numpy's add then its NaN-aware maximum took 2 passes
    and 5 times as long). ``out`` is (images, filters, pixels)."""
    count = out.shape[1]
    if bias is None and lo == -np.inf and hi == np.inf:
        return
    b = np.zeros(count, np.float32) if bias is None else bias[c0:c0 + count]
    kernels.conv.bias_clip(out, b, np.float32(lo), np.float32(hi), 0, out.shape[0] * count)


def clip_in_place(out, lo, hi):
    """``out`` clipped to [lo, hi] in place (a ReLU, lo=0, as one np.maximum), NaN staying NaN; returns it."""
    if hi < np.inf:
        np.clip(out, np.float32(lo), np.float32(hi), out=out)
    elif lo > -np.inf:
        np.maximum(out, np.float32(lo), out=out)
    return out


def _task(task, groups, tiles, blocks, cout_g, block):
    """Task number -> (image, group, tile, first filter, end filter) of the tasks ``_plan`` made."""
    rest, blk = divmod(task, blocks)
    rest, tile = divmod(rest, tiles)
    b, g = divmod(rest, groups)
    c0 = g * cout_g + blk * block
    return b, g, tile, c0, min((g + 1) * cout_g, c0 + block)


def _plan(n, groups, cout_g, ho, wo, depth, parallel):
    """(rows a tile, tiles an image, filter blocks a group, filters a block) for ``gemm``;
    filters are split only for a ``parallel`` call."""
    fit = config.GEMM_TILE_BYTES // (4 * depth * wo)
    tile_rows = int(max(1, min(ho, max(fit, -(-config.GEMM_TILE_MIN_PIXELS // wo)))))
    tiles = -(-ho // tile_rows)
    return (tile_rows, tiles, *_filter_blocks(n * groups * tiles, cout_g, parallel))


def _filter_blocks(tasks, cout_g, parallel):
    """(blocks a group, filters a block): a ``parallel`` call's ``tasks`` (tiles of every image and group)
    split by filters too, until every thread has ``config.GEMM_MIN_TASKS_PER_THREAD``."""
    blocks = 1
    while parallel and tasks * blocks < config.GEMM_MIN_TASKS_PER_THREAD * config.THREADS \
            and cout_g // (2 * blocks) >= config.GEMM_MIN_BLOCK_FILTERS:
        blocks *= 2
    return blocks, -(-cout_g // blocks)


def depthwise(x, w, bias, spec, lo=-np.inf, hi=np.inf):
    """One filter per channel (groups = C_in = C_out) at any stride and dilation: ``kernels.depthwise``,
    with the output clipped to [lo, hi]. Zero padding is done plane by plane in the kernel."""
    top, left = spec.pads[0], spec.pads[2]
    if spec.padding_mode != "zeros":
        x, top, left = spec.pad(x), 0, 0
    y = np.empty(spec.y_shape, np.float32)
    b = bias if bias is not None else np.zeros(w.shape[0], np.float32)
    threads.run(kernels.depthwise.conv_depthwise, x, w, b, top, left, *spec.padded, *spec.stride, *spec.dilation,
                np.float32(lo), np.float32(hi), y, tasks=y.shape[0] * y.shape[1],
                work=y.size * w[0].size * config.DEPTHWISE_TAP_WORK)
    return y
