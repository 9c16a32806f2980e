"""The engine's public API: convolution and pooling, forward and backward.

Names, arguments and results follow ``torch.nn.functional``. Arrays are numpy:
``x`` is (N, C_in, H, W) and ``weight`` is (C_out, C_in/groups, kH, kW).

Dtype rule: every array argument may have any real dtype (bool, integers,
float16/32/64); it is converted with ``np.asarray(a, dtype=np.float32)``, so
float64 is rounded to nearest and integers above 2**24 lose their low bits.
Results are always float32 and C-contiguous. NaN and inf propagate as in torch.

This module validates and normalises arguments, picks an algorithm for the
shape and calls the Numba kernels in ``cnn_cli.kernels``. Bad arguments raise
``ValueError`` with a message that says what to change.
"""

from __future__ import annotations

import itertools

import numpy as np

from . import config
from .kernels import conv as conv_kernels
from .kernels import pool as pool_kernels

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
ALGORITHMS = ("auto", "direct", "im2col", "fft")
_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


# --------------------------------------------------------------------------- arguments


def _as_float32(name, a, ndim):
    """Convert an array argument to C-contiguous float32 and check its rank and size."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, but has dtype {arr.dtype}")
    if arr.ndim != ndim:
        expected = {4: "(N, C, H, W)", 1: "(C_out,)"}.get(ndim, f"{ndim}-D")
        raise ValueError(f"{name} must be {ndim}-D {expected}, but has shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} must not be empty, but has shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def n_elements(shape):
    """Elements of an array of ``shape``, in Python ints (which never overflow)."""
    count = 1
    for d in shape:
        count *= int(d)
    return count


def pair(name, value, minimum):
    """An int or a pair of ints -> (int, int), each at least ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        result = (int(value), int(value))
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        result = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or a pair of ints, but got {value!r}")
    if min(result) < minimum:
        raise ValueError(f"{name} must be at least {minimum}, but got {value!r}")
    if max(result) > config.MAX_SIDE:
        raise ValueError(f"{name} must be at most {config.MAX_SIDE}, but got {value!r}")
    return result


