"""Issue 28, sections 2, 3 and 5: `cnn embed` and `cnn search` as a user meets them (colour, the
default space, --force, damaged settings, failures in linear time, SIGTERM), and --workers and
--scheduler on one machine (what starts, the cap, the threshold, malformed or silent schedulers)."""

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn

README = Path(__file__).resolve().parents[1] / "README.md"


def _photos(root, per_class=8, names=("astronaut", "brick", "coffee", "grass", "moon")):
    """Crops of scikit-image's photos, one class folder per photo (as bench/retrieval.py makes them)."""
    skimage_data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(0)
    paths = []
    for name in names:
        image = getattr(skimage_data, name)()
        (root / name).mkdir(parents=True, exist_ok=True)
        h, w = image.shape[:2]
        for i in range(per_class):
            y, x = rng.integers(0, h - 64), rng.integers(0, w - 64)
            path = root / name / f"{i:03d}.png"
            Image.fromarray(np.ascontiguousarray(image[y:y + 64, x:x + 64])).save(path)
            paths.append(path)
    return paths


def _gray(path, seed=0, size=32):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos") / "photos"
    _photos(root)
    return root


# ----------------------------------------------------------------- §2: colour, README numbers, the default space


def test_embed_takes_color_as_apply_does(tmp_path, photos):
    gray = cnn("embed", photos, "-o", tmp_path / "gray", "--bank", "color")
    assert gray.exit_code == 1 and "--color rgb" in gray.stderr, gray.output
    rgb = cnn("embed", photos, "-o", tmp_path / "rgb", "--bank", "color", "--color", "rgb")
    assert rgb.exit_code == 0, rgb.output
    info = json.loads((tmp_path / "rgb" / "embed.json").read_text())
    assert info["image"]["color"] == "rgb"
    found = cnn("search", photos / "coffee" / "000.png", "--index", tmp_path / "rgb", "-k", "1", "--json")
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout)[0]["results"][0]["path"] == str(photos / "coffee" / "000.png")


def test_the_readme_numbers_of_embed_are_the_code_s():
    from cnn_cli import cluster, config
    from cnn_cli.embed import Embedder, resolve_layer
    from cnn_cli.embedding import GEM_P, FAILED_COMMIT
    from cnn_cli.sources import load_source

    text = README.read_text()
    source = load_source()
    layer = resolve_layer(source, None)
    dim = Embedder(source, layer, source.default_pool, True).dimension
    floats, nbytes = map(int, re.search(r"writes one row per\s+image instead: (\d+) floats, (\d+) bytes", text).groups())
    assert (floats, nbytes) == (dim, 4 * dim)
    floats, nbytes = map(int, re.search(r"mean-pooled: (\d+) floats per image, (\d+) bytes as float32", text).groups())
    assert (floats, nbytes) == (dim, 4 * dim)
    assert int(re.search(r"It needs (\d+) images or more \(`STANDARDIZE_MIN_ROWS`", text)[1]) == \
        config.STANDARDIZE_MIN_ROWS
    assert float(re.search(r"p = (\d+), Radenović", " ".join(text.split()))[1]) == GEM_P
    assert int(re.search(r"doubling batches \(at least (\d+)\)", text)[1]) == FAILED_COMMIT
    assert int(re.search(r"a run of fewer than (\d+) images \(`LOCAL_CLUSTER_MIN_IMAGES`", text)[1]) == \
        config.LOCAL_CLUSTER_MIN_IMAGES
    assert int(re.search(r"Each task takes (\d+) images", text)[1]) == cluster.CHUNK
    assert int(re.search(r"refused after (\d+) s, exit 1", text)[1]) == cluster.PROBE_SECONDS


def _cosines(folder):
    rows = np.load(folder / "embeddings.npy", allow_pickle=False).astype(np.float64)
    sims = rows @ rows.T
    return sims[np.triu_indices(len(rows), 1)]


