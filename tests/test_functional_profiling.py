"""cnn_cli.profiling: a forward pass node by node, totals per kind, multiply-adds."""

import numpy as np
import pytest

nn = pytest.importorskip("cnn_cli.nn")
profiling = pytest.importorskip("cnn_cli.profiling")


def _network():
    layers = [nn.Conv2d(8, 3, padding=1), nn.Activation("relu"), nn.Pool("maxpool", 2),
              nn.Conv2d(6, 3, groups=2), nn.Flatten(), nn.Linear(5)]
    return nn.Network(layers, (2, 12, 10), seed=0)


def test_profile_times_every_step_of_a_forward_pass_as_it_runs():
    net = _network()
    x = np.random.default_rng(0).standard_normal((3, 2, 12, 10)).astype(np.float32)
    rows = profiling.profile(net, x, repeat=3)
    # The conv and the 2x2 max pooling run fused; the ReLU between them runs after the pooling.
    assert [r.name for r in rows] == ["0+2", "1", "3", "4", "5"]
    assert [r.kind for r in rows] == ["conv+maxpool", "relu", "conv", "flatten", "linear"]
    shapes = [(3, *shape) for shape in net.shapes]
    assert [r.shape for r in rows] == [shapes[2], shapes[2], *shapes[3:]]  # the ReLU runs on pooled values
    assert all(r.ms >= 0 for r in rows)
    assert rows[0].detail == f"{net.layers[0].describe()}; {net.layers[2].describe()}"
    # Every node is timed once, and the pass is the network's: the input is left as it was.
    before = x.copy()
    profiling.profile(net, x)
    np.testing.assert_array_equal(x, before)


def test_profile_names_a_conv_and_its_activation_as_one_step():
    layers = [nn.Conv2d(4, 3, padding=1), nn.Activation("relu"), nn.Conv2d(3, 1), nn.Activation("sigmoid")]
    net = nn.Network(layers, (2, 6, 6), seed=0)
    rows = profiling.profile(net, np.ones((1, 2, 6, 6), np.float32))
    assert [(r.name, r.kind) for r in rows] == [("0+1", "conv+relu"), ("2", "conv"), ("3", "sigmoid")]


def test_by_kind_sums_the_nodes_of_each_kind_slowest_first():
    rows = [profiling.NodeTime("a", "conv", "", (1,), 3.0), profiling.NodeTime("b", "relu", "", (1,), 1.0),
            profiling.NodeTime("c", "conv", "", (1,), 4.0)]
    kinds = profiling.by_kind(rows)
    assert [(k.kind, k.count, k.ms) for k in kinds] == [("conv", 2, 7.0), ("relu", 1, 1.0)]
    assert sum(k.share for k in kinds) == pytest.approx(1.0)


def test_multiply_adds_count_conv_and_linear_layers():
    net = _network()
    first = 8 * 12 * 10 * (2 * 3 * 3)   # conv 2 -> 8, padding 1: 12x10 outputs
    second = 6 * 4 * 3 * (4 * 3 * 3)    # after the 2x2 pool 6x5; groups 2: 4 inputs per filter, 4x3 outputs
    linear = 5 * (6 * 4 * 3)
    assert profiling.multiply_adds(net, batch=4) == 4 * (first + second + linear)


def test_multiply_adds_count_the_convolutions_inside_a_residual_block():
    from cnn_cli.blocks import Residual

    net = nn.Network([nn.Conv2d(4, 3, padding=1), Residual(8, stride=2), Residual(8)], (3, 12, 10), seed=0)
    stem = 4 * 12 * 10 * (3 * 9)
    down = 8 * 6 * 5 * (4 * 9 + 8 * 9 + 4)   # conv1 4 -> 8 at stride 2, conv2 8 -> 8, the 1x1 shortcut 4 -> 8
    same = 8 * 6 * 5 * (8 * 9 + 8 * 9)
    assert profiling.multiply_adds(net, batch=2) == 2 * (stem + down + same)
