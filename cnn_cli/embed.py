"""``cnn embed`` and ``cnn search``: one vector per image, and retrieval over the vectors.

An ``Embedder`` turns images into rows: it runs the source's layers up to the
chosen one, pools its maps into one vector per image (``embedding.pool_maps``),
optionally applies a saved PCA-whitening, and L2-normalises. Its settings are
what ``embed.json`` records, so ``cnn search`` rebuilds the same embedder from
an index folder and its queries land in the index's space.

``run`` streams any number of images into an output folder (see
``cnn_cli.embedding`` for the files and why a killed run can always resume),
through ``cnn_cli.runner`` (the ``Embedder`` is its sink): on this machine or
on a Dask cluster (``cnn_cli.cluster``), where each task embeds a chunk of
images and returns only their rows. The run holds the folder's lock, so two
runs never write one folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import choices, config, layersel, runner
from .embedding import POOLINGS, EmbeddingWriter, l2_normalize, pool_maps, read_embedding_folder, read_settings
from .imageio import MAX_PIXELS, read_image
from .inputs import Input, Problem, iter_inputs
from .nn import iter_nodes
from .retrieval import Pca, evaluate_retrieval, fit_pca, fit_standardize, search
from .sources import load_source
from .stream import Progress

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
    #: Standardise the rows (``retrieval.fit_standardize``) when no --pca or --pca-from is given.
    standardize: bool = True
    #: Replace a finished or unfinished index in the folder (only the files cnn embed writes).
    force: bool = False


@dataclass
class EmbedSummary(runner.Summary):
    """What a run did (``runner.Summary``; ``skipped``: rows already in the folder), and the rows' dimension."""

    dimension: int = 0


class Embedder(runner.Sink):
    """Images (C, H, W) -> one row each, as ``settings`` describe: ``cnn embed``'s sink (``runner.Sink``).

    Picklable, for Dask workers (the set of paths already embedded stays behind).
    """

    def __init__(self, source, layer, pool, normalize, *, pca=None, max_size=None, max_pixels=MAX_PIXELS):
        self.layers = source.vector_layers[:layer + 1]
        self.inputs = source.vector_inputs[:layer + 1]
        self.shape = source.vector_shapes[layer]
        self.layer, self.pool, self.normalize, self.pca = layer, pool, normalize, pca
        self.color, self.prepare = source.color, source.prepare
        self.max_size, self.max_pixels = max_size, max_pixels
        #: Paths (as index.csv records them) whose rows the folder already holds: skipped.
        self.done = frozenset()

    def __getstate__(self):
        return {**self.__dict__, "done": frozenset()}

    @property
    def dimension(self):
        if self.pca is not None:
            return self.pca.dimension
        if len(self.shape) != 3:
            return int(self.shape[0])
        return self.shape[0] * (2 if self.pool == "stats" else 1)

    def early(self, item):
        key = _key(item.path)
        if key in self.done:
            return runner.Result(key, skipped=True)
        return Input(Path(key), item.name)

    def load(self, item):
        image = read_image(item.path, color=self.color, max_size=self.max_size, max_pixels=self.max_pixels)
        return runner.Loaded(item, self.prepare(image) if self.prepare is not None else image)

    def compute(self, batch):
        return self.rows(np.stack([entry.image for entry in batch]))

    def deliver(self, batch, rows):
        for entry, row in zip(batch, rows):
            yield runner.Result(entry.item.path, value=row)

    def rows(self, x):
        """A batch (N, C, H, W) -> rows (N, D) float32."""
        for _, x in iter_nodes(self.layers, self.inputs, x):
            pass
        rows = pool_maps(x, self.pool) if x.ndim == 4 else np.asarray(x, np.float32)
        if self.normalize:
            rows = l2_normalize(rows)
        if self.pca is not None:
            rows = self.pca.transform(rows)
            if self.normalize:
                rows = l2_normalize(rows)
        return rows


# --------------------------------------------------------------------------- settings