def test_the_default_space_separates_photos(tmp_path, photos):
    assert cnn("embed", photos, "-o", tmp_path / "std").exit_code == 0
    assert cnn("embed", photos, "-o", tmp_path / "raw", "--no-standardize").exit_code == 0
    assert _cosines(tmp_path / "raw").mean() > 0.9  # pooled rows point one way
    assert _cosines(tmp_path / "std").mean() < 0.3
    info = json.loads((tmp_path / "std" / "embed.json").read_text())
    assert info["pca"]["standardized"] is True and (tmp_path / "std" / "pca.npz").exists()
    scores = {}
    for name in ("std", "raw"):
        result = cnn("search", "--evaluate", "--index", tmp_path / name, "--json")
        assert result.exit_code == 0, result.output
        scores[name] = json.loads(result.stdout)["precision_at_1"]
    assert scores["std"] >= scores["raw"], scores  # bench/retrieval.py: 0.606 -> 0.756 on 10 classes
    # a query is embedded in the index's own space: an image of the index finds itself with score 1
    hit = json.loads(cnn("search", photos / "moon" / "003.png", "--index", tmp_path / "std", "--json").stdout)
    assert hit[0]["results"][0]["path"] == str(photos / "moon" / "003.png")
    assert hit[0]["results"][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_appending_to_a_standardised_index_keeps_its_space(tmp_path, photos):
    first = tmp_path / "first"
    for cls in ("astronaut", "brick"):
        for p in (photos / cls).glob("*.png"):
            _copy(p, first / cls / p.name)
    assert cnn("embed", first, "-o", tmp_path / "idx").exit_code == 0
    before = (tmp_path / "idx" / "pca.npz").read_bytes()
    result = cnn("embed", photos / "moon", "-o", tmp_path / "idx", "--append")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "idx" / "pca.npz").read_bytes() == before
    assert json.loads((tmp_path / "idx" / "embed.json").read_text())["count"] == 24


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


def test_a_few_images_are_stored_as_pooled(tmp_path):
    paths = [_gray(tmp_path / "few" / f"{i}.png", seed=i) for i in range(3)]
    assert cnn("embed", tmp_path / "few", "-o", tmp_path / "idx").exit_code == 0
    info = json.loads((tmp_path / "idx" / "embed.json").read_text())
    assert info["pca"] is None and not (tmp_path / "idx" / "pca.npz").exists()
    result = cnn("search", paths[1], "--index", tmp_path / "idx", "--json")
    assert json.loads(result.stdout)[0]["results"][0]["path"] == str(paths[1])


def _model_trained_on(folder, path):
    from cnn_cli.data import files_sha256
    from cnn_cli.modelfile import ModelMeta, build_network, save_model
    from tinymodel import META

    files = sorted(folder.rglob("*.png"))
    meta = ModelMeta.from_parts({**META, "training": {"dataset_sha256": files_sha256(folder, files)}})
    save_model(path, build_network(meta, seed=0), meta)
    return path


def test_search_evaluate_says_when_the_index_is_the_model_s_training_folder(tmp_path):
    data = tmp_path / "data"
    for i in range(8):
        _gray(data / ("cat" if i % 2 else "dog") / f"{i}.png", seed=i, size=8)
    model = _model_trained_on(data, tmp_path / "m.npz")
    assert cnn("embed", data, "-o", tmp_path / "own", "--model", model).exit_code == 0
    own = cnn("search", "--evaluate", "--index", tmp_path / "own")
    assert own.exit_code == 0 and "flatter" in own.stderr and "m.npz" in own.stderr, own.output
    other = tmp_path / "other"
    for i in range(6):
        _gray(other / ("cat" if i % 2 else "dog") / f"{i}.png", seed=100 + i, size=8)
    assert cnn("embed", other, "-o", tmp_path / "new", "--model", model).exit_code == 0
    new = cnn("search", "--evaluate", "--index", tmp_path / "new", "--json")
    assert new.exit_code == 0 and "flatter" not in new.stderr, new.output
    assert json.loads(new.stdout)["training_folder"] is False


