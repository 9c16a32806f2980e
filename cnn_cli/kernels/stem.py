"""The direct kernel of convolutions over few input channels: the first layer ("stem") of image networks.

ResNet's 7x7 and MobileNet's and SqueezeNet's 3x3 first layers read 3
channels at stride 2. As matrix products their depth is 27-147, shallow for
BLAS, and the columns' strided copy took as long as the product. Here every
tap is a shifted unit-stride read of one *phase plane*: at stride s, plane
(ci, a, b) holds the padded input's pixels xp[ci, r*s + a, c*s + b], so tap
(ci, i, j) of output (oh, ow) reads plane (ci, i*dh % s, j*dw % s) at row
oh + i*dh // s, column ow + j*dw // s. Laid out W_ph wide (a phase plane's
width), output pixel k = oh*W_ph + ow reads that plane flat at
k + (i*dh // s)*W_ph + j*dw // s, so a tile of output rows is one long
vectorised pass per group of taps; the W_ph - W_out columns past each row's
end are garbage, computed and dropped as the tile is stored (as in
``conv.conv_direct_stacked``). Notation as in ``kernels.conv``.
"""

import numpy as np

from ._jit import helper, kernel
from .conv import store_clipped


@helper
def _four_filters_three_taps(a0, a1, a2, a3, src, offsets, wq, t):
    """a_f[k] += sum over taps t .. t+2 of wq[f, tap] * src[offsets[tap] + k], for four filters f.

    Twelve multiply-adds for three reads of the input and four sums loaded
    and stored: the reads come from the second-level cache (a tile's input
    for every tap outgrows the first), so sharing them between filters,
    as ``conv.conv3_stacked`` does, is what lets the loop run at the speed
    of its multiply-adds.
    """
    s0, s1, s2 = src[offsets[t]:], src[offsets[t + 1]:], src[offsets[t + 2]:]
    w00, w01, w02 = wq[0, t], wq[0, t + 1], wq[0, t + 2]
    w10, w11, w12 = wq[1, t], wq[1, t + 1], wq[1, t + 2]
    w20, w21, w22 = wq[2, t], wq[2, t + 1], wq[2, t + 2]
    w30, w31, w32 = wq[3, t], wq[3, t + 1], wq[3, t + 2]
    for k in range(a0.shape[0]):
        x0, x1, x2 = s0[k], s1[k], s2[k]
        a0[k] += w00 * x0 + w01 * x1 + w02 * x2
        a1[k] += w10 * x0 + w11 * x1 + w12 * x2
        a2[k] += w20 * x0 + w21 * x1 + w22 * x2
        a3[k] += w30 * x0 + w31 * x1 + w32 * x2


@helper
def _four_filters_one_tap(a0, a1, a2, a3, src, offsets, wq, t):
    """``_four_filters_three_taps`` for the one tap t."""
    s0 = src[offsets[t]:]
    w0, w1, w2, w3 = wq[0, t], wq[1, t], wq[2, t], wq[3, t]
    for k in range(a0.shape[0]):
        x0 = s0[k]
        a0[k] += w0 * x0
        a1[k] += w1 * x0
        a2[k] += w2 * x0
        a3[k] += w3 * x0


@kernel
def conv_phases(planes, wq, bias, kh, kw, sh, sw, dh, dw, hph, wph, rows, lo, hi, y, first, last):
    """y[n, co, oh, ow] = clip(bias[co] + sum_{ci,i,j} wq[co, (ci*kH + i)*kW + j] * xp[n, ci, oh*sH + i*dH,
    ow*sW + j*dW], lo, hi), read from ``planes``, each image's H_ph x W_ph phase planes of xp flat (see
    the module and ``phase_planes``), with W_ph zeros after them (the garbage columns of the last row
    read them).

    ``wq`` is the filters as (C_out rounded up to 4, C_in*kH*kW), zero past
    C_out (sums computed and never stored). Task t is the tile of ``rows``
    output rows (n, tile) = divmod(t, tiles), for every filter, four at a
    time, three taps a pass. The clip compares, so NaN stays NaN.
    """
    taps = wq.shape[1]
    c_out, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    offsets = np.empty(taps, np.int64)  # where tap (ci, i, j) reads for output pixel (0, 0)
    for t in range(taps):
        ci, i, j = t // (kh * kw), (t // kw) % kh * dh, t % kw * dw
        plane = (ci * sh + i % sh) * sw + j % sw
        offsets[t] = plane * hph * wph + i // sh * wph + j // sw
    tiles = (ho + rows - 1) // rows
    acc = np.empty((4, rows * wph), np.float32)
    for task in range(first, last):
        n, tile = task // tiles, task % tiles
        oh0 = tile * rows
        count = min(rows, ho - oh0)
        src = planes[n, oh0 * wph:]
        for c0 in range(0, c_out, 4):
            a0, a1, a2, a3 = acc[0, :count * wph], acc[1, :count * wph], acc[2, :count * wph], acc[3, :count * wph]
            for f in range(4):
                acc[f, :] = bias[min(c0 + f, c_out - 1)]
            wb = wq[c0:c0 + 4]
            t = 0
            while t + 3 <= taps:
                _four_filters_three_taps(a0, a1, a2, a3, src, offsets, wb, t)
                t += 3
            while t < taps:
                _four_filters_one_tap(a0, a1, a2, a3, src, offsets, wb, t)
                t += 1
            for f in range(min(4, c_out - c0)):
                for r in range(count):
                    store_clipped(y[n, c0 + f, oh0 + r], acc[f, r * wph:r * wph + wo], lo, hi)


@kernel
def phase_planes(x, top, left, sh, sw, hph, wph, planes, first, last):
    """planes[n, ((c*sH + a)*sW + b)*H_ph*W_ph + r*W_ph + q] = xp[n, c, r*sH + a, q*sW + b], zero past xp.

    ``xp`` is ``x`` zero-padded with ``top`` rows above and ``left`` columns
    before it, and ``planes`` has room for the C*sH*sW planes of H_ph x W_ph
    and W_ph zeros after them, which the last task writes. Task t is the
    channel (n, c) = divmod(t, C).
    """
    channels, h, wd = x.shape[1], x.shape[2], x.shape[3]
    size = hph * wph
    for task in range(first, last):
        n, c = task // channels, task % channels
        for a in range(sh):
            for r in range(hph):
                src = r * sh + a - top
                for b in range(sw):
                    at = ((c * sh + a) * sw + b) * size + r * wph
                    row = planes[n, at:at + wph]
                    if src < 0 or src >= h:
                        row[:] = 0.0
                        continue
                    # Columns q0 .. q1-1 come from x, the others are padding. Sliced, then
                    # read at q*sW >= 0: an index plus a run-time offset would need a
                    # negative-index check on every read.
                    q0 = min(wph, max(0, (left - b + sw - 1) // sw))
                    q1 = max(q0, min(wph, (wd - 1 + left - b) // sw + 1))
                    xs, dst = x[n, c, src, q0 * sw + b - left:], row[q0:]
                    row[:q0] = 0.0
                    if sw == 2:  # a literal stride, which LLVM vectorises
                        for q in range(q1 - q0):
                            dst[q] = xs[2 * q]
                    else:
                        for q in range(q1 - q0):
                            dst[q] = xs[q * sw]
                    row[q1:] = 0.0
        if task == planes.shape[0] * channels - 1:
            planes[:, channels * sh * sw * size:] = 0.0
