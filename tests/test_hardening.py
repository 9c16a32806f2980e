"""What an adversarial probe broke (issue 18), one test per case.

Every refusal is one ``Error:`` line on stderr with the documented exit code,
leaves nothing half-written at a final path, ends in bounded time (each CLI
call runs under a time limit) and in bounded memory (the cases that used to
allocate run in a child process whose peak memory is measured).
"""

import io
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn, time_limit
from cnn_cli import config, fileio
from cnn_cli.apply import ApplyOptions, estimate_bytes
from cnn_cli.fileio import NotRegularFileError, NpzError, load_npz_arrays, temporary_kind, temporary_name
from cnn_cli.filterbank import BankError, load_bank
from cnn_cli.imageio import ImageError, find_images, read_image
from cnn_cli.modelfile import load_model
from cnn_cli.pipeline import load_architecture, load_pipeline, plan_layers
from cnn_cli.specfile import SpecFileError
from tinymodel import save_tiny_model

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _one_error_line(result, code=1):
    """The refusal contract: the exit code and exactly one line on stderr, ``Error: ...``."""
    assert result.exit_code == code, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def _child_error_line(proc, code=1):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]


def _cnn_child(*args, timeout=180, **kwargs):
    """``cnn args...`` in a child process (for signals, closed or broken stdout, memory)."""
    return subprocess.run([sys.executable, "-m", "cnn_cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture
def img(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def model(tmp_path):
    return save_tiny_model(tmp_path / "model.npz")


def _fifo(path):
    os.mkfifo(path)
    return path


def _device(path):
    """A character device like /dev/null, made in the test's own folder (root only)."""
    if not IS_ROOT:
        pytest.skip("making a device node needs root")
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def _kind(path):
    mode = os.lstat(path).st_mode
    return "fifo" if stat.S_ISFIFO(mode) else "char" if stat.S_ISCHR(mode) else "other"


SPECIAL = {"fifo": _fifo, "device": _device}


# ----------------------------------------------------------------- 1. outputs that are not files or folders


@pytest.mark.parametrize("make", sorted(SPECIAL))
def test_banks_show_never_replaces_a_special_file_even_with_force(tmp_path, make):
    node = SPECIAL[make](tmp_path / "kernels.png")
    before = _kind(node)
    line = _one_error_line(cnn("banks", "show", "edges", "-o", node, "--force", timeout=60))
    assert str(node) in line and "not a regular file or folder" in line, line
    assert _kind(node) == before
    assert sorted(os.listdir(tmp_path)) == ["kernels.png"]  # no temporary left


@pytest.mark.parametrize("make", sorted(SPECIAL))
def test_apply_and_embed_refuse_a_special_output(tmp_path, img, make):
    node = SPECIAL[make](tmp_path / "out")
    for args in (("apply", img, "-o", node, "--force"), ("embed", img, "-o", node)):
        line = _one_error_line(cnn(*args, timeout=60))
        assert str(node) in line and "not a regular file or folder" in line, line
        assert _kind(node) in ("fifo", "char")


@pytest.mark.parametrize("make", sorted(SPECIAL))
def test_apply_force_never_replaces_a_special_file_inside_out(tmp_path, img, make):
    out = tmp_path / "out"
    out.mkdir()
    node = SPECIAL[make](out / "img")
    before = _kind(node)
    line = _one_error_line(cnn("apply", img, "-o", out, "--force", "--save", "raw", timeout=120))
    assert "img" in line and "not a regular file or folder" in line, line
    assert _kind(node) == before
    assert [n for n in os.listdir(out) if n.startswith(".") and n != ".cnn-apply.lock"] == []


def test_every_atomic_write_checks_its_target(tmp_path):
    fifo = _fifo(tmp_path / "target")
    with pytest.raises(NotRegularFileError):
        fileio.write_bytes_atomic(fifo, b"x")
    with pytest.raises(NotRegularFileError):
        fileio.save_npz_atomic(fifo, {"a": np.zeros(2)})
    staging = tmp_path / ".staging"
    staging.mkdir()
    with pytest.raises(NotRegularFileError):
        fileio.replace_dir(staging, fifo, force=True)
    assert _kind(fifo) == "fifo" and staging.is_dir()
    for fine in (tmp_path / "missing", tmp_path / ".staging"):
        fileio.check_output(fine)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    fileio.check_output(link)  # a link is replaced itself, never its target


# ----------------------------------------------------------------- 2. special files as inputs


@pytest.mark.parametrize("make", ["fifo", "zero"])
def test_model_that_is_a_fifo_or_a_device_is_refused_at_once(tmp_path, img, make):
    path = _fifo(tmp_path / "m.npz") if make == "fifo" else Path("/dev/zero")
    what = "named pipe" if make == "fifo" else "character device"
    for args in (("info", path), ("predict", img, "--model", path), ("apply", img, "--model", path,
                                                                   "-o", tmp_path / "out")):
        line = _one_error_line(cnn(*args, timeout=30))
        assert str(path) in line and what in line, line


def test_bank_weights_file_and_spec_files_that_are_fifos(tmp_path, img):
    _fifo(tmp_path / "w.npz")
    bank = tmp_path / "bank.toml"
    bank.write_text('[weights]\nfile = "w.npz"\nkey = "w"\n')
    line = _one_error_line(cnn("apply", img, "--bank", bank, "-o", tmp_path / "out", timeout=30))
    assert "w.npz" in line and "named pipe" in line, line
    zero = tmp_path / "zero.toml"
    zero.write_text('[weights]\nfile = "/dev/zero"\nkey = "w"\n')
    line = _one_error_line(cnn("banks", "show", zero, "-o", tmp_path / "k.png", timeout=30))
    assert "/dev/zero" in line and "character device" in line, line
    for name in ("p.toml", "b.toml"):
        spec = _fifo(tmp_path / name)
        line = _one_error_line(cnn("info", spec, timeout=30))
        assert str(spec) in line and "named pipe" in line, line
    line = _one_error_line(cnn("info", "/dev/zero", timeout=30))
    assert "character device" in line, line


def test_fifo_given_directly_is_named_as_such_not_missing(tmp_path, img, model):
    fifo = _fifo(tmp_path / "pipe.png")
    result = cnn("predict", img, fifo, tmp_path / "nothing.png", "--model", model, timeout=30)
    assert result.exit_code == 3, result.output
    assert f"{fifo}: is a named pipe (FIFO), not a regular file" in result.stderr, result.stderr
    assert "nothing.png: no such file or folder" in result.stderr, result.stderr
    with pytest.raises(ImageError, match="named pipe"):
        read_image(fifo)


def test_size_is_checked_before_a_spec_file_is_read(tmp_path, monkeypatch):
    import cnn_cli.specfile as specfile

    bank = tmp_path / "big.toml"
    bank.write_text('[[kernel]]\nname = "k"\nvalues = [[1, 2], [3, 4]]\n' + "# padding\n" * 200)
    monkeypatch.setattr(specfile, "MAX_SPEC_BYTES", 1000)
    with pytest.raises(BankError, match="larger than"):
        load_bank(str(bank))


def test_open_regular_never_opens_a_device(tmp_path):
    with pytest.raises(NotRegularFileError, match="character device"):
        fileio.open_regular("/dev/zero")
    with pytest.raises(ValueError, match="larger than"):
        path = tmp_path / "f"
        path.write_bytes(b"x" * 100)
        fileio.open_regular(path, max_bytes=10)


# ----------------------------------------------------------------- 3. recursive globs and link loops


def test_recursive_glob_with_link_loops_ends_and_finds_each_image_once(tmp_path, img):
    root = tmp_path / "d"
    (root / "a" / "b").mkdir(parents=True)
    Image.open(img).save(root / "a" / "b" / "x.png")
    (root / "a" / "b" / "up").symlink_to(root)
    (root / "a" / "loop").symlink_to("..")
    (root / "self").symlink_to(".")
    with time_limit(30):
        paths, problems = find_images([f"{root}/**/*.png"])
    assert paths == [root / "a" / "b" / "x.png"] and not problems
    out = tmp_path / "out"
    result = cnn("apply", f"{root}/**/*.png", "-o", out, "--save", "raw", timeout=120)
    assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("manifest.json")) == ["a/b/x/manifest.json"]


# ----------------------------------------------------------------- 4. sizes planned before allocating


def _model_with_meta(tmp_path, model, change, name="bad.npz"):
    arrays = load_npz_arrays(model)
    meta = json.loads(arrays["__meta__"].tobytes())
    change(meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _huge_convs(meta):
    big = {"type": "conv", "out_channels": 4096, "kernel_size": 63, "padding": 31}
    meta["architecture"]["layers"][:1] = [big, dict(big)]


# Runs ``cnn`` in this process and reports its exit code, stderr and peak memory growth.
MEMORY_PROBE = """
import contextlib, io, json, resource, sys
from cnn_cli.cli import app
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
err = io.StringIO()
with contextlib.redirect_stderr(err):
    try:
        app(sys.argv[1:])
        code = 0
    except SystemExit as exc:
        code = exc.code
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"code": code, "stderr": err.getvalue(), "growth_mb": growth}))
"""


def _memory_probe(*args, timeout=120):
    child = subprocess.run([sys.executable, "-c", MEMORY_PROBE, *map(str, args)], capture_output=True, text=True,
                           timeout=timeout)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.splitlines()[-1])


def test_model_declaring_huge_layers_is_refused_before_allocating(tmp_path, model, img):
    path = _model_with_meta(tmp_path, model, _huge_convs)
    for args in (("info", path), ("predict", img, "--model", path)):
        line = _one_error_line(cnn(*args, timeout=30))
        assert str(path) in line and "memory" in line and config.MEMORY_ENV in line and "layer 1" in line, line
    report = _memory_probe("info", path)
    assert report["code"] == 1 and "would need about" in report["stderr"], report
    assert report["growth_mb"] < 200, report


def test_architecture_and_pipeline_that_explode_are_refused_before_allocating(tmp_path, img):
    arch = tmp_path / "arch.toml"
    arch.write_text('kind = "architecture"\n' + '[[layer]]\ntype = "conv"\nout_channels = 4096\nkernel_size = 63\n' * 2
                    + '[[layer]]\ntype = "flatten"\n[[layer]]\ntype = "linear"\nout_features = "classes"\n')
    with pytest.raises(SpecFileError, match="would need about"):
        load_architecture(str(arch))  # what cnn train --arch reads first
    pipe = tmp_path / "pipe.toml"
    pipe.write_text('kind = "pipeline"\n' + '[[layer]]\ntype = "conv"\nbanks = ["edges"]\nmode = "depthwise"\n' * 8)
    for target in (arch, pipe):
        line = _one_error_line(cnn("info", target, timeout=30))
        assert str(target) in line and "memory" in line, line
    line = _one_error_line(cnn("apply", img, "--pipeline", pipe, "-o", tmp_path / "out", timeout=30))
    assert "214,358,881" in line, line  # the channels of layer 7: 11 ** 8
    report = _memory_probe("info", pipe)
    assert report["code"] == 1 and report["growth_mb"] < 200, report


def test_the_memory_limit_can_be_raised_and_lowered(tmp_path, img, monkeypatch):
    pipe = tmp_path / "pipe.toml"
    pipe.write_text('kind = "pipeline"\n' + '[[layer]]\ntype = "conv"\nbanks = ["edges"]\nmode = "depthwise"\n' * 4)
    assert cnn("info", pipe, "--size", 16, timeout=60).exit_code == 0
    monkeypatch.setenv(config.MEMORY_ENV, "1M")
    line = _one_error_line(cnn("info", pipe, timeout=30))
    assert f"{config.MEMORY_ENV}=1M" in line, line
    monkeypatch.setenv(config.MEMORY_ENV, "lots")
    _one_error_line(cnn("apply", img, "-o", tmp_path / "out", timeout=30), code=2)
    monkeypatch.delenv(config.MEMORY_ENV)
    _one_error_line(cnn("apply", img, "-o", tmp_path / "out", "--max-memory", "-5G", timeout=30), code=2)


@pytest.mark.parametrize("name", ["lenet", "alexnet", "resnet", "netvlad"])
def test_the_plan_counts_what_a_network_really_holds(name):
    from cnn_cli.nn import Network
    from cnn_cli.pipeline import build_layers

    _, _, tables = load_architecture(name)
    plan = plan_layers(build_layers(tables, name, substitutions={"classes": 7}), (3, 40, 40))
    network = Network(build_layers(tables, name, substitutions={"classes": 7}), (3, 40, 40))
    assert plan.params == sum(v.size for v in network.state_dict().values())
    assert [p.shape for p in plan.layers] == [tuple(s) for s in network.shapes]


def test_planning_never_changes_the_layers_it_plans(img):
    """apply estimates sizes on its reader thread while the engine runs the same layers."""
    pipe = load_pipeline("default").bind(["gray"])
    before = [[w.shape for w, _, _ in getattr(layer, "filters", [])] for layer in pipe.layers]
    estimate_bytes(pipe, (1, 77, 91), ApplyOptions())
    plan_layers(pipe.layers, (5, 64, 64))
    assert [[w.shape for w, _, _ in getattr(layer, "filters", [])] for layer in pipe.layers] == before
    assert pipe.forward(np.zeros((1, 1, 32, 32), np.float32))[0].shape[1] == len(pipe.channels[0])


# ----------------------------------------------------------------- 5. apply's budget: memory and disk


def test_apply_refuses_an_image_whose_maps_pass_the_memory_limit(tmp_path, img):
    big = tmp_path / "white.png"
    Image.new("L", (3000, 3000), 255).save(big)  # 9 Mpx in a few kB
    out = tmp_path / "out"
    line = _one_error_line(cnn("apply", big, "-o", out, "--max-memory", "200M", timeout=60))
    assert str(big) in line and "3000x3000" in line and "--max-size" in line and "--max-memory" in line, line
    result = cnn("apply", big, img, "-o", out, "--max-memory", "200M", "--save", "raw", timeout=120)
    assert result.exit_code == 3, result.output
    assert sorted(os.listdir(out)) == ["img", "index.html"]  # the image and the report


def test_apply_refuses_an_image_larger_than_the_free_disk(tmp_path, img, monkeypatch):
    import shutil

    import cnn_cli.apply as apply_module

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(apply_module.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    line = _one_error_line(cnn("apply", img, "-o", tmp_path / "out", timeout=60))
    assert "are free on the disk" in line and "--dtype float16" in line, line
    assert not (tmp_path / "out" / "img").exists()


def test_memory_estimate_follows_the_measured_cost_per_pixel():
    """About 157 bytes of memory and 130 of disk per pixel for the default pipeline (README)."""
    pipe = load_pipeline("default").bind(["gray"])
    disk, memory = estimate_bytes(pipe, (1, 2048, 2048), ApplyOptions())
    assert 120 <= disk / 2048**2 <= 140 and 150 <= memory / 2048**2 <= 175, (disk, memory)


# ----------------------------------------------------------------- 6. JPEGs cut short with an end marker


def _jpeg(array, **options):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", **options)
    return buf.getvalue()


_rng = np.random.default_rng(3)
_PHOTO = np.clip(np.add.outer(np.arange(48), np.arange(40))[..., None] * 2 + _rng.normal(0, 20, (48, 40, 3)),
                 0, 255).astype(np.uint8)
JPEG_OPTIONS = {"baseline": {"quality": 90}, "420": {"quality": 80, "subsampling": 2},
                "progressive": {"quality": 85, "progressive": True}, "optimized": {"quality": 85, "optimize": True}}


@pytest.mark.parametrize("kind", sorted(JPEG_OPTIONS))
@pytest.mark.parametrize("keep", [0.3, 0.7, 0.95, -12, -4])
def test_jpeg_cut_short_with_an_end_marker_appended_is_refused(tmp_path, kind, keep):
    data = _jpeg(_PHOTO, **JPEG_OPTIONS[kind])
    cut = data[:int(len(data) * keep)] if keep > 0 else data[:len(data) - 2 + keep]
    path = tmp_path / "cut.jpg"
    path.write_bytes(cut.rstrip(b"\xff") + b"\xff\xd9")
    with pytest.raises(ImageError, match="damaged or truncated") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kind", sorted(JPEG_OPTIONS))
@pytest.mark.parametrize("picture", ["photo", "mid-grey", "grey-bottom", "tiny"])
def test_complete_jpegs_still_read(tmp_path, kind, picture):
    array = {"photo": _PHOTO, "mid-grey": np.full((40, 40), 128, np.uint8),
             "grey-bottom": np.vstack([np.zeros((20, 40, 3), np.uint8), np.full((20, 40, 3), 128, np.uint8)]),
             "tiny": _PHOTO[:3, :5]}[picture]
    path = tmp_path / "ok.jpg"
    path.write_bytes(_jpeg(array, **JPEG_OPTIONS[kind]) + b"trailing junk after the end marker")
    assert read_image(path).shape[1:] == array.shape[:2]


def test_truncated_jpeg_through_the_cli(tmp_path, img):
    data = _jpeg(_PHOTO, quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[:len(data) // 2] + b"\xff\xd9")
    result = cnn("apply", cut, img, "-o", tmp_path / "out", "--save", "raw", timeout=120)
    assert result.exit_code == 3, result.output
    assert f"{cut}: damaged or truncated image" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "cut").exists() and (tmp_path / "out" / "img").is_dir()


# ----------------------------------------------------------------- 7. one Error line, never a traceback


def _deep(depth):
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [400, 50_000])
def test_deeply_nested_toml_is_one_line(tmp_path, img, depth):
    bank = tmp_path / "bank.toml"
    bank.write_text(f'[[kernel]]\nname = "k"\nvalues = {_deep(depth)}\n')
    pipe = tmp_path / "pipe.toml"
    pipe.write_text(f'kind = "pipeline"\n[[layer]]\ntype = "maxpool"\nkernel_size = {_deep(depth)}\n')
    for args in (("apply", img, "--bank", bank, "-o", tmp_path / "o"), ("info", pipe)):
        line = _one_error_line(cnn(*args, timeout=60))
        assert "bank.toml" in line or "pipe.toml" in line, line


@pytest.mark.parametrize("depth", [800, 100_000])
def test_deeply_nested_meta_json_is_one_line(tmp_path, model, img, depth):
    raw = '{"format": "cnn-model", "format_version": 1, "history": ' + _deep(depth) + "}"
    arrays = load_npz_arrays(model)
    arrays["__meta__"] = np.frombuffer(raw.encode(), np.uint8)
    path = tmp_path / "deep.npz"
    np.savez(path, **arrays)
    for args in (("info", path), ("predict", img, "--model", path)):
        _one_error_line(cnn(*args, timeout=60))


WRONG_META = {
    "classes of numbers": (lambda m: m.__setitem__("classes", [1, 2]), "classes[0]"),
    "classes a string": (lambda m: m.__setitem__("classes", "cat,dog"), "classes"),
    "training a number": (lambda m: m.__setitem__("training", 5), "training"),
    "architecture a number": (lambda m: m.__setitem__("architecture", 5), "architecture"),
    "layers a string": (lambda m: m["architecture"].__setitem__("layers", "conv"), "layers"),
    "image size a string": (lambda m: m["preprocessing"].__setitem__("image_size", "8"), "image_size"),
    "history not a list": (lambda m: m["training"].update(epochs_run=1, history=5, final_val_loss=None,
                                                          final_val_accuracy=None, finished="x"), "history"),
    "mean of 1e38": (lambda m: m["preprocessing"].__setitem__("mean", [1e38]), "mean"),
    "std of 1e-38": (lambda m: m["preprocessing"].__setitem__("std", [1e-38]), "std"),
    "mean nan": (lambda m: m["preprocessing"].__setitem__("mean", [float("nan")]), "finite"),
}


@pytest.mark.parametrize("case", sorted(WRONG_META))
def test_wrong_or_non_finite_metadata_is_one_line(tmp_path, model, img, case):
    change, field = WRONG_META[case]
    path = _model_with_meta(tmp_path, model, change)
    for args in (("info", path), ("predict", img, "--model", path, "--json")):
        result = cnn(*args, timeout=60)
        line = _one_error_line(result)
        assert str(path) in line and field in line, line
        assert "NaN" not in result.stdout


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "back\\slash", "cr\r", "nul\x00"])
def test_kernel_names_that_are_not_one_line_of_text_are_refused(tmp_path, img, name):
    bank = tmp_path / "bank.toml"
    bank.write_text(f'[[kernel]]\nname = {json.dumps(name)}\nvalues = [[1, 0], [0, -1]]\n')
    line = _one_error_line(cnn("banks", "show", bank, "-o", tmp_path / "k.png", timeout=30))
    assert "kernel 1" in line and "name" in line, line
    np.savez(tmp_path / "w.npz", w=np.ones((1, 1, 3, 3), np.float32))
    weights = tmp_path / "weights.toml"
    weights.write_text(f'[weights]\nfile = "w.npz"\nkey = "w"\nnames = [{json.dumps(name)}]\n')
    line = _one_error_line(cnn("apply", img, "--bank", weights, "-o", tmp_path / "o", timeout=30))
    assert "names[0]" in line, line


def test_class_names_with_mathtext_are_drawn_literally():
    from cnn_cli.plots import confusion_png, text_label

    names = ["$\\foo$", "a$b$c", "$", "\\$x$", "x" * 5000, "two\nlines"]
    png = confusion_png(np.eye(len(names), dtype=int) * 3, names)
    assert png.startswith(b"\x89PNG")
    assert text_label("$\\foo$") == "\\$\\foo\\$"


def test_closed_stdout_is_one_error_line(tmp_path, model, img):
    for args in (("banks",), ("info", "default"), ("predict", img, "--model", model)):
        proc = _cnn_child(*args, timeout=120, preexec_fn=lambda: os.close(1))
        assert "standard output is closed" in _child_error_line(proc)
    proc = _cnn_child("apply", img, "-o", tmp_path / "out", "--save", "raw", timeout=120,
                      preexec_fn=lambda: os.close(1))
    assert proc.returncode == 0, proc.stderr  # nothing for stdout: a closed one is fine


def test_a_reader_that_goes_away_ends_the_command_quietly(model, img):
    for args in (("predict", img, "--model", model), ("predict", img, "--model", model, "--json"),
                 ("banks",), ("info", "default")):
        read, write = os.pipe()
        os.close(read)
        try:
            proc = subprocess.run([sys.executable, "-m", "cnn_cli", *map(str, args)], stdout=write,
                                  stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write)
        assert proc.returncode == 128 + signal.SIGPIPE and proc.stderr == "", (args, proc.returncode, proc.stderr)


def test_error_lines_stay_one_line(tmp_path, img):
    odd = tmp_path / "two\nlines.png"
    odd.write_bytes(b"not an image")
    result = cnn("apply", odd, img, "-o", tmp_path / "out", "--save", "raw", timeout=120)
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "two\\nlines.png" in errors[0], result.stderr


# ----------------------------------------------------------------- 8. signals and leftovers


def _slow_image(path, side=1536):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (side, side), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_during_apply_leaves_no_unfinished_folder(tmp_path, img, signum):
    big = _slow_image(tmp_path / "big.png")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cnn_cli", "apply", str(big), str(img), "-o", str(out)],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(n.endswith(".partial") for n in os.listdir(out)):
            break
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before a write was under way")
    proc.send_signal(signum)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("apply did not stop after the signal")
    assert proc.returncode == 128 + signum, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and signal.Signals(signum).name in lines[0] and "--skip-existing" in lines[0], stderr
    leftovers = [p for p in out.rglob(".*") if p.name != ".cnn-apply.lock"]
    assert leftovers == [], leftovers
    for folder in out.iterdir():  # whatever is there is complete
        if folder.is_dir():
            assert json.loads((folder / "manifest.json").read_text())["layers"]


def test_leftovers_of_a_killed_run_are_removed_by_the_next_run_and_named(tmp_path, img):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    Image.open(img).save(data / "top.png")
    Image.open(img).save(data / "sub" / "deep.png")
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    stale = [out / ".top.partial", out / "sub" / ".deep.partial", out / "sub" / ".old.old.abc_1234"]
    for folder in stale:
        (folder / "layer0").mkdir(parents=True)
        (folder / "layer0" / "000.png").write_bytes(b"half")
    (out / ".x.png.k3j_9zq1.tmp").write_bytes(b"half")
    (out / ".notes").write_text("the user's own")
    (out / "sub" / ".keep.partial").write_text("a file, not a folder of ours")
    result = cnn("apply", data, "-o", out, "--save", "raw", timeout=120)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("removed 2 unfinished output(s)") == 2, result.stderr
    assert str(out / "sub") in result.stderr, result.stderr
    assert not any(p.exists() for p in stale) and not (out / ".x.png.k3j_9zq1.tmp").exists()
    assert (out / ".notes").exists() and (out / "sub" / ".keep.partial").exists()
    assert (out / "top" / "manifest.json").exists() and (out / "sub" / "deep" / "manifest.json").exists()


def test_our_temporary_names_are_recognised_and_never_too_long():
    assert temporary_kind(".photo.partial") == "partial"
    assert temporary_kind(".photo.old.ab_cd123") == "old"
    assert temporary_kind(".model.npz.ab_cd123.tmp.npz") == "file"
    for name in (".photo", ".cnn-apply.lock", "photo.partial", ".photo.old", ".x.tmp"):
        assert temporary_kind(name) is None, name
    long_name = "é" * 127 + ".png"
    for tail, reserve in ((".partial", 0), (".old.", 8), (".", 8 + len(".tmp.npz"))):
        short = temporary_name(long_name, tail, reserve)
        assert len(os.fsencode(short)) + reserve <= 255
    assert temporary_kind(temporary_name(long_name, ".partial")) == "partial"


# ----------------------------------------------------------------- 9. concurrent runs into one output


def test_six_concurrent_forced_runs_into_one_output(tmp_path, img):
    out = tmp_path / "out"
    assert cnn("apply", img, "-o", out, "--save", "raw", timeout=120).exit_code == 0
    procs = [subprocess.Popen([sys.executable, "-m", "cnn_cli", "apply", str(img), "-o", str(out), "--force",
                               "--save", "raw"], stderr=subprocess.PIPE, text=True) for _ in range(6)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for code, stderr in results:
        assert code in (0, 1), stderr
        if code == 1:
            lines = [line for line in stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and "another cnn run is writing" in lines[0], stderr
        assert "Directory not empty" not in stderr and "Traceback" not in stderr
    assert any(code == 0 for code, _ in results)
    assert sorted(os.listdir(out)) == ["img", "index.html"]  # the image and the report
    assert np.load(out / "img" / "features.npz", allow_pickle=False)["layer0"].shape[0] > 0


# ----------------------------------------------------------------- 10. labels


def test_a_10000_character_kernel_name_is_drawn_quickly_and_shortened(tmp_path, img):
    bank = tmp_path / "bank.toml"
    bank.write_text(f'[[kernel]]\nname = "{"k" * 10_000}"\nvalues = [[1, 0], [0, -1]]\n')
    # Each took more than 30 s before labels were capped.
    result = cnn("banks", "show", bank, "-o", tmp_path / "k.png", timeout=30)
    assert result.exit_code == 0, result.output
    result = cnn("apply", img, "--bank", bank, "-o", tmp_path / "out", "--save", "grids", timeout=60)
    assert result.exit_code == 0, result.output
    from cnn_cli.viz import LABEL_MAX_CHARS, label_text

    assert len(label_text("k" * 10_000)) == LABEL_MAX_CHARS and "…" in label_text("k" * 10_000)


# ----------------------------------------------------------------- 11. output inside the input


def test_apply_into_the_input_folder_does_not_read_its_own_outputs(tmp_path, img):
    data = tmp_path / "data"
    data.mkdir()
    Image.open(img).save(data / "a.png")
    for _ in range(2):
        result = cnn("apply", data, "-o", data, "--force", "--save", "maps,raw", timeout=120)
        assert result.exit_code == 0, result.output
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob("manifest.json")) == ["a/manifest.json"]


def test_apply_dot_into_dot_ends(tmp_path, img, monkeypatch):
    Image.open(img).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    for flag in ("--force", "--skip-existing"):
        result = cnn("apply", ".", "-o", ".", flag, "--save", "maps,raw", timeout=120)
        assert result.exit_code == 0, result.output
    manifests = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("manifest.json"))
    assert manifests == ["a/manifest.json", "img/manifest.json"]


# ----------------------------------------------------------------- 13. smaller items


def _tiff(path, array, sample_format=1):
    """A minimal uncompressed little-endian TIFF of a (H, W) or (H, W, 3) uint16/int16 array."""
    h, w = array.shape[:2]
    bands = 1 if array.ndim == 2 else array.shape[2]
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, bands, None), (259, 3, 1, 1),
               (262, 3, 1, 2 if bands == 3 else 1), (273, 4, 1, None), (277, 3, 1, bands), (278, 3, 1, h),
               (279, 4, 1, len(data)), (339, 3, bands, None)]
    ifd_offset = 8
    extra_offset = ifd_offset + 2 + 12 * len(entries) + 4
    extra = struct.pack(f"<{bands}H", *[16] * bands) + struct.pack(f"<{bands}H", *[sample_format] * bands)
    data_offset = extra_offset + len(extra)
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 258:
            value = struct.unpack("<H", extra[:2])[0] if bands == 1 else extra_offset
        elif tag == 339:
            value = sample_format if bands == 1 else extra_offset + 2 * bands
        elif tag == 273:
            value = data_offset
        packed = struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                          else struct.pack("<I", value))
        ifd += packed
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + extra + data)
    return path


