"""The runner every streaming command plugs into (``cnn_cli.runner``), the one ``--layer(s)``
grammar (``cnn_cli.layersel``) and the one escaping of printed names (issue 23).

- SIGTERM stops ``embed``, ``explain`` and ``units`` as it stops ``apply``
  (``test_hardening.py``): exit 143, one ``Error:`` line naming the signal,
  nothing half-written at a final path, no lock or staging folder left, and
  the next run completes.
- A layer selection is parsed in one place, and a bad one is a usage error
  (exit 2) in every command, naming the layers that exist.
- A file name holding a newline or an escape sequence is printed escaped in
  results as in errors.
"""

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn
from cnn_cli.layersel import LayerRecord, OptionError, select, select_one, sequential
from tinymodel import save_tiny_model

DEFAULT_KINDS = ["conv", "abs", "maxpool", "conv", "maxpool"]  # the default pipeline's layers


def _image(path, side, seed=0, rgb=False):
    shape = (side, side, 3) if rgb else (side, side)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------- the layer grammar


@pytest.mark.parametrize("text, chosen", [
    ("0", (0,)), ("-1", (4,)), ("last", (4,)), ("layer3", (3,)), ("0,2", (0, 2)), ("2,0,2", (0, 2)),
    ("maxpool", (2, 4)), ("conv,last", (0, 3, 4)), ("1-3", (1, 2, 3)), ("2:", (2, 3, 4)), (":1", (0, 1)),
    ("-2:", (3, 4)), ("1:layer3", (1, 2, 3)), ("0:last", (0, 1, 2, 3, 4)), (" 0 , 4 ", (0, 4)),
])
def test_a_selection_names_these_layers(text, chosen):
    assert select(sequential(DEFAULT_KINDS), text) == chosen


@pytest.mark.parametrize("text, words", [
    ("7", "no such layer"), ("-6", "no such layer"), ("pool", "no such layer"), ("3-1", "range is empty"),
    ("", "give a layer"), ("1:nothing", "no such layer"), ("1-x", "no such layer"),
])
def test_a_bad_selection_says_which_layers_exist(text, words):
    with pytest.raises(OptionError) as caught:
        select(sequential(DEFAULT_KINDS), text, option="--layers")
    message = str(caught.value)
    assert words in message and "there are layers 0 to 4" in message and "2 (maxpool)" in message, message


def test_one_layer_must_be_one():
    records = sequential(DEFAULT_KINDS)
    assert select_one(records, "abs") == 1 and select_one(records, "-2") == 3 and select_one(records, "last") == 4
    for text, words in (("maxpool", r"2 layers are maxpool \(2, 4\)"), ("1-2", "no such layer"), ("0,1", "no such")):
        with pytest.raises(OptionError, match=words):
            select_one(records, text)


def test_named_nodes_of_a_graph_are_chosen_by_name_and_a_refusal_lists_what_may_be_chosen():
    """The caller gives the records: a graph's node names work as sequential ones do."""
    graph = [LayerRecord(0, "stem", "conv"), LayerRecord(1, "act", "relu"), LayerRecord(2, "head", "linear")]
    assert select(graph, "stem:act") == (0, 1) and select_one(graph, "head") == 2 and select(graph, "layer1") == (1,)

    def refuse(record):
        return "gives a vector, not maps" if record.kind == "linear" else None

    with pytest.raises(OptionError) as caught:
        select_one(graph, "head", refuse=refuse)
    message = str(caught.value)
    assert "layer 2 (linear) gives a vector" in message and "0 stem (conv), 1 act (relu)" in message, message
    assert "2 head" not in message.split(";", 1)[1], message


def test_a_long_network_is_listed_shortened():
    with pytest.raises(OptionError) as caught:
        select(sequential(["abs"] * 5000), "nothing")
    assert "and 4960 more" in str(caught.value) and len(str(caught.value)) < 1500


