"""The training kernels of ``kernels.grad`` against their naive twins (tests/naive.py):
batch norm in training, forward and backward; grad_x by columns and col2im (strides above 1,
widening layers); the weight gradient four filters a pass. The naive batch norm is itself checked against torch."""

import naive
import numpy as np
import pytest

from cnn_cli import config, kernels
from cnn_cli import functional as F
from cnn_cli.functional import conv, weight_grad
from cnn_cli.kernels import grad as grad_kernels
from cnn_cli.trainable import BatchNorm2d

BN_SHAPES = [(2, 3, 5, 7), (4, 16, 8, 8), (1, 2, 1, 1), (3, 5, 33, 17)]


def _bn_data(shape, seed, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + offset).astype(np.float32)
    weight = rng.standard_normal(shape[1]).astype(np.float32)
    bias = rng.standard_normal(shape[1]).astype(np.float32)
    gy = rng.standard_normal(shape).astype(np.float32)
    return x, weight, bias, gy


@pytest.mark.parametrize("shape", [s for s in BN_SHAPES if s[0] * s[2] * s[3] > 1])  # torch refuses one value
def test_naive_batch_norm_matches_torch(torch_ref, shape):
    torch = torch_ref.torch
    x, weight, bias, gy = _bn_data(shape, 1)
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, weight, bias))
    y = torch.nn.functional.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    y.backward(torch.tensor(gy, dtype=torch.float64))
    mine = naive.naive_batch_norm_train(x, weight, bias, 1e-5)[0]
    np.testing.assert_allclose(mine, y.detach().numpy(), rtol=1e-10, atol=1e-10)
    for got, ref in zip(naive.naive_batch_norm_backward(x, weight, gy, 1e-5), (xt.grad, wt.grad, bt.grad)):
        np.testing.assert_allclose(got, ref.numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("threaded", [False, True], ids=["one-thread", "split"])
@pytest.mark.parametrize("offset", [0.0, 100.0], ids=["centred", "offset"])
@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_matches_naive(shape, offset, threaded, monkeypatch):
    if threaded:
        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    x, weight, bias, gy = _bn_data(shape, 2, offset)
    y, xhat, mean, var = F.batch_norm_train(x, weight, bias, 1e-5)
    ref_y, ref_xhat, ref_mean, ref_var = naive.naive_batch_norm_train(x, weight, bias, 1e-5)
    naive.assert_close(y, ref_y, "y")
    naive.assert_close(xhat, ref_xhat, "xhat")
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, ref_var, rtol=1e-9)
    inv_std = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    got = F.batch_norm_backward(gy, xhat, inv_std, weight)
    for what, mine, ref in zip(("grad_x", "grad_weight", "grad_bias"), got,
                               naive.naive_batch_norm_backward(x, weight, gy, 1e-5)):
        naive.assert_close(mine, ref, what)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_with_relu_matches_naive(shape):
    """The ReLU fused into batch norm (ResNet's bn1): y = max(bn(x), 0), and the gradient through both."""
    x, weight, bias, gy = _bn_data(shape, 6)
    y, xhat, _, var = F.batch_norm_train(x, weight, bias, 1e-5, relu=True)
    ref_y = naive.naive_batch_norm_train(x, weight, bias, 1e-5)[0]
    naive.assert_close(y, np.maximum(ref_y, 0), "y")
    inv_std = (1 / np.sqrt(var + 1e-5)).astype(np.float32)
    kept = gy.copy()
    got = F.batch_norm_backward(gy, xhat, inv_std, weight, relu_out=y)
    np.testing.assert_array_equal(gy, kept)  # grad_y itself is left as it was
    ref = naive.naive_batch_norm_backward(x, weight, np.where(ref_y > 0, gy, 0), 1e-5)
    for what, mine, expected in zip(("grad_x", "grad_weight", "grad_bias"), got, ref):
        naive.assert_close(mine, expected, what)


