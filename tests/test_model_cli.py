"""``cnn train``, ``evaluate``, ``predict``, ``info``, ``apply --model`` and
``banks show --model`` through typer's CliRunner with real files, and
``cnn train`` in a subprocess for Ctrl-C / SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnn_cli.cli import app
from cnn_cli.data import load_images
from cnn_cli.modelfile import load_model, preprocess
from cnn_cli.inference import predict_batches

from digits import PATTERNS, write_patterns

CLASSES = sorted(PATTERNS)
REPO = Path(__file__).resolve().parent.parent


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_error_line(result, code=1):
    """Exit ``code``, exactly one "Error:" line, and no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "data"
    write_patterns(root, per_class=10, seed=3)
    return root


@pytest.fixture(scope="module")
def model(dataset):
    """A model trained by the CLI: (path, CliRunner result)."""
    out = dataset.parent / "m.npz"
    result = invoke("train", dataset, "-o", out, "--epochs", 2, "--batch-size", 8)
    assert result.exit_code == 0, result.output
    return out, result


@pytest.fixture()
def image(tmp_path):
    """A 24x24 RGB image of vertical stripes (another size and colour than the model's)."""
    x = np.arange(24)
    stripes = (127 + 100 * np.sin(2 * np.pi * x / 4.2))[None, :].repeat(24, axis=0)
    rgb = np.stack([stripes, stripes * 0.8, stripes * 0.6], axis=-1).astype(np.uint8)
    path = tmp_path / "stripes.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    return path


# --------------------------------------------------------------------------- train


def test_train_writes_the_model_and_its_companions(model):
    out, result = model
    for name in ("m.npz", "m.metrics.json", "m.curves.png", "m.confusion.png", "m.report.html"):
        assert (out.parent / name).is_file(), name
    assert not (out.parent / "m.ckpt.npz").exists()
    assert result.stdout == "", "progress and messages go to stderr"
    assert "epoch 2/2" in result.output
    assert "saved" in result.output
    assert f"report: {out.parent / 'm.report.html'}" in result.output  # where the report is (issue 28)
    _, meta, _ = load_model(out)
    assert meta.classes == CLASSES
    assert meta.training.config.epochs == 2


def test_train_refuses_to_overwrite_without_force(model, dataset):
    out, _ = model
    before = out.read_bytes()
    mtime = out.stat().st_mtime_ns
    result = invoke("train", dataset, "-o", out, "--epochs", 1)
    assert_one_error_line(result)
    assert "--force" in result.output
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime


def test_train_with_force_replaces_the_model(dataset, tmp_path):
    out = tmp_path / "m.npz"
    out.write_bytes(b"old")
    result = invoke("train", dataset, "-o", out, "--epochs", 1, "--batch-size", 16, "--force")
    assert result.exit_code == 0, result.output
    load_model(out)