def conv_padding(padding, kernel, dilation, stride):
    """Resolve ``padding`` to (top, bottom, left, right).

    ``"same"`` pads a total of dilation*(k-1) per axis and, like torch, puts the
    odd extra pixel at the bottom/right, so even kernels work too.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(
                    f"padding='same' needs stride=1, but got stride={stride}; "
                    "give an explicit padding instead"
                )
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', but got {padding!r}")
    ph, pw = pair("padding", padding, 0)
    return (ph, ph, pw, pw)


def _check_padding_mode(padding_mode, pads, h, w):
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, but got {padding_mode!r}")
    top, bottom, left, right = pads
    for size, before, after, axis in ((h, top, bottom, "height"), (w, left, right, "width")):
        if padding_mode == "reflect" and max(before, after) >= size:
            raise ValueError(
                f"reflect padding must be smaller than the input {axis} ({size}), "
                f"but got {max(before, after)}; use less padding or padding_mode='replicate'"
            )
        if padding_mode == "circular" and max(before, after) > size:
            raise ValueError(
                f"circular padding must be at most the input {axis} ({size}), "
                f"but got {max(before, after)}; use less padding"
            )


def check_conv_options(*, stride=1, padding=0, dilation=1, padding_mode="zeros"):
    """Validate conv options that do not depend on array shapes (raises ValueError)."""
    s = pair("stride", stride, 1)
    conv_padding(padding, (1, 1), pair("dilation", dilation, 1), s)
    _check_padding_mode(padding_mode, (0, 0, 0, 0), 1, 1)


def out_size(padded, kernel, stride, dilation, axis):
    effective = dilation * (kernel - 1) + 1
    if effective > padded:
        raise ValueError(
            f"kernel {axis} with dilation ({effective}) is larger than the padded input "
            f"{axis} ({padded}); use a smaller kernel or dilation, or more padding"
        )
    return (padded - effective) // stride + 1


class ConvSpec:
    """Validated, normalised arguments of one convolution call."""

    def __init__(self, x_shape, w_shape, stride, padding, dilation, groups, padding_mode, algorithm):
        n, c_in, h, w = x_shape
        c_out, cin_g, kh, kw = w_shape
        if not isinstance(groups, (int, np.integer)) or isinstance(groups, bool) or groups < 1:
            raise ValueError(f"groups must be a positive int, but got {groups!r}")
        if c_out % groups:
            raise ValueError(
                f"groups ({groups}) must divide the number of filters weight.shape[0] ({c_out})"
            )
        if c_in % groups:
            raise ValueError(f"groups ({groups}) must divide the input channels x.shape[1] ({c_in})")
        if cin_g * groups != c_in:
            raise ValueError(
                f"x has {c_in} channels but weight expects weight.shape[1] * groups = "
                f"{cin_g} * {groups} = {cin_g * groups}; give x with that many channels "
                "or a weight of shape (C_out, C_in/groups, kH, kW)"
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, but got {algorithm!r}")
        self.stride = pair("stride", stride, 1)
        self.dilation = pair("dilation", dilation, 1)
        self.pads = conv_padding(padding, (kh, kw), self.dilation, self.stride)
        _check_padding_mode(padding_mode, self.pads, h, w)
        self.padding_mode = padding_mode
        self.groups = int(groups)
        self.padded = (h + self.pads[0] + self.pads[1], w + self.pads[2] + self.pads[3])
        self.out_hw = (
            out_size(self.padded[0], kh, self.stride[0], self.dilation[0], "height"),
            out_size(self.padded[1], kw, self.stride[1], self.dilation[1], "width"),
        )
        self.y_shape = (n, c_out, *self.out_hw)
        self.algorithm = algorithm
        for what, shape in (("the padded input", (n, c_in, *self.padded)), ("the output", self.y_shape)):
            size = 4 * n_elements(shape)
            if size > config.MAX_ARRAY_BYTES:
                raise ValueError(f"{what} would take {size / 2**30:.1f} GiB, over the limit of "
                                 f"{config.MAX_ARRAY_BYTES / 2**30:.0f} GiB; use less padding or smaller inputs")

    def pad(self, x):
        """x padded by ``pads`` in ``padding_mode`` (no copy when there is no padding)."""
        top, bottom, left, right = self.pads
        if not any(self.pads):
            return x
        if self.padding_mode == "zeros":  # np.pad's own set-up costs more than this copy on small maps
            xp = np.zeros((*x.shape[:2], *self.padded), np.float32)
            xp[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
            return xp
        mode = _NUMPY_PAD_MODE[self.padding_mode]
        return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), mode=mode)

    def stack(self, x):
        """x padded as ``pad`` pads it, in the stacked layout (C_in, N, H_p, W_p) of the stride-1 direct kernels."""
        if self.padding_mode == "zeros":
            return _stack(x, self.pads[0], self.pads[2], self.padded)
        return _stack(self.pad(x), 0, 0, self.padded)

    def unpad_grad(self, gxp):
        """Fold the gradient of the padded input back onto the input pixels.

        Zero padding just drops the border. The other modes copy input pixels
        into the border, so the border's gradient is added to the pixel it came
        from (this is what torch's autograd does through ``F.pad``).
        """
        top, bottom, left, right = self.pads
        g = _fold_axis(gxp, 2, top, bottom, self.padding_mode)
        return np.ascontiguousarray(_fold_axis(g, 3, left, right, self.padding_mode))


def _fold_axis(g, axis, before, after, mode):
    size = g.shape[axis] - before - after
    view = np.moveaxis(g, axis, 0)
    out = view[before:before + size].copy()
    if mode == "zeros":
        return np.moveaxis(out, 0, axis)
    for p in [*range(before), *range(before + size, before + size + after)]:
        q = p - before
        if mode == "replicate":
            src = min(max(q, 0), size - 1)
        elif mode == "circular":
            src = q % size
        else:  # reflect: mirror about the first and last pixel
            src = -q if q < 0 else 2 * (size - 1) - q
        out[src] += view[p]
    return np.moveaxis(out, 0, axis)


# --------------------------------------------------------------------------- convolution


def _choose_algorithm(n, cin_g, cout_g, kh, kw, stride, out_hw):
    """The fastest path for a shape, by the thresholds in ``cnn_cli.config``."""
    if kh * kw >= config.FFT_MIN_TAPS and stride == (1, 1):
        return "fft"
    if kw == 3 and stride == (1, 1):
        # The filter-blocked direct kernel, unless the layer is deep, wide and
        # batched enough for the matrix products of row im2col to win.
        deep = cin_g * kh * kw >= config.ROWS_MIN_DEPTH and cout_g >= config.ROWS_MIN_OUT_CHANNELS
        large = out_hw[0] * out_hw[1] >= config.ROWS_MIN_PIXELS and n >= config.THREADS
        return "im2col" if deep and large else "direct"
    if cin_g * kh * kw >= config.IM2COL_MIN_DEPTH and cout_g >= config.IM2COL_MIN_OUT_CHANNELS:
        return "im2col"
    return "direct"


def _correlate_valid(xp, w, bias, stride, dilation, groups, out_hw, algorithm):
    """Valid cross-correlation of an already padded input; every path lands here."""
    n = xp.shape[0]
    c_out, cin_g, kh, kw = w.shape
    if algorithm == "auto":
        algorithm = _choose_algorithm(n, cin_g, c_out // groups, kh, kw, stride, out_hw)
    if algorithm == "fft":
        return _correlate_fft(xp, w, bias, stride, dilation, groups, out_hw)
    y = np.empty((n, c_out, *out_hw), np.float32)
    if algorithm == "direct":
        b = _bias_or_zeros(bias, w)
        if _stacked_path(algorithm, stride, kw, out_hw):
            _correlate_stacked(_stack(xp, 0, 0, xp.shape[2:]), w, b, dilation, groups, y)
            return y
        tiles = -(-out_hw[1] // conv_kernels.ROW_TILE)
        _run(conv_kernels.conv_direct, xp, w, b, *stride, *dilation, groups, y,
             tasks=n * groups * out_hw[0] * tiles, work=y.size * w[0].size)
        return y
    cout_g = c_out // groups
    if stride == (1, 1):
        _correlate_rows(xp, w, dilation, groups, y)
    else:
        for n0, g, col in _im2col_chunks(xp, w.shape, stride, dilation, groups, out_hw):
            rows = slice(g * cout_g, (g + 1) * cout_g)
            _batched_matmul(w[rows].reshape(cout_g, -1), col, y[n0:n0 + col.shape[0], rows].reshape(
                col.shape[0], cout_g, -1))
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def _correlate_rows(xp, w, dilation, groups, y):
    """Stride-1 im2col: one matrix product per kernel row, over shifted views of that image's row columns.

    Each thread takes whole images, the next one whenever it is free, and
    builds their columns (``kernels.conv.im2col_rows``) in its own buffer,
    which, for maps of moderate size, stays in its core's cache for the
    products that read it. Threads share the work only while their buffers
    together fit ``config.IM2COL_MAX_BYTES``.
    """
    n, _, hp, wp = xp.shape
    c_out, cin_g, kh, kw = w.shape
    cout_g = c_out // groups
    ho, wo = y.shape[2:]
    w_rows = [[np.ascontiguousarray(w[g * cout_g:(g + 1) * cout_g, :, i].reshape(cout_g, -1)) for i in range(kh)]
              for g in range(groups)]
    shifts = [i * dilation[0] * wp for i in range(kh)]

    def images(next_image):
        image = next_image()
        if image is None:
            return
        col = np.empty((1, cin_g * kw, hp * wp), np.float32)
        out = np.empty((1, cout_g, ho * wp), np.float32)
        while image is not None:
            for g in range(groups):
                conv_kernels.im2col_rows(xp, image, g * cin_g, kw, dilation[1], col, 0, cin_g * kw)
                _sum_of_products(w_rows[g], col, shifts, out)
                # Drop the garbage columns of the wide layout.
                y[image, g * cout_g:(g + 1) * cout_g] = out.reshape(cout_g, ho, wp)[..., :wo]
            image = next_image()

    buffers = 4 * (cin_g * kw * hp * wp + 2 * cout_g * ho * wp)  # columns, products and their sum
    _share(images, n, max(1, config.IM2COL_MAX_BYTES // buffers))


def _stacked_path(algorithm, stride, kw, out_hw):
    """Does a resolved ``algorithm`` run on the stacked layout (``kernels.conv.conv_direct_stacked``)?"""
    return algorithm == "direct" and stride == (1, 1) and (kw == 3 or out_hw[1] < config.NARROW_MAP)


def _stack(a, top, left, shape_hw, groups=1, per_group=None):
    """``a`` (N, C, H, W) in the stacked layout of the stride-1 direct kernels: (C, N, *shape_hw),
    each plane placed at (top, left) in zeros.

    With ``per_group``, each of the ``groups`` groups of channels is followed
    by zero planes up to ``per_group`` channels (whole blocks of filters for
    ``kernels.conv.conv3_grad_weight_stacked``). Padding and transposing in
    one copy saves a pass over the input; with nothing to pad, one image or
    one channel needs no copy at all.
    """
    n, c, h, w = a.shape
    per_in = c // groups
    per_out = per_in if per_group is None else per_group
    if (top, left, *shape_hw) == (0, 0, h, w) and per_out == per_in:
        return np.ascontiguousarray(a.transpose(1, 0, 2, 3))
    out = np.zeros((groups, per_out, n, *shape_hw), np.float32)
    out[:, :per_in, :, top:top + h, left:left + w] = a.reshape(n, groups, per_in, h, w).transpose(1, 2, 0, 3, 4)
    return out.reshape(groups * per_out, n, *shape_hw)


def _correlate_stacked(xs, w, b, dilation, groups, y, argmax=None):
    """Stride-1 direct correlation of the stacked padded input ``xs`` (C_in, N, H_p, W_p) into ``y``.

    With ``argmax``, ``y`` is the output max-pooled 2x2, with its argmax (see
    ``kernels.conv._store_tile``); H_p must be even.
    """
    n, hp, wp = xs.shape[1:]
    c_out, cin_g, kh, kw = w.shape
    rows = max(1, config.STACKED_TILE // wp)
    if argmax is not None:  # tiles of whole pairs of rows
        rows = max(2, rows - rows % 2)
    tasks = groups * -(-n * hp // rows)
    work = n * c_out * (hp - dilation[0] * (kh - 1)) * (wp - dilation[1] * (kw - 1)) * w[0].size
    if kw == 3:
        cout_g = c_out // groups
        wq = np.zeros((groups, -(-cout_g // 4) * 4, cin_g, kh, 3), np.float32)
        wq[:, :cout_g] = w.reshape(groups, cout_g, cin_g, kh, 3)
        _run(conv_kernels.conv3_stacked, xs, wq, b, *dilation, groups, rows, y, argmax, tasks=tasks, work=work)
    else:
        _run(conv_kernels.conv_direct_stacked, xs, w, b, *dilation, groups, rows, y, argmax, tasks=tasks,
             work=work)


_pool = None


def _split(call, total, parts):
    """Run ``call(first, last)`` over ``parts`` slices of range(total) at once and wait.

    The first slice runs on this thread and the others on a shared pool of
    sleeping threads; the calls release the GIL (Numba ``nogil`` kernels,
    numpy's matmul).
    """
    bounds = [total * i // parts for i in range(parts + 1)]
    if _in_pool():  # a job already on the pool (see conv2d_backward) must not wait on it
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            call(lo, hi)
        return
    # The first slice runs here: this thread would only wait otherwise, and
    # waking one thread fewer saves tens of microseconds a call.
    jobs = [_submit(call, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:]) if hi > lo]
    try:
        call(bounds[0], bounds[1])
    finally:
        for job in jobs:
            job.result()


_POOL_PREFIX = "cnn-engine"


def _submit(call, *args):
    """Run ``call(*args)`` on the shared pool of ``config.THREADS - 1`` sleeping threads; returns its future."""
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=max(1, config.THREADS - 1), thread_name_prefix=_POOL_PREFIX)
    return _pool.submit(call, *args)


def _in_pool():
    import threading

    return threading.current_thread().name.startswith(_POOL_PREFIX)


def _run(kernel, *args, tasks, work):
    """Run a kernel over its tasks: on this thread when ``work`` (about one
    multiply-add a unit) is too small to repay waking others, else split."""
    parts = min(config.THREADS, tasks)
    if work < config.PARALLEL_MIN_WORK or parts < 2:
        kernel(*args, 0, tasks)
    else:
        _split(lambda first, last: kernel(*args, first, last), tasks, parts)


def _share(worker, n, most=None):
    """Run ``worker(next_item)`` on every thread (or ``most`` of them) at once, sharing items 0..n-1.

    ``next_item()`` returns the next item nobody has taken, or None when all
    are taken, so a thread slowed down by the rest of a busy machine simply
    takes fewer items, where halves fixed in advance would wait for it.
    """
    taken = itertools.count()  # next() on it is atomic under the GIL

    def next_item():
        item = next(taken)
        return item if item < n else None

    parts = min(config.THREADS, n, most or n)
    if parts < 2:
        worker(next_item)
    else:
        _split(lambda first, last: worker(next_item), parts, parts)


def _batched_matmul(a, b, out):
    """out[i] = a[i] @ b[i] (``a`` may be one matrix), the batch split between threads.

    This parallelises the matrix products even when BLAS itself runs one
    thread, as the ``cnn`` command sets it: BLAS's own thread pool spins
    between calls and fights the engine's threads on a small machine.
    """
    parts = min(config.THREADS, b.shape[0])
    if parts < 2:
        _matmul(a, b, out)
    else:
        _split(lambda lo, hi: _matmul(a if a.ndim == 2 else a[lo:hi], b[lo:hi], out[lo:hi]),
               b.shape[0], parts)


def _matmul(a, b, out):
    # NaN and inf propagate, as in torch, without numpy's warnings (whose
    # state is per thread, so it is set here, on the thread that multiplies).
    with np.errstate(invalid="ignore", over="ignore"):
        np.matmul(a, b, out=out)


def _im2col_chunks(xp, w_shape, stride, dilation, groups, out_hw):
    """Yield (first image, group, columns) for chunks of images that fit the buffer limit.

    ``columns`` is (images, C_in/groups * kH * kW, H_out * W_out) and is reused
    between chunks, so consumers must use it before asking for the next one.
    """
    _, cin_g, kh, kw = w_shape
    depth = cin_g * kh * kw
    for n0, g, col in _column_chunks(xp.shape[0], groups, depth, out_hw[0] * out_hw[1]):
        _run(conv_kernels.im2col, xp, n0, g * cin_g, kh, kw, *stride, *dilation, *out_hw, col,
             tasks=col.shape[0] * depth, work=col.size)
        yield n0, g, col


def _row_columns(xp, w_shape, dw, groups):
    """``_im2col_chunks`` for stride 1: columns for one kernel row, (images, C_in/groups * kW, H_p * W_p).

    Kernel row i reads them shifted by i*dh*W_p (see ``kernels.conv.im2col_rows``).
    """
    _, cin_g, _, kw = w_shape
    depth = cin_g * kw
    for n0, g, col in _column_chunks(xp.shape[0], groups, depth, xp.shape[2] * xp.shape[3]):
        _run(conv_kernels.im2col_rows, xp, n0, g * cin_g, kw, dw, col, tasks=col.shape[0] * depth, work=col.size)
        yield n0, g, col


def _column_chunks(n, groups, depth, pixels):
    """Yield (first image, group, buffer) over chunks of images whose columns fit ``config.IM2COL_MAX_BYTES``.

    The buffer is (images, depth, pixels), reused from chunk to chunk.
    """
    batch = int(max(1, min(n, config.IM2COL_MAX_BYTES // (depth * pixels * 4))))
    buffer = np.empty((batch, depth, pixels), np.float32)
    for n0 in range(0, n, batch):
        for g in range(groups):
            yield n0, g, buffer[:min(batch, n - n0)]


def _sum_of_products(mats, col, shifts, out):
    """out[b] = sum over i of mats[i] @ col[b][:, shifts[i]:shifts[i] + L], L = out.shape[2]."""
    length = out.shape[2]
    part = np.empty_like(out) if len(mats) > 1 else None
    with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf propagate (see _matmul)
        np.matmul(mats[0], col[:, :, shifts[0]:shifts[0] + length], out=out)
        for mat, shift in zip(mats[1:], shifts[1:]):
            np.matmul(mat, col[:, :, shift:shift + length], out=part)
            out += part


def _widen(gy, width):
    """gy (N, C, H, W) padded with zeros on the right to ``width`` columns (gy itself if W = width).

    grad_y in the W_p-wide layout of ``im2col_rows`` and ``conv_grad_weight_small``:
    the zeros cancel the garbage columns in sums over pixels.
    """
    if gy.shape[3] == width:
        return gy
    wide = np.zeros((*gy.shape[:3], width), np.float32)
    wide[..., :gy.shape[3]] = gy
    return wide


def _correlate_fft(xp, w, bias, stride, dilation, groups, out_hw, zero_pads=(0, 0, 0, 0)):
    """Valid cross-correlation by FFT, for large kernels, of ``xp`` with ``zero_pads`` (top, bottom,
    left, right) of zeros around it: they go straight into the transform's own zero padding.

    Correlation is a product with the conjugate spectrum of the kernel. A
    transform of length L holds L - (kernel reach) valid outputs: the
    circular wrap-around only reaches the others, which we drop. At stride 1
    the padded input is cut into overlapping tiles (overlap-save), each
    transformed on its own, of the length ``_fft_tiles`` picks; one tile
    covers everything at other strides.

    FFT rounding error scales with the input's whole energy, its mean
    included, while a zero-mean kernel's response scales with the variation
    alone. So an input whose mean dwarfs its spread (a bright, nearly flat
    image) is transformed in float64; everything else in float32, twice as fast.
    """
    import scipy.fft

    n, c_in, h, w_in = xp.shape
    top, bottom, left, right = zero_pads
    c_out, cin_g, kh, kw = w.shape
    dh, dw = dilation
    sample = xp.ravel()[::17]  # a subsample is plenty to judge mean against spread
    mean, spread = float(np.abs(sample.mean(dtype=np.float64))), float(sample.std(dtype=np.float64))
    dtype = np.float64 if mean > config.FFT_FLOAT64_MEAN_RATIO * spread else np.float32
    wd = np.zeros((c_out, cin_g, dh * (kh - 1) + 1, dw * (kw - 1) + 1), dtype)
    wd[:, :, ::dh, ::dw] = w
    reach = (wd.shape[2] - 1, wd.shape[3] - 1)
    padded = (h + top + bottom, w_in + left + right)
    tiled = stride == (1, 1)
    # Per axis: transform length L, valid outputs per tile, tile count.
    plan = [_fft_tiles(size, r, tiled) for size, r in zip(padded, reach)]
    (lh, th, nh), (lw, tw, nw) = plan
    workers = config.FFT_WORKERS
    # The tiles, each cut from the input with its zero padding, in one array
    # (N, C_in, tiles down, tiles across, L_h, L_w): one batched transform.
    buf = np.zeros((n, c_in, nh, nw, lh, lw), dtype)
    for i, j in itertools.product(range(nh), range(nw)):
        (src_r, dst_r), (src_c, dst_c) = (_tile_slices(i * th - top, lh, h), _tile_slices(j * tw - left, lw, w_in))
        buf[:, :, i, j, dst_r, dst_c] = xp[:, :, src_r, src_c]
    xf = scipy.fft.rfft2(buf, workers=workers, overwrite_x=True)
    del buf
    cout_g = c_out // groups
    sh, sw = stride
    y = np.empty((n, c_out, *out_hw), np.float32)
    # One filter at a time, so memory holds the input's spectrum and one
    # filter's worth of products, not all of them (a bank on a large photo).
    for co in range(c_out):
        g = co // cout_g
        # The kernel is only a few rows tall: transform those rows, then the
        # columns, instead of a whole zero-padded plane.
        wf = scipy.fft.fft(scipy.fft.rfft(wd[co], n=lw, axis=-1, workers=workers), n=lh, axis=-2, workers=workers)
        np.conj(wf, out=wf)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf propagate, as in torch
            yf = xf[:, g * cin_g] * wf[0]
            for c in range(1, cin_g):
                yf += xf[:, g * cin_g + c] * wf[c]
        tiles = scipy.fft.irfft2(yf, s=(lh, lw), workers=workers, overwrite_x=True)
        if not tiled:
            y[:, co] = tiles[:, 0, 0, :(out_hw[0] - 1) * sh + 1:sh, :(out_hw[1] - 1) * sw + 1:sw]
            continue
        for i, j in itertools.product(range(nh), range(nw)):
            rows, cols = min(th, out_hw[0] - i * th), min(tw, out_hw[1] - j * tw)
            y[:, co, i * th:i * th + rows, j * tw:j * tw + cols] = tiles[:, i, j, :rows, :cols]
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def _fft_tiles(padded, reach, tiled):
    """(L, valid outputs per tile, tiles) along an axis of ``padded`` pixels, for a kernel of ``reach`` + 1.

    One tile of the next fast length past the input, unless ``tiled`` and
    shorter tiles cost 5% less by the estimate tiles * L * (log2 L + 4):
    the log is the transform's work per point, the constant the products and
    copies. Shorter transforms stay in cache, and their overlap is small
    when the kernel is. Measured: 1024 x 1024 with a 31 x 31 kernel took 13 ms
    in 4 x 4 tiles of 288 and 16 ms in one transform of 1080; 4096 x 4096
    with 15 x 15, 265 ms in tiles of 128 and 736 ms whole. The margin keeps
    one transform where the two were measured close.
    """
    import scipy.fft

    def cost(length, count):
        return count * length * (np.log2(length) + 4)

    full = scipy.fft.next_fast_len(padded, real=True)
    best = (full, full - reach, 1)
    if not tiled:
        return best
    valid = padded - reach
    least = 0.95 * cost(full, 1)
    length = scipy.fft.next_fast_len(max(4 * (reach + 1), 64), real=True)
    while length < full:
        count = -(-valid // (length - reach))
        if cost(length, count) < least:
            least, best = cost(length, count), (length, length - reach, count)
        length = scipy.fft.next_fast_len(length + 1, real=True)
    return best


def _tile_slices(start, length, size):
    """(source, destination) slices that copy input [start, start + length), clipped to [0, size), into a tile."""
    lo, hi = max(start, 0), min(start + length, size)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo - start, hi - start)


def _check_bias(bias, c_out):
    if bias is None:
        return None
    b = _as_float32("bias", bias, 1)
    if b.shape[0] != c_out:
        raise ValueError(f"bias must have shape ({c_out},) to match weight, but has {b.shape}")
    return b


def conv2d(
    x,
    weight,
    bias=None,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    algorithm="auto",
):
    """2-D cross-correlation of a batch of images with a filter bank.

    Parameters
    ----------
    x : array (N, C_in, H, W)
    weight : array (C_out, C_in/groups, kH, kW)
        One filter per output channel; each filter is C_in/groups kernels,
        whose responses are summed.
    bias : array (C_out,), optional
    stride, dilation : int or (int, int), at least 1
    padding : int, (int, int), "same" or "valid"
        "same" keeps H and W for stride 1, also for even kernels (the odd
        extra pixel goes to the bottom/right, as in torch).
    groups : int
        Split channels into groups that are convolved separately;
        ``groups = C_in = C_out`` is a depthwise bank.
    padding_mode : "zeros", "reflect", "replicate" or "circular"
    algorithm : "auto", "direct", "im2col" or "fft"
        Force a code path. "auto" picks FFT for kernels of 14x14 and larger;
        for kernels 3 wide at stride 1, direct loops, or im2col with BLAS for
        deep layers on batches of larger maps; otherwise direct loops for few
        channels and im2col for deep layers.

    Returns
    -------
    y : float32 array (N, C_out, H_out, W_out), where
        ``H_out = (H + pad_top + pad_bottom - dilation*(kH-1) - 1) // stride + 1``
        and likewise for W_out.

    Examples
    --------
    >>> x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> conv2d(x, np.ones((1, 1, 2, 2)))[0, 0]
    array([[ 8., 12.],
           [20., 24.]], dtype=float32)
    """
    return _conv2d(*_conv_arguments(x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm))


def _conv2d(x, w, b, spec, algorithm):
    """conv2d of arguments already validated, with the algorithm resolved."""
    if algorithm == "fft" and spec.padding_mode == "zeros":
        return _correlate_fft(x, w, b, spec.stride, spec.dilation, spec.groups, spec.out_hw, spec.pads)
    if _stacked_path(algorithm, spec.stride, w.shape[3], spec.out_hw):
        # Pad straight into the stacked layout: one pass over x, not two.
        y = np.empty(spec.y_shape, np.float32)
        _correlate_stacked(spec.stack(x), w, _bias_or_zeros(b, w), spec.dilation, spec.groups, y)
        return y
    return _correlate_valid(spec.pad(x), w, b, spec.stride, spec.dilation, spec.groups, spec.out_hw, algorithm)


def _conv_arguments(x, weight, bias, stride, padding, dilation, groups, padding_mode, algorithm):
    """-> (x, weight, bias, spec, algorithm) of a conv2d call, validated, with "auto" resolved for the shape."""
    x = _as_float32("x", x, 4)
    w = _as_float32("weight", weight, 4)
    b = _check_bias(bias, w.shape[0])
    spec = ConvSpec(x.shape, w.shape, stride, padding, dilation, groups, padding_mode, algorithm)
    c_out, cin_g, kh, kw = w.shape
    if algorithm == "auto":
        algorithm = _choose_algorithm(x.shape[0], cin_g, c_out // spec.groups, kh, kw, spec.stride, spec.out_hw)
    return x, w, b, spec, algorithm


def _bias_or_zeros(b, w):
    return b if b is not None else np.zeros(w.shape[0], np.float32)


def conv2d_max_pool2d(
    x,
    weight,
    bias=None,
    *,
    pool=2,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    algorithm="auto",
):
    """``max_pool2d_with_argmax(conv2d(x, weight, bias, ...), pool)``, fused where it can be.

    The layer pair of every small CNN, conv then max pooling. For a 2x2
    ``pool`` on the stacked direct path (kernels 3 wide or narrow maps, at
    stride 1, with an even padded height) each tile of sums is pooled while
    it is in cache, and the unpooled output, four times larger, is never
    written; otherwise the two calls run one after the other. Either way the
    result is the same: the pooled maps (N, C_out, H_out // 2, W_out // 2)
    for a 2x2 pool, and, for each, where its maximum lies in its unpooled
    plane (oh*W_out + ow, int64), for ``max_pool2d_backward_from_argmax``
    with the unpooled shape (N, C_out, H_out, W_out). ``pool`` is the
    pooling's kernel_size (its stride too, without padding); the other
    arguments are ``conv2d``'s.
    """
    x, w, b, spec, resolved = _conv_arguments(x, weight, bias, stride, padding, dilation, groups, padding_mode,
                                              algorithm)
    try:
        pooling = PoolSpec(spec.y_shape, pool, None, 0)
    except ValueError as exc:
        raise ValueError(f"pool: {exc}") from None
    if pooling.kernel == (2, 2) and spec.padded[0] % 2 == 0 \
            and _stacked_path(resolved, spec.stride, w.shape[3], spec.out_hw):
        y = np.empty(pooling.y_shape, np.float32)
        argmax = np.empty(pooling.y_shape, np.int64)
        _correlate_stacked(spec.stack(x), w, _bias_or_zeros(b, w), spec.dilation, spec.groups, y, argmax)
        return y, argmax
    return max_pool2d_with_argmax(_conv2d(x, w, b, spec, resolved), pool)


def conv2d_backward(
    x,
    weight,
    grad_y,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups=1,
    padding_mode="zeros",
    algorithm="auto",
    input_grad=True,
):
    """Gradients of a ``conv2d`` call with the same arguments.

    Given ``grad_y`` = dL/dy of shape (N, C_out, H_out, W_out), returns
    ``(grad_x, grad_weight, grad_bias)`` shaped like x, weight and (C_out,).
    ``input_grad=False`` skips grad_x (returned as None), which a network's
    first layer never needs.

    grad_x is itself a convolution: ``grad_y`` with ``stride - 1`` zeros
    inserted between its pixels, fully padded, correlated with the spatially
    flipped filters with in/out channels swapped. It therefore runs on the same
    algorithms as the forward pass (``algorithm`` picks one, as in ``conv2d``).
    grad_weight uses im2col + BLAS when ``algorithm`` is "im2col", or "auto"
    for a kernel that is not 3 wide at stride 1 and whose columns for one
    image fit ``config.IM2COL_MAX_BYTES``; direct loops otherwise (and, at
    stride 1, for an input that is not all finite: see ``_grad_weight``).
    """
    x = _as_float32("x", x, 4)
    w = _as_float32("weight", weight, 4)
    gy = _as_float32("grad_y", grad_y, 4)
    spec = ConvSpec(x.shape, w.shape, stride, padding, dilation, groups, padding_mode, algorithm)
    if gy.shape != spec.y_shape:
        raise ValueError(
            f"grad_y must have the shape of conv2d's output {spec.y_shape}, but has {gy.shape}"
        )
    c_out, cin_g, kh, kw = w.shape
    algorithm = spec.algorithm
    if algorithm == "auto":
        # grad_weight sums over every pixel of every image. Kernels 3 wide at
        # stride 1 have their own register-blocked loop, faster than BLAS at
        # every shape measured; for the others, matrix products beat the
        # direct loops (2x at depth 9, 5x at depth 288), as long as one
        # image's columns fit the buffer.
        if spec.stride == (1, 1):  # row im2col: one kernel row's columns over the padded plane
            columns = cin_g * kw * spec.padded[0] * spec.padded[1] * 4
        else:
            columns = cin_g * kh * kw * spec.out_hw[0] * spec.out_hw[1] * 4
        if (kw == 3 and spec.stride == (1, 1)) or columns > config.IM2COL_MAX_BYTES:
            algorithm = "direct"
        else:
            algorithm = "im2col"

    # A layer too small to split its kernels between threads computes grad_x
    # on another thread meanwhile: the two need only x, weight and grad_y.
    grad_x_job = None
    if input_grad and config.THREADS > 1 and gy.size * w[0].size < config.PARALLEL_MIN_WORK and not _in_pool():
        grad_x_job = _submit(_grad_input, gy, w, spec)

    # Each plane in float32 (numpy sums a contiguous row pairwise, so it stays
    # accurate, and faster than converting every pixel), the planes in float64.
    plane_sums = gy.reshape(*gy.shape[:2], -1).sum(axis=2)
    grad_bias = plane_sums.sum(axis=0, dtype=np.float64).astype(np.float32)

    try:
        grad_w = _grad_weight(x, gy, w, spec, algorithm)
    except BaseException:
        if grad_x_job is not None and not grad_x_job.cancel():  # leave nothing running behind the error
            from concurrent.futures import wait

            wait([grad_x_job])
        raise
    if not input_grad:
        return None, grad_w, grad_bias
    grad_x = grad_x_job.result() if grad_x_job is not None else _grad_input(gy, w, spec)
    return grad_x, grad_w, grad_bias


def _grad_weight(x, gy, w, spec, algorithm):
    """grad_weight of a conv2d call, by the resolved ``algorithm`` ("im2col" or "direct").

    The W_p-wide layouts of stride 1 pair the zero grad_y of their garbage
    columns with input pixels wrapped round from the next row. That is
    harmless unless such a pixel is inf or NaN (0 * inf is NaN, where torch
    never touches it), so an input that is not all finite takes the exact loops.
    """
    c_out, cin_g, kh, kw = w.shape
    g = spec.groups
    grad_w = np.empty_like(w)
    wide = spec.stride == (1, 1) and bool(np.isfinite(x).all())
    if algorithm == "im2col" and (wide or spec.stride != (1, 1)):
        _grad_weight_columns(spec.pad(x), gy, spec, grad_w)
    elif wide and kw == 3:
        _grad_weight_stacked(spec.stack(x), gy, spec.dilation, g, grad_w)
    elif wide and spec.out_hw[1] < config.NARROW_MAP:
        xp = spec.pad(x)
        _run(conv_kernels.conv_grad_weight_small, xp, _widen(gy, xp.shape[3]), *spec.dilation, g, grad_w,
             tasks=c_out * cin_g, work=gy.size * w[0].size)
    else:
        _run(conv_kernels.conv_grad_weight_direct, spec.pad(x), gy, *spec.stride, *spec.dilation, g, grad_w,
             tasks=c_out * cin_g, work=gy.size * w[0].size)
    return grad_w


def _grad_input(gy, w, spec):
    """grad_x of a conv2d call: a correlation with swapped channels; "auto" decides afresh for that shape."""
    top, bottom, left, right = spec.pads
    if spec.padding_mode == "zeros":
        # The border's gradient would be dropped: compute the input's pixels only.
        rows, cols = (top, spec.padded[0] - bottom), (left, spec.padded[1] - right)
        return _grad_padded_input(gy, w, spec, spec.algorithm, rows, cols)
    grad_xp = _grad_padded_input(gy, w, spec, spec.algorithm, (0, spec.padded[0]), (0, spec.padded[1]))
    return spec.unpad_grad(grad_xp)


def _grad_weight_columns(xp, gy, spec, grad_w):
    """grad_weight as matrix products of grad_y with the im2col columns, summed over images in float64."""
    n, c_out, ho, wo = gy.shape
    _, cin_g, kh, kw = grad_w.shape
    cout_g = c_out // spec.groups
    acc = np.zeros((c_out, cin_g, kh, kw), np.float64)
    if spec.stride == (1, 1):
        # Kernel row i pairs grad_y (W_p wide, zeros in the garbage columns)
        # with the row columns shifted by i*dh*W_p.
        wp = xp.shape[3]
        gy_rows = _widen(gy, wp).reshape(n, c_out, ho * wp)
        for n0, g, col in _row_columns(xp, grad_w.shape, spec.dilation[1], spec.groups):
            rows = slice(g * cout_g, (g + 1) * cout_g)
            gyc = gy_rows[n0:n0 + col.shape[0], rows]
            for i in range(kh):
                shift = i * spec.dilation[0] * wp
                products = np.empty((col.shape[0], cout_g, col.shape[1]), np.float32)
                _batched_matmul(gyc, col[:, :, shift:shift + ho * wp].transpose(0, 2, 1), products)
                acc[rows, :, i] += products.sum(axis=0, dtype=np.float64).reshape(cout_g, cin_g, kw)
    else:
        gy_cols = gy.reshape(n, c_out, ho * wo)
        for n0, g, col in _im2col_chunks(xp, grad_w.shape, spec.stride, spec.dilation, spec.groups, spec.out_hw):
            rows = slice(g * cout_g, (g + 1) * cout_g)
            products = np.empty((col.shape[0], cout_g, col.shape[1]), np.float32)
            _batched_matmul(gy_cols[n0:n0 + col.shape[0], rows], col.transpose(0, 2, 1), products)
            acc[rows] += products.sum(axis=0, dtype=np.float64).reshape(cout_g, cin_g, kh, kw)
    grad_w[...] = acc


def _grad_weight_stacked(xs, gy, dilation, groups, grad_w):
    """grad_weight of a stride-1 conv 3 wide from the stacked padded input ``xs`` (see
    ``kernels.conv.conv3_grad_weight_stacked``)."""
    hp, wp = xs.shape[2:]
    cout_g = gy.shape[1] // groups
    cout_pad = cout_g + cout_g % 2
    gys = _stack(gy, 0, 0, (hp, wp), groups, cout_pad)
    rows = max(1, conv_kernels.GRAD_TILE // wp)
    _run(conv_kernels.conv3_grad_weight_stacked, xs, gys, *dilation, groups, rows, grad_w,
         tasks=groups * cout_pad // 2, work=gy.size * grad_w[0].size)


def _grad_padded_input(gy, w, spec, algorithm, rows, cols):
    """dL/d(padded x) over padded rows [rows[0], rows[1]) and columns [cols[0], cols[1]).

    Computed as a forward correlation (see ``conv2d_backward``) of grad_y,
    spread out by the stride and padded by the kernel's reach, with the
    flipped filters; only the part of the spread that the asked-for pixels
    see is built.
    """
    n, c_out, ho, wo = gy.shape
    _, cin_g, kh, kw = w.shape
    g = spec.groups
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    fh, fw = dh * (kh - 1), dw * (kw - 1)
    # Rows and columns past the last window (when the stride does not divide
    # evenly) never reached the output: their gradient is zero.
    reached = ((ho - 1) * sh + 1 + fh, (wo - 1) * sw + 1 + fw)
    out_hw = (max(0, min(rows[1], reached[0]) - rows[0]), max(0, min(cols[1], reached[1]) - cols[0]))
    grad_shape = (n, g * cin_g, rows[1] - rows[0], cols[1] - cols[0])
    if 0 in out_hw:
        return np.zeros(grad_shape, np.float32)
    # grad_y row oh lands on spread row fh + oh*sh - rows[0] (likewise columns).
    spread = np.zeros((n, c_out, out_hw[0] + fh, out_hw[1] + fw), np.float32)
    src_rows, dst_rows = _spread_slices(ho, sh, fh - rows[0], spread.shape[2])
    src_cols, dst_cols = _spread_slices(wo, sw, fw - cols[0], spread.shape[3])
    spread[:, :, dst_rows, dst_cols] = gy[:, :, src_rows, src_cols]
    # (C_out, C_in/g, kH, kW) -> (C_in, C_out/g, kH, kW), flipped in space.
    wt = w.reshape(g, c_out // g, cin_g, kh, kw).transpose(0, 2, 1, 3, 4)
    wt = np.ascontiguousarray(wt.reshape(g * cin_g, c_out // g, kh, kw)[:, :, ::-1, ::-1])
    part = _correlate_valid(spread, wt, None, (1, 1), spec.dilation, g, out_hw, algorithm)
    if part.shape == grad_shape:
        return part
    grad = np.zeros(grad_shape, np.float32)
    grad[:, :, :out_hw[0], :out_hw[1]] = part
    return grad


def _spread_slices(count, step, offset, size):
    """(source, destination) slices that put items 0..count-1 at offset + i*step, keeping those in [0, size)."""
    first = max(0, -(offset // step)) if offset < 0 else 0
    last = min(count, (size - 1 - offset) // step + 1)
    if last <= first:
        return slice(0, 0), slice(0, 0)
    return slice(first, last), slice(offset + first * step, offset + (last - 1) * step + 1, step)


# --------------------------------------------------------------------------- pooling


def check_pool_options(kernel_size, stride=None, padding=0):
    """Validate pooling options that do not depend on the input's shape.

    Returns (kernel, stride, padding) as pairs; raises ValueError.
    """
    kernel = pair("kernel_size", kernel_size, 1)
    stride = kernel if stride is None else pair("stride", stride, 1)
    pads = pair("padding", padding, 0)
    for k, p in zip(kernel, pads):
        if 2 * p > k:
            raise ValueError(
                f"padding must be at most half of kernel_size, but got padding={padding!r} "
                f"for kernel_size={kernel_size!r}"
            )
    return kernel, stride, pads


class PoolSpec:
    """Validated, normalised arguments of one pooling call (torch's rules)."""

    def __init__(self, x_shape, kernel_size, stride, padding):
        self.kernel, self.stride, self.padding = check_pool_options(kernel_size, stride, padding)
        n, c, h, w = x_shape
        out = []
        for size, k, s, p, axis in zip((h, w), self.kernel, self.stride, self.padding, ("height", "width")):
            if k > size + 2 * p:
                raise ValueError(
                    f"kernel_size {axis} ({k}) is larger than the padded input {axis} "
                    f"({size + 2 * p}); use a smaller kernel_size or more padding"
                )
            out.append((size + 2 * p - k) // s + 1)
        self.y_shape = (n, c, *out)

    @property
    def args(self):
        return (*self.kernel, *self.stride, *self.padding)

    @property
    def work(self):
        """Window reads of the whole call, for choosing serial or parallel kernels."""
        return int(np.prod(self.y_shape)) * self.kernel[0] * self.kernel[1]


def _pool_forward(kernel, x, kernel_size, stride, padding, *extra):
    x = _as_float32("x", x, 4)
    spec = PoolSpec(x.shape, kernel_size, stride, padding)
    y = np.empty(spec.y_shape, np.float32)
    outputs = [np.empty(spec.y_shape, dtype) for dtype in extra]
    _run(kernel, x, *spec.args, y, *outputs, tasks=x.shape[0] * x.shape[1], work=spec.work)
    return (y, *outputs) if extra else y


def _pool_backward_args(x, grad_y, kernel_size, stride, padding):
    x = _as_float32("x", x, 4)
    gy = _as_float32("grad_y", grad_y, 4)
    spec = PoolSpec(x.shape, kernel_size, stride, padding)
    if gy.shape != spec.y_shape:
        raise ValueError(
            f"grad_y must have the shape of the pooling output {spec.y_shape}, but has {gy.shape}"
        )
    return x, gy, spec


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max pooling over windows of ``kernel_size``; padding counts as -inf.

    ``stride`` defaults to ``kernel_size``; padding is at most half the kernel.
    Output size: ``(H + 2*padding - kernel_size) // stride + 1`` (floor mode).
    """
    return max_pool2d_with_argmax(x, kernel_size, stride, padding)[0]


def max_pool2d_with_argmax(x, kernel_size, stride=None, padding=0):
    """``max_pool2d`` and, for each output, where its maximum lies in its plane (ih*W + iw, int64).

    A layer keeps the argmax from its forward pass, so its backward pass is a
    scatter (``max_pool2d_backward_from_argmax``) instead of a second search.
    """
    return _pool_forward(pool_kernels.max_pool_forward, x, kernel_size, stride, padding, np.int64)


def max_pool2d_backward(x, grad_y, kernel_size, stride=None, padding=0):
    """Gradient of ``max_pool2d``: each window's gradient goes to its first maximum."""
    x, gy, spec = _pool_backward_args(x, grad_y, kernel_size, stride, padding)
    _, argmax = _pool_forward(pool_kernels.max_pool_forward, x, kernel_size, stride, padding, np.int64)
    return _max_pool_scatter(x.shape, gy, argmax)


def max_pool2d_backward_from_argmax(x_shape, grad_y, argmax):
    """Gradient of ``max_pool2d`` from the argmax its forward pass returned: grad_x of shape ``x_shape``."""
    gy = _as_float32("grad_y", grad_y, 4)
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
    _run(pool_kernels.max_pool_backward, gy, argmax, gx, tasks=x_shape[0] * x_shape[1], work=gy.size)
    return gx


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Average pooling with zero padding counted in the mean (torch's ``count_include_pad=True``).

    Every window is divided by kH*kW. Arguments and output size as ``max_pool2d``.
    """
    return _pool_forward(pool_kernels.avg_pool_forward, x, kernel_size, stride, padding)


def avg_pool2d_backward(x, grad_y, kernel_size, stride=None, padding=0):
    """Gradient of ``avg_pool2d``: each window spreads grad/(kH*kW) over its pixels."""
    x, gy, spec = _pool_backward_args(x, grad_y, kernel_size, stride, padding)
    gx = np.empty_like(x)
    _run(pool_kernels.avg_pool_backward, gy, *spec.args, gx, tasks=gx.shape[0] * gx.shape[1], work=spec.work)
    return gx
