"""An inference pass keeps little alive: values go once read, and elementwise steps write in place.

``Network.forward`` in eval mode drops each value after its last reader and
lets a layer with an in-place form (``overwrite``: activations, clip, batch
norm, add, mul) write its output over an input that dies with it and that
nothing else can see. These tests check that the outputs are bit for bit those
of the path that makes every array, that no array someone else holds is
written over, that training is untouched, and that the memory of a deep
residual network stays bounded by a few maps whatever its depth.
"""

import tracemalloc
import weakref

import numpy as np
import pytest

from cnn_cli import config, nn, registry
from cnn_cli.layers import ACTIVATIONS, Activation
from cnn_cli.nn import Network
from cnn_cli.pipeline import build_layers
from tests.test_layer_facts import batch, made

IN_PLACE = pytest.mark.parametrize("entry", [e for e in registry.LAYER_TYPES if hasattr(e.cls, "overwrite")],
                                   ids=lambda t: t.name)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint32)


def with_specials(x):
    """``x`` with NaN, -0, +-inf and a huge value in it: an in-place form must treat them as forward does."""
    x.reshape(-1)[:5] = [np.nan, -0.0, np.inf, -np.inf, 3e38]
    return x


SPECIALS = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow and NaN, on purpose


def writes_in_place(layer):
    return not isinstance(layer, Activation) or ACTIVATIONS[layer.kind].into is not None


@IN_PLACE
@SPECIALS
def test_an_in_place_form_computes_forward_bit_for_bit_in_its_input(entry):
    layer, in_shape = made(entry)
    if layer.arity != 1:  # a merge of two same-shaped maps, and of a map and a gate (N, C, 1, 1)
        for xs, dying, into in (([(3, 12, 10), (3, 12, 10)], [1], 1), ([(3, 12, 10), (3, 1, 1)], [0, 1], 0),
                                ([(3, 12, 10)] * 3, [0], 0)):
            x = [with_specials(xi) for xi in batch(xs, 4)]
            layer.build(xs)
            expected = layer.forward([xi.copy() for xi in x])
            y = layer.overwrite(x, dying)
            assert y is x[into]
            np.testing.assert_array_equal(bits(y), bits(expected))
        x = batch([(3, 1, 1), (3, 12, 10)], 5)  # the map that may be written over has not the output's shape
        layer.build([(3, 1, 1), (3, 12, 10)])
        y = layer.overwrite([xi.copy() for xi in x], [0])
        np.testing.assert_array_equal(bits(y), bits(layer.forward(x)))
        a, b = batch([(3, 12, 10)] * 2, 6)  # (a + b) + b: b, read again, must not hold a + b first
        layer.build([(3, 12, 10)] * 3)
        expected = layer.forward([a, b, b])
        np.testing.assert_array_equal(bits(layer.overwrite([a, b, b], [1, 2])), bits(expected))
        return
    x = with_specials(batch(in_shape, 4))
    expected = layer.forward(x.copy(), train=False)
    y = layer.overwrite(x)
    np.testing.assert_array_equal(bits(y), bits(expected))
    assert np.shares_memory(y, x) == writes_in_place(layer)
    evaluating = layer.evaluating()
    if hasattr(evaluating, "overwrite"):  # batch norm's eval form, which explanations run
        x = with_specials(batch(in_shape, 4))
        np.testing.assert_array_equal(bits(evaluating.overwrite(x)), bits(expected))


def residual_tables(blocks, channels=8):
    """A stem conv, batch norm and ReLU, then ``blocks`` residual blocks as imported graphs have them:
    conv, bn, relu, conv, bn, add (the block's input), relu; then a classifier."""
    tables = [{"type": "conv", "name": "stem", "out_channels": channels, "kernel_size": 3, "padding": 1},
              {"type": "batchnorm", "name": "stem_bn"}, {"type": "relu", "name": "b0"}]
    for b in range(1, blocks + 1):
        tables += [{"type": "conv", "name": f"c{b}a", "out_channels": channels, "kernel_size": 3, "padding": 1,
                    "inputs": [f"b{b - 1}"]},
                   {"type": "batchnorm", "name": f"n{b}a"}, {"type": "relu", "name": f"r{b}"},
                   {"type": "conv", "name": f"c{b}b", "out_channels": channels, "kernel_size": 3, "padding": 1},
                   {"type": "batchnorm", "name": f"n{b}b"},
                   {"type": "add", "name": f"s{b}", "inputs": [f"n{b}b", f"b{b - 1}"]},
                   {"type": "relu", "name": f"b{b}"}]
    return tables + [{"type": "globalavgpool", "name": "pool"}, {"type": "flatten", "name": "flat"},
                     {"type": "linear", "name": "fc", "out_features": 3}]


