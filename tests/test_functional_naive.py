"""The naive reference itself, checked against PyTorch (skipped without torch).

If naive.py and torch disagree here, naive.py is wrong and every other
comparison against it is meaningless, so these tests come first.
"""

import numpy as np
import pytest

import naive

# (x_shape, w_shape, with_bias, conv kwargs)
CONV_CASES = [
    ((1, 1, 5, 5), (1, 1, 3, 3), False, {}),
    ((2, 3, 7, 6), (4, 3, 3, 3), True, dict(stride=2, padding=1)),
    ((1, 2, 9, 8), (3, 2, 3, 2), True, dict(stride=(3, 2), padding=(1, 2))),
    ((1, 2, 6, 7), (2, 2, 2, 2), True, dict(padding="same")),
    ((1, 2, 6, 7), (2, 2, 4, 4), False, dict(padding="same")),
    ((1, 2, 6, 7), (2, 2, 2, 3), True, dict(padding="same", dilation=(2, 1))),
    ((2, 4, 7, 7), (6, 2, 3, 3), True, dict(groups=2, dilation=2, padding=2)),
    ((1, 3, 6, 5), (3, 1, 3, 3), True, dict(groups=3, padding="valid")),
    ((2, 3, 5, 4), (4, 3, 1, 1), True, dict(stride=2)),
]
MODES = ["zeros", "reflect", "replicate", "circular"]
MODE_CASES = [
    ((1, 2, 5, 6), (3, 2, 3, 3), True, dict(padding=1)),
    ((2, 2, 5, 6), (2, 2, 3, 2), True, dict(padding=(2, 1), stride=(2, 1), dilation=(1, 2))),
    ((1, 2, 5, 6), (2, 2, 4, 4), False, dict(padding="same")),
    ((1, 2, 5, 6), (2, 2, 2, 3), True, dict(padding="same", dilation=2)),
    ((1, 4, 4, 5), (4, 2, 3, 3), True, dict(padding=3, groups=2)),  # pad = H - 1
]


