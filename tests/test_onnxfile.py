"""Reading ONNX files (``cnn_cli.onnxfile``): real torch exports, hand-built graphs, forged files.

Folded values are checked against ONNX Runtime: each folded tensor is made
an extra graph output of the original file and computed by ORT for an input
of the bound size. Skipped without onnx and onnxruntime; the torch exports
also without torch.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from cnn_cli import config  # noqa: E402
from cnn_cli.onnxfile import OnnxError, read_onnx  # noqa: E402
from cnn_cli.onnxfold import FOLDERS  # noqa: E402
from test_tensorfile import damage  # noqa: E402

SHAPE_OPS = {"Shape", "Gather", "Unsqueeze", "Concat", "Constant", "Cast", "Slice", "ConstantOfShape"}


# ----------------------------------------------------------------------------- helpers


def ort_values(model_or_path, names, x):
    """ORT's values of the tensors ``names`` for the input ``x``, by making them graph outputs."""
    model = onnx.load(str(model_or_path)) if not isinstance(model_or_path, onnx.ModelProto) else model_or_path
    model = onnx.ModelProto.FromString(model.SerializeToString())
    have = {o.name for o in model.graph.output}
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names if n not in have)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(list(names), {session.get_inputs()[0].name: x})
    return dict(zip(names, values))


