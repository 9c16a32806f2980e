"""conv2d and conv2d_backward against the naive loops, on every algorithm."""

import functools
import itertools
import zlib

import numpy as np
import pytest

import naive
from naive import assert_close

F = pytest.importorskip("cnn_cli.functional")
fft_tiles = pytest.importorskip("cnn_cli.functional.fft").fft_tiles
gemm = pytest.importorskip("cnn_cli.functional.gemm")
config = pytest.importorskip("cnn_cli.config")
dispatch = pytest.importorskip("cnn_cli.functional.dispatch")

ALGORITHMS = ["direct", "im2col", "fft", "auto"]
MODES = ["zeros", "reflect", "replicate", "circular"]

# id -> (x_shape, w_shape, with_bias, conv kwargs)
CASES = {
    "basic-3x3": ((1, 1, 5, 5), (1, 1, 3, 3), False, {}),
    "stride1-pad1-bias": ((2, 3, 6, 6), (4, 3, 3, 3), True, dict(padding=1)),
    "stride2-pad1": ((2, 3, 7, 6), (4, 3, 3, 3), True, dict(stride=2, padding=1)),
    "stride3": ((1, 2, 10, 8), (3, 2, 3, 2), False, dict(stride=3)),
    "stride(1,2)-pad(1,2)": ((2, 2, 6, 7), (2, 2, 3, 3), True, dict(stride=(1, 2), padding=(1, 2))),
    "stride(2,1)-pad(2,0)": ((1, 2, 7, 5), (3, 2, 3, 3), False, dict(stride=(2, 1), padding=(2, 0))),
    "stride(3,2)-uneven": ((1, 1, 9, 8), (2, 1, 2, 3), True, dict(stride=(3, 2), padding=(0, 1))),
    "same-3x3": ((2, 2, 6, 7), (3, 2, 3, 3), True, dict(padding="same")),
    "same-even-2x2": ((1, 2, 5, 6), (2, 2, 2, 2), True, dict(padding="same")),
    "same-even-4x4": ((1, 2, 6, 5), (2, 2, 4, 4), False, dict(padding="same")),
    "same-2x3": ((1, 1, 6, 7), (2, 1, 2, 3), True, dict(padding="same")),
    "same-5x5-dil2": ((1, 1, 9, 9), (1, 1, 5, 5), False, dict(padding="same", dilation=2)),
    "same-2x2-dil(3,2)": ((1, 2, 7, 6), (2, 2, 2, 2), True, dict(padding="same", dilation=(3, 2))),
    "same-stride-tuple(1,1)": ((1, 1, 5, 5), (1, 1, 3, 3), False, dict(padding="same", stride=(1, 1))),
    "valid": ((2, 2, 7, 6), (3, 2, 3, 3), True, dict(padding="valid")),
    "dil2-pad2": ((1, 2, 7, 7), (2, 2, 3, 3), True, dict(dilation=2, padding=2)),
    "dil(1,2)-pad(0,1)": ((2, 1, 6, 8), (2, 1, 3, 3), False, dict(dilation=(1, 2), padding=(0, 1))),
    "dil2-stride2": ((1, 2, 9, 9), (2, 2, 3, 3), True, dict(dilation=2, stride=2, padding=1)),
    "groups2": ((2, 4, 6, 6), (6, 2, 3, 3), True, dict(groups=2, padding=1)),
    "groups2-stride2-dil2": ((1, 4, 8, 7), (4, 2, 2, 3), True, dict(groups=2, stride=2, dilation=2)),
    "depthwise": ((2, 3, 6, 5), (3, 1, 3, 3), True, dict(groups=3, padding=1)),
    "depthwise-x2": ((1, 3, 6, 6), (6, 1, 3, 3), False, dict(groups=3, padding="same")),
    "1x1": ((2, 3, 5, 4), (4, 3, 1, 1), True, {}),
    "1x1-stride2-pad1": ((1, 3, 5, 6), (2, 3, 1, 1), False, dict(stride=2, padding=1)),
    "1x1-groups3": ((1, 6, 4, 4), (3, 2, 1, 1), True, dict(groups=3)),
    "nonsquare": ((1, 2, 5, 9), (2, 2, 2, 4), True, {}),
    "nonsquare-tall": ((1, 1, 9, 4), (3, 1, 5, 2), False, dict(padding=(1, 0))),
    "kernel=image": ((2, 1, 4, 5), (2, 1, 4, 5), True, {}),
    "batch3": ((3, 2, 5, 5), (2, 2, 3, 3), True, dict(padding=1, stride=2)),
    "11x11-fft-size": ((1, 2, 14, 13), (2, 2, 11, 11), True, dict(padding=2)),
    "11x11-same": ((1, 1, 12, 12), (1, 1, 11, 11), False, dict(padding="same")),
    # Stride-1 direct loops stack the batch and work it in tiles of padded
    # rows (config.STACKED_TILE): these make several tiles that straddle
    # images, and filter counts that leave a partial block of four.
    "stacked-3x3-tiles": ((3, 2, 23, 20), (5, 2, 3, 3), True, dict(padding=1)),
    "stacked-3x3-groups-dil": ((2, 4, 21, 22), (6, 2, 3, 3), True, dict(groups=2, padding=2, dilation=2)),
    "stacked-5x5-tiles": ((3, 2, 23, 20), (3, 2, 5, 5), True, dict(padding=2)),
    "stacked-3x3-wide-map": ((2, 2, 5, 70), (3, 2, 3, 3), True, dict(padding=1, dilation=(1, 2))),
}
for _mode in MODES[1:]:
    CASES.update({
        f"{_mode}-pad1": ((1, 2, 5, 6), (3, 2, 3, 3), True, dict(padding=1, padding_mode=_mode)),
        f"{_mode}-pad(2,1)-stride(2,1)-dil(1,2)": (
            (2, 2, 5, 6), (2, 2, 3, 2), True,
            dict(padding=(2, 1), stride=(2, 1), dilation=(1, 2), padding_mode=_mode)),
        f"{_mode}-same-4x4": ((1, 2, 5, 6), (2, 2, 4, 4), False, dict(padding="same", padding_mode=_mode)),
        f"{_mode}-same-2x3-dil2": (
            (1, 1, 5, 6), (2, 1, 2, 3), True, dict(padding="same", dilation=2, padding_mode=_mode)),
        f"{_mode}-groups2-pad-max": (  # pad = H - 1: the largest pad legal for every mode
            (1, 4, 4, 5), (4, 2, 3, 3), True, dict(padding=3, groups=2, padding_mode=_mode)),
        f"{_mode}-depthwise-1x1-pad": (
            (1, 2, 3, 3), (2, 1, 1, 1), False, dict(padding=(2, 1), groups=2, padding_mode=_mode)),
        f"{_mode}-11x11-same": (
            (1, 1, 12, 11), (1, 1, 11, 11), True, dict(padding="same", padding_mode=_mode)),
    })
