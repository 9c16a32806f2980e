"""The training recipe: initialisation, label smoothing, warm-up, the learning-rate
range test, divergence, early stopping's report, and model files from before them."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from cnn_cli.blocks import NetVLAD
from cnn_cli.cli import app
from cnn_cli.meta import ModelMeta
from cnn_cli.modelfile import META_KEY, load_model, save_model
from cnn_cli.nn import softmax_cross_entropy
from cnn_cli.optim import warmup_factor
from cnn_cli.train import TrainConfig, TrainingError, checkpoint_path, find_lr, fit, prepare
from cnn_cli.trainable import Conv2d, Linear

from clirunner import CliRunner
from digits import PATTERNS, write_patterns


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    root = tmp_path_factory.mktemp("patterns") / "data"
    write_patterns(root, per_class=12)
    return root


@pytest.fixture(scope="module")
def misleading(tmp_path_factory):
    """Validation images carry another class's label, so validation loss rises as training succeeds."""
    root = tmp_path_factory.mktemp("misleading") / "data"
    write_patterns(root / "train", per_class=10, seed=1)
    write_patterns(root / "shuffled", per_class=3, seed=2)
    (root / "val").mkdir()
    for source, target in zip(PATTERNS, PATTERNS[1:] + PATTERNS[:1]):
        (root / "shuffled" / source).rename(root / "val" / target)
    (root / "shuffled").rmdir()
    return root


# --------------------------------------------------------------------------- initialisation


def test_conv_and_linear_start_as_torch_does():
    rng = np.random.default_rng(0)
    conv, linear = Conv2d(64, 3), Linear(500)
    conv.build((16, 20, 20), rng)
    linear.build((800,), rng)
    for layer, fan_in in ((conv, 16 * 9), (linear, 800)):
        bound = 1 / math.sqrt(fan_in)
        for name, p in layer.params.items():
            assert np.abs(p).max() <= bound, name
            assert p.std() == pytest.approx(bound / math.sqrt(3), rel=0.1), name  # uniform on [-b, b]


def test_a_fresh_network_starts_near_the_loss_of_guessing(patterns):
    prep = prepare(patterns, TrainConfig(seed=3))
    logits = prep.network.forward(prep.x_train, train=False)
    loss, _, _ = softmax_cross_entropy(logits, prep.y_train)
    assert abs(loss - math.log(3)) < 0.1, loss


def test_netvlad_starts_from_unit_centroids_and_their_soft_assignment():
    layer = NetVLAD(clusters=5)
    layer.build((12, 4, 4), np.random.default_rng(0))
    c = layer.params["centroids"]
    assert (c >= 0).all() and np.allclose(np.linalg.norm(c, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(layer.params["conv.weight"][:, :, 0, 0], 2 * NetVLAD.ALPHA * c, rtol=1e-6)
    np.testing.assert_allclose(layer.params["conv.bias"], -NetVLAD.ALPHA * np.ones(5), rtol=1e-6)


# --------------------------------------------------------------------------- label smoothing


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_label_smoothing_loss_and_gradient(eps):
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 4)).astype(np.float32) * 3
    labels = rng.integers(0, 4, 6)
    loss, grad, _ = softmax_cross_entropy(logits, labels, eps)
    z = logits.astype(np.float64)
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    target = np.full((6, 4), eps / 4) + (1 - eps) * np.eye(4)[labels]
    assert loss == pytest.approx(-(target * log_p).sum(1).mean(), rel=1e-5)
    np.testing.assert_allclose(grad, (np.exp(log_p) - target) / 6, atol=1e-6)


def test_label_smoothing_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((5, 3)).astype(np.float32)
    labels = rng.integers(0, 3, 5)
    t = torch.from_numpy(logits.astype(np.float64)).requires_grad_(True)
    want = torch.nn.functional.cross_entropy(t, torch.from_numpy(labels), label_smoothing=0.2)
    want.backward()
    loss, grad, _ = softmax_cross_entropy(logits, labels, 0.2)
    assert loss == pytest.approx(want.item(), rel=1e-5)
    np.testing.assert_allclose(grad, t.grad.numpy(), atol=1e-6)


# --------------------------------------------------------------------------- warm-up


def test_warmup_factor_rises_linearly_batch_by_batch():
    assert [warmup_factor(0, b, 4, 2) for b in range(4)] == [1 / 8, 2 / 8, 3 / 8, 4 / 8]
    assert [warmup_factor(1, b, 4, 2) for b in range(4)] == [5 / 8, 6 / 8, 7 / 8, 1.0]
    assert warmup_factor(2, 0, 4, 2) == 1.0 and warmup_factor(0, 0, 4, 0) == 1.0


def test_warmup_scales_any_schedule(tmp_path, patterns):
    prep = prepare(patterns, TrainConfig(epochs=3, batch_size=8, warmup=2, schedule="cosine", lr=0.01))
    rates = []
    fit(prep, tmp_path / "m.npz", on_batch=lambda e, b, n, *_: rates.append((e, b, n, prep.optimizer.lr)))
    for epoch, batch, batches, lr in rates:
        cosine = 0.01 * 0.5 * (1 + math.cos(math.pi * epoch / 3))
        assert lr == pytest.approx(cosine * min(1, ((epoch * batches) + batch) / (2 * batches))), (epoch, batch)