def image_model(nodes, *, initializers=(), outputs=("y",), opset=13, x_shape=(1, 3, 8, 8), inputs=None,
                ir_version=None):
    """A model whose input is ``x`` of ``x_shape`` (float) plus ``nodes``; outputs named ``outputs``."""
    graph_inputs = inputs if inputs is not None else [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    graph = helper.make_graph(list(nodes), "g", graph_inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version or min(onnx.IR_VERSION, 8 if opset <= 17 else 10)
    return model


def save(model, path):
    path.write_bytes(model.SerializeToString())
    return path


def init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


# ----------------------------------------------------------------------------- torch exports


class GapNet:
    """conv - relu - maxpool - conv - global average pool - ``x.view(x.size(0), -1)`` - linear:
    takes any H, W (exported with dynamic N, H and W)."""

    @staticmethod
    def make(torch):
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.c1 = torch.nn.Conv2d(3, 6, 3, padding=1)
                self.c2 = torch.nn.Conv2d(6, 8, 3)
                self.pool = torch.nn.AdaptiveAvgPool2d(1)
                self.drop = torch.nn.Dropout(0.3)
                self.fc = torch.nn.Linear(8, 5)

            def forward(self, x):
                x = torch.nn.functional.max_pool2d(torch.relu(self.c1(x)), 2)
                x = self.pool(torch.relu(self.c2(x)))
                x = x.view(x.size(0), -1)
                return self.fc(self.drop(x))

        torch.manual_seed(0)
        return Net().eval()


class FlatNet:
    """conv - maxpool - ``x.reshape(x.shape[0], -1)`` over the 4x8x8 maps - linear: a 16x16 input."""

    @staticmethod
    def make(torch):
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.c = torch.nn.Conv2d(1, 4, 3, padding=1)
                self.fc = torch.nn.Linear(4 * 8 * 8, 3)

            def forward(self, x):
                x = torch.nn.functional.max_pool2d(self.c(x), 2)
                return self.fc(x.reshape(x.shape[0], -1))

        torch.manual_seed(1)
        return Net().eval()


class ResizeNet:
    """conv - relu, then the maps max-pooled and resized back to their own size (read with ``x.shape``),
    added, averaged and flattened with ``view(x.size(0), -1)``: shape arithmetic that torch's default
    exporter leaves in the graph when H and W are dynamic."""

    @staticmethod
    def make(torch):
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.c = torch.nn.Conv2d(3, 6, 3, padding=1)
                self.fc = torch.nn.Linear(6, 5)

            def forward(self, x):
                f = torch.relu(self.c(x))
                g = torch.nn.functional.max_pool2d(f, 2)
                g = torch.nn.functional.interpolate(g, size=(f.shape[2], f.shape[3]))
                m = (f + g).mean((2, 3))
                return self.fc(m.view(m.size(0), -1))

        torch.manual_seed(2)
        return Net().eval()


@pytest.fixture(scope="module")
def torch_mod():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    return torch


def legacy_export(torch, net, x, path, opset, axes):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": axes, "y": {0: "N"}})
    return path


def check_folded_against_ort(path, g, size, channels):
    """Every folded value and every static shape of ``g`` equals what ORT computes at batch 1,
    and every batch-dependent value equals ORT's at batch 2."""
    rng = np.random.default_rng(0)
    model = onnx.load(str(path))
    made = {o for n in model.graph.node for o in n.output}
    folded = [name for name in g.constants if name in made]
    assert folded, "nothing was folded"
    x1 = rng.standard_normal((1, channels, *size)).astype(np.float32)
    ref = ort_values(model, folded + [n for n in g.shapes if n != g.input_name], x1)
    for name in folded:
        np.testing.assert_array_equal(g.constants[name], ref[name], err_msg=f"folded value {name}")
    for name, shape in g.shapes.items():
        if name != g.input_name:
            assert shape == ref[name].shape, f"static shape of {name}"
    if g.batch_dependent:
        x2 = rng.standard_normal((2, channels, *size)).astype(np.float32)
        ref2 = ort_values(model, list(g.batch_dependent), x2)
        for name, value in g.batch_dependent.items():
            np.testing.assert_array_equal(value, ref2[name], err_msg=f"batch-2 value {name}")


@pytest.mark.parametrize("opset", [13, 17])
def test_legacy_export_dynamic_size_folds_the_flatten(torch_mod, tmp_path, opset):
    net = GapNet.make(torch_mod)
    path = legacy_export(torch_mod, net, torch_mod.randn(1, 3, 20, 24), tmp_path / "gap.onnx", opset,
                         {0: "N", 2: "H", 3: "W"})
    raw_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat"} <= raw_ops  # the chain the test is about is there
    g = read_onnx(path, size=(30, 26))
    ops = [n.op for n in g.nodes]
    assert not SHAPE_OPS & set(ops), ops
    assert ops == ["Conv", "Relu", "MaxPool", "Conv", "Relu", "GlobalAveragePool", "Reshape", "Gemm"]
    assert g.input_name == "x" and g.input_shape == (None, 3, 30, 26) and g.opset == opset
    reshape = next(n for n in g.nodes if n.op == "Reshape")
    np.testing.assert_array_equal(g.constants[reshape.inputs[1]], [1, -1])
    assert reshape.inputs[1] in g.batch_dependent
    np.testing.assert_array_equal(g.batch_dependent[reshape.inputs[1]], [2, -1])
    assert g.shapes["x"] == (1, 3, 30, 26) and g.shapes[g.resolve("y")] == (1, 5)
    assert g.shapes[reshape.inputs[0]] == (1, 8, 1, 1)
    for name, tensor in net.state_dict().items():  # weights keep their torch names and values
        np.testing.assert_array_equal(g.constants[name], tensor.numpy(), err_msg=name)
    assert g.producer.startswith("pytorch") and len(g.sha256) == 64
    check_folded_against_ort(path, g, (30, 26), 3)


@pytest.mark.parametrize("opset", [13, 17])
def test_legacy_export_fixed_size_flatten(torch_mod, tmp_path, opset):
    net = FlatNet.make(torch_mod)
    path = legacy_export(torch_mod, net, torch_mod.randn(1, 1, 16, 16), tmp_path / "flat.onnx", opset, {0: "N"})
    g = read_onnx(path)  # H and W are fixed in the file: no --size needed
    assert g.input_shape == (None, 1, 16, 16)
    assert [n.op for n in g.nodes] == ["Conv", "MaxPool", "Reshape", "Gemm"]
    reshape = g.nodes[2]
    np.testing.assert_array_equal(g.constants[reshape.inputs[1]], [1, -1])
    assert g.shapes[reshape.outputs[0]] == (1, 256)
    check_folded_against_ort(path, g, (16, 16), 1)
    with pytest.raises(OnnxError, match=r"fixed at 16x16 in the file.*--size 20,16"):
        read_onnx(path, size=(20, 16))
    assert read_onnx(path, size=(16, 16)).input_shape == (None, 1, 16, 16)


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
def test_legacy_export_resize_to_a_computed_size(torch_mod, tmp_path, opset):
    # Upsample (opset 9) and Resize take the size from Shape -> Slice/Gather -> Cast -> Concat.
    path = legacy_export(torch_mod, ResizeNet.make(torch_mod), torch_mod.randn(1, 3, 16, 20),
                         tmp_path / "r.onnx", opset, {0: "N", 2: "H", 3: "W"})
    g = read_onnx(path, size=(12, 18))
    assert [n.op for n in g.nodes] == ["Conv", "Relu", "MaxPool", "Upsample" if opset == 9 else "Resize", "Add",
                                       "ReduceMean", "Reshape", "Gemm"]
    resize = g.nodes[3]
    assert all(x in g.constants for x in resize.inputs[1:] if x)
    assert g.shapes[resize.outputs[0]] == (1, 6, 12, 18)
    check_folded_against_ort(path, g, (12, 18), 3)


def test_legacy_export_without_size_asks_for_it(torch_mod, tmp_path):
    path = legacy_export(torch_mod, GapNet.make(torch_mod), torch_mod.randn(1, 3, 20, 24), tmp_path / "g.onnx",
                         13, {0: "N", 2: "H", 3: "W"})
    with pytest.raises(OnnxError, match=r"g\.onnx: input 'x' has a symbolic height or width; give the image "
                                        r"size with --size H,W"):
        read_onnx(path)


def test_dynamo_export_with_external_data(torch_mod, tmp_path):
    pytest.importorskip("onnxscript")
    net = ResizeNet.make(torch_mod)
    path = tmp_path / "dyn.onnx"
    import warnings

    dim = torch_mod.export.Dim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch_mod.onnx.export(net, (torch_mod.randn(2, 3, 20, 24),), str(path), dynamo=True, external_data=True,
                              dynamic_shapes={"x": {0: dim("N"), 2: dim("H", min=8), 3: dim("W", min=8)}},
                              verbose=False)
    model = onnx.load(str(path), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if not external:  # the exporter kept everything in the file: move the weights out as onnx would
        model = onnx.load(str(path))
        onnx.save_model(model, str(path), save_as_external_data=True, location="dyn.onnx.data",
                        size_threshold=0)
        model = onnx.load(str(path), load_external_data=False)
        external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert external and (tmp_path / "dyn.onnx.data").is_file()
    g = read_onnx(path, size=(18, 22))
    assert g.input_shape == (None, 3, 18, 22)
    assert not SHAPE_OPS & {n.op for n in g.nodes}
    check_folded_against_ort(path, g, (18, 22), 3)
    weights = {k: v.numpy() for k, v in net.state_dict().items()}
    full = onnx.load(str(path))  # onnx's own reader of the external data, for comparison
    for t in full.graph.initializer:
        np.testing.assert_array_equal(g.constants[t.name], numpy_helper.to_array(t), err_msg=t.name)
    for name in external:
        assert any(np.array_equal(g.constants[name], w) for w in weights.values()), name
    x = np.random.default_rng(2).standard_normal((1, 3, 18, 22)).astype(np.float32)
    out = ort_values(path, [o.name for o in full.graph.output], x)
    expected = net(torch_mod.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(out[g.outputs[0]], expected, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- hand-built graphs


def test_constant_node_weights_are_constants(tmp_path):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = np.arange(4, dtype=np.float64)  # double weights become float32
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b)),
        helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], name="conv"),
    ]
    g = read_onnx(save(image_model(nodes, opset=11), tmp_path / "paddle.onnx"))
    assert [n.op for n in g.nodes] == ["Conv"]
    np.testing.assert_array_equal(g.constants["w"], w)
    assert g.constants["b"].dtype == np.float32 and list(g.constants["b"]) == [0, 1, 2, 3]
    assert g.shapes["y"] == (1, 4, 6, 6) and g.input_shape == (1, 3, 8, 8)
    assert g.batch_dependent == {}  # the file fixes N = 1


