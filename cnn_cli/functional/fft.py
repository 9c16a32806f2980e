"""The FFT convolution path, for large kernels: overlap-save tiles at stride 1, one transform otherwise.

``fft(x, w, bias, spec) -> y`` has the signature of the paths in ``paths.py``.
scipy.fft is imported on the first call only: importing it takes longer than
a small convolution, and most runs never need it. ``lib=NumpyFFT`` runs the
same path on numpy's FFT (one thread, nothing to import; see ``small.py``).
"""

from __future__ import annotations

import itertools

import numpy as np

from .. import config


def fft(x, w, bias, spec, lib=None):
    """Valid cross-correlation by FFT of ``x`` padded as ``spec`` says; zero padding goes straight into
    the transform's own zero padding instead of a padded copy of x. ``lib``: scipy.fft by default."""
    lib = lib or _scipy_fft()
    if spec.padding_mode == "zeros":
        return _correlate_fft(lib, x, w, bias, spec.stride, spec.dilation, spec.groups, spec.out_hw, spec.pads)
    return _correlate_fft(lib, spec.pad(x), w, bias, spec.stride, spec.dilation, spec.groups, spec.out_hw)


def _scipy_fft():
    import scipy.fft

    return scipy.fft


class NumpyFFT:
    """numpy.fft behind the part of scipy.fft's interface this path uses (numpy has no ``workers``)."""

    @staticmethod
    def rfft2(a, workers=None, overwrite_x=False):
        return np.fft.rfft2(a)

    @staticmethod
    def irfft2(a, s, workers=None, overwrite_x=False):
        return np.fft.irfft2(a, s=s)

    @staticmethod
    def rfft(a, n, axis, workers=None):
        return np.fft.rfft(a, n=n, axis=axis)

    @staticmethod
    def fft(a, n, axis, workers=None):
        return np.fft.fft(a, n=n, axis=axis)

    @staticmethod
    def next_fast_len(n, real=True):
        """The least 2^a 3^b 5^c at or above ``n``, the lengths pocketfft transforms fastest."""
        while True:
            rest = n
            for p in (2, 3, 5):
                while rest % p == 0:
                    rest //= p
            if rest == 1:
                return n
            n += 1


def _correlate_fft(lib, xp, w, bias, stride, dilation, groups, out_hw, zero_pads=(0, 0, 0, 0)):
    """Valid cross-correlation by FFT of ``xp`` with ``zero_pads`` (top, bottom, left, right) of zeros
    around it.

    Correlation is a product with the conjugate spectrum of the kernel. A
    transform of length L holds L - (kernel reach) valid outputs: the
    circular wrap-around only reaches the others, which we drop. At stride 1
    the padded input is cut into overlapping tiles (overlap-save), each
    transformed on its own, of the length ``fft_tiles`` picks; one tile
    covers everything at other strides.

    FFT rounding error scales with the input's whole energy, its mean
    included, while a zero-mean kernel's response scales with the variation
    alone. So an input whose mean dwarfs its spread (a bright, nearly flat
    image) is transformed in float64; everything else in float32, twice as fast.
    """
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
    plan = [fft_tiles(size, r, tiled, lib) for size, r in zip(padded, reach)]
    (lh, th, nh), (lw, tw, nw) = plan
    workers = config.FFT_WORKERS
    # The tiles, each cut from the input with its zero padding, in one array
    # (N, C_in, tiles down, tiles across, L_h, L_w): one batched transform.
    buf = np.zeros((n, c_in, nh, nw, lh, lw), dtype)
    for i, j in itertools.product(range(nh), range(nw)):
        (src_r, dst_r), (src_c, dst_c) = (_tile_slices(i * th - top, lh, h), _tile_slices(j * tw - left, lw, w_in))
        buf[:, :, i, j, dst_r, dst_c] = xp[:, :, src_r, src_c]
    xf = lib.rfft2(buf, workers=workers, overwrite_x=True)
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
        wf = lib.fft(lib.rfft(wd[co], n=lw, axis=-1, workers=workers), n=lh, axis=-2, workers=workers)
        np.conj(wf, out=wf)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and inf propagate, as in torch
            yf = xf[:, g * cin_g] * wf[0]
            for c in range(1, cin_g):
                yf += xf[:, g * cin_g + c] * wf[c]
        tiles = lib.irfft2(yf, s=(lh, lw), workers=workers, overwrite_x=True)
        if not tiled:
            y[:, co] = tiles[:, 0, 0, :(out_hw[0] - 1) * sh + 1:sh, :(out_hw[1] - 1) * sw + 1:sw]
            continue
        for i, j in itertools.product(range(nh), range(nw)):
            rows, cols = min(th, out_hw[0] - i * th), min(tw, out_hw[1] - j * tw)
            y[:, co, i * th:i * th + rows, j * tw:j * tw + cols] = tiles[:, i, j, :rows, :cols]
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def fft_tiles(padded, reach, tiled, lib=None):
    """(L, valid outputs per tile, tiles) along an axis of ``padded`` pixels, for a kernel of ``reach`` + 1.

    One tile of the next fast length past the input, unless ``tiled`` and
    shorter tiles cost under ``config.FFT_TILES_MAX_COST`` of it by the estimate
    tiles * L * (log2 L + ``config.FFT_COST_PER_POINT``). Shorter transforms
    stay in cache, and their overlap is small when the kernel is.
    """
    lib = lib or _scipy_fft()

    def cost(length, count):
        return count * length * (np.log2(length) + config.FFT_COST_PER_POINT)

    full = lib.next_fast_len(padded, real=True)
    best = (full, full - reach, 1)
    if not tiled:
        return best
    valid = padded - reach
    least = config.FFT_TILES_MAX_COST * cost(full, 1)
    shortest = max(config.FFT_TILE_MIN_REACHES * (reach + 1), config.FFT_TILE_MIN_LENGTH)
    length = lib.next_fast_len(shortest, real=True)
    while length < full:
        count = -(-valid // (length - reach))
        if cost(length, count) < least:
            least, best = cost(length, count), (length, length - reach, count)
        length = lib.next_fast_len(length + 1, real=True)
    return best


def _tile_slices(start, length, size):
    """(source, destination) slices that copy input [start, start + length), clipped to [0, size), into a tile."""
    lo, hi = max(start, 0), min(start + length, size)
    if hi <= lo:
        return slice(0, 0), slice(0, 0)
    return slice(lo, hi), slice(lo - start, hi - start)
