"""``cnn export``: models and pipelines as ONNX, run by ONNX Runtime against our own forward pass.

Every shipped pipeline, every preset architecture and every registered layer
type is exported, checked with ``onnx.checker.check_model(full_check=True)``
and run in ONNX Runtime on random inputs (pipelines at two image sizes); the
outputs must equal ours to 1e-4 of the largest magnitude. Skipped when onnx
or onnxruntime is not installed.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from clirunner import cnn  # noqa: E402
from digits import PATTERNS, write_patterns  # noqa: E402
from tinymodel import save_tiny_model  # noqa: E402

from cnn_cli import registry  # noqa: E402
from cnn_cli.export import (  # noqa: E402
    DEFAULT_OPSET, MAX_OPSET, ExportError, model_to_onnx, pipeline_to_onnx,
)
from cnn_cli.filterbank import builtin_names, load_bank  # noqa: E402
from cnn_cli.imageio import read_image, resize  # noqa: E402
from cnn_cli.inference import predict_batches  # noqa: E402
from cnn_cli.filterlayers import BankConv  # noqa: E402
from cnn_cli.layers import Activation, Layer  # noqa: E402
from cnn_cli.meta import ModelMeta  # noqa: E402
from cnn_cli.modelfile import build_network, load_model, save_model  # noqa: E402
from cnn_cli.nn import Flatten, Linear, Network, softmax_cross_entropy  # noqa: E402
from cnn_cli.pipeline import Pipeline, load_architecture, load_pipeline  # noqa: E402
from cnn_cli.sources import load_source  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PIPELINES = builtin_names("pipeline")
PRESETS = {"lenet": ("gray", 20), "alexnet": ("rgb", 16), "resnet": ("rgb", 16), "netvlad": ("gray", 12)}
CHANNELS = {"gray": 1, "rgb": 3}
#: Two input sizes for every pipeline: the graph's H and W are dynamic.
SIZES = ((2, 40, 52), (1, 33, 47))


def session(model):
    """An ONNX Runtime session on one thread for a ModelProto or a file."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run(model, image):
    sess = session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": image})))


def assert_close(ours, theirs, what, rel=1e-4):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, f"{what}: shape {theirs.shape}, ours {ours.shape}"
    scale = max(np.abs(ours).max(), 1e-12)
    err = np.abs(ours - theirs).max()
    assert err <= rel * scale, f"{what}: max error {err:.3g} is {err / scale:.3g} of the largest magnitude {scale:.3g}"


def assert_pipeline_matches(pipeline, model, images):
    for x in images:
        ours, theirs = pipeline.forward(x), run(model, x)
        assert list(theirs) == [f"layer{i}" for i in range(len(ours))]
        for i, y in enumerate(ours):
            assert_close(y, theirs[f"layer{i}"], f"layer{i} ({pipeline.layers[i].kind}) at {x.shape}")


def random_images(channels, seed=0, sizes=SIZES, normal=False):
    rng = np.random.default_rng(seed)
    draw = rng.standard_normal if normal else rng.random
    return [draw((n, channels, h, w)).astype(np.float32) for n, h, w in sizes]


def dims(value_info):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or None
            for d in value_info.type.tensor_type.shape.dim]


def metadata(model):
    return {p.key: p.value for p in model.metadata_props}


def make_meta(name, tables, color, size, classes=("a", "b", "c")):
    c = CHANNELS[color]
    return ModelMeta.from_parts({
        "architecture": {"name": name, "layers": tables}, "classes": list(classes),
        "preprocessing": {"image_size": size, "color": color, "channels": c,
                          "mean": [0.4, 0.5, 0.6][:c], "std": [0.2, 0.25, 0.3][:c]}})


def trained(meta, steps=2, seed=0):
    """The network of ``meta`` after ``steps`` SGD steps on random data (batch-norm statistics move too)."""
    net = build_network(meta, seed=seed)
    rng = np.random.default_rng(seed)
    pre = meta.preprocessing
    for _ in range(steps):
        x = rng.standard_normal((4, pre.channels, pre.image_size, pre.image_size)).astype(np.float32)
        _, grad, _ = softmax_cross_entropy(net.forward(x, train=True), rng.integers(0, len(meta.classes), 4))
        net.zero_grad()
        net.backward(grad)
        for _, param, g in net.parameters():
            param -= 0.05 * g
    return net


