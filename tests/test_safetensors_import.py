"""cnn import FILE.safetensors --arch NAME: torchvision-named weights into the shipped architectures.

Each hand-written torch model of ``torch_zoo`` (torchvision's module tree) is
given random weights, saved with the ``safetensors`` package, imported, and
run on our engine against torch: max|ours - torch| <= 1e-4 max|torch| + 1e-5.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")

import arch_files
from clirunner import cnn

from cnn_cli.modelfile import load_model
from cnn_cli.nn import Network
from cnn_cli.onnximport import ImportOptions, ImportRefused
from cnn_cli.pipeline import build_layers, load_architecture
from cnn_cli.safetensorsimport import ARCHITECTURES, import_safetensors
from cnn_cli.summary import summarize
from tests import torch_zoo as zoo

#: --arch name -> (input size, images) for the forward check: small where the architecture
#: takes any size (global pooling), 224 for AlexNet, whose classifier fixes the size.
FORWARD = {"resnet18": (64, 2), "resnet34": (64, 2), "resnet50": (64, 2), "squeezenet1_1": (64, 2),
           "mobilenet_v2": (64, 2), "alexnet": (224, 2), "vgg11": (224, 1)}



def close(ours, ref):
    return np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max() + 1e-5


def saved(tmp_path, arch, seed=0, edit=None):
    """(torch model with random weights, path of its state_dict as safetensors); ``edit`` changes the dict."""
    model = zoo.randomize(getattr(zoo, arch)(), seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if edit:
        edit(state)
    path = tmp_path / f"{arch}.safetensors"
    st_torch.save_file(state, str(path))
    return model, path


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_shipped_files_are_what_the_recipes_write(arch):
    assert arch_files.path_of(arch).read_text(encoding="utf-8") == arch_files.toml_text(arch), \
        "run python tests/arch_files.py and commit the files"


@pytest.mark.parametrize("arch", list(FORWARD))
def test_imported_weights_give_torchs_outputs(tmp_path, arch):
    size, images = FORWARD[arch]
    model, path = saved(tmp_path, arch)
    imported = import_safetensors(path, arch, ImportOptions(size=(size, size)))
    assert imported.meta.source["format"] == "safetensors" and len(imported.meta.classes) == 1000
    assert imported.network.input_shape == (3, size, size)
    x = np.random.default_rng(1).standard_normal((images, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    ours = imported.network.forward(x)
    assert ours.shape == ref.shape and close(ours, ref), \
        f"{arch}: max|diff| {np.abs(ours - ref).max()}, max|torch| {np.abs(ref).max()}"


def test_vgg16_has_torchvisions_names_and_shapes():
    # A forward pass of VGG-16 at 224 takes too long here; VGG-11 runs through the same recipe.
    with torch.device("meta"):
        theirs = {k: tuple(v.shape) for k, v in zoo.vgg16().state_dict().items()}
    _, _, tables = load_architecture("vgg16")
    network = Network(build_layers(tables, "vgg16", substitutions={"classes": 1000}), (3, 224, 224))
    assert {k: tuple(v.shape) for k, v in network.state_dict().items()} == theirs


def test_the_class_count_comes_from_the_classifier_and_timm_files_need_no_batch_counts(tmp_path):
    # timm's ResNet files have torchvision's names; some leave out BatchNorm's num_batches_tracked.
    model = zoo.randomize(zoo.resnet18(num_classes=7), 3)
    path = tmp_path / "timm_resnet18.safetensors"
    st_torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()
                        if not k.endswith("num_batches_tracked")}, str(path))
    imported = import_safetensors(path, "resnet18", ImportOptions(size=(48, 48)))
    assert imported.meta.classes == [f"class{i}" for i in range(7)]
    x = np.random.default_rng(2).standard_normal((2, 3, 48, 48)).astype(np.float32)
    with torch.no_grad():
        assert close(imported.network.forward(x), model(torch.from_numpy(x)).numpy())


def test_cli_import_then_load_the_model_file(tmp_path):
    model, path = saved(tmp_path, "squeezenet1_1")
    out = tmp_path / "sq.npz"
    result = cnn("import", path, "--arch", "squeezenet1_1", "--size", "64", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["format"] == "safetensors" and summary["tensors"] == len(model.state_dict())
    assert summary["classes"] == 1000 and summary["input"] == [3, 64, 64] and summary["opset"] is None
    assert "assumed: ImageNet normalisation" in result.stderr
    network, meta, _ = load_model(out)
    assert meta.source["architecture"] == "squeezenet1_1" and len(meta.source["sha256"]) == 64
    x = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        assert close(network.forward(x), model(torch.from_numpy(x)).numpy())
    info = cnn("info", out)
    assert info.exit_code == 0 and "features.3.expand3x3" in info.stdout, info.output


def test_info_shows_an_architecture_without_weights():
    result = cnn("info", "resnet18", "--size", "224", "--color", "rgb")
    assert result.exit_code == 0, result.output
    assert "layer4.1.conv2" in result.stdout and "(512, 7, 7)" in result.stdout
    rows = summarize("mobilenet_v2", color="rgb", size=224).rows
    assert rows[-1].shape == (10,) and any("features.17.conv.3" in r.layer for r in rows)


# ------------------------------------------------------------------------------------ refusals


def test_weights_of_another_architecture_are_named_and_the_right_one_suggested(tmp_path):
    _, path = saved(tmp_path, "resnet18")
    with pytest.raises(ImportRefused, match=r"not resnet50's: 66 of its layers have no weights in the file "
                                            r"\(layer1\.0\.bn3, .*the names fit --arch resnet18"):
        import_safetensors(path, "resnet50")
    with pytest.raises(ImportRefused, match=r"not mobilenet_v2's: .*122 tensors belong to none of its layers "
                                            r"\(bn1\.bias, .*the names fit --arch resnet18"):
        import_safetensors(path, "mobilenet_v2")


def test_a_missing_tensor_is_named(tmp_path):
    _, path = saved(tmp_path, "squeezenet1_1", edit=lambda s: s.pop("features.3.expand3x3.bias"))
    with pytest.raises(ImportRefused, match=r"do not fit squeezenet1_1: missing features\.3\.expand3x3\.bias$"):
        import_safetensors(path, "squeezenet1_1", ImportOptions(size=(64, 64)))


def test_a_wrong_shape_is_named(tmp_path):
    def narrower(state):
        state["layer1.0.conv2.weight"] = state["layer1.0.conv2.weight"][:, :32].contiguous()

    _, path = saved(tmp_path, "resnet18", edit=narrower)
    with pytest.raises(ImportRefused, match=r"'layer1\.0\.conv2\.weight' is \(64, 32, 3, 3\) where resnet18 "
                                            r"needs \(64, 64, 3, 3\)"):
        import_safetensors(path, "resnet18", ImportOptions(size=(64, 64)))


def test_alexnet_at_another_size_is_refused_with_the_sizes_that_fit(tmp_path):
    _, path = saved(tmp_path, "alexnet")
    with pytest.raises(ImportRefused, match=r"'classifier\.1' takes 9,216 features .* a 160x160 input gives "
                                            r"256x4x4 maps = 4,096; .*AdaptiveAvgPool2d.*--size 224 "
                                            r"\(any size from 223 to 254 fits\)"):
        import_safetensors(path, "alexnet", ImportOptions(size=(160, 160)))


def test_cli_refusals_are_one_line(tmp_path):
    _, path = saved(tmp_path, "squeezenet1_1")
    out = tmp_path / "m.npz"
    # Options that do not fit the file are usage errors (exit 2), as an unknown --arch is.
    cases = [(["import", path, "-o", out], 2, "say whose they are with --arch (resnet18, "),
             (["import", path, "--arch", "resnet152", "-o", out], 2, "--arch takes one of resnet18, "),
             (["import", path, "--arch", "squeezenet1_1", "--size", "64,48", "-o", out], 1, "square --size"),
             (["import", path, "--arch", "squeezenet1_1", "--color", "gray", "-o", out], 1,
              "3 channels, which --color gray does not give")]
    onnx_path = tmp_path / "net.onnx"
    onnx_path.write_bytes(b"not read: the options are refused first")
    cases.append((["import", onnx_path, "--arch", "resnet18", "-o", out], 2, "--arch is for safetensors files only"))
    for args, code, text in cases:
        result = cnn(*args)
        assert result.exit_code == code and text in result.stderr, result.output
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.output
        assert not out.exists()
