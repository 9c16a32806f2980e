"""The upsampling and padding operators of issue 24 (ConvTranspose, Resize/Upsample, Pad, Conv's
asymmetric and SAME pads) and the Elu, Selu and Softplus activations: each layer against torch,
forward and backward; hand-built ONNX graphs and the U-Net of ``torch_zoo`` against ONNX Runtime.
"""

import tomllib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch.nn.functional as TF  # noqa: E402
from clirunner import cnn  # noqa: E402
from naive import InvalidArguments, naive_conv2d, naive_conv2d_backward  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from test_export import _randomize, assert_model_matches, assert_pipeline_matches, make_meta, random_images  # noqa: E402
from test_import import close, session, with_every_node_as_output  # noqa: E402

from cnn_cli import functional as F  # noqa: E402
from cnn_cli.export import model_to_onnx, pipeline_to_onnx  # noqa: E402
from cnn_cli.layers import Activation  # noqa: E402
from cnn_cli.modelfile import load_model  # noqa: E402
from cnn_cli.onnximport import ImportOptions, ImportRefused, import_onnx  # noqa: E402
from cnn_cli.nn import Network  # noqa: E402
from cnn_cli.pipeline import Pipeline, build_layers  # noqa: E402
from cnn_cli.trainable import Conv2d, Flatten, Linear  # noqa: E402
from cnn_cli.upsampling import ConvTranspose2d, Pad, Resize  # noqa: E402
from tests import torch_zoo as zoo  # noqa: E402


def rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_near(ours, ref, what, tol=1e-4):
    ref = np.asarray(ref)
    assert ours.shape == ref.shape, f"{what}: shape {ours.shape} != {ref.shape}"
    err = float(np.abs(ours - ref).max())
    assert err <= tol * max(float(np.abs(ref).max()), 1.0), f"{what}: max error {err}"


def against_torch(layer, x, twin, params=()):
    """Forward, dL/dx and the parameters' gradients of ``layer`` against ``twin``'s autograd,
    for L = sum(y * r) with a random r."""
    y = layer.forward(x, train=True)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = twin(xt)
    assert_near(y, yt.detach().numpy(), "forward pass")
    r = rand(y.shape, 99)
    if hasattr(layer, "zero_grad"):
        layer.zero_grad()
    gx = layer.backward(r)
    (yt * torch.from_numpy(r)).sum().backward()
    assert_near(gx, xt.grad.numpy(), "backward pass: input")
    for name in params:
        assert_near(layer.grads[name], dict(twin.named_parameters())[name].grad.numpy(), f"backward pass: {name}")


# --------------------------------------------------------------------------- the engine's asymmetric padding


PADS = [(0, 1, 0, 1), (2, 0, 1, 3), (1, 2, 2, 1)]


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("pads", PADS)
def test_conv2d_with_four_pads_is_torch_pad_then_conv(pads, stride, mode):
    x, w = rand((2, 3, 7, 8), 1), rand((4, 3, 3, 2), 2)
    top, bottom, left, right = pads
    ours = F.conv2d(x, w, padding=pads, stride=stride, padding_mode=mode)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    torch_mode = {"zeros": "constant"}.get(mode, mode)
    yt = TF.conv2d(TF.pad(xt, (left, right, top, bottom), mode=torch_mode), wt, stride=stride)
    assert_near(ours, yt.detach().numpy(), "forward pass")
    g = rand(ours.shape, 3)
    gx, gw, _ = F.conv2d_backward(x, w, g, padding=pads, stride=stride, padding_mode=mode)
    yt.backward(torch.from_numpy(g))
    assert_near(gx, xt.grad.numpy(), "backward pass: input")
    assert_near(gw, wt.grad.numpy(), "backward pass: weight")
    np.testing.assert_allclose(naive_conv2d(x, w, padding=pads, stride=stride, padding_mode=mode), ours,
                               rtol=1e-4, atol=1e-4)
    naive_gx = naive_conv2d_backward(x, w, g, padding=pads, stride=stride, padding_mode=mode)[0]
    np.testing.assert_allclose(naive_gx, gx, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", [(1, -1, 0, 0), (1, 1, 1), (1, 1, 1, 1, 1)])
def test_engine_and_naive_twin_refuse_the_same_four_pads(padding):
    x, w = rand((1, 1, 5, 5), 1), rand((1, 1, 3, 3), 2)
    with pytest.raises(ValueError, match="padding"):
        F.conv2d(x, w, padding=padding)
    with pytest.raises(InvalidArguments):
        naive_conv2d(x, w, padding=padding)


def test_conv_layer_with_four_pads_equals_its_torch_twin():
    layer = Conv2d(3, 3, padding=[0, 2, 1, 0], stride=2)
    layer.build((2, 9, 9), np.random.default_rng(0))
    against_torch(layer, rand((2, 2, 9, 9), 4), layer.torch_twin((2, 9, 9)), ("weight", "bias"))


# --------------------------------------------------------------------------- layers against torch


TRANSPOSED = [
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=2, padding=1, output_padding=1),
    dict(kernel_size=3, stride=1, dilation=2, bias=False),
    dict(kernel_size=4, stride=3, padding=2, output_padding=2, groups=2),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0)),
    dict(kernel_size=1),
    dict(kernel_size=2, stride=3, padding=3),  # padding beyond the kernel's reach crops input pixels too
]