def _data(x_shape, w_shape, with_bias, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    return rng, x, w, b


def _check_conv(torch_ref, x_shape, w_shape, with_bias, kwargs, seed):
    rng, x, w, b = _data(x_shape, w_shape, with_bias, seed)
    y = naive.naive_conv2d(x, w, b, **kwargs)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    grads = naive.naive_conv2d_backward(x, w, gy, **kwargs)
    t_y, t_gx, t_gw, t_gb = torch_ref.conv2d(x, w, b, gy, **kwargs)
    for what, mine, ref in zip(("forward", "grad_x", "grad_weight", "grad_bias"),
                               (y, *grads), (t_y, t_gx, t_gw, t_gb)):
        assert mine.shape == ref.shape, what
        np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=1e-10, err_msg=what)


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_naive_conv2d_matches_torch(torch_ref, case):
    _check_conv(torch_ref, *case, seed=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", MODE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_naive_conv2d_padding_modes_match_torch(torch_ref, case, mode):
    x_shape, w_shape, with_bias, kwargs = case
    _check_conv(torch_ref, x_shape, w_shape, with_bias, dict(kwargs, padding_mode=mode), seed=2)


def test_naive_circular_padding_equal_to_input_size_matches_torch(torch_ref):
    _check_conv(torch_ref, (1, 1, 3, 4), (1, 1, 3, 3), False,
                dict(padding=(3, 4), padding_mode="circular"), seed=3)


POOL_CASES = [
    ((1, 1, 6, 6), 2, None, 0),
    ((2, 3, 7, 5), 3, 2, 1),
    ((1, 2, 7, 8), (2, 3), (1, 2), (1, 1)),
    ((1, 1, 5, 5), 3, 1, 1),
    ((1, 2, 9, 7), (3, 2), None, (1, 0)),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_naive_pools_match_torch(torch_ref, kind, case):
    x_shape, k, s, p = case
    rng = np.random.default_rng(4)
    x = rng.standard_normal(x_shape).astype(np.float32)
    fwd = naive.naive_max_pool2d if kind == "max" else naive.naive_avg_pool2d
    bwd = naive.naive_max_pool2d_backward if kind == "max" else naive.naive_avg_pool2d_backward
    y = fwd(x, k, s, p)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = bwd(x, gy, k, s, p)
    t_y, t_gx = torch_ref.pool(kind, x, k, s, p, gy)
    np.testing.assert_allclose(y, t_y, rtol=1e-12, atol=1e-12, err_msg="forward")
    np.testing.assert_allclose(gx, t_gx, rtol=1e-12, atol=1e-12, err_msg="grad_x")


@pytest.mark.parametrize("x", [
    np.ones((1, 1, 4, 4), np.float32),                                 # ties everywhere
    np.array([[[[1, 3, 3], [3, 2, 3], [0, 3, 1]]]], np.float32),       # ties in each window
    -np.arange(1, 26, dtype=np.float32).reshape(1, 1, 5, 5),           # all negative vs -inf pad
])
def test_naive_max_pool_ties_and_padding_match_torch(torch_ref, x):
    for k, s, p in [(2, 1, 0), (2, 1, 1), (3, 2, 1)]:
        y = naive.naive_max_pool2d(x, k, s, p)
        gy = np.arange(1, y.size + 1, dtype=np.float32).reshape(y.shape)
        t_y, t_gx = torch_ref.pool("max", x, k, s, p, gy)
        np.testing.assert_array_equal(y, t_y)
        np.testing.assert_array_equal(naive.naive_max_pool2d_backward(x, gy, k, s, p), t_gx)


def test_naive_max_pool_nan_matches_torch(torch_ref):
    x = np.arange(36, dtype=np.float32).reshape(1, 1, 6, 6)
    x[0, 0, 1, 2] = np.nan
    x[0, 0, 4, 4] = np.nan
    for k, s, p in [(2, None, 0), (3, 1, 1)]:
        y = naive.naive_max_pool2d(x, k, s, p)
        gy = np.arange(1, y.size + 1, dtype=np.float32).reshape(y.shape)
        t_y, t_gx = torch_ref.pool("max", x, k, s, p, gy)
        np.testing.assert_array_equal(y, t_y)
        np.testing.assert_array_equal(naive.naive_max_pool2d_backward(x, gy, k, s, p), t_gx)


# Argument sets that naive.conv_args must reject, each one that torch rejects too.
INVALID_CONV = [
    ((1, 3, 5, 5), (2, 2, 3, 3), dict()),                                  # channels
    ((1, 4, 5, 5), (3, 2, 3, 3), dict(groups=2)),                          # groups vs C_out
    ((1, 3, 5, 5), (2, 1, 3, 3), dict(groups=2)),                          # groups vs C_in
    ((1, 1, 5, 5), (1, 1, 3, 3), dict(stride=0)),
    ((1, 1, 5, 5), (1, 1, 3, 3), dict(dilation=(1, 0))),
    ((1, 1, 5, 5), (1, 1, 3, 3), dict(padding="same", stride=2)),
    ((1, 1, 5, 5), (1, 1, 3, 3), dict(padding="full")),
    ((1, 1, 5, 5), (1, 1, 3, 3), dict(padding=-1)),
    ((1, 1, 5, 5), (1, 1, 3, 3), dict(padding_mode="mirror", padding=1)),
    ((1, 1, 3, 5), (1, 1, 3, 3), dict(padding=3, padding_mode="reflect")),
    ((1, 1, 3, 5), (1, 1, 3, 3), dict(padding=(0, 6), padding_mode="circular")),
    ((1, 1, 4, 4), (1, 1, 3, 3), dict(dilation=2)),
    ((1, 1, 4, 4), (1, 1, 6, 2), dict(padding=(0, 1))),
]


@pytest.mark.parametrize("x_shape, w_shape, kwargs", INVALID_CONV, ids=str)
def test_naive_rejects_what_torch_rejects(torch_ref, x_shape, w_shape, kwargs):
    assert naive.conv_args_or_none(x_shape, w_shape, **kwargs) is None
    x = np.zeros(x_shape, np.float32)
    w = np.zeros(w_shape, np.float32)
    with pytest.raises(Exception):
        torch_ref.conv2d(x, w, **kwargs)


INVALID_POOL = [
    ((1, 1, 5, 5), dict(kernel_size=3, padding=2)),
    ((1, 1, 2, 5), dict(kernel_size=3, padding=0)),
    ((1, 1, 5, 5), dict(kernel_size=3, stride=0)),
    ((1, 1, 5, 5), dict(kernel_size=0)),
]


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("x_shape, kwargs", INVALID_POOL, ids=str)
def test_naive_pool_rejects_what_torch_rejects(torch_ref, kind, x_shape, kwargs):
    assert naive.pool_args_or_none(x_shape, **kwargs) is None
    with pytest.raises(Exception):
        torch_ref.pool(kind, np.zeros(x_shape, np.float32), **kwargs)


DEPTHWISE_CASES = [
    ((2, 3, 7, 6), (3, 1, 3, 3), True, dict(padding=1)),
    ((1, 4, 9, 8), (4, 1, 3, 3), False, dict(stride=2, padding=1)),
    ((1, 2, 9, 9), (2, 1, 3, 2), True, dict(stride=(2, 1), padding=(2, 0), dilation=(2, 3))),
    ((1, 3, 5, 5), (3, 1, 1, 1), True, {}),
]


@pytest.mark.parametrize("case", DEPTHWISE_CASES, ids=lambda c: f"{c[0]}-{c[1]}-{c[3]}")
def test_naive_depthwise_matches_torch(torch_ref, case):
    x_shape, w_shape, with_bias, kwargs = case
    rng, x, w, b = _data(x_shape, w_shape, with_bias, seed=4)
    y = naive.naive_conv2d_depthwise(x, w, b, **kwargs)
    t_y = torch_ref.conv2d(x, w, b, np.zeros(y.shape, np.float32), groups=x_shape[1], **kwargs)[0]
    np.testing.assert_allclose(y, t_y, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("x_shape, w_shape", [((1, 3, 5, 5), (3, 2, 3, 3)), ((1, 3, 5, 5), (6, 1, 3, 3))])
def test_naive_depthwise_refuses_other_groupings(x_shape, w_shape):
    with pytest.raises(naive.InvalidArguments):
        naive.naive_conv2d_depthwise(np.zeros(x_shape), np.zeros(w_shape))
