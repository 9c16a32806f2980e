"""Issue 28's smaller findings and the adversarial probe's: --force, memory, tracebacks, resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn
from tinymodel import save_tiny_model

SHAPES = "samples/shapes.png"


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((24, 20)) * 255).astype(np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- --force replaces only what cnn wrote


def test_apply_force_keeps_a_users_file_in_an_image_folder(image, tmp_path):
    out = tmp_path / "out"
    assert cnn("apply", image, "-o", out, "--bank", "edges").exit_code == 0
    (out / "img" / "thesis.tex").write_text("three years")
    result = cnn("apply", image, "-o", out, "--bank", "edges", "--force")
    assert result.exit_code == 1 and "thesis.tex" in result.stderr and "did not write" in result.stderr, result.output
    assert (out / "img" / "thesis.tex").read_text() == "three years"
    (out / "img" / "thesis.tex").unlink()  # with only cnn's files, --force replaces the folder
    assert cnn("apply", image, "-o", out, "--bank", "edges", "--force").exit_code == 0


def test_apply_force_keeps_a_users_index_and_a_users_file_named_as_a_folder(image, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("<p>my own page</p>")
    (out / "img").write_text("not a folder of cnn's")
    other = tmp_path / "other.png"
    other.write_bytes(image.read_bytes())
    result = cnn("apply", image, other, "-o", out, "--bank", "edges", "--force")
    assert result.exit_code == 3 and "img is a file, which cnn did not write" in result.stderr, result.output
    assert (out / "index.html").read_text() == "<p>my own page</p>" and "not written by cnn" in result.output
    assert (out / "img").read_text() == "not a folder of cnn's" and (out / "other" / "manifest.json").is_file()


def test_apply_force_replaces_cnns_own_index(image, tmp_path):
    out = tmp_path / "out"
    assert cnn("apply", image, "-o", out, "--bank", "edges").exit_code == 0
    before = (out / "index.html").stat().st_ino
    result = cnn("apply", image, "-o", out, "--bank", "edges:sobel_x", "--force")
    assert result.exit_code == 0 and "not written by cnn" not in result.output, result.output
    assert (out / "index.html").stat().st_ino != before  # written anew, by a rename


def test_units_force_keeps_a_users_file(image, tmp_path):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    result = cnn("units", image, "--bank", "edges", "--layer", "0", "-o", keep, "--force")
    assert result.exit_code == 1 and "notes.txt" in result.stderr, result.output
    assert (keep / "notes.txt").read_text() == "mine"
    (keep / "notes.txt").unlink()
    assert cnn("units", image, "--bank", "edges", "--layer", "0", "-o", keep, "--force").exit_code == 0
    assert cnn("units", image, "--bank", "edges", "--layer", "0", "-o", keep, "--force").exit_code == 0


def test_explain_force_keeps_a_users_file(image, tmp_path):
    model = save_tiny_model(tmp_path / "tiny.npz")
    out = tmp_path / "ex"
    assert cnn("explain", image, "--model", model, "-o", out).exit_code == 0
    (out / "img" / "draft.md").write_text("mine")
    result = cnn("explain", image, "--model", model, "-o", out, "--force")
    assert result.exit_code == 1 and "draft.md" in result.stderr, result.output
    assert (out / "img" / "draft.md").read_text() == "mine"


# --------------------------------------------------------------------------- apply's rerun and summary


def test_rerun_into_an_existing_output_says_so_in_one_line(image, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(image.read_bytes())
    out = tmp_path / "out"
    first = cnn("apply", folder, "-o", out, "--bank", "edges")
    assert first.exit_code == 0 and f"report: {out / 'index.html'}" in first.stderr, first.output
    again = cnn("apply", folder, "-o", out, "--bank", "edges")
    assert again.exit_code == 1, again.output
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and "all 3 outputs exist" in lines[0] and "--force" in lines[0] \
        and "--skip-existing" in lines[0], again.output
    (folder / "3.png").write_bytes(image.read_bytes())  # one new image: the rest are said in one line too
    mixed = cnn("apply", folder, "-o", out, "--bank", "edges")
    assert mixed.exit_code == 3 and "Error: 3 outputs exist" in mixed.stderr, mixed.output
    assert (out / "3" / "manifest.json").is_file()


# --------------------------------------------------------------------------- explain: long thin images


@pytest.mark.parametrize("size", [(1, 100000), (10, 10000)])
def test_explain_bounds_the_overlay_of_a_long_thin_image(tmp_path, size):
    from cnn_cli.explain import OVERLAY_MAX_SIDE, memory_needed

    path = tmp_path / "strip.png"
    Image.fromarray(np.full(size, 128, np.uint8)).save(path)
    model = save_tiny_model(tmp_path / "tiny.npz")
    result = cnn("explain", path, "--model", model, "-o", tmp_path / "ex")
    assert result.exit_code == 0, result.output
    (overlay,) = (tmp_path / "ex" / "strip").glob("overlay_*.png")
    with Image.open(overlay) as im:
        assert max(im.size) <= max(OVERLAY_MAX_SIDE, size[1]) and im.size[1] < 200, im.size
    assert memory_needed(*size, 1) < 50 * 2**20  # was 14.5 GB for the 1x100000 strip
    (cam,) = (tmp_path / "ex" / "strip").glob("cam_*.npy")
    assert np.load(cam).shape == size


def test_explain_refuses_an_image_over_the_memory_limit_before_decoding_it(tmp_path, monkeypatch, image):
    model = save_tiny_model(tmp_path / "tiny.npz")
    monkeypatch.setenv("CNN_MAX_MEMORY", "1MB")
    result = cnn("explain", image, SHAPES, "--model", model, "-o", tmp_path / "ex")
    assert result.exit_code == 3 and "shapes.png: explaining this" in result.stderr, result.output
    assert "CNN_MAX_MEMORY" in result.stderr and (tmp_path / "ex" / "img" / "explain.json").is_file()


# --------------------------------------------------------------------------- units: -k, unusable images, -o


def test_units_k_is_bounded_by_the_images_there_are(image, tmp_path):
    out = tmp_path / "u"
    result = cnn("units", image, SHAPES, "--bank", "edges", "--layer", "0", "-k", "1000000000", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    with np.load(out / "patches.npz", allow_pickle=False) as npz:
        assert npz["layer0"].shape[:2] == (11, 2)  # 11 channels, one patch per image


def test_top_patches_refuses_more_than_the_memory_limit(monkeypatch):
    from cnn_cli import units as U

    monkeypatch.setenv("CNN_MAX_MEMORY", "1MB")
    top = U.TopPatches(64, 10**9, U.Field((41, 41), (1, 1), (-20, -20)), 3)
    maps = np.random.default_rng(0).random((32, 64, 5, 5)).astype(np.float32)
    with pytest.raises(U.UnitsError, match="smaller -k"):
        top.add(maps, np.zeros((32, 3, 5, 5), np.float32), [f"{i}.png" for i in range(32)])


def test_units_names_the_image_and_cause_when_none_can_be_used(tmp_path):
    strip = tmp_path / "strip.png"
    Image.fromarray(np.zeros((1, 500), np.uint8)).save(strip)
    result = cnn("units", strip, "--bank", "edges", "--layer", "0", "-o", tmp_path / "u")
    assert result.exit_code == 1 and "strip.png" in result.stderr and "no image could be used" in result.stderr, \
        result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_units_checks_its_output_before_reading_any_image(image, tmp_path, monkeypatch):
    from cnn_cli import units as U

    def refuse(path):
        raise PermissionError(13, "Permission denied")

    def never(self, item):
        raise AssertionError("an image was read before -o was checked")

    monkeypatch.setattr(U, "check_writable", refuse)
    monkeypatch.setattr(U.UnitsSink, "load", never)
    result = cnn("units", image, "--bank", "edges", "--layer", "0", "-o", tmp_path / "u")
    assert result.exit_code == 1 and "Permission denied" in result.stderr, result.output


# --------------------------------------------------------------------------- evaluate: many classes


@pytest.fixture
def many_classes(tmp_path):
    """A tiny model of 10,000 classes and a folder of 6 images in 3 of them."""
    from cnn_cli.modelfile import ModelMeta, build_network, save_model
    from tinymodel import META

    classes = [f"c{i:05d}" for i in range(10_000)]
    meta = ModelMeta.from_parts({**META, "classes": classes})
    model = tmp_path / "many.npz"
    save_model(model, build_network(meta, seed=0), meta)
    rng = np.random.default_rng(1)
    for name in classes[:3]:
        (tmp_path / "set" / name).mkdir(parents=True)
        for j in range(2):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(tmp_path / "set" / name / f"{j}.png")
    return model, tmp_path / "set", classes


def test_evaluate_with_many_classes_prints_a_capped_table_and_sparse_json(many_classes):
    model, dataset, classes = many_classes
    printed = cnn("evaluate", dataset, "--model", model)
    assert printed.exit_code == 0, printed.output
    assert len(printed.stdout.splitlines()) < 60 and "most confused" in printed.stdout, printed.stdout
    result = cnn("evaluate", dataset, "--model", model, "--json")
    report = json.loads(result.stdout)
    assert report["confusion_format"] == "cells" and len(report["per_class"]) == 10_000
    assert sum(count for _, _, count in report["confusion"]) == 6 and len(report["confusion"]) <= 6
    right = sum(count for true, predicted, count in report["confusion"] if true == predicted)
    assert report["accuracy"] == pytest.approx(right / 6)
    assert all(true in classes[:3] and predicted in classes for true, predicted, _ in report["confusion"])


def test_sparse_and_dense_reports_agree():
    from cnn_cli import evaluation as E

    rng = np.random.default_rng(2)
    labels, predictions = rng.integers(0, 7, 50), rng.integers(0, 7, 50)
    classes = [f"k{i}" for i in range(7)]
    dense = E.evaluation_report(labels, predictions, classes)
    sparse = E.evaluation_report(labels, predictions, classes + [f"x{i}" for i in range(E.DENSE_CLASSES_MAX)])
    assert dense["confusion_format"] == "matrix" and sparse["confusion_format"] == "cells"
    assert sparse["accuracy"] == dense["accuracy"]
    assert all(sparse["per_class"][c] == dense["per_class"][c] for c in classes)
    matrix = np.array(dense["confusion"])
    assert {(t, p): n for t, p, n in sparse["confusion"]} == \
        {(classes[i], classes[j]): int(matrix[i, j]) for i, j in zip(*np.nonzero(matrix))}
    assert [c[2] for c in E.most_confused(dense, 5)] == [c[2] for c in E.most_confused(sparse, 5)]
    assert all(t != p for t, p, _ in E.most_confused(sparse, 5))


# --------------------------------------------------------------------------- one line, never a traceback


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["banks"], ["info", "lenet"], ["predict", SHAPES, "--model", "MODEL"],
                                  ["predict", SHAPES, "--model", "MODEL", "--json"]])
def test_results_to_a_full_device_end_in_one_line(args, tmp_path):
    model = save_tiny_model(tmp_path / "tiny.npz")
    args = [str(model) if a == "MODEL" else a for a in args]
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "cnn_cli", *args], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == ["Error: cannot write the results: No space left on device"], \
        done.stderr


def test_predict_and_evaluate_say_out_of_memory_in_one_line(tmp_path, monkeypatch):
    from cnn_cli import inference

    def exhausted(network, x, batch_size=256):
        raise MemoryError

    model = save_tiny_model(tmp_path / "tiny.npz")
    monkeypatch.setattr(inference, "predict_batches", exhausted)
    result = cnn("predict", SHAPES, "--model", model)
    assert result.exit_code == 1 and result.stderr.strip() == \
        f"Error: {SHAPES}: out of memory (the model reads 8x8 images)", result.output
    for name in ("cat", "dog"):
        (tmp_path / "set" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "set" / name / "a.png")
    result = cnn("evaluate", tmp_path / "set", "--model", model)
    assert result.exit_code == 1 and "out of memory" in result.stderr and "8x8" in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_model_whose_image_size_has_5000_digits_is_named(tmp_path):
    model = save_tiny_model(tmp_path / "tiny.npz")
    arrays = dict(np.load(model, allow_pickle=False))
    meta = bytes(arrays["__meta__"]).decode().replace('"image_size": 8', '"image_size": 1' + "0" * 5000)
    assert meta != bytes(arrays["__meta__"]).decode()
    arrays["__meta__"] = np.frombuffer(meta.encode(), np.uint8)
    np.savez(tmp_path / "big.npz", **arrays)
    result = cnn("predict", SHAPES, "--model", tmp_path / "big.npz")
    assert result.exit_code == 1 and f"{tmp_path / 'big.npz'}: damaged metadata" in result.stderr, result.output


# --------------------------------------------------------------------------- banks show


def test_banks_show_without_a_bank_names_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cnn("banks", "show")
    assert result.exit_code == 2 and "edges" in result.stderr and "cnn banks show edges" in result.stderr, \
        result.output
    assert list(tmp_path.iterdir()) == []


def test_banks_show_by_default_writes_a_named_file_it_replaces_on_a_rerun(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        result = cnn("banks", "show", "edges")
        assert result.exit_code == 0 and "edges.kernels.png" in result.stderr, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["edges.kernels.png"]
    (tmp_path / "corners.kernels.png").write_bytes(b"a file of the user's")
    before = (tmp_path / "corners.kernels.png").read_bytes()
    result = cnn("banks", "show", "corners")
    assert result.exit_code == 1 and "--force" in result.stderr, result.output
    assert (tmp_path / "corners.kernels.png").read_bytes() == before


def test_the_colour_bank_is_drawn_in_colour_with_channel_letters():
    from cnn_cli.filterbank import load_bank
    from cnn_cli.viz import kernel_tiles

    bank = load_bank("color")
    (tile,) = kernel_tiles([bank.kernels[0].weights])
    pixels = np.asarray(tile).astype(int)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() > 40  # not grey
    (grey,) = kernel_tiles([bank.kernels[0].weights[0]])
    assert np.array_equal(np.asarray(grey)[..., 0], np.asarray(grey)[..., 1])


def test_explain_records_the_true_class_of_an_image_in_a_class_folder(image, tmp_path):
    model = save_tiny_model(tmp_path / "tiny.npz")
    (tmp_path / "set" / "cat").mkdir(parents=True)
    labelled = tmp_path / "set" / "cat" / "a.png"
    labelled.write_bytes(image.read_bytes())
    result = cnn("explain", labelled, image, "--model", model, "-o", tmp_path / "ex")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "ex" / "a" / "explain.json").read_text())["true_class"] == "cat"
    assert json.loads((tmp_path / "ex" / "img" / "explain.json").read_text())["true_class"] is None
    assert "(true class: cat)" in (tmp_path / "ex" / "index.html").read_text()


# --------------------------------------------------------------------------- the reports


def test_learning_curves_tick_whole_epochs_only():
    from cnn_cli.plots import learning_curves

    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5, "val_loss": None, "val_accuracy": None}
               for e in (1, 2, 3)]
    fig = learning_curves(history)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_raw_only_page_says_nothing_of_drawing_and_adam_lists_no_momentum(image, tmp_path, trained_html_class):
    out = tmp_path / "out"
    assert cnn("apply", image, "-o", out, "--bank", "edges", "--save", "raw").exit_code == 0
    page = (out / "img" / "index.html").read_text()
    assert "maps drawn" not in page and "features.npz" in page
    assert cnn("apply", image, "-o", tmp_path / "drawn", "--bank", "edges").exit_code == 0
    assert "maps drawn" in (tmp_path / "drawn" / "img" / "index.html").read_text()
    report = (trained_html_class.root / "m.report.html").read_text()
    assert ">optimizer<" in report and ">adam<" in report and ">momentum<" not in report


def test_the_index_lists_images_by_name_and_captions_break_between_words(image, tmp_path):
    paths = []
    for name in ("c", "b", "a"):  # given, and so finished, in the reverse of name order
        paths.append(tmp_path / f"{name}.png")
        paths[-1].write_bytes(image.read_bytes())
    assert cnn("apply", *paths, "-o", tmp_path / "out", "--bank", "edges").exit_code == 0
    page = (tmp_path / "out" / "index.html").read_text()
    assert page.index('"a/index.html"') < page.index('"b/index.html"') < page.index('"c/index.html"')
    assert "break-all" not in page.split("figcaption{", 1)[1].split("}", 1)[0]


def test_grids_of_a_small_input_are_not_postage_stamps(tmp_path):
    from cnn_cli.viz import GRID_TILE_MIN

    small = tmp_path / "small.png"
    Image.fromarray((np.random.default_rng(3).random((32, 32)) * 255).astype(np.uint8)).save(small)
    assert cnn("apply", small, "-o", tmp_path / "out", "--bank", "edges", "--save", "grids").exit_code == 0
    with Image.open(tmp_path / "out" / "small" / "layer0_grid.png") as grid:
        assert grid.size[0] >= 4 * GRID_TILE_MIN >= 4 * 96  # 11 maps: 4 columns of tiles 3 times the input


def test_a_copied_report_keeps_its_input_and_force_replaces_the_copy(image, tmp_path):
    import shutil

    out = tmp_path / "out"
    assert cnn("apply", image, "-o", out, "--bank", "edges").exit_code == 0
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "out")
    image.unlink()  # the input is gone, as on another machine
    with Image.open(moved / "img" / "input.jpg") as im:
        assert im.size == (20, 24)
    assert 'src="input.jpg"' in (moved / "img" / "index.html").read_text()
    assert '"img/input.jpg"' in (moved / "index.html").read_text()
    from cnn_cli.owned import foreign_files

    assert foreign_files(out / "img") == []  # the copy is cnn's: --force may replace the folder