@pytest.mark.parametrize("options", TRANSPOSED, ids=[str(o) for o in TRANSPOSED])
def test_convtranspose_matches_torch(options):
    layer = ConvTranspose2d(6, **options)
    in_shape = (4, 5, 6)
    out = layer.build(in_shape, np.random.default_rng(0))
    twin = layer.torch_twin(in_shape)
    assert layer.plan(in_shape)[0] == out
    against_torch(layer, rand((2, *in_shape), 5), twin, ("weight", "bias") if layer.use_bias else ("weight",))


def test_convtranspose_refuses_output_padding_at_the_stride():
    with pytest.raises(ValueError, match="output_padding"):
        ConvTranspose2d(2, 3, stride=2, output_padding=2)


RESIZES = [
    dict(scale=2.0),
    dict(scale=[3.0, 2.0]),
    dict(size=[7, 11]),
    dict(scale=2.0, coordinates="half_pixel", nearest="round_prefer_ceil"),
    dict(scale=1.5, coordinates="pytorch_half_pixel", nearest="round_prefer_ceil"),
    dict(scale=2.0, mode="linear", coordinates="half_pixel"),
    dict(scale=[1.5, 2.5], mode="linear", coordinates="pytorch_half_pixel"),
    dict(scale=0.5, mode="linear", coordinates="half_pixel"),
    dict(size=[9, 4], mode="linear", coordinates="align_corners"),
]


@pytest.mark.parametrize("options", RESIZES, ids=[str(o) for o in RESIZES])
def test_resize_matches_torch_interpolate(options):
    layer = Resize(**options)
    in_shape = (3, 6, 8)
    assert layer.build(in_shape) == layer.plan(in_shape)[0]
    against_torch(layer, rand((2, *in_shape), 6), layer.torch_twin(in_shape))


@pytest.mark.parametrize("options", [
    dict(scale=1.5, coordinates="half_pixel", nearest="round_prefer_floor"),
    dict(scale=0.75, coordinates="asymmetric", nearest="ceil"),
    dict(scale=[1.3, 0.6], mode="linear", coordinates="asymmetric"),
    dict(size=[1, 5], mode="linear", coordinates="pytorch_half_pixel"),
], ids=str)
def test_resize_backward_is_the_adjoint_of_forward(options):
    """<resize(x), g> = <x, backward(g)>: the backward pass is the transpose of the linear map,
    also for the modes torch has no twin for (ONNX Runtime checks their forward pass below)."""
    layer = Resize(**options)
    x = rand((2, 3, 6, 8), 7)
    y = layer.forward(x, train=True)
    g = rand(y.shape, 8)
    gx = layer.backward(g)
    assert gx.shape == x.shape
    assert np.sum(y.astype(np.float64) * g) == pytest.approx(np.sum(x.astype(np.float64) * gx), rel=1e-5)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_matches_torch(mode):
    layer = Pad([2, 0, 1, 3], mode=mode, value=0.5)
    in_shape = (3, 5, 6)
    assert layer.build(in_shape) == (3, 7, 10)
    against_torch(layer, rand((2, *in_shape), 9), layer.torch_twin(in_shape))


def test_pad_refuses_reflect_wider_than_the_input():
    with pytest.raises(ValueError, match="reflect"):
        Pad([0, 0, 4, 0], mode="reflect").build((1, 5, 4))


