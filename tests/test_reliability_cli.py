"""The command line under abuse: bad option values, missing inputs, hostile file names,
full disks and file-size limits, existing outputs.

The README's "Exit codes" and "What happens when..." tables are the spec: 2
for a usage error naming the option, 1 with one `Error:` line for a refusal, 3
for a batch with failures, and a final path that holds a complete output or
nothing, whatever goes wrong while writing.
"""

import errno
import json
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_cli import fileio, viz
from clirunner import cnn
from cnn_cli.modelfile import load_model

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def _image(path, seed=0, shape=(40, 40)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path, format="PNG")
    return path


def _dataset(root, per_class=4):
    for k, name in enumerate(("a", "b")):
        for i in range(per_class):
            _image(Path(root) / name / f"{i}.png", seed=10 * k + i, shape=(12, 12))
    return Path(root)


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def _usage_error_naming(result, option):
    """A usage error (exit 2) whose message names ``option``."""
    assert result.exit_code == 2, result.output
    assert f"'{option}'" in result.output, result.output


def _tree(folder):
    """{relative path: bytes} of every file, and the set of folders, under ``folder``."""
    folder = Path(folder)
    if not folder.exists():
        return {}, set()
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    dirs = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir()}
    return files, dirs


def _leftovers(folder):
    return sorted(str(p) for p in Path(folder).rglob("*")
                  if p.name.startswith(".") or "partial" in p.name or ".tmp" in p.name or ".old" in p.name)


APPLY = ("--bank", "edges:sobel_*")  # one small layer keeps these runs fast


# ----------------------------------------------------------------- usage errors


@pytest.mark.parametrize("option, value", [
    ("--epochs", "0"), ("--epochs", "-3"), ("--lr", "nan"), ("--lr", "inf"), ("--lr", "-0.1"), ("--lr", "0"),
    ("--batch-size", "0"), ("--val-split", "1.5"), ("--val-split", "nan"), ("--val-split", "-0.2"),
    ("--val-split", "1"), ("--augment", "bogus"), ("--augment", "flip,bogus"), ("--momentum", "nan"),
    ("--weight-decay", "inf"), ("--image-size", "0"), ("--patience", "0"), ("--optimizer", "rmsprop"),
    ("--epochs", "many"), ("--augment", "shift=9000px"), ("--augment", "erase=2"), ("--augment-fill", "nan"),
    ("--label-smoothing", "-0.1"), ("--warmup", "x"),
])
def test_train_bad_option_value_is_a_usage_error_naming_it(tmp_path, option, value):
    data = _dataset(tmp_path / "data")
    model = tmp_path / "m.npz"
    _usage_error_naming(cnn("train", data, "-o", model, option, value), option)
    assert not model.exists() and not (tmp_path / "m.ckpt.npz").exists()


def test_negative_seed_is_a_usage_error(tmp_path):
    data = _dataset(tmp_path / "data")
    _usage_error_naming(cnn("train", data, "-o", tmp_path / "m.npz", "--seed", "-1"), "--seed")


@pytest.mark.parametrize("option, value", [
    ("--max-size", "0"), ("--max-size", "-1"), ("--normalize", "bogus"), ("--max-pixels", "0"),
    ("--cmap", "jet"), ("--color", "cmyk"),
])
def test_apply_bad_option_value_is_a_usage_error_naming_it(tmp_path, option, value):
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    _usage_error_naming(cnn("apply", img, "-o", out, option, value), option)
    assert not (out / "img").exists()


def test_predict_and_info_bad_option_values(tmp_path):
    img = _image(tmp_path / "img.png")
    _usage_error_naming(cnn("predict", img, "--model", tmp_path / "m.npz", "--top-k", "0"), "--top-k")
    _usage_error_naming(cnn("info", "default", "--size", "0"), "--size")


# ----------------------------------------------------------------- missing inputs


@pytest.mark.parametrize("make, expected", [
    (lambda t: t / "missing.png", "missing.png"),
    (lambda t: str(t / "nothing_here" / "*.png"), "*.png"),
    (lambda t: str(t / "*.jpeg"), "*.jpeg"),
    (lambda t: (t / "empty_dir").mkdir() or t / "empty_dir", "empty_dir"),
    (lambda t: (t / "txt_only").mkdir() or (t / "txt_only" / "a.txt").touch() or t / "txt_only", "txt_only"),
])
def test_missing_input_gives_one_error_line_and_exit_1(tmp_path, make, expected):
    target = make(tmp_path)
    out = tmp_path / "out"
    result = cnn("apply", target, "-o", out)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0], result.stderr
    assert not any(out.glob("*")) if out.exists() else True


