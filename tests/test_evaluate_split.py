"""Honest evaluation: `cnn evaluate` on the folder a model was trained on scores the
held-out images unless told otherwise, and says what it scored."""

from __future__ import annotations

import json
import shutil

import pytest

from cnn_cli import data as D
from cnn_cli.cli import app
from cnn_cli.inference import SplitError, choose_images
from cnn_cli.modelfile import load_model

from clirunner import CliRunner
from digits import write_patterns


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model trained by the CLI on a flat folder of 3 x 10 images (val split 0.3, seed 4)."""
    base = tmp_path_factory.mktemp("honest")
    root = base / "data"
    write_patterns(root, per_class=10, seed=5)
    model = base / "m.npz"
    result = invoke("train", root, "-o", model, "--epochs", 1, "--batch-size", 8, "--val-split", 0.3, "--seed", 4)
    assert result.exit_code == 0, result.output
    return root, model


def evaluate(*args):
    result = invoke("evaluate", *args, "--json")
    return result, (json.loads(result.stdout) if result.exit_code == 0 else None)


def held_out(root, fraction=0.3, seed=4):
    return {str(p) for p in D.find_dataset(root, fraction, seed).val.paths}


def test_the_training_folder_is_recognised_and_its_held_out_part_scored(trained):
    root, model = trained
    result, report = evaluate(root, "--model", model)
    assert result.exit_code == 0, result.output
    assert report["split"] == "val" and report["training_folder"] is True
    assert report["images"] == 9  # 0.3 of 10, of each of 3 classes
    assert "is the folder the model was trained on: scoring its 9 held-out validation images" in result.stderr
    _, meta, _ = load_model(model)
    chosen = choose_images(root, meta)
    assert {str(p) for p in chosen.paths} == held_out(root)


def test_the_validation_accuracy_is_the_one_training_reported(trained):
    root, model = trained
    _, report = evaluate(root, "--model", model)
    _, meta, _ = load_model(model)
    assert report["accuracy"] == pytest.approx(meta.training.result.final_val_accuracy)


@pytest.mark.parametrize("split, images", [("train", 21), ("all", 30), ("val", 9)])
def test_split_chooses_the_part(trained, split, images):
    root, model = trained
    result, report = evaluate(root, "--model", model, "--split", split)
    assert result.exit_code == 0, result.output
    assert report["images"] == images and report["split"] == split and report["training_folder"]
    if split == "train":
        assert "their accuracy flatters it" in result.stderr


def test_a_copy_of_the_folder_elsewhere_is_still_recognised(trained, tmp_path):
    root, model = trained
    shutil.copytree(root, tmp_path / "copy")
    result, report = evaluate(tmp_path / "copy", "--model", model)
    assert report["split"] == "val" and report["images"] == 9, result.output


def test_another_folder_is_scored_whole_and_cannot_be_split(trained, tmp_path):
    root, model = trained
    shutil.copytree(root, tmp_path / "more")
    shutil.copy(root / "blob" / "000.png", tmp_path / "more" / "blob" / "extra.png")
    result, report = evaluate(tmp_path / "more", "--model", model)
    assert report["split"] == "all" and report["images"] == 31 and not report["training_folder"]
    assert f"scoring all 31 images of {tmp_path / 'more'}" in result.stderr
    result = invoke("evaluate", tmp_path / "more", "--model", model, "--split", "val")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "not the ones the model was trained on" in errors[0] and "--split all" in errors[0]


def test_a_model_that_does_not_record_its_folder_scores_everything(trained, tmp_path):
    root, model = trained
    _, meta, _ = load_model(model)
    meta.training.dataset_sha256 = "0" * 64
    with pytest.raises(SplitError, match="--split all"):
        choose_images(root, meta, "val")
    assert choose_images(root, meta).split == "all"


def test_train_and_val_folders(tmp_path):
    root = tmp_path / "data"
    write_patterns(root / "train", per_class=6, seed=1)
    write_patterns(root / "val", per_class=2, seed=2)
    model = tmp_path / "m.npz"
    assert invoke("train", root, "-o", model, "--epochs", 1, "--batch-size", 8).exit_code == 0
    result, report = evaluate(root, "--model", model)
    assert report["images"] == 6 and report["split"] == "val" and report["training_folder"], result.output
    assert "is the folder the model was trained on: scoring the 6 images of its val/ folder" in result.stderr
    for split, images in (("train", 18), ("all", 24)):
        result, report = evaluate(root, "--model", model, "--split", split)
        assert report["images"] == images and report["training_folder"], result.output
    (root / "train" / "blob" / "000.png").unlink()
    result, report = evaluate(root, "--model", model)
    assert report["images"] == 6 and not report["training_folder"]
    assert "split into train/ and val/" in result.stderr


def test_a_model_trained_on_every_image_says_so(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=4, seed=1)
    model = tmp_path / "m.npz"
    assert invoke("train", root, "-o", model, "--epochs", 1, "--val-split", 0).exit_code == 0
    result, report = evaluate(root, "--model", model)
    assert report["split"] == "all" and report["images"] == 12, result.output
    assert "of which the model was trained on 12" in result.stderr
    result = invoke("evaluate", root, "--model", model, "--split", "val")
    assert result.exit_code == 2 and "--val-split 0" in result.output


def test_bad_split_is_a_usage_error(trained):
    root, model = trained
    result = invoke("evaluate", root, "--model", model, "--split", "test")
    assert result.exit_code == 2 and "--split" in result.output
