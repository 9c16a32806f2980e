"""Issue 18's training cases: outputs checked before epoch 1, one writer per model,
killed runs' temporaries, checkpoints that are crafted or belong to other data,
exit codes, and strict JSON.

Every refusal is one ``Error:`` line on stderr, comes before any image is
decoded (no "training ..." line), and leaves the files that were there as
they were.
"""

import json
import os
import signal
import stat
import subprocess
import sys

import numpy as np
import pytest

from clirunner import cnn
from cnn_cli.fileio import held_lock, temporary_name
from cnn_cli.modelfile import META_KEY
from cnn_cli.train import Interrupted, TrainConfig, TrainingError, checkpoint_path, fit, prepare
from digits import write_patterns

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FAST = ("--epochs", 1, "--batch-size", 16)


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    root = tmp_path_factory.mktemp("patterns") / "data"
    write_patterns(root, per_class=6, classes=("blob", "vertical"))
    return root


def _refused_before_training(result, code=1):
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# ----------------------------------------------------------------- outputs checked before epoch 1


@pytest.mark.parametrize("target", ["model", "metrics", "checkpoint"])
def test_special_files_among_the_outputs_are_refused_before_training(tmp_path, patterns, target):
    out = tmp_path / "m.npz"
    special = {"model": out, "metrics": tmp_path / "m.metrics.json", "checkpoint": tmp_path / "m.ckpt.npz"}[target]
    os.mkfifo(special)
    line = _refused_before_training(cnn("train", patterns, "-o", out, "--force", *FAST))
    assert "named pipe" in line and special.name in line
    assert stat.S_ISFIFO(os.lstat(special).st_mode)