def test_refused_nodes_are_all_named_in_one_error(tmp_path):
    nodes = [
        helper.make_node("Reshape", ["x", "seq"], ["s"], name="flat"),
        helper.make_node("LSTM", ["s", "W", "R"], ["h"], hidden_size=2, name="lstm_1"),
        helper.make_node("ConvInteger", ["xi", "wi"], ["q_out"], name="q"),
        helper.make_node("FancyOp", ["x"], ["c_out"], domain="com.example", name="custom"),
        helper.make_node("If", ["cond"], ["z"], name="",
                         then_branch=helper.make_graph([], "t", [], []),
                         else_branch=helper.make_graph([], "e", [], [])),
    ]
    model = image_model(nodes, outputs=("h",))
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(OnnxError) as info:
        read_onnx(save(model, tmp_path / "model.onnx"))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "model.onnx") + ": ")
    for part in ("node 'lstm_1' (LSTM)", "node 'q' (ConvInteger)", "node 'custom' (FancyOp in domain 'com.example')",
                 "node 'If_4' (If"):
        assert part in message, message
    assert "flat" not in message
    assert "recurrent" in message and "quantized" in message and "cannot run on cnn's engine" in message


def test_refusal_message_reads_as_one_sentence(tmp_path):
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["h"], hidden_size=2, name="lstm_1"),
             helper.make_node("ConvInteger", ["xi", "wi"], ["q_out"], name="q")]
    path = save(image_model(nodes, outputs=("h",)), tmp_path / "model.onnx")
    with pytest.raises(OnnxError) as info:
        read_onnx(path)
    assert str(info.value) == (f"{path}: node 'lstm_1' (LSTM), node 'q' (ConvInteger) are not supported: "
                               "recurrent and quantized layers cannot run on cnn's engine")


def test_two_image_inputs_refused(tmp_path):
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("a", "b")]
    model = image_model([helper.make_node("Add", ["a", "b"], ["y"])], inputs=inputs)
    with pytest.raises(OnnxError, match=r"has 2 image inputs \('a', 'b'\); cnn imports image networks with one"):
        read_onnx(save(model, tmp_path / "two.onnx"))


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8]),
              helper.make_tensor_value_info("k", TensorProto.FLOAT, [1])]
    model = image_model([helper.make_node("Mul", ["x", "k"], ["y"])], inputs=inputs,
                        initializers=[init("k", np.float32([2]))], ir_version=3, opset=8)
    g = read_onnx(save(model, tmp_path / "ir3.onnx"))
    assert g.input_name == "x" and g.opset == 8 and list(g.constants["k"]) == [2]


@pytest.mark.parametrize("dims, message", [
    ([1, 16], r"input 'x' has rank 2; cnn imports image networks with one \(N, C, H, W\) input"),
    ([1, "C", 8, 8], r"no fixed channel count"),
    ([1, 3, "H", 8], r"symbolic height or width; give the image size with --size H,W"),
])
def test_input_shape_refusals(tmp_path, dims, message):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)]
    with pytest.raises(OnnxError, match=message):
        read_onnx(save(image_model([helper.make_node("Relu", ["x"], ["y"])], inputs=inputs), tmp_path / "m.onnx"))


def test_integer_input_refused(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 3, 8, 8])]
    with pytest.raises(OnnxError, match=r"input 'x' is of type UINT8; cnn feeds images as floats"):
        read_onnx(save(image_model([helper.make_node("Cast", ["x"], ["y"], to=1)], inputs=inputs),
                       tmp_path / "u8.onnx"))


def test_size_binds_symbolic_dims(tmp_path):
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 8])]
    model = image_model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                        inputs=inputs)
    path = save(model, tmp_path / "m.onnx")
    g = read_onnx(path, size=(12, 8))
    assert g.input_shape == (None, 3, 12, 8) and g.shapes["y"] == (1, 3, 6, 4)
    with pytest.raises(OnnxError, match="fixed at Hx8 in the file"):
        read_onnx(path, size=(12, 10))
    with pytest.raises(OnnxError, match="--size must be two whole numbers"):
        read_onnx(path, size=(12,))


def test_keras_style_nhwc_input_becomes_nchw(tmp_path):
    w = np.ones((4, 3, 3, 3), np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[3, 3], name="conv")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "H", "W", 3])]
    path = save(image_model(nodes, initializers=[init("w", w)], inputs=inputs), tmp_path / "keras.onnx")
    g = read_onnx(path, size=(10, 12))
    assert g.input_layout == "NHWC" and g.input_shape == (None, 3, 10, 12)
    assert [(n.name, n.inputs[0]) for n in g.nodes] == [("conv", "x")] and g.aliases == {"t": "x"}
    assert g.shapes["x"] == (1, 3, 10, 12) and g.shapes["y"] == (1, 4, 8, 10)
    # Read by anything else too, the input is taken as (N, C, H, W) as it stands.
    nodes.append(helper.make_node("ReduceMax", ["x"], ["z"], name="other"))
    path = save(image_model(nodes, initializers=[init("w", w)], inputs=inputs, outputs=("y", "z")),
                tmp_path / "mixed.onnx")
    with pytest.raises(OnnxError, match="no fixed channel count"):
        read_onnx(path, size=(10, 12))