CASES["circular-pad=size"] = ((1, 1, 3, 4), (1, 1, 3, 3), True, dict(padding=(3, 4), padding_mode="circular"))
CASES["reflect-pad=size-1"] = ((1, 1, 3, 4), (1, 1, 5, 7), True, dict(padding=(2, 3), padding_mode="reflect"))


def _seed(name):
    return zlib.crc32(name.encode())


@functools.lru_cache(maxsize=None)
def _case(name):
    """Inputs and naive results for one case (computed once, shared by all algorithms)."""
    x_shape, w_shape, with_bias, kwargs = CASES[name]
    rng = np.random.default_rng(_seed(name))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    y = naive.naive_conv2d(x, w, b, **kwargs)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    grads = naive.naive_conv2d_backward(x, w, gy, **kwargs)
    return x, w, b, kwargs, y, gy, grads


def _check_backward(x, w, gy, kwargs, expected, algorithm):
    grads = F.conv2d_backward(x, w, gy, algorithm=algorithm, **kwargs)
    assert isinstance(grads, tuple) and len(grads) == 3, "expected (grad_x, grad_weight, grad_bias)"
    for what, actual, ref in zip(("grad_x", "grad_weight", "grad_bias"), grads, expected):
        assert_close(actual, ref, what)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", list(CASES))
def test_conv2d_forward(name, algorithm):
    x, w, b, kwargs, y, _, _ = _case(name)
    assert_close(F.conv2d(x, w, b, algorithm=algorithm, **kwargs), y, "forward")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", list(CASES))