def test_batch_norm_layer_uses_the_kernels_and_keeps_running_statistics():
    from cnn_cli.trainable import BatchNorm2d

    x, weight, bias, gy = _bn_data((4, 3, 6, 5), 3)
    bn = BatchNorm2d()
    bn.build((3, 6, 5), np.random.default_rng(0))
    bn.params["weight"][:], bn.params["bias"][:] = weight, bias
    y = bn.forward(x, train=True)
    naive.assert_close(y, naive.naive_batch_norm_train(x, weight, bias, 1e-5)[0], "y")
    count = 4 * 6 * 5
    np.testing.assert_allclose(bn.buffers["running_mean"], 0.1 * x.mean(axis=(0, 2, 3), dtype=np.float64), rtol=1e-6)
    np.testing.assert_allclose(bn.buffers["running_var"],
                               0.9 + 0.1 * x.var(axis=(0, 2, 3), dtype=np.float64) * count / (count - 1), rtol=1e-6)
    gx = bn.backward(gy)
    ref = naive.naive_batch_norm_backward(x, weight, gy, 1e-5)
    naive.assert_close(gx, ref[0], "grad_x")
    naive.assert_close(bn.grads["weight"], ref[1], "grad_weight")
    naive.assert_close(bn.grads["bias"], ref[2], "grad_bias")


def test_batch_norm_backward_masks_by_a_later_relu():
    """``relu_out`` (a residual block's output) zeroes the gradient where it is not positive, in the kernel:
    what the backward pass of the gradient masked beforehand gives, for the layer and its eval form."""
    rng = np.random.default_rng(9)
    x, gy, out = (rng.standard_normal((3, 4, 5, 6)).astype(np.float32) for _ in range(3))
    out[0, 0, 0, :3] = (0.0, -0.0, np.nan)
    masked = np.where(out > 0, gy, np.float32(0))
    weight = rng.uniform(0.5, 1.5, 4)
    for make in (lambda bn: bn, lambda bn: bn.evaluating()):
        bn, ref = BatchNorm2d(), BatchNorm2d()
        for layer in (bn, ref):
            layer.build((4, 5, 6), np.random.default_rng(0))
            layer.params["weight"][:] = weight
        layer, twin = make(bn), make(ref)
        layer.forward(x, train=True)
        twin.forward(x, train=True)
        # The kernel's vectorised sums may round in another order than on the masked copy.
        np.testing.assert_allclose(layer.backward(gy, relu_out=out), twin.backward(masked), rtol=1e-5, atol=1e-6)
        if layer is bn:
            np.testing.assert_allclose(bn.grads["weight"], ref.grads["weight"], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(bn.grads["bias"], ref.grads["bias"], rtol=1e-5, atol=1e-6)


def _conv_data(x_shape, w_shape, kwargs, seed):
    """x, weight and grad_y of a conv2d call with ``kwargs``, standard normal."""
    rng = np.random.default_rng(seed)
    gy_shape = naive.conv_args(x_shape, w_shape, **kwargs).out_shape
    return tuple(rng.standard_normal(shape).astype(np.float32) for shape in (x_shape, w_shape, gy_shape))


COLUMNS = [
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(stride=2, padding=1)),
    ((1, 2, 9, 8), (3, 2, 3, 2), dict(stride=(3, 2), padding=(1, 2))),
    ((2, 4, 9, 9), (6, 2, 3, 3), dict(stride=2, padding=2, dilation=2, groups=2)),
    ((2, 3, 5, 4), (4, 3, 1, 1), dict(stride=2)),
    ((1, 2, 5, 6), (2, 2, 3, 2), dict(stride=(2, 1), padding=(2, 1), dilation=(1, 2))),
    ((1, 2, 4, 4), (2, 2, 3, 3), dict(stride=3, padding=1)),   # rows and columns past the last window
    ((3, 8, 16, 16), (16, 8, 3, 3), dict(stride=2, padding=1)),  # several blocks of images
    ((2, 3, 8, 7), (8, 3, 3, 3), dict(padding=1)),                # stride 1, widening
    ((2, 4, 9, 9), (12, 2, 3, 3), dict(padding=(2, 1), dilation=2, groups=2)),
]


