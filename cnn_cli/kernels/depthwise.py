"""The depthwise convolution kernel: one filter per channel (groups = C_in = C_out), as in MobileNets.

The general grouped kernels would treat each channel as a group of one
filter, paying per group for set-up meant for many filters (and, on the
filter-blocked path, for three zero filters of each block of four); here a
task is one plane, worked a row at a time. Notation as in ``kernels.conv``.
"""

import numpy as np

from ._jit import kernel


@kernel
def conv_depthwise(xp, w, bias, sh, sw, dh, dw, y, first, last):
    """y[n,c,oh,ow] = bias[c] + sum_{i,j} w[c,0,i,j] * xp[n, c, oh*sh+i*dh, ow*sw+j*dw].

    Task t is the plane (n, c) = divmod(t, C). A row's sums go to a
    task-local buffer, which LLVM knows aliases nothing, so the loop along
    the row is vectorised.
    """
    channels, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    acc = np.empty(wo, np.float32)
    for task in range(first, last):
        n, c = task // channels, task % channels
        for oh in range(ho):
            acc[:] = bias[c]
            for i in range(kh):
                xrow = xp[n, c, oh * sh + i * dh]
                for j in range(kw):
                    wv = w[c, 0, i, j]
                    off = j * dw
                    if sw == 1:
                        xs = xrow[off:off + wo]
                        for k in range(wo):
                            acc[k] += wv * xs[k]
                    else:
                        for k in range(wo):
                            acc[k] += wv * xrow[off + k * sw]
            y[n, c, oh, :] = acc
