"""Convolution kernels (cross-correlation, as in every deep-learning framework).

All kernels work on an input ``xp`` that is already padded, so they only know
"valid" correlation with stride and dilation; padding modes live in
``cnn_cli.functional.specs``. Notation: x is (N, C_in, H, W), w is
(C_out, C_in/groups, kH, kW), y is (N, C_out, H_out, W_out).
"""

import numpy as np
from ._jit import helper, kernel
from .pool import max_pool_2x2_row


#: Output pixels per task of ``conv_direct``: one tile's accumulators for 16
#: filters stay in L1 (16 x 256 x 4 bytes = 16 KiB).
ROW_TILE = 256

#: Pixels per pass of ``conv3_stacked``: whole rows, then rounded up to whole
#: vectors of 8. A pass of 510 pixels (15 rows of 34 at 32x32, 51 of 10 at
#: 8x8) had ended in a scalar loop over 6, as slow as 12 of its 63 vector
#: steps; rounded up, it took 0.69x the time at 32x32 and 0.77x at 8x8 (one
#: thread, 32 images, interleaved medians). The rounding also starts each
#: filter's sums on a 32-byte boundary. Passes of 768 rather than 512 pay
#: for each short loop's set-up over more steps: 0.54 against 0.59 of the
#: old kernel's time for 16 -> 16 filters at 32x32, 0.69 against 0.78 for
#: 64 -> 64 at 8x8; 640 to 1536 were within noise of 768.
STACKED_PASS = 768

#: Pixels per tile of ``conv3_grad_weight_stacked``, summed in float32 (the
#: tiles are then summed in float64, so large images keep their precision).
GRAD_TILE = 4096


