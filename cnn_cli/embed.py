"""``cnn embed`` and ``cnn search``: one vector per image, and retrieval over the vectors.

An ``Embedder`` turns images into rows: it runs the source's layers up to the
chosen one, pools its maps into one vector per image (``embedding.pool_maps``),
optionally applies a saved PCA-whitening, and L2-normalises. Its settings are
what ``embed.json`` records, so ``cnn search`` rebuilds the same embedder from
an index folder and its queries land in the index's space.

``run`` streams any number of images into an output folder (see
``cnn_cli.embedding`` for the files and why a killed run can always resume),
on this machine or on a Dask cluster (``cnn_cli.cluster``), where each task
embeds a chunk of images and returns only their rows.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .embedding import POOLINGS, EmbeddingWriter, l2_normalize, pool_maps, read_embedding_folder
from .imageio import MAX_PIXELS, ImageError, read_image
from .inputs import Input, Problem, iter_inputs
from .retrieval import Pca, evaluate_retrieval, fit_pca, search
from .sources import load_source
from .stream import Batch, CompileNote, Progress, batched, read_ahead

#: Rows transformed at once when a fitted PCA is applied to the first pass.
PCA_ROWS = 65536

PCA_FILE = "pca.npz"
FIRST_PASS = ".first-pass"


@dataclass
class EmbedOptions:
    layer: str | None = None
    pool: str | None = None
    normalize: bool = True
    pca: int | None = None
    pca_from: str | None = None
    dtype: str = "float32"
    max_size: int | None = None
    max_pixels: int = MAX_PIXELS
    resume: bool = False
    append: bool = False


@dataclass
class EmbedSummary:
    done: int = 0
    skipped: int = 0
    seconds: float = 0.0
    dimension: int = 0
    failed: list = field(default_factory=list)


class Embedder:
    """Images (C, H, W) -> one row each, as ``settings`` describe. Picklable, for Dask workers."""

    def __init__(self, source, layer, pool, normalize, *, pca=None, max_size=None, max_pixels=MAX_PIXELS):
        self.layers = source.vector_layers[:layer + 1]
        self.shape = source.vector_shapes[layer]
        self.layer, self.pool, self.normalize, self.pca = layer, pool, normalize, pca
        self.color, self.prepare = source.color, source.prepare
        self.max_size, self.max_pixels = max_size, max_pixels

    @property
    def dimension(self):
        if self.pca is not None:
            return self.pca.dimension
        if len(self.shape) != 3:
            return int(self.shape[0])
        return self.shape[0] * (2 if self.pool == "stats" else 1)

    def load(self, path):
        image = read_image(path, color=self.color, max_size=self.max_size, max_pixels=self.max_pixels)
        return self.prepare(image) if self.prepare is not None else image

    def rows(self, x):
        """A batch (N, C, H, W) -> rows (N, D) float32."""
        for layer in self.layers:
            x = layer.forward(x)
        rows = pool_maps(x, self.pool) if x.ndim == 4 else np.asarray(x, np.float32)
        if self.normalize:
            rows = l2_normalize(rows)
        if self.pca is not None:
            rows = self.pca.transform(rows)
            if self.normalize:
                rows = l2_normalize(rows)
        return rows

    def embed(self, items, progress=None):
        """Yield (item, row or None, error or None) for each ``Input``, streaming and batching."""
        def load(item):
            try:
                return item, self.load(item.path), None
            except ImageError as exc:
                return item, None, str(exc)

        compile_note = CompileNote(progress)
        for entry in batched(read_ahead(items, load), lambda e: e[1]):
            if not isinstance(entry, Batch):
                yield entry
                continue
            compile_note.start()
            try:
                rows = self.rows(np.stack([image for _, image, _ in entry]))
            except (ValueError, MemoryError) as exc:
                message = "out of memory; use --max-size" if isinstance(exc, MemoryError) else str(exc)
                for item, _, _ in entry:
                    yield item, None, f"{item.path}: {message}"
                continue
            finally:
                compile_note.cancel()
            for (item, _, _), row in zip(entry, rows):
                yield item, row, None


def embed_chunk(items, embedder):
    """A Dask task: the rows of ``items``, as ``Embedder.embed`` yields them."""
    return list(embedder.embed(items))


# --------------------------------------------------------------------------- settings


def resolve_layer(source, spec):
    """The index of the layer to embed: ``spec`` (index, 'last', 'layerN' or a kind) or the source's default."""
    count = len(source.vector_layers)
    if spec is None:
        return source.default_layer
    kinds = [layer.kind for layer in source.vector_layers]
    text = str(spec).strip()
    if text == "last":
        return count - 1
    number = text[5:] if text.startswith("layer") else text
    if number.lstrip("-").isdigit():
        index = int(number) + (count if int(number) < 0 else 0)
        if 0 <= index < count:
            return index
        raise ValueError(f"--layer {spec}: the source has layers 0 to {count - 1}")
    if kinds.count(text) == 1:
        return kinds.index(text)
    names = ", ".join(f"{i} ({k})" for i, k in enumerate(kinds))
    raise ValueError(f"--layer: no single layer {spec!r}; give an index, 'last' or a kind, from: {names}")


