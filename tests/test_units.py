"""``cnn units``: receptive fields against impulse responses, the top-k patches against a
brute-force search, streaming, and the command's files and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cnn_cli import units as U
from cnn_cli.imageio import read_image
from cnn_cli.layers import Activation, Pool
from cnn_cli.nn import Conv2d, Network, Residual
from cnn_cli.sources import load_source

from clirunner import cnn
from tinymodel import save_tiny_model


# --------------------------------------------------------------------------- receptive fields


def _impulse_check(layers, size=(23, 26), pixels=((0, 0), (11, 13), (22, 25), (5, 20), (17, 2))):
    """With non-negative weights and zero padding, an impulse at an input pixel reaches exactly
    the outputs whose receptive field holds that pixel: compare every layer's field with that."""
    fields = U.receptive_fields(layers)
    for py, px in pixels:
        x = np.zeros((1, 1, *size), np.float32)
        x[0, :, py, px] = 1
        for layer, field in zip(layers, fields):
            x = layer.forward(x)
            reached = x[0].max(axis=0) > 0
            expected = np.zeros_like(reached)
            for y in range(reached.shape[0]):
                for xx in range(reached.shape[1]):
                    top, left, bottom, right = field.box(y, xx)
                    expected[y, xx] = top <= py < bottom and left <= px < right
            assert np.array_equal(reached, expected), f"{layer.describe()}: impulse at {(py, px)}, field {field}"


def _network_layers(layers, size=(23, 26)):
    """``layers`` built for a grey input, every weight set to 1 and every bias to 0."""
    net = Network(layers, (1, *size))
    for name, arr in net.state_dict().items():
        if name.endswith("weight"):
            arr[...] = 1
        elif name.endswith("bias"):
            arr[...] = 0
    return net.layers


def test_fields_of_learned_layers_match_impulse_responses():
    _impulse_check(_network_layers([
        Conv2d(2, 3, padding=1), Activation("relu"), Pool("maxpool", 2),
        Conv2d(2, 3), Pool("avgpool", 3, stride=2, padding=1), Conv2d(2, 2, stride=2, padding=1)]))


def test_fields_of_residual_blocks_match_impulse_responses():
    _impulse_check(_network_layers([Conv2d(2, 3, padding=1), Residual(2), Residual(3, stride=2)]))


def test_fields_of_bank_pipelines_match_impulse_responses(tmp_path):
    """Fixed banks: an even kernel with "same" padding (the extra row below), valid, strided."""
    spec = tmp_path / "p.toml"
    spec.write_text('''
kind = "pipeline"
[[layer]]
type = "conv"
banks = ["b.toml:box2"]
padding = "same"
padding_mode = "zeros"
[[layer]]
type = "maxpool"
kernel_size = 3
stride = 2
padding = 1
[[layer]]
type = "conv"
banks = ["b.toml:box3"]
padding = "valid"
[[layer]]
type = "abs"
[[layer]]
type = "conv"
banks = ["b.toml:box3"]
padding = 2
stride = 2
padding_mode = "zeros"
''')
    (tmp_path / "b.toml").write_text('''
kind = "bank"
[[kernel]]
name = "box2"
values = [[1, 1], [1, 1]]
[[kernel]]
name = "box3"
values = [[1, 1, 1], [1, 1, 1], [1, 1, 1]]
''')
    pipeline = load_source(pipeline=str(spec)).pipeline
    fields = U.receptive_fields(pipeline.layers)
    assert fields[0] == U.Field((2, 2), (1, 1), (0, 0))
    assert fields[1] == U.Field((4, 4), (2, 2), (-1, -1))
    _impulse_check(pipeline.layers)


def test_a_global_layer_has_no_field():
    layers = _network_layers([Conv2d(2, 3, padding=1)]) + [Pool("maxpool", 2)]
    from cnn_cli.layers import GlobalPool

    fields = U.receptive_fields(layers + [GlobalPool("globalavgpool"), Activation("relu")])
    assert fields[-2:] == [None, None] and fields[1] == U.Field((4, 4), (2, 2), (-1, -1))


def test_crop_fills_outside_with_nan():
    image = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    patch = U.crop(image, (-1, 3, 2, 7))
    assert patch.shape == (2, 3, 4)
    assert np.all(np.isnan(patch[:, 0])) and np.all(np.isnan(patch[:, :, 2:]))
    np.testing.assert_array_equal(patch[:, 1:, :2], image[:, 0:2, 3:5])


