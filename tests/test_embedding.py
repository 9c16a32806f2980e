"""The NumPy core of `cnn embed` / `cnn search`: pooling, PCA, the output folder, search and scores.

Each piece is checked against something obviously right: plain loops over
channels, scikit-learn's PCA, a brute-force sort of every score, and, for the
output folder, an uninterrupted run that a killed (SIGKILL) and resumed run
must reproduce byte for byte.
"""

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cnn_cli.retrieval as retrieval
from cnn_cli import __version__
from cnn_cli.embedding import POOLINGS, EmbeddingWriter, l2_normalize, pool_maps, read_embedding_folder
from cnn_cli.retrieval import Pca, evaluate_retrieval, fit_pca, search

# -- pooling -------------------------------------------------------------------


def naive_pool(maps, method):
    """One channel at a time, in float64, straight from the definitions."""
    n, c = maps.shape[:2]
    out = []
    for i in range(n):
        row, stds = [], []
        for j in range(c):
            x = [float(v) for v in maps[i, j].ravel()]
            mean = sum(x) / len(x)
            if method == "gap":
                row.append(mean)
            elif method == "gmp":
                row.append(max(x))
            elif method == "gem":
                row.append((sum(max(v, 1e-6) ** 3 for v in x) / len(x)) ** (1 / 3))
            else:
                row.append(mean)
                stds.append((sum((v - mean) ** 2 for v in x) / len(x)) ** 0.5)
        out.append(row + stds)
    return np.array(out)


@pytest.mark.parametrize("method", POOLINGS)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 1, 1, 1), (3, 4, 1, 9), (1, 2, 8, 8)])
def test_pooling_matches_a_loop(method, shape):
    maps = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32) * 3 + 0.5
    got = pool_maps(maps, method)
    assert got.dtype == np.float32
    assert got.shape == (shape[0], shape[1] * (2 if method == "stats" else 1))
    np.testing.assert_allclose(got, naive_pool(maps, method), rtol=1e-5, atol=1e-6)


def test_gem_formula_and_order():
    # A constant map pools to itself; negatives count as eps; gap <= gem <= gmp on positive maps.
    assert pool_maps(np.full((1, 1, 3, 3), 2.5, np.float32), "gem")[0, 0] == pytest.approx(2.5, rel=1e-6)
    x = np.array([[[[-5.0, 0.0], [1.0, 2.0]]]], np.float32)
    assert pool_maps(x, "gem")[0, 0] == pytest.approx(((2e-18 + 1 + 8) / 4) ** (1 / 3), rel=1e-6)
    pos = np.abs(np.random.default_rng(1).normal(size=(4, 6, 5, 5))).astype(np.float32)
    gap, gem, gmp = (pool_maps(pos, m) for m in ("gap", "gem", "gmp"))
    assert np.all(gap <= gem + 1e-6) and np.all(gem <= gmp + 1e-6)


def test_stats_of_a_large_offset_keeps_the_small_spread():
    # float64 two-pass: a std of 1e-3 on a mean of 1e4 survives (a float32 E[x^2]-E[x]^2 would not).
    x = (1e4 + 1e-3 * np.random.default_rng(2).choice([-1.0, 1.0], size=(1, 1, 16, 16))).astype(np.float32)
    mean, std = pool_maps(x, "stats")[0]
    assert std == pytest.approx(np.float64(x).std(), rel=1e-3)


def test_vectors_pass_through_and_bad_calls_are_explained():
    v = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(pool_maps(v, "gem"), v)
    with pytest.raises(ValueError, match="pooling must be one of"):
        pool_maps(np.zeros((1, 1, 2, 2)), "mean")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        pool_maps(np.zeros((1, 2, 2)), "gap")
    with pytest.raises(ValueError, match="at least one pixel"):
        pool_maps(np.zeros((1, 2, 0, 3)), "gap")


def test_l2_normalize():
    rows = np.array([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]])
    np.testing.assert_allclose(l2_normalize(rows), [[0.6, 0.8], [0, 0], [1, 0]], rtol=1e-6)


# -- PCA -------------------------------------------------------------------------


def _correlated(n, d, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)).astype(np.float32)