@pytest.mark.parametrize("args,option", [
    (["--epochs", "0"], "--epochs"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "-1"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--batch-size", "0"], "--batch-size"),
    (["--val-split", "1.5"], "--val-split"),
    (["--val-split", "-0.1"], "--val-split"),
    (["--augment", "bogus"], "--augment"),
    (["--augment", "flip,bogus"], "--augment"),
    (["--augment", "shift=0"], "--augment"),
    (["--augment", "shift=2.5px"], "--augment"),
    (["--augment", "rotate=x"], "--augment"),
    (["--augment", "flip=1"], "--augment"),
    (["--augment", "noise,noise"], "--augment"),
    (["--augment-fill", "wrap"], "--augment-fill"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--label-smoothing", "nan"], "--label-smoothing"),
    (["--warmup", "-1"], "--warmup"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--momentum", "1.5"], "--momentum"),
    (["--weight-decay", "-1"], "--weight-decay"),
])
def test_train_usage_errors_exit_2_naming_the_option(dataset, tmp_path, args, option):
    out = tmp_path / "m.npz"
    result = invoke("train", dataset, "-o", out, *args)
    assert result.exit_code == 2, result.output
    assert option in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_train_dataset_and_architecture_problems_exit_1(tmp_path, dataset):
    root = tmp_path / "data"
    write_patterns(root, per_class=2, classes=("blob",))
    result = invoke("train", root, "-o", tmp_path / "m.npz")
    assert_one_error_line(result)
    assert "class" in result.output
    result = invoke("train", tmp_path / "missing", "-o", tmp_path / "m.npz")
    assert_one_error_line(result)
    assert "missing" in result.output
    result = invoke("train", dataset, "-o", tmp_path / "m.npz", "--arch", "nosuch")
    assert_one_error_line(result)
    assert "nosuch" in result.output
    assert not (tmp_path / "m.npz").exists()


def test_train_lists_unreadable_images_before_training(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=4, classes=("blob", "vertical"))
    (root / "blob" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = invoke("train", root, "-o", tmp_path / "m.npz", "--epochs", 1)
    assert result.exit_code == 3, result.output  # the model is saved; a file was skipped
    lines = result.output.splitlines()
    skipped = [i for i, line in enumerate(lines) if "broken.png" in line]
    started = [i for i, line in enumerate(lines) if line.startswith("training ")]
    assert skipped and started and skipped[0] < started[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_train_divergence_on_the_last_batch_is_one_error_line(dataset, tmp_path):
    out = tmp_path / "m.npz"
    result = invoke("train", dataset, "-o", out, "--epochs", 2, "--batch-size", 64, "--lr", "3e38")
    assert_one_error_line(result)
    assert "epoch" in result.output and "--lr" in result.output
    assert not out.exists()


# --------------------------------------------------------------------------- evaluate


def test_evaluate_json(model, dataset):
    out, _ = model
    result = invoke("evaluate", dataset, "--model", out, "--json", "--split", "all")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert isinstance(report, dict)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (3, 3)
    assert confusion.sum() == 30 == report["images"]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 30)
    assert set(report["per_class"]) == set(CLASSES)
    for i, name in enumerate(CLASSES):
        row = report["per_class"][name]
        assert row["recall"] == pytest.approx(confusion[i, i] / confusion[i].sum())
        if confusion[:, i].sum():
            assert row["precision"] == pytest.approx(confusion[i, i] / confusion[:, i].sum())
        else:
            assert row["precision"] is None


def test_evaluate_agrees_with_predicting_every_image(model, dataset):
    out, _ = model
    report = json.loads(invoke("evaluate", dataset, "--model", out, "--json", "--split", "all").stdout)
    result = invoke("predict", dataset, "--model", out, "--json")
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    assert len(predictions) == 30
    confusion = np.zeros((3, 3), int)
    for p in predictions:
        truth = CLASSES.index(Path(p["input"]).parent.name)
        confusion[truth, CLASSES.index(p["predictions"][0]["class"])] += 1
    assert confusion.tolist() == report["confusion"]


def test_evaluate_table(model, dataset):
    out, _ = model
    result = invoke("evaluate", dataset, "--model", out)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.stdout
    for name in CLASSES:
        assert name in result.stdout


def test_evaluate_uses_val_of_a_train_val_dataset(model, tmp_path):
    out, _ = model
    root = tmp_path / "split"
    write_patterns(root / "train", per_class=3, seed=8)
    write_patterns(root / "val", per_class=2, seed=9)
    report = json.loads(invoke("evaluate", root, "--model", out, "--json").stdout)
    assert report["images"] == 6


def test_evaluate_with_an_unreadable_image_exits_3_and_still_reports(model, dataset, tmp_path):
    out, _ = model
    root = tmp_path / "data"
    write_patterns(root, per_class=2, seed=5)
    (root / "blob" / "zz.png").write_bytes(b"garbage")
    result = invoke("evaluate", root, "--model", out, "--json")
    assert result.exit_code == 3, result.output
    report = json.loads(result.stdout)
    assert report["images"] == 6 and np.sum(report["confusion"]) == 6
    assert [Path(p).name for p in report["skipped"]] == ["zz.png"]
    assert "zz.png" in result.output.replace(result.stdout, "")


def test_evaluate_rejects_unknown_classes(model, tmp_path):
    out, _ = model
    root = tmp_path / "other"
    write_patterns(root, per_class=2, classes=("blob", "vertical"))
    (root / "zebra").mkdir()
    (root / "blob" / "000.png").rename(root / "zebra" / "z.png")
    result = invoke("evaluate", root, "--model", out, "--json")
    assert_one_error_line(result)
    assert "zebra" in result.output


# --------------------------------------------------------------------------- predict


def test_predict_top_k_json(model, image):
    out, _ = model
    result = invoke("predict", image, "--model", out, "--top-k", 2, "--json")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert len(answers) == 1 and answers[0]["input"] == str(image)
    predictions = answers[0]["predictions"]
    assert len(predictions) == 2
    assert {p["class"] for p in predictions} <= set(CLASSES)
    probs = [p["probability"] for p in predictions]
    assert probs == sorted(probs, reverse=True)
    assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-6


def test_predict_top_k_above_the_class_count_gives_every_class(model, image):
    out, _ = model
    answers = json.loads(invoke("predict", image, "--model", out, "--top-k", 10, "--json").stdout)
    predictions = answers[0]["predictions"]
    assert sorted(p["class"] for p in predictions) == CLASSES
    assert sum(p["probability"] for p in predictions) == pytest.approx(1, abs=1e-5)


def test_predict_matches_the_library_on_a_resized_colour_image(model, image):
    """predict reads, resizes and normalises an image as training and evaluate do."""
    out, _ = model
    answers = json.loads(invoke("predict", image, "--model", out, "--top-k", 3, "--json").stdout)
    got = {p["class"]: p["probability"] for p in answers[0]["predictions"]}
    network, meta, _ = load_model(out)
    images, ok, _, _ = load_images([image], meta.preprocessing.image_size)
    expected = predict_batches(network, preprocess(images, meta))[0]
    for i, name in enumerate(meta.classes):
        assert got[name] == pytest.approx(float(expected[i]), abs=1e-4), name


def test_predict_plain_output_and_partial_failure(model, image, tmp_path):
    out, _ = model
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    result = invoke("predict", image, broken, "--model", out)
    assert result.exit_code == 3, result.output
    assert str(image) in result.stdout
    assert "broken.png" in result.output and "broken.png" not in result.stdout


# --------------------------------------------------------------------------- bad model files


def _bad_models(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(os.urandom(300))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    return {"missing": tmp_path / "missing.npz", "garbage": garbage, "foreign": foreign}


@pytest.mark.parametrize("which", ["missing", "garbage", "foreign"])
@pytest.mark.parametrize("command", ["evaluate", "predict", "info", "apply", "banks-show"])
def test_a_bad_model_file_is_one_error_line(tmp_path, dataset, image, which, command):
    bad = _bad_models(tmp_path)[which]
    args = {
        "evaluate": ["evaluate", dataset, "--model", bad, "--json"],
        "predict": ["predict", image, "--model", bad],
        "info": ["info", bad],
        "apply": ["apply", image, "--model", bad, "-o", tmp_path / "out"],
        "banks-show": ["banks", "show", "--model", bad, "-o", tmp_path / "k.png"],
    }[command]
    result = invoke(*args)
    assert_one_error_line(result)
    assert bad.name in result.output
    assert result.stdout == ""


# --------------------------------------------------------------------------- info, apply, banks


def test_info_shows_layers_shapes_and_classes(model):
    out, _ = model
    result = invoke("info", out)
    assert result.exit_code == 0, result.output
    text = result.stdout
    for kind in ("conv", "relu", "maxpool", "flatten", "linear"):
        assert kind in text, kind
    for shape in ("(8, 16, 16)", "(16, 4, 4)", "(256,)", "(64,)", "(3,)"):
        assert shape in text, shape
    for name in CLASSES:
        assert name in text
    assert "16x16" in text
    # Receptive fields: 3 after the first conv, 4 after pooling, 8 after the second conv, 10 after pooling.
    for rf in ("3x3", "4x4", "8x8", "10x10"):
        assert rf in text, rf


def test_apply_with_a_model_writes_the_conv_layers_maps(model, image, tmp_path):
    out, _ = model
    result = invoke("apply", image, "--model", out, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / "stripes"
    manifest = json.loads((folder / "manifest.json").read_text())
    network, meta, _ = load_model(out)
    flat_at = next(i for i, s in enumerate(network.shapes) if len(s) != 3)
    layers = manifest["layers"]
    assert [entry["index"] for entry in layers] == list(range(flat_at))
    assert [entry["kind"] for entry in layers] == ["conv", "relu", "maxpool", "conv", "relu", "maxpool"]
    with np.load(folder / "features.npz", allow_pickle=False) as z:
        for entry in layers:
            arr = z[entry["npz_key"]]
            assert arr.dtype == np.float32
            assert list(arr.shape) == entry["shape"] == list(network.shapes[entry["index"]])
            assert len(entry["maps"]) == arr.shape[0]
            for m in entry["maps"]:
                assert (folder / m["png"]).is_file()
        # The maps are the trained network's own activations on the preprocessed image.
        images, _, _, _ = load_images([image], meta.preprocessing.image_size)
        x = preprocess(images, meta)
        for i, layer in enumerate(network.layers[:flat_at]):
            x = layer.forward(x)
            np.testing.assert_allclose(z[f"layer{i}"], x[0], rtol=1e-3, atol=1e-3 * np.abs(x).max())


def test_banks_show_model_draws_the_first_layer(model, tmp_path):
    out, _ = model
    png = tmp_path / "k.png"
    result = invoke("banks", "show", "--model", out, "-o", png)
    assert result.exit_code == 0, result.output
    with Image.open(png) as im:
        assert im.format == "PNG"
    assert "8 kernels" in result.output
    again = invoke("banks", "show", "--model", out, "-o", png)
    assert_one_error_line(again)


@pytest.mark.parametrize("arch", ["alexnet", "resnet", "netvlad"])
def test_every_architecture_trains_and_the_model_commands_take_it(arch, dataset, image, tmp_path):
    out = tmp_path / f"{arch}.npz"
    result = invoke("train", dataset, "-o", out, "--arch", arch, "--epochs", 1, "--batch-size", 16)
    assert result.exit_code == 0, result.output
    _, meta, _ = load_model(out)
    assert meta.architecture.name == arch
    info = invoke("info", out)
    assert info.exit_code == 0, info.output
    assert arch in info.stdout
    predicted = invoke("predict", image, "--model", out, "--json")
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)[0]["predictions"][0]["class"] in CLASSES
    applied = invoke("apply", image, "--model", out, "-o", tmp_path / "maps")
    assert applied.exit_code == 0, applied.output
    manifest = json.loads((tmp_path / "maps" / "stripes" / "manifest.json").read_text())
    assert manifest["layers"] and all(len(entry["shape"]) == 3 for entry in manifest["layers"])
    drawn = invoke("banks", "show", "--model", out, "-o", tmp_path / "k.png")
    assert drawn.exit_code == 0, drawn.output


def test_image_size_and_color_options_are_recorded(dataset, tmp_path):
    out = tmp_path / "m.npz"
    result = invoke("train", dataset, "-o", out, "--epochs", 1, "--image-size", 12, "--color", "rgb",
                    "--optimizer", "sgd", "--lr", "0.01", "--schedule", "cosine", "--seed", 9)
    assert result.exit_code == 0, result.output
    _, meta, _ = load_model(out)
    pre = meta.preprocessing
    assert (pre.image_size, pre.color, pre.channels) == (12, "rgb", 3)
    assert len(pre.mean) == len(pre.std) == 3
    config = meta.training.config
    assert (config.optimizer, config.lr, config.schedule, config.seed) == ("sgd", 0.01, "cosine", 9)


def test_resume_from_a_finished_model_is_refused(model, dataset, tmp_path):
    out, _ = model
    result = invoke("train", dataset, "-o", tmp_path / "again.npz", "--resume", out)
    assert_one_error_line(result)
    assert "checkpoint" in result.output


# --------------------------------------------------------------------------- signals


EPOCHS = 5


@pytest.fixture(scope="module")
def bigger_dataset(tmp_path_factory):
    """Enough images that an epoch takes a good fraction of a second, so the
    signal sent after the first epoch arrives well before the last one ends."""
    root = tmp_path_factory.mktemp("signals") / "data"
    write_patterns(root, per_class=80, size=32, seed=4)
    return root


def _train_and_signal(dataset, out, signum):
    """Start ``cnn train``; send ``signum`` once "epoch 1/" is on stderr. Returns (code, stderr)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnn_cli", "train", str(dataset), "-o", str(out), "--epochs", str(EPOCHS),
         "--batch-size", "8"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=REPO, env=env)
    killer = threading.Timer(120, proc.kill)  # never hang the test suite
    killer.start()
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("epoch 1/"):
                proc.send_signal(signum)
                break
        else:
            proc.wait()
            pytest.fail(f"cnn train ended (exit {proc.returncode}) before its first epoch:\n" + "".join(lines))
        rest = proc.stderr.read()
        proc.wait(timeout=120)
        return proc.returncode, "".join(lines) + rest
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_exits_128_plus_signal(bigger_dataset, tmp_path, signum, code):
    out = tmp_path / "m.npz"
    returncode, stderr = _train_and_signal(bigger_dataset, out, signum)
    assert returncode == code, stderr
    assert "Traceback" not in stderr, stderr
    ckpt = tmp_path / "m.ckpt.npz"
    assert ckpt.is_file(), stderr
    assert not out.exists(), "an interrupted run writes no model"
    assert "--resume" in stderr and str(ckpt) in stderr, stderr
    network, meta, extra = load_model(ckpt)
    assert 1 <= meta.checkpoint.epoch < EPOCHS
    assert len(meta.checkpoint.history) == meta.checkpoint.epoch
    assert any(k.startswith("optim.") for k in extra)
    if signum == signal.SIGINT:
        # The advice in the message works: resume and finish the run.
        result = invoke("train", bigger_dataset, "-o", out, "--resume", ckpt)
        assert result.exit_code == 0, result.output
        assert out.is_file() and not ckpt.exists()
        _, meta, _ = load_model(out)
        assert meta.training.result.epochs_run == EPOCHS


def test_info_rounds_the_validation_accuracy(model):
    """issue 28: info printed 'validation accuracy: 0.9749303621169917'."""
    import re

    out, _ = model
    result = invoke("info", out)
    assert result.exit_code == 0, result.output
    assert re.search(r"validation accuracy: \d\.\d{4}$", result.output, re.M), result.output
