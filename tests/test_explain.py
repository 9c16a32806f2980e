"""``cnn explain``: the maps against pytorch-grad-cam, occlusion against a brute-force loop,
a pointing game on made data, the randomisation check, and the command's files and errors.

The comparison with pytorch-grad-cam runs where torch and grad-cam are
installed (neither is a dependency)::

    pip install torch==2.13.0
    pip install --no-deps grad-cam==1.5.7 ttach==0.0.3 tqdm opencv-python-headless

grad-cam imports torchvision, but only uses it for image helpers that these
tests never call; PyPI's torchvision does not import beside the CPU build of
torch 2.13, so where torchvision is missing or does not import (checked in a
subprocess), a stand-in module takes its place while grad-cam is imported.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from cnn_cli import explain as E
from cnn_cli.imageio import resize
from cnn_cli.meta import ModelMeta
from cnn_cli.modelfile import build_network, save_model
from cnn_cli.nn import softmax_cross_entropy
from cnn_cli.optim import Adam

from clirunner import cnn
from tinymodel import META as TINY_META, save_tiny_model


#: The shipped architectures at the size and class count of tests/test_torch_interchange.py.
SIZE, CLASSES = 16, 3
CHANNELS = {"lenet": 1, "alexnet": 3, "resnet": 3, "netvlad": 1}


def random_network(arch, seed=0):
    """Our network for ``arch`` with random biases and batch-norm statistics, so nothing is
    trivially zero (as ``ours`` in tests/test_torch_interchange.py, which needs torch)."""
    from cnn_cli.nn import Network
    from cnn_cli.pipeline import build_layers, load_architecture

    _, _, tables = load_architecture(arch)
    net = Network(build_layers(tables, arch, substitutions={"classes": CLASSES}), (CHANNELS[arch], SIZE, SIZE),
                  seed=seed)
    rng = np.random.default_rng(seed + 100)
    for name, arr in net.state_dict().items():
        if name.endswith("bias") or name.endswith("running_mean"):
            arr[...] = rng.standard_normal(arr.shape) * 0.1
        elif name.endswith("running_var") or (name.endswith("weight") and arr.ndim == 1):
            arr[...] = rng.uniform(0.5, 1.5, arr.shape)
    return net


def random_input(arch, seed=3):
    return np.random.default_rng(seed).standard_normal((1, CHANNELS[arch], SIZE, SIZE)).astype(np.float32)


# --------------------------------------------------------------------------- pytorch-grad-cam


def _torchvision_imports():
    """Whether ``import torchvision`` works, asked in a subprocess: a torchvision built for
    another torch fails half-way and leaves torch's operator registry changed."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, timeout=120)
    return probe.returncode == 0


def _stand_in_torchvision():
    """Modules for the names grad-cam imports from torchvision; returns their names."""
    parts = {name: types.ModuleType(name) for name in
             ("torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops")}

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is not installed; these tests do not use it")

    for name in ("Compose", "Normalize", "ToTensor"):
        setattr(parts["torchvision.transforms"], name, unavailable)
    parts["torchvision.transforms.functional"].resize = unavailable
    parts["torchvision.transforms"].functional = parts["torchvision.transforms.functional"]
    parts["torchvision"].transforms = parts["torchvision.transforms"]
    parts["torchvision"].ops = parts["torchvision.ops"]
    sys.modules.update(parts)
    return list(parts)


@pytest.fixture(scope="module")
def gradcam():
    torch = pytest.importorskip("torch")
    if importlib.util.find_spec("pytorch_grad_cam") is None:
        pytest.skip("grad-cam is not installed: pip install --no-deps grad-cam==1.5.7 ttach==0.0.3 tqdm "
                    "opencv-python-headless")
    stand_in = [] if _torchvision_imports() else _stand_in_torchvision()
    try:
        import pytorch_grad_cam as gc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    finally:
        for name in stand_in:
            sys.modules.pop(name, None)
    torch.set_num_threads(1)
    classes = {"gradcam": gc.GradCAM, "gradcam++": gc.GradCAMPlusPlus, "hirescam": gc.HiResCAM,
               "scorecam": gc.ScoreCAM}
    return types.SimpleNamespace(torch=torch, classes=classes, target=ClassifierOutputTarget)