def settings_of(source, layer, pool, options, pca_record):
    """What embed.json records (and what --append and --resume compare)."""
    kind = source.vector_layers[layer].kind
    return {
        "source": source.describe(),
        "layer": {"index": layer, "name": f"layer{layer}", "kind": kind},
        "pooling": pool,
        "normalization": "l2" if options.normalize else "none",
        "pca": pca_record,
        "image": {"color": source.color, "max_size": options.max_size},
    }


def _pool_for(source, layer, requested):
    flat = len(source.vector_shapes[layer]) != 3
    if flat:
        return "none"  # a vector already (NetVLAD's descriptor, a classifier's input)
    if requested is None:
        return source.default_pool
    if requested not in POOLINGS:
        raise ValueError(f"--pool must be one of {', '.join(POOLINGS)}, but got {requested!r}")
    return requested


# --------------------------------------------------------------------------- cnn embed


def run(inputs, out_dir, source, options, *, progress=None, cluster=None):
    """Embed every image that ``inputs`` names into ``out_dir``; return an ``EmbedSummary``.

    Raises ValueError for settings a user must change (a layer that does not
    exist, an --append whose settings differ, ...).
    """
    progress = progress or Progress()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    layer = resolve_layer(source, options.layer)
    pool = _pool_for(source, layer, options.pool)
    if options.pca and options.pca_from:
        raise ValueError("give only one of --pca and --pca-from")
    pca, pca_record = None, None
    existing = out_dir / PCA_FILE
    if options.pca_from:
        pca = Pca.load(options.pca_from)
        pca_record = {"dimension": pca.dimension, "fitted": False, "file": PCA_FILE}
    elif options.pca:
        pca_record = {"dimension": int(options.pca), "fitted": True, "file": PCA_FILE}
        if options.append and existing.exists():
            pca = Pca.load(existing)  # new rows go into the space the folder was fitted in
    embedder = Embedder(source, layer, pool, options.normalize, pca=pca,
                        max_size=options.max_size, max_pixels=options.max_pixels)
    settings = settings_of(source, layer, pool, options, pca_record)
    two_passes = bool(options.pca) and pca is None
    first = out_dir / FIRST_PASS if two_passes else out_dir
    if two_passes:
        out_dir.mkdir(parents=True, exist_ok=True)
        _refuse_finished(out_dir, options)
        settings_first = {**settings, "pca": None}
        writer = _open_writer(first, embedder.dimension, "float32", settings_first, options)
    else:
        writer = _open_writer(out_dir, embedder.dimension, options.dtype, settings, options)
    summary = EmbedSummary(dimension=embedder.dimension)
    try:
        _fill(writer, inputs, out_dir, embedder, summary, progress, cluster)
        writer.close()
    except BaseException:
        writer.abandon()
        raise
    if options.pca_from:
        shutil.copyfile(options.pca_from, out_dir / PCA_FILE)
    if two_passes:
        summary.dimension = _second_pass(first, out_dir, int(options.pca), options, settings, progress)
    summary.seconds = time.perf_counter() - start
    return summary


def _refuse_finished(out_dir, options):
    if (out_dir / "embed.json").exists() and not (options.append or options.resume):
        raise FileExistsError(f"{out_dir}: already holds embeddings; use --append, or choose another folder")


def _open_writer(folder, dim, dtype, settings, options):
    return EmbeddingWriter(folder, dim, dtype, settings, resume=options.resume, append=options.append)


