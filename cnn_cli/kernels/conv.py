"""Convolution kernels (cross-correlation, as in every deep-learning framework).

All kernels work on an input ``xp`` that is already padded, so they only know
"valid" correlation with stride and dilation; padding modes live in
``cnn_cli.functional``. Notation: x is (N, C_in, H, W), w is
(C_out, C_in/groups, kH, kW), y is (N, C_out, H_out, W_out).
"""

import numpy as np
from ._jit import kernel


#: Output pixels per task of ``conv_direct``: one tile's accumulators for 16
#: filters stay in L1 (16 x 256 x 4 bytes = 16 KiB).
ROW_TILE = 256


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
def conv_direct_small(xp, w, bias, dh, dw, groups, y, first, last):
    """``conv_direct`` for stride 1 and narrow maps; task t is the plane (n, g) = divmod(t, groups).

    Short rows make short inner loops, whose set-up costs more than their
    work. With stride 1, though, output pixel (oh, ow) reads the input plane
    at flat offset oh*Wp + ow + i*dh*Wp + j*dw, so a whole plane is one long
    vectorised pass per tap, computed Wp wide; the Wp - W_out columns past
    each row's end are garbage and dropped when copying out.
    """
    c_out, cin_g, kh, kw = w.shape
    ho, wo = y.shape[2], y.shape[3]
    hp, wp = xp.shape[2], xp.shape[3]
    cout_g = c_out // groups
    span = ho * wp - (kw - 1) * dw  # past this, reads would leave the plane (only garbage columns)
    acc = np.empty((cout_g, ho * wp), np.float32)
    for task in range(first, last):
        g = task % groups
        n = task // groups
        for co in range(cout_g):
            acc[co, :] = bias[g * cout_g + co]
        for ci in range(cin_g):
            plane = xp[n, g * cin_g + ci].reshape(hp * wp)
            for i in range(kh):
                for j in range(kw):
                    xs = plane[i * dh * wp + j * dw:i * dh * wp + j * dw + span]
                    for co in range(cout_g):
                        wv = w[g * cout_g + co, ci, i, j]
                        a = acc[co]
                        for k in range(span):
                            a[k] += wv * xs[k]
        for co in range(cout_g):
            for oh in range(ho):
                y[n, g * cout_g + co, oh, :] = acc[co, oh * wp:oh * wp + wo]


@kernel
def im2col(xp, n0, c0, kh, kw, sh, sw, dh, dw, ho, wo, col, first, last):
    """col[b, (ci*kH + i)*kW + j, oh*W_out + ow] = xp[n0+b, c0+ci, oh*sh+i*dh, ow*sw+j*dw].

    Lays out every receptive field as a column, so a convolution becomes one
    matrix product (filters x depth) @ (depth x pixels) that BLAS runs near peak.
    Task t fills row t % depth for image t // depth.
    """
    depth = col.shape[1]
    for task in range(first, last):
        b = task // depth
        r = task % depth
        ci = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for oh in range(ho):
            xrow = xp[n0 + b, c0 + ci, oh * sh + i * dh]
            dst = col[b, r, oh * wo:(oh + 1) * wo]
            off = j * dw
            for ow in range(wo):
                dst[ow] = xrow[off + ow * sw]


@kernel
def conv_grad_weight_small(xp, gy_wide, dh, dw, groups, gw, first, last):
    """``conv_grad_weight_direct`` for stride 1 and narrow maps; task t is the pair (co, ci) = divmod(t, C_in/groups).

    ``gy_wide`` is grad_y laid out Wp wide with zeros past each row's end
    (see ``conv_direct_small``), so every tap is one long dot product per image.
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
