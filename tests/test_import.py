"""cnn import: hand-written torch networks, exported by both of torch's exporters, run on
our engine and checked node by node against ONNX Runtime, the oracle for imported graphs."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from clirunner import cnn  # noqa: E402

from cnn_cli.modelfile import load_model  # noqa: E402
from cnn_cli.onnximport import ImportOptions, ImportRefused, import_onnx  # noqa: E402
from tests import torch_zoo as zoo  # noqa: E402

#: Exporters and opsets every tiny model is imported from.
EXPORTS = [("legacy", 13), ("legacy", 17), ("dynamo", 18)]
MODELS = sorted(zoo.tiny_models())


def exported(tmp_path, name, exporter, opset, seed=0):
    build, size = zoo.tiny_models()[name]
    model = build()
    model = zoo.load_mtcnn(name) if name in zoo.MTCNN_NETS else zoo.randomize(model, seed)
    path = zoo.export_onnx(model, tmp_path / f"{name}.onnx", size, exporter=exporter, opset=opset)
    return path, size


def with_every_node_as_output(path, tensors, out):
    """The model at ``path`` with each tensor in ``tensors`` also a graph output, saved to ``out``."""
    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    for t in tensors:
        if t not in have:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    onnx.save(model, str(out), save_as_external_data=False)
    return out


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def close(ours, ref):
    return float(np.abs(ours - ref).max()) <= 1e-4 * float(np.abs(ref).max()) + 1e-5


def assert_every_node_matches(path, size, tmp_path, options=None):
    """Import ``path`` and check each node's output against ONNX Runtime's for one random input."""
    imported = import_onnx(path, options or ImportOptions())
    net = imported.network
    probe = with_every_node_as_output(path, imported.tensors.values(), tmp_path / "probe.onnx")
    sess = session(probe)
    names = [o.name for o in sess.get_outputs()]
    x = np.random.default_rng(1).standard_normal((1, *size)).astype(np.float32)
    refs = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x})))
    outputs = net.node_outputs(x)
    np.testing.assert_allclose(net.forward(x), outputs[-1], rtol=1e-5, atol=1e-5)  # with the rewrites
    worst = 0.0
    for i, node in enumerate(net.names):
        ours = outputs[i]
        ref = refs[imported.tensors[node]]
        if ref.shape != ours.shape:  # a final softmax left to predict: the logits are one step before
            continue
        worst = max(worst, float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12)))
        assert close(ours, ref), f"node {node} ({net.layers[i].kind}): {np.abs(ours - ref).max()}"
    return worst


@pytest.mark.parametrize("exporter, opset", EXPORTS, ids=[f"{e}{o}" for e, o in EXPORTS])
@pytest.mark.parametrize("name", MODELS)
def test_every_node_matches_onnx_runtime(tmp_path, name, exporter, opset):
    path, size = exported(tmp_path, name, exporter, opset)
    assert assert_every_node_matches(path, size, tmp_path) < 1e-4


def test_alexnet_with_lrn_nodes_matches_onnx_runtime(tmp_path):
    """The 2012 AlexNet, LRN and grouped convolutions included, written with onnx.helper."""
    size = (3, 67, 67)
    path = zoo.alexnet_lrn_onnx(tmp_path / "alexnet.onnx", size=size, num_classes=10, hidden=64)
    assert assert_every_node_matches(path, size, tmp_path) < 1e-4
    assert [layer.kind for layer in import_onnx(path).network.layers].count("lrn") == 2


def test_real_rnet_weights_tell_faces_from_non_faces(tmp_path):
    """MTCNN's R-Net with facenet-pytorch's weights, imported, on scikit-image's lfw_subset."""
    from PIL import Image
    from skimage import data

    path, _ = exported(tmp_path, "rnet", "legacy", 17)
    crops = data.lfw_subset()
    for k in list(range(0, 100, 5)) + list(range(100, 200, 5)):
        folder = tmp_path / "lfw" / ("face" if k < 100 else "not_face")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((crops[k] * 255).astype(np.uint8)).save(folder / f"{k:03d}.png")
    (tmp_path / "classes.txt").write_text("not_face\nface\n")
    model = tmp_path / "rnet.npz"
    result = cnn("import", path, "-o", model, "--scale", "255", "--mean", "127.5", "--std", "128",
                 "--output", "output1", "--classes", tmp_path / "classes.txt")
    assert result.exit_code == 0, result.output
    result = cnn("evaluate", tmp_path / "lfw", "--model", model, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] >= 0.95


@pytest.mark.parametrize("name", ["resnet18", "squeezenet1_1", "mobilenet_v2"])
def test_top1_agrees_with_onnx_runtime_on_twenty_inputs(tmp_path, name):
    path, size = exported(tmp_path, name, "legacy", 17, seed=3)
    net = import_onnx(path, ImportOptions()).network
    sess = session(path)
    x = np.random.default_rng(2).uniform(-2, 2, (20, *size)).astype(np.float32)
    ref = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[k:k + 1]})[0] for k in range(20)])
    ours = net.forward(x)
    assert close(ours, ref)
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_a_final_softmax_is_left_to_predict(tmp_path):
    path, size = exported(tmp_path, "rnet", "legacy", 17)
    imported = import_onnx(path, ImportOptions(output="output1"))
    assert any("final Softmax" in note for note in imported.assumed)
    sess = session(path)
    x = np.random.default_rng(4).standard_normal((3, *size)).astype(np.float32)
    ref = np.concatenate([sess.run(["output1"], {"input": x[k:k + 1]})[0] for k in range(3)])
    logits = imported.network.forward(x)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    assert close(probs / probs.sum(1, keepdims=True), ref)


