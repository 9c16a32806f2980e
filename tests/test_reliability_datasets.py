"""Hostile dataset folders for `cnn train`: junk entries, links and loops, special files,
odd class names, empty and lopsided classes, corrupt images.

The README's "What happens when..." table is the spec. Training runs use
`--epochs 1` on tiny 12x12 images so each takes about a second.
"""

import json
import os
import re
import socket
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn
from cnn_cli.data import DatasetError, find_dataset


def _image(path, seed=0, size=12):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


def _class(root, name, count, start=0):
    return [_image(Path(root) / name / f"{i}.png", seed=start + i) for i in range(count)]


def _all_paths(ds):
    return sorted(str(p) for p in list(ds.train.paths) + list(ds.val.paths))


def _find(root, timeout=10, **kw):
    """find_dataset in a worker thread, so a walk that never ends fails the test instead of hanging it."""
    box = {}

    def work():
        try:
            box["value"] = find_dataset(root, kw.get("val_split", 0.2), kw.get("seed", 0))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"find_dataset({root}) did not finish in {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def _png_declaring(width, height):
    """A tiny PNG whose header declares width x height (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


def _epoch_index(lines):
    return next(i for i, line in enumerate(lines) if line.startswith("epoch "))


# ----------------------------------------------------------------- junk, links, special files


def test_hidden_folders_checkpoints_appledouble_and_ds_store_are_skipped(tmp_path):
    root = tmp_path / "data"
    keep = _class(root, "cats", 3) + _class(root, "dogs", 3, start=10)
    for junk_dir in (root / ".ipynb_checkpoints", root / ".hidden", root / "cats" / ".ipynb_checkpoints",
                     root / "dogs" / ".thumbs", root / "dogs" / "sub" / ".cache"):
        _image(junk_dir / "x.png", seed=99)
    (root / "cats" / "._0.png").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    (root / "._cats").write_bytes(b"\x00\x05\x16\x07")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + b"\x00" * 60)
    (root / "cats" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "dogs" / "notes.txt").write_text("not an image")
    keep.append(_image(root / "dogs" / "sub" / "deep.png", seed=50))  # subfolders are walked

    ds = _find(root)
    assert ds.classes == ["cats", "dogs"]
    assert _all_paths(ds) == sorted(str(p) for p in keep)


def test_symlink_loops_do_not_hang_and_links_are_not_followed(tmp_path):
    root = tmp_path / "data"
    keep = _class(root, "a", 3) + _class(root, "b", 3, start=10)
    elsewhere = tmp_path / "elsewhere"
    _class(elsewhere, "c", 4, start=20)
    os.symlink("..", root / "a" / "loop")                     # a -> data (a loop)
    os.symlink(root / "a", root / "a" / "self")               # a -> a
    os.symlink(root, root / "b" / "root_again")
    os.symlink(elsewhere / "c", root / "b" / "outside")       # a folder outside the dataset
    os.symlink(root / "a" / "0.png", root / "b" / "linked.png")  # a link to an image
    os.symlink(tmp_path / "missing.png", root / "b" / "dangling.png")
    os.symlink(elsewhere / "c", root / "linked_class")        # a class folder that is a link
    ds = _find(root)
    assert ds.classes == ["a", "b"]
    assert _all_paths(ds) == sorted(str(p) for p in keep)


def test_symlink_loop_through_the_cli_ends(tmp_path):
    root = tmp_path / "data"
    _class(root, "a", 4)
    _class(root, "b", 4, start=10)
    os.symlink("..", root / "a" / "up")
    os.symlink("../b", root / "a" / "to_b")
    os.symlink("../a", root / "b" / "to_a")
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1", timeout=60)
    assert result.exit_code == 0, result.output
    assert "training lenet on 6 images (2 for validation)" in result.stderr, result.stderr


def test_fifo_socket_and_folder_named_like_an_image_are_ignored(tmp_path):
    root = tmp_path / "data"
    keep = _class(root, "a", 3) + _class(root, "b", 3, start=10)
    os.mkfifo(root / "a" / "pipe.png")          # opening it for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock_path = root / "b" / "s.png"
    try:
        sock.bind(str(sock_path))
    except OSError:  # path too long for AF_UNIX on some systems
        sock_path = None
    (root / "b" / "folder.png").mkdir()
    _image(root / "b" / "folder.png" / "inner.png", seed=77)   # a real image inside it is found
    keep.append(root / "b" / "folder.png" / "inner.png")
    try:
        ds = _find(root)
        assert _all_paths(ds) == sorted(str(p) for p in keep)
        result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1", timeout=60)
        assert result.exit_code == 0, result.output
        assert "pipe.png" not in result.output and "s.png" not in result.output
    finally:
        sock.close()


def test_fifo_given_to_apply_and_predict_does_not_block(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = cnn("apply", fifo, "-o", tmp_path / "out", timeout=30)
    assert result.exit_code == 1, result.output
    assert "pipe.png" in result.stderr


# ----------------------------------------------------------------- empty and single classes


def test_empty_class_is_an_error_naming_it(tmp_path):
    root = tmp_path / "data"
    _class(root, "full", 3)
    (root / "empty_one").mkdir()
    with pytest.raises(DatasetError, match="empty_one"):
        _find(root)
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "empty_one" in lines[0], lines
    assert not (tmp_path / "m.npz").exists()


def test_class_with_only_junk_counts_as_empty(tmp_path):
    root = tmp_path / "data"
    _class(root, "full", 3)
    junk = root / "junk_only"
    _image(junk / ".hidden" / "x.png")
    (junk / "._x.png").write_bytes(b"\x00\x05\x16\x07")
    (junk / ".DS_Store").write_bytes(b"Bud1")
    (junk / "readme.txt").write_text("hi")
    os.symlink(root / "full" / "0.png", junk / "link.png")
    os.mkfifo(junk / "fifo.png")
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 1, result.output
    assert "junk_only" in result.stderr and "Traceback" not in result.output


def test_class_whose_images_are_all_corrupt_is_an_error_naming_it(tmp_path):
    root = tmp_path / "data"
    _class(root, "good", 4)
    (root / "broken").mkdir()
    for i in range(3):
        (root / "broken" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * i)
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "broken" in errors[0], result.stderr
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("classes", [["only"], []])
def test_one_or_no_class_is_a_clear_error(tmp_path, classes):
    root = tmp_path / "data"
    root.mkdir()
    for name in classes:
        _class(root, name, 5)
    _image(root / "loose.png")  # images straight in the root are not a class
    (root / ".hidden_class").mkdir()
    _image(root / ".hidden_class" / "x.png")
    with pytest.raises(DatasetError) as info:
        _find(root)
    assert "at least 2" in str(info.value) and str(root) in str(info.value)
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("Error:") and "class" in line and "at least 2" in line, line


def test_dataset_that_is_a_file_or_missing(tmp_path):
    afile = _image(tmp_path / "img.png")
    for target in (afile, tmp_path / "nope"):
        result = cnn("train", target, "-o", tmp_path / "m.npz", "--epochs", "1")
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("Error:") and str(target.name) in result.stderr


# ----------------------------------------------------------------- names that fight the terminal


NAMES = ["кошка", "日本", "[bold]x", "a b  c", "[red]warn[", "café\u0301"]


def test_odd_class_names_work_end_to_end_and_print_literally(tmp_path):
    root = tmp_path / "data"
    for k, name in enumerate(NAMES):
        _class(root, name, 3, start=10 * k)
    model = tmp_path / "m.npz"
    result = cnn("train", root, "-o", model, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert model.is_file()

    info = cnn("info", model)
    assert info.exit_code == 0, info.output
    for name in NAMES:
        assert name in info.stdout, (name, info.stdout)

    evaluation = cnn("evaluate", root, "--model", model, "--json")
    assert evaluation.exit_code == 0, evaluation.output
    report = json.loads(evaluation.stdout)
    assert sorted(report["per_class"]) == sorted(NAMES)

    table = cnn("evaluate", root, "--model", model)
    assert table.exit_code == 0, table.output
    for name in NAMES:
        assert name in table.stdout, (name, table.stdout)

    img = root / "[bold]x" / "0.png"
    prediction = cnn("predict", img, "--model", model, "--top-k", str(len(NAMES)))
    assert prediction.exit_code == 0, prediction.output
    assert str(img) in prediction.stdout
    for name in NAMES:
        assert name in prediction.stdout, (name, prediction.stdout)
    as_json = cnn("predict", img, "--model", model, "--top-k", "2", "--json")
    assert json.loads(as_json.stdout)[0]["input"] == str(img)


# ----------------------------------------------------------------- lopsided and corrupt data


def test_heavy_imbalance_prints_a_warning_before_training(tmp_path):
    root = tmp_path / "data"
    _class(root, "many", 30)
    _class(root, "few", 2, start=100)
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    warning = [i for i, line in enumerate(lines) if "imbalanced" in line]
    assert warning, result.stderr
    assert warning[0] < _epoch_index(lines), result.stderr
    assert "warning" in lines[warning[0]].lower()


def test_mild_imbalance_gives_no_warning(tmp_path):
    root = tmp_path / "data"
    _class(root, "more", 8)
    _class(root, "fewer", 4, start=100)
    ds = _find(root)
    assert len(ds.train.paths) + len(ds.val.paths) == 12
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert "imbalanced" not in result.stderr


def test_corrupt_files_are_named_before_the_first_epoch(tmp_path):
    root = tmp_path / "data"
    _class(root, "a", 5)
    _class(root, "b", 5, start=10)
    bad = {
        root / "a" / "truncated.png": (root / "a" / "0.png").read_bytes()[:60],
        root / "a" / "text.jpg": b"hello\n",
        root / "b" / "empty.png": b"",
        root / "b" / "random.gif": np.random.default_rng(0).bytes(300),
        root / "b" / "eps.png": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 5 5\n",
        root / "a" / "bomb.png": _png_declaring(100_000, 100_000),
    }
    for path, data in bad.items():
        path.write_bytes(data)
    model = tmp_path / "m.npz"
    result = cnn("train", root, "-o", model, "--epochs", "1")
    assert result.exit_code == 3, result.output  # the model is saved without the bad files
    lines = result.stderr.splitlines()
    first_epoch = _epoch_index(lines)
    for path in bad:
        named = [i for i, line in enumerate(lines) if path.name in line]
        assert named, (path.name, result.stderr)
        assert named[0] < first_epoch, (path.name, result.stderr)
    counts = re.search(r"training lenet on (\d+) images \((\d+) for validation\)", result.stderr)
    assert counts and int(counts[1]) + int(counts[2]) == 10, result.stderr  # the 10 good images
    assert "over the limit" in next(line for line in lines if "bomb.png" in line)
    assert model.is_file()


def test_the_max_pixels_hint_given_by_train_can_be_followed(tmp_path):
    root = tmp_path / "data"
    _class(root, "a", 3)
    _class(root, "b", 3, start=10)
    (root / "a" / "bomb.png").write_bytes(_png_declaring(12_000, 10_000))
    result = cnn("train", root, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 3, result.output  # trained without the refused image
    assert "--max-pixels" in result.stderr, result.stderr
    result = cnn("train", root, "-o", tmp_path / "m2.npz", "--epochs", "1", "--max-pixels", "200000000")
    # Past the limit the file is decoded, and found to hold only a header.
    assert result.exit_code == 3, result.output
    assert "over the limit" not in result.stderr and "bomb.png: damaged or truncated" in result.stderr