def assert_model_matches(network, meta, model, n=3, seed=5):
    pre = meta.preprocessing
    image = np.random.default_rng(seed).random((n, pre.channels, pre.image_size, pre.image_size)).astype(np.float32)
    x = ((image - np.array(pre.mean, np.float32)[None, :, None, None])
         / np.array(pre.std, np.float32)[None, :, None, None]).astype(np.float32)
    theirs = run(model, image)
    assert list(theirs) == ["logits", "probabilities"]
    assert_close(network.forward(x), theirs["logits"], "logits")
    assert_close(predict_batches(network, x), theirs["probabilities"], "probabilities")


# ----------------------------------------------------------------------------- pipelines


@pytest.mark.parametrize("color", ["gray", "rgb"])
@pytest.mark.parametrize("name", PIPELINES)
def test_shipped_pipelines_match_our_forward_at_two_sizes(name, color):
    pipe = load_source(pipeline=name, color=color).pipeline
    model = pipeline_to_onnx(pipe, color=color)
    onnx.checker.check_model(model, full_check=True)
    assert_pipeline_matches(pipe, model, random_images(CHANNELS[color]))


def test_pipeline_graph_names_its_input_outputs_and_metadata():
    pipe = load_source(pipeline="default").pipeline
    model = pipeline_to_onnx(pipe)
    assert model.opset_import[0].version == DEFAULT_OPSET == 17 and model.ir_version == 8
    assert model.producer_name == "cnn"
    assert [i.name for i in model.graph.input] == ["image"] and dims(model.graph.input[0]) == ["N", 1, "H", "W"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    shapes = {o.name: dims(o) for o in model.graph.output}
    # Same-size layers say so; pooled ones depend on H and W.
    assert shapes == {"layer0": ["N", 11, "H", "W"], "layer1": ["N", 11, "H", "W"],
                      "layer2": ["N", 11, "layer2_H", "layer2_W"], "layer3": ["N", 11, "layer3_H", "layer3_W"],
                      "layer4": ["N", 11, "layer4_H", "layer4_W"]}
    meta = metadata(model)
    assert meta["kind"] == "pipeline" and meta["pipeline"] == "default" and meta["color"] == "gray"
    layers = json.loads(meta["layers"])
    assert [entry["output"] for entry in layers] == [f"layer{i}" for i in range(5)]
    assert layers[0]["channels"] == pipe.channels[0] and layers[1]["kind"] == "abs"


def test_exported_pipeline_gives_what_cnn_apply_writes(tmp_path):
    """A real image: ONNX Runtime's layers equal the arrays in cnn apply's features.npz."""
    image = REPO / "samples" / "shapes.png"
    out = tmp_path / "maps"
    result = cnn("apply", image, "-o", out, "--save", "raw", "--max-size", 160)
    assert result.exit_code == 0, result.output
    result = cnn("export", "default", "-o", tmp_path / "default.onnx")
    assert result.exit_code == 0, result.output
    with np.load(out / "shapes" / "features.npz", allow_pickle=False) as npz:
        written = dict(npz)
    theirs = run(tmp_path / "default.onnx", read_image(image, max_size=160)[None])
    assert sorted(written) == sorted(theirs)
    for key, maps in written.items():
        assert_close(maps, theirs[key][0], key)


def test_bank_exports_as_the_one_layer_pipeline_of_cnn_apply_bank(tmp_path):
    result = cnn("export", "edges:sobel_*", "-o", tmp_path / "sobel.onnx", "--color", "rgb")
    assert result.exit_code == 0, result.output
    pipe = load_source(banks=["edges:sobel_*"], color="rgb").pipeline
    assert_pipeline_matches(pipe, tmp_path / "sobel.onnx", random_images(3))


#: (padding, stride, dilation) of a conv layer.
PADDINGS = [("same", 1, 1), ("same", 1, 2), (1, 1, 1), ([2, 0], 1, 1), ("valid", 1, 1), (2, 2, 1),
            ([1, 2], [2, 1], [1, 2])]


@pytest.mark.parametrize("mode", ["mean", "depthwise"])
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_conv_padding_modes_and_options(padding_mode, mode):
    """Every padding mode, with ints, pairs, same and valid, strides and dilations; with "same",
    banks of three kernel sizes in one layer."""
    for padding, stride, dilation in PADDINGS:
        specs = ["edges:sobel_*"]
        if padding == "same":  # banks of 3x3, 7x7 and 2x2 kernels
            specs = ["edges:sobel_x", "smoothing:gaussian_s1", "edges:roberts_*"]
        conv = BankConv([load_bank(s) for s in specs], mode=mode, padding=padding, padding_mode=padding_mode,
                        stride=stride, dilation=dilation)
        pipe = Pipeline([conv], "pads").bind(["R", "G"])
        for opset in (17, 19):  # circular: Slice + Concat at 17, Pad "wrap" from 19
            model = pipeline_to_onnx(pipe, opset=opset)
            assert_pipeline_matches(pipe, model, random_images(2, sizes=((2, 31, 37), (1, 16, 18))))


def test_circular_padding_as_wide_as_the_image():
    """Circular padding may be as wide as the input itself (our engine allows it)."""
    pipe = Pipeline([BankConv([load_bank("smoothing:gaussian_s3")], padding_mode="circular")], "wide").bind(["gray"])
    side = pipe.layers[0].filters[0][0].shape[-1] // 2  # pads = side = image size
    for opset in (17, 19):
        assert_pipeline_matches(pipe, pipeline_to_onnx(pipe, opset=opset),
                                random_images(1, sizes=((1, side, side + 3),)))


@pytest.mark.parametrize("opset", [17, 18, 19, 21, MAX_OPSET])
def test_every_opset_we_accept_gives_the_same_maps(tmp_path, opset):
    """Reduce* take axes as an input from 18, Pad gains wrap at 19: the graphs differ, the maps must not."""
    path = tmp_path / "mixed.toml"
    path.write_text(textwrap.dedent("""\
        kind = "pipeline"
        [[layer]]
        type = "conv"
        banks = ["smoothing:gaussian_s1"]
        padding_mode = "reflect"
        [[layer]]
        type = "conv"
        banks = ["edges:sobel_x", "edges:sobel_y"]
        padding_mode = "circular"
        [[layer]]
        type = "normalize"
        method = "l2"
        [[layer]]
        type = "products"
        [[layer]]
        type = "normalize"
        method = "standardize"
        [[layer]]
        type = "corner_response"
        method = "shi_tomasi"
        [[layer]]
        type = "avgpool"
        kernel_size = 3
        stride = 1
        padding = 1
        [[layer]]
        type = "globalmaxpool"
        """))
    pipe = load_pipeline(path).bind(["gray"])
    model = pipeline_to_onnx(pipe, opset=opset)
    assert model.opset_import[0].version == opset
    assert model.ir_version == onnx.helper.find_min_ir_version_for(model.opset_import)
    onnx.checker.check_model(model, full_check=True)
    assert_pipeline_matches(pipe, model, random_images(1))


# ----------------------------------------------------------------------------- every layer type


#: Fields some types cannot do without (as in test_pipeline's registry walk).
REQUIRED_FIELDS = {"banks": lambda: [load_bank("edges")], "out_channels": lambda: 4, "out_features": lambda: 3}


def _randomize(network, seed=0):
    """Random biases and batch-norm statistics, so that nothing is trivially zero or one."""
    rng = np.random.default_rng(seed)
    for name, arr in network.state_dict().items():
        if name.endswith("bias") or name.endswith("running_mean"):
            arr[...] = rng.standard_normal(arr.shape) * 0.1
        elif name.endswith("running_var") or (name.endswith("weight") and arr.ndim == 1):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)