def test_missing_inputs_to_predict_evaluate_and_train(tmp_path):
    for args in (["train", tmp_path / "no_data"],
                 ["evaluate", tmp_path / "no_data", "--model", tmp_path / "no_model.npz"],
                 ["predict", tmp_path / "no.png", "--model", tmp_path / "no_model.npz"]):
        result = cnn(*args)
        assert result.exit_code == 1, result.output
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error:"), (args, result.stderr)


def test_output_folder_that_is_a_file(tmp_path):
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    out.write_text("I am a file")
    result = cnn("apply", img, "-o", out, *APPLY)
    assert result.exit_code == 1, result.output
    assert len(_error_lines(result)) == 1 and "out" in _error_lines(result)[0]
    assert out.read_text() == "I am a file"


# ----------------------------------------------------------------- hostile input names


HOSTILE = ["..png", "...png", "-x.png", "a b.png", "ünï 日本.png", "[bold]x.png", "x;rm -rf ~.png",
           "$(echo hi).png", "new\tline.png", "' or 1=1 --.png", ".hidden.png"]


def test_outputs_stay_inside_out_whatever_the_input_names(tmp_path):
    src = tmp_path / "in"
    inputs = [_image(src / name, seed=i) for i, name in enumerate(HOSTILE)]
    nested = _image(src / "deep" / ".." / "up.png", seed=99)  # a path with ../ in it
    inputs.append(nested)
    out = tmp_path / "out"
    before, _ = _tree(tmp_path)
    # `--` so that "-x.png" is a file, not an option
    result = cnn("apply", "-o", out, *APPLY, "--", *inputs)
    assert result.exit_code == 0, result.output
    folders = sorted(p for p in out.iterdir() if p.name != "index.html")  # the folders, beside the report
    assert len(folders) == len(inputs), [p.name for p in folders]
    for folder in folders:
        assert folder.is_dir() and folder.parent == out, folder
        assert SAFE_NAME.match(folder.name) and folder.name not in (".", ".."), folder.name
        assert not folder.name.startswith("."), folder.name
    manifests = {json.loads((f / "manifest.json").read_text())["input"] for f in folders}
    assert manifests == {str(p) for p in inputs}
    # nothing was written outside OUT
    after, _ = _tree(tmp_path)
    outside = {k for k in after if not k.startswith("out" + os.sep)}
    assert outside == set(before), sorted(outside ^ set(before))
    assert _leftovers(out) == []


def test_markup_in_file_names_prints_literally(tmp_path):
    src = tmp_path / "in"
    good = _image(src / "[bold]fine.png")
    bad = src / "[red]broken[blink].png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = cnn("apply", src, "-o", tmp_path / "out", *APPLY)
    assert result.exit_code == 3, result.output
    [line] = _error_lines(result)
    assert "[red]broken[blink].png" in line, line
    assert (tmp_path / "out" / "bold_fine").is_dir()
    manifest = json.loads((tmp_path / "out" / "bold_fine" / "manifest.json").read_text())
    assert manifest["input"] == str(good)