@pytest.mark.parametrize("kind, slope", [("elu", 1.0), ("elu", 0.4), ("selu", None), ("softplus", None)])
def test_new_activations_match_torch(kind, slope):
    layer = Activation(kind) if slope is None else Activation(kind, slope=slope)
    x = rand((2, 3, 4, 5), 10) * 3
    against_torch(layer, x, layer.torch_twin((3, 4, 5)))


def test_elu_defaults_to_torch_alpha():
    assert Activation("elu").slope == 1.0


# --------------------------------------------------------------------------- hand-built graphs against ONNX Runtime


def hand_built(tmp_path, nodes, opset, inits=(), size=8, name="graph"):
    """A (1, 3, size, size) -> y graph of ``nodes``, checked by onnx, saved to ``tmp_path``."""
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def matches_ort(path, size=8):
    """Import ``path``, run a batch of two on our engine and each example in ONNX Runtime."""
    x = rand((2, 3, size, size), 11)
    sess = session(path)
    ref = np.concatenate([sess.run(None, {"x": xi[None]})[0] for xi in x])
    ours = import_onnx(path, ImportOptions()).network.forward(x)
    assert ours.shape == ref.shape
    assert close(ours, ref), f"max error {np.abs(ours - ref).max()} of {np.abs(ref).max()}"


def scales(*values):
    return np.array(values, np.float32)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("opset, given", [(7, "attribute"), (9, "input")])
def test_upsample(tmp_path, opset, given, mode):
    if given == "attribute":
        node = helper.make_node("Upsample", ["x"], ["y"], mode=mode, scales=[1.0, 1.0, 2.0, 3.0])
        inits = {}
    else:
        node = helper.make_node("Upsample", ["x", "s"], ["y"], mode=mode)
        inits = {"s": scales(1, 1, 2, 3)}
    matches_ort(hand_built(tmp_path, [node], opset, inits))


@pytest.mark.parametrize("mode, factor", [("nearest", 2.0), ("linear", 2.0), ("nearest", 0.5), ("linear", 1.5)])
def test_resize_opset_10(tmp_path, mode, factor):
    node = helper.make_node("Resize", ["x", "s"], ["y"], mode=mode)
    matches_ort(hand_built(tmp_path, [node], 10, {"s": scales(1, 1, factor, factor)}))


COORDINATE_CASES = [(c, n) for c in ("asymmetric", "half_pixel", "pytorch_half_pixel", "align_corners")
                    for n in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil", "linear")]


@pytest.mark.parametrize("factor", [2.0, 1.5, 0.75])
@pytest.mark.parametrize("coordinates, nearest", COORDINATE_CASES, ids=[f"{c}-{n}" for c, n in COORDINATE_CASES])
def test_resize_coordinate_modes(tmp_path, coordinates, nearest, factor):
    attrs = dict(mode="linear") if nearest == "linear" else dict(mode="nearest", nearest_mode=nearest)
    node = helper.make_node("Resize", ["x", "", "s"], ["y"], coordinate_transformation_mode=coordinates, **attrs)
    matches_ort(hand_built(tmp_path, [node], 13, {"s": scales(1, 1, factor, factor)}))


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_to_sizes(tmp_path, opset, mode):
    """Sizes name every axis up to opset 17; from 18 ``axes`` may name H and W alone."""
    if opset == 18:
        node = helper.make_node("Resize", ["x", "", "", "n"], ["y"], mode=mode, axes=[2, 3])
        sizes = np.array([13, 5], np.int64)
    else:
        node = helper.make_node("Resize", ["x", "", "", "n"], ["y"], mode=mode)
        sizes = np.array([1, 3, 13, 5], np.int64)
    matches_ort(hand_built(tmp_path, [node], opset, {"n": sizes}))


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
@pytest.mark.parametrize("opset", [9, 13, 18])
def test_pad(tmp_path, opset, mode):
    amounts = [0, 0, 2, 1, 0, 0, 0, 3]  # (N, C, H, W) begins, then ends
    if opset == 9:
        node = helper.make_node("Pad", ["x"], ["y"], mode=mode, pads=amounts, value=0.25)
        inits = {}
    elif opset == 13:
        node = helper.make_node("Pad", ["x", "p", "v"], ["y"], mode=mode)
        inits = {"p": np.array(amounts, np.int64), "v": np.array(0.25, np.float32)}
    else:
        node = helper.make_node("Pad", ["x", "p", "v", "a"], ["y"], mode=mode)
        inits = {"p": np.array([2, 1, 0, 3], np.int64), "v": np.array(0.25, np.float32),
                 "a": np.array([2, 3], np.int64)}
    matches_ort(hand_built(tmp_path, [node], opset, inits))


def test_pad_of_channels_is_refused(tmp_path):
    node = helper.make_node("Pad", ["x", "p"], ["y"])
    path = hand_built(tmp_path, [node], 13, {"p": np.array([0, 1, 0, 0, 0, 0, 0, 0], np.int64)})
    with pytest.raises(ImportRefused, match="batch or channels"):
        import_onnx(path, ImportOptions())


def conv_weights(seed, shape=(4, 3, 3, 3)):
    return {"w": rand(shape, seed), "b": rand(shape[:1], seed + 1)}


@pytest.mark.parametrize("auto_pad, stride, kernel", [("SAME_UPPER", 2, 3), ("SAME_LOWER", 2, 3),
                                                       ("SAME_UPPER", 1, 2), ("SAME_UPPER", 3, 4)])
def test_conv_auto_pad_same(tmp_path, auto_pad, stride, kernel):
    """As TensorFlow and Keras exports write a strided "same" convolution: the odd pixel at one end."""
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad=auto_pad, strides=[stride, stride],
                            kernel_shape=[kernel, kernel])
    matches_ort(hand_built(tmp_path, [node], 13, conv_weights(12, (4, 3, kernel, kernel))))