def test_opset_6_refused(tmp_path):
    model = image_model([helper.make_node("Relu", ["x"], ["y"])], opset=6, ir_version=3)
    with pytest.raises(OnnxError, match=r"old\.onnx: uses opset 6; cnn reads opsets 7 to \d+"):
        read_onnx(save(model, tmp_path / "old.onnx"))


def test_opset_newer_than_onnx_knows_refused(tmp_path):
    model = image_model([helper.make_node("Relu", ["x"], ["y"])], opset=onnx.defs.onnx_opset_version() + 1)
    with pytest.raises(OnnxError, match="newer than the installed onnx knows"):
        read_onnx(save(model, tmp_path / "new.onnx"))


def flatten_chain(opset):
    """x -> Shape -> Gather(0) -> Unsqueeze -> Concat([_, -1]) -> Reshape(x): ``x.view(x.size(0), -1)``."""
    unsqueeze = (helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]) if opset >= 13 else
                 helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]))
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             unsqueeze,
             helper.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    inits = [init("zero", np.int64(0)), init("minus1", np.int64([-1]))]
    if opset >= 13:
        inits.append(init("axes", np.int64([0])))
    return nodes, inits


@pytest.mark.parametrize("opset", [11, 13])
def test_unsqueeze_axes_as_attribute_and_as_input(tmp_path, opset):
    nodes, inits = flatten_chain(opset)
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    path = save(image_model(nodes, initializers=inits, opset=opset, inputs=inputs), tmp_path / "u.onnx")
    g = read_onnx(path, size=(4, 5))
    assert [n.op for n in g.nodes] == ["Reshape"]
    np.testing.assert_array_equal(g.constants["n1"], [1])
    np.testing.assert_array_equal(g.constants["shape"], [1, -1])
    np.testing.assert_array_equal(g.batch_dependent["shape"], [2, -1])
    assert g.shapes["y"] == (1, 60)
    check_folded_against_ort(path, g, (4, 5), 3)


def test_identity_and_dropout_become_aliases(tmp_path):
    nodes = [helper.make_node("Identity", ["x"], ["x2"]),
             helper.make_node("Relu", ["x2"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["d", "mask"], name="drop"),
             helper.make_node("Identity", ["d"], ["i1"]),
             helper.make_node("Identity", ["i1"], ["y"]),
             helper.make_node("Sigmoid", ["i1"], ["z"], name="sig")]
    g = read_onnx(save(image_model(nodes, outputs=("y", "z"), opset=11), tmp_path / "a.onnx"))
    assert [n.op for n in g.nodes] == ["Relu", "Sigmoid"]
    assert g.nodes[0].inputs == ["x"] and g.nodes[1].inputs == ["r"]
    assert g.outputs == ["y", "z"] and g.resolve("y") == "r" and g.resolve("z") == "z"
    assert g.aliases == {"x2": "x", "d": "r", "i1": "r", "y": "r"}


def test_dropout_whose_mask_is_used_stays(tmp_path):
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),
             helper.make_node("Cast", ["mask"], ["m"], to=1),
             helper.make_node("Mul", ["d", "m"], ["y"])]
    g = read_onnx(save(image_model(nodes, opset=11), tmp_path / "m.onnx"))
    assert [n.op for n in g.nodes] == ["Dropout", "Cast", "Mul"] and g.aliases == {}


def test_shape_of_unknown_shape_refused(tmp_path):
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]),
             helper.make_node("Shape", ["nz"], ["s"], name="shape_of_nonzero"),
             helper.make_node("Reshape", ["x", "s"], ["y"])]
    with pytest.raises(OnnxError, match=r"node 'shape_of_nonzero' \(Shape of 'nz'\): the shape of its input is "
                                        r"not known"):
        read_onnx(save(image_model(nodes), tmp_path / "nz.onnx"))


def test_shape_of_a_folded_reshape_is_found_on_a_second_round(tmp_path):
    # The Reshape's target is folded in the first round; its output's shape is known only after that.
    nodes, inits = flatten_chain(13)
    nodes[-1] = helper.make_node("Reshape", ["x", "shape"], ["flat"])
    nodes += [helper.make_node("Shape", ["flat"], ["fs"]),
              helper.make_node("Reshape", ["flat", "fs"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    g = read_onnx(save(image_model(nodes, initializers=inits, inputs=inputs), tmp_path / "r.onnx"), size=(2, 2))
    np.testing.assert_array_equal(g.constants["fs"], [1, 12])
    assert [n.op for n in g.nodes] == ["Reshape", "Reshape"]


def test_dead_nodes_are_dropped(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["unused"], name="dead"),
             helper.make_node("Sigmoid", ["x"], ["y"], name="live")]
    g = read_onnx(save(image_model(nodes), tmp_path / "d.onnx"))
    assert [n.name for n in g.nodes] == ["live"]


def test_nodes_are_put_in_topological_order_and_named(tmp_path):
    nodes = [helper.make_node("Sigmoid", ["r"], ["y"]),
             helper.make_node("Relu", ["x"], ["r"], name="same"),
             helper.make_node("Relu", ["y"], ["z"], name="same")]
    g = read_onnx(save(image_model(nodes, outputs=("z",)), tmp_path / "t.onnx"))
    assert [(n.name, n.op) for n in g.nodes] == [("same", "Relu"), ("Sigmoid_0", "Sigmoid"), ("same_2", "Relu")]


def test_undefined_input_and_cycles_refused(tmp_path):
    nodes = [helper.make_node("Add", ["x", "ghost"], ["y"], name="add")]
    with pytest.raises(OnnxError, match="node 'add' \\(Add\\) reads 'ghost', which no node"):
        read_onnx(save(image_model(nodes), tmp_path / "u.onnx"))
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2")]
    with pytest.raises(OnnxError, match="has a cycle through node"):
        read_onnx(save(image_model(nodes, outputs=("b",)), tmp_path / "c.onnx"))


def test_metadata_and_producer(tmp_path):
    model = image_model([helper.make_node("Relu", ["x"], ["y"])])
    model.producer_name, model.producer_version = "cnn", "9.9"
    helper.set_model_props(model, {"kind": "model", "classes": '["a", "b"]'})
    g = read_onnx(save(model, tmp_path / "m.onnx"))
    assert g.metadata == {"kind": "model", "classes": '["a", "b"]'} and g.producer == "cnn 9.9"


def test_without_onnx_says_what_to_install(tmp_path, monkeypatch):
    path = save(image_model([helper.make_node("Relu", ["x"], ["y"])]), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(OnnxError, match=r"reading ONNX needs the onnx package: pip install 'cnn-cli\[onnx\]'"):
        read_onnx(path)


# ----------------------------------------------------------------------------- forged and damaged files


def forged_initializer_file(path, dims, raw=b""):
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=raw)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_empty_tensor_value_info("y")], [t])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    return save(model, path)


