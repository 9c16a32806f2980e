"""`cnn apply` at scale: what to write (--save, --layers, --dtype), mirrored folders,
resume after a kill, one writer per output, flat memory, and Dask clusters."""

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

SOBEL = ("--bank", "edges:sobel_*")
LAYER_KEYS = [f"layer{i}" for i in range(5)]  # the default pipeline has five layers


def _image(path, seed=0, shape=(40, 56)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(data, mode="L").save(path)
    return path


def _folder(root, count, shape=(40, 56), classes=("brick", "stone")):
    return [_image(Path(root) / classes[i % len(classes)] / f"{i:03d}.png", seed=i, shape=shape)
            for i in range(count)]


def _outputs(out):
    """{folder relative to out: (manifest, arrays)} of every output folder under ``out``."""
    found = {}
    for manifest in sorted(Path(out).rglob("manifest.json")):
        folder = manifest.parent
        arrays = {}
        if (folder / "features.npz").exists():
            with np.load(folder / "features.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        found[str(folder.relative_to(out))] = (json.loads(manifest.read_text()), arrays)
    return found


def _manifests_so_far(out):
    """How many manifest.json files are under ``out`` while a run writes it: a staging folder may be
    renamed or removed during the walk (FileNotFoundError), and then the walk starts again."""
    while True:
        try:
            return len(list(Path(out).rglob("manifest.json")))
        except FileNotFoundError:
            continue


def _leftovers(out):
    return [str(p) for p in Path(out).rglob("*") if p.name.startswith(".")]


def _same_outputs(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name][0] == b[name][0], name
        assert a[name][1].keys() == b[name][1].keys(), name
        for key in a[name][1]:
            assert a[name][1][key].tobytes() == b[name][1][key].tobytes(), (name, key)


# ----------------------------------------------------------------- what is written


def test_save_raw_writes_no_pictures(tmp_path):
    img = _image(tmp_path / "img.png")
    assert cnn("apply", img, "-o", tmp_path / "out", "--save", "raw").exit_code == 0
    folder = tmp_path / "out" / "img"
    assert sorted(p.name for p in folder.iterdir()) == ["features.npz", "index.html", "input.jpg", "manifest.json"]
    manifest, arrays = _outputs(tmp_path / "out")["img"]
    assert sorted(arrays) == LAYER_KEYS and manifest["saved"] == ["raw"]
    for layer in manifest["layers"]:
        assert layer["grid"] is None and all(m["png"] is None for m in layer["maps"])
        assert layer["npz_key"] == layer["name"]


def test_save_maps_and_grids_write_no_npz(tmp_path):
    img = _image(tmp_path / "img.png")
    assert cnn("apply", img, "-o", tmp_path / "out", "--save", "maps,grids", *SOBEL).exit_code == 0
    folder = tmp_path / "out" / "img"
    assert not (folder / "features.npz").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    [layer] = manifest["layers"]
    assert layer["npz_key"] is None and (folder / layer["grid"]).is_file()
    assert [(folder / m["png"]).is_file() for m in layer["maps"]] == [True, True]


def test_save_grids_only(tmp_path):
    img = _image(tmp_path / "img.png")
    assert cnn("apply", img, "-o", tmp_path / "out", "--save", "grids").exit_code == 0
    pngs = sorted(p.name for p in (tmp_path / "out" / "img").rglob("*.png"))
    assert pngs == [f"{key}_grid.png" for key in LAYER_KEYS]


@pytest.mark.parametrize("layers, expected", [("last", [4]), ("4", [4]), ("0,2", [0, 2]),
                                              ("2,0", [0, 2]), ("layer3", [3]), ("-1", [4])])
def test_layers_keep_their_original_index_and_name(tmp_path, layers, expected):
    img = _image(tmp_path / "img.png")
    assert cnn("apply", img, "-o", tmp_path / "out", "--layers", layers).exit_code == 0
    full = cnn("apply", img, "-o", tmp_path / "full", "--save", "raw")
    assert full.exit_code == 0
    manifest, arrays = _outputs(tmp_path / "out")["img"]
    _, all_arrays = _outputs(tmp_path / "full")["img"]
    assert [layer["index"] for layer in manifest["layers"]] == expected
    assert [layer["name"] for layer in manifest["layers"]] == [f"layer{i}" for i in expected]
    assert sorted(arrays) == [f"layer{i}" for i in expected]
    for key in arrays:
        np.testing.assert_array_equal(arrays[key], all_arrays[key])
    pictures = {p.parts[-2] for p in (tmp_path / "out" / "img").glob("layer*/*.png")}
    assert pictures == {f"layer{i}" for i in expected}


@pytest.mark.parametrize("bad", ["7", "nonsense", "0,9"])
def test_unknown_layers_are_refused(tmp_path, bad):
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", "--layers", bad)
    # A usage error, as a bad --save is, naming the layers there are (issue 28).
    assert result.exit_code == 2 and "--layers" in result.stderr, result.output
    assert "there are layers 0 to 4: 0 (conv)" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "img").exists()


def test_bad_save_list_is_a_usage_error(tmp_path):
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", "--save", "raw,pdf")
    assert result.exit_code == 2 and "--save" in result.stderr, result.output


def test_float16_halves_the_raw_maps(tmp_path):
    img = _image(tmp_path / "img.png", shape=(64, 64))
    assert cnn("apply", img, "-o", tmp_path / "a", "--save", "raw").exit_code == 0
    assert cnn("apply", img, "-o", tmp_path / "b", "--save", "raw", "--dtype", "float16").exit_code == 0
    (m32, a32), (m16, a16) = _outputs(tmp_path / "a")["img"], _outputs(tmp_path / "b")["img"]
    assert m32["dtype"] == "float32" and m16["dtype"] == "float16"
    for key in a32:
        assert a16[key].dtype == np.float16
        np.testing.assert_array_equal(a16[key], a32[key].astype(np.float16))
    size = lambda out: (out / "img" / "features.npz").stat().st_size  # noqa: E731
    assert size(tmp_path / "b") < 0.55 * size(tmp_path / "a")


# ----------------------------------------------------------------- names of output folders


def test_a_folder_is_mirrored(tmp_path):
    paths = _folder(tmp_path / "photos", 4)
    assert cnn("apply", tmp_path / "photos", "-o", tmp_path / "out", *SOBEL).exit_code == 0
    assert sorted(_outputs(tmp_path / "out")) == ["brick/000", "brick/002", "stone/001", "stone/003"]
    manifest, _ = _outputs(tmp_path / "out")["stone/001"]
    assert Path(manifest["input"]).resolve() == paths[1].resolve()


def test_several_folders_each_go_under_their_own_name(tmp_path):
    _folder(tmp_path / "photos", 2)
    result = cnn("apply", tmp_path / "photos" / "brick", tmp_path / "photos" / "stone",
                 "-o", tmp_path / "out", *SOBEL)
    assert result.exit_code == 0, result.output
    assert sorted(_outputs(tmp_path / "out")) == ["brick/000", "stone/001"]


def test_true_clashes_get_a_hash_and_no_two_inputs_share_a_folder(tmp_path):
    root = tmp_path / "photos"
    a = _image(root / "000.png", seed=1)
    b = _image(root / "000.jpg", seed=2)            # same stem in one folder
    c = _image(root / "x.png", seed=3)
    d = _image(root / "x" / "inner.png", seed=4)     # a file beside a folder of its stem
    e = _image(tmp_path / "other" / "000.png", seed=5)  # the same name from another argument
    result = cnn("apply", root, e, "-o", tmp_path / "out", *SOBEL)
    assert result.exit_code == 0, result.output
    outputs = _outputs(tmp_path / "out")
    assert len(outputs) == 5
    inputs = {Path(m["input"]).resolve() for m, _ in outputs.values()}
    assert inputs == {p.resolve() for p in (a, b, c, d, e)}
    assert "photos/x/inner" in outputs  # mirrored, not renamed
    assert "000" in outputs              # the second argument's file keeps its name: no clash at the top


def test_names_are_stable_across_runs(tmp_path):
    _image(tmp_path / "p" / "a.png")
    _image(tmp_path / "p" / "a.jpg")
    for out in ("o1", "o2"):
        assert cnn("apply", tmp_path / "p", "-o", tmp_path / out, *SOBEL).exit_code == 0
    assert sorted(_outputs(tmp_path / "o1")) == sorted(_outputs(tmp_path / "o2"))


# ----------------------------------------------------------------- resume, reruns, locks


def test_skip_existing_keeps_finished_folders(tmp_path):
    _folder(tmp_path / "photos", 4)
    out = tmp_path / "out"
    assert cnn("apply", tmp_path / "photos" / "brick", "-o", out, *SOBEL).exit_code == 0
    before = (out / "000" / "manifest.json").stat().st_mtime_ns
    again = cnn("apply", tmp_path / "photos" / "brick", "-o", out, *SOBEL)
    assert again.exit_code == 1 and "--skip-existing" in again.stderr, again.output
    result = cnn("apply", tmp_path / "photos" / "brick", "-o", out, *SOBEL, "--skip-existing", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["skipped"] == 2 and summary["written"] == 0 and summary["failed"] == []
    assert (out / "000" / "manifest.json").stat().st_mtime_ns == before


def test_force_and_skip_existing_together_is_a_usage_error(tmp_path):
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "--force", "--skip-existing", "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output


def test_a_second_run_into_the_same_output_is_refused(tmp_path):
    from cnn_cli.apply import output_lock

    img = _image(tmp_path / "img.png")
    with output_lock(tmp_path / "out"):
        result = cnn("apply", img, "-o", tmp_path / "out", *SOBEL)
    assert result.exit_code == 1 and "another cnn run" in result.stderr, result.output
    assert not (tmp_path / "out" / "img").exists()
    assert cnn("apply", img, "-o", tmp_path / "out", *SOBEL).exit_code == 0
    assert _leftovers(tmp_path / "out") == []


def test_sigkill_then_skip_existing_finishes_the_run(tmp_path):
    _folder(tmp_path / "photos", 60, shape=(160, 160))
    out, clean = tmp_path / "out", tmp_path / "clean"
    command = [sys.executable, "-m", "cnn_cli", "apply", str(tmp_path / "photos"), "--save", "raw,grids"]
    proc = subprocess.Popen(command + ["-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _manifests_so_far(out) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Folders at final paths: a killed write leaves its hidden staging folder (.NAME.partial),
    # which may already hold a manifest, and which the rerun removes.
    final = [m for m in out.rglob("manifest.json") if not any(p.startswith(".") for p in m.relative_to(out).parts)]
    finished = len(final)
    assert finished < 60, "the run ended before it could be killed; use more images"
    for manifest in final:  # every folder at a final path is complete
        assert (manifest.parent / "features.npz").is_file()
    rerun = subprocess.run(command + ["-o", str(out), "--skip-existing", "--json"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["skipped"] == finished and summary["written"] == 60 - finished
    assert subprocess.run(command + ["-o", str(clean)], capture_output=True, timeout=300).returncode == 0
    _same_outputs(_outputs(out), _outputs(clean))
    assert _leftovers(out) == []


def test_large_output_is_announced_before_writing(tmp_path, monkeypatch):
    import cnn_cli.apply as apply_module

    monkeypatch.setattr(apply_module, "LARGE_IMAGE_BYTES", 10_000)
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "of output" in result.stderr and "--save raw" in result.stderr and "--dtype float16" in result.stderr


# ----------------------------------------------------------------- memory


# Peak RSS of a `cnn apply` child, measured from a fresh parent that has run nothing else.
_PEAK = """
import resource, subprocess, sys
done = subprocess.run([sys.executable, "-m", "cnn_cli", "apply", sys.argv[1], "-o", sys.argv[2],
                       "--save", "raw", "--bank", "edges"])
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def _peak_rss(tmp_path, count):
    root = tmp_path / f"tiny{count}"
    for i in range(count):
        _image(root / f"d{i // 500}" / f"{i:05d}.png", seed=i, shape=(24, 24))
    proc = subprocess.run([sys.executable, "-c", _PEAK, str(root), str(tmp_path / f"out{count}")],
                          capture_output=True, text=True, timeout=600)
    code, peak = proc.stdout.split()
    assert proc.returncode == 0 and code == "0", proc.stderr
    assert len(list((tmp_path / f"out{count}").rglob("manifest.json"))) == count
    return int(peak)


def test_memory_does_not_grow_with_the_number_of_images(tmp_path):
    small, large = _peak_rss(tmp_path, 100), _peak_rss(tmp_path, 2000)
    assert large < small * 1.25, f"peak RSS {small} KiB for 100 images, {large} KiB for 2000"


# ----------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    from cnn_cli.cluster import WORKER_ENV

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, env=WORKER_ENV,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield cluster, client


def test_a_cluster_run_writes_what_a_local_run_writes(tmp_path, dask_cluster):
    cluster, _ = dask_cluster
    _folder(tmp_path / "photos", 20)
    _image(tmp_path / "photos" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    local = cnn("apply", tmp_path / "photos", "-o", tmp_path / "local", "--layers", "0,4")
    remote = cnn("apply", tmp_path / "photos", "-o", tmp_path / "remote", "--layers", "0,4",
                 "--scheduler", cluster.scheduler_address, timeout=300)
    assert local.exit_code == remote.exit_code == 3, remote.output
    assert [line for line in remote.stderr.splitlines() if line.startswith("Error:")] == \
        [line for line in local.stderr.splitlines() if line.startswith("Error:")]
    assert "broken.png" in remote.stderr
    _same_outputs(_outputs(tmp_path / "local"), _outputs(tmp_path / "remote"))
    assert len(_outputs(tmp_path / "remote")) == 20
    assert _leftovers(tmp_path / "remote") == []


def test_workers_set_the_engine_to_one_thread(dask_cluster):
    _, client = dask_cluster

    def threads():
        from cnn_cli import config

        return os.environ.get("NUMBA_NUM_THREADS"), config.THREADS

    assert set(client.run(threads).values()) == {("1", 1)}


def test_a_killed_worker_does_not_stop_the_run(tmp_path, dask_cluster):
    cluster, client = dask_cluster
    _folder(tmp_path / "photos", 48, shape=(256, 256))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cnn_cli", "apply", str(tmp_path / "photos"), "-o", str(out),
                             "--scheduler", cluster.scheduler_address, "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _manifests_so_far(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = next(iter(client.run(os.getpid).values()))
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout)["written"] == 48
    assert len(_outputs(out)) == 48
    assert _leftovers(out) == []
    client.wait_for_workers(2, timeout=60)


def test_without_dask_the_cluster_options_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", "--workers", "2")
    assert result.exit_code == 2 and "pip install 'cnn-cli[dask]'" in result.stderr, result.output


@pytest.mark.parametrize("marker", ["manifest.json", "explain.json", "units.json", "embed.json"])
def test_walks_skip_folders_any_cnn_command_wrote(tmp_path, marker):
    """A folder holding any command's output (its JSON carries cnn_version) is not read as input."""
    from cnn_cli.inputs import find_inputs

    src = tmp_path / "photos"
    (src / "out" / "img").mkdir(parents=True)
    Image.new("L", (8, 8)).save(src / "a.png")
    Image.new("L", (8, 8)).save(src / "out" / "img" / "overlay_cat.png")
    (src / "out" / "img" / marker).write_text('{"cnn_version": "0"}')
    found = [item.path.name for item in find_inputs([str(src)])[0]]
    assert found == ["a.png"]
