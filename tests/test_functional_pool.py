"""max_pool2d / avg_pool2d and their backward passes against the naive loops."""

import zlib

import numpy as np
import pytest

import naive
from naive import assert_close

F = pytest.importorskip("cnn_cli.functional")

# (x_shape, kernel_size, stride, padding)
POOL_CASES = [
    ((1, 1, 4, 4), 2, None, 0),
    ((2, 3, 7, 5), 2, None, 0),          # odd sizes: last row/column dropped (floor mode)
    ((1, 2, 6, 6), 2, 1, 0),             # overlapping windows
    ((1, 2, 6, 6), 2, 2, 1),
    ((2, 1, 7, 7), 3, None, 0),
    ((1, 2, 7, 8), 3, 2, 1),
    ((1, 1, 5, 5), 3, 1, 1),
    ((1, 2, 9, 6), 3, (2, 1), (1, 0)),
    ((2, 2, 7, 8), (2, 3), None, 0),
    ((1, 1, 8, 9), (2, 3), (1, 2), (1, 1)),
    ((1, 1, 5, 9), (3, 2), (2, 3), (0, 1)),
    ((3, 2, 5, 5), 4, 1, 2),
    ((1, 1, 3, 5), 3, None, 0),          # one window tall
    ((1, 1, 1, 1), 1, None, 0),
    ((1, 1, 4, 6), 1, 2, 0),             # 1x1 window, strided
    ((1, 1, 2, 2), 2, 1, 1),             # padding makes the output larger than the input
]
KINDS = {
    "max": (F.max_pool2d, F.max_pool2d_backward, naive.naive_max_pool2d, naive.naive_max_pool2d_backward),
    "avg": (F.avg_pool2d, F.avg_pool2d_backward, naive.naive_avg_pool2d, naive.naive_avg_pool2d_backward),
}


def _ids(case):
    return "x{}-k{}-s{}-p{}".format(*case)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("case", POOL_CASES, ids=_ids)
def test_pool_forward_backward(kind, case):
    x_shape, k, s, p = case
    fwd, bwd, naive_fwd, naive_bwd = KINDS[kind]
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    x = rng.standard_normal(x_shape).astype(np.float32)
    y = naive_fwd(x, k, s, p)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    if s is None:  # stride defaults to kernel_size: also check the default itself
        assert_close(fwd(x, k), y, "forward")
        assert_close(bwd(x, gy, k), naive_bwd(x, gy, k), "grad_x")
    assert_close(fwd(x, k, s, p), y, "forward")
    assert_close(bwd(x, gy, k, s, p), naive_bwd(x, gy, k, s, p), "grad_x")
    assert_close(fwd(x, kernel_size=k, stride=s, padding=p), y, "forward (keywords)")


@pytest.mark.parametrize("k, s, p", [(2, None, 0), (2, 1, 0), (2, 1, 1), (3, 1, 1), (3, 2, 1), ((2, 3), 1, (1, 1))])
def test_max_pool_ties_gradient_goes_to_first_max(k, s, p):
    """Constant input: every window is a tie, and only its first pixel (row-major) gets the gradient."""
    x = np.full((1, 2, 5, 6), 3.0, np.float32)
    y = naive.naive_max_pool2d(x, k, s, p)
    gy = np.arange(1, y.size + 1, dtype=np.float32).reshape(y.shape)
    assert_close(F.max_pool2d(x, k, s, p), y, "forward")
    expected = naive.naive_max_pool2d_backward(x, gy, k, s, p)
    assert_close(F.max_pool2d_backward(x, gy, k, s, p), expected, "grad_x")


def test_max_pool_ties_match_torch(torch_ref):
    x = np.array([[[[1, 3, 3, 0], [3, 2, 3, 3], [0, 3, 1, 3], [3, 3, 3, 2]]]], np.float32)
    for k, s, p in [(2, 1, 0), (2, 2, 1), (3, 1, 1)]:
        t_y, t_gx = torch_ref.pool("max", x, k, s, p, np.ones(naive.pool_args(x.shape, k, s, p).out_shape))
        gy = np.ones(t_y.shape, np.float32)
        assert_close(F.max_pool2d(x, k, s, p), t_y, "forward")
        assert_close(F.max_pool2d_backward(x, gy, k, s, p), t_gx, "grad_x")


def test_max_pool_padding_is_minus_infinity():
    """All-negative input: padded pixels must never win (they are -inf, not 0)."""
    x = -1.0 - np.arange(30, dtype=np.float32).reshape(1, 1, 5, 6)
    y = F.max_pool2d(x, 3, 1, 1)
    assert (y < 0).all(), "a padded zero won a window"
    assert_close(y, naive.naive_max_pool2d(x, 3, 1, 1), "forward")
    gy = np.ones(y.shape, np.float32)
    assert_close(F.max_pool2d_backward(x, gy, 3, 1, 1),
                 naive.naive_max_pool2d_backward(x, gy, 3, 1, 1), "grad_x")


