"""The reference networks of tests/torch_zoo.py: their layouts, their exports, their weights.

Each quick net is exported by both torch exporters and run in ONNX Runtime (the
oracle of the import tests), which must agree with torch within
``max|ort - torch| <= 1e-4 * max|torch| + 1e-5``. The MTCNN nets are checked
against facenet_pytorch's own class code, and R-Net against real face crops.
"""

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import torch_zoo as zoo  # after the importorskips: it imports torch and onnx

RTOL, ATOL = 1e-4, 1e-5
TINY = zoo.tiny_models()
# The dynamo exporter takes 2-7 s a net: these two cover its external data, batch norm,
# depthwise convs and Clip; the dynamic-size test below adds the U-Net's Resize and
# ConvTranspose through it.
DYNAMO_NETS = ("resnet18", "mobilenet_v2")


def _session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _torch_outputs(model, x):
    with torch.no_grad():
        out = model(x)
    return [out.numpy()] if isinstance(out, torch.Tensor) else [o.numpy() for o in out]


def _assert_close(got, ref, label):
    bound = RTOL * np.abs(ref).max() + ATOL
    worst = np.abs(got - ref).max()
    assert got.shape == ref.shape, f"{label}: shape {got.shape} != {ref.shape}"
    assert worst <= bound, f"{label}: max |ort - torch| = {worst:.3g} > {bound:.3g}"


def _input(size, batch=2, seed=1):
    return torch.randn(batch, *size, generator=torch.Generator().manual_seed(seed))


def _check_against_ort(model, path, x, label):
    outputs = _session(path).run(None, {"input": x.numpy()})
    refs = _torch_outputs(model, x)
    assert len(outputs) == len(refs), label
    for i, (got, ref) in enumerate(zip(outputs, refs)):
        _assert_close(got, ref, f"{label} output {i}")


# ---------------------------------------------------------------- exports against ONNX Runtime

@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", sorted(TINY))
def test_legacy_export_matches_ort(name, opset, tmp_path):
    builder, size = TINY[name]
    model = zoo.randomize(builder(), seed=0)
    path = zoo.export_onnx(model, tmp_path / f"{name}.onnx", size, batch=2, opset=opset)
    assert not Path(f"{path}.data").exists()
    _check_against_ort(model, path, _input(size), f"{name} legacy opset {opset}")


@pytest.mark.parametrize("name", DYNAMO_NETS)
def test_dynamo_export_writes_external_data_and_matches_ort(name, tmp_path):
    pytest.importorskip("onnxscript")
    builder, size = TINY[name]
    model = zoo.randomize(builder(), seed=0)
    path = zoo.export_onnx(model, tmp_path / f"{name}.onnx", size, batch=2, exporter="dynamo")
    proto = onnx.load(str(path), load_external_data=False)
    assert [(o.domain, o.version) for o in proto.opset_import if o.domain == ""] == [("", 18)]
    assert proto.ir_version == 8
    external = [t.name for t in proto.graph.initializer
                if t.data_location == onnx.TensorProto.EXTERNAL]
    conv_weights = [t.name for t in proto.graph.initializer if t.name.endswith("conv1.weight")
                    or t.name.endswith("0.0.weight") or t.name.endswith("enc1.0.weight")]
    assert Path(f"{path}.data").stat().st_size > 0
    assert conv_weights and set(conv_weights) <= set(external), (conv_weights, external[:5])
    _check_against_ort(model, path, _input(size), f"{name} dynamo")


@pytest.mark.parametrize("exporter,opset,name", [("legacy", 13, "squeezenet1_1"),
                                                 ("dynamo", 18, "small_unet")])
def test_dynamic_hw_export_runs_at_other_sizes(exporter, opset, name, tmp_path):
    """ceil_mode pools and scale-factor Resize must follow the size given at run time."""
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    builder, size = TINY[name]
    model = zoo.randomize(builder(), seed=3)
    path = zoo.export_onnx(model, tmp_path / "net.onnx", size, exporter=exporter, opset=opset,
                           dynamic_hw=True)
    shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    assert [d.HasField("dim_param") for d in shape.dim] == [False, False, True, True]
    for hw in ((40, 56), (68, 68)):
        _check_against_ort(model, path, _input((3, *hw), batch=1), f"{name} at {hw}")


@pytest.mark.parametrize("opset,ir_version", [(13, 7), (17, 8)])
def test_export_pins_opset_and_ir_version(opset, ir_version, tmp_path):
    path = zoo.export_onnx(zoo.randomize(zoo.pnet(), seed=0), tmp_path / "pnet.onnx",
                           (3, 12, 12), opset=opset)
    proto = onnx.load(str(path))
    assert proto.ir_version == ir_version
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output0", "output1"]