#: (architecture of tests/test_torch_interchange.py, layer index); the index is the
#: same in our network and in the torch.nn.Sequential built from its weights.
LAYERS = [("lenet", 3), ("lenet", 4), ("alexnet", 11), ("resnet", 1), ("resnet", 2), ("resnet", 4), ("resnet", 5),
          ("netvlad", 1), ("netvlad", 4)]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "scorecam"])
@pytest.mark.parametrize("arch,layer", LAYERS, ids=[f"{a}-layer{i}" for a, i in LAYERS])
def test_maps_match_pytorch_grad_cam(gradcam, arch, layer, method):
    """Both maps min-max scaled at the input's size: within 1e-4, for the top and the last class."""
    if (arch, layer, method) == ("netvlad", 4, "hirescam"):
        pytest.skip("its terms cancel exactly (test_hirescam_at_netvlads_input_is_zero_not_noise)")
    from test_torch_interchange import to_torch

    net = random_network(arch)
    if method == "gradcam++" and net.layers[layer].kind in ("conv", "batchnorm"):
        pytest.skip("Grad-CAM++ divides by 2g^2 + g^3 sum(A), which crosses zero where the maps are not "
                    "rectified, so float32 rounding decides the map there (the paper takes rectified maps)")
    module = to_torch(net, arch).eval()
    x = random_input(arch)
    explainer = E.Explainer(net, method, layer=layer)
    probs = explainer.probabilities(x)
    targets = [int(np.argmax(probs)), int(np.argmin(probs))]
    mine = explainer.maps(x, targets)
    for target, raw in zip(targets, mine):
        with gradcam.classes[method](model=module, target_layers=[module[layer]]) as cam:
            theirs = cam(gradcam.torch.from_numpy(x), targets=[gradcam.target(target)])[0]
        ours_map, _ = E.scale_map(E.resize_map(raw, *x.shape[2:]))
        theirs_map, _ = E.scale_map(theirs)
        err = np.abs(ours_map - theirs_map).max()
        assert err <= 1e-4, f"{arch} layer {layer} {method} class {target}: max difference {err:.3g}"


def test_hirescam_at_netvlads_input_is_zero_not_noise():
    """NetVLAD L2-normalises each pixel's descriptor, so the model is unchanged when the maps
    before it are scaled, and sum_k A_k dy/dA_k = 0 at every pixel: HiResCAM's map there is
    rounding noise (which pytorch-grad-cam scales up to [0, 1]); ours is zero, with a note."""
    net = random_network("netvlad")
    x = random_input("netvlad")
    raw = E.Explainer(net, "hirescam", layer=4).maps(x, [0, 1, 2])
    assert np.all(raw == 0)
    cam, note = E.scale_map(E.resize_map(raw[0], SIZE, SIZE))
    assert np.all(cam == 0) and "all-zero" in note
    assert np.any(E.Explainer(net, "hirescam", layer=1).maps(x, [0]) > 0)


def test_resize_matches_torch_interpolate(torch_ref):
    torch = torch_ref.torch
    m = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    for size, align in [((16, 9), False), ((3, 20), False), ((16, 9), True), ((2, 2), False)]:
        theirs = torch.nn.functional.interpolate(torch.from_numpy(m)[None], size=size, mode="bilinear",
                                                 align_corners=align)[0].numpy()
        np.testing.assert_allclose(E.resize_map(m, *size, align_corners=align), theirs, atol=1e-6)


@pytest.mark.parametrize("arch,layer", [("lenet", 4), ("alexnet", 11), ("resnet", 5), ("netvlad", 4)])
def test_default_layer_per_architecture(arch, layer):
    """The last conv after its activation; ResNet's last block; the conv before NetVLAD."""
    net = random_network(arch)
    assert E.default_layer(net) == layer
    assert E.resolve_layer(net, None) == layer
    assert E.resolve_layer(net, f"layer{layer}") == E.resolve_layer(net, str(layer - len(net.layers))) == layer


def test_segment_gradients_are_eval_mode_gradients():
    """Gradients at a layer against central differences of the eval-mode logits (batch norm frozen)."""
    net = random_network("resnet")
    x = random_input("resnet", seed=5)
    layer = 4
    a = net.segment(0, layer + 1).forward(x).astype(np.float64)
    tail = net.segment(layer + 1)
    tail.forward(a.astype(np.float32), keep=True)
    seed = np.zeros((1, CLASSES), np.float32)
    seed[0, 1] = 1
    g = tail.backward(seed)
    rng = np.random.default_rng(0)
    for _ in range(6):
        idx = tuple(rng.integers(0, s) for s in a.shape)
        step = 1e-2
        up, down = a.copy(), a.copy()
        up[idx] += step
        down[idx] -= step
        numeric = (tail.forward(up.astype(np.float32))[0, 1] - tail.forward(down.astype(np.float32))[0, 1]) / (2 * step)
        assert g[idx] == pytest.approx(numeric, abs=2e-3 * max(1, abs(numeric)))