def test_avg_pool_counts_padding_in_divisor():
    x = np.ones((1, 1, 4, 4), np.float32)
    y = F.avg_pool2d(x, 2, 2, 1)
    expected = np.array([[0.25, 0.5, 0.25], [0.5, 1.0, 0.5], [0.25, 0.5, 0.25]])
    assert_close(y, expected[None, None], "forward")


def test_max_pool_nan_propagates_like_torch(torch_ref):
    x = np.arange(48, dtype=np.float32).reshape(1, 1, 6, 8)
    x[0, 0, 1, 2] = np.nan
    x[0, 0, 4, 7] = np.nan
    for k, s, p in [(2, None, 0), (3, 1, 1), (3, 2, 0)]:
        t_y, _ = torch_ref.pool("max", x, k, s, p)
        y = F.max_pool2d(x, k, s, p)
        assert np.isnan(t_y).any()
        assert_close(y, t_y, "forward")


def test_max_pool_nan_gradient_like_torch(torch_ref):
    """torch's CPU kernel treats a NaN as the maximum, so its window's gradient goes there."""
    x = np.arange(48, dtype=np.float32).reshape(1, 1, 6, 8)
    x[0, 0, 1, 2] = np.nan
    for k, s, p in [(2, None, 0), (3, 1, 1)]:
        y_shape = naive.pool_args(x.shape, k, s, p).out_shape
        gy = np.arange(1, np.prod(y_shape) + 1, dtype=np.float32).reshape(y_shape)
        _, t_gx = torch_ref.pool("max", x, k, s, p, gy)
        assert_close(F.max_pool2d_backward(x, gy, k, s, p), t_gx, "grad_x")