def test_force_replaces_only_what_embed_wrote(tmp_path, photos):
    out = tmp_path / "idx"
    assert cnn("embed", photos / "grass", "-o", out).exit_code == 0
    (out / "notes.txt").write_text("mine")
    refused = cnn("embed", photos / "moon", "-o", out)
    assert refused.exit_code == 1 and "--force" in refused.stderr, refused.output
    forced = cnn("embed", photos / "moon", "-o", out, "--force")
    assert forced.exit_code == 0 and "other files there are left" in forced.stderr, forced.output
    assert (out / "notes.txt").read_text() == "mine"
    paths = (out / "index.csv").read_text()
    assert "moon" in paths and "grass" not in paths
    both = cnn("embed", photos / "moon", "-o", out, "--force", "--append")
    assert both.exit_code == 2, both.output


# ----------------------------------------------------------------- §5: damaged settings, failures, SIGTERM


@pytest.mark.parametrize("change", [
    lambda info: info["image"].update(color="cmyk"),
    lambda info: info["layer"].update(index=99),
    lambda info: info["layer"].update(index="2"),
    lambda info: info.update(pooling="median"),
    lambda info: info["image"].update(max_size=-4),
    lambda info: info["source"].update(spec={"banks": ["edges"], "evil": 1}),
])
def test_search_refuses_impossible_settings_in_one_line(tmp_path, photos, change):
    out = tmp_path / "idx"
    assert cnn("embed", photos / "grass", "-o", out).exit_code == 0
    info = json.loads((out / "embed.json").read_text())
    change(info)
    (out / "embed.json").write_text(json.dumps(info))
    result = cnn("search", photos / "grass" / "000.png", "--index", out)
    assert result.exit_code == 1, result.output
    assert result.stderr.count("\n") == 1 and "embed.json is damaged" in result.stderr, result.output


def test_failures_reach_the_progress_record_in_linear_time(tmp_path, monkeypatch):
    from cnn_cli import embedding

    written = []
    real = embedding._write_json
    monkeypatch.setattr(embedding, "_write_json", lambda path, obj: (written.append(len(obj.get("failed", []))),
                                                                     real(path, obj)))
    n = 4000
    writer = embedding.EmbeddingWriter(tmp_path / "idx", 4)
    for i in range(n):
        writer.add_failed(f"/x/{i}.png", "cannot read")
    assert sum(written) < 4 * n, written  # each commit rewrites the list: doubling keeps the total linear
    writer.abandon()  # a stop records the failures not yet committed
    progress = json.loads((tmp_path / "idx" / embedding.PROGRESS).read_text())
    assert len(progress["failed"]) == n
    resumed = embedding.EmbeddingWriter(tmp_path / "idx", 4, resume=True)
    assert len(resumed.done) == n
    resumed.close()


