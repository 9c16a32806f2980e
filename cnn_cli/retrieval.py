"""The space vectors are compared in, and comparing them: PCA-whitening, exact
cosine search, and leave-one-out retrieval scores.

The core of ``cnn search`` and of ``cnn embed --pca`` (issue 13). Scores are dot products of L2-normalised
rows, computed in float32 by matrix products over chunks of the index, so
memory is bounded by the chunk sizes below whatever the number of rows; a
float16 or memory-mapped index is converted one chunk at a time.

Ranking order, everywhere: higher score first, and among equal scores the
lower row first. Nothing here prints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cnn_cli.embedding import as_rows, l2_normalize
from cnn_cli.fileio import load_npz_arrays, save_npz_atomic

#: PCA reads its rows in chunks of about this many bytes (as float64), so
#: memory does not grow with N.
PCA_CHUNK_BYTES = 32 * 2**20

#: A component whose variance is below this fraction of the largest is noise
#: of the arithmetic: the rows do not span it, and whitening would blow it up.
PCA_RANK_TOLERANCE = 1e-10

#: Index rows per matrix product in ``search``.
SEARCH_CHUNK_ROWS = 65536

#: At most this many scores (queries x index rows) exist at once: 16M float32
#: scores are 64 MB. Queries are taken in blocks that fit.
MAX_SCORES = 2**24

#: ``evaluate_retrieval`` ranks whole rows of scores (sorting them needs about
#: 25 bytes per score), so it holds at most this many at once.
EVAL_MAX_SCORES = 2**22


@dataclass(frozen=True)
class Pca:
    """A fitted PCA with whitening: ``(x - mean) @ components.T / sqrt(explained_variance + eps)``.

    ``mean`` is (D_in,), ``components`` (D, D_in) with orthonormal rows by
    decreasing variance, each signed so its largest entry is positive (as
    scikit-learn does), ``explained_variance`` (D,) with ddof = 1.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    eps: float = 1e-12

    @property
    def dimension(self):
        return self.components.shape[0]

    def transform(self, rows):
        """Rows (N, D_in) projected and whitened: (N, D) float32 (not L2-normalised)."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.mean.shape[0]:
            raise ValueError(f"PCA was fitted on rows of width {self.mean.shape[0]}, but got shape {rows.shape}")
        scale = 1.0 / np.sqrt(self.explained_variance + self.eps)
        out = np.empty((rows.shape[0], self.dimension), np.float32)
        chunk = _rows_per_chunk(rows.shape[1])
        for start in range(0, rows.shape[0], chunk):
            x = np.asarray(rows[start:start + chunk], dtype=np.float64)
            out[start:start + x.shape[0]] = ((x - self.mean) @ self.components.T) * scale
        return out

    def save(self, path):
        """Write ``path`` (an .npz, atomically)."""
        save_npz_atomic(path, {"mean": self.mean, "components": self.components,
                               "explained_variance": self.explained_variance, "eps": np.float64(self.eps)})

    @classmethod
    def load(cls, path):
        """Read a PCA saved by ``save``; ValueError (naming the file) when it is not one."""
        arrays = load_npz_arrays(path, ["mean", "components", "explained_variance", "eps"])
        mean, comp, var, eps = (arrays[k] for k in ("mean", "components", "explained_variance", "eps"))
        if (mean.ndim != 1 or comp.ndim != 2 or comp.shape[1] != mean.shape[0] or var.shape != comp.shape[:1]
                or eps.shape != () or not all(a.dtype.kind == "f" for a in (mean, comp, var, eps))):
            raise ValueError(f"{path}: not a PCA written by cnn (shapes mean {mean.shape}, "
                             f"components {comp.shape}, explained_variance {var.shape})")
        return cls(mean.astype(np.float64), comp.astype(np.float64), var.astype(np.float64), float(eps))


def _rows_per_chunk(width):
    return max(1, PCA_CHUNK_BYTES // (8 * max(width, 1)))


def _column_mean(rows, chunk):
    """The mean of each column of rows (N, D), summed in float64 over chunks of ``chunk`` rows."""
    total = np.zeros(rows.shape[1])
    for start in range(0, rows.shape[0], chunk):
        total += np.asarray(rows[start:start + chunk], dtype=np.float64).sum(axis=0)
    return total / rows.shape[0]


def fit_pca(rows, dim, *, eps=1e-12):
    """PCA with whitening of rows (N, D_in), keeping ``dim`` components.

    Agrees with ``sklearn.decomposition.PCA(n_components=dim, whiten=True)``.
    ``rows`` may be a memory map: the mean and then the (D_in, D_in) covariance
    are summed over chunks of rows in float64, so memory does not grow with N.
    ValueError when ``dim`` exceeds min(N, D_in), or exceeds the number of
    directions the rows really span (whitening a direction without variance
    would multiply noise by a huge factor).
    """
    rows = as_rows(rows, "rows")
    n, width = rows.shape
    if not 1 <= dim <= min(n, width):
        raise ValueError(f"PCA dimension must be between 1 and min(N, D) = min({n}, {width}), but got {dim}")
    chunk = _rows_per_chunk(width)
    mean = _column_mean(rows, chunk)
    cov = np.zeros((width, width))
    for start in range(0, n, chunk):
        x = np.asarray(rows[start:start + chunk], dtype=np.float64) - mean
        cov += x.T @ x
    cov /= max(n - 1, 1)
    variance, vectors = np.linalg.eigh(cov)
    variance, vectors = variance[::-1], vectors[:, ::-1]
    rank = int(np.sum(variance > PCA_RANK_TOLERANCE * max(variance[0], 0.0))) if variance[0] > 0 else 0
    if dim > rank:
        raise ValueError(f"the {n} rows span only {rank} dimension(s), so PCA cannot whiten {dim}; "
                         f"ask for at most {rank}")
    components = vectors[:, :dim].T.copy()
    biggest = np.argmax(np.abs(components), axis=1)
    components *= np.sign(components[np.arange(dim), biggest])[:, None]
    return Pca(mean, components, variance[:dim].copy(), eps)


def fit_standardize(rows):
    """Each dimension centred on its mean and divided by its standard deviation (ddof = 1): a ``Pca``
    whose components are the identity, so it is saved, loaded and applied as one.

    The default space of ``cnn embed`` (issue 28): pooled responses of fixed
    filters share a large common part, so raw rows all point one way (cosine
    about 0.97-0.9999 for every pair); centring removes the common part and
    the scale evens out dimensions whose spread differs by orders of magnitude.
    A dimension whose variance is below PCA_RANK_TOLERANCE of the largest is
    divided by that floor instead, so a constant channel cannot blow up noise.
    ValueError for fewer than two rows, or rows that are all equal.
    """
    rows = as_rows(rows, "rows")
    n, width = rows.shape
    if n < 2:
        raise ValueError(f"standardising needs at least 2 rows, but got {n}")
    chunk = _rows_per_chunk(width)
    mean = _column_mean(rows, chunk)
    squares = np.zeros(width)
    for start in range(0, n, chunk):
        squares += ((np.asarray(rows[start:start + chunk], dtype=np.float64) - mean) ** 2).sum(axis=0)
    variance = squares / (n - 1)
    if variance.max() <= 0:
        raise ValueError(f"the {n} rows are all equal, so they cannot be standardised")
    variance = np.maximum(variance, PCA_RANK_TOLERANCE * variance.max())
    return Pca(mean, np.eye(width), variance, 0.0)


def search(queries, index, k, *, chunk_rows=SEARCH_CHUNK_ROWS):
    """The ``k`` rows of ``index`` most similar to each query, best first.

    ``queries`` is (Q, D); they are L2-normalised here, so a query that is a
    row of the index scores 1 against it. ``index`` is (N, D), float32 or
    float16, possibly a memory map, with L2-normalised rows (as ``cnn embed``
    writes them); its chunks of ``chunk_rows`` rows are multiplied with the
    queries in float32, keeping a running top-k.

    Returns ``(scores, rows)``, both (Q, min(k, N)): float32 cosine similarities
    and int64 row numbers. ``k`` larger than N is clipped to N. Equal scores are
    ordered by row number.
    """
    queries = np.asarray(queries)
    index = np.asarray(index)
    if queries.ndim != 2 or index.ndim != 2 or queries.shape[1] != index.shape[1]:
        raise ValueError(f"queries (Q, D) and index (N, D) must have the same D, but got shapes "
                         f"{queries.shape} and {index.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, but got {k!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, but got {chunk_rows}")
    queries = l2_normalize(queries)
    if not np.isfinite(queries).all():
        raise ValueError("queries must be finite")
    n_queries, n = queries.shape[0], index.shape[0]
    k = min(int(k), n)
    best_scores = np.empty((n_queries, 0), np.float32)
    best_rows = np.empty((n_queries, 0), np.int64)
    block = max(1, MAX_SCORES // chunk_rows)
    for start in range(0, n, chunk_rows):
        chunk = np.asarray(index[start:start + chunk_rows], dtype=np.float32)
        finite = np.isfinite(chunk).all(axis=1)
        if not finite.all():  # an inf row would rank first and a NaN row anywhere: refuse, do not rank
            raise ValueError(f"row {start + int(np.argmin(finite))} of the index is not finite; "
                             "the embeddings are damaged, so rebuild them")
        scores, rows = [], []
        for q in range(0, n_queries, block):
            s, r = _top_k(queries[q:q + block] @ chunk.T, k)
            scores.append(s)
            rows.append(r + start)
        best_scores, best_rows = _merge(best_scores, best_rows, np.vstack(scores), np.vstack(rows), k)
    return best_scores, best_rows


def _top_k(scores, k):
    """Per row of ``scores`` (Q, M): the k best (values, columns), in no particular order.

    argpartition picks any of several equal scores at the boundary; rows where
    that happens are redone so the lowest columns win, as the ranking order asks.
    """
    m = scores.shape[1]
    if k >= m:
        return scores, np.broadcast_to(np.arange(m), scores.shape)
    cols = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(scores, cols, axis=1)
    kth = values.min(axis=1)
    for i in np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k):
        above = np.flatnonzero(scores[i] > kth[i])
        cols[i] = np.concatenate([above, np.flatnonzero(scores[i] == kth[i])[:k - above.size]])
        values[i] = scores[i, cols[i]]
    return values, cols


def _merge(scores_a, rows_a, scores_b, rows_b, k):
    scores = np.concatenate([scores_a, scores_b], axis=1)
    rows = np.concatenate([rows_a, rows_b], axis=1)
    order = np.lexsort((rows, -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def evaluate_retrieval(rows, labels, k, *, chunk_rows=SEARCH_CHUNK_ROWS):
    """Leave-one-out retrieval quality of labelled rows (N, D), L2-normalised.

    Each row is a query against all the others (never itself), ranked by the
    ranking order above. Rows whose label no other row has are not queries.

    Returns a dict: ``precision_at_1``, ``precision_at_k`` (the share of the k
    best that have the query's label), ``mean_average_precision`` (the mean
    over queries of the average precision over every other row with that
    label), ``queries`` and ``k`` (clipped to N - 1).
    """
    rows = np.asarray(rows)
    labels = np.asarray(labels)
    if rows.ndim != 2 or labels.shape != rows.shape[:1]:
        raise ValueError(f"rows must be (N, D) with one label each, but got shapes {rows.shape} and {labels.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, but got {k!r}")
    n = rows.shape[0]
    _, codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    queries = np.flatnonzero(sizes[codes] >= 2)
    if queries.size == 0:
        raise ValueError("no label has two or more rows, so no row can find another of its class")
    k = min(int(k), n - 1)
    hits_at_1 = hits_at_k = ap_sum = 0.0
    ranks = np.arange(1, n, dtype=np.float64)
    block = max(1, EVAL_MAX_SCORES // n)
    for q in range(0, queries.size, block):
        ids = queries[q:q + block]
        query_rows = np.asarray(rows[ids], dtype=np.float32)
        scores = np.empty((ids.size, n), np.float32)
        for start in range(0, n, chunk_rows):
            scores[:, start:start + chunk_rows] = query_rows @ np.asarray(rows[start:start + chunk_rows],
                                                                          dtype=np.float32).T
        if not np.isfinite(scores).all():
            raise ValueError("rows must be finite")
        scores[np.arange(ids.size), ids] = -np.inf  # the query itself ranks last, then is dropped
        order = np.argsort(-scores, axis=1, kind="stable")[:, :n - 1]
        relevant = codes[order] == codes[ids][:, None]
        hits_at_1 += relevant[:, 0].sum()
        hits_at_k += relevant[:, :k].sum() / k
        precision = np.cumsum(relevant, axis=1) / ranks
        ap_sum += ((precision * relevant).sum(axis=1) / (sizes[codes[ids]] - 1)).sum()
    return {"precision_at_1": float(hits_at_1 / queries.size), "precision_at_k": float(hits_at_k / queries.size),
            "mean_average_precision": float(ap_sum / queries.size), "queries": int(queries.size), "k": k}
