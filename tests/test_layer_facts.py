"""Every registered layer type carries its own facts, and each fact is true.

A layer type is one class and one registry entry: its shape rule (``build``),
forward and backward, memory plan (``plan``), receptive field (``window``),
eval form (``evaluating``), ONNX form (``to_onnx``, checked against ONNX
Runtime in ``test_export.py``) and torch twin (``torch_twin``). This walks the
registry and fails for a type that lacks one, or whose plan or twin disagrees
with what the layer really does.
"""

import copy

import numpy as np
import pytest

from cnn_cli import functional as F
from cnn_cli import registry
from cnn_cli.filterbank import load_bank
from cnn_cli.layers import Layer

FIELDS = {"banks": lambda: [load_bank("edges")], "out_channels": lambda: 4, "out_features": lambda: 3}
ENTRIES = pytest.mark.parametrize("entry", registry.LAYER_TYPES, ids=lambda t: f"{t.name}-{t.cls.__name__}")


def made(entry):
    """(a layer of ``entry``'s type built with weights, its input shape: a list of them for a merge)."""
    layer = entry.make({f: make() for f, make in FIELDS.items() if f in entry.fields})
    in_shape = (12,) if entry.name in ("linear", "softmax") else (3, 12, 10)
    if layer.arity != 1:  # a merge: concat takes other channel counts, add and mul broadcast
        in_shape = [(3, 12, 10), (2, 12, 10) if entry.name == "concat" else (3, 1, 1)]
    layer.build(in_shape, np.random.default_rng(0)) if entry.where != registry.PIPELINE_ONLY else layer.build(in_shape)
    rng = np.random.default_rng(1)
    for arr in [*getattr(layer, "params", {}).values(), *getattr(layer, "buffers", {}).values()]:
        if arr.dtype.kind == "f":  # nothing trivially zero or one, and variances positive
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
    return layer, in_shape


@ENTRIES
def test_every_type_defines_its_facts(entry):
    cls = entry.cls
    for fact in ("to_onnx", "torch_twin"):
        assert getattr(cls, fact) is not getattr(Layer, fact), f"{cls.__name__} has no {fact}"
    for fact in ("plan", "evaluating", "window", "build", "forward"):
        assert callable(getattr(cls, fact)), fact


@ENTRIES
def test_plan_is_what_building_allocates(entry):
    layer, in_shape = made(entry)
    fresh = entry.make({f: make() for f, make in FIELDS.items() if f in entry.fields})
    planned_shape, planned_params = fresh.plan(in_shape)
    if isinstance(in_shape, list):
        in_shape = list(in_shape)
    assert tuple(planned_shape) == tuple(layer.build(in_shape))
    buffers = sum(v.size for v in getattr(layer, "buffers", {}).values()) if hasattr(layer, "params") else 0
    if entry.where == registry.PIPELINE_ONLY:  # a bank's estimate counts each bias once per input channel
        assert layer.num_params <= planned_params <= 1.01 * layer.num_params
    else:
        assert planned_params == layer.num_params + buffers
    assert not getattr(fresh, "params", None), "plan allocated the layer's own weights"


@ENTRIES
def batch(in_shape, seed):
    """A random batch of two for ``in_shape``: a list of batches for a merge."""
    rng = np.random.default_rng(seed)
    if isinstance(in_shape, list):
        return [rng.standard_normal((2, *s)).astype(np.float32) for s in in_shape]
    return rng.standard_normal((2, *in_shape)).astype(np.float32)


@ENTRIES
def test_eval_form_computes_the_eval_outputs(entry):
    layer, in_shape = made(entry)
    x = batch(in_shape, 2)
    expected = copy.deepcopy(layer).forward(x, train=False)
    evaluating = layer.evaluating()
    np.testing.assert_allclose(evaluating.forward(x, train=True), expected, rtol=1e-5, atol=1e-6)
    if hasattr(layer, "backward") and entry.where != registry.PIPELINE_ONLY:
        grad = evaluating.backward(np.ones_like(expected))
        for g, xi in zip(grad, x) if isinstance(x, list) else [(grad, x)]:
            assert g.shape == xi.shape


@ENTRIES
def test_eval_forward_computes_each_example_on_its_own(entry):
    """What ``Network.forward`` relies on when it splits a batch between threads in eval mode."""
    layer, in_shape = made(entry)
    x = [np.concatenate([xi, xi[::-1] * 2]) for xi in batch(in_shape, 4)] if isinstance(in_shape, list) \
        else np.concatenate([batch(in_shape, 4), batch(in_shape, 5)[::-1] * 2])
    whole = layer.forward([xi.copy() for xi in x] if isinstance(x, list) else x.copy(), train=False)
    for i in range(4):
        one = layer.forward([xi[i:i + 1].copy() for xi in x] if isinstance(x, list) else x[i:i + 1].copy())
        np.testing.assert_allclose(one[0], whole[i], rtol=1e-5, atol=1e-6, err_msg=f"example {i}")


