"""Findings of the round-2 adversarial probe (issue 28), each kept as a test."""

from pathlib import Path

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


# --------------------------------------------------------------------------- damaged embedding folders


@pytest.fixture(scope="module")
def index_folder(tmp_path_factory):
    """A small finished embedding folder to damage, and an image to search with."""
    root = tmp_path_factory.mktemp("index")
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (24, 24), dtype=np.uint8)).save(root / f"im{k}.png")
    result = cnn("embed", root / "im0.png", root / "im1.png", root / "im2.png", "-o", root / "index")
    assert result.exit_code == 0, result.output
    return root


def damaged_copy(index_folder, tmp_path, name, content):
    import shutil

    copy = tmp_path / "index"
    shutil.copytree(index_folder / "index", copy)
    target = copy / name
    if callable(content):
        content(target)
    else:
        target.write_bytes(content)
    return copy


def _as_int8(path):
    rows = np.load(path)
    np.save(path, (rows * 100).astype(np.int8))


def _with_inf(path):
    rows = np.load(path)
    rows[1] = np.inf
    np.save(path, rows)


@pytest.mark.parametrize("name, content, message", [
    ("index.csv", b"row,path\n0," + b"x" * 200_000 + b"\n", "index.csv: line for row 0"),
    ("embed.json", b"[1, 2, 3]", "not an embedding record"),
    ("embed.json", b"[" * 100_000 + b"]" * 100_000, "embed.json: not readable"),
    ("embeddings.npy", b"", "embeddings.npy: not a readable array"),
    ("embeddings.npy", lambda p: p.write_bytes(p.read_bytes()[:-40]), "embeddings.npy: not a readable array"),
    ("embeddings.npy", _as_int8, "holds int8 values"),
    ("embeddings.npy", _with_inf, "row 1 of the index is not finite"),
], ids=["long-row", "json-list", "json-deep", "npy-empty", "npy-truncated", "npy-int8", "npy-inf"])
def test_a_damaged_index_gives_one_line_naming_what_is_wrong(index_folder, tmp_path, name, content, message):
    folder = damaged_copy(index_folder, tmp_path, name, content)
    result = cnn("search", index_folder / "im0.png", "--index", folder)
    assert result.exit_code == 1, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert result.stderr.strip().count("\n") == 0, result.stderr


# --------------------------------------------------------------------------- decompression bombs


def _png_declaring(path, side):
    """A PNG of a few dozen bytes whose header declares side x side grey pixels."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 10))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory from /proc")
def test_reading_a_bombs_size_costs_what_a_tiny_image_costs(tmp_path):
    """Pillow's getexif decoded a PNG to find its orientation: 2.7 GB for a declared 100000x100000."""
    import subprocess
    import sys

    bomb = _png_declaring(tmp_path / "bomb.png", 100_000)
    # VmHWM is this process's own peak: ru_maxrss would keep the forking test process's.
    script = ("import re, sys; from cnn_cli.imageio import image_shape; print(image_shape(sys.argv[1])); "
              "print(re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1))")
    done = subprocess.run([sys.executable, "-c", script, str(bomb)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape, peak_kb = done.stdout.split("\n")[:2]
    assert shape == "(1, 100000, 100000)"
    assert int(peak_kb) < 300_000, f"{int(peak_kb) // 1024} MB to read a header"


def test_apply_refuses_a_bomb_by_its_declared_size(tmp_path):
    bomb = _png_declaring(tmp_path / "bomb.png", 100_000)
    result = cnn("apply", bomb, "-o", tmp_path / "out")
    assert result.exit_code != 0 and "100000x100000" in result.stderr, result.output


@pytest.mark.parametrize("command", ["export", "import"])
def test_an_unwritable_output_is_refused_before_any_work(tmp_path, command, monkeypatch):
    """export built and checked the whole graph before it found it could not write (issue 28 §5)."""
    pytest.importorskip("onnx")
    from cnn_cli import export, onnximport

    def no_work(*args, **kwargs):
        raise AssertionError("the work ran before the output was checked")

    monkeypatch.setattr(export, "load_target", no_work)
    monkeypatch.setattr(onnximport, "read_onnx", no_work)
    out = tmp_path / "missing" / ("x.onnx" if command == "export" else "x.npz")
    source = tmp_path / "m.onnx"
    source.write_bytes(b"not read")
    result = cnn(command, "harris" if command == "export" else source, "-o", out)
    assert result.exit_code == 1 and f"cannot write {out}" in result.stderr, result.output


@pytest.mark.parametrize("record", ["keypoints.json", "match.json"])
def test_a_keypoints_or_match_folder_is_not_read_as_input(tmp_path, record):
    """Their overlay.png and matches.png are cnn's own pictures, as apply's maps are."""
    from cnn_cli.inputs import Input, iter_inputs

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "photo.png")
    out = tmp_path / "cnn-keypoints" / "photo"
    out.mkdir(parents=True)
    (out / record).write_text('{"cnn_version": "0.1.0"}')
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(out / "overlay.png")
    found = [item.path.name for item in iter_inputs([tmp_path]) if isinstance(item, Input)]
    assert found == ["photo.png"]


def test_max_memory_moves_the_limit_a_pipeline_is_checked_against(tmp_path, monkeypatch):
    """--max-memory reached the images' check only; binding the pipeline (or loading a model)
    still used the default limit, so raising it did not let a large pipeline load."""
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "img.png")
    spec = tmp_path / "deep.toml"
    spec.write_text('kind = "pipeline"\n' + '[[layer]]\ntype = "conv"\nbanks = ["edges"]\nmode = "depthwise"\n' * 3)
    monkeypatch.setenv("CNN_MAX_MEMORY", "2M")
    small = cnn("apply", tmp_path / "img.png", "--pipeline", spec, "-o", tmp_path / "a")
    assert small.exit_code == 1 and "would need about" in small.stderr, small.output
    enough = cnn("apply", tmp_path / "img.png", "--pipeline", spec, "-o", tmp_path / "b", "--max-memory", "8G")
    assert enough.exit_code == 0, enough.output