@pytest.mark.parametrize("n, d, dim", [(300, 12, 5), (300, 12, 12), (9, 20, 6), (40, 3, 1)])
def test_pca_whitening_matches_sklearn(n, d, dim, tmp_path, monkeypatch):
    sk = pytest.importorskip("sklearn.decomposition")
    x = _correlated(n, d)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(retrieval, "PCA_CHUNK_BYTES", 8 * d * 7)  # 7 rows per chunk: many chunks
    pca = fit_pca(np.load(tmp_path / "x.npy", mmap_mode="r"), dim)
    ref = sk.PCA(n_components=dim, whiten=True).fit(np.float64(x))
    np.testing.assert_allclose(pca.mean, ref.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pca.explained_variance, ref.explained_variance_, rtol=1e-6)
    signs = np.sign(np.sum(pca.components * ref.components_, axis=1))
    np.testing.assert_allclose(pca.components * signs[:, None], ref.components_, atol=1e-6)
    np.testing.assert_allclose(pca.transform(x) * signs, ref.transform(np.float64(x)), rtol=1e-4, atol=1e-4)
    whitened = pca.transform(x)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(dim), atol=1e-4)


def test_pca_refuses_what_it_cannot_whiten():
    with pytest.raises(ValueError, match=r"min\(N, D\) = min\(5, 8\)"):
        fit_pca(_correlated(5, 8), 6)
    with pytest.raises(ValueError, match="between 1"):
        fit_pca(_correlated(5, 8), 0)
    # 5 centred rows span 4 directions; the 5th component is rounding noise.
    with pytest.raises(ValueError, match="span only 4"):
        fit_pca(_correlated(5, 8), 5)
    with pytest.raises(ValueError, match="span only 0"):
        fit_pca(np.ones((6, 3)), 1)


def test_pca_saves_and_loads(tmp_path):
    pca = fit_pca(_correlated(50, 6), 4)
    pca.save(tmp_path / "pca.npz")
    back = Pca.load(tmp_path / "pca.npz")
    x = _correlated(5, 6, seed=3)
    np.testing.assert_array_equal(back.transform(x), pca.transform(x))
    with np.load(tmp_path / "pca.npz", allow_pickle=False) as npz:
        assert set(npz.files) == {"mean", "components", "explained_variance", "eps"}
    np.savez(tmp_path / "bad.npz", mean=np.zeros(3), components=np.zeros((2, 4)),
             explained_variance=np.ones(2), eps=np.float64(0))
    with pytest.raises(ValueError, match="bad.npz: not a PCA"):
        Pca.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="width 6"):
        pca.transform(np.zeros((2, 5)))


# -- search ----------------------------------------------------------------------


def brute_search(queries, index, k):
    """Every score, then a stable sort: higher score first, lower row among equals."""
    q = np.float64(queries) / np.linalg.norm(np.float64(queries), axis=1, keepdims=True)
    scores = q @ np.float64(index).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 6), q=st.integers(1, 5), k=st.integers(1, 45),
       chunk=st.integers(1, 50), half=st.booleans(), seed=st.integers(0, 2**16))
def test_search_matches_brute_force(n, d, q, k, chunk, half, seed):
    rng = np.random.default_rng(seed)
    index = l2_normalize(rng.normal(size=(n, d))).astype(np.float16 if half else np.float32)
    queries = rng.normal(size=(q, d)) + 0.1
    scores, rows = search(queries, index, k, chunk_rows=chunk)
    ref_scores, ref_rows = brute_search(queries, index, min(k, n))
    assert scores.shape == rows.shape == (q, min(k, n))  # k > N is clipped to N
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    # Rows agree wherever the scores are not a near-tie that float32 may order either way.
    gaps = np.diff(np.sort(np.float64(queries / np.linalg.norm(queries, axis=1, keepdims=True))
                           @ np.float64(index).T, axis=1), axis=1)
    near_tie = (gaps < 1e-5).any(axis=1) if n > 1 else np.zeros(q, bool)
    np.testing.assert_array_equal(rows[~near_tie], ref_rows[~near_tie])


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 100])
def test_search_breaks_ties_by_lower_row(chunk):
    # One-hot rows give exact scores: rows 1, 3, 4, 6 tie at 1 for the query e0, the rest at 0.
    index = np.zeros((8, 3), np.float32)
    index[[1, 3, 4, 6], 0] = 1
    index[[0, 2, 5, 7], 1] = 1
    scores, rows = search(np.array([[2.0, 0, 0]]), index, 6, chunk_rows=chunk)
    assert rows.tolist() == [[1, 3, 4, 6, 0, 2]]
    assert scores.tolist() == [[1, 1, 1, 1, 0, 0]]