def test_dynamo_below_its_lowest_opset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="opset >= 18"):
        zoo.export_onnx(zoo.pnet(), tmp_path / "p.onnx", (3, 12, 12), exporter="dynamo",
                        opset=17)
    with pytest.raises(ValueError, match="exporter must be one of"):
        zoo.export_onnx(zoo.pnet(), tmp_path / "p.onnx", (3, 12, 12), exporter="jit")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- torchvision's layouts

# Parameter counts of torchvision's models at 1000 classes (its weights' "num_params"),
# and keys that only the right module tree produces.
TORCHVISION_LAYOUTS = {
    "resnet18": (11_689_512, ["layer2.0.downsample.0.weight", "layer2.0.downsample.1.running_var",
                              "layer4.1.bn2.num_batches_tracked", "fc.weight"]),
    "resnet34": (21_797_672, ["layer3.5.conv2.weight", "layer4.2.bn2.bias"]),
    "resnet50": (25_557_032, ["layer1.0.downsample.0.weight", "layer4.2.conv3.weight",
                              "layer4.2.bn3.running_mean"]),
    "mobilenet_v2": (3_504_872, ["features.0.0.weight", "features.1.conv.0.0.weight",
                                 "features.1.conv.1.weight", "features.2.conv.3.running_var",
                                 "features.18.1.bias", "classifier.1.weight"]),
    "squeezenet1_1": (1_235_496, ["features.0.weight", "features.3.squeeze.weight",
                                  "features.12.expand3x3.bias", "classifier.1.weight"]),
    "alexnet": (61_100_840, ["features.10.weight", "classifier.1.weight", "classifier.4.weight",
                             "classifier.6.bias"]),
    "vgg11": (132_863_336, ["features.18.weight", "classifier.0.weight", "classifier.6.bias"]),
    "vgg16": (138_357_544, ["features.28.weight", "classifier.3.weight", "classifier.6.bias"]),
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_LAYOUTS))
def test_torchvision_parameter_counts_and_names(name):
    count, keys = TORCHVISION_LAYOUTS[name]
    with torch.device("meta"):       # shapes only: VGG-16's 138 M weights are never allocated
        model = getattr(zoo, name)()
    assert sum(p.numel() for p in model.parameters()) == count
    missing = [k for k in keys if k not in model.state_dict()]
    assert not missing, f"{name}: no {missing}"


@pytest.mark.parametrize("name,size", [("resnet34", (3, 32, 32)), ("resnet50", (3, 32, 32))])
def test_deeper_resnets_run_at_small_sizes(name, size):
    model = zoo.randomize(getattr(zoo, name)(num_classes=7), seed=0)
    out = _torch_outputs(model, _input(size, batch=1))[0]
    assert out.shape == (1, 7) and np.isfinite(out).all() and np.abs(out).max() > 0


# ---------------------------------------------------------------- randomize

def test_randomize_is_deterministic_and_no_batch_norm_is_the_identity():
    a = zoo.randomize(zoo.densenet_block_net(), seed=5)
    b = zoo.randomize(zoo.densenet_block_net(), seed=5)
    c = zoo.randomize(zoo.densenet_block_net(), seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["features.conv0.weight"], sc["features.conv0.weight"])
    assert not a.training
    norms = [m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    for m in norms:
        assert (m.running_mean != 0).all() and (m.running_var != 1).all()
        assert (m.weight != 1).all() and (m.bias != 0).all()


# ---------------------------------------------------------------- AlexNet 2012 with LRN

def _alexnet_2012_torch(proto, x):
    """The same graph in torch.nn.functional, with the file's initializers."""
    import torch.nn.functional as F

    w = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
         for t in proto.graph.initializer}
    for name, _, _, stride, pad, groups in zoo.ALEXNET_2012_CONVS:
        x = F.relu(F.conv2d(x, w[f"{name}.weight"], w[f"{name}.bias"], stride, pad,
                            groups=groups))
        if name in ("conv1", "conv2"):
            lrn = zoo.LRN_ATTRIBUTES
            x = F.local_response_norm(x, lrn["size"], lrn["alpha"], lrn["beta"], lrn["bias"])
        if name in ("conv1", "conv2", "conv5"):
            x = F.max_pool2d(x, 3, 2)
    x = torch.flatten(x, 1)
    x = F.relu(F.linear(x, w["fc6.weight"], w["fc6.bias"]))
    x = F.relu(F.linear(x, w["fc7.weight"], w["fc7.bias"]))
    return F.linear(x, w["fc8.weight"], w["fc8.bias"]).numpy()


def test_alexnet_lrn_onnx_matches_torch_in_ort(tmp_path):
    size = (3, 99, 99)
    path = zoo.alexnet_lrn_onnx(tmp_path / "alexnet.onnx", seed=2, size=size, num_classes=20,
                                hidden=256)
    proto = onnx.load(str(path))
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 13)]
    assert [n.name for n in proto.graph.node if n.op_type == "LRN"] == ["norm_conv1", "norm_conv2"]
    groups = [a.i for n in proto.graph.node if n.op_type == "Conv" for a in n.attribute
              if a.name == "group"]
    assert groups == [1, 2, 1, 2, 2]
    x = _input(size, batch=1)
    got = _session(path).run(None, {"input": x.numpy()})[0]
    _assert_close(got, _alexnet_2012_torch(proto, x), "alexnet_lrn_onnx")


