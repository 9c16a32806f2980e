"""Networks as graphs: the graph form of architecture files, forward and backward over
fan-out and merges, against the network's torch twin and finite differences."""

import numpy as np
import pytest

from cnn_cli.meta import ModelMeta
from cnn_cli.modelfile import load_model, save_model
from cnn_cli.nn import Network, softmax_cross_entropy
from cnn_cli.pipeline import Pipeline, build_layers, receptive_fields
from cnn_cli.specfile import SpecFileError

#: A small residual network written out in the graph form (as the README shows it).
RESIDUAL = [
    {"type": "conv", "name": "stem", "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "relu", "name": "stem_relu"},
    {"type": "conv", "name": "block.conv1", "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "batchnorm", "name": "block.bn1"},
    {"type": "relu", "name": "block.relu"},
    {"type": "conv", "name": "block.conv2", "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "add", "name": "block.add", "inputs": ["block.conv2", "stem_relu"]},
    {"type": "relu", "name": "block.out"},
    {"type": "globalavgpool", "name": "se.pool"},
    {"type": "conv", "name": "se.fc", "out_channels": 4, "kernel_size": 1},
    {"type": "sigmoid", "name": "se.gate"},
    {"type": "mul", "name": "se.scale", "inputs": ["block.out", "se.gate"]},
    {"type": "concat", "name": "cat", "inputs": ["se.scale", "stem_relu"]},
    {"type": "maxpool", "name": "pool", "kernel_size": 2},
    {"type": "flatten", "name": "flat"},
    {"type": "linear", "name": "fc", "out_features": 3},
]


def residual_net(seed=0):
    net = Network(build_layers(RESIDUAL, "test"), (3, 8, 8), seed=seed)
    rng = np.random.default_rng(seed + 1)
    for name, arr in net.state_dict().items():
        if arr.dtype.kind == "f":
            arr[...] = rng.uniform(0.5, 1.5, arr.shape) if "running_var" in name else \
                arr + rng.standard_normal(arr.shape).astype(np.float32) * 0.1
    return net


def test_graph_form_names_the_state_dict_and_records_the_edges():
    net = residual_net()
    assert net.names[6] == "block.add" and net.inputs[6] == (5, 1)
    assert net.inputs[12] == (11, 1)
    assert "block.conv1.weight" in net.state_dict() and "block.bn1.running_var" in net.state_dict()
    assert net.shapes[12] == (8, 8, 8) and net.shapes[-1] == (3,)


def test_graph_matches_its_torch_twin_forward_and_backward():
    torch = pytest.importorskip("torch")
    net = residual_net()
    net.layers[0].input_grad = True  # training skips dL/d(image); here it is compared too
    twin = net.torch_twin().eval()
    assert set(twin.state_dict()) == set(net.state_dict())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    labels = np.array([0, 2, 1])
    evaluating = net.segment()
    ours = evaluating.forward(x, keep=True)
    loss, grad, _ = softmax_cross_entropy(ours, labels)
    net.zero_grad()
    gx = evaluating.backward(grad)
    tx = torch.from_numpy(x).requires_grad_(True)
    ref = twin(tx)
    torch.nn.functional.cross_entropy(ref, torch.from_numpy(labels)).backward()
    scale = float(ref.detach().abs().max())
    assert np.abs(ours - ref.detach().numpy()).max() <= 1e-4 * scale
    assert np.abs(gx - tx.grad.numpy()).max() <= 1e-4 * float(tx.grad.abs().max())
    params = dict(twin.named_parameters())
    for name, _, g in net.parameters():
        if ".bn" in name:
            continue  # eval-mode batch norm is a fixed affine map: its parameters get no gradient
        ref_g = params[name].grad.numpy()
        assert np.abs(g - ref_g).max() <= 1e-4 * max(float(np.abs(ref_g).max()), 1e-6), name


def test_a_cut_inside_a_block_gives_the_gradient_at_that_node():
    """Head and tail segments share skip values: the tail's gradient at a node inside the
    residual block equals the one from the whole network's backward pass."""
    net = residual_net()
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    head, tail = net.segment(0, 5), net.segment(5)
    logits = tail.forward(head.forward(x, keep=True), keep=True)
    np.testing.assert_allclose(logits, net.segment().forward(x), rtol=1e-5, atol=1e-6)
    seed = np.ones_like(logits)
    at_cut = tail.backward(seed)
    d = np.random.default_rng(5).standard_normal(at_cut.shape).astype(np.float32)
    eps = 1e-3  # ReLU and max-pool kinks bend larger steps
    h = head.forward(x, keep=True)
    numeric = (tail.forward(h + eps * d).astype(np.float64).sum()
               - tail.forward(h - eps * d).astype(np.float64).sum()) / (2 * eps)
    assert numeric == pytest.approx(float(np.sum(at_cut * d)), rel=2e-2)


def test_training_steps_over_a_graph_lower_the_loss():
    net = residual_net()
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3, 8, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 8)
    losses = []
    for _ in range(30):
        net.zero_grad()
        loss, grad, _ = softmax_cross_entropy(net.forward(x, train=True), labels)
        net.backward(grad)
        for _, p, g in net.parameters():
            p -= 0.05 * g
        losses.append(loss)
    assert losses[-1] < 0.5 * losses[0]


def test_model_file_keeps_the_graph(tmp_path):
    meta = ModelMeta.from_parts({
        "architecture": {"name": "graph", "layers": RESIDUAL}, "classes": ["a", "b", "c"],
        "preprocessing": {"image_size": 8, "color": "rgb", "channels": 3, "mean": [0.4, 0.5, 0.6],
                          "std": [0.2, 0.25, 0.3]}})
    net = residual_net()
    save_model(tmp_path / "g.npz", net, meta)
    again, meta2, _ = load_model(tmp_path / "g.npz")
    assert again.names == net.names and again.inputs == net.inputs
    x = np.random.default_rng(8).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), net.forward(x))