def resolve_layer(source, spec):
    """The index of the layer to embed: ``--layer spec`` (``cnn_cli.layersel``), or the source's default."""
    if spec is None:
        return source.default_layer
    records = layersel.of(source.vector_layers, source.vector_names)
    return layersel.select_one(records, spec, option="--layer")


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
    layer = resolve_layer(source, options.layer)
    pool = _pool_for(source, layer, options.pool)
    if options.pca and options.pca_from:
        raise ValueError("give only one of --pca and --pca-from")
    if options.force and (options.resume or options.append):
        raise ValueError("give only one of --force, --resume and --append")
    pca, pca_record = None, None
    existing = out_dir / PCA_FILE
    standardize = options.standardize and not (options.pca or options.pca_from)
    if standardize and (options.append or options.resume) and (out_dir / "embed.json").exists():
        standardize = _standardized(out_dir)  # new rows go into the folder's own space
    if options.pca_from:
        pca = Pca.load(options.pca_from)
        pca_record = {"dimension": pca.dimension, "fitted": False, "file": PCA_FILE}
    elif options.pca or standardize:
        pca_record = {"dimension": int(options.pca), "fitted": True, "file": PCA_FILE} if options.pca else \
            _standardize_record(source, layer, pool)
        if options.append and existing.exists():
            pca = Pca.load(existing)  # new rows go into the space the folder was fitted in
    embedder = Embedder(source, layer, pool, options.normalize, pca=pca,
                        max_size=options.max_size, max_pixels=options.max_pixels)
    settings = settings_of(source, layer, pool, options, pca_record)
    two_passes = pca_record is not None and pca_record["fitted"] and pca is None
    summary = EmbedSummary(dimension=embedder.dimension)
    with runner.Run(out_dir, summary, progress=progress) as run_:
        if options.force:
            _remove_index(out_dir, progress)
        if two_passes:
            _refuse_finished(out_dir, options)
            writer = _open_writer(out_dir / FIRST_PASS, embedder.dimension, "float32", {**settings, "pca": None},
                                  options)
        else:
            writer = _open_writer(out_dir, embedder.dimension, options.dtype, settings, options)
        try:
            _fill(run_, writer, inputs, embedder, cluster)
            if summary.interrupted:  # the rows committed so far stay, for --resume
                writer.abandon()
                return summary
            writer.close()
        except BaseException:
            writer.abandon()
            raise
        if options.pca_from:
            shutil.copyfile(options.pca_from, out_dir / PCA_FILE)
        if two_passes:
            summary.dimension = _second_pass(out_dir / FIRST_PASS, out_dir, options, settings, progress)
    return summary


def _standardizing(rows):
    """The standardising fitted on ``rows``, or None for fewer than STANDARDIZE_MIN_ROWS or all-equal rows."""
    if len(rows) < config.STANDARDIZE_MIN_ROWS:
        return None
    try:
        return fit_standardize(rows)
    except ValueError:  # every row is the same: nothing to centre on
        return None


def _standardize_record(source, layer, pool):
    """embed.json's ``pca`` for standardised rows (the default): a diagonal whitening in pca.npz."""
    shape = source.vector_shapes[layer]
    width = int(shape[0]) if len(shape) != 3 else shape[0] * (2 if pool == "stats" else 1)
    return {"dimension": width, "fitted": True, "file": PCA_FILE, "standardized": True}


def _standardized(out_dir):
    """Whether a finished folder's rows were standardised (so appended rows must be too)."""
    record = read_settings(out_dir).get("pca")
    return isinstance(record, dict) and record.get("standardized") is True


#: What ``cnn embed`` writes into its folder; ``--force`` removes these and nothing else.
INDEX_FILES = ("embeddings.npy", "index.csv", "embed.json", PCA_FILE, "embed.progress.json",
               "embeddings.npy.partial", "index.csv.partial")


def _remove_index(out_dir, progress):
    """``--force``: remove the index files cnn embed wrote (and a first pass), leaving anything else."""
    removed = [name for name in INDEX_FILES if (out_dir / name).is_file()]
    for name in removed:
        (out_dir / name).unlink()
    if (out_dir / FIRST_PASS).is_dir():
        for name in INDEX_FILES:
            with contextlib.suppress(FileNotFoundError):
                (out_dir / FIRST_PASS / name).unlink()
        with contextlib.suppress(OSError):  # a file of the user's inside it stays, and so does the folder
            (out_dir / FIRST_PASS).rmdir()
        removed.append(FIRST_PASS)
    if removed:
        progress.note(f"--force: replacing the index in {out_dir} ({', '.join(removed)}); "
                      "other files there are left as they are")


def _refuse_finished(out_dir, options):
    if (out_dir / "embed.json").exists() and not (options.append or options.resume):
        raise FileExistsError(f"{out_dir}: already holds embeddings; add to them with --append, replace them "
                              "with --force, or choose another folder")


def _open_writer(folder, dim, dtype, settings, options):
    return EmbeddingWriter(folder, dim, dtype, settings, resume=options.resume, append=options.append)


#: Rows handed to the writer at once (each hand-over is flushed and fsync'd).
WRITE_ROWS = 64


def _fill(run_, writer, inputs, embedder, cluster):
    """Embed the inputs the writer has not done yet, writing rows as they come (``runner.Run.stream``)."""
    embedder.done = writer.done
    paths, rows = [], []

    def write(result):
        if result.error is not None:
            if result.path is not None:
                writer.add_failed(str(result.path), result.error)
        elif not result.skipped:
            paths.append(str(result.path))
            rows.append(result.value)
            if len(rows) >= WRITE_ROWS:
                writer.add(paths, np.stack(rows))
                paths.clear()
                rows.clear()

    run_.stream(inputs, embedder, cluster=cluster, on_result=write)
    if rows and not run_.summary.interrupted:
        writer.add(paths, np.stack(rows))