# --------------------------------------------------------------------------- the range test


def test_find_lr_sweeps_rates_upwards_and_suggests_a_tenth_of_where_the_loss_bottoms_out(patterns):
    prep = prepare(patterns, TrainConfig(batch_size=8))
    finding = find_lr(prep, steps=60)
    rates = np.array(finding.rates)
    # Rates grow by (10 / 1e-7) ** (1 / 59) a batch, until the end or until the loss runs away
    # past 4 times its lowest mean (from rates near 1e-1 on these patterns).
    assert 40 <= len(rates) <= 60 and rates[0] == pytest.approx(1e-7)
    assert np.allclose(np.diff(np.log(rates)), np.log(1e8) / 59)
    assert len(finding.losses) == len(finding.smoothed) == len(rates)
    assert finding.smoothed[10] == pytest.approx(np.mean(finding.losses[6:15]))
    assert finding.lowest in finding.rates and finding.suggestion == pytest.approx(finding.lowest / 10)
    low, first = min(finding.smoothed), finding.smoothed[0]
    at = finding.rates.index(finding.lowest)
    assert finding.smoothed[at] <= low + 0.02 * (first - low) < min(finding.smoothed[:at])
    assert 1e-4 < finding.suggestion < 1e-2, finding.suggestion  # Adam's usual 1e-3, give or take


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_find_lr_stops_once_the_loss_runs_away(patterns):
    prep = prepare(patterns, TrainConfig(batch_size=8, optimizer="sgd"))
    finding = find_lr(prep, steps=60, end=1e6)
    assert len(finding.rates) < 60
    assert finding.lowest < 10


def test_find_lr_writes_a_plot_and_prints_a_rate_and_trains_nothing(tmp_path, patterns):
    out = tmp_path / "m.npz"
    result = invoke("train", patterns, "-o", out, "--find-lr", "--batch-size", 8)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"suggested --lr \S+\n", result.stdout), result.stdout
    float(result.stdout.split()[-1])
    with Image.open(tmp_path / "m.lr.png") as im:
        assert im.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.lr.png"]
    result = invoke("train", patterns, "-o", out, "--find-lr", "--resume", tmp_path / "x.ckpt.npz")
    assert result.exit_code == 2, result.output


# --------------------------------------------------------------------------- divergence


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_a_loss_growing_a_hundredfold_stops_training_before_it_is_infinite(tmp_path, patterns):
    prep = prepare(patterns, TrainConfig(epochs=3, batch_size=8, lr=1e6))
    with pytest.raises(TrainingError) as info:
        fit(prep, tmp_path / "m.npz")
    message = str(info.value)
    assert re.search(r"training diverged: the loss rose to \S+ at epoch 1, batch \d+, over 100 times", message)
    assert "--lr (now 1e+06)" in message and "no model was written" in message
    assert "\n" not in message
    assert not (tmp_path / "m.npz").exists() and not checkpoint_path(tmp_path / "m.npz").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_leaves_the_last_good_checkpoint_as_it_was(tmp_path, patterns):
    model = tmp_path / "m.npz"
    prep = prepare(patterns, TrainConfig(epochs=3, batch_size=8, seed=1))
    saved = {}

    def after_epoch(h):
        saved[h["epoch"]] = checkpoint_path(model).read_bytes()
        prep.config.lr = 1e6  # the next epoch runs at this rate

    with pytest.raises(TrainingError, match=r"epoch 2, batch \d+") as info:
        fit(prep, model, on_epoch=after_epoch)
    assert f"{checkpoint_path(model)} still holds epoch 1" in str(info.value)
    assert checkpoint_path(model).read_bytes() == saved[1]
    assert not model.exists()
    load_model(checkpoint_path(model))  # whole and finite


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_the_command_names_epoch_and_batch_in_one_line_and_exits_1(tmp_path, patterns):
    out = tmp_path / "m.npz"
    result = invoke("train", patterns, "-o", out, "--lr", "1e6", "--epochs", 3, "--batch-size", 8)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert re.search(r"epoch 1, batch \d+.*lower --lr", errors[0]), errors[0]
    assert not out.exists()


# --------------------------------------------------------------------------- early stopping's report


def test_early_stopping_records_the_kept_epoch(tmp_path, misleading):
    prep = prepare(misleading, TrainConfig(epochs=12, batch_size=8, patience=2, seed=2))
    history = fit(prep, tmp_path / "m.npz")
    val = [h["val_loss"] for h in history]
    kept = int(np.argmin(val)) + 1
    assert len(history) == kept + 2 < 12
    metrics = json.loads((tmp_path / "m.metrics.json").read_text())
    assert [m["epoch"] for m in metrics if m["kept"]] == [kept]
    _, meta, _ = load_model(tmp_path / "m.npz")
    assert meta.training.result.kept_epoch == kept == prep.result.kept_epoch
    assert meta.training.result.final_val_loss == pytest.approx(val[kept - 1], rel=1e-6)