def test_conv_asymmetric_pads(tmp_path):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 2, 1, 0], strides=[2, 1])
    matches_ort(hand_built(tmp_path, [node], 13, conv_weights(13)))


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (2, 2), (4, 3)])
def test_maxpool_auto_pad_same_upper(tmp_path, kernel, stride, size):
    """Symmetric SAME pads are plain padding; TensorFlow's extra pixel at the end is ceil mode's."""
    node = helper.make_node("MaxPool", ["x"], ["y"], auto_pad="SAME_UPPER", kernel_shape=[kernel, kernel],
                            strides=[stride, stride])
    matches_ort(hand_built(tmp_path, [node], 13, size=size), size=size)


@pytest.mark.parametrize("op, attrs", [("MaxPool", {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
                                       ("AveragePool", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
                                       ("MaxPool", {"pads": [0, 0, 2, 2]})])
def test_pooling_pads_ceil_mode_cannot_give_are_refused(tmp_path, op, attrs):
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[3, 3], **attrs)
    with pytest.raises(ImportRefused, match="asymmetric"):
        import_onnx(hand_built(tmp_path, [node], 13), ImportOptions())


@pytest.mark.parametrize("attrs, weight_shape", [
    (dict(strides=[2, 2]), (3, 4, 2, 2)),
    (dict(strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1]), (3, 2, 3, 3)),
    (dict(strides=[3, 2], pads=[1, 0, 1, 0], dilations=[2, 1], output_padding=[2, 1], group=3), (3, 2, 3, 2)),
], ids=["k2s2", "k3s2p1op1", "grouped-dilated"])
def test_convtranspose(tmp_path, attrs, weight_shape):
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    c_out = weight_shape[1] * attrs.get("group", 1)
    matches_ort(hand_built(tmp_path, [node], 13, {"w": rand(weight_shape, 14), "b": rand((c_out,), 15)}))


@pytest.mark.parametrize("attrs, why", [(dict(output_shape=[16, 16]), "output_shape"),
                                        (dict(auto_pad="SAME_UPPER"), "auto_pad")])
def test_convtranspose_refusals_name_the_attribute(tmp_path, attrs, why):
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], **attrs)
    with pytest.raises(ImportRefused, match=why):
        import_onnx(hand_built(tmp_path, [node], 13, {"w": rand((3, 2, 2, 2), 16)}), ImportOptions())


def test_elu_selu_softplus_and_mish(tmp_path):
    nodes = [helper.make_node("Elu", ["x"], ["e"], alpha=0.5), helper.make_node("Selu", ["e"], ["s"]),
             helper.make_node("Softplus", ["s"], ["p"]), helper.make_node("Tanh", ["p"], ["t"]),
             helper.make_node("Mul", ["s", "t"], ["y"])]  # mish(s) = s * tanh(softplus(s))
    matches_ort(hand_built(tmp_path, nodes, 13))