def test_every_layer_class_in_the_registry_has_an_onnx_form():
    assert all(t.cls.to_onnx is not Layer.to_onnx for t in registry.LAYER_TYPES)


@pytest.mark.parametrize("entry", registry.LAYER_TYPES, ids=lambda t: f"{t.name}-{t.cls.__name__}")
def test_every_registered_layer_type_matches_our_forward(entry):
    layer = entry.make({f: make() for f, make in REQUIRED_FIELDS.items() if f in entry.fields})
    reads = [(-1,)] if layer.arity == 1 else [(-1, -1)]  # a merge reads the image twice
    if registry.PIPELINE in entry.where:  # alone in a pipeline over R, G, B, at two sizes
        pipe = Pipeline([layer], entry.name, inputs=reads).bind(["R", "G", "B"])
        model = pipeline_to_onnx(pipe, color="rgb")
        onnx.checker.check_model(model, full_check=True)
        assert_pipeline_matches(pipe, model, random_images(3, normal=True, sizes=((2, 12, 10), (1, 15, 9))))
        return
    if entry.name == "linear":
        layers = [Flatten(), layer]
    elif entry.name in ("flatten", "netvlad"):
        layers = [layer, Linear(3)]
    else:
        layers = [layer, Flatten(), Linear(3)]
    network = Network(layers, (3, 12, 12), seed=0, inputs=reads + [(i,) for i in range(len(layers) - 1)])
    _randomize(network)
    meta = make_meta(entry.name, [{"type": entry.name}], "rgb", 12)
    model = model_to_onnx(network, meta)
    onnx.checker.check_model(model, full_check=True)
    assert_model_matches(network, meta, model)