@pytest.mark.skipif(not IS_ROOT, reason="making a device node needs root")
def test_a_device_node_as_model_is_never_replaced(tmp_path, patterns):
    out = tmp_path / "null.npz"
    os.mknod(out, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    line = _refused_before_training(cnn("train", patterns, "-o", out, "--force", *FAST))
    assert "device" in line
    assert stat.S_ISCHR(os.lstat(out).st_mode)


@pytest.mark.parametrize("sibling", ["m.metrics.json", "m.report.html", "m.ckpt.npz"])
def test_a_folder_where_an_output_file_goes_is_refused_before_training(tmp_path, patterns, sibling):
    (tmp_path / sibling).mkdir()
    line = _refused_before_training(cnn("train", patterns, "-o", tmp_path / "m.npz", *FAST))
    assert sibling in line and "is a folder" in line
    assert not (tmp_path / "m.npz").exists()


def test_a_folder_or_a_missing_parent_is_refused_before_training(tmp_path, patterns):
    (tmp_path / "models").mkdir()
    line = _refused_before_training(cnn("train", patterns, "-o", tmp_path / "models", "--force", *FAST))
    assert "is a folder" in line
    line = _refused_before_training(cnn("train", patterns, "-o", tmp_path / "missing" / "m.npz", *FAST))
    assert "does not exist" in line
    assert not (tmp_path / "missing").exists()


def test_an_existing_model_is_refused_before_training_without_force(tmp_path, patterns):
    out = tmp_path / "m.npz"
    out.write_bytes(b"the user's file")
    line = _refused_before_training(cnn("train", patterns, "-o", out, *FAST))
    assert "--force" in line
    assert out.read_bytes() == b"the user's file"


# ----------------------------------------------------------------- one writer per model


def test_a_second_run_into_the_same_model_is_refused(tmp_path, patterns):
    out = tmp_path / "m.npz"
    with held_lock(tmp_path / temporary_name(out.name, ".lock"), "held by the test"):
        line = _refused_before_training(cnn("train", patterns, "-o", out, *FAST))
    assert "another cnn train is writing" in line and ".m.npz.lock" in line
    assert not out.exists()
    result = cnn("train", patterns, "-o", out, *FAST)  # once the lock is free, it runs
    assert result.exit_code == 0, result.output
    assert not (tmp_path / ".m.npz.lock").exists(), "a finished run removes its lock"


def test_two_concurrent_runs_one_wins(tmp_path, patterns):
    out = tmp_path / "m.npz"
    args = [sys.executable, "-m", "cnn_cli", "train", str(patterns), "-o", str(out), "--epochs", "3",
            "--batch-size", "4"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(code for code, _ in results)
    assert codes == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert "another cnn train is writing" in loser or "exists; use --force" in loser, loser


# ----------------------------------------------------------------- a killed run's temporaries


def test_temporaries_of_a_killed_run_are_removed_and_named(tmp_path, patterns):
    out = tmp_path / "m.npz"
    ours = [".m.npz.abcd1234.tmp.npz", ".m.ckpt.npz.k9x_2bq0.tmp.npz", ".m.metrics.json.zz00zz00.tmp"]
    others = [".other.npz.abcd1234.tmp.npz", ".m.npz.notours", "m.npz.abcd1234.tmp.npz"]
    for name in ours + others:
        (tmp_path / name).write_bytes(b"left over")
    result = cnn("train", patterns, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    for name in ours:
        assert not (tmp_path / name).exists()
        assert f"removed {tmp_path / name}" in result.stderr
    for name in others:
        assert (tmp_path / name).read_bytes() == b"left over", name


def test_temporaries_of_a_long_model_name_are_recognised(tmp_path, patterns):
    out = tmp_path / ("m" * 240 + ".npz")
    # As fileio.atomic_path names it: shortened, with a hash of the whole name.
    stale = tmp_path / (temporary_name(out.name, ".", reserve=8 + len(".tmp.npz")) + "abcd1234.tmp.npz")
    assert "~" in stale.name
    stale.write_bytes(b"left over")
    result = cnn("train", patterns, "-o", out, *FAST)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and "removed" in result.stderr


# ----------------------------------------------------------------- checkpoints that cannot go on here


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, patterns):
    """A checkpoint stopped in the middle of epoch 1 of 2."""
    folder = tmp_path_factory.mktemp("ckpt")
    prep = prepare(patterns, TrainConfig(epochs=2, batch_size=4))
    stop = {"batch": 0}

    def on_batch(epoch, batch, *_):
        stop["batch"] = batch

    with pytest.raises(Interrupted):
        fit(prep, folder / "m.npz", on_batch=on_batch, should_stop=lambda: "SIGINT" if stop["batch"] >= 2 else None)
    return checkpoint_path(folder / "m.npz")


def _crafted(src, dst, meta=None, arrays=None):
    """A copy of the checkpoint ``src`` with ``meta(dict)`` and ``arrays(dict)`` applied."""
    with np.load(src, allow_pickle=False) as z:
        content = {k: z[k] for k in z.files}
    obj = json.loads(content[META_KEY].tobytes().decode())
    if meta:
        meta(obj)
    content[META_KEY] = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    if arrays:
        arrays(content)
    np.savez(dst, **content)
    return dst


def _set(path, value):
    def change(obj):
        *parents, last = path.split(".")
        for key in parents:
            obj = obj[key]
        obj[last] = value
    return change


def _first_optim_key(content, slot):
    return next(k for k in content if k.startswith("state.optim.state.") and k.endswith(slot))


CRAFTED = {
    "val_split 5.0": (_set("training.config.val_split", 5.0), None, "val_split"),
    "optimizer rmsprop": (_set("training.config.optimizer", "rmsprop"), None, "optimizer"),
    "batch_size 0": (_set("training.config.batch_size", 0), None, "batch_size"),
    "unknown schedule": (_set("training.config.schedule", "onecycle"), None, "schedule"),
    "learning rate -1": (_set("training.config.lr", -1.0), None, "lr"),
    "more epochs done than planned": (_set("checkpoint.epoch", 9), None, "epochs"),
    "an unknown optimizer entry": (None, lambda c: c.update({"state.optim.state.0.weight.rmsprop":
                                                             np.zeros(3, np.float32)}), "unknown entry"),
    "an optimizer entry of the wrong shape": (
        None, lambda c: c.update({_first_optim_key(c, ".m"): np.zeros(7, np.float32)}), "shape"),
    "no step count": (None, lambda c: c.pop("state.optim.steps"), "step count"),
    "NaN in the optimizer state": (
        None, lambda c: c.update({_first_optim_key(c, ".v"): np.full_like(c[_first_optim_key(c, ".v")], np.nan)}),
        "finite"),
    "best weights that do not fit": (None, lambda c: c.update({"state.best.nosuch": np.zeros(2, np.float32)}),
                                     "best weights"),
    # issue 28: the settings that must match the run are checked like the others
    "a changed preprocessing mean": (
        lambda obj: obj["preprocessing"].update(mean=[m + 0.3 for m in obj["preprocessing"]["mean"]]), None,
        "preprocessing mean"),
    "a forged divergence baseline of 0": (_set("checkpoint.early_loss", 0.0), None, "early_loss"),
    "a batch index past the epoch": (_set("checkpoint.batch", 99999), None, "batch 99999"),
    "NaN running sums": (lambda obj: obj["checkpoint"]["sums"].__setitem__(0, float("nan")), None, "running sums"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_checkpoints_are_refused_in_one_line(tmp_path, patterns, checkpoint, case):
    meta, arrays, words = CRAFTED[case]
    with np.load(checkpoint, allow_pickle=False) as z:
        assert "state.optim.steps" in z.files, "the crafted cases assume this layout"
    crafted = _crafted(checkpoint, tmp_path / "m.ckpt.npz", meta, arrays)
    with pytest.raises(TrainingError, match=words):
        prepare(patterns, TrainConfig(), resume=crafted)
    line = _refused_before_training(cnn("train", patterns, "-o", tmp_path / "m.npz", "--resume", crafted))
    assert words in line


def test_resume_on_other_files_with_the_same_classes_is_refused(tmp_path, patterns, checkpoint):
    other = tmp_path / "other"
    write_patterns(other, per_class=7, classes=("blob", "vertical"), seed=3)
    line = _refused_before_training(cnn("train", other, "-o", tmp_path / "m.npz", "--resume", checkpoint))
    assert "is not the dataset" in line and "added, removed" in line


def test_resume_on_files_that_changed_size_is_refused(tmp_path, patterns, checkpoint):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(patterns, copy)
    victim = sorted((copy / "blob").iterdir())[0]
    victim.write_bytes(victim.read_bytes() + b"\0" * 10)
    line = _refused_before_training(cnn("train", copy, "-o", tmp_path / "m.npz", "--resume", checkpoint))
    assert "changed size" in line


def test_resume_on_the_same_files_elsewhere_goes_on(tmp_path, patterns, checkpoint):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(patterns, copy)
    work = tmp_path / "run"
    work.mkdir()
    shutil.copy(checkpoint, work / "m.ckpt.npz")
    result = cnn("train", copy, "-o", work / "m.npz", "--resume", work / "m.ckpt.npz")
    assert result.exit_code == 0, result.output
    assert (work / "m.npz").exists() and not (work / "m.ckpt.npz").exists()


# ----------------------------------------------------------------- exit codes and strict JSON


def test_training_that_skipped_unreadable_images_exits_3_with_the_model_saved(tmp_path):
    root = tmp_path / "data"
    write_patterns(root, per_class=4, classes=("blob", "vertical"))
    (root / "blob" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = cnn("train", root, "-o", tmp_path / "m.npz", *FAST)
    assert result.exit_code == 3, result.output
    assert "broken.png" in result.stderr and "1 unreadable images were skipped" in result.stderr
    assert (tmp_path / "m.npz").exists()


def test_json_output_never_holds_nan(capsys):
    from cnn_cli.cli.common import echo_json

    echo_json({"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": "NaN", "e": None})
    out = capsys.readouterr().out

    def reject(constant):
        raise ValueError(f"{constant} is not JSON")

    assert json.loads(out, parse_constant=reject) == {"a": None, "b": [1.5, None, {"c": None}], "d": "NaN",
                                                      "e": None}


def test_evaluate_stops_quietly_when_its_reader_goes_away(tmp_path, patterns):
    model = tmp_path / "m.npz"
    assert cnn("train", patterns, "-o", model, *FAST).exit_code == 0
    for extra in ((), ("--json",)):
        read, write = os.pipe()
        os.close(read)
        try:
            proc = subprocess.run([sys.executable, "-m", "cnn_cli", "evaluate", str(patterns), "--model", str(model),
                                   "--split", "all", *extra], stdout=write, stderr=subprocess.PIPE, text=True,
                                  timeout=120)
        finally:
            os.close(write)
        assert proc.returncode == 128 + signal.SIGPIPE, (extra, proc.returncode, proc.stderr)
        assert "Error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_resume_refuses_other_settings_and_lengthens_a_run_given_epochs(tmp_path, patterns, checkpoint):
    """issue 28: --epochs 5 --lr 0.5 with --resume were silently ignored."""
    model = tmp_path / "m.npz"
    line = _refused_before_training(cnn("train", patterns, "-o", model, "--resume", checkpoint,
                                        "--epochs", "5", "--lr", "0.5"), code=2)
    assert "leave out --lr" in line and "--epochs" in line, line
    result = cnn("train", patterns, "-o", model, "--resume", checkpoint, "--epochs", "3")
    assert result.exit_code == 0 and "3 epochs" in result.stderr, result.output
    assert len(json.loads((tmp_path / "m.metrics.json").read_text())) == 3
    line = _refused_before_training(cnn("train", patterns, "-o", tmp_path / "n.npz", "--resume",
                                        _crafted(checkpoint, tmp_path / "n.ckpt.npz", _set("checkpoint.epoch", 1),
                                                 lambda c: None), "--epochs", "1"))
    assert "--epochs 1" in line, line