def test_the_readme_example_layers_maxpool_writes_the_maxpool_layers(tmp_path):
    img = _image(tmp_path / "img.png", 32)
    result = cnn("apply", img, "-o", tmp_path / "out", "--layers", "maxpool", "--save", "raw")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "img" / "manifest.json").read_text())
    assert [layer["index"] for layer in manifest["layers"]] == [2, 4]
    with np.load(tmp_path / "out" / "img" / "features.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["layer2", "layer4"]


def test_a_bad_layer_selection_is_a_usage_error_naming_the_layers_in_every_command(tmp_path):
    img = _image(tmp_path / "img.png", 32)
    model = save_tiny_model(tmp_path / "model.npz")
    calls = {
        "apply": ("apply", img, "-o", tmp_path / "a", "--layers", "nothing"),
        "embed": ("embed", img, "-o", tmp_path / "e", "--layer", "nothing"),
        "units": ("units", img, "-o", tmp_path / "u", "--layer", "nothing"),
        "explain": ("explain", img, "--model", model, "-o", tmp_path / "x", "--layer", "nothing"),
    }
    for command, args in calls.items():
        result = cnn(*args)
        assert result.exit_code == 2, (command, result.output)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: --layer"), (command, result.stderr)
        assert "'nothing'" not in lines[0] and "nothing: no such layer" in lines[0], lines[0]
        assert "0 (conv)" in lines[0], (command, lines[0])
    assert not any((tmp_path / name).exists() for name in "aeux")


# ----------------------------------------------------------------- escaping


EVIL = "evil\nfake.png: cat (1.000)\x1b[2J.png"


def test_a_file_name_holding_a_newline_is_printed_escaped_in_predict_search_and_embed(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    evil = _image(folder / EVIL, 16)
    _image(folder / "plain.png", 16, seed=1)
    model = save_tiny_model(tmp_path / "model.npz")
    escaped = "evil\\nfake.png: cat (1.000)\\x1b[2J.png"

    result = cnn("predict", evil, "--model", model)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("\n") == 1 and escaped in result.stdout and "\x1b" not in result.stdout, result.stdout

    result = cnn("embed", folder, "-o", tmp_path / "index")
    assert result.exit_code == 0, result.output
    result = cnn("search", evil, "--index", tmp_path / "index", "-k", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and escaped in lines[0] and sum(escaped in line for line in lines) == 2, result.stdout
    assert "\x1b" not in result.stdout
    parsed = json.loads(cnn("search", evil, "--index", tmp_path / "index", "--json").stdout)
    assert parsed[0]["query"] == str(evil)  # JSON carries the name itself, escaped by JSON's own rules

    broken = folder / "bad\nname.png"
    broken.write_bytes(b"not an image")
    result = cnn("embed", folder, "-o", tmp_path / "index2")
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "bad\\nname.png" in errors[0], result.stderr
    assert not [line for line in result.stderr.splitlines() if line.startswith("name.png")], result.stderr


def test_class_names_holding_escape_sequences_are_shown_escaped(tmp_path):
    from cnn_cli.modelfile import ModelMeta, build_network, save_model
    from tinymodel import META

    meta = ModelMeta.from_parts({**META, "classes": ["c\x1b]0;owned\x07at", "dog"]})
    model = tmp_path / "m.npz"
    save_model(model, build_network(meta, seed=0), meta)
    img = _image(tmp_path / "img.png", 16)
    result = cnn("predict", img, "--model", model, "--top-k", "2")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "c\\x1b]0;owned\\x07at" in result.stdout


# ----------------------------------------------------------------- signals


def _leftovers(folder):
    """Hidden entries (locks, staging folders, temporary files) under and beside ``folder``."""
    beside = [p for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}")]
    inside = list(folder.rglob(".*")) if folder.is_dir() else []
    return beside + inside


def _terminate_when(args, ready, timeout=150):
    """Start ``cnn args``, send SIGTERM once ``ready()``; (returncode, stderr), or None when it finished first."""
    proc = subprocess.Popen([sys.executable, "-m", "cnn_cli", *map(str, args)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    if proc.poll() is not None:
        proc.communicate()
        return None
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{args[0]} did not stop after SIGTERM")
    return proc.returncode, stderr


def _one_signal_line(returncode, stderr, *words):
    assert returncode == 128 + signal.SIGTERM, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "interrupted by SIGTERM" in errors[0], stderr
    assert all(word in errors[0] for word in words), errors[0]
    assert "Traceback" not in stderr, stderr


@pytest.fixture(scope="module")
def slow_set(tmp_path_factory):
    """Images large enough, and enough of them, that a run lasts well past its start (with 10, a
    quiet machine finished embed before the signal and the test skipped)."""
    folder = tmp_path_factory.mktemp("slow") / "set"
    folder.mkdir()
    for i in range(30):
        _image(folder / f"{i:02d}.png", 1024, seed=i, rgb=True)
    return folder


def test_sigterm_stops_embed_with_nothing_at_a_final_path_and_resume_finishes(tmp_path, slow_set):
    out = tmp_path / "index"
    # The lock is taken as the run starts; the progress record may come only at its first commit.
    stopped = _terminate_when(("embed", slow_set, "-o", out), lambda: (out / ".cnn-apply.lock").exists())
    if stopped is None:
        pytest.skip("the run finished before the signal")
    _one_signal_line(*stopped, "--resume")
    assert not any((out / name).exists() for name in ("embeddings.npy", "index.csv", "embed.json"))
    assert not (out / ".cnn-apply.lock").exists()
    result = cnn("embed", slow_set, "-o", out, "--resume", timeout=300)
    assert result.exit_code == 0, result.output
    # 30 rows: standardised by default (pca.npz holds the scaling; issue 28).
    assert sorted(os.listdir(out)) == ["embed.json", "embeddings.npy", "index.csv", "pca.npz"]
    assert np.load(out / "embeddings.npy").shape[0] == len(list(slow_set.iterdir()))


def test_sigterm_stops_explain_with_no_unfinished_folder_and_the_next_run_finishes(tmp_path, slow_set):
    model = save_tiny_model(tmp_path / "model.npz")
    out = tmp_path / "why"
    stopped = _terminate_when(("explain", slow_set, "--model", model, "-o", out),
                              lambda: out.is_dir() and any(not n.startswith(".") for n in os.listdir(out)))
    if stopped is None:
        pytest.skip("the run finished before the signal")
    _one_signal_line(*stopped, str(out))
    assert _leftovers(out) == [], _leftovers(out)
    assert not (out / "index.html").exists()  # the report is written by a run that finishes
    done = [p for p in out.iterdir()]
    for folder in done:  # whatever is at a final path is complete
        assert json.loads((folder / "explain.json").read_text())["targets"], folder
    result = cnn("explain", slow_set, "--model", model, "-o", out, "--force", timeout=300)
    assert result.exit_code == 0, result.output
    assert _leftovers(out) == [] and len([p for p in out.iterdir() if p.is_dir()]) == len(list(slow_set.iterdir()))


def test_sigterm_stops_units_with_nothing_written_and_the_next_run_finishes(tmp_path, slow_set):
    out = tmp_path / "units"
    lock = tmp_path / ".units.lock"
    stopped = _terminate_when(("units", slow_set, "--layer", "0", "-o", out), lock.exists)
    if stopped is None:
        pytest.skip("the run finished before the signal")
    _one_signal_line(*stopped, "nothing was written")
    assert not out.exists() and _leftovers(out) == [], _leftovers(out)
    result = cnn("units", slow_set, "--layer", "0", "-o", out, "-k", "2", timeout=300)
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["layer0.png", "patches.npz", "units.json"] and _leftovers(out) == []


def test_a_killed_units_run_leaves_staging_that_the_next_run_removes(tmp_path, slow_set):
    """units holds a lock beside its output, so a staging folder found there is a killed run's."""
    out = tmp_path / "units"
    (tmp_path / ".units.partial" / "half").mkdir(parents=True)
    result = cnn("units", slow_set / "00.png", "--layer", "0", "-o", out, "-k", "1", timeout=300)
    assert result.exit_code == 0, result.output
    assert "removed 1 unfinished output" in result.stderr and _leftovers(out) == [], result.stderr


# ----------------------------------------------------------------- layering


def test_no_command_module_imports_another_and_nothing_imports_upwards():
    """apply, embed, explain, units and train are siblings; the runner and the layer grammar sit below them."""
    commands = {"apply", "embed", "explain", "units", "train", "export", "keypointing"}
    below = {"runner", "layersel", "stream", "cluster", "inputs", "sources", "keypoints", "matching", "keypoint_overlay"}
    package = Path(__file__).resolve().parents[1] / "cnn_cli"
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        if path.stem in commands:
            assert not imported & (commands - {path.stem}), (path.name, imported & commands)
        if path.stem in below:
            assert not imported & commands, (path.name, imported & commands)