def test_search_finds_a_query_from_the_index_first_and_checks_its_arguments():
    index = l2_normalize(np.random.default_rng(5).normal(size=(30, 8)))
    scores, rows = search(index[[4, 17]] * 3, index, 3, chunk_rows=8)
    assert rows[:, 0].tolist() == [4, 17]
    np.testing.assert_allclose(scores[:, 0], 1, atol=1e-6)
    assert search(index[:2], index[:0], 5)[1].shape == (2, 0)
    for k in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="k must be"):
            search(index[:1], index, k)
    with pytest.raises(ValueError, match="same D"):
        search(index[:1, :4], index, 1)


# -- retrieval scores -----------------------------------------------------------


def brute_scores(rows, labels, k):
    """Leave-one-out by definition, one query at a time."""
    n = len(rows)
    sims = np.float64(rows) @ np.float64(rows).T
    p1, pk, aps = [], [], []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        if not any(labels[j] == labels[i] for j in others):
            continue
        ranked = sorted(others, key=lambda j: (-sims[i, j], j))
        rel = [labels[j] == labels[i] for j in ranked]
        p1.append(rel[0])
        pk.append(sum(rel[:k]) / k)
        hits, precisions = 0, []
        for rank, r in enumerate(rel, 1):
            if r:
                hits += 1
                precisions.append(hits / rank)
        aps.append(np.mean(precisions))
    return np.mean(p1), np.mean(pk), np.mean(aps), len(p1)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 30), classes=st.integers(1, 6), k=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_retrieval_scores_match_brute_force(n, classes, k, seed):
    rng = np.random.default_rng(seed)
    labels = [f"class{c}" for c in rng.integers(0, classes, n)]
    if len(set(labels)) == n:
        labels[0] = labels[1]
    rows = l2_normalize(rng.normal(size=(n, 4)))
    got = evaluate_retrieval(rows, labels, k, chunk_rows=3)
    k = min(k, n - 1)
    p1, pk, mean_ap, queries = brute_scores(rows, labels, k)
    assert got["queries"] == queries and got["k"] == k
    assert got["precision_at_1"] == pytest.approx(p1)
    assert got["precision_at_k"] == pytest.approx(pk)
    assert got["mean_average_precision"] == pytest.approx(mean_ap)


def test_retrieval_scores_in_small_query_blocks(monkeypatch):
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 3, 25)
    rows = l2_normalize(rng.normal(size=(25, 5)) + 3 * np.eye(5)[labels])
    whole = evaluate_retrieval(rows, labels, 4)
    monkeypatch.setattr(retrieval, "EVAL_MAX_SCORES", 60)  # 2 queries per block
    assert evaluate_retrieval(rows.astype(np.float16), labels, 4) == pytest.approx(whole, abs=1e-3)
    assert whole["precision_at_1"] > 0.8  # classes set apart by their offsets are found
    with pytest.raises(ValueError, match="no label has two"):
        evaluate_retrieval(rows[:3], [0, 1, 2], 1)


# -- the output folder ------------------------------------------------------------

SETTINGS = {"source": {"pipeline": "default", "sha256": "ab" * 32}, "layer": "conv2", "pooling": "gem"}
DIM = 5
PATHS = [f"/data/img,{i}.png" if i % 5 == 0 else f"/data/img{i}.png" for i in range(60)]


def _number(path):
    return int("".join(ch for ch in path if ch.isdigit()))


def _fails(path):
    return _number(path) % 7 == 3


def _row(path):
    seed = _number(path)
    return l2_normalize(np.random.default_rng(seed).normal(size=(1, DIM)))[0]


