"""Pooling kernels, forward and backward, one task per (image, channel) plane.

Windows are clipped to the unpadded input: max pooling pads with -inf and
average pooling with zeros (torch's ``count_include_pad=True``, so the divisor
is always kH*kW). Backward kernels own a whole plane of ``gx``, so their
scatter-adds never race.
"""

import numpy as np
from ._jit import kernel, kernel_exact


@kernel_exact
def max_pool_forward(x, kh, kw, sh, sw, ph, pw, y, first, last):
    """y[n,c,oh,ow] = max over the window at (oh*sh - ph, ow*sw - pw); NaN wins, as in torch."""
    ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        for oh in range(ho):
            h0 = oh * sh - ph
            for ow in range(wo):
                w0 = ow * sw - pw
                m = -np.inf
                for i in range(max(h0, 0), min(h0 + kh, h)):
                    for j in range(max(w0, 0), min(w0 + kw, w)):
                        v = x[n, c, i, j]
                        if v > m or np.isnan(v):
                            m = v
                y[n, c, oh, ow] = m


@kernel_exact
def max_pool_backward(x, gy, kh, kw, sh, sw, ph, pw, gx, first, last):
    """gx[argmax of each window] += gy; ties go to the first maximum in row-major order."""
    ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        gx[n, c, :, :] = 0.0
        for oh in range(ho):
            h0 = oh * sh - ph
            for ow in range(wo):
                w0 = ow * sw - pw
                # Same scan and tie rule as torch's CPU kernel: start at the
                # window's first pixel, move on a strictly larger value or NaN.
                m = -np.inf
                bi = max(h0, 0)
                bj = max(w0, 0)
                for i in range(max(h0, 0), min(h0 + kh, h)):
                    for j in range(max(w0, 0), min(w0 + kw, w)):
                        v = x[n, c, i, j]
                        if v > m or np.isnan(v):
                            m = v
                            bi = i
                            bj = j
                gx[n, c, bi, bj] += gy[n, c, oh, ow]


@kernel
def avg_pool_forward(x, kh, kw, sh, sw, ph, pw, y, first, last):
    """y[n,c,oh,ow] = sum of the window (zeros outside the input) / (kH*kW)."""
    ch, h, w = x.shape[1], x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    inv = np.float32(1.0 / (kh * kw))
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        for oh in range(ho):
            h0 = oh * sh - ph
            for ow in range(wo):
                w0 = ow * sw - pw
                s = np.float32(0.0)
                for i in range(max(h0, 0), min(h0 + kh, h)):
                    for j in range(max(w0, 0), min(w0 + kw, w)):
                        s += x[n, c, i, j]
                y[n, c, oh, ow] = s * inv


@kernel
def avg_pool_backward(gy, kh, kw, sh, sw, ph, pw, gx, first, last):
    """gx[window] += gy / (kH*kW) for every window that covers a pixel."""
    ch, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    ho, wo = gy.shape[2], gy.shape[3]
    inv = np.float32(1.0 / (kh * kw))
    for plane in range(first, last):
        n = plane // ch
        c = plane % ch
        gx[n, c, :, :] = 0.0
        for oh in range(ho):
            h0 = oh * sh - ph
            for ow in range(wo):
                w0 = ow * sw - pw
                g = gy[n, c, oh, ow] * inv
                for i in range(max(h0, 0), min(h0 + kh, h)):
                    for j in range(max(w0, 0), min(w0 + kw, w)):
                        gx[n, c, i, j] += g