def test_conv2d_backward(name, algorithm):
    x, w, _, kwargs, _, gy, grads = _case(name)
    _check_backward(x, w, gy, kwargs, grads, algorithm)


def test_bias_none_equals_zero_bias():
    x, w, b, kwargs, _, _, _ = _case("stride1-pad1-bias")
    with_zero = F.conv2d(x, w, np.zeros(w.shape[0], np.float32), **kwargs)
    without = F.conv2d(x, w, **kwargs)
    np.testing.assert_array_equal(without, with_zero)
    assert not np.allclose(F.conv2d(x, w, b, **kwargs), without), "bias was ignored"


# ----------------------------------------------------------------- finite differences

FD_CASES = {
    "zeros-stride2-pad1": ((1, 2, 6, 5), (3, 2, 3, 3), dict(stride=2, padding=1)),
    "reflect-same-even": ((2, 2, 5, 6), (2, 2, 2, 4), dict(padding="same", padding_mode="reflect")),
    "replicate-dil2-groups2": (
        (1, 4, 6, 6), (4, 2, 3, 2), dict(padding=(2, 1), dilation=2, groups=2, padding_mode="replicate")),
    "circular-stride(1,2)": ((1, 1, 5, 7), (2, 1, 3, 3), dict(padding=(1, 3), stride=(1, 2), padding_mode="circular")),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", list(FD_CASES))
def test_gradients_match_finite_differences(name, algorithm):
    """grad . d equals the derivative of L = sum(r * conv2d(x, w, b)) along d."""
    x_shape, w_shape, kwargs = FD_CASES[name]
    rng = np.random.default_rng(_seed(name))
    out_shape = naive.conv_args(x_shape, w_shape, **kwargs).out_shape

    def draw(shape):  # float32-representable, so the engine sees exactly these numbers
        return rng.standard_normal(shape).astype(np.float32).astype(np.float64)

    x, w, b, r = draw(x_shape), draw(w_shape), draw(w_shape[0]), draw(out_shape)

    def loss(xx, ww, bb):
        return float(np.sum(r * naive.naive_conv2d(xx, ww, bb, **kwargs)))

    grad_x, grad_w, grad_b = F.conv2d_backward(x, w, r, algorithm=algorithm, **kwargs)
    checks = [
        ("grad_x", grad_x, x, lambda v: loss(v, w, b)),
        ("grad_weight", grad_w, w, lambda v: loss(x, v, b)),
        ("grad_bias", grad_b, b, lambda v: loss(x, w, v)),
    ]
    for what, grad, point, f in checks:
        d = rng.standard_normal(point.shape)
        naive.assert_directional_derivative(naive.directional_derivative(f, point, d), grad, d, what)


# ----------------------------------------------------------------- dtypes and layouts


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.int64, np.bool_, np.float16, np.float64])
def test_any_real_dtype_is_converted_to_float32(dtype):
    rng = np.random.default_rng(7)
    if dtype == np.bool_:
        x, w, b, gy = (rng.random(s) < 0.5 for s in ((2, 2, 5, 6), (3, 2, 3, 3), (3,), (2, 3, 5, 6)))
    else:
        x, w, b, gy = (rng.integers(0 if dtype == np.uint8 else -5, 6, s).astype(dtype)
                       for s in ((2, 2, 5, 6), (3, 2, 3, 3), (3,), (2, 3, 5, 6)))
    kwargs = dict(padding=1, padding_mode="reflect")
    assert_close(F.conv2d(x, w, b, **kwargs), naive.naive_conv2d(x, w, b, **kwargs), "forward")
    _check_backward(x, w, gy, kwargs, naive.naive_conv2d_backward(x, w, gy, **kwargs), "auto")