def test_the_command_says_which_epoch_it_kept(tmp_path, misleading):
    result = invoke("train", misleading, "-o", tmp_path / "m.npz", "--epochs", 12, "--batch-size", 8,
                    "--patience", 2, "--seed", 2)
    assert result.exit_code == 0, result.output
    stopped = re.search(r"stopped early after epoch (\d+): no lower validation loss for 2 epochs; "
                        r"kept the weights of epoch (\d+)", result.output)
    assert stopped, result.output
    assert int(stopped.group(1)) == int(stopped.group(2)) + 2
    assert f"(weights of epoch {stopped.group(2)})" in result.output


def test_without_early_stopping_the_last_epoch_is_kept(tmp_path, patterns):
    prep = prepare(patterns, TrainConfig(epochs=2, batch_size=16))
    fit(prep, tmp_path / "m.npz")
    assert [m["kept"] for m in json.loads((tmp_path / "m.metrics.json").read_text())] == [False, True]
    assert prep.result.kept_epoch == 2


# --------------------------------------------------------------------------- settings and model files


def test_settings_are_recorded_in_the_model(tmp_path, patterns):
    prep = prepare(patterns, TrainConfig(epochs=1, batch_size=16, augment=["shift=2px", "rotate", "erase"],
                                         augment_fill="reflect", label_smoothing=0.1, warmup=1))
    fit(prep, tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        meta = json.loads(z[META_KEY].tobytes().decode("utf-8"))
    config = meta["training"]["config"]
    assert config["augment"] == ["shift=2px", "rotate=15", "erase=0.5"]
    assert (config["augment_fill"], config["label_smoothing"], config["warmup"]) == ("reflect", 0.1, 1)
    assert re.fullmatch(r"[0-9a-f]{64}", meta["training"]["dataset_sha256"])
    assert meta["training"]["kept_epoch"] == 1


@pytest.mark.parametrize("setting, value, message", [
    ("augment", ["spin"], "unknown augmentation"), ("augment_fill", "wrap", "fill"),
    ("label_smoothing", 1.0, "label_smoothing must be at least 0 and below 1"),
    ("warmup", -1, "warmup must be a whole number"), ("val_split", 5.0, "val_split"),
    ("optimizer", "rmsprop", "optimizer must be one of sgd, adam"), ("batch_size", 0, "batch_size"),
    ("schedule", "onecycle", "schedule"), ("lr", float("nan"), "lr"), ("epochs", True, "epochs"),
])
def test_bad_settings_are_refused_before_any_image_is_read(tmp_path, setting, value, message):
    with pytest.raises(ValueError, match=message):
        prepare(tmp_path / "no such folder", TrainConfig(**{setting: value}))


#: The metadata of a model written before augment_fill, label_smoothing, warmup,
#: dataset_sha256, kept_epoch and a checkpoint's early_loss existed.
OLD_META = {
    "format": "cnn-model", "format_version": 1, "cnn_version": "0.1.0",
    "architecture": {"name": "tiny", "layers": [
        {"type": "conv", "out_channels": 2, "kernel_size": 3, "padding": 1}, {"type": "relu"},
        {"type": "flatten"}, {"type": "linear", "out_features": "classes"}]},
    "classes": ["a", "b"],
    "preprocessing": {"image_size": 6, "color": "gray", "channels": 1, "mean": [0.5], "std": [0.25]},
    "training": {"config": {"arch": "lenet", "epochs": 2, "batch_size": 32, "lr": 0.001, "optimizer": "adam",
                            "momentum": 0.9, "weight_decay": 0.0, "schedule": "constant", "val_split": 0.2,
                            "seed": 0, "image_size": 6, "color": "gray", "augment": ["shift", "flip"],
                            "patience": None, "init_bank": None, "max_pixels": 100000000},
                 "split": "stratified 0.2 of each class to validation, seed 0", "train_images": 8,
                 "val_images": 2, "epochs_run": 2, "history": [], "final_val_loss": 0.5,
                 "final_val_accuracy": 1.0, "finished": "2026-12-01T10:00:00+0000"},
    "checkpoint": {"epoch": 1, "batch": 0, "history": [], "sums": [0.0, 0, 0], "best_loss": None,
                   "bad_epochs": 0},
}


def test_model_files_from_before_these_settings_still_load(tmp_path):
    meta = ModelMeta.from_json(json.loads(json.dumps(OLD_META)))
    config = meta.training.config
    assert (config.augment_fill, config.label_smoothing, config.warmup) == ("zeros", 0.0, 0)
    assert meta.checkpoint.early_loss is None
    written = meta.to_json()
    assert "dataset_sha256" not in written["training"] and "kept_epoch" not in written["training"]
    assert written["checkpoint"] == OLD_META["checkpoint"]
    from cnn_cli.modelfile import build_network

    save_model(tmp_path / "old.npz", build_network(meta), meta)
    _, again, _ = load_model(tmp_path / "old.npz")
    assert again.training.config.augment == ["shift", "flip"]
