"""Slow, obviously correct reference implementations of the engine's ops.

Everything here follows the definitions of ``torch.nn.functional`` directly:
plain Python loops over every output pixel and every kernel tap, in float64.
Inputs are first cast to float32 (as the engine does) so that the reference
sees exactly the numbers the engine sees.

Argument checking is done here too, independently of the engine, so that
tests can decide on their own whether a call is valid:
``conv_args`` / ``pool_args`` normalise the arguments the torch way and raise
``InvalidArguments`` when torch (or the engine's contract) rejects them;
``conv_args_or_none`` / ``pool_args_or_none`` return ``None`` instead.

The padding modes are written as an index map from a coordinate of the padded
image to the source pixel it copies (or ``None`` for a zero):

- zeros:     outside -> None
- reflect:   -1 -> 1, -2 -> 2, H -> H-2          (edge pixel not repeated)
- replicate: clamp to [0, H-1]
- circular:  i mod H
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple

import numpy as np

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class InvalidArguments(Exception):
    """The arguments are rejected by torch / the engine contract."""


def _as_int(value, name):
    if isinstance(value, bool):
        raise InvalidArguments(f"{name} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidArguments(f"{name} must be an int or a pair of ints, got {value!r}") from None


def pair(value, name):
    """int -> (v, v); pair -> tuple; anything else -> InvalidArguments."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise InvalidArguments(f"{name} must have 2 elements, got {value!r}")
        return (_as_int(value[0], name), _as_int(value[1], name))
    v = _as_int(value, name)
    return (v, v)


def _shape(a):
    return tuple(np.shape(a))


# --------------------------------------------------------------------------
# Convolution arguments
# --------------------------------------------------------------------------


class ConvArgs(NamedTuple):
    stride: tuple  # (sH, sW)
    dilation: tuple  # (dH, dW)
    pads: tuple  # (top, bottom, left, right)
    groups: int
    padding_mode: str
    out_shape: tuple  # (N, C_out, H_out, W_out)


def conv_args(x_shape, w_shape, bias_shape=None, *, stride=1, padding=0, dilation=1,
              groups=1, padding_mode="zeros"):
    """Normalise conv2d arguments like torch; raise InvalidArguments if invalid.

    Output size (torch docs):
        H_out = floor((H + pad_top + pad_bottom - dilation * (kH - 1) - 1) / stride) + 1
    """
    x_shape, w_shape = tuple(x_shape), tuple(w_shape)
    if len(x_shape) != 4:
        raise InvalidArguments("x must be 4-D")
    if len(w_shape) != 4:
        raise InvalidArguments("weight must be 4-D")
    if 0 in x_shape:
        raise InvalidArguments("x is empty")
    if 0 in w_shape:
        raise InvalidArguments("weight is empty")
    n, c_in, h, w = x_shape
    c_out, c_in_g, kh, kw = w_shape
    if bias_shape is not None and tuple(bias_shape) != (c_out,):
        raise InvalidArguments("bias must be 1-D of length C_out")

    groups = _as_int(groups, "groups")
    if groups < 1:
        raise InvalidArguments("groups must be >= 1")
    if c_out % groups != 0:
        raise InvalidArguments("groups must divide C_out")
    if c_in % groups != 0:
        raise InvalidArguments("groups must divide C_in")
    if c_in != c_in_g * groups:
        raise InvalidArguments("x channels != weight.shape[1] * groups")

    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    if min(stride) < 1:
        raise InvalidArguments("stride must be >= 1")
    if min(dilation) < 1:
        raise InvalidArguments("dilation must be >= 1")

    if isinstance(padding, str):
        if padding == "valid":
            pads = (0, 0, 0, 0)
        elif padding == "same":
            if stride != (1, 1):
                raise InvalidArguments("padding='same' needs stride 1")
            total_h = dilation[0] * (kh - 1)
            total_w = dilation[1] * (kw - 1)
            # torch: left/top gets total // 2, right/bottom the rest.
            pads = (total_h // 2, total_h - total_h // 2, total_w // 2, total_w - total_w // 2)
        else:
            raise InvalidArguments(f"unknown padding {padding!r}")
    elif isinstance(padding, (tuple, list)) and len(padding) == 4:  # (top, bottom, left, right)
        pads = pair(padding[:2], "padding") + pair(padding[2:], "padding")
        if min(pads) < 0:
            raise InvalidArguments("padding must be >= 0")
    else:
        ph, pw = pair(padding, "padding")
        if ph < 0 or pw < 0:
            raise InvalidArguments("padding must be >= 0")
        pads = (ph, ph, pw, pw)

    if padding_mode not in PADDING_MODES:
        raise InvalidArguments(f"unknown padding_mode {padding_mode!r}")
    top, bottom, left, right = pads
    if padding_mode == "reflect":
        if max(top, bottom) >= h or max(left, right) >= w:
            raise InvalidArguments("reflect padding must be < input size")
    if padding_mode == "circular":
        if max(top, bottom) > h or max(left, right) > w:
            raise InvalidArguments("circular padding must be <= input size")

    hp, wp = h + top + bottom, w + left + right
    eff_h = dilation[0] * (kh - 1) + 1
    eff_w = dilation[1] * (kw - 1) + 1
    if eff_h > hp or eff_w > wp:
        raise InvalidArguments("dilated kernel larger than padded input")
    h_out = (hp - eff_h) // stride[0] + 1
    w_out = (wp - eff_w) // stride[1] + 1
    return ConvArgs(stride, dilation, pads, groups, padding_mode, (n, c_out, h_out, w_out))


def conv_args_or_none(*args, **kwargs):
    try:
        return conv_args(*args, **kwargs)
    except InvalidArguments:
        return None


# --------------------------------------------------------------------------
# Padding by index mapping
# --------------------------------------------------------------------------


def source_index(p, before, size, mode):
    """Source pixel copied into padded coordinate ``p`` (None means zero)."""
    i = p - before
    if 0 <= i < size:
        return i
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(i, 0), size - 1)
    if mode == "circular":
        return i % size
    if mode == "reflect":
        if i < 0:
            i = -i
        if i >= size:
            i = 2 * (size - 1) - i
        assert 0 <= i < size, "reflect padding wider than the input"
        return i
    raise ValueError(mode)