def test_cli_import_then_info_predict_and_export_round_trip(tmp_path):
    path, size = exported(tmp_path, "resnet18", "legacy", 17)
    out = tmp_path / "r.npz"
    result = cnn("import", path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["layers"] == 49 and summary["input"] == [3, 64, 64] and summary["classes"] == 1000
    assert "assumed: ImageNet normalisation" in result.stderr
    again = cnn("import", path, "-o", out)
    assert again.exit_code == 1 and "exists; use --force" in again.stderr
    info = cnn("info", out)
    assert info.exit_code == 0, info.output
    assert "layer1.0.conv1" in info.stdout and "imported from onnx" in info.stdout
    net, meta, _ = load_model(out)
    assert meta.source["sha256"] and meta.preprocessing.mean == [0.485, 0.456, 0.406]
    # cnn export puts the normalisation in the graph; importing that needs no options.
    exported_again = tmp_path / "again.onnx"
    assert cnn("export", out, "-o", exported_again).exit_code == 0
    round_trip = import_onnx(exported_again, ImportOptions())
    assert round_trip.meta.preprocessing.mean == [0.0, 0.0, 0.0] and round_trip.meta.classes == meta.classes
    x = np.random.default_rng(5).uniform(0, 1, (2, *size)).astype(np.float32)
    mean = np.array(meta.preprocessing.mean, np.float32)[None, :, None, None]
    std = np.array(meta.preprocessing.std, np.float32)[None, :, None, None]
    assert close(round_trip.network.forward(x), net.forward((x - mean) / std))
    sess = session(path)
    ref = np.concatenate([sess.run(None, {"input": ((x - mean) / std)[k:k + 1]})[0] for k in range(2)])
    assert close(round_trip.network.forward(x), ref)


def test_model_option_takes_an_onnx_file_directly(tmp_path):
    path, _ = exported(tmp_path, "squeezenet1_1", "legacy", 17)
    from skimage import data
    from PIL import Image

    image = tmp_path / "cat.png"
    Image.fromarray(data.chelsea()).save(image)
    result = cnn("predict", image, "--model", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)


def test_unsupported_nodes_are_all_named_before_anything_is_written(tmp_path):
    helper = onnx.helper
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="ok"),
             helper.make_node("Erf", ["a"], ["b"], name="erf_1"),
             helper.make_node("Celu", ["b"], ["y"], name="celu_1")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ImportRefused, match=r"node 'erf_1' \(Erf\); node 'celu_1' \(Celu\).*cnn runs: .*Conv"):
        import_onnx(path, ImportOptions())
    result = cnn("import", path, "-o", tmp_path / "m.npz")
    assert result.exit_code == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "m.npz").exists()


def test_a_bgr_network_is_made_to_take_rgb(tmp_path):
    """--color bgr reverses the first convolution's input channels (and the mean and std given
    in B, G, R order), so the model reads images as every cnn model does."""
    path, size = exported(tmp_path, "resnet18", "legacy", 17)
    bgr = import_onnx(path, ImportOptions(color="bgr", mean=[0.3, 0.4, 0.5], std=[0.2, 0.25, 0.3]))
    assert bgr.meta.preprocessing.color == "rgb"
    assert bgr.meta.preprocessing.mean == [0.5, 0.4, 0.3] and bgr.meta.preprocessing.std == [0.3, 0.25, 0.2]
    assert any("B, G, R" in note for note in bgr.assumed)
    sess = session(path)
    x = np.random.default_rng(6).standard_normal((1, *size)).astype(np.float32)  # normalised R, G, B
    ref = sess.run(None, {"input": x[:, ::-1].copy()})[0]  # the file's network sees B, G, R
    assert close(bgr.network.forward(x), ref)


def test_apply_writes_grids_alone_for_a_large_imported_network(tmp_path):
    """A 50-node network has thousands of maps: the default writes their grids, --save all of it."""
    from PIL import Image

    path, size = exported(tmp_path, "resnet18", "legacy", 17)
    model = tmp_path / "r.npz"
    assert cnn("import", path, "-o", model).exit_code == 0
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(image)
    result = cnn("apply", image, "--model", model, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "writing their grids" in result.stderr
    folder = tmp_path / "out" / "photo"
    assert len(list(folder.glob("layer*_grid.png"))) == 47 and not (folder / "features.npz").exists()
    assert not list(folder.glob("layer0/*.png"))
    again = cnn("apply", image, "--model", model, "-o", tmp_path / "all", "--save", "raw", "--layers", "layer4.1")
    assert again.exit_code == 0, again.output
    manifest = json.loads((tmp_path / "all" / "photo" / "manifest.json").read_text())
    [record] = manifest["layers"]
    assert record["node"] == "layer4.1" and record["kind"] == "add" and len(record["inputs"]) == 2


def test_info_profile_times_every_node_of_a_model(tmp_path):
    path, _ = exported(tmp_path, "squeezenet1_1", "legacy", 17)
    model = tmp_path / "s.npz"
    assert cnn("import", path, "-o", model).exit_code == 0
    result = cnn("info", model, "--profile", "--batch", "2")
    assert result.exit_code == 0, result.output
    assert "per layer kind" in result.stdout and "features.3" in result.stdout and "G multiply-adds" in result.stdout
    assert "concat" in result.stdout and "conv" in result.stdout
    assert "conv+relu" in result.stdout  # a conv and its ReLU run as one step, and are timed so
    refused = cnn("info", "default", "--profile")
    assert refused.exit_code == 2 and "--profile times a model" in refused.stderr
