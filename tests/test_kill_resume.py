"""Killing `cnn train` at random moments, then resuming: nothing partial, identical weights.

README: "SIGKILL during training: the last checkpoint (written atomically
after every epoch) is intact"; "Ctrl-C or SIGTERM: a checkpoint at the current
batch, a hint how to resume, exit 130 or 143"; "--resume MODEL.ckpt.npz
continues and ends with exactly the weights of an uninterrupted run".

Each run is a real subprocess. SIGKILL lands at two seeded random moments
after the first checkpoint, and once the moment a temporary checkpoint file
appears (mid-write); SIGINT lands inside epoch 2. The dataset is sized so that an epoch takes a
fraction of a second to a second, which leaves room to land a signal inside
training rather than before or after it.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cnn_cli.modelfile import load_model

FINAL_NAMES = {"m.npz", "m.ckpt.npz", "m.metrics.json", "m.curves.png", "m.confusion.png", "m.report.html"}
SETTINGS = ["--epochs", "4", "--seed", "1", "--batch-size", "8", "--image-size", "48"]
# When to kill, as fractions of the time from the first checkpoint to the end of an uninterrupted
# run (measured by the reference run), so the moments spread over training and the final writes.
# One moment is drawn from each half, seeded, so one usually lands in the last epochs or final writes.
_draw = random.Random(20240601)
FRACTIONS = [round(_draw.uniform(0.05, 0.5), 3), round(_draw.uniform(0.5, 0.95), 3)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill") / "data"
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        for i in range(60):
            Image.fromarray(rng.integers(0, 256, (24, 24), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _start(work, data, *extra):
    work.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "cnn_cli", "train", str(data), "-o", "m.npz", *extra],
                            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(work, data, *extra, timeout=300):
    proc = _start(work, data, *extra)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _weights(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "__meta__" and not k.startswith("state.")}


def _assert_same_weights(path, reference):
    got = _weights(path)
    assert sorted(got) == sorted(reference)
    different = [k for k in reference if not np.array_equal(got[k], reference[k])]
    assert different == [], f"weights differ from the uninterrupted run: {different}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """The uninterrupted run: its final weights, and the seconds from its first checkpoint to its end."""
    work = tmp_path_factory.mktemp("reference")
    proc = _start(work, data, *SETTINGS)
    assert _wait_until(proc, lambda: (work / "m.ckpt.npz").exists()), proc.communicate()[1]
    first_checkpoint = time.monotonic()
    _, err = proc.communicate(timeout=300)
    rest = time.monotonic() - first_checkpoint
    assert proc.returncode == 0, err
    assert not (work / "m.ckpt.npz").exists(), "a finished run leaves no checkpoint"
    return SimpleNamespace(weights=_weights(work / "m.npz"), rest=rest)


def _wait_until(proc, predicate, timeout=120):
    """Poll every few ms; True once ``predicate()`` holds, False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(0.003)
    raise AssertionError("timed out waiting for the training run")


def _check_files_after_kill(work, finished=False):
    """Only complete files at final paths; anything else is a hidden temporary name, or
    the run's (empty) lock file, which a killed run cannot remove. Once a run
    finished, neither is left."""
    names = set(os.listdir(work))
    leftover = (lambda n: False) if finished else (lambda n: n == ".m.npz.lock" or (n.startswith(".") and ".tmp" in n))
    stray = [n for n in names - FINAL_NAMES if not leftover(n)]
    assert stray == [], f"unexpected files after the kill: {stray}"
    if "m.ckpt.npz" in names:
        _, meta, _ = load_model(work / "m.ckpt.npz")
        assert meta.checkpoint is not None
    if "m.npz" in names:
        _, meta, _ = load_model(work / "m.npz")
        assert meta.checkpoint is None
    if "m.metrics.json" in names:
        json.loads((work / "m.metrics.json").read_text())
    for png in ("m.curves.png", "m.confusion.png"):
        if png in names:
            with Image.open(work / png) as im:
                im.verify()
    return names


def _resume_and_compare(work, data, names, reference):
    if "m.ckpt.npz" in names:
        code, err = _run(work, data, "--resume", "m.ckpt.npz")
        assert code == 0, err
        assert "Traceback" not in err and "Error" not in err, err
        assert not (work / "m.ckpt.npz").exists()
    else:
        assert "m.npz" in names, f"killed before any checkpoint: {sorted(names)}"
    _assert_same_weights(work / "m.npz", reference.weights)
    _check_files_after_kill(work, finished="m.ckpt.npz" in names)


def _kill_and_resume(tmp_path, data, reference, wait):
    """Start a run, wait for its first checkpoint, then ``wait(proc, work)``, SIGKILL it,
    check what it left, resume, and compare with the uninterrupted run."""
    work = tmp_path / "run"
    proc = _start(work, data, *SETTINGS)
    try:
        assert _wait_until(proc, lambda: (work / "m.ckpt.npz").exists()), proc.communicate()[1]
        wait(proc, work)
        proc.kill()
    finally:
        proc.kill()
        proc.communicate()
    names = _check_files_after_kill(work)
    _resume_and_compare(work, data, names, reference)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_sigkill_at_a_random_moment_then_resume(tmp_path, data, reference, fraction):
    _kill_and_resume(tmp_path, data, reference, lambda proc, work: time.sleep(fraction * reference.rest))


def test_sigkill_while_a_checkpoint_is_being_written(tmp_path, data, reference):
    """Kill the moment a temporary checkpoint file shows up (i.e. mid-write, if we are quick enough)."""
    def writing(work):
        return any(n.startswith(".m.ckpt.npz.") for n in os.listdir(work)) if work.exists() else False

    # The second checkpoint.
    _kill_and_resume(tmp_path, data, reference, lambda proc, work: _wait_until(proc, lambda: writing(work)))


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130)])
def test_sigint_saves_a_checkpoint_and_resume_gives_the_same_weights(tmp_path, data, reference, signum, code):
    work = tmp_path / "run"
    proc = _start(work, data, *SETTINGS)
    try:
        assert _wait_until(proc, lambda: (work / "m.ckpt.npz").exists()), proc.communicate()[1]
        # Into epoch 2: a twentieth of what remains of the reference run (its three
        # last epochs and final writes), so the signal lands in training however fast it is.
        time.sleep(reference.rest / 20)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    assert "--resume" in err and "m.ckpt.npz" in err, err
    names = _check_files_after_kill(work)
    assert "m.npz" not in names
    _, meta, _ = load_model(work / "m.ckpt.npz")
    assert 1 <= meta.checkpoint.epoch < 4
    _resume_and_compare(work, data, names, reference)