# --------------------------------------------------------------------------- occlusion


def _occlusion_brute_force(network, x, target, patch, stride):
    """Every pixel: the mean over the patch positions covering it of p(x) - p(x occluded), then ReLU."""
    _, _, h, w = x.shape

    def prob(image):
        logits = network.forward(image).astype(np.float64)[0]
        e = np.exp(logits - logits.max())
        return e[target] / e.sum()

    ys = list(range(0, h - patch + 1, stride))
    xs = list(range(0, w - patch + 1, stride))
    ys += [h - patch] if ys[-1] != h - patch else []
    xs += [w - patch] if xs[-1] != w - patch else []
    base = prob(x)
    drops = {}
    for y in ys:
        for x0 in xs:
            occluded = x.copy()
            occluded[:, :, y:y + patch, x0:x0 + patch] = 0
            drops[y, x0] = base - prob(occluded)
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            covering = [d for (y, x0), d in drops.items() if y <= i < y + patch and x0 <= j < x0 + patch]
            out[i, j] = max(0.0, sum(covering) / len(covering))
    return out


@pytest.mark.parametrize("patch,stride", [(4, 2), (5, 3), (16, 1), (1, 1), (3, 3)])
def test_occlusion_matches_brute_force(patch, stride):
    net = random_network("lenet")
    x = random_input("lenet", seed=2)
    explainer = E.Explainer(net, "occlusion", patch=patch, stride=stride)
    probs = explainer.probabilities(x)
    targets = [int(np.argmax(probs)), int(np.argmin(probs))]
    mine = explainer.maps(x, targets)
    for target, m in zip(targets, mine):
        np.testing.assert_allclose(m, _occlusion_brute_force(net, x, target, patch, stride), atol=1e-6)


def test_occlusion_covers_every_pixel():
    assert E.default_patch(32) == 4 and E.default_patch(5) == 1
    assert E.occlusion_positions(16, 5, 3) == [0, 3, 6, 9, 11]
    assert E.occlusion_positions(16, 16, 1) == [0]
    explainer = E.Explainer(random_network("lenet"), "occlusion")
    assert (explainer.patch, explainer.stride) == (2, 1)
    with pytest.raises(E.OptionError, match="--stride 4 is larger than --patch 2"):
        E.Explainer(random_network("lenet"), "occlusion", patch=2, stride=4)


# --------------------------------------------------------------------------- a pointing game