def test_predict_prints_markup_file_names_literally(tmp_path):
    from cnn_cli.modelfile import ModelMeta, build_network, save_model

    meta = {"architecture": {"name": "t", "layers": [{"type": "flatten"}, {"type": "linear", "out_features": "classes"}]},
            "classes": ["[bold]yes", "no[/]"], "training": {},
            "preprocessing": {"image_size": 8, "color": "gray", "channels": 1, "mean": [0.5], "std": [0.3]}}
    model = tmp_path / "m.npz"
    meta = ModelMeta.from_parts(meta)
    save_model(model, build_network(meta), meta)
    img = _image(tmp_path / "[italic]photo.png")
    result = cnn("predict", img, "--model", model, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "[italic]photo.png" in result.stdout and "[bold]yes" in result.stdout and "no[/]" in result.stdout


# ----------------------------------------------------------------- a full disk, simulated


def _enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_after(n, partial=None):
    """A wrapper that lets ``n`` calls through, then (optionally writing a partial result) raises ENOSPC."""
    lock, calls = threading.Lock(), [0]

    def wrap(original):
        def fake(*args, **kwargs):
            with lock:
                calls[0] += 1
                go = calls[0] <= n
            if go:
                return original(*args, **kwargs)
            if partial:
                partial(*args, **kwargs)
            raise _enospc()
        return fake
    return wrap, calls


def _assert_nothing_new(out, before_files, before_dirs):
    files, dirs = _tree(out)
    assert files == before_files, sorted(set(files) ^ set(before_files))
    assert dirs == before_dirs, sorted(dirs ^ before_dirs)


@pytest.fixture
def one_image(tmp_path):
    return _image(tmp_path / "img.png")


@pytest.mark.parametrize("fail_at", [0, 1, 2])  # sobel_x, sobel_y, then the grid
def test_enospc_while_encoding_pngs_leaves_no_output(tmp_path, monkeypatch, one_image, fail_at):
    out = tmp_path / "out"
    (out / "keep").mkdir(parents=True)
    (out / "keep" / "x.txt").write_text("from before")
    before = _tree(out)
    wrap, calls = _fail_after(fail_at)
    monkeypatch.setattr(viz, "png_bytes", wrap(viz.png_bytes))
    result = cnn("apply", one_image, "-o", out, *APPLY)
    assert calls[0] > fail_at, "the failure was never triggered"
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result)
    assert "img.png" in line and "No space left" in line, line
    _assert_nothing_new(out, *before)


def test_enospc_with_half_written_files_leaves_no_output(tmp_path, monkeypatch, one_image):
    out = tmp_path / "out"
    real_write = pathlib.Path.write_bytes

    def half(self, data):
        real_write(self, data[: len(data) // 2])

    wrap, calls = _fail_after(2, partial=half)
    monkeypatch.setattr(pathlib.Path, "write_bytes", wrap(real_write))
    result = cnn("apply", one_image, "-o", out, *APPLY)
    monkeypatch.undo()
    assert calls[0] > 2
    assert result.exit_code == 1, result.output
    assert "No space left" in result.stderr
    assert list(out.iterdir()) == [], list(out.iterdir())


def test_enospc_while_writing_the_npz_leaves_no_output(tmp_path, monkeypatch, one_image):
    out = tmp_path / "out"
    real = fileio.write_npz

    def partial(file, *args, **kwds):
        if hasattr(file, "write"):
            file.write(b"PK\x03\x04" + b"\x00" * 1000)  # the start of a zip, then the disk is full

    wrap, calls = _fail_after(0, partial=partial)
    monkeypatch.setattr(fileio, "write_npz", wrap(real))
    result = cnn("apply", one_image, "-o", out, *APPLY)
    assert calls[0] == 1
    assert result.exit_code == 1, result.output
    assert "No space left" in result.stderr
    assert list(out.iterdir()) == []


def test_failure_moving_the_finished_folder_into_place_leaves_no_output(tmp_path, monkeypatch, one_image):
    out = tmp_path / "out"
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst) == out / "img":
            raise _enospc()
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    result = cnn("apply", one_image, "-o", out, *APPLY)
    assert result.exit_code == 1, result.output
    assert "No space left" in result.stderr
    assert list(out.iterdir()) == []


def test_enospc_on_the_second_image_of_a_batch(tmp_path, monkeypatch):
    a = _image(tmp_path / "in" / "a.png", seed=1)
    b = _image(tmp_path / "in" / "b.png", seed=2, shape=(30, 50))  # another size: another engine batch
    out = tmp_path / "out"
    real = fileio.write_npz
    wrap, calls = _fail_after(1)
    monkeypatch.setattr(fileio, "write_npz", wrap(real))
    result = cnn("apply", a, b, "-o", out, *APPLY)
    assert result.exit_code == 3, result.output
    # Images are written in parallel, so either may be the one whose write failed.
    [line] = _error_lines(result)
    assert "No space left" in line
    failed, kept = ("b", "a") if "b.png" in line else ("a", "b")
    assert f"{failed}.png" in line
    assert sorted(p.name for p in out.iterdir()) == sorted([kept, "index.html"])
    with np.load(out / kept / "features.npz", allow_pickle=False) as npz:
        assert npz["layer0"].shape == ((2, 40, 40) if kept == "a" else (2, 30, 50))


def test_failed_force_replace_keeps_the_old_output(tmp_path, monkeypatch, one_image):
    out = tmp_path / "out"
    first = cnn("apply", one_image, "-o", out, *APPLY)
    assert first.exit_code == 0, first.output
    before = _tree(out)
    real = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst) == out / "img" and ".partial" in str(src):
            raise _enospc()
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    result = cnn("apply", one_image, "-o", out, *APPLY, "--force")
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    _assert_nothing_new(out, *before)