def test_float64_input_is_rounded_to_float32():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 6, 6)) * 1e3
    w = rng.standard_normal((2, 2, 3, 3))
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    assert_close(F.conv2d(x, w, padding=1), naive.naive_conv2d(x32, w32, padding=1), "forward")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_non_contiguous_inputs(algorithm):
    """Strided views and Fortran-ordered arrays give the same results as copies."""
    x, w, b, kwargs, y, gy, grads = _case("groups2-stride2-dil2")
    rng = np.random.default_rng(9)
    big = rng.standard_normal((x.shape[0], x.shape[1], 2 * x.shape[2], 2 * x.shape[3])).astype(np.float32)
    big[:, :, ::2, ::2] = x
    x_view = big[:, :, ::2, ::2]
    w_fortran = np.asfortranarray(w)
    gy_view = np.ascontiguousarray(gy.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    b_view = np.repeat(b, 2)[::2]
    assert not x_view.flags.c_contiguous and not gy_view.flags.c_contiguous
    assert_close(F.conv2d(x_view, w_fortran, b_view, algorithm=algorithm, **kwargs), y, "forward")
    _check_backward(x_view, w_fortran, gy_view, kwargs, grads, algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inputs_are_not_modified(algorithm):
    x, w, b, kwargs, _, gy, _ = _case("reflect-same-4x4")
    b = np.arange(w.shape[0], dtype=np.float32)
    copies = [a.copy() for a in (x, w, b, gy)]
    F.conv2d(x, w, b, algorithm=algorithm, **kwargs)
    F.conv2d_backward(x, w, gy, algorithm=algorithm, **kwargs)
    for name, before, after in zip(("x", "weight", "bias", "grad_y"), copies, (x, w, b, gy)):
        np.testing.assert_array_equal(after, before, err_msg=f"{name} was modified")


# ----------------------------------------------------------------- large kernels, FFT accuracy


@functools.lru_cache(maxsize=None)
def _dc_offset_case(noise):
    """A bright image (1000 + noise) and zero-mean 15x15 kernels: the output is
    small, so any error that scales with the image's mean (its DC term) shows up."""
    rng = np.random.default_rng(10)
    x = (1000.0 + noise * rng.standard_normal((1, 1, 40, 44))).astype(np.float32)
    w = rng.standard_normal((2, 1, 15, 15))
    w -= w.mean(axis=(2, 3), keepdims=True)
    w = (w / np.sqrt((w ** 2).sum(axis=(2, 3), keepdims=True))).astype(np.float32)
    y = naive.naive_conv2d(x, w)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    return x, w, y, gy, naive.naive_conv2d_backward(x, w, gy)


@pytest.mark.parametrize("algorithm, noise", [
    # Offset 100x the noise: plain float32 sums (and torch's float32 conv) stay inside
    # the tolerance, so every path must.
    *[(a, 10.0) for a in ALGORITHMS],
    # Offset 1000x the noise: float32 accumulation (torch's too) is off by ~3e-4
    # relative here, but an FFT done right (in float64) is not: the FFT path must be.
    ("fft", 1.0),
])
def test_accuracy_with_large_dc_offset(algorithm, noise):
    x, w, y, gy, grads = _dc_offset_case(noise)
    assert np.abs(y).max() < 10 * noise, "the kernel should cancel the offset"
    assert_close(F.conv2d(x, w, algorithm=algorithm), y, "forward")
    _check_backward(x, w, gy, {}, grads, algorithm)


@functools.lru_cache(maxsize=None)
def _large_kernel_case(padding):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 1, 36, 33)).astype(np.float32)
    w = rng.standard_normal((1, 1, 31, 31)).astype(np.float32)
    b = np.array([0.5], np.float32)
    y = naive.naive_conv2d(x, w, b, padding=padding)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    return x, w, b, y, gy, naive.naive_conv2d_backward(x, w, gy, padding=padding)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_31x31_kernel(algorithm, padding):
    x, w, b, y, gy, grads = _large_kernel_case(padding)
    assert_close(F.conv2d(x, w, b, padding=padding, algorithm=algorithm), y, "forward")
    _check_backward(x, w, gy, dict(padding=padding), grads, algorithm)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((2, 2, 300, 140), (3, 2, 5, 5), dict(padding=2)),                     # tiles down, one across
    ((1, 2, 310, 296), (2, 1, 3, 5), dict(padding="same", dilation=(2, 3), groups=2)),
    ((1, 1, 305, 301), (2, 1, 7, 7), dict(padding=3, padding_mode="reflect")),
    ((1, 1, 290, 300), (1, 1, 9, 9), dict()),                              # valid; a part tile at the end
])
def test_fft_in_tiles_matches_direct_loops(x_shape, w_shape, kwargs):
    """Images large enough that the FFT path cuts them into overlapping tiles (overlap-save):
    every output, at tile seams and in the last, partly filled tiles, against the direct loops
    (themselves checked against the naive loops above), forward and backward."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    spec = F.ConvSpec(x_shape, w_shape, 1, kwargs.get("padding", 0), kwargs.get("dilation", 1),
                   kwargs.get("groups", 1), kwargs.get("padding_mode", "zeros"), "fft")
    reach = (spec.dilation[0] * (w_shape[2] - 1), spec.dilation[1] * (w_shape[3] - 1))
    assert [fft_tiles(spec.padded[i], reach[i], True)[2] for i in (0, 1)] >= [2, 1], "the case should tile"
    y = F.conv2d(x, w, b, algorithm="fft", **kwargs)
    assert_close(y, F.conv2d(x, w, b, algorithm="direct", **kwargs), "forward")
    gy = rng.standard_normal(y.shape).astype(np.float32)
    expected = F.conv2d_backward(x, w, gy, algorithm="direct", **kwargs)
    _check_backward(x, w, gy, kwargs, expected, "fft")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("w_shape, kwargs", [
    ((3, 2, 3, 3), dict(padding=1)),                       # 3 wide: the stacked kernel
    ((3, 2, 5, 5), dict(padding=2)),                       # row im2col
    ((3, 2, 2, 2), dict(padding=1)),                       # narrow maps: the whole-plane kernel
    ((3, 2, 3, 3), dict(padding=1, stride=2)),             # strided
])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_weight_gradient_with_non_finite_input_matches_naive(algorithm, w_shape, kwargs, bad):
    """Stride-1 weight gradients work on W_p-wide layouts whose garbage columns meet input
    pixels from the next row; an inf or NaN there must not leak into weights it never touches."""
    rng = np.random.default_rng(31)
    x = rng.standard_normal((2, 2, 6, 7)).astype(np.float32)
    x[0, 1, 2, 0] = bad  # the first column: the pixel a garbage column of the row above meets
    w = rng.standard_normal(w_shape).astype(np.float32)
    out_shape = naive.conv_args(x.shape, w_shape, **kwargs).out_shape
    gy = rng.standard_normal(out_shape).astype(np.float32)
    _, grad_w, _ = F.conv2d_backward(x, w, gy, algorithm=algorithm, **kwargs)
    expected = naive.naive_conv2d_backward(x, w, gy, **kwargs)[1]
    np.testing.assert_array_equal(np.isnan(grad_w), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(grad_w), np.isinf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(grad_w[finite], expected[finite], rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- the stacked 3-wide kernel

# x shape, w shape, conv kwargs: all on kernels.conv.conv3_stacked
STACKED3_CASES = {
    "odd-rows": ((3, 2, 12, 11), (5, 2, 3, 3), dict(padding=1)),          # W_p 13: no pass whole vectors
    "groups2-dil2-cout3": ((2, 4, 12, 9), (6, 2, 3, 3), dict(groups=2, padding=2, dilation=2)),
    "cout9-valid-rows": ((2, 3, 8, 10), (9, 3, 3, 3), dict(padding=(1, 0))),
    "5x3": ((2, 2, 8, 8), (3, 2, 5, 3), dict(padding=(2, 1))),
    "1x3-dil(1,3)-groups3": ((2, 3, 6, 12), (6, 1, 1, 3), dict(dilation=(1, 3), groups=3)),
    "wide-map": ((1, 2, 4, 300), (4, 2, 3, 3), dict(padding=1)),          # a row longer than a pass
    # Maps of half a pass or more: passes within an image, skipping its garbage rows.
    "by-image-2x3-odd-rows": ((3, 2, 20, 19), (3, 2, 2, 3), dict(padding=1)),  # H_out 21: pooling drops one
    "by-image-dil2-cout5": ((2, 3, 24, 20), (5, 3, 3, 3), dict(padding=2, dilation=2)),
    "by-image-groups2": ((2, 4, 30, 30), (8, 2, 3, 3), dict(padding=1, groups=2)),
    "by-image-tall": ((2, 2, 54, 22), (4, 2, 3, 3), dict(padding=1)),      # 2 passes an image: 27 rows, pooled 28 and 26
}


@pytest.mark.parametrize("pieces", [1, 3, 7])
@pytest.mark.parametrize("tile", [16, 60, 512])
@pytest.mark.parametrize("name", list(STACKED3_CASES))
def test_stacked_3_wide_kernel_over_any_split_of_its_tasks(name, tile, pieces, monkeypatch):
    """conv3_stacked works the rows of the tasks it is given in passes of its own length
    (``kernels.conv.STACKED_PASS``), rounded up to whole vectors: any split of the tasks between
    calls, tiles of a row or of several passes, group and stack ends inside a call's range give
    the naive result, pooled as max pooling gives it; NaN and inf propagate."""
    kernels = pytest.importorskip("cnn_cli.kernels")
    threads = pytest.importorskip("cnn_cli.functional.threads")
    x_shape, w_shape, kwargs = STACKED3_CASES[name]
    rng = np.random.default_rng(_seed(name))
    x = rng.standard_normal(x_shape).astype(np.float32)
    x[0, 0, 2, 3] = np.nan
    x[-1, -1, -2, -1] = np.inf
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    called = []

    def run_in_pieces(kernel, *args, tasks, work):
        called.append((kernel, args[8] is not None))  # the kernel, and is it pooling
        bounds = sorted({tasks * i * i // (pieces * pieces) for i in range(pieces + 1)})  # uneven
        for first, last in itertools.pairwise(bounds):
            kernel(*args, first, last)

    monkeypatch.setattr(config, "STACKED_TILE", tile)
    monkeypatch.setattr(threads, "run", run_in_pieces)
    y = F.conv2d(x, w, b, algorithm="direct", **kwargs)
    assert (kernels.conv.conv3_stacked, False) in called
    expected = naive.naive_conv2d(x, w, b, **kwargs)
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(expected))
    assert np.isnan(expected).any() and np.isinf(expected).any(), "the case should hold NaN and inf"
    assert_close(np.where(np.isinf(y), 0, y), np.where(np.isinf(expected), 0, expected), "forward")
    if kwargs.get("groups", 1) == 1 and (x_shape[2] + 2 * np.ravel(kwargs.get("padding", 0))[0]) % 2 == 0:  # H_p even
        called.clear()
        pooled, argmax = F.conv2d_max_pool2d(x, w, b, algorithm="direct", **kwargs)
        assert called == [(kernels.conv.conv3_stacked, True)], "the fused pooling"
        expected_pooled, expected_argmax = F.max_pool2d_with_argmax(y, 2)
        np.testing.assert_array_equal(pooled, expected_pooled)
        np.testing.assert_array_equal(argmax, expected_argmax)


# The paths "auto" takes on deep networks' layers, run directly on every case
# they accept: their shapes in the tests above are too small for "auto".
@pytest.mark.parametrize("row_columns_from", [1, 10**9], ids=["row-columns", "full-columns"])
@pytest.mark.parametrize("name", CASES)
def test_gemm_path(name, row_columns_from, monkeypatch):
    monkeypatch.setattr(config, "GEMM_ROW_COLUMNS_MIN_WIDTH", row_columns_from)
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)  # threads, and filters split into blocks
    x, w, b, kwargs, y, _, _ = _case(name)
    spec = F.ConvSpec(x.shape, w.shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                      kwargs.get("dilation", 1), kwargs.get("groups", 1), kwargs.get("padding_mode", "zeros"), "auto")
    assert_close(gemm.gemm(x, w, b, spec), y, "forward")


_BATCHED = [name for name, case in CASES.items() if case[0][0] > 1 and case[3].get("padding_mode", "zeros") == "zeros"]


@pytest.mark.parametrize("per", [2, 3])
@pytest.mark.parametrize("name", _BATCHED + ["five-images"])
def test_gemm_on_tiles_of_whole_images(name, per, monkeypatch):
    """``gemm._images``: several images' columns side by side in one product, the last tile short,
    each image's part stored with its bias and clip."""
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)  # threads, and filters split into blocks
    monkeypatch.setattr(config, "GEMM_MIN_BLOCK_FILTERS", 4)
    if name == "five-images":
        rng = np.random.default_rng(5)
        x, w = rng.standard_normal((5, 6, 4, 5)).astype(np.float32), rng.standard_normal((70, 3, 2, 3)).astype(np.float32)
        b, kwargs = rng.standard_normal(70).astype(np.float32), dict(groups=2, padding=(1, 0), stride=(1, 2))
        y = naive.naive_conv2d(x, w, b, **kwargs)
    else:
        x, w, b, kwargs, y, _, _ = _case(name)
    spec = F.ConvSpec(x.shape, w.shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                      kwargs.get("dilation", 1), kwargs.get("groups", 1), "zeros", "auto")
    assert_close(gemm._images(x, w, b, spec, -np.inf, np.inf, per), y, "forward")
    assert_close(gemm._images(x, w, b, spec, -0.5, 1.0, per), np.clip(y, -0.5, 1.0), "forward")