#: Scenes are drawn at SCENE pixels and the model sees them at INPUT pixels, so every map
#: is computed at the model's size and must land on the object at the scene's own size.
SCENE, INPUT, OBJECT = 64, 32, 10
SHAPE_NAMES = ("plus", "ring", "cross")
#: A map's maximum within this many scene pixels of the object's box counts as a hit
#: (the pointing game of Zhang et al., 2016, allows 15 pixels at 224).
TOLERANCE = 4
POINTING_ARCH = [
    {"type": "conv", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool", "kernel_size": 2},
    {"type": "conv", "out_channels": 16, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "conv", "out_channels": 16, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "globalavgpool"}, {"type": "flatten"}, {"type": "linear", "out_features": "classes"}]


def _shape(kind):
    m = np.zeros((OBJECT, OBJECT), np.float32)
    c, i = OBJECT // 2, np.arange(OBJECT)
    if kind == "plus":
        m[c - 1:c + 1, :] = 1
        m[:, c - 1:c + 1] = 1
    elif kind == "ring":
        m[:, :] = 1
        m[2:-2, 2:-2] = 0
    else:
        m[i, i] = m[i, OBJECT - 1 - i] = 1
        m[i[:-1], i[1:]] = m[i[:-1], OBJECT - 2 - i[:-1]] = 1
    return m


def scene(rng, label):
    """A cluttered (SCENE, SCENE) image with the class's object at a random place; returns (image, box)."""
    img = rng.uniform(0.2, 0.5) + 0.08 * rng.standard_normal((SCENE, SCENE))
    for _ in range(rng.integers(6, 12)):  # clutter: bars and blobs of any brightness
        y, x = rng.integers(0, SCENE, 2)
        if rng.random() < 0.5:
            thin, long = rng.integers(1, 3), rng.integers(4, 14)
            h, w = (thin, long) if rng.random() < 0.5 else (long, thin)
        else:
            h = w = rng.integers(2, 5)
        img[y:y + h, x:x + w] = rng.uniform(0.0, 1.0)
    y, x = rng.integers(2, SCENE - OBJECT - 2, 2)
    region = img[y:y + OBJECT, x:x + OBJECT]
    img[y:y + OBJECT, x:x + OBJECT] = np.where(_shape(SHAPE_NAMES[label]) > 0, rng.uniform(0.8, 1.0), region)
    return np.clip(img, 0, 1).astype(np.float32), (y, x, y + OBJECT, x + OBJECT)


@pytest.fixture(scope="module")
def pointing(tmp_path_factory):
    """A small model trained (in seconds) on 600 scenes, and 45 test scenes written as PNGs."""
    root = tmp_path_factory.mktemp("pointing")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, len(SHAPE_NAMES), 600)
    mean, std = 0.4, 0.25
    x = np.stack([(resize(scene(rng, label)[0][None], INPUT, INPUT) - mean) / std for label in labels])
    meta = ModelMeta.from_parts({
        "architecture": {"name": "pointing", "description": "", "layers": POINTING_ARCH},
        "classes": list(SHAPE_NAMES),
        "preprocessing": {"image_size": INPUT, "color": "gray", "channels": 1, "mean": [mean], "std": [std]}})
    net = build_network(meta, seed=0)
    # He-normal weights and zero biases, whatever cnn train's default init is:
    # the game tests the explanations, and these scenes were tuned with this start.
    init = np.random.default_rng(0)
    for layer in net.layers:
        params = getattr(layer, "params", {})
        if "weight" in params and params["weight"].ndim in (2, 4):
            w = params["weight"]
            params["weight"][...] = init.standard_normal(w.shape) * np.sqrt(2.0 / (w[0].size))
            if "bias" in params:
                params["bias"][...] = 0
    optimizer = Adam(0.01)
    for epoch in range(10):
        order = np.random.default_rng([0, epoch]).permutation(len(x))
        for start in range(0, len(x), 32):
            idx = order[start:start + 32]
            net.zero_grad()
            _, grad, _ = softmax_cross_entropy(net.forward(x[idx], train=True), labels[idx])
            net.backward(grad)
            optimizer.step(net.parameters())
    save_model(root / "model.npz", net, meta)
    test_rng = np.random.default_rng(1)
    tests = []
    for i in range(45):
        label = int(test_rng.integers(0, len(SHAPE_NAMES)))
        img, box = scene(test_rng, label)
        path = root / "scenes" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray((img * 255 + 0.5).astype(np.uint8)).save(path)
        tests.append((path, label, box))
    return types.SimpleNamespace(root=root, model=root / "model.npz", network=net, meta=meta, tests=tests)


def test_pointing_game(pointing, capsys):
    """On correctly classified scenes, each method's maximum falls on the object in most of them."""
    from cnn_cli.modelfile import load_model

    network, meta, _ = load_model(pointing.model)
    fractions = {}
    for method in E.METHODS:
        out = pointing.root / f"out-{method}"
        summary = E.run([str(pointing.root / "scenes")], out, network, meta, E.ExplainOptions(method=method))
        assert not summary.failed
        hits = correct = 0
        for path, label, (top, left, bottom, right) in pointing.tests:
            record = json.loads((out / path.stem / "explain.json").read_text())
            target = record["targets"][0]
            if target["class"] != SHAPE_NAMES[label]:
                continue
            cam = np.load(out / path.stem / target["cam"], allow_pickle=False)
            assert cam.shape == (SCENE, SCENE) and cam.dtype == np.float32
            y, x = np.unravel_index(np.argmax(cam), cam.shape)
            correct += 1
            hits += top - TOLERANCE <= y < bottom + TOLERANCE and left - TOLERANCE <= x < right + TOLERANCE
        fractions[method] = (hits / correct, correct)
    with capsys.disabled():
        print("\npointing game (hits on correctly classified scenes): " + ", ".join(
            f"{m} {f:.2f} of {n}" for m, (f, n) in fractions.items()))
    assert min(n for _, n in fractions.values()) >= 0.8 * len(pointing.tests), fractions
    for method, (fraction, _) in fractions.items():
        assert fraction >= 0.75, f"{method}: the map's maximum is on the object in only {fraction:.0%}"