def pad_image(x, pads, mode):
    """Pad the last two axes of float64 ``x`` (N, C, H, W) by index mapping."""
    top, bottom, left, right = pads
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + top + bottom, w + left + right), dtype=np.float64)
    for i in range(out.shape[2]):
        si = source_index(i, top, h, mode)
        if si is None:
            continue
        for j in range(out.shape[3]):
            sj = source_index(j, left, w, mode)
            if sj is None:
                continue
            for b in range(n):
                for ch in range(c):
                    out[b, ch, i, j] = x[b, ch, si, sj]
    return out


def fold_padding(grad_padded, pads, h, w, mode):
    """Adjoint of ``pad_image``: add every padded pixel's gradient onto its source."""
    top, bottom, left, right = pads
    n, c, hp, wp = grad_padded.shape
    out = np.zeros((n, c, h, w), dtype=np.float64)
    for i in range(hp):
        si = source_index(i, top, h, mode)
        if si is None:
            continue
        for j in range(wp):
            sj = source_index(j, left, w, mode)
            if sj is None:
                continue
            for b in range(n):
                for ch in range(c):
                    out[b, ch, si, sj] += grad_padded[b, ch, i, j]
    return out


def _f64(a):
    """Cast like the engine (to float32), then widen for exact reference sums.

    float64 input is kept as it is, so that finite-difference checks can
    perturb it by amounts smaller than float32 resolution.
    """
    a = np.asarray(a)
    if a.dtype == np.float64:
        return a.copy()
    return a.astype(np.float32).astype(np.float64)


# --------------------------------------------------------------------------
# Convolution
# --------------------------------------------------------------------------


def naive_conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros"):
    """y[n, co, oh, ow] = b[co] + sum_{ci, kh, kw} w[co, ci, kh, kw] *
    xpad[n, g*Cin_g + ci, oh*sH + kh*dH, ow*sW + kw*dW], g = co // (C_out/groups)."""
    a = conv_args(_shape(x), _shape(weight), None if bias is None else _shape(bias),
                  stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=padding_mode)
    x, weight = _f64(x), _f64(weight)
    bias_l = [0.0] * weight.shape[0] if bias is None else _f64(bias).tolist()
    xp = pad_image(x, a.pads, a.padding_mode).tolist()
    wl = weight.tolist()
    n, c_out, h_out, w_out = a.out_shape
    _, c_in_g, kh, kw = weight.shape
    c_out_g = c_out // a.groups
    (sh, sw), (dh, dw) = a.stride, a.dilation
    y = np.zeros(a.out_shape, dtype=np.float64)
    for b in range(n):
        for co in range(c_out):
            g = co // c_out_g
            for oh in range(h_out):
                for ow in range(w_out):
                    acc = bias_l[co]
                    for ci in range(c_in_g):
                        plane = xp[b][g * c_in_g + ci]
                        for i in range(kh):
                            row = plane[oh * sh + i * dh]
                            for j in range(kw):
                                acc += wl[co][ci][i][j] * row[ow * sw + j * dw]
                    y[b, co, oh, ow] = acc
    return y


