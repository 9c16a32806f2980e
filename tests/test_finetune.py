"""Fine-tuning (``cnn train --from``): the cut and the new head, frozen weights and batch-norm
statistics, --probe against full training with everything frozen, resume, lineage, refusals,
and a torch twin of the same fine-tune."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clirunner import cnn
from cnn_cli.modelfile import load_model
from cnn_cli.train import Interrupted, TrainConfig, checkpoint_path, fit, prepare

from digits import write_patterns

def architecture(*layers):
    """The text of an architecture file with one ``[[layer]]`` table per dict (JSON's strings and
    numbers are TOML's)."""
    tables = ("\n[[layer]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in t.items()) for t in layers)
    return 'kind = "architecture"\n' + "".join(tables)


def conv(out_channels, kernel_size=3, padding=1):
    return {"type": "conv", "out_channels": out_channels, "kernel_size": kernel_size, "padding": padding}


#: Two conv + batch-norm stages under a global-pooling classifier: the frozen
#: batch norm must keep its statistics while the unfrozen one learns its own.
BN_ARCH = architecture(conv(6), {"type": "batchnorm"}, {"type": "relu"}, conv(8), {"type": "batchnorm"},
                       {"type": "relu"}, {"type": "globalavgpool"}, {"type": "flatten"},
                       {"type": "linear", "out_features": "classes"})

#: A network whose last layer is a 3x3 convolution: no classifier a fine-tune could replace.
NO_CLASSIFIER_ARCH = architecture(conv("classes", padding=0), {"type": "globalavgpool"}, {"type": "flatten"})


#: A SqueezeNet-style classifier: a 1x1 convolution to the classes, then global pooling.
CONV_CLASSIFIER_ARCH = architecture(conv(6), {"type": "relu"}, conv("classes", kernel_size=1, padding=0),
                                    {"type": "relu"}, {"type": "globalavgpool"}, {"type": "flatten"})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A lenet trained briefly on three pattern classes, and a two-class data set to fine-tune on."""
    root = tmp_path_factory.mktemp("finetune")
    write_patterns(root / "three", per_class=10, size=16)
    write_patterns(root / "two", per_class=8, size=16, classes=("horizontal", "vertical"), seed=5)
    model = root / "lenet.npz"
    prep = prepare(root / "three", TrainConfig(epochs=2, image_size=16, seed=1))
    fit(prep, model)
    return root, model


def fine_tune(root, model, out, **settings):
    """``prepare`` then ``fit`` of a fine-tune on ``root/two``; returns the prep."""
    config = TrainConfig(epochs=2, from_model=str(model), seed=3, **settings)
    prep = prepare(root / "two", config)
    fit(prep, out)
    return prep


def small_source(tmp_path, arch_text, name, per_class=8):
    """A model of the architecture ``arch_text`` trained for an epoch on three 12x12 pattern classes
    (``tmp_path/three``), and a two-class set to fine-tune on (``tmp_path/two``); returns its path."""
    write_patterns(tmp_path / "three", per_class=per_class, size=12)
    write_patterns(tmp_path / "two", per_class=6, size=12, classes=("blob", "vertical"), seed=9)
    arch = tmp_path / f"{name}.toml"
    arch.write_text(arch_text)
    model = tmp_path / f"{name}.npz"
    fit(prepare(tmp_path / "three", TrainConfig(arch=str(arch), epochs=1, image_size=12)), model)
    return model


def test_frozen_weights_stay_bit_identical_and_the_rest_learn(source, tmp_path):
    root, model = source
    before = load_model(model)[0].state_dict()
    prep = fine_tune(root, model, tmp_path / "ft.npz", freeze="3", backbone_lr_mult=0.5)
    after = load_model(tmp_path / "ft.npz")[0].state_dict()
    frozen = {k for k in after if k.split(".")[0] in {"0", "1", "2", "3"}}
    assert frozen == {"0.weight", "0.bias", "3.weight", "3.bias"}
    for name in frozen:
        assert after[name].tobytes() == before[name].tobytes(), name
    trained = [k for k in after if k not in frozen and not k.startswith("head.")]
    assert trained and all(not np.array_equal(after[k], before[k]) for k in trained)
    assert prep.optimizer.lr_mults and set(prep.optimizer.lr_mults.values()) == {0.5}
    assert not any(name.startswith("head.") or name in frozen for name in prep.optimizer.lr_mults)


def test_the_head_has_the_datasets_classes_and_the_source_preprocessing(source, tmp_path):
    root, model = source
    fine_tune(root, model, tmp_path / "ft.npz")
    net, meta, _ = load_model(tmp_path / "ft.npz")
    src_net, src_meta, _ = load_model(model)
    assert meta.classes == ["horizontal", "vertical"] and len(src_meta.classes) == 3
    assert net.names[-1] == "head.fc" and net.shapes[-1] == (2,)
    assert meta.preprocessing == src_meta.preprocessing
    # The source's classifier (its last linear layer) is gone, the rest kept under its names.
    assert net.names[:-1] == src_net.names[:-1]


def test_frozen_batch_norm_statistics_do_not_move(tmp_path):
    small_source(tmp_path, BN_ARCH, "bn")
    before = load_model(tmp_path / "bn.npz")[0].state_dict()
    fine_tune(tmp_path, tmp_path / "bn.npz", tmp_path / "ft.npz", freeze="2")
    after = load_model(tmp_path / "ft.npz")[0].state_dict()
    for name in ("running_mean", "running_var", "num_batches_tracked", "weight", "bias"):
        assert after[f"1.{name}"].tobytes() == before[f"1.{name}"].tobytes(), name
    # The batch norm after the frozen part trains, and its statistics move.
    assert not np.array_equal(after["4.running_mean"], before["4.running_mean"])
    assert after["4.num_batches_tracked"] > before["4.num_batches_tracked"]


def test_probe_gives_the_head_that_training_with_everything_frozen_gives(source, tmp_path):
    root, model = source
    full = fine_tune(root, model, tmp_path / "full.npz", freeze="all")
    probe = fine_tune(root, model, tmp_path / "probe.npz", probe=True, freeze="all")
    assert probe.x_train.ndim == 2 and full.x_train.ndim == 4  # the probe trained on features
    a, b = load_model(tmp_path / "full.npz")[0].state_dict(), load_model(tmp_path / "probe.npz")[0].state_dict()
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert probe.result.final_val_accuracy == full.result.final_val_accuracy
    # The head did learn: it is not where it started.
    start = prepare(root / "two", TrainConfig(epochs=2, from_model=str(model), seed=3, probe=True,
                                              freeze="all")).network.state_dict()
    assert not np.allclose(start["head.fc.weight"], a["head.fc.weight"])


def test_a_global_pooling_head_follows_a_cut_that_leaves_maps(source, tmp_path):
    root, model = source
    prep = fine_tune(root, model, tmp_path / "ft.npz", head="2", probe=True, freeze="all")
    net, meta, _ = load_model(tmp_path / "ft.npz")
    assert net.names[3:] == ["head.pool", "head.flatten", "head.fc"]
    assert [layer.kind for layer in net.layers[3:]] == ["globalavgpool", "flatten", "linear"]
    assert prep.x_train.shape[1] == net.shapes[2][0]  # one mean per channel of node 2
    assert meta.source["cut"] == "2"


def test_a_1x1_conv_classifier_is_replaced_by_a_new_one_and_the_probe_trains_it_on_maps(tmp_path):
    small_source(tmp_path, CONV_CLASSIFIER_ARCH, "sq")
    full = fine_tune(tmp_path, tmp_path / "sq.npz", tmp_path / "full.npz", freeze="all")
    probe = fine_tune(tmp_path, tmp_path / "sq.npz", tmp_path / "probe.npz", probe=True, freeze="all")
    net = load_model(tmp_path / "probe.npz")[0]
    assert net.names[2:] == ["head.conv", "head.relu", "head.globalavgpool", "head.flatten"]
    assert net.shapes[2] == (2, 12, 12) and net.shapes[-1] == (2,)
    assert probe.x_train.shape[1:] == (6, 12, 12)  # the maps the new 1x1 conv reads, not pooled
    a, b = full.network.state_dict(), probe.network.state_dict()
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_cut_after_the_old_classifier_keeps_it_with_its_own_classes(source, tmp_path):
    root, model = source
    fine_tune(root, model, tmp_path / "ft.npz", head="9", freeze="all")
    net = load_model(tmp_path / "ft.npz")[0]
    assert net.shapes[9] == (3,) and net.shapes[-1] == (2,)


def test_an_interrupted_fine_tune_resumes_to_the_weights_of_an_uninterrupted_one(source, tmp_path):
    root, model = source
    settings = dict(epochs=2, from_model=str(model), seed=3, freeze="1", batch_size=4)
    fit(prepare(root / "two", TrainConfig(**settings)), tmp_path / "whole.npz")
    prep = prepare(root / "two", TrainConfig(**settings))
    calls = iter(range(100))
    with pytest.raises(Interrupted):
        fit(prep, tmp_path / "split.npz", should_stop=lambda: next(calls) == 4)
    resumed = prepare(root / "two", None, resume=checkpoint_path(tmp_path / "split.npz"))
    assert resumed.trainer is not None and resumed.trainer.first == 2
    fit(resumed, tmp_path / "split.npz")
    a, b = load_model(tmp_path / "whole.npz")[0].state_dict(), load_model(tmp_path / "split.npz")[0].state_dict()
    for name in a:
        assert a[name].tobytes() == b[name].tobytes(), name


def test_cli_fine_tune_records_its_lineage_and_info_shows_it(source, tmp_path):
    root, model = source
    out = tmp_path / "ft.npz"
    result = cnn("train", root / "two", "-o", out, "--from", model, "--freeze", "3", "--epochs", "1")
    assert result.exit_code == 0, result.output
    meta = load_model(out)[1]
    import hashlib

    assert meta.source["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert meta.source["cut"] == load_model(model)[0].names[-2] and meta.source["frozen"] == "3"
    assert meta.training.config.from_model == str(model)
    assert (tmp_path / "ft.report.html").exists()
    info = cnn("info", out)
    assert info.exit_code == 0, info.output
    assert meta.source["sha256"] in info.stdout and "every layer up to '3'" in info.stdout


def test_grey_images_for_an_rgb_network_are_converted_and_it_is_said_once(tmp_path):
    write_patterns(tmp_path / "rgb", per_class=6, size=12, rgb=True)
    write_patterns(tmp_path / "two", per_class=6, size=12, classes=("blob", "vertical"), seed=2)
    result = cnn("train", tmp_path / "rgb", "-o", tmp_path / "rgb.npz", "--epochs", "1", "--color", "rgb")
    assert result.exit_code == 0, result.output
    result = cnn("train", tmp_path / "two", "-o", tmp_path / "ft.npz", "--from", tmp_path / "rgb.npz",
                 "--epochs", "1", "--probe")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("three equal channels") == 1
    assert load_model(tmp_path / "ft.npz")[1].preprocessing.color == "rgb"


def test_a_cut_node_that_does_not_exist_is_a_usage_error_naming_the_nodes(source, tmp_path):
    root, model = source
    for option in ("--head", "--freeze"):
        result = cnn("train", root / "two", "-o", tmp_path / "ft.npz", "--from", model, option, "fc9")
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: {option} fc9") and "0 (conv)" in lines[0]
        assert not (tmp_path / "ft.npz").exists()


def test_a_model_without_a_classifier_needs_head(tmp_path):
    small_source(tmp_path, NO_CLASSIFIER_ARCH, "plain", per_class=6)
    result = cnn("train", tmp_path / "three", "-o", tmp_path / "ft.npz", "--from", tmp_path / "plain.npz")
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no classifier to replace" in lines[0] and "--head" in lines[0]
    result = cnn("train", tmp_path / "three", "-o", tmp_path / "ft.npz", "--from", tmp_path / "plain.npz",
                 "--head", "0", "--epochs", "1")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args, says", [
    (["--probe"], "--probe applies to fine-tuning"),
    (["--freeze", "all"], "--freeze applies to fine-tuning"),
    (["--from", "M", "--arch", "alexnet"], "leave out --arch"),
    (["--from", "M", "--probe", "--augment", "flip"], "leave out --augment"),
    (["--from", "M", "--probe", "--freeze", "2"], "leave out --freeze 2"),
])
def test_fine_tuning_options_that_do_not_fit_are_usage_errors(source, tmp_path, args, says):
    root, model = source
    args = [str(model) if a == "M" else a for a in args]
    result = cnn("train", root / "two", "-o", tmp_path / "ft.npz", *args)
    assert result.exit_code == 2, result.output
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_a_torch_twin_of_the_same_fine_tune_ends_within_a_point(source, tmp_path):
    """Same initial weights, frozen set, optimizer with its parameter groups, learning rates and
    batches (cnn's shuffles): the torch twin's accuracy is within 1 point of ours."""
    root, model = source
    torch_twin = _bench_twin()
    prep = prepare(root / "two", TrainConfig(epochs=3, from_model=str(model), seed=3, freeze="3",
                                             backbone_lr_mult=0.5, batch_size=4))
    twin, _ = torch_twin(prep)
    fit(prep, tmp_path / "ft.npz")
    ours = prep.result.final_val_accuracy
    assert abs(ours - twin) <= 0.01, (ours, twin)


def test_a_torch_twin_with_frozen_and_trained_batch_norms_ends_at_our_weights(tmp_path):
    """The frozen batch norm runs in eval mode on both sides and the trained one on batch
    statistics: after the same batches every weight and running statistic agrees."""
    torch_twin = _bench_twin()
    small_source(tmp_path, BN_ARCH, "bn")
    prep = prepare(tmp_path / "two", TrainConfig(epochs=2, from_model=str(tmp_path / "bn.npz"), freeze="2",
                                                 batch_size=4, optimizer="sgd", lr=0.02))
    _, theirs = torch_twin(prep)
    fit(prep, tmp_path / "ft.npz")
    for name, ours in prep.network.state_dict().items():
        scale = max(float(np.abs(theirs[name]).max()), 1e-3)
        assert np.abs(ours - theirs[name]).max() <= 1e-4 * scale, name


def _bench_twin():
    """bench/finetune.py's ``torch_twin`` (skips without torch)."""
    pytest.importorskip("torch")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from finetune import torch_twin

    return torch_twin


def test_rnet_with_real_weights_fine_tuned_beats_it_from_scratch(tmp_path):
    """MTCNN's R-Net (facenet-pytorch's weights, imported) on lfw_subset, 10 faces and 10 non-faces
    to train on: its probe against the same network from random weights (bench/finetune.py, seed 0)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from finetune import lfw_split, rnet_model, run

    try:
        model = rnet_model(tmp_path)
    except FileNotFoundError as exc:  # facenet-pytorch's weights are not installed
        pytest.skip(str(exc))
    lfw_split(tmp_path / "lfw", seed=0)
    common = dict(epochs=20, batch_size=8, from_model=str(model), seed=0)
    probe, _, _ = run(tmp_path / "lfw", {**common, "probe": True, "freeze": "all"}, tmp_path / "probe.npz")
    scratch, _, _ = run(tmp_path / "lfw", {**common, "freeze": "none", "backbone_lr_mult": 1.0},
                        tmp_path / "scratch.npz", scratch_seed=[0, 99])
    assert probe >= 0.99 and probe > scratch + 0.02, (probe, scratch)


def test_a_diverging_fine_tune_stops_in_one_line_and_writes_no_model(source, tmp_path):
    root, model = source
    result = cnn("train", root / "two", "-o", tmp_path / "ft.npz", "--from", model, "--lr", "1e6",
                 "--optimizer", "sgd", "--epochs", "2")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "training diverged" in errors[0] and "--lr" in errors[0]
    assert not (tmp_path / "ft.npz").exists()
