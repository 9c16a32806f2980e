"""`cnn embed` and `cnn search` through the command line: the folder contract, rows against
a NumPy reference, PCA, append and resume, retrieval quality, and Dask."""

import csv
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


def _image(path, seed=0, shape=(48, 64)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    data[shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2] = 255
    Image.fromarray(data, mode="L").save(path)
    return path


def _folder(root, count, shape=(48, 64)):
    return [_image(Path(root) / ("a" if i % 2 else "b") / f"{i:03d}.png", seed=i, shape=shape)
            for i in range(count)]


def _read(out):
    out = Path(out)
    rows = np.load(out / "embeddings.npy", allow_pickle=False)
    with open(out / "index.csv", newline="") as fh:
        index = list(csv.reader(fh))
    return rows, index, json.loads((out / "embed.json").read_text())


def _reference(paths, pool):
    """Rows by hand: the default pipeline's last layer, pooled, L2-normalised."""
    from cnn_cli.imageio import read_image
    from cnn_cli.sources import load_source

    pipe = load_source().pipeline
    rows = []
    for p in paths:
        maps = pipe.forward(read_image(p)[None])[-1][0].astype(np.float64)
        flat = maps.reshape(len(maps), -1)
        row = {"gap": flat.mean(1), "gmp": flat.max(1),
               "gem": np.mean(np.maximum(flat, 1e-6) ** 3, 1) ** (1 / 3),
               "stats": np.concatenate([flat.mean(1), flat.std(1)])}[pool]
        rows.append(row / np.linalg.norm(row))
    return np.array(rows)


# ----------------------------------------------------------------- the folder


@pytest.mark.parametrize("pool", ["gap", "gmp", "gem", "stats"])
def test_embed_writes_the_contract_and_rows_match_numpy(tmp_path, pool):
    paths = _folder(tmp_path / "photos", 5)
    out = tmp_path / "index"
    result = cnn("embed", tmp_path / "photos", "-o", out, "--pool", pool)
    assert result.exit_code == 0, result.output
    rows, index, info = _read(out)
    assert index[0] == ["row", "path"]
    listed = [Path(p) for _, p in index[1:]]
    assert [int(r) for r, _ in index[1:]] == list(range(5))
    assert all(p.is_absolute() for p in listed)
    assert sorted(p.resolve() for p in listed) == sorted(p.resolve() for p in paths)
    assert rows.dtype == np.float32 and rows.shape == (5, info["dimension"])
    assert np.load(out / "embeddings.npy", mmap_mode="r").shape == rows.shape
    np.testing.assert_allclose(rows, _reference(listed, pool), rtol=1e-4, atol=1e-5)
    assert info["pooling"] == pool and info["normalization"] == "l2" and info["count"] == 5
    assert info["layer"]["index"] == 4 and info["dtype"] == "float32" and info["failed"] == []
    [record] = info["source"]["files"]
    import hashlib

    assert record["sha256"] == hashlib.sha256(Path(record["path"]).read_bytes()).hexdigest()
    assert "cnn_version" in info


def test_no_normalize_float16_and_a_layer(tmp_path):
    _folder(tmp_path / "photos", 3)
    out = tmp_path / "index"
    result = cnn("embed", tmp_path / "photos", "-o", out, "--no-normalize", "--dtype", "float16", "--layer", "1")
    assert result.exit_code == 0, result.output
    rows, _, info = _read(out)
    assert rows.dtype == np.float16 and info["layer"]["index"] == 1 and info["normalization"] == "none"
    assert not np.allclose(np.linalg.norm(rows.astype(np.float32), axis=1), 1.0)


def test_bad_image_is_named_and_the_rest_are_embedded(tmp_path):
    _folder(tmp_path / "photos", 3)
    bad = tmp_path / "photos" / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    result = cnn("embed", tmp_path / "photos", "-o", tmp_path / "index")
    assert result.exit_code == 3, result.output
    assert "broken.png" in result.stderr
    rows, index, info = _read(tmp_path / "index")
    assert len(rows) == 3 and len(index) == 4
    assert [Path(f["path"]).name for f in info["failed"]] == ["broken.png"]


def test_an_existing_index_is_not_overwritten(tmp_path):
    _folder(tmp_path / "photos", 2)
    assert cnn("embed", tmp_path / "photos", "-o", tmp_path / "index").exit_code == 0
    before = (tmp_path / "index" / "embeddings.npy").read_bytes()
    again = cnn("embed", tmp_path / "photos", "-o", tmp_path / "index")
    assert again.exit_code == 1 and "--append" in again.stderr, again.output
    assert (tmp_path / "index" / "embeddings.npy").read_bytes() == before


# ----------------------------------------------------------------- append, resume, PCA


def test_append_adds_new_images_and_refuses_other_settings(tmp_path):
    paths = _folder(tmp_path / "photos", 6)
    first, later = tmp_path / "first", tmp_path / "later"
    first.mkdir()
    later.mkdir()
    for p in paths[:4]:
        (first / p.name).write_bytes(p.read_bytes())
    for p in paths[4:]:
        (later / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "index"
    assert cnn("embed", first, "-o", out).exit_code == 0
    refused = cnn("embed", later, "-o", out, "--append", "--pool", "gmp")
    assert refused.exit_code == 1 and "pooling" in refused.stderr, refused.output
    assert _read(out)[2]["count"] == 4
    result = cnn("embed", first, later, "-o", out, "--append", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["embedded"] == 2 and summary["skipped"] == 4
    rows, index, _ = _read(out)
    assert len(rows) == 6 and len(index) == 7


def test_sigkill_then_resume_gives_the_uninterrupted_embeddings(tmp_path):
    _folder(tmp_path / "photos", 120, shape=(96, 96))
    # one pass (the default standardising writes a first pass into .first-pass/, as --pca does)
    command = [sys.executable, "-m", "cnn_cli", "embed", str(tmp_path / "photos"), "--no-standardize"]
    clean = subprocess.run(command + ["-o", str(tmp_path / "clean")], capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    out = tmp_path / "index"
    proc = subprocess.Popen(command + ["-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    progress = out / "embed.progress.json"
    while proc.poll() is None and time.monotonic() < deadline:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("rows", 0) >= 64:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "embed.json").exists(), "the run finished before it could be killed; use more images"
    assert not (out / "embeddings.npy").exists(), "no final file may claim rows before the run ends"
    resumed = subprocess.run(command + ["-o", str(out), "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    (rows, index, info), (rows0, index0, info0) = _read(out), _read(tmp_path / "clean")
    order = {path: i for i, (_, path) in enumerate(index0[1:])}
    assert sorted(order) == sorted(path for _, path in index[1:])
    np.testing.assert_array_equal(rows, rows0[[order[p] for _, p in index[1:]]])
    assert info["count"] == info0["count"] == 120


def test_pca_whitens_and_a_query_set_lands_in_the_same_space(tmp_path):
    _folder(tmp_path / "photos", 12)
    queries = _folder(tmp_path / "queries", 2)
    out, qout = tmp_path / "index", tmp_path / "qindex"
    result = cnn("embed", tmp_path / "photos", "-o", out, "--pool", "stats", "--pca", "4")
    assert result.exit_code == 0, result.output
    rows, _, info = _read(out)
    assert rows.shape == (12, 4) and info["pca"]["dimension"] == 4 and (out / "pca.npz").is_file()
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert not (out / ".first-pass").exists()
    result = cnn("embed", tmp_path / "queries", "-o", qout, "--pool", "stats", "--pca-from", out / "pca.npz")
    assert result.exit_code == 0, result.output
    qrows, qindex, _ = _read(qout)
    found = cnn("search", *queries, "--index", out, "-k", "12", "--json")
    assert found.exit_code == 0, found.output
    by_query = {Path(entry["query"]).resolve(): entry for entry in json.loads(found.stdout)}
    for (_, path), row in zip(qindex[1:], qrows):
        hits = by_query[Path(path).resolve()]["results"]
        scores = [h["score"] for h in hits]
        np.testing.assert_allclose(sorted(scores, reverse=True), np.sort(rows @ row)[::-1], atol=1e-5)


# ----------------------------------------------------------------- search


def test_search_finds_itself_first_and_matches_brute_force(tmp_path):
    paths = _folder(tmp_path / "photos", 8)
    out = tmp_path / "index"
    assert cnn("embed", tmp_path / "photos", "-o", out).exit_code == 0
    rows, index, _ = _read(out)
    result = cnn("search", paths[3], paths[6], "--index", out, "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    answers = json.loads(result.stdout)
    assert [Path(a["query"]).resolve() for a in answers] == [paths[3].resolve(), paths[6].resolve()]
    listed = [Path(p).resolve() for _, p in index[1:]]
    for answer, query in zip(answers, (paths[3], paths[6])):
        best = answer["results"][0]
        assert Path(best["path"]).resolve() == query.resolve() and best["score"] == pytest.approx(1, abs=1e-5)
        row = rows[listed.index(query.resolve())]
        expected = np.sort(rows @ row)[::-1][:3]
        np.testing.assert_allclose([h["score"] for h in answer["results"]], expected, atol=1e-5)
    text = cnn("search", paths[3], "--index", out, "-k", "2")
    assert text.exit_code == 0 and str(paths[3].name) in text.stdout


def test_search_usage_errors(tmp_path):
    assert cnn("search", "--index", tmp_path).exit_code == 2
    missing = cnn("search", "--evaluate", "--index", tmp_path / "nothing")
    assert missing.exit_code == 1 and "Error:" in missing.stderr


def _texture_crops(root, per_class=12, side=96):
    """Crops of three texture photos shipped with scikit-image: brick, grass, gravel."""
    data = pytest.importorskip("skimage.data")
    rng = np.random.default_rng(0)
    for name in ("brick", "grass", "gravel"):
        photo = getattr(data, name)()
        for i in range(per_class):
            y, x = rng.integers(0, photo.shape[0] - side, 2)
            crop = photo[y:y + side, x:x + side]
            path = Path(root) / name / f"{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(path)


@pytest.mark.parametrize("pool", ["gap", "stats"])
def test_retrieval_on_texture_crops_is_far_above_chance(tmp_path, pool):
    _texture_crops(tmp_path / "textures")
    out = tmp_path / "index"
    assert cnn("embed", tmp_path / "textures", "-o", out, "--pool", pool).exit_code == 0
    result = cnn("search", "--evaluate", "--index", out, "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["queries"] == 36 and scores["classes"] == 3
    assert scores["precision_at_1"] >= 0.8, scores  # chance is 1/3


# ----------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    from cnn_cli.cluster import WORKER_ENV

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, env=WORKER_ENV,
                                  dashboard_address=None) as cluster:
        yield cluster


def test_a_cluster_embeds_what_a_local_run_embeds(tmp_path, dask_cluster):
    _folder(tmp_path / "photos", 20)
    assert cnn("embed", tmp_path / "photos", "-o", tmp_path / "local").exit_code == 0
    remote = cnn("embed", tmp_path / "photos", "-o", tmp_path / "remote", "--scheduler",
                 dask_cluster.scheduler_address, timeout=300)
    assert remote.exit_code == 0, remote.output
    (rows, index, info), (rows0, index0, info0) = _read(tmp_path / "remote"), _read(tmp_path / "local")
    order = {path: i for i, (_, path) in enumerate(index0[1:])}
    assert rows.tobytes() == rows0[[order[p] for _, p in index[1:]]].tobytes()
    assert {k: v for k, v in info.items()} == info0


def test_model_embeds_the_classifier_input(tmp_path):
    from tinymodel import save_tiny_model

    model = save_tiny_model(tmp_path / "tiny.npz")
    paths = _folder(tmp_path / "photos", 3, shape=(8, 8))
    out = tmp_path / "index"
    result = cnn("embed", tmp_path / "photos", "-o", out, "--model", model)
    assert result.exit_code == 0, result.output
    rows, index, info = _read(out)
    assert info["layer"]["kind"] == "flatten" and info["pooling"] == "none"
    assert rows.shape == (3, 2 * 4 * 4)
    from cnn_cli.imageio import read_image
    from cnn_cli.modelfile import image_transform, load_model

    network, meta, _ = load_model(model)
    prepare = image_transform(meta)
    listed = [Path(p) for _, p in index[1:]]
    x = np.stack([prepare(read_image(p)) for p in listed])
    for layer in network.layers[:4]:
        x = layer.forward(x)
    expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(rows, expected, rtol=1e-4, atol=1e-6)
    assert sorted(p.resolve() for p in listed) == sorted(p.resolve() for p in paths)
    os.remove(model)
    gone = cnn("search", paths[0], "--index", out)
    assert gone.exit_code == 1 and "Error:" in gone.stderr