def _key(path):
    """How a path is recorded in index.csv: absolute, without resolving links."""
    return os.path.abspath(path)


def _second_pass(first, out_dir, options, settings, progress):
    """Fit PCA-whitening (or standardising) on the first pass's rows, then write them transformed as the final folder.

    Fewer than ``config.STANDARDIZE_MIN_ROWS`` rows are not standardised: they
    are written as pooled, and embed.json records ``pca: null``.
    """
    raw = read_embedding_folder(first)
    dim = settings["pca"]["dimension"]
    if options.pca:
        progress.note(f"fitting PCA-whitening to {dim} dimensions on {len(raw.paths)} rows")
        pca = fit_pca(raw.embeddings, dim)
    else:
        pca = _standardizing(raw.embeddings)
        if pca is None:
            settings = {**settings, "pca": None}
    if pca is not None:
        pca.save(out_dir / PCA_FILE)
    failed = raw.info.get("failed", [])
    final = EmbeddingWriter(out_dir, dim, options.dtype, settings, resume=True)
    try:
        for item in failed:
            if item["path"] not in final.done:
                final.add_failed(item["path"], item["error"])
        for start in range(0, len(raw.paths), PCA_ROWS):
            stop = start + PCA_ROWS
            rows = np.asarray(raw.embeddings[start:stop])
            if pca is not None:
                rows = pca.transform(rows)
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
    damaged = f"{folder}: embed.json is damaged"
    if not isinstance(spec, dict) or set(spec) - {"banks", "pipeline", "model"}:
        raise ValueError(f"{damaged}: its source is {spec!r}"[:300] + "; rebuild the index with cnn embed")
    if color not in choices.COLORS:
        raise ValueError(f"{damaged}: its colour is {color!r}"[:300] + f", not one of {', '.join(choices.COLORS)}; "
                         "rebuild the index with cnn embed")
    if max_size is not None and (not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1):
        raise ValueError(f"{damaged}: its max_size is {max_size!r}"[:300] + "; rebuild the index with cnn embed")
    if pool not in POOLINGS + ("none",):
        raise ValueError(f"{damaged}: its pooling is {pool!r}"[:300] + "; rebuild the index with cnn embed")
    source = load_source(**spec, color=color)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < len(source.vector_layers):
        raise ValueError(f"{damaged}: its layer index is {layer!r}"[:300] + f", but the source has "
                         f"{len(source.vector_layers)} layers; rebuild the index with cnn embed")
    if source.describe()["files"] != info["source"]["files"]:
        raise ValueError(f"{folder}: the source's files changed since the index was built "
                         f"({', '.join(f['path'] for f in info['source']['files'])}); rebuild the index")
    pca = Pca.load(folder / PCA_FILE) if info.get("pca") else None
    embedder = Embedder(source, layer, pool, normalize, pca=pca, max_size=max_size)
    if embedder.dimension != index.embeddings.shape[1]:
        raise ValueError(f"{damaged}: its settings make rows of {embedder.dimension} values, but "
                         f"embeddings.npy holds {index.embeddings.shape[1]}; rebuild the index with cnn embed")
    return index, embedder


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
    for result in runner.process(items, embedder, progress):
        if result.error is not None:
            failed.append((str(result.path), result.error))
            continue
        scores, rows = search(result.value[None], index.embeddings, k)
        results.append({"query": str(result.path), "results": [
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
    trained = _training_images_of(index)
    note = (f"the index holds the images the model {trained} was trained on (the SHA-256 of their file list "
            "matches the one it recorded), so these figures flatter it; embed images it has not seen to "
            "measure retrieval") if trained else None
    return {**scores, "classes": len(names), "index": str(folder), "training_folder": bool(trained),
            "note": note}


def _training_images_of(index):
    """The model file whose training folder the index's images are, as ``cnn evaluate`` tells
    (``inference.choose_images``: the SHA-256 of the file list the model recorded); else None."""
    from .data import files_sha256
    from .modelfile import load_model

    spec = index.info.get("source", {}).get("spec") if isinstance(index.info.get("source"), dict) else None
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, str) or not index.paths:
        return None
    try:
        _, meta, _ = load_model(model)
    except (ValueError, OSError, MemoryError):
        return None
    recorded = getattr(meta.training, "dataset_sha256", None) if meta.training is not None else None
    if not isinstance(recorded, str):
        return None
    root = Path(os.path.commonpath([str(Path(p).parent.parent) for p in index.paths]))
    return model if files_sha256(root, index.paths) == recorded else None