@pytest.mark.parametrize("threaded", [False, True], ids=["one-thread", "split"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", COLUMNS)
def test_grad_input_by_columns_matches_naive(x_shape, w_shape, kwargs, threaded, monkeypatch):
    monkeypatch.setattr(config, "GEMM_TILE_BYTES", 4096)  # blocks of one image or a few
    if threaded:
        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    calls = []
    monkeypatch.setattr(conv, "_grad_input_columns",
                        lambda *a, f=conv._grad_input_columns: calls.append(1) or f(*a))
    x, w, gy = _conv_data(x_shape, w_shape, kwargs, 4)
    gx, _, _ = F.conv2d_backward(x, w, gy, **kwargs)
    assert calls, "the call should take the columns path"
    naive.assert_close(gx, naive.naive_conv2d_backward(x, w, gy, **kwargs)[0], "grad_x")


@pytest.mark.parametrize("kernel, stride, padding, dilation, hw", [
    ((3, 3), (2, 2), (1, 1), (1, 1), (32, 31)),
    ((3, 3), (2, 1), (1, 0), (1, 2), (9, 11)),
    ((3, 2), (3, 2), (2, 1), (2, 1), (11, 10)),
    ((4, 5), (2, 3), (2, 1), (1, 1), (8, 13)),   # rows and columns past the last window
    ((2, 2), (1, 2), (0, 1), (1, 1), (5, 7)),
])
def test_col2im_by_phases_matches_col2im(kernel, stride, padding, dilation, hw):
    """The phases of the stride sum what the one-value-at-a-time scatter sums, over task ranges that
    start and end inside an image (each task owns one plane)."""
    (kh, kw), (sh, sw), (top, left), (dh, dw) = kernel, stride, padding, dilation
    h, w = hw
    ho, wo = (h + 2 * top - dh * (kh - 1) - 1) // sh + 1, (w + 2 * left - dw * (kw - 1) - 1) // sw + 1
    n, cin = 3, 4
    cols = np.random.default_rng(6).standard_normal((n, cin * kh * kw, ho * wo)).astype(np.float32)
    args = (kh, kw, ho, wo, sh, sw, dh, dw, top, left)
    ref, got = np.empty((n + 1, cin + 2, h, w), np.float32), np.full((n + 1, cin + 2, h, w), np.nan, np.float32)
    grad_kernels.col2im(cols, 1, 2, *args, ref, 0, n * cin)
    for first, last in ((0, 5), (5, 7), (7, n * cin)):
        grad_kernels.col2im_phases(cols, 1, 2, *args, got, first, last)
    np.testing.assert_allclose(got[1:, 2:], ref[1:, 2:], rtol=1e-6, atol=1e-6)
    assert np.isnan(got[0]).all() and np.isnan(got[1:, :2]).all(), "only the tasks' planes are written"


@pytest.mark.parametrize("kernel, padding, dilation, hw", [
    ((3, 3), (1, 1), (1, 1), (16, 16)),
    ((3, 2), (2, 0), (1, 2), (9, 11)),
    ((5, 3), (0, 1), (2, 1), (13, 7)),
    ((1, 1), (0, 0), (1, 1), (5, 6)),
])
def test_col2im_of_wide_columns_matches_col2im(kernel, padding, dilation, hw):
    """At stride 1, columns W_p wide (zeros in the garbage columns) give what col2im gives from the
    narrow ones, over task ranges that split images."""
    (kh, kw), (top, left), (dh, dw), (h, w) = kernel, padding, dilation, hw
    ho, wo = h + 2 * top - dh * (kh - 1), w + 2 * left - dw * (kw - 1)
    wp = wo + dw * (kw - 1)
    n, cin = 3, 4
    cols = np.random.default_rng(7).standard_normal((n, cin * kh * kw, ho, wo)).astype(np.float32)
    wide = np.zeros((n, cin * kh * kw, ho, wp), np.float32)
    wide[..., :wo] = cols
    ref, got = np.empty((n + 1, cin + 2, h, w), np.float32), np.full((n + 1, cin + 2, h, w), np.nan, np.float32)
    grad_kernels.col2im(cols.reshape(n, -1, ho * wo), 1, 2, kh, kw, ho, wo, 1, 1, dh, dw, top, left, ref, 0, n * cin)
    for first, last in ((0, 5), (5, 7), (7, n * cin)):
        grad_kernels.col2im_wide(wide.reshape(n, -1, ho * wp), 1, 2, kh, kw, ho, wp, dh, dw, top, left, got,
                                 first, last)
    np.testing.assert_allclose(got[1:, 2:], ref[1:, 2:], rtol=1e-6, atol=1e-6)
    assert np.isnan(got[0]).all() and np.isnan(got[1:, :2]).all(), "only the tasks' planes are written"


PHASES = [
    ((3, 4, 32, 31), (8, 4, 3, 3), dict(stride=2, padding=1)),
    ((2, 3, 16, 16), (6, 3, 3, 3), dict(stride=2, padding=1)),         # filters not in fours
    ((2, 2, 11, 9), (5, 2, 4, 4), dict(stride=3, padding=2)),
    ((2, 3, 10, 13), (4, 3, 3, 5), dict(stride=(2, 3), padding=(0, 2))),
    ((1, 2, 9, 8), (4, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0))),
    ((2, 2, 12, 12), (4, 2, 3, 3), dict(stride=2, padding=[0, 1, 1, 0])),  # rows and columns past the windows
    ((2, 3, 7, 8), (4, 3, 2, 2), dict(stride=(1, 2), padding="valid")),
    ((2, 3, 12, 11), (6, 3, 5, 5), dict(padding=2)),                       # stride 1: one phase
    ((2, 1, 9, 10), (8, 1, 7, 7), dict(padding=3)),
    ((1, 2, 10, 9), (4, 2, 5, 4), dict(padding=(2, 1))),
]


@pytest.mark.parametrize("threaded", [False, True], ids=["one-thread", "split"])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", PHASES)
def test_weight_gradient_by_phases_matches_naive(x_shape, w_shape, kwargs, threaded, monkeypatch):
    """Strided windows that overlap take the phases of the stride, in tiles of a few values."""
    monkeypatch.setattr(kernels.conv, "GRAD_TILE", 40)
    if threaded:
        monkeypatch.setattr(config, "PARALLEL_MIN_WORK", 0)
    calls = []
    monkeypatch.setattr(weight_grad, "phases", lambda *a, f=weight_grad.phases: calls.append(1) or f(*a))
    x, w, gy = _conv_data(x_shape, w_shape, kwargs, 8)
    _, gw, _ = F.conv2d_backward(x, w, gy, **kwargs)
    assert calls, "the call should split x into phases"
    naive.assert_close(gw, naive.naive_conv2d_backward(x, w, gy, **kwargs)[1], "grad_weight")


@pytest.mark.parametrize("x_shape, w_shape, kwargs, why", [
    ((2, 3, 8, 8), (4, 3, 1, 1), dict(stride=2), "1x1: windows that do not overlap"),
    ((2, 4, 9, 9), (4, 2, 3, 3), dict(stride=2, padding=1, groups=2), "grouped"),
    ((2, 3, 9, 9), (4, 3, 3, 3), dict(stride=2, padding=1, padding_mode="reflect"), "reflect padding"),
    ((2, 3, 9, 9), (4, 3, 3, 3), dict(stride=2, padding=1, dilation=2), "dilated"),
    ((2, 3, 9, 9), (4, 3, 3, 3), dict(padding=1), "3 wide at stride 1: the stacked loops"),
])
def test_weight_gradient_by_phases_is_only_taken_where_it_applies(x_shape, w_shape, kwargs, why, monkeypatch):
    calls = []
    monkeypatch.setattr(weight_grad, "phases", lambda *a: calls.append(1))
    x, w, gy = _conv_data(x_shape, w_shape, kwargs, 9)
    _, gw, _ = F.conv2d_backward(x, w, gy, **kwargs)
    assert not calls, why
    naive.assert_close(gw, naive.naive_conv2d_backward(x, w, gy, **kwargs)[1], "grad_weight")


def test_weight_gradient_of_a_strided_layer_stays_exact_for_inf_in_x():
    """The zeros of grad_y past its rows would meet inf in x (0 * inf is NaN): x with inf takes im2col."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 3, 10, 10)).astype(np.float32)
    x[0, 1, 9, 9] = np.inf  # read by no window of 3x3 at stride 2 without padding (they end at row 8)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    gy = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
    _, gw, _ = F.conv2d_backward(x, w, gy, stride=2)
    x[0, 1, 9, 9] = 0.0
    naive.assert_close(gw, naive.naive_conv2d_backward(x, w, gy, stride=2)[1], "grad_weight")


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((2, 3, 9, 10), (4, 3, 3, 3), dict(padding=1)),
    ((3, 2, 23, 20), (8, 2, 3, 3), dict(padding=1)),                        # several tiles
    ((2, 4, 11, 12), (8, 2, 3, 3), dict(padding=2, dilation=2, groups=2)),  # four filters a group
    ((1, 2, 6, 9), (12, 2, 3, 3), dict(padding=(0, 1), dilation=(1, 2))),
])
def test_weight_gradient_four_filters_a_pass_matches_naive(x_shape, w_shape, kwargs, monkeypatch):
    monkeypatch.setattr(kernels.conv, "GRAD_TILE", 64)  # tiles of a few rows
    rng = np.random.default_rng(5)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(w_shape).astype(np.float32)
    gy = rng.standard_normal(naive.conv_args(x_shape, w_shape, **kwargs).out_shape).astype(np.float32)
    spec = F.ConvSpec(x_shape, w_shape, 1, kwargs.get("padding", 0), kwargs.get("dilation", 1),
                      kwargs.get("groups", 1), "zeros", "auto")
    naive.assert_close(weight_grad.stacked(x, gy, spec), naive.naive_conv2d_backward(x, w, gy, **kwargs)[1],
                       "grad_weight")