@ENTRIES
def test_torch_twin_computes_what_the_layer_does(entry):
    torch = pytest.importorskip("torch")
    layer, in_shape = made(entry)
    x = batch(in_shape, 3)
    ours = layer.forward(x, train=False)
    twin = layer.torch_twin(in_shape).eval()
    with torch.no_grad():
        ref = twin(*(torch.from_numpy(xi) for xi in (x if isinstance(x, list) else [x]))).numpy()
    assert ref.shape == ours.shape
    scale = max(float(np.abs(ref).max()), 1e-6)
    assert float(np.abs(ours - ref).max()) <= 1e-4 * scale, entry.name


@ENTRIES
def test_backward_agrees_with_finite_differences(entry):
    """dL/dx of L = sum(forward(x) * r) for every trained or network layer type, in float64 slopes."""
    if entry.where == registry.PIPELINE_ONLY:
        return
    layer, in_shape = made(entry)
    if entry.name == "dropout":
        layer.p = 0.0
    xs = batch(in_shape, 4)
    # Away from the kinks of relu, abs, clip and prelu at 0, which a step of the slope could cross.
    xs = [np.where(np.abs(x) < 0.1, np.copysign(0.1, x), x).astype(np.float32)
          for x in (xs if isinstance(xs, list) else [xs])]
    if "max" in entry.name:  # values 0.05 apart: no step of the slope changes which one is a window's maximum
        xs = [(np.random.default_rng(7).permutation(x.size).reshape(x.shape) * 0.05).astype(np.float32) for x in xs]
    arity = layer.arity != 1
    layer = layer.evaluating()  # batch norm with its running statistics: a function of x alone
    y = layer.forward(xs if arity else xs[0], train=True)
    r = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    grads = layer.backward(r)
    grads = list(grads) if arity else [grads]
    rng = np.random.default_rng(6)
    for k, x in enumerate(xs):
        d = rng.standard_normal(x.shape).astype(np.float32)
        eps = 1e-3

        def loss(t):
            moved = [xi + t * d if m == k else xi for m, xi in enumerate(xs)]
            return float(np.sum(layer.forward(moved if arity else moved[0], train=False).astype(np.float64) * r))

        numeric = (loss(eps) - loss(-eps)) / (2 * eps)
        analytic = float(np.sum(grads[k].astype(np.float64) * d))
        assert numeric == pytest.approx(analytic, rel=2e-2, abs=2e-2), f"{entry.name} input {k}"


@pytest.mark.parametrize("kernel, stride, padding, side", [(3, 2, 0, 13), (3, 2, 1, 14), (2, 2, 0, 7)])
def test_max_pooling_in_ceil_mode_matches_its_twin_and_torch(kernel, stride, padding, side):
    """Ceil mode's last window runs past the input (MTCNN, SqueezeNet): values and gradients."""
    torch = pytest.importorskip("torch")
    from cnn_cli.layers import Pool

    layer = Pool("maxpool", kernel, stride, padding, ceil_mode=True)
    x = np.random.default_rng(8).standard_normal((2, 3, side, side + 1)).astype(np.float32)
    y = layer.forward(x, train=True)
    tx = torch.from_numpy(x).requires_grad_(True)
    ref = torch.nn.functional.max_pool2d(tx, kernel, stride, padding, ceil_mode=True)
    assert y.shape == tuple(ref.shape) == (2, *layer.build((3, side, side + 1)))
    np.testing.assert_array_equal(y, ref.detach().numpy())
    with torch.no_grad():
        np.testing.assert_array_equal(layer.torch_twin((3, side, side + 1))(torch.from_numpy(x)).numpy(), y)
    g = np.random.default_rng(9).standard_normal(y.shape).astype(np.float32)
    ref.backward(torch.from_numpy(g))
    np.testing.assert_array_equal(layer.backward(g), tx.grad.numpy())


@pytest.mark.parametrize("kernel, stride, padding, shape", [
    (3, 2, 0, (13, 14)), (3, 2, 1, (14, 15)), (2, 2, 0, (7, 8)), ((3, 2), (2, 3), (1, 0), (12, 17)),
    (3, 2, 0, (3, 4)), (5, 3, 2, (11, 9)), (3, 1, 1, (5, 6)),
])
def test_max_pooling_in_ceil_mode_in_eval_is_the_padded_copys_pooling(kernel, stride, padding, shape):
    """Eval pools ceil mode's last windows from thin strips, not a padded copy: the same bits
    (NaN and inf included), in both layouts of the extra windows."""
    from cnn_cli.layers import Pool

    layer = Pool("maxpool", kernel, stride, padding, ceil_mode=True)
    x = np.random.default_rng(4).standard_normal((2, 3, *shape)).astype(np.float32)
    x[0, 0, -1, -1], x[1, 2, -1, 0], x[0, 1, 0, -1] = np.nan, np.inf, -np.inf
    expected = F.max_pool2d(layer._padded(x), kernel, stride, 0)
    y = layer.forward(x)
    assert y.shape == expected.shape == (2, *layer.build((3, *shape)))
    assert np.array_equal(y, expected, equal_nan=True)
