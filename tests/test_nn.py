"""Gradients of every trainable layer, checked against central finite differences.

The engine computes in float32, so the checks use a smooth setting where
possible (tanh, average pooling, inputs away from kinks and ties) and a scalar
loss L = sum(r * y) with a fixed random r, evaluated in float64 from the
float32 output. For every input and parameter array the analytic gradient g
is compared with (L(p + e) - L(p - e)) / 2e:

- along g's own direction (catches a wrong scale or a missing term), and
- at a handful of coordinates: the largest entries of |g| and random ones.
"""

from __future__ import annotations

import numpy as np
import pytest

import naive

from cnn_cli.layers import ACTIVATIONS, Activation, GlobalPool, Pool
from cnn_cli import nn
from cnn_cli.nn import (
    BatchNorm2d,
    Conv2d,
    Dropout,
    Flatten,
    Linear,
    NetVLAD,
    Network,
    Residual,
    softmax_cross_entropy,
)
from cnn_cli.pipeline import build_layers, load_architecture


def _built(layer, shape, seed=0):
    """Build ``layer`` for input ``shape`` (C, H, W) or (F,) and return it."""
    layer.build(shape, np.random.default_rng(seed))
    return layer


def _loss(layer, x, r, reset):
    reset()
    y = layer.forward(x, train=True)
    return float(np.sum(r.astype(np.float64) * y.astype(np.float64)))


def _numeric(f, arr, direction, eps):
    """Central difference of f() along ``direction``, perturbing ``arr`` in place (restored after)."""
    saved = arr.copy()
    try:
        return naive.directional_derivative(naive.in_place(f, arr), saved, direction, eps)
    finally:
        arr[...] = saved