def naive_conv2d_depthwise(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """One filter per channel, the engine's depthwise path:
    y[n, c, oh, ow] = b[c] + sum_{i, j} w[c, 0, i, j] * xpad[n, c, oh*sH + i*dH, ow*sW + j*dW].

    ``weight`` must be (C, 1, kH, kW) for an input of C channels (a depthwise
    bank: ``naive_conv2d`` with ``groups=C``); zero padding only.
    """
    x_shape, w_shape = _shape(x), _shape(weight)
    if len(x_shape) != 4 or len(w_shape) != 4 or w_shape[1] != 1 or w_shape[0] != x_shape[1]:
        raise InvalidArguments(f"a depthwise conv needs weight (C, 1, kH, kW) for x (N, C, H, W), "
                               f"got {w_shape} for {x_shape}")
    a = conv_args(x_shape, w_shape, None if bias is None else _shape(bias), stride=stride,
                  padding=padding, dilation=dilation, groups=x_shape[1])
    xp = pad_image(_f64(x), a.pads, "zeros")
    w = _f64(weight)
    b = np.zeros(w_shape[0]) if bias is None else _f64(bias)
    (sh, sw), (dh, dw) = a.stride, a.dilation
    n, c, h_out, w_out = a.out_shape
    y = np.zeros(a.out_shape, dtype=np.float64)
    for k in range(n):
        for ch in range(c):
            for oh in range(h_out):
                for ow in range(w_out):
                    window = xp[k, ch, oh * sh:oh * sh + dh * (w_shape[2] - 1) + 1:dh,
                                ow * sw:ow * sw + dw * (w_shape[3] - 1) + 1:dw]
                    y[k, ch, oh, ow] = b[ch] + float((window * w[ch, 0]).sum())
    return y


def naive_conv2d_winograd(x, weight, bias=None, *, padding=0, padding_mode="zeros", clip=(-np.inf, np.inf)):
    """The engine's Winograd path, from its definition (Lavin and Gray, F(4x4, 3x3)), in float64:
    a 3x3 correlation at stride 1, groups 1, computed per 4x4 output tile as
    A^T [sum over ci of (G w[co, ci] G^T) * (B^T d[ci] B)] A, plus bias, clipped to ``clip``.

    The input is zero-extended below and right so that every tile's 6x6 window exists; outputs
    past the real ones are dropped. It agrees with ``naive_conv2d`` up to rounding.
    """
    a = conv_args(_shape(x), _shape(weight), None if bias is None else _shape(bias), padding=padding,
                  padding_mode=padding_mode)
    if _shape(weight)[2:] != (3, 3):
        raise InvalidArguments(f"the Winograd path takes 3x3 filters, not {_shape(weight)}")
    bt = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
    g = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
    at = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
    w = _f64(weight)
    b = np.zeros(w.shape[0]) if bias is None else _f64(bias)
    xp = pad_image(_f64(x), a.pads, a.padding_mode)
    n, c_out, h_out, w_out = a.out_shape
    th, tw = -(-h_out // 4), -(-w_out // 4)
    big = np.zeros((n, xp.shape[1], max(xp.shape[2], 4 * th + 2), max(xp.shape[3], 4 * tw + 2)))
    big[:, :, :xp.shape[2], :xp.shape[3]] = xp
    u = np.einsum("ai,ocij,bj->ocab", g, w, g)  # (C_out, C_in, 6, 6)
    y = np.zeros((n, c_out, 4 * th, 4 * tw))
    for k in range(n):
        for r in range(th):
            for q in range(tw):
                d = big[k, :, 4 * r:4 * r + 6, 4 * q:4 * q + 6]
                v = np.einsum("ai,cij,bj->cab", bt, d, bt)
                m = np.einsum("ocab,cab->oab", u, v)
                y[k, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] = np.einsum("ia,oab,jb->oij", at, m, at)
    y = y[:, :, :h_out, :w_out] + b[None, :, None, None]
    return np.clip(y, *clip)


def naive_conv2d_phases(x, weight, bias=None, *, stride=1, padding=0, dilation=1, padding_mode="zeros",
                        clip=(-np.inf, np.inf)):
    """The engine's stem path, from its definition, in float64: the padded input split into phase planes
    P[n, c, a, b, r, q] = xpad[n, c, r*sH + a, q*sW + b] (zero past xpad), and
    y[n, co, oh, ow] = clip(b[co] + sum_{ci, i, j} w[co, ci, i, j] * P[n, ci, i*dH % sH, j*dW % sW,
    oh + i*dH // sH, ow + j*dW // sW], clip). Groups 1; it agrees with ``naive_conv2d`` up to rounding.
    """
    a = conv_args(_shape(x), _shape(weight), None if bias is None else _shape(bias), stride=stride,
                  padding=padding, dilation=dilation, padding_mode=padding_mode)
    xp = pad_image(_f64(x), a.pads, a.padding_mode)
    w = _f64(weight)
    b = np.zeros(w.shape[0]) if bias is None else _f64(bias)
    (sh, sw), (dh, dw) = a.stride, a.dilation
    n, c, hp, wp = xp.shape
    phases = np.zeros((n, c, sh, sw, -(-hp // sh), -(-wp // sw)))
    for r in range(hp):
        for q in range(wp):
            phases[:, :, r % sh, q % sw, r // sh, q // sw] = xp[:, :, r, q]
    _, c_out, h_out, w_out = a.out_shape
    y = np.zeros(a.out_shape)
    for co in range(c_out):
        y[:, co] = b[co]
        for ci in range(c):
            for i in range(w.shape[2]):
                for j in range(w.shape[3]):
                    r0, q0 = i * dh // sh, j * dw // sw
                    y[:, co] += w[co, ci, i, j] * phases[:, ci, i * dh % sh, j * dw % sw,
                                                         r0:r0 + h_out, q0:q0 + w_out]
    return np.clip(y, *clip)


def naive_conv2d_backward(x, weight, grad_y, *, stride=1, padding=0, dilation=1, groups=1,
                          padding_mode="zeros"):
    """Gradients of sum(grad_y * conv2d(x, weight, bias)) by the scatter definition.

    Every (output pixel, tap) pair adds grad_y * w into the padded input's
    gradient; the padded gradient is then folded back onto the source pixels.
    Returns (grad_x, grad_weight, grad_bias) in float64.
    """
    a = conv_args(_shape(x), _shape(weight), None, stride=stride, padding=padding,
                  dilation=dilation, groups=groups, padding_mode=padding_mode)
    if _shape(grad_y) != a.out_shape:
        raise InvalidArguments(f"grad_y must have shape {a.out_shape}")
    x, weight, grad_y = _f64(x), _f64(weight), _f64(grad_y)
    xp = pad_image(x, a.pads, a.padding_mode)
    xpl, wl, gyl = xp.tolist(), weight.tolist(), grad_y.tolist()
    n, c_out, h_out, w_out = a.out_shape
    _, c_in_g, kh, kw = weight.shape
    c_out_g = c_out // a.groups
    (sh, sw), (dh, dw) = a.stride, a.dilation

    grad_xp = np.zeros(xp.shape, dtype=np.float64).tolist()
    grad_w = np.zeros(weight.shape, dtype=np.float64)
    grad_b = np.zeros(c_out, dtype=np.float64)
    for b in range(n):
        for co in range(c_out):
            g = co // c_out_g
            for oh in range(h_out):
                for ow in range(w_out):
                    gy = gyl[b][co][oh][ow]
                    grad_b[co] += gy
                    for ci in range(c_in_g):
                        cx = g * c_in_g + ci
                        for i in range(kh):
                            r = oh * sh + i * dh
                            for j in range(kw):
                                s = ow * sw + j * dw
                                grad_xp[b][cx][r][s] += gy * wl[co][ci][i][j]
                                grad_w[co, ci, i, j] += gy * xpl[b][cx][r][s]
    grad_x = fold_padding(np.array(grad_xp), a.pads, x.shape[2], x.shape[3], a.padding_mode)
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------


class PoolArgs(NamedTuple):
    kernel_size: tuple
    stride: tuple
    padding: tuple
    out_shape: tuple


def pool_args(x_shape, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Normalise pooling arguments like torch; raise InvalidArguments.

    H_out = floor((H + 2 * pad - kH) / sH) + 1, with pad <= kH / 2. In ceil
    mode, ATen's ``pooling_output_shape``: ceil instead of floor, then one
    less if the last window would start past the input and its top padding.
    """
    x_shape = tuple(x_shape)
    if len(x_shape) != 4:
        raise InvalidArguments("x must be 4-D")
    if 0 in x_shape:
        raise InvalidArguments("x is empty")
    k = pair(kernel_size, "kernel_size")
    s = k if stride is None else pair(stride, "stride")
    p = pair(padding, "padding")
    if min(k) < 1:
        raise InvalidArguments("kernel_size must be >= 1")
    if min(s) < 1:
        raise InvalidArguments("stride must be >= 1")
    if min(p) < 0:
        raise InvalidArguments("padding must be >= 0")
    if 2 * p[0] > k[0] or 2 * p[1] > k[1]:
        raise InvalidArguments("padding must be <= kernel_size / 2")
    n, c, h, w = x_shape
    hp, wp = h + 2 * p[0], w + 2 * p[1]
    if k[0] > hp or k[1] > wp:
        raise InvalidArguments("window larger than padded input")
    sizes = []
    for size, kk, ss, pp in zip((h, w), k, s, p):
        o = (size + 2 * pp - kk + (ss - 1 if ceil_mode else 0)) // ss + 1
        if ceil_mode and (o - 1) * ss >= size + pp:
            o -= 1
        sizes.append(o)
    return PoolArgs(k, s, p, (n, c, *sizes))


def pool_args_or_none(*args, **kwargs):
    try:
        return pool_args(*args, **kwargs)
    except InvalidArguments:
        return None


def _window(o, stride, pad, k, size):
    """In-bounds source rows of window ``o`` (padding contributes -inf / 0)."""
    start = o * stride - pad
    return [i for i in range(start, start + k) if 0 <= i < size]


def _argmax_window(plane, rows, cols):
    """First maximum in row-major order; a NaN wins (torch CPU: val > max || isnan(val))."""
    best, best_at = -math.inf, (rows[0], cols[0])
    for i in rows:
        for j in cols:
            v = plane[i][j]
            if v > best or math.isnan(v):
                best, best_at = v, (i, j)
    return best, best_at


def _pool_windows(a, h, w):
    """Every output position (b, ch, oh, ow) of a pooling call with its in-bounds source rows and cols."""
    n, c, h_out, w_out = a.out_shape
    for b in range(n):
        for ch in range(c):
            for oh in range(h_out):
                rows = _window(oh, a.stride[0], a.padding[0], a.kernel_size[0], h)
                for ow in range(w_out):
                    cols = _window(ow, a.stride[1], a.padding[1], a.kernel_size[1], w)
                    yield (b, ch, oh, ow), rows, cols


def _pool_grad_args(x, grad_y, kernel_size, stride, padding):
    a = pool_args(_shape(x), kernel_size, stride, padding)
    if _shape(grad_y) != a.out_shape:
        raise InvalidArguments(f"grad_y must have shape {a.out_shape}")
    return a, _f64(grad_y)


def naive_max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Windows past the input (padding, ceil mode's last ones) take only the pixels inside it."""
    a = pool_args(_shape(x), kernel_size, stride, padding, ceil_mode)
    xl = _f64(x).tolist()
    y = np.zeros(a.out_shape, dtype=np.float64)
    for (b, ch, oh, ow), rows, cols in _pool_windows(a, *_shape(x)[2:]):
        y[b, ch, oh, ow] = _argmax_window(xl[b][ch], rows, cols)[0]
    return y


def naive_max_pool2d_backward(x, grad_y, kernel_size, stride=None, padding=0):
    a, grad_y = _pool_grad_args(x, grad_y, kernel_size, stride, padding)
    xl = _f64(x).tolist()
    gx = np.zeros(_shape(x), dtype=np.float64)
    for (b, ch, oh, ow), rows, cols in _pool_windows(a, *_shape(x)[2:]):
        i, j = _argmax_window(xl[b][ch], rows, cols)[1]
        gx[b, ch, i, j] += grad_y[b, ch, oh, ow]
    return gx


def naive_avg_pool2d(x, kernel_size, stride=None, padding=0):
    """count_include_pad=True: the divisor is always kH * kW."""
    a = pool_args(_shape(x), kernel_size, stride, padding)
    xl = _f64(x).tolist()
    div = a.kernel_size[0] * a.kernel_size[1]
    y = np.zeros(a.out_shape, dtype=np.float64)
    for (b, ch, oh, ow), rows, cols in _pool_windows(a, *_shape(x)[2:]):
        y[b, ch, oh, ow] = sum(xl[b][ch][i][j] for i in rows for j in cols) / div
    return y


def naive_avg_pool2d_backward(x, grad_y, kernel_size, stride=None, padding=0):
    a, grad_y = _pool_grad_args(x, grad_y, kernel_size, stride, padding)
    div = a.kernel_size[0] * a.kernel_size[1]
    gx = np.zeros(_shape(x), dtype=np.float64)
    for (b, ch, oh, ow), rows, cols in _pool_windows(a, *_shape(x)[2:]):
        for i in rows:
            for j in cols:
                gx[b, ch, i, j] += grad_y[b, ch, oh, ow] / div
    return gx


def naive_prelu(x, weight):
    """torch.nn.PReLU: x where x > 0, else weight[c] * x (c the index on axis 1; one weight for all)."""
    x = np.asarray(x, dtype=np.float32)
    w = np.asarray(weight, dtype=np.float32).reshape(-1)
    if x.ndim < 2 or w.size not in (1, x.shape[1]):
        raise InvalidArguments("x must be (N, C, ...) and weight hold 1 or C slopes")
    y = np.empty_like(x)
    for index in np.ndindex(x.shape):
        v = x[index]
        y[index] = v if v > 0 else w[index[1] if w.size > 1 else 0] * v
    return y


# --------------------------------------------------------------------------
# Batch normalisation in training
# --------------------------------------------------------------------------


def naive_batch_norm_train(x, weight, bias, eps):
    """torch.nn.functional.batch_norm with the batch's statistics, by its definition, in float64:
    returns (y, xhat, mean, biased var), xhat = (x - mean) / sqrt(var + eps) over (N, H, W)."""
    x = _f64(x)
    mean = x.mean(axis=(0, 2, 3))
    var = ((x - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    xhat = (x - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
    return xhat * _f64(weight)[None, :, None, None] + _f64(bias)[None, :, None, None], xhat, mean, var


def naive_batch_norm_backward(x, weight, grad_y, eps):
    """Gradients (grad_x, grad_weight, grad_bias) of sum(grad_y * y) for ``naive_batch_norm_train``,
    by the chain rule through the mean and the variance, written out term by term, in float64."""
    x, weight, gy = _f64(x), _f64(weight), _f64(grad_y)
    _, xhat, mean, var = naive_batch_norm_train(x, weight, np.zeros_like(weight), eps)
    count = x.shape[0] * x.shape[2] * x.shape[3]
    inv = 1 / np.sqrt(var + eps)
    g_xhat = gy * weight[None, :, None, None]
    g_var = (g_xhat * (x - mean[None, :, None, None])).sum(axis=(0, 2, 3)) * -0.5 * inv**3
    g_mean = -(g_xhat * inv[None, :, None, None]).sum(axis=(0, 2, 3))
    grad_x = (g_xhat * inv[None, :, None, None] + (g_var * 2 / count)[None, :, None, None]
              * (x - mean[None, :, None, None]) + (g_mean / count)[None, :, None, None])
    return grad_x, (gy * xhat).sum(axis=(0, 2, 3)), gy.sum(axis=(0, 2, 3))


# --------------------------------------------------------------------------
# Comparison helper shared by the tests
# --------------------------------------------------------------------------


def assert_close(actual, expected, what, rtol=1e-4):
    """Engine result vs reference: shape, then dtype float32, then values.

    Values must satisfy max|actual - expected| <= rtol * max(1, max|expected|).
    """
    assert isinstance(actual, np.ndarray), f"{what}: expected a numpy array, got {type(actual)}"
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (
        f"{what}: shape {actual.shape} != expected {expected.shape}")
    assert actual.dtype == np.float32, f"{what}: dtype {actual.dtype} != float32"
    assert actual.flags.c_contiguous, f"{what}: result is not C-contiguous"
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    assert np.array_equal(nan_a, nan_e), (
        f"{what}: NaN at {np.argwhere(nan_a != nan_e)[:5].tolist()} differs from reference")
    finite = ~nan_e
    if not finite.any():
        return
    a, e = actual[finite].astype(np.float64), expected[finite]
    scale = max(1.0, float(np.max(np.abs(e))))
    err = np.abs(a - e)
    worst = int(np.argmax(err))
    assert err[worst] <= rtol * scale, (
        f"{what}: max abs error {err[worst]:.3g} > {rtol:g} * {scale:.3g} "
        f"(got {a[worst]!r}, expected {e[worst]!r} at flat index {worst} of the finite values)")


def directional_derivative(f, point, direction, h=1e-3):
    """The derivative of ``f`` at ``point`` along ``direction``, by central differences.

    ``f`` takes an array shaped like ``point``. The steps are rounded to
    ``point``'s dtype, and the derivative divides by the step actually taken,
    which matters for float32 points and small ``h``.
    """
    point = np.asarray(point)
    d = np.asarray(direction, dtype=np.float64)
    plus = (point + h * d).astype(point.dtype)
    minus = (point - h * d).astype(point.dtype)
    taken = np.vdot((plus - minus).astype(np.float64), d) / np.vdot(d, d)
    return (f(plus) - f(minus)) / taken


def in_place(f, arr):
    """``f()`` (which reads ``arr``) as a function of ``arr``'s values, for ``directional_derivative``.

    Each call writes its argument into ``arr`` first; the caller restores it.
    """
    def at(values):
        arr[...] = values
        return f()
    return at


def assert_directional_derivative(numeric, grad, direction, what):
    """``grad . direction`` equals the finite-difference ``numeric``, to 1e-4 of the terms' size."""
    terms = np.asarray(grad, dtype=np.float64) * direction
    analytic = float(np.sum(terms))
    assert abs(numeric - analytic) <= 1e-4 * max(1.0, float(np.sum(np.abs(terms)))), (
        f"{what}: directional derivative {numeric:.6g} (finite differences) != {analytic:.6g} (engine)")


# --------------------------------------------------------------------------
# Affine resampling (augmentation)
# --------------------------------------------------------------------------

FILLS = ("zeros", "edge", "reflect")


def fill_index(i, size, fill):
    """The pixel a tap ``i`` of a side of ``size`` reads, or None for the constant fill:
    edge clamps, reflect mirrors about the edge pixel again and again until inside."""
    if fill not in FILLS:
        raise InvalidArguments(f"fill must be one of {FILLS}, got {fill!r}")
    if 0 <= i < size:
        return i
    if fill == "zeros":
        return None
    if fill == "edge" or size == 1:
        return min(max(i, 0), size - 1)
    while not 0 <= i < size:
        i = -i if i < 0 else 2 * (size - 1) - i
    return i


def naive_affine_bilinear(x, m, fill, values):
    """out[n, c, oy, ox]: x[n, c] read at (sy, sx) = m[n] @ (oy, ox, 1) by bilinear interpolation
    of the four pixels around it, a pixel outside being ``values[c]`` (zeros) or ``fill_index``'s."""
    x = _f64(x)
    n, c, h, w = x.shape
    if np.shape(m) != (n, 2, 3):
        raise InvalidArguments(f"m must be ({n}, 2, 3), got {np.shape(m)}")
    out = np.zeros_like(x)
    for b in range(n):
        for oy in range(h):
            for ox in range(w):
                sy = m[b, 0, 0] * oy + m[b, 0, 1] * ox + m[b, 0, 2]
                sx = m[b, 1, 0] * oy + m[b, 1, 1] * ox + m[b, 1, 2]
                y0, x0 = math.floor(sy), math.floor(sx)
                for ch in range(c):
                    total = 0.0
                    for dy, wy in ((0, 1 - (sy - y0)), (1, sy - y0)):
                        for dx, wx in ((0, 1 - (sx - x0)), (1, sx - x0)):
                            iy, ix = fill_index(y0 + dy, h, fill), fill_index(x0 + dx, w, fill)
                            v = values[ch] if iy is None or ix is None else x[b, ch, iy, ix]
                            total += wy * wx * v
                    out[b, ch, oy, ox] = total
    return out