def test_pipeline_graphs_bind_and_give_every_node():
    tables = [{"type": "abs", "name": "a"}, {"type": "square", "name": "b", "inputs": ["input"]},
              {"type": "add", "name": "sum", "inputs": ["a", "b"]},
              {"type": "concat", "name": "both", "inputs": ["sum", "input"]}]
    pipe = Pipeline(build_layers(tables, "test"), "g").bind(["R", "G"])
    x = np.random.default_rng(7).standard_normal((1, 2, 5, 6)).astype(np.float32)
    outs = pipe.forward(x)
    np.testing.assert_allclose(outs[2], np.abs(x) + x * x, rtol=1e-6)
    assert outs[3].shape == (1, 4, 5, 6)
    assert pipe.channels[3] == ["0:R", "0:G", "1:R", "1:G"]
    assert receptive_fields(pipe.layers, pipe.inputs) == [1, 1, 1, 1]


@pytest.mark.parametrize("tables, message", [
    ([{"type": "relu", "name": "a"}, {"type": "relu", "name": "a"}], "new non-empty string"),
    ([{"type": "relu", "name": "a", "inputs": ["b"]}, {"type": "relu", "name": "b"}], "not earlier layers"),
    ([{"type": "relu", "name": "a", "inputs": "input"}], "must be a list"),
])
def test_graph_form_errors_name_the_layer(tables, message):
    with pytest.raises(SpecFileError, match=message):
        build_layers(tables, "arch.toml")


def test_a_merge_reading_one_input_is_refused():
    with pytest.raises(ValueError, match="reads 1 inputs, but takes two or more"):
        Network(build_layers([{"type": "add", "name": "s"}], "t"), (1, 4, 4))


def test_a_conv_and_its_relu_or_clip_run_in_place_in_eval_mode_with_the_same_values():
    from cnn_cli import nn

    tables = [{"type": "conv", "name": "a", "out_channels": 4, "kernel_size": 3, "padding": 1},
              {"type": "relu", "name": "a_relu"},
              {"type": "conv", "name": "b", "out_channels": 4, "kernel_size": 3, "padding": 1},
              {"type": "clip", "name": "b_relu6", "min": 0.0, "max": 0.1},
              {"type": "conv", "name": "c", "out_channels": 4, "kernel_size": 1},
              {"type": "relu", "name": "c_relu"},
              {"type": "add", "name": "sum", "inputs": ["c", "c_relu"]},   # c has two readers: not fused
              {"type": "flatten", "name": "flat"}, {"type": "linear", "name": "fc", "out_features": 2}]
    net = Network(build_layers(tables, "test"), (3, 6, 6), seed=0)
    fused = [type(step.layer).__name__ for step in net._steps]
    assert fused.count("_ConvActivation") == 2 and "Conv2d" in fused, fused
    x = np.random.default_rng(9).standard_normal((2, 3, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(net.forward(x), net.node_outputs(x)[-1])
    # Training runs the layers as they are, and their gradients are the unfused ones.
    net.zero_grad()
    y = net.forward(x, train=True)
    net.backward(np.ones_like(y))
    fused_grads = {name: g.copy() for name, _, g in net.parameters()}
    net._steps = [nn._Node(layer, ins, i, [i]) for i, (layer, ins) in enumerate(zip(net.layers, net.inputs))]
    net.zero_grad()
    y2 = net.forward(x, train=True)
    net.backward(np.ones_like(y2))
    np.testing.assert_array_equal(y, y2)
    for name, _, g in net.parameters():
        np.testing.assert_array_equal(fused_grads[name], g, err_msg=name)


def test_eval_mode_keeps_a_relu_on_its_conv_before_a_pooling_the_conv_cannot_join():
    """ResNet's stem, conv -> ReLU -> 3x3/2 max pooling: eval mode clips the conv's output as it stores
    it and pools after (the ReLU is no pass of its own); training pools first and runs the ReLU on the
    pooled map. A 2x2/2 pooling, which joins the conv, is swapped in both. Same values every way."""
    from cnn_cli import nn

    def kinds(steps):
        return [type(step.layer).__name__ if not hasattr(step.layer, "kind") else step.layer.kind for step in steps]

    for pool, eval_kinds, train_kinds in (
            ({"kernel_size": 3, "stride": 2, "padding": 1}, ["_ConvActivation", "maxpool"], ["conv", "maxpool", "relu"]),
            ({"kernel_size": 2, "stride": 2}, ["_ConvPool", "relu"], ["_ConvPool", "relu"])):
        tables = [{"type": "conv", "name": "stem", "out_channels": 4, "kernel_size": 3, "padding": 1},
                  {"type": "relu", "name": "r"}, {"type": "maxpool", "name": "p", **pool},
                  {"type": "flatten", "name": "flat"}, {"type": "linear", "name": "fc", "out_features": 2}]
        net = Network(build_layers(tables, "test"), (3, 9, 8), seed=0)
        assert kinds(net._eval_steps)[:2] == eval_kinds and kinds(net._steps)[:len(train_kinds)] == train_kinds
        x = np.random.default_rng(10).standard_normal((2, 3, 9, 8)).astype(np.float32)
        x[0, :, :3, :3] = -5.0  # windows whose values are all negative: zero either way
        expected = net.node_outputs(x)[-1]
        np.testing.assert_array_equal(net.forward(x), expected)
        np.testing.assert_array_equal(net.forward(x, train=True), expected)