@kernel
def conv_direct(xp, w, bias, sh, sw, dh, dw, groups, y, first, last):
    """y[n,co,oh,ow] = bias[co] + sum_{ci,i,j} w[co,ci,i,j] * xp[n, g*Cg+ci, oh*sh+i*dh, ow*sw+j*dw].

    Task t is a tile of an output row, t = ((n*groups + g)*H_out + oh)*tiles + tile:
    it computes the tile for every filter of the group, so each input row is
    read once for all filters. Sums go to a task-local buffer, which LLVM
    knows aliases nothing, so the innermost loop along the row is vectorised.
    """
    c_out, cin_g, kh, kw = w.shape
    ho, wo = y.shape[2], y.shape[3]
    cout_g = c_out // groups
    tiles = (wo + ROW_TILE - 1) // ROW_TILE
    for task in range(first, last):
        t = task % tiles
        oh = (task // tiles) % ho
        g = (task // (tiles * ho)) % groups
        n = task // (tiles * ho * groups)
        o0 = t * ROW_TILE
        width = min(ROW_TILE, wo - o0)
        acc = np.empty((cout_g, width), np.float32)
        for co in range(cout_g):
            acc[co, :] = bias[g * cout_g + co]
        for ci in range(cin_g):
            c = g * cin_g + ci
            for i in range(kh):
                xrow = xp[n, c, oh * sh + i * dh]
                for j in range(kw):
                    start = j * dw + o0 * sw
                    for co in range(cout_g):
                        wv = w[g * cout_g + co, ci, i, j]
                        a = acc[co]
                        if sw == 1:
                            xs = xrow[start:start + width]
                            for k in range(width):
                                a[k] += wv * xs[k]
                        else:
                            for k in range(width):
                                a[k] += wv * xrow[start + k * sw]
        for co in range(cout_g):
            y[n, g * cout_g + co, oh, o0:o0 + width] = acc[co]


@kernel
def conv_direct_stacked(xs, w, bias, dh, dw, groups, rows, y, argmax, first, last):
    """``conv_direct`` for stride 1, on the batch stacked into one tall plane per channel.

    ``xs`` is the padded input as (C_in, N, H_p, W_p): channel c of every
    image, one under the other, is one flat run of N*H_p*W_p pixels. With
    stride 1, output pixel k of that run (image k // (H_p*W_p), row and column
    within it) reads the run at k + i*dh*W_p + j*dw, so a tile of ``rows``
    whole padded rows is one long vectorised pass per tap. Narrow maps and
    small images would otherwise make short inner loops whose set-up and
    scalar tails cost more than their work. Outputs in the padded columns
    and rows (k % W_p >= W_out, or a row past H_out within its image) are
    garbage, computed and dropped.
    Task t is tile t % tiles of group t // tiles.

    With an ``argmax`` array, ``y`` is the output max-pooled 2x2 instead (see
    ``_store_tile``); ``rows`` and H_p must then be even.
    """
    c_out, cin_g, kh, kw = w.shape
    n_img, hp, wp = xs.shape[1], xs.shape[2], xs.shape[3]
    total = n_img * hp * wp
    cout_g = c_out // groups
    tiles = (n_img * hp + rows - 1) // rows
    acc = np.empty((cout_g, rows * wp), np.float32)
    for task in range(first, last):
        g = task // tiles
        q0 = (task % tiles) * rows  # first padded row of the tile, counted down the stack
        _fill_bias(acc, bias, g * cout_g, cout_g)
        for ci in range(cin_g):
            run = xs[g * cin_g + ci].reshape(total)
            for i in range(kh):
                for j in range(kw):
                    off = q0 * wp + i * dh * wp + j * dw
                    span = min(rows * wp, total - off)  # outputs past this are garbage
                    seg = run[off:off + span]
                    for co in range(cout_g):
                        wv = w[g * cout_g + co, ci, i, j]
                        a = acc[co]
                        for k in range(span):
                            a[k] += wv * seg[k]
        _store_tile(acc, y, argmax, q0, rows, hp, wp, hp - dh * (kh - 1), wp - dw * (kw - 1), g * cout_g, cout_g)


@kernel
def conv3_stacked(xs, wq, bias, dh, dw, groups, rows, y, argmax, first, last):
    """``conv_direct_stacked`` for kernels 3 wide, blocked over filters.

    The streaming loop above loads and stores a sum for every tap of every
    filter, and those stores bound it. Here one pass over a kernel row
    reads the three shifted runs once and updates four filters' sums with
    all three taps: twelve multiply-adds per sum stored, so the loop runs at
    two to three times the speed. ``wq`` is the weight as (groups,
    C_out/groups rounded up to 4, C_in/groups, kH, 3), zero past the real
    filters, whose extra sums are computed and never stored. ``argmax`` as
    in ``conv_direct_stacked``.

    The tasks' tiles of ``rows`` rows only split the work between threads:
    the rows of a call's tasks (within a group) are worked in passes of
    about STACKED_PASS pixels, and each pass runs over whole vectors of 8
    (the few sums past its last row are garbage, never stored). See
    STACKED_PASS for what each of these bought. With pooling, passes start
    on even rows and hold whole pairs, but for an image's last odd row.

    Passes over all nine taps of four filters at once (each sum loaded and
    stored once per nine taps instead of three) ran 1.2-1.5x slower: 36
    weights do not fit AVX2's 16 vector registers, so most multiply-adds
    read their weight from the stack, and the loop is bound by loads. Two
    or three filters by nine taps, and eight by three, were slower too.
    """
    cout_pad, kh = wq.shape[1], wq.shape[3]
    n_img, hp, wp = xs.shape[1], xs.shape[2], xs.shape[3]
    cout_g = y.shape[1] // groups
    tiles = (n_img * hp + rows - 1) // rows
    ho = hp - dh * (kh - 1)
    per_pass = max(rows, STACKED_PASS // wp)
    if argmax is not None:  # whole pairs of rows (rows is even then)
        per_pass -= per_pass % 2
    # Images of at least half a pass are worked one at a time, in passes of
    # about per_pass rows that skip their garbage rows (2 of 34 at 32x32):
    # 0.66 against 0.71 of the old kernel's time for 16 -> 16 filters at
    # 32x32, 0.65 against 0.69 at 28x28. At 16x16 (288 pixels an image) the
    # shorter loops made it 8% slower.
    by_image = 2 * ho * wp >= STACKED_PASS
    most = per_pass + per_pass // 2 + 2 if by_image else per_pass
    acc = np.zeros((cout_pad, (most * wp + 7) // 8 * 8), np.float32)
    task = first
    while task < last:
        g = task // tiles
        end = min(last, (g + 1) * tiles)  # this group's tasks in the range
        top = min((end - g * tiles) * rows, n_img * hp)
        q0 = (task - g * tiles) * rows
        while q0 < top:
            height = min(per_pass, top - q0)
            if by_image:
                oh = q0 % hp
                if oh >= ho:
                    q0 += hp - oh
                    continue
                left = min(ho - oh, top - q0)  # the image's valid rows left in the range
                parts = max(1, (left + per_pass // 2) // per_pass)
                height = (left + parts - 1) // parts
                if argmax is not None:
                    height = min(left, height + height % 2)
            _fill_bias(acc, bias, g * cout_g, cout_g)
            _conv3_pass(xs, wq, g, q0 * wp, (height * wp + 7) // 8 * 8, dh, dw, acc)
            _store_tile(acc, y, argmax, q0, height, hp, wp, ho, wp - 2 * dw, g * cout_g, cout_g)
            q0 += height
        task = end


@helper
def _conv3_pass(xs, wq, g, start, length, dh, dw, acc):
    """acc[co, k] += the 3-wide correlation of group g at stacked pixel start + k, for k < length (see
    ``conv3_stacked``); fewer where the stack ends."""
    cout_pad, cin_g, kh = wq.shape[1], wq.shape[2], wq.shape[3]
    total = xs.shape[1] * xs.shape[2] * xs.shape[3]
    wp = xs.shape[3]
    for cb in range(0, cout_pad, 4):
        a0, a1, a2, a3 = acc[cb], acc[cb + 1], acc[cb + 2], acc[cb + 3]
        for ci in range(cin_g):
            run = xs[g * cin_g + ci].reshape(total)
            for i in range(kh):
                off = start + i * dh * wp
                span = min(length, total - off - 2 * dw)
                s0 = run[off:off + span]
                s1 = run[off + dw:off + dw + span]
                s2 = run[off + 2 * dw:off + 2 * dw + span]
                wb = wq[g, cb:cb + 4, ci, i]
                w00, w01, w02 = wb[0, 0], wb[0, 1], wb[0, 2]
                w10, w11, w12 = wb[1, 0], wb[1, 1], wb[1, 2]
                w20, w21, w22 = wb[2, 0], wb[2, 1], wb[2, 2]
                w30, w31, w32 = wb[3, 0], wb[3, 1], wb[3, 2]
                for k in range(span):
                    x0, x1, x2 = s0[k], s1[k], s2[k]
                    a0[k] += w00 * x0 + w01 * x1 + w02 * x2
                    a1[k] += w10 * x0 + w11 * x1 + w12 * x2
                    a2[k] += w20 * x0 + w21 * x1 + w22 * x2
                    a3[k] += w30 * x0 + w31 * x1 + w32 * x2


@kernel
def conv3_grad_weight_stacked(xs, gys, dh, dw, groups, rows, gw, first, last):
    """gw[co, ci, i, j] = sum_k gys[co', k] * xs[c, k + i*dh*W_p + j*dw] for kernels 3 wide at stride 1.

    Both are stacked as in ``conv_direct_stacked``: ``xs`` (C_in, N, H_p, W_p)
    and grad_y ``gys`` (groups * C_out/groups rounded up to even, N, H_p, W_p),
    zero at the garbage positions and for the filter past C_out/groups. One
    pass over a tile of ``rows`` padded rows makes six dot products (two
    filters x three taps of a kernel row) in registers, with no stores; more
    would spill registers. Each tile is summed in float32 and the tiles in
    float64, so millions of pixels do not lose precision. Task t is the pair
    of filters (2t, 2t+1) of the padded layout, over all groups.
    """
    c_out, cin_g, kh = gw.shape[0], gw.shape[1], gw.shape[2]
    cout_g = c_out // groups
    cout_pad = gys.shape[0] // groups
    wp = gys.shape[3]
    total = gys.shape[1] * gys.shape[2] * wp
    sums = np.empty((2, cin_g, kh, 3), np.float64)
    for task in range(first, last):
        co = task * 2  # first filter of the pair in the padded layout
        g0 = gys[co].reshape(total)
        g1 = gys[co + 1].reshape(total)
        sums[:] = 0.0
        for k0 in range(0, total, rows * wp):
            for ci in range(cin_g):
                run = xs[co // cout_pad * cin_g + ci].reshape(total)
                for i in range(kh):
                    off = i * dh * wp
                    # Past total - off - 2*dw, gys is zero (garbage positions) and xs would run out.
                    k1 = max(k0, min(k0 + rows * wp, total - off - 2 * dw))
                    a, b = g0[k0:k1], g1[k0:k1]
                    x0 = run[off + k0:off + k1]
                    x1 = run[off + dw + k0:off + dw + k1]
                    x2 = run[off + 2 * dw + k0:off + 2 * dw + k1]
                    s00 = s01 = s02 = s10 = s11 = s12 = np.float32(0.0)
                    for k in range(k1 - k0):
                        s00 += a[k] * x0[k]
                        s01 += a[k] * x1[k]
                        s02 += a[k] * x2[k]
                        s10 += b[k] * x0[k]
                        s11 += b[k] * x1[k]
                        s12 += b[k] * x2[k]
                    sums[0, ci, i, 0] += s00
                    sums[0, ci, i, 1] += s01
                    sums[0, ci, i, 2] += s02
                    sums[1, ci, i, 0] += s10
                    sums[1, ci, i, 1] += s11
                    sums[1, ci, i, 2] += s12
        for p in range(2):
            f = (co + p) % cout_pad
            if f < cout_g:
                gw[(co + p) // cout_pad * cout_g + f] = sums[p]


@kernel
def bias_clip(y, bias, lo, hi, first, last):
    """y[n, c, :] = clip(y[n, c, :] + bias[c], lo, hi) in one pass, comparing (NaN stays NaN); y is
    (N, C, pixels) and task t is the plane (n, c) = divmod(t, C)."""
    channels = y.shape[1]
    for task in range(first, last):
        row = y[task // channels, task % channels]
        b = bias[task % channels]
        for k in range(row.shape[0]):
            row[k] = clipped(row[k] + b, lo, hi)


@helper
def clipped(value, lo, hi):
    """``value`` clipped to [lo, hi] by comparisons, so that NaN stays NaN (a fused ReLU or ReLU6 as a
    result is stored; min and max would turn NaN into a bound)."""
    if value < lo:  # noqa: PLR1730 (comparisons, not min/max: NaN stays NaN)
        value = lo
    if value > hi:  # noqa: PLR1730
        value = hi
    return value


@helper
def store_clipped(dst, sums, lo, hi):
    """dst = sums clipped to [lo, hi] by comparisons (NaN stays NaN)."""
    for k in range(dst.shape[0]):
        dst[k] = clipped(sums[k], lo, hi)


@helper
def _fill_bias(acc, bias, c0, count):
    """Start the sums of filters c0 .. c0+count-1 at their bias."""
    for co in range(count):
        acc[co, :] = bias[c0 + co]


@helper
def _store_tile(acc, y, argmax, q0, rows, hp, wp, ho, wo, c0, count):
    """Store a stacked tile's sums (``rows`` rows W_p long, from stacked row q0) for filters c0 .. c0+count-1.

    Without ``argmax``, they go to y[:, c0:c0+count], garbage dropped. With
    it, each 2x2 block of the H_out x W_out output goes through max pooling
    (floor mode, ``kernels.pool.max_pool_2x2_row``) straight from the tile,
    while it is in cache: ``y`` gets the winner and ``argmax`` its index
    oh*W_out + ow in the unpooled plane, which is never written. Each pair of
    rows (oh, oh+1) must lie in one tile: q0 and H_p even, the tile an even
    number of rows.
    """
    n_img = y.shape[0]
    height = min(rows, n_img * hp - q0)
    if argmax is None:
        for r in range(height):
            n = (q0 + r) // hp
            oh = (q0 + r) % hp
            if oh < ho:
                for co in range(count):
                    # A loop, not y[n, c, oh, :] = acc[co, a:b]: that general copy of
                    # 8-32 pixels cost up to a tenth of conv3_stacked's time.
                    src, dst = acc[co, r * wp:r * wp + wo], y[n, c0 + co, oh]
                    for k in range(wo):
                        dst[k] = src[k]
        return
    for r in range(0, height, 2):
        n = (q0 + r) // hp
        oh = (q0 + r) % hp  # even
        if oh + 1 < ho:
            for co in range(count):
                max_pool_2x2_row(acc[co, r * wp:(r + 2) * wp], wp, 2, y[n, c0 + co, oh // 2],
                                 argmax[n, c0 + co, oh // 2], oh * wo, wo)


@helper
def _column_row(task, depth, kh, kw):
    """Task t of an im2col kernel: image b, row r of its columns, and r's (ci, i, j)."""
    b, r = task // depth, task % depth
    return b, r, r // (kh * kw), (r // kw) % kh, r % kw


@kernel
def im2col(xp, n0, c0, kh, kw, sh, sw, dh, dw, ho, wo, col, first, last):
    """col[b, (ci*kH + i)*kW + j, oh*W_out + ow] = xp[n0+b, c0+ci, oh*sh+i*dh, ow*sw+j*dw].

    Lays out every receptive field as a column, so a convolution becomes one
    matrix product (filters x depth) @ (depth x pixels) that BLAS runs near peak.
    Task t fills row t % depth for image t // depth.
    """
    depth = col.shape[1]
    for task in range(first, last):
        b, r, ci, i, j = _column_row(task, depth, kh, kw)
        for oh in range(ho):
            xrow = xp[n0 + b, c0 + ci, oh * sh + i * dh]
            dst = col[b, r, oh * wo:(oh + 1) * wo]
            off = j * dw
            for ow in range(wo):
                dst[ow] = xrow[off + ow * sw]


@kernel
def im2col_rows(xp, n0, c0, kw, dw, col, first, last):
    """Columns for one kernel row, stride 1: col[b, ci*kW + j, k] = plane[k + j*dw], zero past the plane's end.

    ``plane`` is xp[n0+b, c0+ci] flattened (H_p*W_p). With stride 1, output
    pixel k of the W_p-wide layout (row k // W_p, column k % W_p) reads the
    plane at k + i*dh*W_p + j*dw, so kernel row i sees these columns shifted
    by i*dh*W_p: every kernel row shares one matrix, kH times smaller than
    the full im2col, and each of its rows is one contiguous copy. Columns
    with k % W_p >= W_out are garbage for the caller to drop (or to multiply
    by zeros). Task t fills row t % depth for image t // depth.
    """
    depth, length = col.shape[1], col.shape[2]
    hp, wp = xp.shape[2], xp.shape[3]
    for task in range(first, last):
        b, r = task // depth, task % depth
        plane = xp[n0 + b, c0 + r // kw].reshape(hp * wp)
        off = (r % kw) * dw
        span = min(length, hp * wp - off)
        col[b, r, :span] = plane[off:off + span]
        col[b, r, span:] = 0.0


@kernel
def conv_grad_weight_small(xp, gy_wide, dh, dw, groups, gw, first, last):
    """``conv_grad_weight_direct`` for stride 1 and narrow maps; task t is the pair (co, ci) = divmod(t, C_in/groups).

    ``gy_wide`` is grad_y laid out Wp wide with zeros past each row's end
    (see ``im2col_rows``), so every tap is one long dot product per image.
    """
    n_img = xp.shape[0]
    c_out, cin_g, kh, kw = gw.shape
    hp, wp = xp.shape[2], xp.shape[3]
    ho = gy_wide.shape[2]
    cout_g = c_out // groups
    span = ho * wp - (kw - 1) * dw  # the columns cut off are zeros in gy_wide
    for task in range(first, last):
        co = task // cin_g
        ci = task % cin_g
        c = (co // cout_g) * cin_g + ci
        for i in range(kh):
            for j in range(kw):
                off = i * dh * wp + j * dw
                total = 0.0
                for n in range(n_img):
                    plane = xp[n, c].reshape(hp * wp)
                    grow = gy_wide[n, co].reshape(ho * wp)
                    s = np.float32(0.0)
                    for k in range(span):
                        s += grow[k] * plane[off + k]
                    total += s
                gw[co, ci, i, j] = total


@kernel
def conv_grad_weight_direct(xp, gy, sh, sw, dh, dw, groups, gw, first, last):
    """gw[co,ci,i,j] = sum_{n,oh,ow} gy[n,co,oh,ow] * xp[n, g*Cg+ci, oh*sh+i*dh, ow*sw+j*dw].

    Task t is the pair (co, ci) = divmod(t, C_in/groups), so each task owns its
    own slice of ``gw``. Row dot products run in float32 (short, vectorised); the sum of
    rows is kept in float64 so millions of pixels do not lose precision.
    """
    n_img = xp.shape[0]
    c_out, cin_g, kh, kw = gw.shape
    ho, wo = gy.shape[2], gy.shape[3]
    cout_g = c_out // groups
    for task in range(first, last):
        co = task // cin_g
        ci = task % cin_g
        c = (co // cout_g) * cin_g + ci
        acc = np.zeros((kh, kw), np.float64)
        for n in range(n_img):
            for oh in range(ho):
                grow = gy[n, co, oh]
                for i in range(kh):
                    xrow = xp[n, c, oh * sh + i * dh]
                    for j in range(kw):
                        off = j * dw
                        s = np.float32(0.0)
                        for ow in range(wo):
                            s += grow[ow] * xrow[off + ow * sw]
                        acc[i, j] += s
        for i in range(kh):
            for j in range(kw):
                gw[co, ci, i, j] = acc[i, j]


@kernel
def im2col_tile(xp, n, c0, kh, kw, sh, sw, dh, dw, oh0, wo, col, first, last):
    """col[(ci*kH + i)*kW + j, (oh - oh0)*W_out + ow] = xp[n, c0+ci, oh*sh+i*dh, ow*sw+j*dw].

    The columns of one image's output rows oh0 .. oh0 + col.shape[1] // W_out - 1:
    a tile small enough to stay in cache between this copy and the matrix
    product that reads it (see ``cnn_cli.functional.gemm``). Task t fills row t.
    """
    rows = col.shape[1] // wo
    for r in range(first, last):
        ci, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        _column_rows(xp, n, c0 + ci, i * dh, j * dw, sh, sw, oh0, rows, wo, col[r])


@kernel
def im2col_images(xp, n0, c0, kh, kw, sh, sw, dh, dw, ho, wo, col, first, last):
    """The columns of whole images n0, n0+1, ... side by side: col[(ci*kH + i)*kW + j, (n - n0)*H_out*W_out
    + oh*W_out + ow] = xp[n, c0+ci, oh*sh+i*dh, ow*sw+j*dw], as many images as col holds. One product then
    covers a batch of small maps (``gemm._images``). Task t fills row t."""
    plane = ho * wo
    for r in range(first, last):
        ci, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        for b in range(col.shape[1] // plane):
            _column_rows(xp, n0 + b, c0 + ci, i * dh, j * dw, sh, sw, 0, ho, wo, col[r, b * plane:(b + 1) * plane])


@helper
def _column_rows(xp, n, c, di, dj, sh, sw, oh0, rows, wo, dst):
    """dst[t*W_out + ow] = xp[n, c, (oh0 + t)*sh + di, ow*sw + dj] for ``rows`` output rows t.

    Indexed element by element: slicing a source and a destination row (as
    views) for each copy took 1.5-2x as long on 7x7 to 14x14 maps. Strides 1
    and 2 are literals, which LLVM vectorises: 1.78 against 2.72 ms for
    64 x 3x3 columns of a 56x56 map, 2.43 against 2.70 for ResNet's first
    layer (7x7 at stride 2), against the stride as a variable.
    """
    for t in range(rows):
        ih = (oh0 + t) * sh + di
        base = t * wo
        if sw == 1:
            for ow in range(wo):
                dst[base + ow] = xp[n, c, ih, ow + dj]
        elif sw == 2:
            for ow in range(wo):
                dst[base + ow] = xp[n, c, ih, 2 * ow + dj]
        else:
            for ow in range(wo):
                dst[base + ow] = xp[n, c, ih, ow * sw + dj]


@kernel
def im2col_rows_tile(xp, n, c0, kw, dw, start, col, first, last):
    """``im2col_rows`` for a tile: col[ci*kW + j, k] = plane[start + k + j*dw], zero past the plane's end.

    ``plane`` is xp[n, c0+ci] flattened; the tile's outputs start at pixel
    ``start`` of the W_p-wide layout, and kernel row i reads these columns
    shifted by i*dh*W_p. Task t fills row t.
    """
    length = col.shape[1]
    hp, wp = xp.shape[2], xp.shape[3]
    for r in range(first, last):
        plane = xp[n, c0 + r // kw].reshape(hp * wp)
        off = start + (r % kw) * dw
        span = max(0, min(length, hp * wp - off))
        col[r, :span] = plane[off:off + span]
        col[r, span:] = 0.0