def test_selu_with_other_constants_is_refused(tmp_path):
    path = hand_built(tmp_path, [helper.make_node("Selu", ["x"], ["y"], alpha=1.0)], 13)
    with pytest.raises(ImportRefused, match="Selu"):
        import_onnx(path, ImportOptions())


# --------------------------------------------------------------------------- the U-Net of torch_zoo


@pytest.mark.parametrize("exporter, opset", [("legacy", 13), ("legacy", 17), ("dynamo", 18)])
def test_small_unet_matches_onnx_runtime_node_by_node(tmp_path, exporter, opset):
    build, size = zoo.tiny_models()["small_unet"]
    model = zoo.randomize(build(), 0)
    path = zoo.export_onnx(model, tmp_path / "unet.onnx", size, exporter=exporter, opset=opset)
    imported = import_onnx(path, ImportOptions())
    kinds = {layer.kind for layer in imported.network.layers}
    assert {"convtranspose", "resize"} <= kinds
    probe = with_every_node_as_output(path, imported.tensors.values(), tmp_path / "probe.onnx")
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    x = rand((2, *size), 17)
    runs = [dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: xi[None]}))) for xi in x]
    net = imported.network
    outputs = net.node_outputs(x)
    for i, node in enumerate(net.names):
        ref = np.concatenate([run[imported.tensors[node]] for run in runs])
        assert close(outputs[i], ref), f"node {node} ({net.layers[i].kind}): {np.abs(outputs[i] - ref).max()}"
    with torch.no_grad():
        torch_out = model(torch.from_numpy(x)).numpy()
    assert close(outputs[-1], torch_out)


# --------------------------------------------------------------------------- our export, in ONNX Runtime and back


EXPORTED_MAPS = [Resize(size=[7, 5]), Resize(scale=[1.5, 0.5], mode="linear", coordinates="half_pixel"),
                 Resize(scale=2, mode="linear", coordinates="align_corners"),
                 Resize(scale=1.5, coordinates="half_pixel", nearest="round_prefer_floor"),
                 Pad([1, 2, 0, 3], mode="reflect"), Pad([2, 0, 1, 1], mode="edge"), Pad([0, 1, 1, 0], value=-0.5)]


@pytest.mark.parametrize("layer", EXPORTED_MAPS, ids=lambda layer: layer.describe())
def test_resize_and_pad_export_as_pipelines_at_two_sizes(layer):
    """A pipeline's H and W are dynamic: a resize to a size keeps N and C from the input's shape."""
    pipe = Pipeline([layer], layer.kind).bind(["R", "G", "B"])
    model = pipeline_to_onnx(pipe, color="rgb")
    onnx.checker.check_model(model, full_check=True)
    assert_pipeline_matches(pipe, model, random_images(3, normal=True, sizes=((2, 12, 10), (1, 15, 9))))


def test_network_export_imports_back_to_the_same_outputs(tmp_path):
    """ConvTranspose, a four-pad conv, resize, pad and the new activations: exported by us, read by
    ONNX Runtime and imported again, each gives what the network gives."""
    layers = [ConvTranspose2d(4, 3, stride=2, padding=1, output_padding=1), Activation("elu", slope=0.3),
              Conv2d(6, 3, padding=[0, 2, 1, 0], stride=2, groups=2), Activation("selu"),
              Resize(scale=1.5, mode="linear", coordinates="half_pixel"), Pad([1, 0, 0, 2], mode="edge"),
              Activation("softplus"), Flatten(), Linear(3)]
    network = Network(layers, (3, 12, 12), seed=0)
    _randomize(network)
    meta = make_meta("upsampling", [{"type": "convtranspose"}], "rgb", 12)
    model = model_to_onnx(network, meta)
    onnx.checker.check_model(model, full_check=True)
    assert_model_matches(network, meta, model)
    onnx.save(model, str(tmp_path / "m.onnx"))
    imported = import_onnx(tmp_path / "m.onnx", ImportOptions())
    image = np.random.default_rng(18).random((2, 3, 12, 12)).astype(np.float32)
    pre = meta.preprocessing  # (image - mean) / std is inside the exported graph, so inside the import
    x = (image - np.float32(pre.mean)[:, None, None]) / np.float32(pre.std)[:, None, None]
    assert_near(imported.network.forward(image), network.forward(x.astype(np.float32)), "imported again")