def residual_network(blocks, size=16, channels=8):
    net = Network(build_layers(residual_tables(blocks, channels), "test"), (3, size, size), seed=0)
    rng = np.random.default_rng(7)
    for name, value in net.state_dict().items():
        if name.endswith(("running_mean", "running_var", "bn.weight", ".bias")) and value.dtype.kind == "f":
            value[...] = rng.uniform(0.5, 1.5, value.shape)  # no batch norm is the identity
    return net


class Watch:
    """Records each step's output in a run: how many steps made a new array (one sharing no memory
    with their inputs), and the most bytes of step outputs alive at once (weak references: the
    watch keeps nothing alive)."""

    def __init__(self, monkeypatch):
        self.refs, self.fresh, self.most, self.overwrites = [], 0, 0, 0
        forward, overwrite = nn._Node.forward, nn._Node.overwrite

        def watched(step, xs, *args, real):
            self.most = max(self.most, self.live())
            y = real(step, xs, *args)
            self.refs.append(weakref.ref(y))
            self.fresh += not any(np.shares_memory(y, xi) for xi in xs)
            self.most = max(self.most, self.live())
            return y

        def counted(step, xs, dying):
            self.overwrites += 1
            return watched(step, xs, dying, real=overwrite)

        monkeypatch.setattr(nn._Node, "forward", lambda step, xs, train: watched(step, xs, train, real=forward))
        monkeypatch.setattr(nn._Node, "overwrite", counted)

    def live(self):
        alive = {id(owner(y)): owner(y).nbytes for y in (r() for r in self.refs) if y is not None}
        return sum(alive.values())