def test_gradcam_decorrelates_under_cascading_randomisation(pointing, capsys):
    """Adebayo et al.'s check: once every layer is re-initialised, Grad-CAM's maps no longer
    rank pixels as the trained model's did."""
    from cnn_cli.modelfile import image_transform

    transform = image_transform(pointing.meta)
    rows = []
    for path, label, _ in pointing.tests[:8]:
        with Image.open(path) as im:
            image = np.asarray(im, np.float32)[None] / 255
        steps = E.randomization_check(pointing.network, transform(image)[None], label, "gradcam")
        assert [s["layer"] for s in steps] == [9, 5, 3, 0]
        rows.append([s["spearman"] for s in steps])
    with capsys.disabled():
        print("\nGrad-CAM Spearman rho per randomisation step (linear, conv5, conv3, conv0):")
        for row in rows:
            print("  " + "  ".join("  -  " if r is None else f"{r:+.2f}" for r in row))
    last = [abs(row[-1]) for row in rows if row[-1] is not None]
    assert len(last) >= 6 and np.mean(last) < 0.3, rows


# --------------------------------------------------------------------------- the command


@pytest.fixture()
def tiny(tmp_path):
    return save_tiny_model(tmp_path / "tiny.npz")


def _png(path, h, w, seed=0, rgb=True):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((h, w, 3) if rgb else (h, w)) * 255).astype(np.uint8)).save(path)
    return path


def test_explain_writes_maps_at_the_images_own_resolution(tiny, tmp_path):
    image = _png(tmp_path / "wide.png", 30, 50)
    result = cnn("explain", image, "--model", tiny, "-o", tmp_path / "out", "--top-k", "2")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "wide"
    record = json.loads((folder / "explain.json").read_text())
    assert record["method"] == "gradcam" and record["layer"] == {"index": 1, "name": "layer1", "kind": "relu",
                                                                 "shape": [2, 8, 8]}
    assert record["image_size"] == [30, 50]
    assert [p["class"] for p in record["predictions"]] == [t["class"] for t in record["targets"]]
    assert sum(p["probability"] for p in record["predictions"]) == pytest.approx(1, abs=1e-5)
    for target in record["targets"]:
        cam = np.load(folder / target["cam"], allow_pickle=False)
        assert cam.shape == (30, 50) and cam.dtype == np.float32
        assert np.all(np.isfinite(cam)) and cam.min() >= 0 and cam.max() <= 1
        with Image.open(folder / target["overlay"]) as im:
            assert im.mode == "RGB" and im.size[0] >= 50
    assert sorted(p.name for p in folder.iterdir()) == [
        "cam_cat.npy", "cam_dog.npy", "explain.json", "overlay_cat.png", "overlay_dog.png"]
    line = result.stdout.strip()
    assert line.startswith(str(image)) and "layer1" in line and str(tmp_path / "out" / "wide") in line


def test_explain_folders_are_named_as_apply_names_them(tiny, tmp_path):
    _png(tmp_path / "photos" / "a" / "x.png", 12, 12)
    _png(tmp_path / "photos" / "b" / "x.png", 12, 12, seed=1)
    result = cnn("explain", tmp_path / "photos", "--model", tiny, "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert sorted(r["output"] for r in records) == [str(tmp_path / "out" / "a" / "x"), str(tmp_path / "out" / "b" / "x")]
    assert all((tmp_path / "out" / n / "x" / "explain.json").is_file() for n in "ab")
    assert not list((tmp_path / "out").rglob(".*"))


def test_explain_refuses_to_overwrite_without_force(tiny, tmp_path):
    image = _png(tmp_path / "p.png", 9, 9)
    assert cnn("explain", image, "--model", tiny, "-o", tmp_path / "out").exit_code == 0
    record = json.loads((tmp_path / "out" / "p" / "explain.json").read_text())
    cam = tmp_path / "out" / "p" / record["targets"][0]["cam"]
    before = cam.stat().st_mtime_ns
    result = cnn("explain", image, "--model", tiny, "-o", tmp_path / "out", "--method", "occlusion")
    assert result.exit_code == 1, result.output
    assert "--force" in result.stderr and cam.stat().st_mtime_ns == before
    result = cnn("explain", image, "--model", tiny, "-o", tmp_path / "out", "--method", "occlusion", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "p" / "explain.json").read_text())["method"] == "occlusion"