@pytest.mark.parametrize("x_shape, w_shape, kwargs, bias, threads_", [
    ((1, 6, 7, 7), (10, 6, 3, 3), dict(padding=1), True, 2),                  # ResNet's 7x7 layers
    ((1, 5, 14, 13), (9, 5, 3, 3), dict(stride=2, padding=1), False, 2),      # strided, odd width
    ((1, 4, 9, 9), (7, 4, 3, 2), dict(padding=(2, 0), dilation=(2, 3)), True, 3),
    ((1, 8, 13, 13), (11, 8, 1, 1), {}, True, 3),                             # 1x1: the image is its columns
    ((1, 3, 12, 12), (5, 3, 1, 1), dict(stride=2), False, 2),
])
def test_gemm_on_one_small_image_makes_its_columns_once(x_shape, w_shape, kwargs, bias, threads_, monkeypatch):
    """``gemm._shared_columns``: one image's columns, the product split by filters between the threads,
    each part stored with its bias and clip; a NaN reaches the outputs it reaches in the naive loops."""
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(config, "THREADS", threads_)
    rng = np.random.default_rng(_seed(str(x_shape) + str(w_shape)))
    x = rng.standard_normal(x_shape).astype(np.float32)
    x[0, 0, 2, 3] = np.nan
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if bias else None
    spec = F.ConvSpec(x.shape, w.shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                      kwargs.get("dilation", 1), 1, "zeros", "auto")
    assert gemm._one_small_image(spec)
    y = naive.naive_conv2d(x, w, b, **kwargs)
    with np.errstate(invalid="ignore"):
        assert_close(gemm.gemm(x, w, b, spec), y, "forward")
        assert_close(gemm.gemm(x, w, b, spec, -0.5, 1.0), np.clip(y, -0.5, 1.0), "forward")
    monkeypatch.setattr(config, "THREADS", 1)  # one thread: the tiles of rows, with the same values
    assert not gemm._one_small_image(spec)
    with np.errstate(invalid="ignore"):
        assert_close(gemm.gemm(x, w, b, spec), y, "forward")