def _train_files(folder):
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.name != "data")


def test_enospc_writing_the_final_model_keeps_the_checkpoint(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    model = work / "m.npz"
    real = fileio.write_npz

    def write_npz(file, *args, **kwds):
        if Path(getattr(file, "name", "")).name.startswith(".m.npz."):  # the final model's temp file
            file.write(b"PK\x03\x04partial")
            raise _enospc()
        return real(file, *args, **kwds)

    monkeypatch.setattr(fileio, "write_npz", write_npz)
    result = cnn("train", data, "-o", model, "--epochs", "2")
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result)
    assert "No space left" in line, line
    assert _train_files(work) == ["m.ckpt.npz"], _train_files(work)
    _, meta, _ = load_model(work / "m.ckpt.npz")
    assert meta.checkpoint.epoch == 2
    # and the run can be finished from it once there is room again
    result = cnn("train", data, "-o", model, "--resume", work / "m.ckpt.npz")
    assert result.exit_code == 0, result.output
    load_model(model)


def test_enospc_writing_the_first_checkpoint_leaves_nothing(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    wrap, calls = _fail_after(0, partial=lambda file, *a, **k: file.write(b"PK\x03\x04"))
    monkeypatch.setattr(fileio, "write_npz", wrap(fileio.write_npz))
    result = cnn("train", data, "-o", work / "m.npz", "--epochs", "2")
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    assert "No space left" in result.stderr
    assert list(work.iterdir()) == []


def test_enospc_writing_the_metrics_after_the_model(tmp_path, monkeypatch):
    from cnn_cli import fileio

    data = _dataset(tmp_path / "data")
    work = tmp_path / "work"
    work.mkdir()
    real = fileio.write_bytes_atomic

    def write(final, payload):
        if str(final).endswith(".metrics.json"):
            raise _enospc()
        return real(final, payload)

    monkeypatch.setattr(fileio, "write_bytes_atomic", write)
    result = cnn("train", data, "-o", work / "m.npz", "--epochs", "1")
    monkeypatch.undo()
    assert result.exit_code == 1, result.output
    assert "No space left" in result.stderr
    names = _train_files(work)
    assert "m.metrics.json" not in names and not any(n.startswith(".") for n in names), names
    if "m.npz" in names:  # a final path holds a complete output or nothing
        load_model(work / "m.npz")


# ----------------------------------------------------------------- a real file-size limit


def _limit_fsize(limit):
    def setup():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return setup


@pytest.fixture(scope="module")
def warm_engine(tmp_path_factory):
    """One unlimited run first, so Numba's on-disk cache is written before any limit applies."""
    folder = tmp_path_factory.mktemp("warm")
    img = _image(folder / "w.png", shape=(48, 48))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([sys.executable, "-m", "cnn_cli", "apply", str(img), "-o", str(folder / "out")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return env


@pytest.mark.parametrize("limit", [1024, 100_000])
def test_file_size_limit_leaves_no_partial_output(tmp_path, warm_engine, limit):
    img = _image(tmp_path / "img.png", shape=(48, 48))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "cnn_cli", "apply", str(img), "-o", str(out)],
                          capture_output=True, text=True, timeout=300, env=warm_engine,
                          preexec_fn=_limit_fsize(limit))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "img.png" in errors[0] and "too large" in errors[0].lower(), proc.stderr
    assert list(out.iterdir()) == [], list(out.rglob("*"))


# ----------------------------------------------------------------- existing outputs


def test_existing_output_is_kept_and_named_and_force_replaces_it(tmp_path):
    a = _image(tmp_path / "in" / "a.png", seed=1)
    b = _image(tmp_path / "in" / "b.png", seed=2)
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "mine.txt").write_text("hand-made, do not lose")
    result = cnn("apply", a, b, "-o", out, *APPLY)
    assert result.exit_code == 3, result.output
    [line] = _error_lines(result)
    assert str(out / "a") in line and "--force" in line, line
    assert (out / "a" / "mine.txt").read_text() == "hand-made, do not lose"
    assert (out / "b" / "manifest.json").is_file()

    result = cnn("apply", a, "-o", out, *APPLY)  # alone: exit 1
    assert result.exit_code == 1 and "--force" in result.stderr, result.output

    # --force replaces what cnn wrote, never a file it did not (issue 28): a is kept and named.
    result = cnn("apply", a, b, "-o", out, *APPLY, "--force")
    assert result.exit_code == 3, result.output
    [line] = _error_lines(result)
    assert "mine.txt" in line and "cnn did not write" in line, line
    assert (out / "a" / "mine.txt").read_text() == "hand-made, do not lose"
    assert (out / "b" / "manifest.json").is_file()
    (out / "a" / "mine.txt").unlink()
    result = cnn("apply", a, b, "-o", out, *APPLY, "--force")
    assert result.exit_code == 0, result.output
    assert (out / "a" / "manifest.json").is_file()
    assert _leftovers(out) == []