def test_initializer_dtypes(tmp_path):
    values = {
        "f16_raw": numpy_helper.from_array(np.float16([1.5, -0.25, 65504])),
        "f16_typed": helper.make_tensor("f16_typed", TensorProto.FLOAT16, [2], np.float16([3, -4])),
        "bf16_raw": helper.make_tensor("bf16_raw", TensorProto.BFLOAT16, [2], [1.0, -3.5], raw=False),
        "f64_typed": helper.make_tensor("f64_typed", TensorProto.DOUBLE, [2], [0.1, 1e300]),
        "f32_typed": helper.make_tensor("f32_typed", TensorProto.FLOAT, [1, 2], [0.5, 2]),
        "i32": numpy_helper.from_array(np.int32([-5, 7])),
        "i8_typed": helper.make_tensor("i8_typed", TensorProto.INT8, [2], [-128, 127]),
        "u8": numpy_helper.from_array(np.uint8([0, 255])),
        "u64_typed": helper.make_tensor("u64_typed", TensorProto.UINT64, [1], [2**40]),
        "flags": numpy_helper.from_array(np.array([True, False])),
    }
    for name, t in values.items():
        t.name = name
    model = image_model([helper.make_node("Relu", ["x"], ["y"])], initializers=list(values.values()))
    g = read_onnx(save(model, tmp_path / "d.onnx"))
    for name, t in values.items():
        expected = numpy_helper.to_array(t)
        got = g.constants[name]
        kind = "f" if expected.dtype.kind == "f" or name.startswith("bf16") else expected.dtype.kind
        assert got.dtype == {"f": np.float32, "b": np.bool_}.get(kind, np.int64), name
        with np.errstate(over="ignore"):
            np.testing.assert_array_equal(got, expected.astype(got.dtype), err_msg=name)


def test_tiny_file_declaring_a_huge_initializer_is_refused_without_allocating(tmp_path):
    path = forged_initializer_file(tmp_path / "huge.onnx", [10**6, 10**6])
    assert path.stat().st_size < 150
    read_onnx(forged_initializer_file(tmp_path / "ok.onnx", [1], raw=b"\0" * 4))  # warm up imports outside the measurement
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(OnnxError, match=r"initializer 'w' declares 1,000,000,000,000 elements"):
            read_onnx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20 and time.perf_counter() - start < 2


def test_initializer_with_fewer_bytes_than_declared_refused(tmp_path):
    path = forged_initializer_file(tmp_path / "short.onnx", [1000, 1000], raw=b"\0" * 40)
    with pytest.raises(OnnxError, match=r"initializer 'w' declares shape \(1000, 1000\) \(4,000,000 bytes\) but "
                                        r"stores 40 bytes"):
        read_onnx(path)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[3], float_data=[1.0, 2.0])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_empty_tensor_value_info("y")], [t])
    with pytest.raises(OnnxError, match=r"declares shape \(3,\) \(3 elements\) but stores 2 values"):
        read_onnx(save(helper.make_model(graph), tmp_path / "typed.onnx"))


def test_negative_dims_and_string_tensors_refused(tmp_path):
    with pytest.raises(OnnxError, match="has the dimension -3"):
        read_onnx(forged_initializer_file(tmp_path / "neg.onnx", [-3]))
    s = helper.make_tensor("w", TensorProto.STRING, [1], [b"hi"])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_empty_tensor_value_info("y")], [s])
    with pytest.raises(OnnxError, match="initializer 'w' is of type STRING"):
        read_onnx(save(helper.make_model(graph), tmp_path / "s.onnx"))


def test_huge_folded_value_refused_without_allocating(tmp_path):
    nodes = [helper.make_node("ConstantOfShape", ["big"], ["c"], name="fill"),
             helper.make_node("Add", ["x", "c"], ["y"])]
    path = save(image_model(nodes, initializers=[init("big", np.int64([10**6, 10**6]))]), tmp_path / "f.onnx")
    with pytest.raises(OnnxError, match=r"node 'fill' \(ConstantOfShape\) cannot be computed.*1,000,000,000,000 "
                                        r"elements"):
        read_onnx(path)
    nodes = [helper.make_node("ConstantOfShape", ["mid"], ["c"], name="fill"),
             helper.make_node("Add", ["x", "c"], ["y"])]
    path = save(image_model(nodes, initializers=[init("mid", np.int64([1024, 1024]))]), tmp_path / "m.onnx")
    with pytest.raises(OnnxError, match="over what is left"):
        read_onnx(path, max_bytes=2**20)  # a 4 MB value from a 1 MB budget