# --------------------------------------------------------------------------- against a brute-force search


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """Nine grey images of two sizes (so batches break on size), in name order."""
    root = tmp_path_factory.mktemp("units") / "set"
    root.mkdir()
    rng = np.random.default_rng(4)
    for i in range(9):
        h, w = (20, 24) if i % 3 else (16, 17)
        img = rng.random((h, w)) * (0.3 + 0.7 * rng.random())
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f"{i:02d}.png")
    return root


def _brute_force(paths, pipeline, layer, k):
    """Every image alone: each channel's first strongest position; the k largest over all, earlier image first on ties."""
    field = U.receptive_fields(pipeline.layers)[layer]
    candidates = {}
    for order, path in enumerate(paths):
        image = read_image(path, color="gray")
        maps = pipeline.forward(image[None])[layer][0]
        for ch, m in enumerate(maps):
            y, x = np.unravel_index(np.argmax(m), m.shape)
            candidates.setdefault(ch, []).append((-float(m[y, x]), order, str(path), int(y), int(x), image))
    out = {}
    for ch, found in candidates.items():
        best = sorted(found, key=lambda c: (c[0], c[1]))[:k]
        rows = []
        for value, _, path, y, x, image in best:
            top, left, bottom, right = field.box(y, x)
            patch = np.full((1, bottom - top, right - left), np.nan, np.float32)
            for i in range(top, bottom):
                for j in range(left, right):
                    if 0 <= i < image.shape[1] and 0 <= j < image.shape[2]:
                        patch[0, i - top, j - left] = image[0, i, j]
            rows.append((-value, path, [y, x], [top, left, bottom, right], patch))
        out[ch] = rows
    return out


@pytest.mark.parametrize("k", [1, 4, 12])
def test_top_patches_match_brute_force(small_set, tmp_path, k):
    source = load_source(pipeline="default")
    layers = [0, 2, 4]
    summary = U.run([str(small_set)], tmp_path / "out", source, U.UnitsOptions(layers=("0,2", "last"), k=k))
    assert summary.images == 9 and not summary.failed
    document = json.loads((tmp_path / "out" / "units.json").read_text())
    assert [layer["index"] for layer in document["layers"]] == layers
    with np.load(tmp_path / "out" / "patches.npz", allow_pickle=False) as npz:
        patches = {key: npz[key] for key in npz.files}
    paths = sorted(small_set.glob("*.png"))
    for record in document["layers"]:
        i = record["index"]
        expected = _brute_force(paths, source.pipeline, i, k)
        assert len(record["channels"]) == len(expected) == len(source.pipeline.channels[i])
        assert patches[f"layer{i}"].shape[:2] == (len(expected), min(k, 9))  # a patch per image at most
        for entry in record["channels"]:
            ch = entry["channel"]
            assert entry["filter"] == source.pipeline.channels[i][ch]
            rows = expected[ch]
            assert len(entry["patches"]) == len(rows) == min(k, 9)
            for slot, (got, (value, path, position, box, patch)) in enumerate(zip(entry["patches"], rows)):
                where = f"layer {i} channel {ch} slot {slot}"
                assert got["input"] == path and got["position"] == position and got["box"] == box, where
                assert got["activation"] == pytest.approx(value, rel=1e-5, abs=1e-6), where
                np.testing.assert_array_equal(patches[f"layer{i}"][ch, slot], patch, err_msg=where)
            assert np.all(np.isnan(patches[f"layer{i}"][ch, len(rows):]))


def test_streaming_keeps_only_k_per_channel_and_any_batching_agrees(small_set):
    """One image at a time or all of one size at once: the same top k, in arrays of at most k per
    channel, which grow with the images seen (one patch per image and channel)."""
    pipeline = load_source(pipeline="default").pipeline
    field = U.receptive_fields(pipeline.layers)[2]
    channels = len(pipeline.channels[2])
    paths = sorted(small_set.glob("*.png"))
    images = [read_image(p, color="gray") for p in paths]
    one_by_one = U.TopPatches(channels, 3, field, 1)
    for seen, (path, image) in enumerate(zip(paths, images), 1):
        one_by_one.add(pipeline.forward(image[None])[2], image[None], [path])
        assert one_by_one.patches.shape == (channels, min(3, seen), 1, *field.size)
    grouped = U.TopPatches(channels, 3, field, 1)
    for size in sorted({im.shape for im in images}):
        chosen = [(p, im) for p, im in zip(paths, images) if im.shape == size]
        batch = np.stack([im for _, im in chosen])
        grouped.add(pipeline.forward(batch)[2], batch, [p for p, _ in chosen])
    np.testing.assert_array_equal(one_by_one.values, grouped.values)
    assert one_by_one.inputs == grouped.inputs
    np.testing.assert_array_equal(one_by_one.patches, grouped.patches)


