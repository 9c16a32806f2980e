"""Training through the library API: data checks, learning, determinism, resume,
early stopping, divergence, and the files a run leaves behind."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest
from PIL import Image

from cnn_cli import data as D
from cnn_cli.augment import canonical
from cnn_cli.data import DatasetError
from cnn_cli.filterbank import load_bank
from cnn_cli.modelfile import META_KEY, load_model
from cnn_cli.train import Interrupted, TrainConfig, TrainingError, checkpoint_path, fit, prepare

from digits import PATTERNS, write_digits, write_patterns

#: A small architecture with every kind of state a checkpoint must carry:
#: batch-norm statistics, dropout (its masks come from the seed) and weights.
STATEFUL_ARCH = """
kind = "architecture"
description = "test: conv, batch norm, dropout"

[[layer]]
type = "conv"
out_channels = 4
kernel_size = 3
padding = 1

[[layer]]
type = "batchnorm"

[[layer]]
type = "relu"

[[layer]]
type = "maxpool"
kernel_size = 2

[[layer]]
type = "flatten"

[[layer]]
type = "dropout"
p = 0.3

[[layer]]
type = "linear"
out_features = "classes"
"""


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    """Three easy classes, 12 images each, 16x16 grey PNGs."""
    root = tmp_path_factory.mktemp("patterns") / "data"
    write_patterns(root, per_class=12)
    return root


@pytest.fixture(scope="module")
def stateful_arch(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "tiny.toml"
    path.write_text(STATEFUL_ARCH)
    return str(path)


def weights_of(network):
    return {k: v.copy() for k, v in network.state_dict().items()}


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"weights differ: {different}"


def run(root, model_path, **config):
    prep = prepare(root, TrainConfig(**config))
    history = fit(prep, model_path)
    return prep, history


# --------------------------------------------------------------------------- learning


def test_training_reduces_the_loss_and_learns_the_patterns(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=20, seed=1)
    messages = []
    prep = prepare(root, TrainConfig(epochs=6, batch_size=8), report=messages.append)
    assert any("16x16" in m for m in messages), messages
    assert any("gray" in m for m in messages), messages
    assert prep.x_train.shape[1:] == (1, 16, 16)
    assert len(prep.y_train) + len(prep.y_val) == 60
    history = fit(prep, tmp_path / "m.npz")
    assert [h["epoch"] for h in history] == list(range(1, 7))
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0] / 3, losses
    assert history[-1]["train_accuracy"] >= 0.9, history[-1]
    assert history[-1]["val_accuracy"] >= 0.9, history[-1]


def test_same_seed_same_weights_other_seed_other_weights(tmp_path, patterns):
    config = dict(epochs=2, batch_size=8, augment=["shift", "flip"])
    a, _ = run(patterns, tmp_path / "a.npz", seed=3, **config)
    b, _ = run(patterns, tmp_path / "b.npz", seed=3, **config)
    c, _ = run(patterns, tmp_path / "c.npz", seed=4, **config)
    assert_same_weights(weights_of(a.network), weights_of(b.network))
    assert not np.array_equal(a.network.state_dict()["0.weight"], c.network.state_dict()["0.weight"])
    # The saved files agree too.
    wa, _, _ = load_model(tmp_path / "a.npz")
    wb, _, _ = load_model(tmp_path / "b.npz")
    assert_same_weights(weights_of(wa), weights_of(wb))


# --------------------------------------------------------------------------- resume


class Signal:
    """A pretend Ctrl-C that arrives after a given (epoch, batch), both 1-based.

    Like the CLI's signal flag, it stays raised until training stops, so it
    does not matter at which poll ``fit`` notices it; ``arm`` sets the next one.
    """

    def __init__(self):
        self.position, self.target = (0, 0), None

    def arm(self, epoch, batch):
        self.target = (epoch, batch)

    def on_batch(self, epoch, batch, batches, *_):
        self.position = (epoch + 1, batch)

    def should_stop(self):
        return "SIGINT" if self.target is not None and self.position >= self.target else None


RESUME_CASES = {
    # (optimizer, augmentations, [(epoch, batch) to stop after; batch None = at the epoch's end])
    "adam-mid-epoch": ("adam", ["shift", "flip", "rotate"], [(2, 2)]),
    "sgd-end-of-epoch": ("sgd", ["flip"], [(1, None)]),
    "adam-twice": ("adam", ["shift"], [(1, 1), (3, 3)]),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, patterns, stateful_arch, case):
    optimizer, augment, stops = RESUME_CASES[case]
    config = dict(arch=stateful_arch, epochs=3, batch_size=8, optimizer=optimizer, augment=augment,
                  seed=5, patience=5)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, history_a = run(patterns, tmp_path / "a" / "m.npz", **config)

    model_b = tmp_path / "b" / "m.npz"
    prep = prepare(patterns, TrainConfig(**config))
    batches = math.ceil(len(prep.y_train) / 8)
    assert batches >= 4, "the stop points below assume at least 4 batches per epoch"
    signal = Signal()
    for epoch, batch in stops:
        signal.arm(epoch, batch or batches)
        with pytest.raises(Interrupted) as info:
            fit(prep, model_b, on_batch=signal.on_batch, should_stop=signal.should_stop)
        signal.target = None
        assert info.value.checkpoint == checkpoint_path(model_b)
        assert not model_b.exists(), "an interrupted run must not write the model"
        _, meta, extra = load_model(checkpoint_path(model_b))
        # Stopped after that batch: a mid-epoch checkpoint, or the end-of-epoch one.
        assert (meta.checkpoint.epoch, meta.checkpoint.batch) == \
            ((epoch - 1, batch) if batch is not None else (epoch, 0))
        assert any(k.startswith("optim.") for k in extra)
        prep = prepare(patterns, TrainConfig(), resume=checkpoint_path(model_b))
        assert prep.config.optimizer == optimizer and prep.config.augment == canonical(augment)
    history_b = fit(prep, model_b, on_batch=signal.on_batch, should_stop=signal.should_stop)

    assert_same_weights(weights_of(a.network), weights_of(prep.network))
    final_a, _, _ = load_model(tmp_path / "a" / "m.npz")
    final_b, _, _ = load_model(model_b)
    assert_same_weights(weights_of(final_a), weights_of(final_b))
    timing = {"seconds", "images_per_second"}
    strip = lambda h: [{k: v for k, v in e.items() if k not in timing} for e in h]  # noqa: E731
    assert strip(history_b) == strip(history_a)
    assert not checkpoint_path(model_b).exists(), "a finished run removes its checkpoint"


def _strict_json(text):
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=reject)


def test_checkpoint_metadata_is_strict_json(tmp_path, patterns):
    prep = prepare(patterns, TrainConfig(epochs=2, batch_size=8))
    signal = Signal()
    signal.arm(1, 2)
    with pytest.raises(Interrupted) as info:
        fit(prep, tmp_path / "m.npz", on_batch=signal.on_batch, should_stop=signal.should_stop)
    with np.load(info.value.checkpoint, allow_pickle=False) as z:
        meta = _strict_json(z[META_KEY].tobytes().decode("utf-8"))
    assert meta["checkpoint"]["batch"] == 2


def test_finished_model_metadata_is_strict_json(tmp_path, patterns):
    run(patterns, tmp_path / "m.npz", epochs=1, batch_size=16)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        _strict_json(z[META_KEY].tobytes().decode("utf-8"))
    _strict_json((tmp_path / "m.metrics.json").read_text())


def test_resume_refuses_a_finished_model(tmp_path, patterns):
    run(patterns, tmp_path / "m.npz", epochs=1, batch_size=16)
    with pytest.raises(TrainingError, match="checkpoint"):
        prepare(patterns, TrainConfig(), resume=tmp_path / "m.npz")


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_restores_the_best_weights(tmp_path):
    # Validation images carry the wrong labels (each class holds another class's
    # pattern), so the better the network learns, the higher the validation loss.
    root = tmp_path / "data"
    write_patterns(root / "train", per_class=10, seed=1)
    write_patterns(root / "shuffled", per_class=3, seed=2)
    (root / "val").mkdir()
    for source, target in zip(PATTERNS, PATTERNS[1:] + PATTERNS[:1]):
        (root / "shuffled" / source).rename(root / "val" / target)
    (root / "shuffled").rmdir()
    prep = prepare(root, TrainConfig(epochs=12, batch_size=8, patience=2, seed=2))
    snapshots = []
    history = fit(prep, tmp_path / "m.npz", on_epoch=lambda h: snapshots.append(weights_of(prep.network)))
    assert len(history) < 12, "precondition: this run should stop early"
    val = [h["val_loss"] for h in history]
    best = int(np.argmin(val))
    assert len(history) == best + 1 + 2, "stops after `patience` epochs without a lower validation loss"
    assert_same_weights(weights_of(prep.network), snapshots[best])
    assert not np.array_equal(snapshots[best]["0.weight"], snapshots[-1]["0.weight"])
    saved, meta, _ = load_model(tmp_path / "m.npz")
    assert_same_weights(weights_of(saved), snapshots[best])
    assert meta.training.result.epochs_run == len(history)
    assert meta.training.result.final_val_loss == pytest.approx(val[best], rel=1e-6)


# --------------------------------------------------------------------------- divergence


def test_nan_loss_raises_naming_epoch_and_batch(tmp_path, patterns):
    prep = prepare(patterns, TrainConfig(epochs=2, batch_size=8))
    prep.x_train[...] = np.nan
    with pytest.raises(TrainingError, match=r"epoch 1, batch 1\b"):
        fit(prep, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    assert not checkpoint_path(tmp_path / "m.npz").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow, by design
def test_huge_learning_rate_raises_and_writes_no_model(tmp_path, patterns):
    prep = prepare(patterns, TrainConfig(epochs=3, batch_size=8, optimizer="sgd", lr=1e6))
    with pytest.raises(TrainingError) as info:
        fit(prep, tmp_path / "m.npz")
    message = str(info.value)
    assert re.search(r"epoch \d+, batch \d+", message), message
    assert "--lr" in message
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_weights_overflowing_on_an_epochs_last_batch_raise_training_error(tmp_path, patterns):
    # One batch per epoch; Adam's first two steps are about lr each, so 3e38
    # takes the weights past float32's largest value while the loss of the
    # batch itself was still finite.
    prep = prepare(patterns, TrainConfig(epochs=3, batch_size=64, lr=3e38))
    with pytest.raises(TrainingError, match=r"epoch \d+, batch \d+"):
        fit(prep, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


# --------------------------------------------------------------------------- the dataset


def test_stratified_split_keeps_every_class_in_both_and_is_seeded():
    labels = np.repeat([0, 1, 2, 3], [10, 7, 3, 2])
    train, val = D.stratified_split(labels, 0.25, seed=1)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    for c, n in enumerate([10, 7, 3, 2]):
        n_val = int(np.sum(labels[val] == c))
        assert n_val == min(max(round(0.25 * n), 1), n - 1), c
        assert np.sum(labels[train] == c) == n - n_val
    again = D.stratified_split(labels, 0.25, seed=1)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    other = D.stratified_split(labels, 0.25, seed=2)
    assert not np.array_equal(other[1], val)


def test_prepare_uses_a_stratified_seeded_split(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=8)
    a = prepare(root, TrainConfig(val_split=0.25, seed=7))
    b = prepare(root, TrainConfig(val_split=0.25, seed=7))
    c = prepare(root, TrainConfig(val_split=0.25, seed=8))
    assert np.bincount(a.y_val).tolist() == [2, 2, 2]
    assert np.bincount(a.y_train).tolist() == [6, 6, 6]
    assert np.array_equal(a.x_val, b.x_val)
    assert not np.array_equal(a.x_val, c.x_val)
    assert "seed 7" in a.meta.training.split


def test_train_and_val_folders_are_the_split(tmp_path):
    root = tmp_path / "data"
    write_patterns(root / "train", per_class=5, seed=1)
    write_patterns(root / "val", per_class=2, seed=2)
    prep = prepare(root, TrainConfig(val_split=0.5))
    assert np.bincount(prep.y_train).tolist() == [5, 5, 5]
    assert np.bincount(prep.y_val).tolist() == [2, 2, 2]
    assert prep.meta.classes == sorted(PATTERNS)
    assert "train/" in prep.meta.training.split


def test_train_and_val_folders_must_have_the_same_classes(tmp_path):
    root = tmp_path / "data"
    write_patterns(root / "train", per_class=2)
    write_patterns(root / "val", per_class=2, classes=("blob", "horizontal"))
    with pytest.raises(DatasetError, match="same class folders"):
        prepare(root, TrainConfig())


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob", "vertical"))
    (root / "nothing_here").mkdir()
    (root / "nothing_here" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match="nothing_here"):
        prepare(root, TrainConfig())


def test_a_single_class_is_an_error(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob",))
    with pytest.raises(DatasetError, match="at least 2"):
        prepare(root, TrainConfig())


def test_missing_dataset_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        prepare(tmp_path / "nope", TrainConfig())


def test_corrupt_images_are_skipped_and_reported_before_training(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=4, classes=("blob", "vertical"))
    bad = root / "blob" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    half = root / "vertical" / "half.png"
    full = (root / "vertical" / "000.png").read_bytes()
    half.write_bytes(full[: len(full) // 2])
    messages = []
    prep = prepare(root, TrainConfig(val_split=0.25), report=messages.append)
    skipped = {str(p) for p, _ in prep.skipped}
    assert skipped == {str(bad), str(half)}
    for p in (bad, half):
        assert any(str(p) in m for m in messages), messages
    assert len(prep.y_train) + len(prep.y_val) == 8
    prep.config.epochs = 1
    fit(prep, tmp_path / "m.npz")
    assert (tmp_path / "m.npz").exists()


def test_hidden_files_and_appledouble_files_are_skipped(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob", "vertical"))
    good = (root / "blob" / "000.png").read_bytes()
    (root / "blob" / ".hidden.png").write_bytes(good)
    (root / "blob" / "._000.png").write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (root / "vertical" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "vertical" / ".thumbs").mkdir()
    (root / "vertical" / ".thumbs" / "t.png").write_bytes(good)
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(good)
    (root / "blob" / ".ipynb_checkpoints").mkdir()
    (root / "blob" / ".ipynb_checkpoints" / "000-checkpoint.png").write_bytes(good)
    messages = []
    prep = prepare(root, TrainConfig(val_split=0.34), report=messages.append)
    assert prep.meta.classes == ["blob", "vertical"]
    assert len(prep.y_train) + len(prep.y_val) == 6
    assert prep.skipped == []
    assert not any("skipped" in m for m in messages), messages


def test_symbolic_links_are_not_followed(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob", "vertical"))
    elsewhere = tmp_path / "elsewhere"
    write_patterns(elsewhere, per_class=2, classes=("horizontal",))
    try:
        (root / "horizontal").symlink_to(elsewhere / "horizontal", target_is_directory=True)
        (root / "blob" / "linked.png").symlink_to(elsewhere / "horizontal" / "000.png")
        (root / "vertical" / "loop").symlink_to(root, target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("cannot make symbolic links here")
    prep = prepare(root, TrainConfig(val_split=0.34))
    assert prep.meta.classes == ["blob", "vertical"]
    assert len(prep.y_train) + len(prep.y_val) == 6


def test_heavily_imbalanced_classes_are_warned_about(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=2, classes=("blob",))
    write_patterns(root, per_class=26, classes=("vertical",))
    messages = []
    prepare(root, TrainConfig(val_split=0.0), report=messages.append)
    assert any("imbalanced" in m for m in messages), messages


def test_images_in_nested_folders_count_for_their_class(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob", "vertical"))
    (root / "blob" / "more").mkdir()
    (root / "blob" / "more" / "x.png").write_bytes((root / "blob" / "000.png").read_bytes())
    prep = prepare(root, TrainConfig(val_split=0.34))
    assert np.bincount(np.concatenate([prep.y_train, prep.y_val])).tolist() == [4, 3]


def test_rgb_images_are_detected_and_kept_in_colour(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob", "vertical"), rgb=True)
    prep = prepare(root, TrainConfig())
    assert prep.config.color == "rgb"
    assert prep.x_train.shape[1] == 3
    assert prep.meta.preprocessing.channels == 3


# --------------------------------------------------------------------------- what a run writes


@pytest.fixture(scope="module")
def trained(tmp_path_factory, patterns):
    out = tmp_path_factory.mktemp("trained") / "model.npz"
    prep, history = run(patterns, out, epochs=2, batch_size=8)
    return out, prep, history


def test_model_file_loads_without_pickle_and_says_everything(trained, patterns):
    out, prep, history = trained
    with np.load(out, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop(META_KEY).tobytes().decode("utf-8"))
    assert meta["format"] == "cnn-model"
    assert meta["architecture"]["name"] == "lenet"
    assert [t["type"] for t in meta["architecture"]["layers"]][:3] == ["conv", "relu", "maxpool"]
    assert meta["classes"] == sorted(PATTERNS)
    pre = meta["preprocessing"]
    assert pre["image_size"] == 16 and pre["color"] == "gray" and pre["channels"] == 1
    # The normalisation is the training images' per-channel mean and std.
    images = np.stack([np.asarray(Image.open(p), np.float64) / 255 for p in
                       sorted(patterns.rglob("*.png")) if str(p) in {str(q) for q in D.find_dataset(
                           patterns, 0.2, 0).train.paths}])
    assert pre["mean"] == pytest.approx([images.mean()], abs=2e-3)
    assert pre["std"] == pytest.approx([images.std()], abs=2e-3)
    training = meta["training"]
    assert training["config"]["epochs"] == 2 and training["config"]["optimizer"] == "adam"
    assert training["epochs_run"] == 2 and len(training["history"]) == 2
    assert training["train_images"] == len(prep.y_train) and training["val_images"] == len(prep.y_val)
    assert 0 <= training["final_val_accuracy"] <= 1
    # Weights by torch state-dict names: "<layer index>.<parameter>".
    assert set(arrays) == {"0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"}
    assert arrays["0.weight"].shape == (8, 1, 3, 3) and arrays["0.weight"].dtype == np.float32
    assert arrays["7.weight"].shape == (64, 16 * 4 * 4)
    assert arrays["9.weight"].shape == (3, 64)
    assert not any(k.startswith("state.") for k in arrays), "a finished model carries no optimizer state"
    network, loaded_meta, extra = load_model(out)
    assert extra == {}
    assert_same_weights(weights_of(network), weights_of(prep.network))


def test_metrics_curves_and_confusion_are_written_next_to_the_model(trained):
    out, prep, history = trained
    metrics = json.loads(out.with_name("model.metrics.json").read_text())
    assert [m["epoch"] for m in metrics] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        assert all(isinstance(m[key], float) for m in metrics), key
    for name in ("model.curves.png", "model.confusion.png"):
        with Image.open(out.with_name(name)) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    assert not checkpoint_path(out).exists()


@pytest.mark.parametrize("rgb", [False, True], ids=["gray", "rgb"])
def test_init_bank_puts_the_banks_kernels_into_the_first_conv(tmp_path, rgb):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob", "vertical"), rgb=rgb)
    plain = prepare(root, TrainConfig(seed=1))
    prep = prepare(root, TrainConfig(seed=1, init_bank="edges"))
    w = prep.network.state_dict()["0.weight"]
    c_in = 3 if rgb else 1
    assert w.shape == (8, c_in, 3, 3)
    fitting = [k for k in load_bank("edges").kernels if k.size[0] <= 3 and k.size[1] <= 3][:8]
    for o, kernel in enumerate(fitting):
        expected = np.zeros((3, 3), np.float32)
        h, ww = kernel.size
        top, left = (3 - 1) // 2 - (h - 1) // 2, (3 - 1) // 2 - (ww - 1) // 2
        expected[top:top + h, left:left + ww] = kernel.weights
        for c in range(c_in):
            np.testing.assert_allclose(w[o, c], expected / c_in, rtol=1e-6, err_msg=kernel.name)
    # Only the first conv layer changes.
    mine, theirs = prep.network.state_dict(), plain.network.state_dict()
    assert [k for k in mine if not np.array_equal(mine[k], theirs[k])] == ["0.weight"]


def test_init_bank_needs_enough_kernels(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=3, classes=("blob", "vertical"))
    with pytest.raises(TrainingError, match="edges:sobel_x"):
        prepare(root, TrainConfig(init_bank="edges:sobel_x"))


# --------------------------------------------------------------------------- digits


def test_digits_reach_97_percent_with_the_default_settings(tmp_path):
    """scikit-learn's 1,797 digits, upscaled to 32x32, 75/25 split: lenet, adam, 20 epochs, batch 32."""
    pytest.importorskip("sklearn")
    n_train, n_val = write_digits(tmp_path / "digits", size=32, seed=0)
    assert (n_train, n_val) == (1348, 449)
    config = TrainConfig()
    assert (config.arch, config.optimizer, config.epochs, config.batch_size) == ("lenet", "adam", 20, 32)
    start = time.perf_counter()
    prep = prepare(tmp_path / "digits", config)
    assert prep.config.image_size == 32 and prep.config.color == "gray"
    assert (len(prep.y_train), len(prep.y_val)) == (1348, 449)
    history = fit(prep, tmp_path / "digits.npz")
    seconds = time.perf_counter() - start
    accuracy = history[-1]["val_accuracy"]
    print(f"\ndigits: validation accuracy {accuracy:.4f} after {len(history)} epochs in {seconds:.1f} s")
    assert accuracy >= 0.97


def test_the_random_streams_of_a_run_never_share_numbers():
    """numpy's SeedSequence ignores trailing zeros, so keys [seed, 0] and [seed, 0, 0] are [seed]:
    each stream's key ends in a non-zero tag, so that epoch 0's shuffle, the first batch of each
    epoch and the initial weights draw their own numbers."""
    from cnn_cli.train import STREAM_TAGS, random_stream

    assert np.random.default_rng([3, 0]).random() == np.random.default_rng([3]).random()  # the trap
    keys = [("shuffle", e) for e in range(3)] + [("batch", e, b) for e in range(3) for b in range(3)]
    firsts = {key: tuple(random_stream(3, *key).random(4)) for key in keys}
    firsts["init"] = tuple(np.random.default_rng([3, STREAM_TAGS["init"]]).random(4))
    firsts["split"] = tuple(np.random.default_rng(3).random(4))  # data.stratified_split's key
    assert len(set(firsts.values())) == len(firsts)