def owner(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


@pytest.mark.parametrize("blocks", [2, 12])
def test_inference_writes_elementwise_steps_in_place_and_keeps_three_maps_alive(blocks, monkeypatch):
    net = residual_network(blocks)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    x_before = x.copy()
    expected = net.node_outputs(x)[-1]  # each node's own array
    watch = Watch(monkeypatch)
    y = net.forward(x)
    np.testing.assert_array_equal(bits(y), bits(expected))
    np.testing.assert_array_equal(bits(x), bits(x_before))  # the caller's batch is never written over
    convs = 1 + 2 * blocks
    # Batch norm, ReLU and the sum with its ReLU (one step) write over their input: only the
    # convolutions, the pooling, the flattening and the classifier make arrays (the flattening a
    # view of the pooling's).
    assert watch.overwrites == 4 * blocks + 2
    assert sum(isinstance(step.layer, nn._SumActivation) for step in net._steps) == blocks
    assert watch.fresh == convs + 2
    one_map = x.shape[0] * 8 * 16 * 16 * 4
    # At most: a block's input (the sum's shortcut), the map being read and a conv's new output.
    assert watch.most <= 3 * one_map, (watch.most, one_map)


def traced_pass(net, x, monkeypatch):
    """(peak bytes Python and numpy allocated during ``net.forward(x)`` above what it held before, and each
    step's (kind, bytes it allocated at its peak above what was held as it began)), by tracemalloc."""
    steps = []
    for name in ("forward", "overwrite"):
        real = getattr(nn._Node, name)

        def traced(step, *args, real=real):
            held = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            y = real(step, *args)
            kind = getattr(step.layer, "kind", type(step.layer).__name__)
            steps.append((kind, tracemalloc.get_traced_memory()[1] - held))
            return y

        monkeypatch.setattr(nn._Node, name, traced)
    monkeypatch.setattr(config, "BATCH_SPLIT_MIN_WORK", 2**62)  # one pass on this thread, its steps in order
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        net.forward(x)
        return tracemalloc.get_traced_memory()[1] - before, steps
    finally:
        tracemalloc.stop()
        monkeypatch.undo()


def test_elementwise_steps_allocate_nothing_and_depth_costs_nothing(monkeypatch):
    """What Python and numpy allocate during a pass (tracemalloc), for 2 and 16 residual blocks:
    batch norm, ReLU and the sum with its ReLU allocate under a quarter of a map (per-channel vectors, numpy's
    ufunc buffers of 8192 values; the path that made each its own arrays allocated one to four
    maps there), and the pass's peak does not grow with depth."""
    x = np.random.default_rng(1).standard_normal((4, 3, 32, 32)).astype(np.float32)
    one_map = x.shape[0] * 16 * 32 * 32 * 4
    peaks = {}
    for blocks in (2, 16):
        net = residual_network(blocks, size=32, channels=16)
        net.forward(x)  # kernels load, caches fill
        peaks[blocks], steps = traced_pass(net, x, monkeypatch)
        elementwise = [(kind, size) for kind, size in steps if kind in ("batchnorm", "relu", "_SumActivation")]
        assert len(elementwise) == 4 * blocks + 2  # each sum and its ReLU are one step
        assert max(size for _, size in elementwise) < one_map // 4, elementwise
    assert peaks[16] <= peaks[2] + one_map // 10, (peaks, one_map)


def test_a_value_that_another_value_views_is_not_written_over():
    """The flattening is a view of the conv's output, which the pooling still reads after the ReLU:
    the ReLU must not write over the flattening, although it is that value's last reader."""
    tables = [{"type": "conv", "name": "a", "out_channels": 4, "kernel_size": 3, "padding": 1},
              {"type": "flatten", "name": "f"},
              {"type": "relu", "name": "r"},
              {"type": "linear", "name": "fc", "out_features": 4},
              {"type": "globalavgpool", "name": "p", "inputs": ["a"]},
              {"type": "flatten", "name": "pf"},
              {"type": "add", "name": "s", "inputs": ["fc", "pf"]}]
    net = Network(build_layers(tables, "test"), (3, 6, 6), seed=0)
    x = np.random.default_rng(2).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(bits(net.forward(x)), bits(net.node_outputs(x)[-1]))


def test_a_layer_reading_the_image_leaves_it_alone():
    net = Network(build_layers([{"type": "relu", "name": "r"}, {"type": "batchnorm", "name": "n"}], "t"),
                  (3, 4, 4), seed=0)
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 4)).astype(np.float32)
    kept = x.copy()
    net.forward(x)
    np.testing.assert_array_equal(x, kept)


def test_training_and_kept_segments_make_every_array(monkeypatch):
    """Backward passes need the values: train=True and ``Segment.forward(keep=True)`` never overwrite."""
    net = residual_network(2)
    x = np.random.default_rng(4).standard_normal((2, 3, 16, 16)).astype(np.float32)
    expected = net.node_outputs(x)[-1]
    watch = Watch(monkeypatch)
    segment = net.segment(0)
    np.testing.assert_array_equal(bits(segment.forward(x, keep=True)), bits(expected))
    segment.backward(np.ones_like(expected))
    net.forward(x, train=True)
    assert watch.overwrites == 0
    watch.overwrites = 0
    net.forward(x)
    assert watch.overwrites > 0  # the watch sees them when they happen