def test_activations_all_have_an_onnx_form():
    from cnn_cli.layers import ACTIVATIONS

    assert all(form.onnx for form in ACTIVATIONS.values()), ACTIVATIONS


def test_a_layer_without_an_onnx_form_is_refused_by_name():
    class Mystery(Layer):
        kind = "mystery"

        def forward(self, x, train=False):
            return x

    class Swish(Activation):  # a subclass may compute something else: not exported as its base
        def forward(self, x, train=False):
            return x / (1 + np.exp(-x))

    for odd in (Mystery(), Swish("relu")):
        pipe = Pipeline([Activation("abs"), odd], "odd").bind(["gray"])
        with pytest.raises(ExportError, match=rf"layer 1 \({odd.kind}, {type(odd).__name__}\) cannot be exported"):
            pipeline_to_onnx(pipe)


# ----------------------------------------------------------------------------- models


def _preset(arch):
    color, size = PRESETS[arch]
    name, _, tables = load_architecture(arch)
    return make_meta(name, tables, color, size)


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_every_preset_model_file_exports_and_matches(tmp_path, arch):
    meta = _preset(arch)
    save_model(tmp_path / "m.npz", trained(meta), meta)
    result = cnn("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.output
    assert "written to" in result.stderr and not result.stdout.strip()
    model = onnx.load(tmp_path / "m.onnx")
    onnx.checker.check_model(model, full_check=True)
    pre = meta.preprocessing
    assert dims(model.graph.input[0]) == ["N", pre.channels, pre.image_size, pre.image_size]
    assert {o.name: dims(o) for o in model.graph.output} == {"logits": ["N", 3], "probabilities": ["N", 3]}
    props = metadata(model)
    assert json.loads(props["classes"]) == ["a", "b", "c"] and props["architecture"] == arch
    recorded = json.loads(props["preprocessing"])
    assert recorded["image_size"] == pre.image_size and recorded["mean"] == pre.mean and recorded["std"] == pre.std
    network, loaded, _ = load_model(tmp_path / "m.npz")
    assert_model_matches(network, loaded, tmp_path / "m.onnx")


def test_batch_norm_is_in_inference_form_and_weights_keep_their_state_dict_names():
    meta = _preset("resnet")
    network = trained(meta)
    model = model_to_onnx(network, meta)
    ops = {node.op_type for node in model.graph.node}
    assert "BatchNormalization" in ops
    assert all(len(node.output) == 1 for node in model.graph.node if node.op_type == "BatchNormalization")
    names = {init.name for init in model.graph.initializer}
    assert set(network.state_dict()) - names == {k for k in network.state_dict() if k.endswith("num_batches_tracked")}


def test_netvlad_is_made_of_standard_operators():
    model = model_to_onnx(trained(_preset("netvlad")), _preset("netvlad"))
    ops = [node.op_type for node in model.graph.node]
    for op in ("Conv", "Softmax", "MatMul", "ReduceSum", "ReduceL2"):
        assert op in ops
    assert {init.name for init in model.graph.initializer} >= {"5.conv.weight", "5.conv.bias", "5.centroids"}


def test_an_architecture_file_with_every_network_option(tmp_path):
    """Learned convs with every padding mode, groups, dilation and stride; both residual forms; pools with padding."""
    path = tmp_path / "wide.toml"
    path.write_text(textwrap.dedent("""\
        kind = "architecture"
        [[layer]]
        type = "conv"
        out_channels = 6
        kernel_size = 3
        padding = "same"
        padding_mode = "reflect"
        [[layer]]
        type = "leaky_relu"
        slope = 0.2
        [[layer]]
        type = "conv"
        out_channels = 6
        kernel_size = [3, 5]
        padding = [1, 2]
        groups = 3
        padding_mode = "circular"
        bias = false
        [[layer]]
        type = "batchnorm"
        [[layer]]
        type = "tanh"
        [[layer]]
        type = "conv"
        out_channels = 8
        kernel_size = 3
        padding = 2
        dilation = 2
        padding_mode = "replicate"
        [[layer]]
        type = "maxpool"
        kernel_size = 3
        stride = 1
        padding = 1
        [[layer]]
        type = "residual"
        out_channels = 8
        [[layer]]
        type = "residual"
        out_channels = 12
        stride = 2
        [[layer]]
        type = "avgpool"
        kernel_size = 3
        stride = 2
        padding = 1
        [[layer]]
        type = "sigmoid"
        [[layer]]
        type = "conv"
        out_channels = 4
        kernel_size = 1
        stride = 2
        [[layer]]
        type = "square"
        [[layer]]
        type = "abs"
        [[layer]]
        type = "globalmaxpool"
        [[layer]]
        type = "flatten"
        [[layer]]
        type = "dropout"
        p = 0.3
        [[layer]]
        type = "linear"
        out_features = "classes"
        """))
    name, _, tables = load_architecture(path)
    meta = make_meta(name, tables, "rgb", 17)
    network = trained(meta)
    _randomize(network, seed=3)
    assert_model_matches(network, meta, model_to_onnx(network, meta))


def test_a_model_trained_by_cnn_train_predicts_the_same_in_onnx_runtime(tmp_path):
    """cnn train, cnn export, then ONNX Runtime on an image resized to the model's size gives cnn predict's answer."""
    data = tmp_path / "data"
    paths = write_patterns(data, per_class=4, size=18, seed=1)
    assert cnn("train", data, "-o", tmp_path / "m.npz", "--epochs", 1, "--batch-size", 4,
               "--image-size", 16).exit_code == 0
    assert cnn("export", tmp_path / "m.npz", "-o", tmp_path / "m.onnx").exit_code == 0
    image = paths[PATTERNS[0]][0]
    predicted = json.loads(cnn("predict", image, "--model", tmp_path / "m.npz", "--top-k", 3, "--json").stdout)
    expected = {p["class"]: p["probability"] for p in predicted[0]["predictions"]}
    model = onnx.load(tmp_path / "m.onnx")
    classes = json.loads(metadata(model)["classes"])
    size = json.loads(metadata(model)["preprocessing"])["image_size"]
    probs = run(model, resize(read_image(image), size, size)[None])["probabilities"][0]
    assert_close([expected[c] for c in classes], probs, "probabilities")


def test_a_model_without_one_logit_per_class_is_refused():
    tables = [{"type": "conv", "out_channels": 3, "kernel_size": 3}, {"type": "globalavgpool"}]
    meta = make_meta("maps", tables, "gray", 8)
    with pytest.raises(ExportError, match="one logit per class"):
        model_to_onnx(build_network(meta), meta)


def test_reference_evaluator_agrees_on_a_small_model_and_pipeline(tmp_path):
    """onnx's own reference implementation, independent of ONNX Runtime."""
    from onnx.reference import ReferenceEvaluator

    network, meta, _ = load_model(save_tiny_model(tmp_path / "tiny.npz"))
    image = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    logits, probs = ReferenceEvaluator(model_to_onnx(network, meta)).run(None, {"image": image})
    x = (image - np.float32(0.5)) / np.float32(0.25)  # tinymodel's mean and std
    assert_close(network.forward(x), logits, "logits")
    assert_close(predict_batches(network, x), probs, "probabilities")
    pipe = load_source(pipeline="harris").pipeline
    small = np.random.default_rng(1).random((1, 1, 12, 14)).astype(np.float32)
    outputs = ReferenceEvaluator(pipeline_to_onnx(pipe)).run(None, {"image": small})
    for i, (ours, theirs) in enumerate(zip(pipe.forward(small), outputs)):
        assert_close(ours, theirs, f"layer{i}")


# ----------------------------------------------------------------------------- the command


def test_export_refuses_an_existing_file_without_force(tmp_path):
    out = tmp_path / "h.onnx"
    out.write_bytes(b"keep me")
    result = cnn("export", "harris", "-o", out)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip() == f"Error: {out} exists; use --force to replace it"
    assert out.read_bytes() == b"keep me"
    result = cnn("export", "harris", "-o", out, "--force")
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(out), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.onnx"], "no temporary file is left behind"


def test_export_json_describes_the_file(tmp_path):
    result = cnn("export", "laws_energy", "-o", tmp_path / "l.onnx", "--json", "--opset", 19, "--color", "rgb")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "pipeline" and summary["opset"] == 19 and summary["ir_version"] == 9
    assert summary["inputs"] == [{"name": "image", "shape": ["N", 3, "H", "W"]}]
    assert [o["name"] for o in summary["outputs"]] == ["layer0", "layer1", "layer2"]
    assert summary["bytes"] == (tmp_path / "l.onnx").stat().st_size
    assert summary["metadata"]["color"] == "rgb"


@pytest.mark.parametrize("opset", [16, MAX_OPSET + 1])
def test_opset_out_of_range_is_a_usage_error(tmp_path, opset):
    result = cnn("export", "harris", "-o", tmp_path / "h.onnx", "--opset", opset)
    assert result.exit_code == 2, result.output
    assert "--opset must be a whole number from 17 to" in result.stderr
    assert not (tmp_path / "h.onnx").exists()


@pytest.mark.parametrize("args, message", [
    (["resnet"], "is an architecture, which has no weights yet"),
    (["no_such_thing"], "no model file, pipeline or bank named 'no_such_thing'"),
    (["missing.npz"], "missing.npz: no such file"),
])
def test_export_refuses_what_it_cannot_export_in_one_line(tmp_path, args, message):
    result = cnn("export", *args, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


def test_an_unwritable_output_is_one_error_line(tmp_path):
    result = cnn("export", "harris", "-o", tmp_path / "no_such_folder" / "h.onnx")
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: cannot write ") and len(result.stderr.strip().splitlines()) == 1


def test_a_model_takes_no_other_colour(tmp_path):
    path = save_tiny_model(tmp_path / "tiny.npz")
    result = cnn("export", path, "-o", tmp_path / "t.onnx", "--color", "rgb")
    assert result.exit_code == 1 and "is a gray model" in result.stderr, result.output


def test_without_onnx_export_says_what_to_install_and_exits_2(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "onnx" or m.startswith("onnx.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    result = cnn("export", "harris", "-o", tmp_path / "h.onnx")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        "Error: cnn export needs the onnx package: pip install 'cnn-cli[onnx]'"]
    assert not (tmp_path / "h.onnx").exists()


def test_help_gives_examples_and_the_opset_range():
    result = cnn("export", "--help")
    assert result.exit_code == 0
    assert "Examples:" in result.output and "cnn export harris -o harris.onnx" in result.output
    assert f"17 up to {MAX_OPSET}" in result.output
