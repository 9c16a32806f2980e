"""Training kernels: batch norm forward and backward, the col2im scatters of grad_x by columns
(``col2im``, and ``col2im_phases`` and ``col2im_wide`` where its rows are too short to vectorise),
and weight gradients four filters a pass (3x3 at stride 1, and strided from x split into phases).

Batch norm tasks are channels: a task reads and writes channel c of every
image, so no two tasks write the same memory. Sums over a plane run in
float32 (vectorised), the planes' sums in float64, so a large batch keeps its
precision. col2im tasks are (image, input channel) planes of grad_x.
"""

import numpy as np

from ._jit import helper, kernel


@helper
def _channel_sum(xf, c, n_img, chans, plane, center, square):
    """The float64 sum over channel c of the flat (N, C, H*W) ``xf`` of x - center, or of its square."""
    total = 0.0
    for n in range(n_img):
        o = (n * chans + c) * plane
        xs = xf[o:o + plane]
        s = 0.0
        for k in range(plane):
            d = xs[k] - center
            s += d * d if square else d
        total += s
    return total


@kernel
def batch_norm_train(x, gamma, beta, eps, relu, xhat, y, mean, var, first, last):
    """Channel c's batch mean and biased variance (float64, two passes, as numpy's),
    xhat = (x - mean) * inv_std and y = xhat * gamma + beta, in float32; with ``relu``,
    y = max(xhat * gamma + beta, 0).

    ``mean`` and ``var`` (C,) float64 receive the statistics.
    """
    n_img, chans = x.shape[0], x.shape[1]
    plane = x.shape[2] * x.shape[3]
    count = n_img * plane
    xf, hf, yf = x.reshape(x.size), xhat.reshape(x.size), y.reshape(x.size)
    for c in range(first, last):
        m = _channel_sum(xf, c, n_img, chans, plane, 0.0, False) / count
        v = _channel_sum(xf, c, n_img, chans, plane, m, True) / count
        mean[c], var[c] = m, v
        m32 = np.float32(m)
        inv = np.float32(1.0 / np.sqrt(v + eps))
        g, b = gamma[c], beta[c]
        for n in range(n_img):
            o = (n * chans + c) * plane
            xs = xf[o:o + plane]
            hs = hf[o:o + plane]
            ys = yf[o:o + plane]
            for k in range(plane):  # the ReLU in the same pass: a second one over ys doubled the kernel's time
                h = (xs[k] - m32) * inv
                hs[k] = h
                v = h * g + b
                ys[k] = max(v, np.float32(0.0)) if relu else v


@kernel
def batch_norm_backward(grad, xhat, inv_std, gamma, relu, out, gx, sums, first, last):
    """Batch norm's gradients for channel c: ``sums[c]`` = (sum grad, sum grad * xhat), the
    bias's and weight's gradients, and gx = gamma * inv_std * (grad - mean(grad) - xhat * mean(grad * xhat)).

    With ``relu``, the forward pass was ``batch_norm_train``'s fused ReLU, whose output is ``out``:
    grad counts only where out is above 0 (without, ``out`` may be any array of grad's shape).
    """
    n_img, chans = grad.shape[0], grad.shape[1]
    plane = grad.shape[2] * grad.shape[3]
    count = n_img * plane
    gf, hf, of, rf = grad.reshape(grad.size), xhat.reshape(grad.size), out.reshape(grad.size), gx.reshape(grad.size)
    zero = np.float32(0.0)
    for c in range(first, last):
        sg = 0.0
        sgx = 0.0
        for n in range(n_img):
            o = (n * chans + c) * plane
            gs = gf[o:o + plane]
            hs = hf[o:o + plane]
            os = of[o:o + plane]
            a = zero
            b = zero
            for k in range(plane):
                g = gs[k] if os[k] > 0 or not relu else zero
                a += g
                b += g * hs[k]
            sg += a
            sgx += b
        sums[c, 0], sums[c, 1] = sg, sgx
        mg = np.float32(sg / count)
        mgx = np.float32(sgx / count)
        scale = gamma[c] * inv_std[c]
        for n in range(n_img):
            o = (n * chans + c) * plane
            gs = gf[o:o + plane]
            hs = hf[o:o + plane]
            os = of[o:o + plane]
            res = rf[o:o + plane]
            for k in range(plane):
                g = gs[k] if os[k] > 0 or not relu else zero
                res[k] = (g - mg - hs[k] * mgx) * scale