@SPECIALS
@pytest.mark.parametrize("activation", [{"type": "relu"}, {"type": "clip", "min": 0.0, "max": 6.0}])
@pytest.mark.parametrize("gate", [False, True])
def test_a_sum_and_its_activation_run_as_one_step_with_the_two_layers_bits(activation, gate):
    """A sum then a ReLU or ReLU6 is one step; in eval mode it writes the clipped sum over a dying input in
    one pass (NaN, -0, inf and overflow as numpy's add then clip), a broadcast sum (a gate's (N, C, 1, 1))
    runs the two layers, and training gives the two layers' outputs and gradients."""
    shortcut = {"type": "globalavgpool", "name": "p", "inputs": ["x"]} if gate else \
        {"type": "conv", "name": "p", "out_channels": 4, "kernel_size": 1, "inputs": ["x"]}
    tables = [{"type": "conv", "name": "x", "out_channels": 4, "kernel_size": 3, "padding": 1},
              {"type": "conv", "name": "a", "out_channels": 4, "kernel_size": 3, "padding": 1},
              shortcut,
              {"type": "add", "name": "s", "inputs": ["a", "p"]},
              {**activation, "name": "r"}]
    net = Network(build_layers(tables, "test"), (3, 7, 6), seed=0)
    assert [type(step.layer).__name__ for step in net._steps][-1] == "_SumActivation"
    x = with_specials(np.random.default_rng(3).standard_normal((2, 3, 7, 6)).astype(np.float32) * 4)
    expected, y = net.node_outputs(x)[-1], net.forward(x)
    # Bit for bit (-0 and inf included), but for which of two NaNs a sum keeps (unspecified, as in torch).
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    np.testing.assert_array_equal(bits(np.where(np.isnan(y), 0, y)), bits(np.where(np.isnan(y), 0, expected)))
    x = np.random.default_rng(4).standard_normal((2, 3, 7, 6)).astype(np.float32) * 4
    y = net.forward(x, train=True)
    grad = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
    net.backward(grad)
    torch = pytest.importorskip("torch")
    twin = net.torch_twin()
    yt = twin(torch.from_numpy(x))
    yt.backward(torch.from_numpy(grad))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-5)
    for name in ("a", "p"):
        layer = net.layers[net.names.index(name)]
        if hasattr(layer, "grads"):
            np.testing.assert_allclose(layer.grads["weight"], twin.get_submodule(name).weight.grad.numpy(),
                                       rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------- a batch split between threads


def test_a_batch_split_between_threads_gives_each_image_the_unsplit_output(monkeypatch):
    """Eval mode runs parts of a batch on the threads at once (``Network.forward``); each image's
    output is the one the whole batch gives it, and the caller's array is left as it was."""
    from cnn_cli.functional import threads

    net = residual_network(3, size=12)
    x = np.random.default_rng(3).standard_normal((5, 3, 12, 12)).astype(np.float32)
    given = x.copy()
    monkeypatch.setattr(config, "BATCH_SPLIT_MIN_WORK", 2**62)
    whole = net.forward(x)
    monkeypatch.setattr(config, "BATCH_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(config, "THREADS", 2)
    monkeypatch.setattr(config, "BATCH_SPLIT_CHUNKS", 2)  # 5 images in chunks of 1, 1, 1 and 2
    parts = []
    run = nn._run
    monkeypatch.setattr(nn, "_run", lambda steps, values, *a, **k: parts.append(len(values[nn.INPUT])) or
                        run(steps, values, *a, **k))
    split = net.forward(x)
    assert sorted(parts) == [1, 1, 1, 2]
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x, given)
    parts.clear()
    with threads.alone():  # a thread already running one part of a call runs its batch whole
        np.testing.assert_allclose(net.forward(x), whole, rtol=1e-5, atol=1e-6)
    assert parts == [5]
    parts.clear()
    net.forward(x, train=True)  # training's batch norm reads the whole batch: never split
    assert parts == [5]


def test_an_error_in_one_part_of_a_split_batch_reaches_the_caller(monkeypatch):
    net = residual_network(1, size=8)
    monkeypatch.setattr(config, "BATCH_SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(config, "THREADS", 2)
    monkeypatch.setattr(config, "BATCH_SPLIT_CHUNKS", 2)
    run = nn._run

    def failing(steps, values, *a, **k):
        if values[nn.INPUT].shape[0] == 2:  # the last chunk, on either thread
            raise MemoryError("part 2")
        return run(steps, values, *a, **k)

    monkeypatch.setattr(nn, "_run", failing)
    with pytest.raises(MemoryError, match="part 2"):
        net.forward(np.zeros((5, 3, 8, 8), np.float32))
