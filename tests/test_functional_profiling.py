"""cnn_cli.profiling: a forward pass node by node, totals per kind, multiply-adds."""

import numpy as np
import pytest

nn = pytest.importorskip("cnn_cli.nn")
profiling = pytest.importorskip("cnn_cli.profiling")


def _network():
    layers = [nn.Conv2d(8, 3, padding=1), nn.Activation("relu"), nn.Pool("maxpool", 2),
              nn.Conv2d(6, 3, groups=2), nn.Flatten(), nn.Linear(5)]
    return nn.Network(layers, (2, 12, 10), seed=0)


def test_profile_times_every_node_in_order_with_its_output_shape():
    net = _network()
    x = np.random.default_rng(0).standard_normal((3, 2, 12, 10)).astype(np.float32)
    rows = profiling.profile(net, x, repeat=3)
    assert [r.name for r in rows] == net.names
    assert [r.kind for r in rows] == [layer.kind for layer in net.layers]
    assert [r.shape for r in rows] == [(3, *shape) for shape in net.shapes]
    assert all(r.ms >= 0 for r in rows)
    assert rows[0].detail == net.layers[0].describe()


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
