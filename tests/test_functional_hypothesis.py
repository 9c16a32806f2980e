"""Property tests over random shapes and arguments.

For every drawn call, naive.py decides on its own whether the arguments are
valid (torch's rules). Valid: the engine must match the naive loops, forward
and backward. Invalid: the engine must raise ValueError.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import naive
from naive import assert_close

F = pytest.importorskip("cnn_cli.functional")

SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def _pair_of(values):
    return st.one_of(values, st.tuples(values, values))


# About one call in four gets one deliberately illegal argument; the rest can
# still be illegal by chance (kernel larger than the input, reflect padding
# too wide, ...), so both branches of each property are exercised.
BREAKABLE = st.sampled_from([None, None, None, "stride", "dilation", "padding", "channels", "groups",
                             None, None, None, None])
BAD_VALUES = {
    "stride": _pair_of(st.integers(-1, 0)) | st.tuples(st.integers(1, 2), st.integers(-1, 0)),
    "dilation": _pair_of(st.integers(-1, 0)) | st.tuples(st.integers(-1, 0), st.integers(1, 2)),
    "padding": st.sampled_from([-1, (0, -1), (-2, 1), "full", "SAME"]),
}


@st.composite
def conv_calls(draw):
    broken = draw(BREAKABLE)
    groups = draw(st.integers(1, 3))
    cin_g, cout_g = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    c_in, c_out = cin_g * groups, cout_g * groups
    if broken == "channels":
        c_in = draw(st.integers(1, 4))
    elif broken == "groups":
        c_out = draw(st.integers(1, 4))
    size = st.integers(1, 12)
    x_shape = (draw(st.integers(1, 2)), c_in, draw(size), draw(size))
    w_shape = (c_out, cin_g, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(BAD_VALUES["stride"] if broken == "stride" else _pair_of(st.integers(1, 3)))
    dilation = draw(BAD_VALUES["dilation"] if broken == "dilation" else _pair_of(st.integers(1, 2)))
    if broken == "padding":
        padding = draw(BAD_VALUES["padding"])
    else:
        padding = draw(_pair_of(st.integers(0, 3)) | st.sampled_from(["same", "valid"]))
        if padding == "same" and draw(st.booleans()):
            stride = 1  # "same" needs stride 1; keep half of those calls legal
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  padding_mode=draw(st.sampled_from(naive.PADDING_MODES)))
    with_bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    return x_shape, w_shape, with_bias, kwargs, seed


def _conv_data(x_shape, w_shape, with_bias, seed, out_shape):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    b = rng.standard_normal(w_shape[0]).astype(np.float32) if with_bias else None
    gy = rng.standard_normal(out_shape).astype(np.float32)
    return x, w, b, gy


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "fft", "auto"])
@SETTINGS
@given(call=conv_calls())
def test_conv2d_matches_naive_or_raises(algorithm, call):
    x_shape, w_shape, with_bias, kwargs, seed = call
    args = naive.conv_args_or_none(x_shape, w_shape, **kwargs)
    event("valid" if args is not None else "invalid")
    if args is None:
        x, w, b, gy = _conv_data(x_shape, w_shape, with_bias, seed, (1, 1, 1, 1))
        with pytest.raises(ValueError):
            F.conv2d(x, w, b, algorithm=algorithm, **kwargs)
        with pytest.raises(ValueError):
            F.conv2d_backward(x, w, gy, algorithm=algorithm, **kwargs)
        return
    x, w, b, gy = _conv_data(x_shape, w_shape, with_bias, seed, args.out_shape)
    assert_close(F.conv2d(x, w, b, algorithm=algorithm, **kwargs),
                 naive.naive_conv2d(x, w, b, **kwargs), "forward")
    grads = F.conv2d_backward(x, w, gy, algorithm=algorithm, **kwargs)
    for what, actual, expected in zip(("grad_x", "grad_weight", "grad_bias"), grads,
                                      naive.naive_conv2d_backward(x, w, gy, **kwargs)):
        assert_close(actual, expected, what)


@SETTINGS
@given(call=conv_calls())
def test_naive_conv_agrees_with_torch(torch_ref, call):
    """naive.py's validity rules and results are torch's (otherwise naive is wrong)."""
    x_shape, w_shape, with_bias, kwargs, seed = call
    args = naive.conv_args_or_none(x_shape, w_shape, **kwargs)
    if args is None:
        if not isinstance(kwargs["padding"], str) and min(naive.pair(kwargs["padding"], "")) < 0:
            return  # stricter than torch on purpose: torch.nn.Conv2d crops by negative padding
        x, w, b, _ = _conv_data(x_shape, w_shape, with_bias, seed, (1, 1, 1, 1))
        with pytest.raises(Exception):
            torch_ref.conv2d(x, w, b, **kwargs)
        return
    x, w, b, gy = _conv_data(x_shape, w_shape, with_bias, seed, args.out_shape)
    expected = torch_ref.conv2d(x, w, b, gy, **kwargs)
    mine = (naive.naive_conv2d(x, w, b, **kwargs), *naive.naive_conv2d_backward(x, w, gy, **kwargs))
    for what, m, t in zip(("forward", "grad_x", "grad_weight", "grad_bias"), mine, expected):
        np.testing.assert_allclose(m, t, rtol=1e-9, atol=1e-9, err_msg=what)


@st.composite
def pool_calls(draw):
    broken = draw(BREAKABLE)
    size = st.integers(1, 12)
    x_shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(size), draw(size))
    kernel_size = draw(_pair_of(st.integers(1, 4)))
    stride = draw(st.none() | _pair_of(st.integers(1, 3)))
    kh, kw = naive.pair(kernel_size, "kernel_size")
    padding = draw(st.tuples(st.integers(0, kh // 2), st.integers(0, kw // 2)))
    if padding[0] == padding[1] and draw(st.booleans()):
        padding = padding[0]
    if broken == "stride":
        stride = draw(BAD_VALUES["stride"])
    elif broken in ("dilation", "channels"):  # no such arguments: break kernel_size instead
        kernel_size = draw(st.sampled_from([0, (2, 0), -1]))
    elif broken == "padding":
        padding = draw(st.sampled_from([-1, (0, -1), (kh // 2 + 1, 0), (0, kw // 2 + 1)]))
    return x_shape, kernel_size, stride, padding, draw(st.integers(0, 2**32 - 1))


POOLS = {
    "max": (F.max_pool2d, F.max_pool2d_backward, naive.naive_max_pool2d, naive.naive_max_pool2d_backward),
    "avg": (F.avg_pool2d, F.avg_pool2d_backward, naive.naive_avg_pool2d, naive.naive_avg_pool2d_backward),
}


def _pool_data(x_shape, seed, out_shape, ties):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(np.float32)
    if ties:  # few distinct values: many ties for max pooling
        x = np.round(x).astype(np.float32)
    return x, rng.standard_normal(out_shape).astype(np.float32)


@pytest.mark.parametrize("kind", list(POOLS))
@SETTINGS
@given(call=pool_calls(), ties=st.booleans())
def test_pool_matches_naive_or_raises(kind, call, ties):
    x_shape, k, s, p, seed = call
    fwd, bwd, naive_fwd, naive_bwd = POOLS[kind]
    args = naive.pool_args_or_none(x_shape, k, s, p)
    event("valid" if args is not None else "invalid")
    if args is None:
        x, gy = _pool_data(x_shape, seed, (1, 1, 1, 1), ties)
        with pytest.raises(ValueError):
            fwd(x, k, s, p)
        with pytest.raises(ValueError):
            bwd(x, gy, k, s, p)
        return
    x, gy = _pool_data(x_shape, seed, args.out_shape, ties)
    assert_close(fwd(x, k, s, p), naive_fwd(x, k, s, p), "forward")
    assert_close(bwd(x, gy, k, s, p), naive_bwd(x, gy, k, s, p), "grad_x")


@pytest.mark.parametrize("kind", list(POOLS))
@SETTINGS
@given(call=pool_calls(), ties=st.booleans())
def test_naive_pool_agrees_with_torch(torch_ref, kind, call, ties):
    x_shape, k, s, p, seed = call
    _, _, naive_fwd, naive_bwd = POOLS[kind]
    args = naive.pool_args_or_none(x_shape, k, s, p)
    if args is None:
        x, _ = _pool_data(x_shape, seed, (1, 1, 1, 1), ties)
        with pytest.raises(Exception):
            torch_ref.pool(kind, x, k, s, p)
        return
    x, gy = _pool_data(x_shape, seed, args.out_shape, ties)
    t_y, t_gx = torch_ref.pool(kind, x, k, s, p, gy)
    np.testing.assert_allclose(naive_fwd(x, k, s, p), t_y, rtol=1e-12, atol=1e-12, err_msg="forward")
    np.testing.assert_allclose(naive_bwd(x, gy, k, s, p), t_gx, rtol=1e-12, atol=1e-12, err_msg="grad_x")