def _fill(writer, inputs, out_dir, embedder, summary, progress, cluster):
    """Embed the inputs the writer has not done yet, writing rows as they come."""
    def todo():
        for entry in iter_inputs(inputs, exclude=[out_dir]):
            if isinstance(entry, Problem):
                summary.failed.append((None, entry.message))
                continue
            key = _key(entry.path)
            if key in writer.done:
                summary.skipped += 1
                progress.advance(None)
                continue
            yield Input(Path(key), entry.name)

    import threading

    threading.Thread(target=lambda: progress.total(
        sum(isinstance(i, Input) for i in iter_inputs(inputs, exclude=[out_dir]))), daemon=True).start()
    if cluster is None:
        results = embedder.embed(todo(), progress)
    else:
        results = cluster.map_chunks(todo(), embed_chunk, embedder,
                                     lost=lambda item, message: (item, None, f"{item.path}: {message}"))
    paths, rows = [], []
    for item, row, error in results:
        if error is not None:
            writer.add_failed(str(item.path), error)
            summary.failed.append((str(item.path), error))
        else:
            paths.append(str(item.path))
            rows.append(row)
            summary.done += 1
        progress.advance(None)
        if len(rows) >= 64:
            writer.add(paths, np.stack(rows))
            paths, rows = [], []
    if rows:
        writer.add(paths, np.stack(rows))


def _key(path):
    """How a path is recorded in index.csv: absolute, without resolving links."""
    return os.path.abspath(path)


def _second_pass(first, out_dir, dim, options, settings, progress):
    """Fit PCA-whitening on the first pass's rows, then write them transformed as the final folder."""
    raw = read_embedding_folder(first)
    progress.note(f"fitting PCA-whitening to {dim} dimensions on {len(raw.paths)} rows")
    pca = fit_pca(raw.embeddings, dim)
    pca.save(out_dir / PCA_FILE)
    failed = raw.info.get("failed", [])
    final = EmbeddingWriter(out_dir, dim, options.dtype, settings, resume=True)
    try:
        for item in failed:
            if item["path"] not in final.done:
                final.add_failed(item["path"], item["error"])
        for start in range(0, len(raw.paths), PCA_ROWS):
            stop = start + PCA_ROWS
            rows = pca.transform(np.asarray(raw.embeddings[start:stop]))
            if options.normalize:
                rows = l2_normalize(rows)
            final.add(raw.paths[start:stop], rows)
        final.close()
    except BaseException:
        final.abandon()
        raise
    shutil.rmtree(first)
    return dim


# --------------------------------------------------------------------------- cnn search


def open_index(folder):
    """(the index folder's rows and paths, an Embedder that embeds queries as the index was made)."""
    folder = Path(folder)
    index = read_embedding_folder(folder)
    info = index.info
    try:
        spec = info["source"]["spec"]
        layer, pool = info["layer"]["index"], info["pooling"]
        normalize = info["normalization"] == "l2"
        color, max_size = info["image"]["color"], info["image"]["max_size"]
    except (KeyError, TypeError):
        raise ValueError(f"{folder}: embed.json does not say how its rows were made; rebuild it with cnn embed") from None
    source = load_source(**spec, color=color)
    if source.describe()["files"] != info["source"]["files"]:
        raise ValueError(f"{folder}: the source's files changed since the index was built "
                         f"({', '.join(f['path'] for f in info['source']['files'])}); rebuild the index")
    pca = Pca.load(folder / PCA_FILE) if info.get("pca") else None
    return index, Embedder(source, layer, pool, normalize, pca=pca, max_size=max_size)


def search_images(queries, folder, k, *, progress=None):
    """For each query image: its ``k`` nearest index rows, best first, as JSON-ready dicts.

    Returns (results, failed): one ``{"query", "results": [{"path", "score"}]}``
    per query that could be embedded, and (path, message) for those that could not.
    """
    index, embedder = open_index(folder)
    results, failed, items = [], [], []
    for entry in iter_inputs(queries):
        if isinstance(entry, Problem):
            failed.append((None, entry.message))
        else:
            items.append(entry)
    for item, row, error in embedder.embed(items, progress):
        if error is not None:
            failed.append((str(item.path), error))
            continue
        scores, rows = search(row[None], index.embeddings, k)
        results.append({"query": str(item.path), "results": [
            {"path": index.paths[r], "score": float(s)} for s, r in zip(scores[0], rows[0])]})
    return results, failed


def evaluate_index(folder, k):
    """Leave-one-out retrieval scores of an index whose images lie in class folders (ImageFolder)."""
    index = read_embedding_folder(folder)
    labels = [Path(p).parent.name for p in index.paths]
    if len(set(labels)) < 2:
        raise ValueError(f"{folder}: all {len(labels)} images lie in one folder ({labels[0] if labels else '-'}); "
                         "--evaluate needs images in class folders, as in ImageFolder")
    names = sorted(set(labels))
    scores = evaluate_retrieval(index.embeddings, np.array([names.index(x) for x in labels]), k)
    return {**scores, "classes": len(names), "index": str(folder)}