@kernel
def col2im(cols, n0, c0, kh, kw, ho, wo, sh, sw, dh, dw, top, left, gx, first, last):
    """grad_x[n0 + t // C_g, c0 + t % C_g] = the sum of ``cols`` scattered back to the input pixels.

    ``cols`` (images, C_g * kH * kW, H_out * W_out) holds, for each input
    channel and tap (i, j), the gradient of the input pixel
    (oh*sh + i*dh - top, ow*sw + j*dw - left) that output pixel (oh, ow) read;
    taps on the padding are dropped. Task t writes one whole plane of gx.
    """
    cin_g = cols.shape[1] // (kh * kw)
    h, w = gx.shape[2], gx.shape[3]
    for t in range(first, last):
        k, c = t // cin_g, t % cin_g
        out = gx[n0 + k, c0 + c]
        out[:, :] = 0.0
        for i in range(kh):
            # Output rows whose tap i lands inside the input: 0 <= oh*sh + i*dh - top < h.
            r0 = max(0, -((i * dh - top) // sh)) if i * dh < top else 0
            r1 = min(ho, (h - 1 + top - i * dh) // sh + 1)
            for j in range(kw):
                q0 = max(0, -((j * dw - left) // sw)) if j * dw < left else 0
                q1 = min(wo, (w - 1 + left - j * dw) // sw + 1)
                src = cols[k, (c * kh + i) * kw + j]
                x0 = j * dw - left
                for oh in range(r0, r1):
                    row = out[oh * sh + i * dh - top]
                    base = oh * wo
                    if sw == 1:  # a contiguous run, vectorised
                        dst = row[q0 + x0:q1 + x0]
                        part = src[base + q0:base + q1]
                        for q in range(q1 - q0):
                            dst[q] += part[q]
                    else:
                        for ow in range(q0, q1):
                            row[ow * sw + x0] += src[base + ow]


@kernel
def col2im_wide(cols, n0, c0, kh, kw, ho, wp, dh, dw, top, left, gx, first, last):
    """``col2im`` at stride 1, from columns in the W_p-wide layout: ``cols`` (images, C_g * kH * kW,
    H_out * W_p), whose garbage columns (k % W_p >= W_out) are zeros, as ``grad_y`` widened with zeros
    gives them. W_p = W_out + dw * (kW - 1) is the padded input's width.

    Tap (i, j) then adds to the padded plane at i*dh*W_p + j*dw onwards in one contiguous run of
    H_out * W_p values (``col2im`` adds a row of W_out at a time, too short to vectorise: 16 values
    were one vector and a scalar tail), and the plane is cropped into gx once.
    """
    cin_g = cols.shape[1] // (kh * kw)
    h, w = gx.shape[2], gx.shape[3]
    length = ho * wp
    acc = np.empty((ho + dh * (kh - 1)) * wp + dw * (kw - 1), np.float32)  # the last tap runs past the plane
    for t in range(first, last):
        k, c = t // cin_g, t % cin_g
        for q in range(acc.size):
            acc[q] = 0.0
        for i in range(kh):
            for j in range(kw):
                src = cols[k, (c * kh + i) * kw + j]
                run = acc[i * dh * wp + j * dw:]
                for q in range(length):
                    run[q] += src[q]
        out = gx[n0 + k, c0 + c]
        for ih in range(h):
            row, at = out[ih], (ih + top) * wp + left
            for iw in range(w):
                row[iw] = acc[at + iw]


@kernel
def col2im_phases(cols, n0, c0, kh, kw, ho, wo, sh, sw, dh, dw, top, left, gx, first, last):
    """``col2im`` for strided windows that overlap: the same sums, in vectorised passes.

    At a stride above 1 ``col2im`` adds one value at a time, every sw-th
    pixel of a row (3x3 at stride 2: 1.5 ms a batch of 32 x 16 planes of 32x32,
    against 0.75 here). Here the input pixel (a*sh + pr, b*sw + pc) is summed
    in ``acc[pr, pc, a, b]`` (shifted past the padding), one plane per phase of
    the stride: a tap (i, j) reaches a single phase, at a fixed offset, so its
    sums are contiguous runs along rows; the phases are interleaved into gx
    once at the end, a store a pixel.
    """
    cin_g = cols.shape[1] // (kh * kw)
    h, w = gx.shape[2], gx.shape[3]
    lh, lw = (top + sh - 1) // sh, (left + sw - 1) // sw
    acc = np.empty((sh, sw, lh + ho + (kh - 1) * dh // sh + 1, lw + wo + (kw - 1) * dw // sw + 1), np.float32)
    for t in range(first, last):
        k, c = t // cin_g, t % cin_g
        acc[:] = 0.0
        for i in range(kh):
            pr = (i * dh - top) % sh
            a0 = (i * dh - top - pr) // sh + lh
            for j in range(kw):
                pc = (j * dw - left) % sw
                b0 = (j * dw - left - pc) // sw + lw
                src = cols[k, (c * kh + i) * kw + j]
                for oh in range(ho):
                    dst = acc[pr, pc, a0 + oh, b0:b0 + wo]
                    part = src[oh * wo:(oh + 1) * wo]
                    for q in range(wo):
                        dst[q] += part[q]
        out = gx[n0 + k, c0 + c]
        for ih in range(h):
            pr, a = ih % sh, ih // sh + lh
            row = out[ih]
            if sw == 1:
                row[:] = acc[pr, 0, a, lw:lw + w]
            elif sw == 2:  # a literal stride: the interleave of two phases vectorises
                even, odd = acc[pr, 0, a, lw:], acc[pr, 1, a, lw:]
                for b in range(w // 2):
                    row[2 * b] = even[b]
                    row[2 * b + 1] = odd[b]
                if w % 2:
                    row[w - 1] = even[w // 2]
            else:
                for iw in range(w):
                    row[iw] = acc[pr, iw % sw, a, iw // sw + lw]


@helper
def _dots_4x3(a, b, c, d, x0, x1, x2, n, sums, ci, t):
    """sums[p, ci, t + q] += the dot product of filter p's grad_y (a, b, c, d) with x_q over n values:
    twelve sums (four filters x three taps) in registers, so each value loaded serves three taps
    or four filters. Sums of the float32 products in float32, added to the float64 ``sums``."""
    s00 = s01 = s02 = s10 = s11 = s12 = np.float32(0.0)
    s20 = s21 = s22 = s30 = s31 = s32 = np.float32(0.0)
    for k in range(n):
        u0, u1, u2 = x0[k], x1[k], x2[k]
        s00 += a[k] * u0
        s01 += a[k] * u1
        s02 += a[k] * u2
        s10 += b[k] * u0
        s11 += b[k] * u1
        s12 += b[k] * u2
        s20 += c[k] * u0
        s21 += c[k] * u1
        s22 += c[k] * u2
        s30 += d[k] * u0
        s31 += d[k] * u1
        s32 += d[k] * u2
    sums[0, ci, t] += s00
    sums[0, ci, t + 1] += s01
    sums[0, ci, t + 2] += s02
    sums[1, ci, t] += s10
    sums[1, ci, t + 1] += s11
    sums[1, ci, t + 2] += s12
    sums[2, ci, t] += s20
    sums[2, ci, t + 1] += s21
    sums[2, ci, t + 2] += s22
    sums[3, ci, t] += s30
    sums[3, ci, t + 1] += s31
    sums[3, ci, t + 2] += s32


@kernel
def split_phases(x, top, left, sh, sw, hq, wq, xq, first, last):
    """x padded by (top, left), split into the phases of the stride (sh, sw): padded pixel (r, q) of
    image n, channel c goes to ``xq[c, (r % sh) * sw + q % sw, n * H_q * W_q + (r // sh) * W_q + q // sw]``
    if r // sh < H_q and q // sw < W_q. ``xq`` holds zeros elsewhere (the caller's). Task t is the
    plane (n, c) = divmod(t, C).

    At sw = 2 both phases of a row are written in one loop, a pair of interleaved loads that LLVM
    vectorises (a loop a phase: 0.81 ms for 32 x 16 planes of 32x32, against 0.37).
    """
    chans, h, w = x.shape[1], x.shape[2], x.shape[3]
    length = xq.shape[2]
    flat = xq.reshape(xq.size)
    rows = min(h, hq * sh - top)  # rows below every window are never read
    for t in range(first, last):
        n, c = t // chans, t % chans
        plane = x[n, c]
        base = n * hq * wq
        for ih in range(rows):
            r = ih + top
            row = (c * sh * sw + r % sh * sw) * length + base + r // sh * wq  # where phase (r % sh, 0) has row r
            src = plane[ih]
            done = 0
            if sw == 2:
                even, odd = row + left % 2 * length + left // 2, row + (left + 1) % 2 * length + (left + 1) // 2
                done = max(0, min(w // 2, wq - (left + 1) // 2))
                for b in range(done):
                    flat[even + b] = src[2 * b]
                    flat[odd + b] = src[2 * b + 1]
                done *= 2
            for iw in range(done, w):
                q = iw + left
                if q // sw < wq:
                    flat[row + q % sw * length + q // sw] = src[iw]


@kernel
def grad_weight_phases(xq, gys, kh, kw, sh, sw, wq, tile, gw, first, last):
    """gw[co, ci, i, j] = sum_k gys[co, k] * xq[ci, (i % sh) * sw + j % sw, k + (i // sh) * W_q + j // sw]:
    the weight gradient at stride (sh, sw) from x split by ``split_phases`` and grad_y laid out as
    its planes (zeros past H_out and W_out), four filters a task.

    Taps go three at a time: twelve dot products (four filters x three taps) in registers, so each
    value of grad_y loaded serves three taps, as ``conv3_grad_weight_quad``'s. ``gys`` has the
    filters padded to a multiple of four; a tap past the last is a repeat of it, its sums dropped.
    Sums run over tiles of ``tile`` values in float32, the tiles' in float64.
    """
    c_out, cin = gw.shape[0], gw.shape[1]
    total = gys.shape[1]
    taps = kh * kw
    sums = np.empty((4, cin, taps + 2), np.float64)
    for task in range(first, last):
        co = 4 * task
        sums[:] = 0.0
        for k0 in range(0, total, tile):
            n = min(total, k0 + tile) - k0
            a, b, c, d = gys[co, k0:k0 + n], gys[co + 1, k0:k0 + n], gys[co + 2, k0:k0 + n], gys[co + 3, k0:k0 + n]
            for ci in range(cin):
                for t0 in range(0, taps, 3):
                    i, j = t0 // kw, t0 % kw
                    at = i // sh * wq + j // sw + k0
                    x0 = xq[ci, i % sh * sw + j % sw, at:at + n]
                    i, j = min(t0 + 1, taps - 1) // kw, min(t0 + 1, taps - 1) % kw
                    at = i // sh * wq + j // sw + k0
                    x1 = xq[ci, i % sh * sw + j % sw, at:at + n]
                    i, j = min(t0 + 2, taps - 1) // kw, min(t0 + 2, taps - 1) % kw
                    at = i // sh * wq + j // sw + k0
                    x2 = xq[ci, i % sh * sw + j % sw, at:at + n]
                    _dots_4x3(a, b, c, d, x0, x1, x2, n, sums, ci, t0)
        for p in range(min(4, c_out - co)):
            for ci in range(cin):
                for t in range(taps):
                    gw[co + p, ci, t // kw, t % kw] = sums[p, ci, t]


@kernel
def conv3_grad_weight_quad(xs, gys, dh, dw, groups, rows, gw, first, last):
    """``kernels.conv.conv3_grad_weight_stacked`` with four filters a pass: twelve dot products
    (four filters x three taps of a kernel row) in registers, so each pixel of x loaded serves four
    filters. ``gys`` pads each group's filters to a multiple of four; task t is filters 4t .. 4t+3."""
    c_out, cin_g, kh = gw.shape[0], gw.shape[1], gw.shape[2]
    cout_g = c_out // groups
    cout_pad = gys.shape[0] // groups
    wp = gys.shape[3]
    total = gys.shape[1] * gys.shape[2] * wp
    sums = np.empty((4, cin_g, kh * 3), np.float64)
    for task in range(first, last):
        co = task * 4
        g0 = gys[co].reshape(total)
        g1 = gys[co + 1].reshape(total)
        g2 = gys[co + 2].reshape(total)
        g3 = gys[co + 3].reshape(total)
        sums[:] = 0.0
        for k0 in range(0, total, rows * wp):
            for ci in range(cin_g):
                run = xs[co // cout_pad * cin_g + ci].reshape(total)
                for i in range(kh):
                    off = i * dh * wp
                    k1 = max(k0, min(k0 + rows * wp, total - off - 2 * dw))
                    a, b, c, d = g0[k0:k1], g1[k0:k1], g2[k0:k1], g3[k0:k1]
                    x0 = run[off + k0:off + k1]
                    x1 = run[off + dw + k0:off + dw + k1]
                    x2 = run[off + 2 * dw + k0:off + 2 * dw + k1]
                    _dots_4x3(a, b, c, d, x0, x1, x2, k1 - k0, sums, ci, 3 * i)
        for p in range(4):
            f = (co + p) % cout_pad
            if f < cout_g:
                gw[(co + p) // cout_pad * cout_g + f] = sums[p].reshape(cin_g, kh, 3)
