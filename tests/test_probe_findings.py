"""Findings of the round-2 adversarial probe (issue 28), each kept as a test."""

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn


def test_info_on_an_image_says_what_info_takes(tmp_path):
    image = tmp_path / "chelsea.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    result = cnn("info", image)
    assert result.exit_code == 1
    assert "is an image; cnn info takes a model" in result.stderr and "cnn apply" in result.stderr
    assert "UTF-8" not in result.stderr


@pytest.mark.parametrize("command", ["info", "export"])
def test_a_nan_slope_is_refused_when_the_file_is_read(tmp_path, command):
    spec = tmp_path / "nan.toml"
    spec.write_text('kind = "pipeline"\n[[layer]]\ntype = "leaky_relu"\nslope = nan\n')
    args = [command, spec] + (["-o", tmp_path / "x.onnx"] if command == "export" else [])
    result = cnn(*args)
    assert result.exit_code == 1 and "slope must be a finite number" in result.stderr, result.output
    assert not (tmp_path / "x.onnx").exists()


def test_a_pipeline_of_too_many_layers_is_refused_before_it_is_built(tmp_path):
    spec = tmp_path / "long.toml"
    spec.write_text('kind = "pipeline"\n' + '[[layer]]\ntype = "abs"\n' * 10_001)
    result = cnn("info", spec)
    assert result.exit_code == 1 and "10,001 layers; cnn takes at most 10,000" in result.stderr


def test_a_long_pipeline_exports_every_layer(tmp_path):
    """Exporting renamed each output with a pass over every node (12 s at 2,500 layers)."""
    onnx = pytest.importorskip("onnx")
    spec = tmp_path / "long.toml"
    spec.write_text('kind = "pipeline"\n' + '[[layer]]\ntype = "abs"\n' * 3000)
    result = cnn("export", spec, "-o", tmp_path / "long.onnx")
    assert result.exit_code == 0, result.output
    model = onnx.load(str(tmp_path / "long.onnx"))
    assert [o.name for o in model.graph.output][-1] == "layer2999" and len(model.graph.output) == 3000