def test_gemm_takes_tiles_of_images_for_batches_of_small_maps():
    def per(x_shape, w_shape, padding=1):
        return gemm._images_a_tile(F.ConvSpec(x_shape, w_shape, 1, padding, 1, 1, "zeros", "auto"))

    assert per((8, 512, 7, 7), (512, 512, 3, 3)) == min(-(-config.GEMM_IMAGES_COLUMNS // 49), -(-8 // config.THREADS))
    assert per((1, 512, 7, 7), (512, 512, 3, 3)) == 1  # one image: tiles of rows, filters split
    assert per((8, 64, 56, 56), (64, 64, 3, 3)) == 1  # a large map fills its own products


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((2, 3, 7, 6), (3, 1, 3, 3), dict(padding=1)),
    ((3, 5, 12, 11), (5, 1, 3, 3), dict(stride=2, padding=1)),
    ((1, 4, 9, 9), (4, 1, 3, 2), dict(stride=(2, 1), padding=(2, 0), dilation=(2, 3))),
    ((2, 3, 5, 5), (3, 1, 1, 1), {}),
    ((1, 4, 10, 11), (4, 1, 3, 3), dict(stride=2, padding=1)),               # odd width at stride 2
    ((2, 3, 9, 8), (3, 1, 3, 3), dict(stride=2, padding=2, dilation=2)),
    ((1, 2, 8, 9), (2, 1, 3, 3), dict(stride=(1, 2), padding=(0, 1))),
    ((1, 2, 11, 10), (2, 1, 3, 3), dict(stride=3, padding=1)),
])
def test_depthwise_path(x_shape, w_shape, kwargs):
    rng = np.random.default_rng(_seed(str(x_shape)))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    y = naive.naive_conv2d_depthwise(x, w, b, **kwargs)
    spec = F.ConvSpec(x.shape, w.shape, kwargs.get("stride", 1), kwargs.get("padding", 0),
                      kwargs.get("dilation", 1), x_shape[1], "zeros", "auto")
    assert dispatch.forward_path(spec) is gemm.depthwise
    assert_close(gemm.depthwise(x, w, b, spec), y, "forward")
    assert_close(F.conv2d(x, w, b, groups=x_shape[1], **kwargs), y, "forward")