def test_force_replaces_a_file_or_a_link_at_the_output_path_without_touching_the_target(tmp_path):
    img = _image(tmp_path / "img.png")
    other = _image(tmp_path / "other.png", seed=3)
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.txt").write_text("outside OUT")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(outside, out / "img")
    (out / "other").write_text("a file where the folder goes")

    result = cnn("apply", img, other, "-o", out, *APPLY)
    assert result.exit_code == 1, result.output
    # Both are there: one line says so and how to rerun (issue 28).
    assert len(_error_lines(result)) == 1 and "all 2 outputs exist" in result.stderr and "--force" in result.stderr
    assert (out / "img").is_symlink() and (out / "other").read_text() == "a file where the folder goes"

    # --force replaces the link (never its target), but not a file cnn did not write (issue 28).
    result = cnn("apply", img, other, "-o", out, *APPLY, "--force")
    assert result.exit_code == 3, result.output
    [line] = _error_lines(result)
    assert str(out / "other") in line and "cnn did not write" in line, line
    assert (out / "other").read_text() == "a file where the folder goes"
    assert (out / "img").is_dir() and not (out / "img").is_symlink()
    assert (out / "img" / "features.npz").is_file()
    assert sorted(p.name for p in outside.iterdir()) == ["data.txt"]
    assert (outside / "data.txt").read_text() == "outside OUT"
    assert _leftovers(out) == []


def test_force_replaces_a_dangling_link_at_the_output_path(tmp_path):
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    out.mkdir()
    os.symlink(tmp_path / "gone", out / "img")
    result = cnn("apply", img, "-o", out, *APPLY)
    assert result.exit_code == 1 and "--force" in result.stderr, result.output
    result = cnn("apply", img, "-o", out, *APPLY, "--force")
    assert result.exit_code == 0, result.output
    assert (out / "img" / "features.npz").is_file()


def test_train_refuses_to_overwrite_a_model_unless_forced(tmp_path):
    data = _dataset(tmp_path / "data")
    model = tmp_path / "m.npz"
    model.write_bytes(b"precious")
    result = cnn("train", data, "-o", model, "--epochs", "1")
    assert result.exit_code == 1, result.output
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("Error:") and "--force" in line
    assert model.read_bytes() == b"precious"
    result = cnn("train", data, "-o", model, "--epochs", "1", "--force")
    assert result.exit_code == 0, result.output
    load_model(model)


def test_banks_show_keeps_an_existing_file(tmp_path):
    target = tmp_path / "k.png"
    target.write_bytes(b"mine")
    result = cnn("banks", "show", "edges", "-o", target)
    assert result.exit_code == 1, result.output
    assert "--force" in result.stderr
    assert target.read_bytes() == b"mine"


# ----------------------------------------------------------------- permissions of what is written


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_outputs_get_the_usual_permissions(tmp_path, umask_022):
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    result = cnn("apply", img, "-o", out, *APPLY)
    assert result.exit_code == 0, result.output
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*")}
    modes["img"] = (out / "img").stat().st_mode & 0o777
    data = _dataset(tmp_path / "data")
    result = cnn("train", data, "-o", tmp_path / "m.npz", "--epochs", "1")
    assert result.exit_code == 0, result.output
    modes["m.npz"] = (tmp_path / "m.npz").stat().st_mode & 0o777
    modes["m.metrics.json"] = (tmp_path / "m.metrics.json").stat().st_mode & 0o777
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o755 if (out / name).is_dir() or name == "img" else 0o644)}
    assert wrong == {}, wrong