def test_embed_over_thousands_of_unreadable_files_takes_linear_time(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(2000):
        (bad / f"{i:04d}.png").write_bytes(b"not a png")
    start = time.perf_counter()
    result = cnn("embed", bad, "-o", tmp_path / "idx", timeout=120)
    assert result.exit_code == 1, result.output[-500:]
    assert len(json.loads((tmp_path / "idx" / "embed.json").read_text())["failed"]) == 2000
    assert result.stderr.count("Error:") == 2000
    assert time.perf_counter() - start < 60  # 10.6 s before on a quiet machine; generous for a shared one


def test_sigterm_during_embed_says_how_to_continue(tmp_path):
    for i in range(300):
        _gray(tmp_path / "photos" / f"{i:03d}.png", seed=i, size=128)
    out = tmp_path / "idx"
    proc = subprocess.Popen([sys.executable, "-m", "cnn_cli", "embed", str(tmp_path / "photos"), "-o", str(out),
                             "--no-standardize"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        progress = out / "embed.progress.json"
        if progress.exists() and json.loads(progress.read_text() or "{}").get("rows", 0) >= 64:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted by SIGTERM" in stderr and "continue with the same command and --resume" in stderr, stderr
    assert "Traceback" not in stderr
    resumed = subprocess.run([sys.executable, "-m", "cnn_cli", "embed", str(tmp_path / "photos"), "-o", str(out),
                              "--no-standardize", "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "embed.json").read_text())["count"] == 300


# ----------------------------------------------------------------- §3 and §5: --workers and --scheduler


@pytest.mark.parametrize("command", ["apply", "embed"])
@pytest.mark.parametrize("address", ["not a url", "tcp://", "inproc://x", "tls://10.0.0.1:8786", "ucx://h:1",
                                     "tcp://host:99999"])
def test_a_malformed_scheduler_is_a_usage_error(tmp_path, command, address):
    img = _gray(tmp_path / "a.png")
    result = cnn(command, img, "-o", tmp_path / "out", "--scheduler", address)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: --scheduler") and result.stderr.count("\n") == 1, result.output


class _Silent(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.mark.parametrize("command", ["apply", "embed"])
def test_a_scheduler_address_that_is_not_dask_times_out_in_one_line(tmp_path, monkeypatch, command):
    pytest.importorskip("distributed")
    from cnn_cli import cluster

    monkeypatch.setattr(cluster, "PROBE_SECONDS", 1.0)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Silent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        img = _gray(tmp_path / "a.png")
        start = time.perf_counter()
        result = cnn(command, img, "-o", tmp_path / "out", "--scheduler",
                     f"tcp://127.0.0.1:{server.server_port}", timeout=60)
        assert time.perf_counter() - start < 30
    finally:
        server.shutdown()
    assert result.exit_code == 1, result.output
    assert "cannot reach the scheduler" in result.stderr and result.stderr.count("\n") == 1, result.output


def test_workers_are_capped_and_a_small_run_stays_in_one_process(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    from cnn_cli import cluster

    monkeypatch.delenv("CNN_LOCAL_CLUSTER_MIN_IMAGES", raising=False)
    monkeypatch.setattr(cluster, "Cluster", lambda **kw: pytest.fail("no cluster may start for 2 images"))
    for i in range(2):
        _gray(tmp_path / "photos" / f"{i}.png", seed=i)
    result = cnn("apply", tmp_path / "photos", "-o", tmp_path / "out", "--workers", "1000", "--save", "raw")
    assert result.exit_code == 0, result.output
    assert f"capped at {os.cpu_count()} worker(s)" in result.stderr, result.output
    assert "too few to repay a local Dask cluster" in result.stderr, result.output
    assert len(list((tmp_path / "out").glob("*/features.npz"))) == 2


def test_a_bad_threshold_in_the_environment_is_a_usage_error(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setenv("CNN_LOCAL_CLUSTER_MIN_IMAGES", "lots")
    result = cnn("embed", _gray(tmp_path / "a.png"), "-o", tmp_path / "out", "--workers", "2")
    assert result.exit_code == 2 and "CNN_LOCAL_CLUSTER_MIN_IMAGES" in result.stderr, result.output


def test_a_forced_local_cluster_says_what_starts_and_counts_its_start_up(tmp_path, monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setenv("CNN_LOCAL_CLUSTER_MIN_IMAGES", "0")
    for i in range(3):
        _gray(tmp_path / "photos" / f"{i}.png", seed=i)
    start = time.perf_counter()
    result = cnn("embed", tmp_path / "photos", "-o", tmp_path / "out", "--workers", "1", "--json", timeout=300)
    wall = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    assert "starting a local Dask cluster: 1 worker(s)" in result.stderr, result.output
    seconds = json.loads(result.stdout)["seconds"]
    assert seconds <= wall and seconds > 0.5 * wall, (seconds, wall)  # start-up is inside the run's time


def test_keypoints_and_match_take_color(tmp_path, photos):
    a, b = photos / "coffee" / "000.png", photos / "coffee" / "001.png"
    result = cnn("keypoints", a, "-o", tmp_path / "kp", "--color", "rgb", "--json")
    assert result.exit_code == 0, result.output
    gray = cnn("keypoints", a, "-o", tmp_path / "kpg", "--json")
    assert json.loads(result.stdout)[0]["count"] > 0 and gray.exit_code == 0
    assert cnn("match", a, b, "-o", tmp_path / "m", "--color", "rgb").exit_code == 0
    assert cnn("keypoints", a, "-o", tmp_path / "kx", "--color", "cmyk").exit_code == 2
