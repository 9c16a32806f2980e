"""Arguments and shapes: validation, normalisation, and the padded layouts.

``ConvSpec`` and ``PoolSpec`` hold one call's validated arguments and the
shapes that follow from them. ``pair``, ``conv_padding``, ``out_size``,
``check_conv_options``, ``check_pool_options`` and ``n_elements`` are public:
layers use them to validate their options before any input arrives.
"""

from __future__ import annotations

import numpy as np

from .. import config

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
ALGORITHMS = ("auto", "light", "direct", "im2col", "fft")
_NUMPY_PAD_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def as_float32(name, a, ndim):
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


def check_bias(bias, c_out):
    """``bias`` as float32 (C_out,), or None."""
    if bias is None:
        return None
    b = as_float32("bias", bias, 1)
    if b.shape[0] != c_out:
        raise ValueError(f"bias must have shape ({c_out},) to match weight, but has {b.shape}")
    return b


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

    ``padding`` is an int, an (h, w) pair, four ints (top, bottom, left, right)
    for asymmetric padding (ONNX ``pads`` and ``auto_pad`` SAME_UPPER, as
    TensorFlow exports write them), ``"same"`` or ``"valid"``. ``"same"`` pads
    a total of dilation*(k-1) per axis and, like torch, puts the odd extra
    pixel at the bottom/right, so even kernels work too.
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
        raise ValueError(f"padding must be an int, a pair, four ints, 'same' or 'valid', but got {padding!r}")
    if isinstance(padding, (tuple, list)) and len(padding) == 4:
        top, bottom = pair("padding", padding[:2], 0)
        left, right = pair("padding", padding[2:], 0)
        return (top, bottom, left, right)
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
    """Output size along ``axis``: ``(padded - dilation*(kernel-1) - 1) // stride + 1``."""
    effective = dilation * (kernel - 1) + 1
    if effective > padded:
        raise ValueError(
            f"kernel {axis} with dilation ({effective}) is larger than the padded input "
            f"{axis} ({padded}); use a smaller kernel or dilation, or more padding"
        )
    return (padded - effective) // stride + 1


def conv_spec(x_shape, w_shape, stride, padding, dilation, groups, padding_mode, algorithm):
    """``ConvSpec(...)``, the same object again for the same arguments: a network's layers meet the same
    shapes on every call, and validating them again took 18 us a convolution (1 ms of MobileNetV2's
    forward pass at batch 1). A spec is never changed once made. A list option (ONNX's four pads) is
    taken as the tuple it equals."""
    options = tuple(tuple(a) if isinstance(a, list) else a for a in (stride, padding, dilation, groups))
    args = (tuple(x_shape), tuple(w_shape), *options, padding_mode, algorithm)
    try:
        # With each option's types, so that True (refused) never finds the spec of 1.
        key = (args, tuple(_types(a) for a in args[2:]))
        hash(key)
    except TypeError:  # an option of no hashable kind: ConvSpec says what is wrong with it
        return ConvSpec(*args)
    spec = _specs.get(key)
    if spec is None:
        spec = ConvSpec(*args)
        if len(_specs) >= config.CONV_SPECS_KEPT:
            _specs.clear()
        _specs[key] = spec
    return spec


_specs = {}


def _types(value):
    return tuple(map(type, value)) if isinstance(value, tuple) else type(value)


class ConvSpec:
    """Validated, normalised arguments of one convolution call.

    ``x_shape`` (N, C_in, H, W) and ``w_shape`` (C_out, C_in/groups, kH, kW)
    are the arrays'; ``y_shape`` is the output's, (N, C_out, *out_hw).
    """

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
        stride = pair("stride", stride, 1)
        dilation = pair("dilation", dilation, 1)
        pads = conv_padding(padding, (kh, kw), dilation, stride)
        _check_padding_mode(padding_mode, pads, h, w)
        self._derive(x_shape, w_shape, stride, pads, dilation, int(groups), padding_mode, algorithm)
        for what, shape in (("the padded input", (n, c_in, *self.padded)), ("the output", self.y_shape)):
            size = 4 * n_elements(shape)
            if size > config.MAX_ARRAY_BYTES:
                raise ValueError(f"{what} would take {size / 2**30:.1f} GiB, over the limit of "
                                 f"{config.MAX_ARRAY_BYTES / 2**30:.0f} GiB; use less padding or smaller inputs")

    @classmethod
    def valid(cls, x_shape, w_shape, dilation, groups, algorithm):
        """The spec of a stride-1 correlation without padding that the engine derives from a valid call
        (grad_x as a forward correlation), so it needs no checking."""
        spec = cls.__new__(cls)
        spec._derive(x_shape, w_shape, (1, 1), (0, 0, 0, 0), dilation, groups, "zeros", algorithm)
        return spec

    def part(self, n, groups, filters):
        """The spec of a share of this call that a path runs on one thread: ``n`` of the images,
        ``groups`` of the groups and ``filters`` of the filters (checked already, as a share of this)."""
        _, cin_g, kh, kw = self.w_shape
        spec = type(self).__new__(type(self))
        spec._derive((n, cin_g * groups, *self.x_shape[2:]), (filters, cin_g, kh, kw),
                     self.stride, self.pads, self.dilation, groups, self.padding_mode, self.algorithm)
        return spec

    def _derive(self, x_shape, w_shape, stride, pads, dilation, groups, padding_mode, algorithm):
        n, _, h, w = x_shape
        c_out, _, kh, kw = w_shape
        self.x_shape, self.w_shape = tuple(x_shape), tuple(w_shape)
        self.stride, self.pads, self.dilation, self.groups = stride, pads, dilation, groups
        self.padding_mode, self.algorithm = padding_mode, algorithm
        self.padded = (h + pads[0] + pads[1], w + pads[2] + pads[3])
        self.out_hw = (
            out_size(self.padded[0], kh, stride[0], dilation[0], "height"),
            out_size(self.padded[1], kw, stride[1], dilation[1], "width"),
        )
        self.y_shape = (n, c_out, *self.out_hw)

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
            return stack(x, self.pads[0], self.pads[2], self.padded)
        return stack(self.pad(x), 0, 0, self.padded)

    def unpad_grad(self, gxp):
        """Fold the gradient of the padded input back onto the input pixels.

        Zero padding just drops the border. The other modes copy input pixels
        into the border, so the border's gradient is added to the pixel it came
        from (this is what torch's autograd does through ``F.pad``).
        """
        return fold_padding(gxp, self.pads, self.padding_mode)


def fold_padding(grad_padded, pads, padding_mode):
    """The gradient of an input padded by ``pads`` (top, bottom, left, right) in ``padding_mode``,
    from the gradient of the padded array (see ``ConvSpec.unpad_grad``; the ``pad`` layer uses it too)."""
    top, bottom, left, right = pads
    g = _fold_axis(grad_padded, 2, top, bottom, padding_mode)
    return np.ascontiguousarray(_fold_axis(g, 3, left, right, padding_mode))


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


def stack(a, top, left, shape_hw, groups=1, per_group=None):
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