def test_folded_values_add_up_against_the_budget(tmp_path):
    # Each Neg makes a value no larger than its input; ten of them are ten times the file.
    nodes = [helper.make_node("Neg", [f"v{i}"], [f"v{i + 1}"]) for i in range(10)]
    nodes.append(helper.make_node("Add", ["x", "v10"], ["y"]))
    big = np.ones((1, 3, 256, 256), np.float32)  # 768 KB
    path = save(image_model(nodes, initializers=[init("v0", big)], x_shape=(1, 3, 256, 256)), tmp_path / "n.onnx")
    g = read_onnx(path)
    np.testing.assert_array_equal(g.constants["v10"], big)
    with pytest.raises(OnnxError, match=r"node 'Neg_\d' \(Neg\) cannot be computed.*over what is left"):
        read_onnx(path, max_bytes=4 * 2**20)


def test_file_over_max_bytes_and_garbage_refused(tmp_path):
    path = save(image_model([helper.make_node("Relu", ["x"], ["y"])]), tmp_path / "m.onnx")
    with pytest.raises(OnnxError, match="larger than an ONNX file can be"):
        read_onnx(path, max_bytes=10)
    (tmp_path / "junk.onnx").write_bytes(b"\xff" * 64)
    with pytest.raises(OnnxError, match=r"junk\.onnx: not a readable ONNX file"):
        read_onnx(tmp_path / "junk.onnx")
    with pytest.raises(OnnxError, match=r"nothing\.onnx: no such file"):
        read_onnx(tmp_path / "nothing.onnx")


def test_too_many_nodes_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "ONNX_MAX_NODES", 3)
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Relu", ["c"], ["y"])]
    with pytest.raises(OnnxError, match="has 4 nodes; cnn imports graphs of at most 3"):
        read_onnx(save(image_model(nodes), tmp_path / "n.onnx"))