# --------------------------------------------------------------------------- the command


def test_units_with_a_model_writes_grid_patches_and_json(small_set, tmp_path):
    model = save_tiny_model(tmp_path / "tiny.npz")
    out = tmp_path / "u"
    result = cnn("units", small_set, "--model", model, "--layer", "relu", "-k", "3", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 9 and summary["layers"][0]["index"] == 1 and summary["layers"][0]["channels"] == 2
    document = json.loads((out / "units.json").read_text())
    layer = document["layers"][0]
    assert layer["receptive_field"] == {"size": [3, 3], "jump": [1, 1], "offset": [-1, -1]}
    assert [c["filter"] for c in layer["channels"]] == ["filter0", "filter1"]
    assert document["source"]["kind"] == "model" and document["k"] == 3
    with Image.open(out / "layer1.png") as im:
        im.load()
        assert im.size[0] > 3 * 48 and im.size[1] > 2 * 48
    with np.load(out / "patches.npz", allow_pickle=False) as npz:
        assert npz["layer1"].shape == (2, 3, 1, 3, 3)  # patches of the model's 8x8 input
    assert sorted(p.name for p in out.iterdir()) == ["layer1.png", "patches.npz", "units.json"]


def test_units_refuses_an_existing_folder_without_force(small_set, tmp_path):
    out = tmp_path / "u"
    assert cnn("units", small_set, "--bank", "edges:sobel_*", "--layer", "0", "-o", out).exit_code == 0
    before = (out / "units.json").read_bytes()
    result = cnn("units", small_set, "--bank", "edges", "--layer", "0", "-o", out)
    assert result.exit_code == 1 and "--force" in result.stderr, result.output
    assert (out / "units.json").read_bytes() == before
    result = cnn("units", small_set, "--bank", "edges", "--layer", "0", "-o", out, "--force", "-k", "2")
    assert result.exit_code == 0, result.output
    document = json.loads((out / "units.json").read_text())
    assert len(document["layers"][0]["channels"]) == 11 and document["k"] == 2
    assert not list(tmp_path.glob(".*"))


def test_units_layer_errors_are_usage_errors(small_set, tmp_path):
    spec = tmp_path / "global.toml"
    spec.write_text('kind = "pipeline"\n[[layer]]\ntype = "conv"\nbanks = ["edges:sobel_x"]\n'
                    '[[layer]]\ntype = "globalmaxpool"\n')
    for args, words in [(("--pipeline", spec, "--layer", "1"), "whole image"),
                        (("--bank", "edges", "--layer", "3"), "layers 0 to 0"),
                        (("--pipeline", "default", "--layer", "pool"), "0 (conv)")]:
        result = cnn("units", small_set, *args, "-o", tmp_path / "u")
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr, (args, result.stderr)
    assert not (tmp_path / "u").exists()


def test_units_names_bad_images_and_uses_the_rest(small_set, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image")
    result = cnn("units", small_set / "00.png", bad, "--bank", "edges:sobel_x", "--layer", "0", "-o", tmp_path / "u")
    assert result.exit_code == 3, result.output
    assert "bad.png" in result.stderr
    document = json.loads((tmp_path / "u" / "units.json").read_text())
    assert document["images"] == 1 and document["failed"][0]["input"] == str(bad)


def test_ties_go_to_the_image_met_first():
    field = U.Field((1, 1), (1, 1), (0, 0))
    top = U.TopPatches(1, 2, field, 1)
    image = np.ones((1, 1, 2, 2), np.float32)
    maps = np.ones((1, 1, 2, 2), np.float32)
    for name in ("a", "b", "c"):
        top.add(maps, image, [name])
    assert top.inputs == [["a", "b"]] and top.positions[0].tolist() == [[0, 0], [0, 0]]
