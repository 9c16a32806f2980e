"""What ``mapfolder.write_outputs`` measures of each map (min, max, mean, zero fraction), its refusal
of NaN and inf, and the input's JPEG copy (``viz.input_copy``)."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from cnn_cli import viz
from cnn_cli.apply import ApplyOptions
from cnn_cli.mapfolder import staging_dir, write_outputs
from cnn_cli.owned import JPEG_MARK
from cnn_cli.sources import load_source


@pytest.fixture(scope="module")
def pipeline():
    return load_source().pipeline  # the default: 5 layers of 11 maps


def _maps(pipeline, special=None):
    """Maps for every layer of ``pipeline``: layer 0 holds one map of each kind the statistics
    treat apart (above zero, below, touching zero from either side, across it with zeros, -0.0)."""
    rng = np.random.default_rng(5)
    layers = [rng.uniform(-1, 1, (len(channels), 6, 7)).astype(np.float32) for channels in pipeline.channels]
    m = layers[0]
    m[0] = rng.uniform(0.1, 2, (6, 7))       # above zero: no zero to count
    m[1] = -m[0]                             # below zero
    m[2] = np.abs(m[2])                      # touching zero from above
    m[2, :2] = 0
    m[3] = -np.abs(m[3])                     # from below
    m[3, 0] = 0
    m[4, 1:3] = 0                            # across zero, with zeros
    m[5] = np.abs(m[5]) + 0.5                # above zero but for -0.0, which is zero
    m[5, 2, 2] = -0.0
    m[6] = 0                                 # all zero
    if special is not None:
        layers[2][4, 1, 1] = special
    return layers


def _write(tmp_path, pipeline, maps, **options):
    out = tmp_path / "out" / "img"
    options = ApplyOptions(save=frozenset({"raw"}), html=False, **options)
    with ThreadPoolExecutor(2) as encoders:
        write_outputs(tmp_path / "img.png", out, maps, np.zeros((1, 12, 14), np.float32), pipeline, options,
                      encoders)
    return out


def test_every_maps_statistics_are_its_own(tmp_path, pipeline):
    layers = _maps(pipeline)
    out = _write(tmp_path, pipeline, layers)
    manifest = json.loads((out / "manifest.json").read_text())
    with np.load(out / "features.npz", allow_pickle=False) as npz:
        for layer, maps in zip(manifest["layers"], layers):
            np.testing.assert_array_equal(npz[layer["npz_key"]], maps)
            for entry, m in zip(layer["maps"], maps):
                where = f"{layer['name']} map {entry['channel']}"
                assert (entry["min"], entry["max"]) == (float(m.min()), float(m.max())), where
                assert entry["mean"] == float(m.mean(dtype=np.float64)), where
                assert entry["zero_fraction"] == np.count_nonzero(m == 0) / m.size, where
    zeros = [entry["zero_fraction"] for entry in manifest["layers"][0]["maps"][:7]]
    assert zeros == [0.0, 0.0, 14 / 42, 7 / 42, 14 / 42, 1 / 42, 1.0]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_nan_or_inf_map_is_refused_and_leaves_no_folder(tmp_path, pipeline, value):
    out = tmp_path / "out" / "img"
    with pytest.raises(ValueError, match=r"layer 2 \(maxpool\) produced NaN or inf values"):
        _write(tmp_path, pipeline, _maps(pipeline, special=value))
    assert not out.exists() and not staging_dir(out).exists()


def test_only_the_chosen_layers_are_checked(tmp_path, pipeline):
    """A NaN in a layer not written (--layers) is no reason to refuse the image."""
    out = _write(tmp_path, pipeline, _maps(pipeline, special=np.nan), layers=(0, 4))
    assert [layer["index"] for layer in json.loads((out / "manifest.json").read_text())["layers"]] == [0, 4]


def _jpeg_of(tmp_path, picture, name):
    path = tmp_path / name
    picture.save(path)
    data = viz.input_copy(path, comment=JPEG_MARK)
    assert JPEG_MARK in data[:64]
    return Image.open(io.BytesIO(data))


def test_the_input_copy_of_a_grey_image_is_grey_and_of_others_rgb(tmp_path):
    rng = np.random.default_rng(6)
    grey = Image.fromarray(rng.integers(0, 255, (40, 30), dtype=np.uint8))
    copy = _jpeg_of(tmp_path, grey, "grey.png")
    assert (copy.mode, copy.size) == ("L", (30, 40))
    assert np.abs(np.asarray(copy, np.int16) - np.asarray(grey, np.int16)).mean() < 8  # quality 90
    colour = Image.fromarray(rng.integers(0, 255, (20, 25, 3), dtype=np.uint8))
    assert _jpeg_of(tmp_path, colour, "colour.png").mode == "RGB"
    assert _jpeg_of(tmp_path, grey.convert("P"), "palette.png").mode == "RGB"
    assert _jpeg_of(tmp_path, grey.convert("LA"), "alpha.png").mode == "RGB"