def test_alexnet_lrn_onnx_default_is_the_227_layout(tmp_path):
    # fc6's input is 256 x 6 x 6 at 227 x 227; checked on the proto, without running 61 M weights.
    path = zoo.alexnet_lrn_onnx(tmp_path / "a.onnx", hidden=8, num_classes=3)
    shapes = {t.name: list(t.dims) for t in onnx.load(str(path)).graph.initializer}
    assert shapes["conv1.weight"] == [96, 3, 11, 11] and shapes["fc6.weight"] == [8, 9216]
    with pytest.raises(ValueError, match="at least"):
        zoo.alexnet_lrn_onnx(tmp_path / "b.onnx", size=(3, 60, 60))


# ---------------------------------------------------------------- MTCNN, real weights

def _facenet_folder():
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder if all((folder / "data" / f"{n}.pt").is_file() for n in zoo.MTCNN_NETS) else None


needs_facenet = pytest.mark.skipif(
    _facenet_folder() is None,
    reason="facenet-pytorch's MTCNN weights are absent (pip install --no-deps facenet-pytorch)")


def _facenet_class(name):
    """facenet_pytorch's own PNet/RNet/ONet, compiled from its source file.

    Importing the module would import torchvision (through utils.detect_face), so only
    the three class definitions are taken from models/mtcnn.py and run with torch in scope.
    """
    source_path = _facenet_folder() / "models" / "mtcnn.py"
    tree = ast.parse(source_path.read_text())
    wanted = {"pnet": "PNet", "rnet": "RNet", "onet": "ONet"}[name]
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == wanted]
    namespace = {"torch": torch, "nn": torch.nn, "os": __import__("os"),
                 "__file__": str(source_path)}
    # facenet_pytorch's own file, installed by pip: the oracle for our rewrite of its nets.
    code = compile(ast.Module(body=classes, type_ignores=[]), str(source_path), "exec")
    exec(code, namespace)  # noqa: S102
    return namespace[wanted]


@needs_facenet
@pytest.mark.parametrize("name", zoo.MTCNN_NETS)
def test_mtcnn_weights_load_strictly_and_match_facenet(name, tmp_path):
    ours = zoo.load_mtcnn(name)
    state = torch.load(zoo.mtcnn_weights_path(name), weights_only=True)
    assert list(ours.state_dict()) == list(state)
    theirs = _facenet_class(name)(pretrained=True).eval()   # loads the same .pt itself
    x = _input(zoo.MTCNN_INPUT_SIZES[name], batch=3, seed=7)
    for i, (a, b) in enumerate(zip(_torch_outputs(ours, x), _torch_outputs(theirs, x))):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} output {i}")
    path = zoo.export_onnx(ours, tmp_path / f"{name}.onnx", zoo.MTCNN_INPUT_SIZES[name],
                           batch=3, opset=13)
    _check_against_ort(ours, path, x, f"{name} real weights")


def _lfw_crops_as_mtcnn_input():
    """scikit-image's lfw_subset (100 faces then 100 non-faces, 25x25 grey in [0, 1]) as
    R-Net's input: grey to three equal channels (so RGB or BGR order cannot matter), 0..255,
    resized to 24x24 with facenet's ``imresample`` (area interpolation), then facenet's
    ``(x - 127.5) * 0.0078125``. Shape (200, 3, 24, 24)."""
    data = pytest.importorskip("skimage.data")
    grey = torch.tensor(data.lfw_subset(), dtype=torch.float32)
    rgb = grey[:, None].expand(-1, 3, -1, -1) * 255.0
    crops = torch.nn.functional.interpolate(rgb, size=(24, 24), mode="area")
    return (crops - 127.5) * 0.0078125


@needs_facenet
def test_rnet_tells_faces_from_non_faces():
    # Measured with facenet's weights: 100/100 faces above 0.5 (median 0.9997) and 100/100
    # non-faces below (median 0.004). 90% leaves room for a changed resize.
    _, prob = zoo.load_mtcnn("rnet")(_lfw_crops_as_mtcnn_input())
    face = prob[:, 1].detach().numpy()
    faces_right = (face[:100] > 0.5).mean()
    non_faces_right = (face[100:] <= 0.5).mean()
    assert faces_right >= 0.9 and non_faces_right >= 0.9, (faces_right, non_faces_right)


def test_mtcnn_weights_path_names_what_is_missing(monkeypatch):
    with pytest.raises(ValueError, match="must be one of"):
        zoo.mtcnn_weights_path("mnet")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="--no-deps facenet-pytorch"):
        zoo.mtcnn_weights_path("rnet")