def check_gradients(layer, x, *, eps=1e-2, rtol=2e-2, atol_frac=2e-3, coords=6, seed=0,
                    reset=lambda: None, skip=()):
    """Compare ``layer.backward`` with finite differences for the input and every parameter.

    ``atol_frac``: absolute tolerance as a fraction of the array's largest |gradient|,
    for coordinates whose gradient is near zero. Returns the analytic gradients.
    """
    rng = np.random.default_rng(seed)
    x = np.ascontiguousarray(x, dtype=np.float32)
    reset()
    y = layer.forward(x, train=True)
    r = rng.standard_normal(y.shape).astype(np.float32)
    if hasattr(layer, "zero_grad"):
        layer.zero_grad()
    gx = layer.backward(r.copy())
    assert gx.shape == x.shape, "backward pass: grad_x shape"
    assert gx.dtype == np.float32, "backward pass: grad_x dtype"
    analytic = {"input": np.array(gx, dtype=np.float64)}
    targets = {"input": x}
    for name, p in getattr(layer, "params", {}).items():
        assert layer.grads[name].shape == p.shape, f"backward pass: grad of {name} shape"
        analytic[name] = np.array(layer.grads[name], dtype=np.float64)
        targets[name] = p
    f = lambda: _loss(layer, x, r, reset)  # noqa: E731
    for name, arr in targets.items():
        if name in skip:
            continue
        g = analytic[name]
        gmax = np.abs(g).max()
        assert np.all(np.isfinite(g)), f"backward pass: {name} gradient not finite"
        atol = atol_frac * gmax + 1e-6
        # Along the analytic gradient: the slope must be |g|.
        if gmax > 0:
            d = (g / np.linalg.norm(g)).astype(np.float32)
            slope = _numeric(f, arr, d, eps)
            assert slope == pytest.approx(np.linalg.norm(g), rel=rtol, abs=atol), \
                f"backward pass: {name}, slope along the gradient"
        # Coordinates: the largest gradients and random ones.
        flat = np.abs(g).ravel()
        picks = list(np.argsort(-flat, kind="stable")[: coords // 2])
        picks += list(rng.choice(flat.size, size=min(coords - len(picks), flat.size), replace=False))
        for i in dict.fromkeys(int(p) for p in picks):
            d = np.zeros(arr.shape, np.float32)
            d.flat[i] = 1
            num = _numeric(f, arr, d, eps)
            idx = np.unravel_index(i, arr.shape)
            assert abs(num - g.flat[i]) <= rtol * max(abs(num), abs(g.flat[i])) + atol, \
                f"backward pass: {name}{list(idx)}: analytic {g.flat[i]:.6g}, numeric {num:.6g}"
    return analytic


def _away_from_zero(rng, shape, low=0.1, high=1.5):
    """Values with |v| in [low, high], random signs: no kinks within a 1e-2 step."""
    return (rng.uniform(low, high, shape) * rng.choice([-1.0, 1.0], shape)).astype(np.float32)


def _distinct(rng, shape, spacing=0.02):
    """A random permutation of equally spaced values: no ties within spacing/2."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * spacing).reshape(shape).astype(np.float32)


# --------------------------------------------------------------------------- Conv2d


CONV_CASES = [
    dict(out_channels=3, kernel_size=3),
    dict(out_channels=4, kernel_size=3, stride=2, padding=1),
    dict(out_channels=4, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)),
    dict(out_channels=4, kernel_size=3, padding=1, groups=2),
    dict(out_channels=4, kernel_size=3, padding=1, groups=4),
    dict(out_channels=2, kernel_size=3, padding=2, dilation=2),
    dict(out_channels=2, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(out_channels=2, kernel_size=3, padding=1, padding_mode="circular", bias=False),
    dict(out_channels=3, kernel_size=1),
]


@pytest.mark.parametrize("options", CONV_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_conv2d_gradients(options):
    rng = np.random.default_rng(1)
    options = dict(options)
    out_channels = options.pop("out_channels")
    kernel = options.pop("kernel_size")
    layer = _built(Conv2d(out_channels, kernel, **options), (4, 7, 6))
    if "bias" in layer.params:
        layer.params["bias"][...] = rng.standard_normal(out_channels)
    grads = check_gradients(layer, rng.standard_normal((2, 4, 7, 6)))
    assert ("bias" in grads) == options.get("bias", True)


def test_conv2d_gradients_accumulate_until_zero_grad():
    """Two backward passes sum into ``grads`` (as torch does); zero_grad clears them."""
    rng = np.random.default_rng(2)
    layer = _built(Conv2d(2, 3, padding=1), (1, 5, 5))
    x = rng.standard_normal((1, 1, 5, 5)).astype(np.float32)
    g = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    layer.forward(x, train=True)
    layer.backward(g)
    once = {k: v.copy() for k, v in layer.grads.items()}
    layer.forward(x, train=True)
    layer.backward(g)
    for k in once:
        np.testing.assert_allclose(layer.grads[k], 2 * once[k], rtol=1e-5, atol=1e-6)
    layer.zero_grad()
    assert all(not v.any() for v in layer.grads.values())


# --------------------------------------------------------------------------- Linear, Flatten


def test_linear_gradients():
    rng = np.random.default_rng(3)
    layer = _built(Linear(5), (7,))
    layer.params["bias"][...] = rng.standard_normal(5)
    check_gradients(layer, rng.standard_normal((4, 7)))


def test_linear_without_bias_has_no_bias_parameter():
    layer = _built(Linear(3, bias=False), (4,))
    assert set(layer.params) == {"weight"}
    check_gradients(layer, np.random.default_rng(4).standard_normal((2, 4)))


def test_flatten_round_trip_in_c_order():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    layer = Flatten()
    assert layer.build((3, 4, 5), rng) == (60,)
    y = layer.forward(x, train=True)
    np.testing.assert_array_equal(y, x.reshape(2, 60))
    g = rng.standard_normal((2, 60)).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(g), g.reshape(2, 3, 4, 5))


# --------------------------------------------------------------------------- BatchNorm2d


def test_batchnorm_gradients_train_mode():
    rng = np.random.default_rng(6)
    layer = _built(BatchNorm2d(), (3, 4, 5))
    layer.params["weight"][...] = rng.uniform(0.5, 1.5, 3)
    layer.params["bias"][...] = rng.standard_normal(3)
    x = rng.standard_normal((3, 3, 4, 5)) * rng.uniform(0.5, 3, (1, 3, 1, 1)) + rng.standard_normal((1, 3, 1, 1))
    check_gradients(layer, x)


def test_batchnorm_train_output_is_normalised_and_eval_uses_running_stats():
    rng = np.random.default_rng(7)
    layer = _built(BatchNorm2d(), (2, 3, 3))
    x = (rng.standard_normal((4, 2, 3, 3)) * 3 + 5).astype(np.float32)
    y = layer.forward(x, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    m = x.mean(axis=(0, 2, 3), dtype=np.float64)
    v = x.var(axis=(0, 2, 3), ddof=1, dtype=np.float64)
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.1 * m, rtol=1e-5)
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 + 0.1 * v, rtol=1e-5)
    assert int(layer.buffers["num_batches_tracked"]) == 1
    ye = layer.forward(x, train=False)
    rm, rv = layer.buffers["running_mean"], layer.buffers["running_var"]
    expect = (x - rm[None, :, None, None]) / np.sqrt(rv[None, :, None, None] + 1e-5)
    np.testing.assert_allclose(ye, expect, rtol=1e-5, atol=1e-5)
    assert int(layer.buffers["num_batches_tracked"]) == 1, "eval must not touch the statistics"


# --------------------------------------------------------------------------- Residual


@pytest.mark.parametrize("c_in,c_out,stride", [(4, 4, 1), (3, 5, 2), (3, 5, 1), (4, 4, 2)],
                         ids=["identity", "downsample-stride2", "downsample-channels", "downsample-same-channels"])
def test_residual_gradients(c_in, c_out, stride):
    rng = np.random.default_rng(8)
    layer = _built(Residual(c_out, stride=stride), (c_in, 6, 6))
    assert ("downsample.0.weight" in layer.params) == (stride != 1 or c_in != c_out)
    # Non-trivial batch-norm affine parameters, so their gradients matter.
    for name, p in layer.params.items():
        if name.endswith("bn1.weight") or name.endswith("bn2.weight") or name.endswith(".1.weight"):
            p[...] = rng.uniform(0.5, 1.5, p.shape)
        elif name.endswith(".bias"):
            p[...] = rng.standard_normal(p.shape) * 0.5
    # The block has ReLUs after batch norm, so many values sit near a kink: a
    # small step keeps them from being crossed (at 1e-2 a few coordinates are
    # off by 5-10%), at the cost of some float32 noise.
    check_gradients(layer, rng.standard_normal((3, c_in, 6, 6)), eps=1e-4, rtol=3e-2, atol_frac=5e-3)


def test_residual_state_names_follow_torchvision_basic_block():
    layer = _built(Residual(8, stride=2), (4, 6, 6))
    names = [n for n, _ in layer.state()]
    assert names[:2] == ["conv1.weight", "bn1.weight"]
    assert set(names) == {
        "conv1.weight", "conv2.weight", "downsample.0.weight",
        *(f"{bn}.{k}" for bn in ("bn1", "bn2", "downsample.1")
          for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    }


# --------------------------------------------------------------------------- NetVLAD


def test_netvlad_gradients():
    rng = np.random.default_rng(9)
    layer = _built(NetVLAD(clusters=3), (4, 3, 3))
    layer.params["conv.bias"][...] = rng.standard_normal(3) * 0.3
    check_gradients(layer, rng.standard_normal((2, 4, 3, 3)))


def test_netvlad_output_is_unit_length_and_intra_normalised():
    rng = np.random.default_rng(10)
    layer = _built(NetVLAD(clusters=4), (5, 3, 4))
    y = layer.forward(rng.standard_normal((3, 5, 3, 4)).astype(np.float32))
    assert y.shape == (3, 20)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)
    blocks = np.linalg.norm(y.reshape(3, 4, 5), axis=2)
    np.testing.assert_allclose(blocks, 0.5, rtol=1e-4)  # K equal unit blocks, then /sqrt(K)


# --------------------------------------------------------------------------- pooling


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 0), ((2, 3), (2, 1), (1, 0))])
def test_avgpool_gradients(kernel, stride, padding):
    rng = np.random.default_rng(11)
    layer = Pool("avgpool", kernel, stride, padding)
    check_gradients(layer, rng.standard_normal((2, 3, 7, 6)))


@pytest.mark.parametrize("kernel,stride,padding", [(2, None, 0), (3, 2, 1), (3, 1, 0)])
def test_maxpool_gradients(kernel, stride, padding):
    rng = np.random.default_rng(12)
    layer = Pool("maxpool", kernel, stride, padding)
    # Distinct values 0.02 apart and a 4e-3 step: no argmax ever changes.
    check_gradients(layer, _distinct(rng, (2, 2, 7, 6)), eps=4e-3)


def test_global_avgpool_gradients():
    rng = np.random.default_rng(13)
    layer = GlobalPool("globalavgpool")
    check_gradients(layer, rng.standard_normal((2, 3, 4, 5)))


def test_global_maxpool_gradients():
    rng = np.random.default_rng(14)
    layer = GlobalPool("globalmaxpool")
    check_gradients(layer, _distinct(rng, (2, 3, 4, 5)), eps=4e-3)


# --------------------------------------------------------------------------- activations, dropout


@pytest.mark.parametrize("kind", sorted(ACTIVATIONS))
def test_activation_gradients(kind):
    rng = np.random.default_rng(15)
    layer = Activation(kind, slope=0.1) if kind == "leaky_relu" else Activation(kind)
    check_gradients(layer, _away_from_zero(rng, (2, 3, 4, 5)), coords=10)


def test_activation_values():
    x = np.array([[-2.0, -0.5, 0.5, 3.0]], np.float32)
    expect = {
        "relu": [0, 0, 0.5, 3], "leaky_relu": [-0.2, -0.05, 0.5, 3], "abs": [2, 0.5, 0.5, 3],
        "square": [4, 0.25, 0.25, 9], "tanh": np.tanh(x[0]), "sigmoid": 1 / (1 + np.exp(-x[0])),
        "elu": [0.1 * np.expm1(-2), 0.1 * np.expm1(-0.5), 0.5, 3],
        "selu": 1.0507009873554805 * np.where(x[0] > 0, x[0], 1.6732632423543772 * np.expm1(x[0])),
        "softplus": np.log1p(np.exp(x[0])),
    }
    assert set(expect) == set(ACTIVATIONS)
    for kind, want in expect.items():
        layer = Activation(kind, slope=0.1)
        np.testing.assert_allclose(layer.forward(x)[0], want, rtol=1e-6, atol=1e-7, err_msg=kind)


def test_dropout_gradients_with_fixed_mask():
    rng = np.random.default_rng(16)
    layer = Dropout(0.5)

    def reset():
        layer.rng = np.random.default_rng(123)

    check_gradients(layer, rng.standard_normal((4, 10)), reset=reset, coords=10)


def test_dropout_mask_scale_and_eval_identity():
    x = np.ones((50, 200), np.float32)
    layer = Dropout(0.3)
    layer.rng = np.random.default_rng(0)
    y = layer.forward(x, train=True)
    kept = y != 0
    assert 0.65 < kept.mean() < 0.75
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(layer.backward(x), y)  # the same mask scales the gradient
    np.testing.assert_array_equal(layer.forward(x, train=False), x)
    zero = Dropout(0.0)
    np.testing.assert_array_equal(zero.forward(x, train=True), x)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5])
def test_dropout_rejects_bad_p(p):
    with pytest.raises(ValueError, match="dropout p"):
        Dropout(p)


# --------------------------------------------------------------------------- loss


def _reference_cross_entropy(logits, labels):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    probs = np.exp(logp)
    onehot = np.eye(logits.shape[1])[labels]
    return -logp[np.arange(n), labels].mean(), (probs - onehot) / n, probs


@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (10.0, 0.0), (3.0, 1000.0), (30.0, -500.0)])
def test_softmax_cross_entropy_matches_float64_reference(scale, offset):
    rng = np.random.default_rng(17)
    logits = (rng.standard_normal((6, 5)) * scale + offset).astype(np.float32)
    labels = rng.integers(0, 5, 6)
    loss, grad, probs = softmax_cross_entropy(logits, labels)
    ref_loss, ref_grad, ref_probs = _reference_cross_entropy(logits, labels)
    assert np.isfinite(loss)
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert grad.dtype == np.float32 and grad.shape == logits.shape
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-4, atol=1e-7)


def test_softmax_cross_entropy_gradient_by_finite_differences():
    rng = np.random.default_rng(18)
    logits = rng.standard_normal((3, 4))
    labels = np.array([0, 3, 1])
    _, grad, _ = softmax_cross_entropy(logits.astype(np.float32), labels)
    for i in range(3):
        for j in range(4):
            d = np.zeros_like(logits)
            d[i, j] = 1e-4
            num = (_reference_cross_entropy(logits + d, labels)[0]
                   - _reference_cross_entropy(logits - d, labels)[0]) / 2e-4
            assert grad[i, j] == pytest.approx(num, rel=1e-3, abs=1e-6)


# --------------------------------------------------------------------------- whole networks


def _network(arch, channels=1, size=16, classes=3, seed=0):
    _, _, tables = load_architecture(arch)
    if arch == "alexnet":
        tables = [dict(t, p=0.0) if t["type"] == "dropout" else t for t in tables]
    layers = build_layers(tables, arch, substitutions={"classes": classes})
    return Network(layers, (channels, size, size), seed=seed)


#: Finite-difference steps per architecture: ReLU/max-pool kinks argue for a
#: small step, float32 noise for a large one. NetVLAD normalises its input, so
#: its first layer barely moves the loss and needs the larger step.
NETWORK_EPS = {"lenet": 1e-3, "alexnet": 3e-4, "resnet": 1e-4, "netvlad": 1e-2}


@pytest.mark.parametrize("arch", sorted(NETWORK_EPS))
def test_network_gradients(arch):
    """Loss = float64 cross-entropy of the float32 logits; parameters of the first and last layers."""
    rng = np.random.default_rng(19)
    eps = NETWORK_EPS[arch]
    net = _network(arch)
    # Nonzero biases so their gradients are not trivially tied to others.
    for name, p, _ in net.parameters():
        if name.endswith("bias"):
            p[...] = rng.standard_normal(p.shape) * 0.1
    x = rng.standard_normal((4, 1, 16, 16)).astype(np.float32)
    labels = np.array([0, 1, 2, 1])

    def loss():
        return _reference_cross_entropy(net.forward(x, train=True), labels)[0]

    # The first conv skips dL/dx by default (nothing needs it in training); ask for it.
    net.layers[0].input_grad = True
    net.zero_grad()
    _, grad, _ = softmax_cross_entropy(net.forward(x, train=True), labels)
    gx = net.backward(grad)
    assert gx is not None and gx.shape == x.shape
    params = list(net.parameters())
    first, last = params[0][0].split(".")[0], params[-1][0].split(".")[0]
    assert first != last
    checked = 0
    for name, p, g in params:
        if name.split(".")[0] not in (first, last):
            continue
        g = g.astype(np.float64)
        norm, gmax = np.linalg.norm(g), np.abs(g).max()
        assert norm > 0, f"{arch}: {name} has a zero gradient"
        d = (g / norm).astype(np.float32)
        assert _numeric(loss, p, d, eps) == pytest.approx(norm, rel=1e-2), \
            f"{arch}: {name}, slope along the gradient"
        flat = np.abs(g).ravel()
        picks = list(np.argsort(-flat, kind="stable")[:2]) + [int(rng.integers(flat.size))]
        for i in dict.fromkeys(int(k) for k in picks):
            d = np.zeros(p.shape, np.float32)
            d.flat[i] = 1
            num = _numeric(loss, p, d, eps)
            assert abs(num - g.flat[i]) <= 3e-2 * max(abs(num), abs(g.flat[i])) + 1e-2 * gmax, \
                f"{arch}: {name}{list(np.unravel_index(i, p.shape))}: analytic {g.flat[i]:.6g}, numeric {num:.6g}"
        checked += 1
    assert checked >= 3
    # The input gradient too, along its own direction.
    gx = gx.astype(np.float64)
    d = (gx / np.linalg.norm(gx)).astype(np.float32)
    assert _numeric(loss, x, d, eps) == pytest.approx(np.linalg.norm(gx), rel=1e-2)


@pytest.mark.parametrize("arch", ["lenet", "alexnet", "netvlad"])
def test_network_runs_max_pool_before_relu_with_identical_results(arch):
    """The network swaps each ReLU -> max-pool pair and fuses each conv -> max-pool pair then
    formed; outputs and every gradient must be exactly those of running the layers in their
    declared order, ties included."""
    rng = np.random.default_rng(23)
    net = _network(arch)
    layers = [step.layer for step in net._steps]
    swapped = [i for i in range(1, len(layers))
               if getattr(layers[i], "kind", "") == "relu" and isinstance(layers[i - 1], (Pool, nn._ConvPool))]
    assert swapped, "expected a ReLU -> max-pool pair to swap"
    assert any(isinstance(layer, nn._ConvPool) for layer in layers), "expected a conv -> max-pool pair to fuse"
    net.layers[0].input_grad = True
    # Negative biases make many windows all-negative (all zero after ReLU: ties).
    for name, p, _ in net.parameters():
        if name.endswith("bias"):
            p[...] = -np.abs(rng.standard_normal(p.shape)) * 0.5
    x = rng.standard_normal((3, 1, 16, 16)).astype(np.float32)
    x[0, 0, :4, :4] = 0.0
    grad_out = rng.standard_normal((3, 3)).astype(np.float32)

    net.zero_grad()
    swapped_y = net.forward(x, train=True)
    swapped_gx = net.backward(grad_out)
    swapped_grads = {name: g.copy() for name, _, g in net.parameters()}

    net.zero_grad()
    y = x
    for layer in net.layers:
        y = layer.forward(y, True)
    g = grad_out
    for layer in reversed(net.layers):
        g = layer.backward(g)
    np.testing.assert_array_equal(swapped_y, y)
    np.testing.assert_array_equal(swapped_gx, g)
    for name, _, grad in net.parameters():
        np.testing.assert_array_equal(swapped_grads[name], grad, err_msg=name)