def embed_all(folder, paths=PATHS, *, resume=False, append=False, batch=4, dtype="float32", report=None):
    """What `cnn embed` does with the writer: skip what is done, batches of rows, every 7th input fails."""
    with EmbeddingWriter(folder, DIM, dtype, SETTINGS, resume=resume, append=append) as writer:
        todo = [p for p in paths if p not in writer.done]
        for start in range(0, len(todo), batch):
            good = []
            for p in todo[start:start + batch]:
                if _fails(p):
                    writer.add_failed(p, f"cannot read {p}")
                else:
                    good.append(p)
            writer.add(good, np.array([_row(p) for p in good]).reshape(-1, DIM))
            if report:
                report(writer.count)
    return writer


def _files(folder):
    return {name: (Path(folder) / name).read_bytes() for name in ("embeddings.npy", "index.csv", "embed.json")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ref") / "out"
    embed_all(folder)
    return _files(folder)


def test_a_closed_folder_holds_the_contract(tmp_path, reference):
    folder = tmp_path / "out"
    embed_all(folder)
    assert sorted(os.listdir(folder)) == ["embed.json", "embeddings.npy", "index.csv"]
    good = [p for p in PATHS if not _fails(p)]
    emb = np.load(folder / "embeddings.npy", allow_pickle=False)
    np.testing.assert_array_equal(emb, [_row(p) for p in good])
    assert np.load(folder / "embeddings.npy", mmap_mode="r").shape == (len(good), DIM)
    lines = (folder / "index.csv").read_text().splitlines()
    assert lines[0] == "row,path" and lines[1] == '0,"/data/img,0.png"' and lines[2] == "1,/data/img1.png"
    info = json.loads((folder / "embed.json").read_text())
    assert info == {**SETTINGS, "dimension": DIM, "dtype": "float32", "count": len(good),
                    "failed": [{"path": p, "error": f"cannot read {p}"} for p in PATHS if p not in good],
                    "cnn_version": __version__}
    opened = read_embedding_folder(folder)
    assert opened.paths == good and opened.info == info
    assert _files(folder) == reference  # the same run gives the same bytes


def test_float16_halves_the_file_and_refuses_rows_it_cannot_hold(tmp_path):
    embed_all(tmp_path / "half", dtype="float16")
    emb = np.load(tmp_path / "half" / "embeddings.npy", allow_pickle=False)
    assert emb.dtype == np.float16
    with EmbeddingWriter(tmp_path / "big", 2, "float16") as writer:
        with pytest.raises(ValueError, match="a.png is not finite as float16.*65504"):
            writer.add(["ok.png", "a.png"], [[1.0, 0.0], [1e6, 0.0]])
        with pytest.raises(ValueError, match=r"rows must be \(1, 2\)"):
            writer.add(["x.png"], [[1.0, 0.0, 0.0]])
        writer.add(["b.png"], [[0.5, 0.5]])
    assert read_embedding_folder(tmp_path / "big").paths == ["b.png"]


def test_the_writer_refuses_folders_and_settings_it_should_not_touch(tmp_path):
    embed_all(tmp_path / "out", PATHS[:10])
    with pytest.raises(FileExistsError, match="already holds embeddings"):
        EmbeddingWriter(tmp_path / "out", DIM, "float32", SETTINGS)
    changed = {**SETTINGS, "pooling": "gap"}
    with pytest.raises(ValueError, match="pooling = 'gem', but this run has pooling = 'gap'"):
        EmbeddingWriter(tmp_path / "out", DIM, "float32", changed, append=True)
    with pytest.raises(ValueError, match="dtype = 'float32', but this run has dtype = 'float16'"):
        EmbeddingWriter(tmp_path / "out", DIM, "float16", SETTINGS, append=True)
    with pytest.raises(ValueError, match="dimension = 5, but this run has dimension = 4"):
        EmbeddingWriter(tmp_path / "out", 4, "float32", SETTINGS, append=True)
    with pytest.raises(ValueError, match="may not use the keys"):
        EmbeddingWriter(tmp_path / "new", DIM, "float32", {"count": 3})
    with pytest.raises(ValueError, match="dtype must be one of"):
        EmbeddingWriter(tmp_path / "new", DIM, "float64", SETTINGS)
    assert sorted(os.listdir(tmp_path / "out")) == ["embed.json", "embeddings.npy", "index.csv"]


def test_append_adds_rows_as_one_run_would(tmp_path, reference):
    embed_all(tmp_path / "out", PATHS[:23])
    writer = embed_all(tmp_path / "out", PATHS, append=True)
    assert _files(tmp_path / "out") == reference
    assert writer.count == len(read_embedding_folder(tmp_path / "out").paths)


def test_stopping_without_close_then_resuming_gives_the_same_files(tmp_path, reference):
    folder = tmp_path / "out"
    writer = EmbeddingWriter(folder, DIM, "float32", SETTINGS)
    writer.add(PATHS[:2], [_row(p) for p in PATHS[:2]])
    writer.abandon()
    with pytest.raises(FileExistsError, match="unfinished"):
        EmbeddingWriter(folder, DIM, "float32", SETTINGS)
    with pytest.raises(ValueError, match="has not finished"):
        read_embedding_folder(folder)
    # A batch that was written but never committed is cut off on resume.
    with open(folder / "embeddings.npy.partial", "ab") as fh:
        fh.write(b"\x01" * 7)
    with open(folder / "index.csv.partial", "ab") as fh:
        fh.write(b"2,/data/half")
    writer = EmbeddingWriter(folder, DIM, "float32", SETTINGS, resume=True)
    assert writer.done == set(PATHS[:2]) and writer.count == 2
    writer.abandon()
    embed_all(folder, resume=True)
    assert _files(folder) == reference


@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_close_cut_short_is_finished_by_resume(tmp_path, reference, monkeypatch, crash_at):
    # An appending run's close moves embeddings, index and embed.json into place, then deletes
    # the progress record: it dies instead of the 1st, 2nd, 3rd or 4th of these steps.
    folder = tmp_path / "out"
    steps = []

    def dies_at_step(real):
        def step(*args):
            steps.append(args)
            if len(steps) == crash_at:
                raise KeyboardInterrupt("killed")
            real(*args)
        return step

    embed_all(folder, PATHS[:20])
    writer = EmbeddingWriter(folder, DIM, "float32", SETTINGS, append=True)
    todo = [p for p in PATHS if p not in writer.done and not _fails(p)]
    writer.add(todo, [_row(p) for p in todo])
    for p in PATHS:
        if p not in writer.done:
            writer.add_failed(p, f"cannot read {p}")
    monkeypatch.setattr(os, "replace", dies_at_step(os.replace))
    monkeypatch.setattr(os, "unlink", dies_at_step(os.unlink))
    with pytest.raises(KeyboardInterrupt):
        writer.close()
    monkeypatch.undo()
    _assert_final_files_are_whole(folder)
    embed_all(folder, resume=True)
    assert sorted(os.listdir(folder)) == ["embed.json", "embeddings.npy", "index.csv"]
    assert _files(folder) == reference


def _assert_final_files_are_whole(folder):
    """No file at a final name claims a row it lacks, and every row it has is right."""
    if (folder / "embeddings.npy").exists():
        emb = np.load(folder / "embeddings.npy", allow_pickle=False)
        assert os.path.getsize(folder / "embeddings.npy") >= 128 + emb.nbytes
    if (folder / "index.csv").exists():
        lines = (folder / "index.csv").read_text().splitlines()
        assert lines[0] == "row,path"
    if (folder / "embed.json").exists() and not (folder / "embed.progress.json").exists():
        read_embedding_folder(folder)


_CHILD = "--embed-child"


def test_sigkill_then_resume_gives_the_same_files(tmp_path, reference):
    # The child prints its row count after each commit; the kill lands after a seeded count.
    draw = random.Random(20261201)
    for attempt in range(3):
        folder = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, __file__, _CHILD, str(folder)], stdout=subprocess.PIPE, text=True)
        target = draw.randrange(1, 40)
        for line in proc.stdout:
            if int(line) >= target:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL
        _assert_final_files_are_whole(folder)
        embed_all(folder, resume=True)
        assert _files(folder) == reference, f"kill after {target} rows"


if __name__ == "__main__" and sys.argv[1:2] == [_CHILD]:
    embed_all(Path(sys.argv[2]), batch=2, report=lambda n: print(n, flush=True))