def test_16_bit_rgb_tiff_keeps_every_level(tmp_path):
    levels = np.random.default_rng(0).integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    path = _tiff(tmp_path / "rgb16.tif", levels)
    got = read_image(path, color="rgb")
    assert got.shape == (3, 5, 7)
    np.testing.assert_allclose(got, np.moveaxis(levels, -1, 0) / 65535.0, atol=1e-7)
    assert np.any(np.round(got * 65535) % 257), "only 256 levels (multiples of 257) survived"


def test_16_bit_rgb_tiff_compressed_keeps_every_level(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    levels = np.random.default_rng(1).integers(0, 65536, (6, 5, 3), dtype=np.uint16)
    for byteorder in "<>":
        path = tmp_path / f"deflate{byteorder == '<'}.tif"
        tifffile.imwrite(path, levels, photometric="rgb", compression="zlib", byteorder=byteorder)
        np.testing.assert_allclose(read_image(path, color="rgb"), np.moveaxis(levels, -1, 0) / 65535.0, atol=1e-7)


def test_signed_16_bit_tiff_keeps_its_negative_values(tmp_path):
    values = np.array([[-32768, -1000, -1], [0, 1000, 32767]], np.int16)
    got = read_image(_tiff(tmp_path / "s16.tif", values, sample_format=2))[0]
    np.testing.assert_allclose(got, (values.astype(np.float64) + 32768) / 65535, atol=1e-7)
    assert got[0, 0] == 0.0 and got[1, 2] == 1.0 and len(np.unique(got)) == 6


def test_255_byte_output_names(tmp_path, img):
    name = "k" * 251 + ".png"
    for extra in ((), ("--force",)):
        result = cnn("banks", "show", "edges", "-o", tmp_path / name, *extra, timeout=60)
        assert result.exit_code == 0, result.output
    folder = tmp_path / ("o" * 255)
    for extra in ((), ("--force",)):
        assert cnn("apply", img, "-o", folder, "--save", "raw", *extra, timeout=60).exit_code == 0
    assert sorted(os.listdir(tmp_path)) == sorted([name, "o" * 255, "img.png"])
    staging = tmp_path / "s"
    staging.mkdir()
    fileio.replace_dir(staging, tmp_path / name, force=True)  # a folder replacing a 255-byte file
    assert (tmp_path / name).is_dir()


def test_sparse_weights_saved_compressed_load(tmp_path, img, model):
    weights = np.zeros((4, 1, 63, 63), np.float32)
    weights[:, 0, 31, 31] = 1.0
    np.savez_compressed(tmp_path / "w.npz", w=weights)
    info = zipfile.ZipFile(tmp_path / "w.npz").getinfo("w.npy")
    assert info.file_size > 67 * info.compress_size  # expands more than the old limit allowed
    bank = tmp_path / "sparse.toml"
    bank.write_text('[weights]\nfile = "w.npz"\nkey = "w"\n')
    assert len(load_bank(str(bank)).kernels) == 4
    arrays = load_npz_arrays(model)
    arrays["0.weight"] = np.zeros_like(arrays["0.weight"])
    np.savez_compressed(tmp_path / "sparse_model.npz", **arrays)
    assert load_model(tmp_path / "sparse_model.npz")[0].num_params == 86
    assert cnn("predict", img, "--model", tmp_path / "sparse_model.npz", timeout=60).exit_code == 0


def test_zip_methods_numpy_never_writes_are_refused(tmp_path):
    path = tmp_path / "bz2.npz"
    member = io.BytesIO()
    np.lib.format.write_array(member, np.zeros(10, np.float32))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_BZIP2) as z:
        z.writestr("a.npy", member.getvalue())
    with pytest.raises(NpzError, match="zip method"):
        load_npz_arrays(path)


def test_bank_weights_that_declare_too_much_are_refused_unread(tmp_path, monkeypatch):
    import cnn_cli.specfile as specfile

    monkeypatch.setattr(specfile, "MAX_WEIGHTS_BYTES", 2**20)
    np.savez_compressed(tmp_path / "w.npz", w=np.zeros((80, 1, 63, 63), np.float32))  # 1.3 MB of zeros
    bank = tmp_path / "big.toml"
    bank.write_text('[weights]\nfile = "w.npz"\nkey = "w"\n')
    with pytest.raises(BankError, match="more than 1,048,576 bytes"):
        load_bank(str(bank))


def test_the_lock_and_the_signals_leave_the_process_as_it_was():
    """stopped_by_signals restores the handlers it replaced."""
    from cnn_cli.cli.common import stopped_by_signals

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with stopped_by_signals():
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
    assert {s: signal.getsignal(s) for s in before} == before
    assert threading.current_thread() is threading.main_thread()