def test_explain_class_option_and_usage_errors(tiny, tmp_path):
    image = _png(tmp_path / "p.png", 9, 9)
    result = cnn("explain", image, "--model", tiny, "-o", tmp_path / "o1", "--class", "dog", "--json")
    assert result.exit_code == 0, result.output
    assert [t["class"] for t in json.loads(result.stdout)[0]["targets"]] == ["dog"]
    for args, words in [(("--class", "bird"), "cat, dog"), (("--layer", "4"), "linear"), (("--layer", "pool"), "0 (conv)"),
                        (("--class", "cat", "--top-k", "2"), "--top-k"), (("--patch", "3"), "occlusion"),
                        (("--method", "occlusion", "--patch", "9"), "larger")]:
        result = cnn("explain", image, "--model", tiny, "-o", tmp_path / "o2", *args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr, (args, result.stderr)
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())


def test_an_all_zero_map_is_zeros_with_a_note(tmp_path):
    """Every gradient negative: the Grad-CAM map is all zero, written as zeros, never NaN."""
    meta = ModelMeta.from_parts(TINY_META)
    net = build_network(meta, seed=0)
    state = net.state_dict()
    state["4.weight"][0] = -np.abs(state["4.weight"][0])  # class "cat" falls with every activation
    save_model(tmp_path / "m.npz", net, meta)
    image = _png(tmp_path / "p.png", 16, 16)
    result = cnn("explain", image, "--model", tmp_path / "m.npz", "-o", tmp_path / "out", "--class", "cat")
    assert result.exit_code == 0, result.output
    assert "all-zero" in result.stdout
    record = json.loads((tmp_path / "out" / "p" / "explain.json").read_text())
    assert "all-zero" in record["targets"][0]["note"] and record["targets"][0]["peak"] is None
    cam = np.load(tmp_path / "out" / "p" / "cam_cat.npy", allow_pickle=False)
    assert cam.shape == (16, 16) and not np.any(cam) and not np.any(np.isnan(cam))


def test_explain_check_prints_the_table_and_records_it(tiny, tmp_path):
    image = _png(tmp_path / "p.png", 9, 9, rgb=False)
    result = cnn("explain", image, "--model", tiny, "-o", tmp_path / "out", "--check")
    assert result.exit_code == 0, result.output
    assert "Spearman" in result.stdout and "layer4 (linear)" in result.stdout and "layer0 (conv)" in result.stdout
    check = json.loads((tmp_path / "out" / "p" / "explain.json").read_text())["targets"][0]["check"]
    assert [(s["layer"], s["kind"]) for s in check] == [(4, "linear"), (0, "conv")]
    assert all(s["spearman"] is None or -1 <= s["spearman"] <= 1 for s in check)
    # issue 28: say how to read rho, and what passes
    target = json.loads((tmp_path / "out" / "p" / "explain.json").read_text())["targets"][0]
    assert target["check_passed"] == E.check_passed(check)
    assert f"passes when the last step's |rho| is below {E.CHECK_PASSES_BELOW}" in result.stdout
    assert {True: ": passed", False: ": FAILED", None: "no verdict"}[target["check_passed"]] in result.stdout


def test_check_passed_reads_the_last_step():
    step = lambda rho: {"layer": 0, "name": "layer0", "kind": "conv", "spearman": rho}  # noqa: E731
    assert E.check_passed([step(0.9), step(0.1)]) is True
    assert E.check_passed([step(0.1), step(0.95)]) is False
    assert E.check_passed([step(0.2), step(None)]) is None


def test_a_bad_image_is_named_and_the_others_are_explained(tiny, tmp_path):
    good = _png(tmp_path / "good.png", 9, 9)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    result = cnn("explain", good, bad, "--model", tiny, "-o", tmp_path / "out")
    assert result.exit_code == 3, result.output
    assert "bad.png" in result.stderr and (tmp_path / "out" / "good" / "explain.json").is_file()
    assert not (tmp_path / "out" / "bad").exists()


def test_class_names_become_distinct_file_names():
    assert E.file_stems(["cat", "a b", "a/b", "dog"]) == ["cat", "a_b-1", "a_b-2", "dog"]