@pytest.mark.parametrize("h, w", [(2, 2), (2, 5), (5, 2), (3, 3), (7, 9), (16, 17), (4, 33)])
def test_depthwise_one_pixel_of_zeros_is_read_without_a_padded_copy(h, w):
    """3x3 at stride 1 with one pixel of zeros all round (``_plane_3x3``): the inner pass reads the
    rows beside a row's ends and takes its first and last column again, and rows 0 and h-1 have
    their own passes; every pixel is checked against the naive loops, with NaN at a corner and an
    edge, the fused clip, and channels 2 to 10 each with an inf weight at one of the nine taps,
    whose padding taps make the border NaN, as w * 0 does in torch."""
    rng = np.random.default_rng(_seed(f"same{h}x{w}"))
    x = rng.standard_normal((2, 11, h, w)).astype(np.float32)
    x[0, 1, 0, w - 1] = np.nan
    x[1, 0, h // 2, 0] = np.nan
    wt = rng.standard_normal((11, 1, 3, 3)).astype(np.float32)
    for tap in range(9):
        wt[2 + tap, 0, tap // 3, tap % 3] = np.inf
    b = rng.standard_normal(11).astype(np.float32)
    spec = F.ConvSpec(x.shape, wt.shape, 1, 1, 1, 11, "zeros", "auto")
    with np.errstate(invalid="ignore"):
        y = naive.naive_conv2d_depthwise(x, wt, b, padding=1)
    assert np.isnan(y[:, 3, 0]).all() and np.isnan(y[:, 7, :, -1]).all()  # taps (0, 1) and (1, 2) at borders
    for lo, hi in ((-np.inf, np.inf), (0.0, 1.0)):
        got, want = gemm.depthwise(x, wt, b, spec, lo, hi), np.clip(y, lo, hi)
        assert np.array_equal(np.isposinf(got), np.isposinf(want)) and np.array_equal(np.isneginf(got),
                                                                                      np.isneginf(want))
        assert_close(np.where(np.isinf(got), 0, got), np.where(np.isinf(want), 0, want), "forward")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_path_clips_and_pads(mode, stride):
    """The depthwise path pads zeros plane by plane itself and takes the other modes padded; its clip
    (a fused ReLU6) compares, so a NaN stays NaN."""
    rng = np.random.default_rng(_seed(mode))
    x = rng.standard_normal((2, 3, 9, 10)).astype(np.float32)
    x[1, 2, 4, 4] = np.nan
    w = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    spec = F.ConvSpec(x.shape, w.shape, stride, 2, 1, 3, mode, "auto")
    y = naive.naive_conv2d(x, w, b, stride=stride, padding=2, groups=3, padding_mode=mode)
    assert_close(gemm.depthwise(x, w, b, spec), y, "forward")
    assert_close(gemm.depthwise(x, w, b, spec, 0.0, 1.0), np.clip(y, 0.0, 1.0), "forward")


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 64, 7, 7), (96, 64, 3, 3), dict(padding=1)),  # deep and small: tiles split by filters
    ((2, 32, 9, 10), (48, 32, 1, 1), {}),               # pointwise: no columns
    ((1, 8, 17, 15), (16, 8, 3, 3), dict(stride=2, padding=1)),  # 3 channels would take the stem path
])
def test_auto_takes_gemm_on_deep_networks_layers(x_shape, w_shape, kwargs, monkeypatch):
    monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)  # threads, and filters split into blocks
    rng = np.random.default_rng(_seed(str(w_shape)))
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32)
    spec = F.ConvSpec(x.shape, w.shape, kwargs.get("stride", 1), kwargs.get("padding", 0), 1, 1, "zeros", "auto")
    assert dispatch.forward_path(spec) is gemm.gemm
    assert_close(F.conv2d(x, w, b, **kwargs), naive.naive_conv2d(x, w, b, **kwargs), "forward")