def external_model(tmp_path, location, offset=0, length=None, data=None):
    """A model whose Conv weight (4, 3, 1, 1) float32 is stored in external data at ``location``."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1)
    if data is None:
        data = w.tobytes()
    (tmp_path / "w.bin").write_bytes(data)
    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3, 1, 1])
    t.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": str(offset), "length": str(len(w.tobytes()) if length is None
                                                                             else length)}
    for key, value in entries.items():
        t.external_data.add(key=key, value=value)
    model = image_model([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[1, 1])], initializers=[t])
    (tmp_path / "sub").mkdir(exist_ok=True)
    return save(model, tmp_path / "sub" / "m.onnx"), w


def test_external_data_is_read_from_beside_the_model(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(4, 3, 1, 1)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "m.onnx.data").write_bytes(b"\0" * 8 + w.tobytes())
    path, _ = external_model(tmp_path, "m.onnx.data", offset=8)
    np.testing.assert_array_equal(read_onnx(path).constants["w"], w)


@pytest.mark.parametrize("location", ["../w.bin", "/etc/passwd", "a/../../w.bin", ""])
def test_external_data_outside_the_folder_refused(tmp_path, location):
    path, _ = external_model(tmp_path, location)
    with pytest.raises(OnnxError, match="not a file inside the model's folder"):
        read_onnx(path)


def test_external_data_through_a_link_out_of_the_folder_refused(tmp_path):
    path, _ = external_model(tmp_path, "link.bin")
    os.symlink(tmp_path / "w.bin", tmp_path / "sub" / "link.bin")
    with pytest.raises(OnnxError, match="leads outside the model's folder"):
        read_onnx(path)


def test_external_data_missing_or_truncated_refused(tmp_path):
    path, _ = external_model(tmp_path, "gone.bin")
    with pytest.raises(OnnxError, match="'gone.bin', which is missing"):
        read_onnx(path)
    (tmp_path / "sub" / "short.bin").write_bytes(b"\0" * 20)
    path, _ = external_model(tmp_path, "short.bin")
    with pytest.raises(OnnxError, match=r"bytes 0 to 48 of 'short.bin', which holds only 20 bytes"):
        read_onnx(path)
    (tmp_path / "sub" / "ok.bin").write_bytes(b"\0" * 48)
    path, _ = external_model(tmp_path, "ok.bin", length=480)
    with pytest.raises(OnnxError, match="declares 48 bytes but its external data says offset 0, length 480"):
        read_onnx(path)


def test_external_data_bounded_by_max_bytes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ok.bin").write_bytes(b"\0" * 48)
    path, _ = external_model(tmp_path, "ok.bin")
    with pytest.raises(OnnxError, match="external data hold more than"):
        read_onnx(path, max_bytes=path.stat().st_size + 40)


# ----------------------------------------------------------------------------- the fold table against ORT

I64 = np.int64
F32 = np.float32

#: (op, inputs as initializers, attributes, opset): each folded by us and computed by ORT.
FOLD_CASES = [
    ("Shape", [np.zeros((2, 3, 4), F32)], {}, 13),
    ("Shape", [np.zeros((2, 3, 4), F32)], {"start": 1}, 15),
    ("Shape", [np.zeros((2, 3, 4), F32)], {"start": -2, "end": -1}, 15),
    ("Size", [np.zeros((2, 3, 4), F32)], {}, 13),
    ("Gather", [I64([5, 6, 7, 8]), I64([-1, 0])], {"axis": 0}, 13),
    ("Gather", [np.arange(12, dtype=F32).reshape(3, 4), I64([[2], [0]])], {"axis": 1}, 13),
    ("Unsqueeze", [I64([3, 4]), I64([0, -1])], {}, 13),
    ("Unsqueeze", [I64([3, 4])], {"axes": [1]}, 11),
    ("Squeeze", [np.zeros((1, 3, 1), F32), I64([0])], {}, 13),
    ("Squeeze", [np.zeros((1, 3, 1), F32)], {}, 13),
    ("Squeeze", [np.zeros((1, 3, 1), F32)], {"axes": [-1]}, 11),
    ("Concat", [I64([1]), I64([-1, 4])], {"axis": 0}, 13),
    ("Slice", [np.arange(10, dtype=I64), I64([-3]), I64([2**62]), I64([0]), I64([1])], {}, 13),
    ("Slice", [np.arange(10, dtype=I64), I64([8]), I64([-2**62]), I64([0]), I64([-3])], {}, 13),
    ("Slice", [np.arange(24, dtype=F32).reshape(4, 6), I64([1, 5]), I64([3, 0]), I64([0, 1]), I64([1, -2])], {}, 13),
    ("Slice", [np.arange(24, dtype=F32).reshape(4, 6)], {"starts": [1], "ends": [100], "axes": [1]}, 9),
    ("Cast", [F32([1.7, -1.7, 3.0])], {"to": TensorProto.INT64}, 13),
    ("Cast", [I64([1, 0, 5])], {"to": TensorProto.BOOL}, 13),
    ("Cast", [I64([1, 2])], {"to": TensorProto.FLOAT16}, 13),
    ("ConstantOfShape", [I64([2, 3])], {"value": numpy_helper.from_array(I64([7]))}, 13),
    ("ConstantOfShape", [I64([2])], {}, 13),
    ("Range", [I64(2), I64(11), I64(3)], {}, 13),
    ("Range", [F32(1), F32(-1), F32(-0.5)], {}, 13),
    ("Reshape", [np.arange(24, dtype=F32).reshape(2, 3, 4), I64([0, -1])], {}, 13),
    ("Reshape", [np.arange(24, dtype=F32).reshape(2, 3, 4), I64([4, 0, 2])], {}, 13),
    ("Expand", [F32([[1], [2]]), I64([2, 1, 3])], {}, 13),
    ("Tile", [F32([[1, 2]]), I64([2, 2])], {}, 13),
    ("Transpose", [np.arange(6, dtype=F32).reshape(1, 2, 3)], {"perm": [2, 0, 1]}, 13),
    ("Transpose", [np.arange(6, dtype=F32).reshape(2, 3)], {}, 13),
    ("Flatten", [np.zeros((2, 3, 4), F32)], {"axis": -1}, 13),
    ("Add", [I64([1, 2]), I64([[10], [20]])], {}, 13),
    ("Sub", [F32([1.5]), F32([0.25, 4])], {}, 13),
    ("Mul", [I64([3]), I64([-2, 5])], {}, 13),
    ("Div", [I64([7, -7, 7, -7]), I64([2, 2, -2, -2])], {}, 13),
    ("Div", [F32([1, 3]), F32([4])], {}, 13),
    ("Pow", [F32([2, 3]), F32([0.5, 2])], {}, 13),
    ("Pow", [I64([2, 3]), I64([3])], {}, 13),
    ("Mod", [I64([7, -7, 7]), I64([3, 3, -3])], {}, 13),
    ("Mod", [F32([7.5, -7.5]), F32([2, 2])], {"fmod": 1}, 13),
    ("Sqrt", [F32([4, 2])], {}, 13),
    ("Neg", [I64([4, -2])], {}, 13),
    ("Floor", [F32([1.5, -1.5])], {}, 13),
    ("Ceil", [F32([1.5, -1.5])], {}, 13),
    ("Round", [F32([0.5, 1.5, 2.5, -0.5])], {}, 13),
    ("Reciprocal", [F32([4, 0.5])], {}, 13),
    ("Sigmoid", [F32([0, 2])], {}, 13),
    ("Relu", [F32([-1, 2])], {}, 13),
    ("Equal", [I64([1, 2, 3]), I64([2])], {}, 13),
    ("Less", [F32([1, 2, 3]), F32([2])], {}, 13),
    ("GreaterOrEqual", [I64([1, 2, 3]), I64([2])], {}, 13),
    ("Not", [np.array([True, False])], {}, 13),
    ("And", [np.array([True, False]), np.array([True])], {}, 13),
    ("Where", [np.array([True, False, True]), I64([1, 2, 3]), I64([-1])], {}, 13),
    ("Min", [I64([1, 5]), I64([3]), I64([4, 0])], {}, 13),
    ("Max", [F32([1, 5]), F32([3])], {}, 13),
    ("Sum", [F32([1, 5]), F32([3]), F32([1, 1])], {}, 13),
    ("Mean", [F32([1, 5]), F32([3, 2])], {}, 13),
    ("Clip", [F32([-2, 0.5, 9])], {"min": 0.0, "max": 6.0}, 9),
    ("Clip", [F32([-2, 0.5, 9]), F32(0), F32(6)], {}, 13),
    ("ReduceMean", [np.arange(6, dtype=F32).reshape(2, 3)], {"axes": [1], "keepdims": 0}, 13),
    ("ReduceMean", [np.arange(6, dtype=F32).reshape(2, 3), I64([0])], {}, 18),
    ("ReduceSum", [np.arange(6, dtype=I64).reshape(2, 3), I64([1])], {"keepdims": 0}, 13),
    ("ReduceProd", [I64([2, 3, 4])], {"keepdims": 0}, 13),
    ("MatMul", [np.arange(6, dtype=F32).reshape(2, 3), np.arange(3, dtype=F32)], {}, 13),
    ("Pad", [np.arange(6, dtype=F32).reshape(2, 3), I64([0, 1, 1, -1])], {}, 13),
    ("Pad", [np.arange(6, dtype=F32).reshape(2, 3), I64([1, 2, 1, 2]), F32(0)], {"mode": "reflect"}, 13),
    ("Pad", [np.arange(6, dtype=F32).reshape(2, 3)], {"pads": [1, 1, 0, 0], "value": 3.0}, 9),
    ("CastLike", [F32([1.9, -2.5]), I64([0])], {}, 15),
    ("Exp", [F32([0, 1.5])], {}, 13),
    ("Log", [F32([1, 10])], {}, 13),
    ("Tanh", [F32([-1, 0.5])], {}, 13),
    ("Abs", [I64([-3, 2])], {}, 13),
    ("Sign", [F32([-3, 0, 2])], {}, 13),
    ("Or", [np.array([True, False]), np.array([False])], {}, 13),
    ("Xor", [np.array([True, False]), np.array([True])], {}, 13),
    ("Greater", [I64([1, 2, 3]), I64([2])], {}, 13),
    ("LessOrEqual", [F32([1, 2, 3]), F32([2])], {}, 13),
    ("ReduceMin", [np.arange(6, dtype=I64).reshape(2, 3)], {"axes": [0]}, 13),
    ("ReduceMax", [np.arange(6, dtype=F32).reshape(2, 3), I64([-1])], {"keepdims": 0}, 18),
    ("ReduceSum", [np.arange(6, dtype=F32).reshape(2, 3), I64([])], {"noop_with_empty_axes": 1}, 13),
    ("ReduceSum", [np.arange(6, dtype=F32).reshape(2, 3)], {}, 13),
]


@pytest.mark.parametrize("op, values, attrs, opset", FOLD_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(FOLD_CASES)])
def test_fold_table_against_ort(tmp_path, op, values, attrs, opset):
    names = [f"in{i}" for i in range(len(values))]
    node = helper.make_node(op, names, ["out"], name="folded", **attrs)
    model = image_model([node, helper.make_node("Relu", ["x"], ["y"])], outputs=("y", "out"), opset=opset,
                        initializers=[init(n, v) for n, v in zip(names, values)], x_shape=(1, 1, 2, 2))
    path = save(model, tmp_path / "f.onnx")
    g = read_onnx(path)
    assert "folded" not in [n.name for n in g.nodes]
    expected = ort_values(model, ["out"], np.zeros((1, 1, 2, 2), np.float32))["out"]
    ours = g.constants["out"]
    if expected.dtype.kind == "f":
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, expected.astype(np.float32), rtol=1e-6, err_msg=op)
    else:
        assert ours.dtype == (np.bool_ if expected.dtype == np.bool_ else np.int64)
        np.testing.assert_array_equal(ours, expected, err_msg=op)
    assert ours.shape == expected.shape


@settings(max_examples=60, deadline=None)
@given(length=st.integers(0, 6), step=st.sampled_from([-3, -2, -1, 1, 2, 3]),
       start=st.one_of(st.integers(-8, 8), st.sampled_from([-2**63, 2**63 - 1])),
       end=st.one_of(st.integers(-8, 8), st.sampled_from([-2**63, 2**63 - 1])))
def test_slice_clamping_against_ort(length, step, start, end):
    # ONNX clamps starts and ends differently for negative steps; ORT is the reference.
    values = [np.arange(length, dtype=I64), I64([start]), I64([end]), I64([0]), I64([step])]
    names = [f"in{i}" for i in range(5)]
    model = image_model([helper.make_node("Slice", names, ["out"]), helper.make_node("Relu", ["x"], ["y"])],
                        outputs=("y", "out"), initializers=[init(n, v) for n, v in zip(names, values)],
                        x_shape=(1, 1, 1, 1))
    with tempfile.TemporaryDirectory() as folder:
        g = read_onnx(save(model, Path(folder) / "s.onnx"))
    expected = ort_values(model, ["out"], np.zeros((1, 1, 1, 1), np.float32))["out"]
    np.testing.assert_array_equal(g.constants["out"], expected)


def test_every_folder_is_tested_against_ort():
    tested = {case[0] for case in FOLD_CASES} | {"Constant"}  # Constant: test_constant_node_weights...
    untested = set(FOLDERS) - tested
    assert not untested, f"fold functions without an ORT case: {sorted(untested)}"


def test_fold_errors_name_the_node(tmp_path):
    nodes = [helper.make_node("Gather", ["data", "idx"], ["g"], name="bad_gather"),
             helper.make_node("Reshape", ["x", "g"], ["y"])]
    inits = [init("data", I64([1, 2])), init("idx", I64([5]))]
    with pytest.raises(OnnxError, match=r"node 'bad_gather' \(Gather\) cannot be computed on its constant inputs: "
                                        r"an index is out of range"):
        read_onnx(save(image_model(nodes, initializers=inits), tmp_path / "g.onnx"))


# ----------------------------------------------------------------------------- damaged files: only OnnxError


def fuzz_seed_model():
    """A small model that exercises most of the reader: initializers of three types, Constant nodes,
    a shape chain, an old-style attribute, Identity, and a real layer."""
    nodes, inits = flatten_chain(13)
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.float16([0.5, 2])))] + nodes
    nodes[-1] = helper.make_node("Reshape", ["x", "shape"], ["flat"])
    nodes += [helper.make_node("Identity", ["flat"], ["same"]),
              helper.make_node("Slice", ["same", "st", "en"], ["cut"]),
              helper.make_node("Gemm", ["cut", "w"], ["y"], transB=1)]
    inits += [init("st", I64([0])), init("en", I64([2**62])), init("w", np.ones((2, 48), np.float64))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    return image_model(nodes, initializers=inits, inputs=inputs).SerializeToString()


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_files_raise_only_onnx_error(data):
    raw = damage(data, fuzz_seed_model(), max_cut=16)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.onnx"
        path.write_bytes(raw)
        try:
            read_onnx(path, size=(4, 4))
        except OnnxError:
            pass