def test_cli_import_of_the_unet_writes_a_model_file_that_runs_the_same(tmp_path):
    build, size = zoo.tiny_models()["small_unet"]
    path = zoo.export_onnx(zoo.randomize(build(), 0), tmp_path / "unet.onnx", size)
    result = cnn("import", path, "-o", tmp_path / "unet.npz")
    assert result.exit_code == 0, result.output
    info = cnn("info", tmp_path / "unet.npz")
    assert info.exit_code == 0, info.output
    assert "convtranspose" in info.stdout and "resize" in info.stdout
    network, _, _ = load_model(tmp_path / "unet.npz")
    x = rand((2, *size), 19)
    assert_near(network.forward(x), import_onnx(path, ImportOptions()).network.forward(x), "model file")


ARCHITECTURE = """
[[layer]]
type = "pad"
pads = [1, 0, 2, 1]
mode = "reflect"
[[layer]]
type = "conv"
out_channels = 6
kernel_size = 3
stride = 2
padding = [0, 1, 1, 0]
[[layer]]
type = "elu"
slope = 0.5
[[layer]]
type = "convtranspose"
out_channels = 4
kernel_size = 3
stride = 2
padding = 1
output_padding = 1
[[layer]]
type = "softplus"
[[layer]]
type = "resize"
scale = [0.5, 0.5]
mode = "linear"
coordinates = "half_pixel"
[[layer]]
type = "selu"
[[layer]]
type = "resize"
size = [9, 9]
[[layer]]
type = "flatten"
[[layer]]
type = "linear"
out_features = 3
"""


def test_an_architecture_file_with_the_new_types_trains_as_its_torch_twin():
    """From ``[[layer]]`` tables to a network whose forward pass, input gradient and weight
    gradients (training mode, so every layer's saved values) equal torch's autograd."""
    network = Network(build_layers(tomllib.loads(ARCHITECTURE)["layer"], "test"), (3, 16, 16), seed=0)
    twin = network.torch_twin()
    x = rand((2, 3, 16, 16), 20)
    network.zero_grad()
    y = network.forward(x, train=True)
    r = rand(y.shape, 21)
    gx = network.backward(r)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = twin(xt)
    (yt * torch.from_numpy(r)).sum().backward()
    assert_near(y, yt.detach().numpy(), "forward pass")
    assert_near(gx, xt.grad.numpy(), "backward pass: input")
    torch_grads = {name: p.grad.numpy() for name, p in twin.named_parameters()}
    for name, _, grad in network.parameters():
        assert_near(grad, torch_grads[name], f"backward pass: {name}")


def test_receptive_fields_through_upsampling_are_upper_bounds():
    """A 3x3 stride-2 transposed conv reads at most 2 neighbouring pixels; a reduction by 2 steps 2."""
    assert ConvTranspose2d(4, 3, stride=2).window() == ((2, 1), (2, 1))
    assert ConvTranspose2d(4, 2, stride=2).window() == ((1, 1), (1, 1))
    assert Resize(scale=2.0).window() == ((1, 1), (1, 1))
    assert Resize(scale=0.5, mode="linear").window() == ((2, 2), (2, 2))


@pytest.mark.parametrize("slopes", [[0.01, 0.25, 1.0], [0.0, 0.25, 1.0], [0.25, 1.5, -0.5]])
def test_prelu_forward_is_where_exactly(slopes):
    """Slopes in (0, 1] take max(x, a x), the same bits as np.where; any other max(x, 0) + a min(x, 0),
    the same values (a -0 may come out +0)."""
    from cnn_cli.graphlayers import PReLU

    layer = PReLU()
    layer.build((3, 4, 5), np.random.default_rng(0))
    layer.params["weight"][:] = slopes
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[0, :, 0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    a = np.asarray(slopes, np.float32).reshape(1, 3, 1, 1)
    expected = np.where(x > 0, x, x * a)
    y = layer.forward(x)
    assert y.dtype == np.float32
    assert np.array_equal(y, expected, equal_nan=True)
    if 0 < min(slopes) and max(slopes) <= 1:
        assert np.array_equal(np.signbit(y), np.signbit(expected))