@pytest.mark.parametrize("stride", [2, 1, (1, 2)])
def test_max_pool_2x2_ties_and_nans(stride, torch_ref):
    """2x2 windows without padding take their own unrolled loop: it must keep the
    row-major rules (first maximum wins a tie; a NaN wins, the last NaN of a window most)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, (2, 3, 9, 10)).astype(np.float32)  # many ties
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = np.nan                     # two NaNs in one window
    x[1, 2, 4, 5] = np.nan
    x[0, 1] = -5.0                                              # a whole plane of ties
    y, argmax = F.max_pool2d_with_argmax(x, 2, stride)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(y, naive.naive_max_pool2d(x, 2, stride), "forward")
    gx = F.max_pool2d_backward_from_argmax(x.shape, gy, argmax)
    assert_close(gx, naive.naive_max_pool2d_backward(x, gy, 2, stride), "grad_x")
    t_y, t_gx = torch_ref.pool("max", x, 2, stride, 0, gy)
    assert_close(y, t_y, "forward vs torch")
    assert_close(gx, t_gx, "grad_x vs torch")


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.bool_, np.float64])
@pytest.mark.parametrize("kind", list(KINDS))
def test_pool_dtype_conversion(kind, dtype):
    fwd, bwd, naive_fwd, naive_bwd = KINDS[kind]
    rng = np.random.default_rng(5)
    x = (rng.integers(0, 9, (2, 2, 5, 6)) if dtype != np.bool_ else rng.random((2, 2, 5, 6)) < 0.5).astype(dtype)
    y = naive_fwd(x, 2, 1, 1)
    gy = rng.integers(-3, 4, y.shape).astype(dtype if dtype != np.bool_ else np.int64)
    assert_close(fwd(x, 2, 1, 1), y, "forward")
    assert_close(bwd(x, gy, 2, 1, 1), naive_bwd(x, gy, 2, 1, 1), "grad_x")


@pytest.mark.parametrize("kind", list(KINDS))
def test_pool_non_contiguous_input_and_no_mutation(kind):
    fwd, bwd, naive_fwd, naive_bwd = KINDS[kind]
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 7, 12)).astype(np.float32)[:, ::2, :, ::2]
    y = naive_fwd(x, 3, 2, 1)
    gy = np.asfortranarray(rng.standard_normal(y.shape).astype(np.float32))
    x_before, gy_before = x.copy(), gy.copy()
    assert_close(fwd(x, 3, 2, 1), y, "forward")
    assert_close(bwd(x, gy, 3, 2, 1), naive_bwd(x, gy, 3, 2, 1), "grad_x")
    np.testing.assert_array_equal(x, x_before, err_msg="x was modified")
    np.testing.assert_array_equal(gy, gy_before, err_msg="grad_y was modified")


@pytest.mark.parametrize("kind", list(KINDS))
def test_pool_gradient_matches_finite_differences(kind):
    """Directional derivative of sum(r * pool(x)); max pool is linear near distinct values."""
    fwd, bwd, naive_fwd, _ = KINDS[kind]
    rng = np.random.default_rng(12)
    x = rng.permutation(60).reshape(1, 2, 5, 6).astype(np.float64)  # distinct values, gaps of 1
    r = rng.standard_normal(naive.pool_args(x.shape, 3, 2, 1).out_shape).astype(np.float32).astype(np.float64)
    d = rng.standard_normal(x.shape)
    numeric = naive.directional_derivative(lambda v: np.sum(r * naive_fwd(v, 3, 2, 1)), x, d)
    naive.assert_directional_derivative(numeric, bwd(x, r, 3, 2, 1), d, "grad_x")


def test_max_pool_backward_from_argmax_checks_the_argmax():
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    y, argmax = F.max_pool2d_with_argmax(x, 2)
    gy = np.ones(y.shape, np.float32)
    expected = F.max_pool2d_backward_from_argmax(x.shape, gy, argmax)
    # A non-contiguous copy of the same indices is accepted.
    strided = np.zeros((2, 3, 3, 6), np.int64)[..., ::2]
    strided[...] = argmax
    np.testing.assert_array_equal(F.max_pool2d_backward_from_argmax(x.shape, gy, strided), expected)
    for bad in (-1, 36):
        wrong = argmax.copy()
        wrong[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="argmax"):
            F.max_pool2d_backward_from_argmax(x.shape, gy, wrong)


# ----------------------------------------------------------------- conv fused with max pooling

FUSED_CASES = {
    # x shape, w shape, conv kwargs; the first three take the fused path
    "3x3-pad1-lenet": ((3, 2, 8, 10), (5, 2, 3, 3), dict(padding=1)),
    "3x3-valid-odd-out": ((2, 3, 9, 11), (6, 3, 3, 3), dict()),              # H_out 7, W_out 9: floor mode
    "2x2-narrow-groups": ((2, 4, 6, 7), (6, 2, 2, 2), dict(padding=1, groups=2)),  # conv_direct_stacked
    "3x3-dilation2": ((2, 2, 12, 12), (4, 2, 3, 3), dict(padding=2, dilation=2)),
    "odd-padded-height": ((2, 2, 9, 8), (3, 2, 3, 3), dict(padding=1)),       # falls back: H_p odd
    "strided": ((2, 2, 12, 10), (3, 2, 3, 3), dict(padding=1, stride=2)),     # falls back: stride 2
}


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_conv2d_max_pool2d_matches_conv_then_pool(name, with_bias):
    """Pooled maps and argmax exactly as the two calls give them, with ties and NaN in play,
    and both as the naive loops give them."""
    x_shape, w_shape, kwargs = FUSED_CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = rng.integers(-2, 3, x_shape).astype(np.float32)  # small integers: many exact ties
    x[0, 0, 1, 1] = np.nan
    w = rng.integers(-1, 2, w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    y, argmax = F.conv2d_max_pool2d(x, w, b, **kwargs)
    conv = F.conv2d(x, w, b, **kwargs)
    expected_y, expected_argmax = F.max_pool2d_with_argmax(conv, 2)
    np.testing.assert_array_equal(y, expected_y)
    np.testing.assert_array_equal(argmax, expected_argmax)
    assert argmax.dtype == np.int64 and y.dtype == np.float32 and y.flags.c_contiguous
    assert np.isnan(y).any(), "the case should hold NaN"
    h, w_out = 2 * y.shape[2], 2 * y.shape[3]
    windows = conv[:, :, :h, :w_out].reshape(*y.shape[:3], 2, y.shape[3], 2)
    ties = (windows == windows.max(axis=(3, 5), keepdims=True)).sum(axis=(3, 5)) > 1
    assert with_bias or ties.any(), "the case should hold tied maxima"
    # The naive pooling sees our float32 sums: float64 ones would break some ties differently.
    assert_close(conv, naive.naive_conv2d(x, w, b, **kwargs), "conv vs naive")
    assert_close(y, naive.naive_max_pool2d(conv, 2), "forward vs naive")
    gy = rng.standard_normal(y.shape).astype(np.float32)
    assert_close(F.max_pool2d_backward_from_argmax(conv.shape, gy, argmax),
                 naive.naive_max_pool2d_backward(conv, gy, 2), "pool grad vs naive")


def test_conv2d_max_pool2d_other_pool_sizes_and_errors():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 10, 10)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    for pool in (3, (2, 3), 1):  # not 2x2: the two calls, one after the other
        y, argmax = F.conv2d_max_pool2d(x, w, padding=1, pool=pool)
        expected = F.max_pool2d_with_argmax(F.conv2d(x, w, padding=1), pool)
        np.testing.assert_array_equal(y, expected[0])
        np.testing.assert_array_equal(argmax, expected[1])
    with pytest.raises(ValueError, match="pool"):
        F.conv2d_max_pool2d(x, w, pool=0)
    with pytest.raises(ValueError, match="pool"):
        F.conv2d_max_pool2d(x[:, :, :3], w, pool=2)  # a conv output 1 high
    with pytest.raises(ValueError, match="groups"):
        F.conv2d_max_pool2d(x, w, groups=2)


def test_conv2d_max_pool2d_matches_torch(torch_ref):
    torch = torch_ref.torch
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 28, 28)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    y, argmax = F.conv2d_max_pool2d(x, w, b, padding=1)
    t_y, t_argmax = torch.nn.functional.max_pool2d(
        torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1),
        2, return_indices=True)
    assert_close(y, t_y.numpy(), "forward vs torch")
    np.testing.assert_array_equal(argmax, t_argmax.numpy())
