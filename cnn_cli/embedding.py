"""One vector per image: pooling, normalisation and the output folder.

This is the NumPy core of ``cnn embed`` (issue 13); PCA-whitening, searching
and scoring the vectors live in ``cnn_cli.retrieval``. Nothing here prints.

The output folder
-----------------
A finished folder holds three files, the contract other tools read:

- ``embeddings.npy``: (N, D) float32 or float16, C order; loads with
  ``np.load(p, allow_pickle=False)`` and ``np.load(p, mmap_mode="r")``.
- ``index.csv``: the header ``row,path``, then one line per row in row order
  (RFC 4180 quoting; UTF-8, with undecodable path bytes kept by
  ``surrogateescape``). Paths are written exactly as the caller gives them.
- ``embed.json``: the caller's settings plus ``dimension``, ``dtype``,
  ``count``, ``failed`` (a list of ``{"path", "error"}``) and
  ``cnn_version`` (the version that last wrote the folder).

Why a killed run never leaves a file that claims rows it lacks
--------------------------------------------------------------
While a run streams, rows go to ``embeddings.npy.partial`` (an .npy file whose
fixed-size header is rewritten only at the end) and paths to
``index.csv.partial``. After each batch both are flushed and fsync'd, and only
then is ``embed.progress.json`` replaced (temporary file + ``os.replace``),
recording how many rows and index bytes are committed. A kill at any instant
therefore leaves a progress record that never claims more than the partial
files hold; whatever lies beyond it is cut off when the run resumes.

``close()`` writes the final row count into the partial file's header, moves
the two partial files to their final names, writes ``embed.json`` last and then
deletes the progress record. A kill in the middle of this leaves the progress
record behind, which marks the folder unfinished (``read_embedding_folder``
refuses it) and lets a resumed run move the files back and close again. Each
final file is complete whenever it exists: the .npy header is only ever
written with rows that are already on disk.

Appending starts a new pair of partial files from the finished folder's rows
(a copy), so the finished files stay intact until the appended run closes.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnn_cli import __version__, choices
from cnn_cli.fileio import atomic_path

POOLINGS = choices.POOLINGS

#: The GeM exponent and clamp (Radenović et al., "Fine-tuning CNN image
#: retrieval with no human annotation", 2018; the values of cnnimageretrieval).
GEM_P = 3.0
GEM_EPS = 1e-6

DTYPES = choices.DTYPES

#: Appending copies the finished rows in chunks of about this many bytes.
COPY_CHUNK_BYTES = 32 * 2**20

EMBEDDINGS = "embeddings.npy"
INDEX = "index.csv"
INFO = "embed.json"
PROGRESS = "embed.progress.json"
PARTIAL = ".partial"

#: Keys of embed.json that the writer owns; the caller's settings may not use them.
WRITER_KEYS = ("dimension", "dtype", "count", "failed", "cnn_version")

#: Failures recorded before the progress record is rewritten, at least (``EmbeddingWriter.add_failed``).
FAILED_COMMIT = 64

#: The partial .npy file's header is always this long (a multiple of 64, as the
#: format asks), so the final row count can be written over it in place.
_HEADER_BYTES = 128


def pool_maps(maps, method):
    """One vector per image from a batch of maps.

    ``maps`` is (N, C, H, W); the result is (N, C) float32, or (N, 2C) for
    ``stats``. A (N, D) input is already one vector per image (NetVLAD's
    descriptor, a classifier's features) and is returned as float32 whatever
    ``method`` says.

    - ``gap``: mean of each channel.
    - ``gmp``: maximum of each channel.
    - ``gem``: generalised mean (mean(max(x, eps)^p))^(1/p) with p = GEM_P = 3,
      eps = GEM_EPS = 1e-6; the clamp (as in cnnimageretrieval) keeps the
      root real for maps with negative values, which count as eps.
    - ``stats``: the mean of each channel, then its (population) standard
      deviation: [mean_0 .. mean_C-1, std_0 .. std_C-1].

    Sums run in float64.
    """
    if method not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, but got {method!r}")
    maps = np.asarray(maps)
    if maps.ndim == 2:
        return np.asarray(maps, dtype=np.float32)
    if maps.ndim != 4:
        raise ValueError(f"maps must be (N, C, H, W) or (N, D), but got shape {maps.shape}")
    n, c, h, w = maps.shape
    if h * w == 0:
        raise ValueError(f"maps must have at least one pixel, but got shape {maps.shape}")
    flat = maps.reshape(n, c, h * w)
    if method == "gap":
        return flat.mean(axis=2, dtype=np.float64).astype(np.float32)
    if method == "gmp":
        return flat.max(axis=2).astype(np.float32)
    out = np.empty((n, 2 * c if method == "stats" else c), np.float32)
    for i in range(n):  # one image at a time in float64: bounded memory, exact enough
        x = flat[i].astype(np.float64)
        if method == "gem":
            out[i] = np.mean(np.maximum(x, GEM_EPS) ** GEM_P, axis=1) ** (1.0 / GEM_P)
        else:
            mean = x.mean(axis=1)
            out[i, :c] = mean
            out[i, c:] = np.sqrt(np.mean((x - mean[:, None]) ** 2, axis=1))
    return out


def l2_normalize(rows, eps=1e-12):
    """Rows (N, D) divided by their Euclidean norms, as float32.

    Norms below ``eps`` count as ``eps``, so an all-zero row stays zero.
    """
    rows = as_rows(rows, "rows")
    norms = np.sqrt(np.einsum("nd,nd->n", rows, rows, dtype=np.float64))
    return (rows / np.maximum(norms, eps)[:, None]).astype(np.float32)


def as_rows(rows, name):
    """``rows`` as an array (a memory map is not copied); ValueError unless it is (N, D)."""
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"{name} must be (N, D), but got shape {rows.shape}")
    return rows


def _npy_header(rows, dim, dtype):
    """The .npy (version 1.0) header of a C-ordered (rows, dim) array, _HEADER_BYTES long."""
    text = repr({"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
                 "shape": (int(rows), int(dim))})
    body = text.ljust(_HEADER_BYTES - 10 - 1) + "\n"
    return np.lib.format.magic(1, 0) + struct.pack("<H", len(body)) + body.encode("latin1")


def _json_safe(settings):
    try:
        return json.loads(json.dumps(settings, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"settings must be plain JSON values: {exc}") from None


def _write_json(path, obj):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())


#: The largest embed.json or progress record read: a few KB, plus the failed inputs' list.
MAX_RECORD_BYTES = 64 * 2**20


def _read_json(path):
    """The JSON object in ``path``; ValueError naming the file for anything else."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise ValueError(f"over {MAX_RECORD_BYTES // 2**20} MB")
        obj = json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path}: not readable: nested too deeply") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not readable: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not an embedding record (a JSON object); rebuild the folder with cnn embed")
    return obj


def _index_lines(first_row, paths):
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows((first_row + i, p) for i, p in enumerate(paths))
    return text.getvalue().encode("utf-8", "surrogateescape")


def _parse_index(data, source, count):
    """Paths from index.csv bytes; ValueError unless rows are 0..count-1 in order."""
    reader = csv.reader(io.StringIO(data.decode("utf-8", "surrogateescape"), newline=""))
    paths = []
    try:
        if next(reader, None) != ["row", "path"]:
            raise ValueError(f"{source}: does not start with the header 'row,path'")
        for line in reader:
            if len(line) != 2 or line[0] != str(len(paths)):
                raise ValueError(f"{source}: line for row {len(paths)} reads {line!r}"[:300])
            paths.append(line[1])
    except csv.Error as exc:  # a field over csv's limit (128 KB), a stray quote or NUL
        raise ValueError(f"{source}: line for row {len(paths)} is not a row,path line ({exc})") from None
    if len(paths) != count:
        raise ValueError(f"{source}: lists {len(paths)} rows, but {count} were written")
    return paths


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_settings(folder):
    """The settings a folder's embed.json records (a dict); ValueError naming the file when it is not one."""
    return _read_json(Path(folder) / INFO)


@dataclass(frozen=True)
class EmbeddingFolder:
    """A finished output folder: ``embeddings`` (N, D), ``paths`` (N strings), ``info`` (embed.json)."""

    embeddings: np.ndarray
    paths: list
    info: dict


def read_embedding_folder(folder, *, mmap_mode="r"):
    """Open a finished folder, checking that its three files agree.

    ValueError when a run is unfinished (resume it first) or the files disagree.
    """
    folder = Path(folder)
    if (folder / PROGRESS).exists():
        raise ValueError(f"{folder}: an embedding run there has not finished; resume it first")
    info = _read_json(folder / INFO)
    try:
        embeddings = np.load(folder / EMBEDDINGS, mmap_mode=mmap_mode, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # empty, truncated, not an .npy
        raise ValueError(f"{folder / EMBEDDINGS}: not a readable array ({exc or 'empty'}); "
                         "rebuild the folder with cnn embed") from None
    if str(embeddings.dtype) not in DTYPES:
        raise ValueError(f"{folder / EMBEDDINGS}: holds {embeddings.dtype} values; cnn embed writes "
                         f"{' or '.join(DTYPES)}, so the folder is not one it made")
    count = info.get("count")
    if embeddings.ndim != 2 or embeddings.shape != (count, info.get("dimension")):
        raise ValueError(f"{folder}: {EMBEDDINGS} has shape {embeddings.shape}, but {INFO} says "
                         f"{count} rows of dimension {info.get('dimension')}")
    paths = _parse_index((folder / INDEX).read_bytes(), folder / INDEX, count)
    return EmbeddingFolder(embeddings, paths, info)


class EmbeddingWriter:
    """Stream rows into an output folder (see the module docstring for the files and their safety).

    ``settings`` (a JSON-able dict: source, layer, pooling, ...) go into embed.json
    as they are. Without ``resume`` or ``append`` the folder must not hold a run.

    - ``resume=True`` continues an unfinished run: rows past the last commit are
      cut off, and ``done`` holds the paths already embedded or failed, which the
      caller skips. With no unfinished run it starts afresh, or, on a finished
      folder, acts as ``append``.
    - ``append=True`` adds rows to a finished folder (or starts an empty one);
      ``done`` holds the paths it already lists.

    Both refuse (ValueError naming the setting) when ``settings``, ``dim`` or
    ``dtype`` differ from the run's. Use as a context manager: a clean exit
    closes, an exception leaves the run resumable.
    """

    def __init__(self, folder, dim, dtype="float32", settings=None, *, resume=False, append=False):
        if str(dtype) not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, but got {dtype!r}")
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive int, but got {dim!r}")
        settings = _json_safe(settings or {})
        clash = [k for k in WRITER_KEYS if k in settings]
        if clash:
            raise ValueError(f"settings may not use the keys {clash}: the writer sets them")
        self.folder = Path(folder)
        self.dim, self.dtype, self.settings = int(dim), np.dtype(dtype), settings
        self._row_bytes = self.dim * self.dtype.itemsize
        self.count, self.failed, self.done = 0, [], set()
        #: How many of ``failed`` the progress record holds (see ``add_failed``).
        self._committed_failed = 0
        self._closed = False
        self.folder.mkdir(parents=True, exist_ok=True)
        progress, info = self.folder / PROGRESS, self.folder / INFO
        if progress.exists():
            if not resume:
                raise FileExistsError(f"{self.folder}: holds an unfinished embedding run; continue it "
                                      "with --resume, or choose another folder")
            self._reopen(_read_json(progress), progress)
        elif info.exists():
            if not (resume or append):
                raise FileExistsError(f"{self.folder}: already holds embeddings; add to them with "
                                      "--append, replace them with --force, or choose another folder")
            self._start_from_finished(_read_json(info), info)
        else:
            leftovers = [n for n in (EMBEDDINGS, INDEX) if (self.folder / n).exists()]
            if leftovers:
                raise FileExistsError(f"{self.folder}: holds {leftovers} but no {INFO}; "
                                      "choose another folder")
            self._start([], b"")

    # -- opening ---------------------------------------------------------------

    def _check_same(self, record, source):
        stored = {k: v for k, v in record.items() if k not in WRITER_KEYS}
        ours = {**self.settings, "dimension": self.dim, "dtype": self.dtype.name}
        stored.update(dimension=record.get("dimension"), dtype=record.get("dtype"))
        for key in sorted(set(stored) | set(ours)):
            if stored.get(key) != ours.get(key):
                raise ValueError(f"{source} was written with {key} = {stored.get(key)!r}, but this run has "
                                 f"{key} = {ours.get(key)!r}; use the same settings or another folder")

    def _start(self, previous_failed, index_body, rows=None):
        """New partial files holding ``rows`` (a finished folder's, when appending), then the progress record."""
        data_path, index_path = self._partial(EMBEDDINGS), self._partial(INDEX)
        with open(data_path, "wb") as fh:
            fh.write(_npy_header(0, self.dim, self.dtype))
            if rows is not None:
                chunk = max(1, COPY_CHUNK_BYTES // self._row_bytes)
                for start in range(0, rows.shape[0], chunk):
                    fh.write(np.ascontiguousarray(rows[start:start + chunk], dtype=self.dtype).tobytes())
            os.fsync(fh.fileno())
        with open(index_path, "wb") as fh:
            fh.write(b"row,path\n" + index_body)
            os.fsync(fh.fileno())
        self.count = 0 if rows is None else rows.shape[0]
        self.failed = list(previous_failed)
        self._index_bytes = len(b"row,path\n" + index_body)
        self._open_partials()
        self._commit()

    def _start_from_finished(self, record, source):
        self._check_same(record, source)
        existing = read_embedding_folder(self.folder)
        body = (self.folder / INDEX).read_bytes()[len(b"row,path\n"):]
        self._start(record.get("failed", []), body, existing.embeddings)
        self.done = set(existing.paths) | {f["path"] for f in self.failed}

    def _reopen(self, record, source):
        self._check_same(record.get("settings", {}) | {k: record.get(k) for k in ("dimension", "dtype")}, source)
        for name in (PROGRESS, INFO):  # temporary files of writes a kill interrupted
            for stale in self.folder.glob(f".{name}.*.tmp"):
                stale.unlink()
        for name in (EMBEDDINGS, INDEX):  # a close that was cut short moved them already: move them back
            if not self._partial(name).exists() and (self.folder / name).exists():
                os.replace(self.folder / name, self._partial(name))
        self.count, self._index_bytes, self.failed = record["rows"], record["index_bytes"], record["failed"]
        if not self._partial(EMBEDDINGS).exists() and self.count == 0:
            self._start(self.failed, b"")  # killed before the partial files were made
            return
        self._open_partials()
        data_end = _HEADER_BYTES + self.count * self._row_bytes
        for fh, end, name in ((self._data, data_end, EMBEDDINGS), (self._index, self._index_bytes, INDEX)):
            if os.fstat(fh.fileno()).st_size < end:
                raise ValueError(f"{self._partial(name)}: shorter than {source} says; "
                                 "the folder was damaged, embed again into a new folder")
            fh.truncate(end)
        self._index.seek(0)
        paths = _parse_index(self._index.read(self._index_bytes), self._partial(INDEX), self.count)
        self.done = set(paths) | {f["path"] for f in self.failed}

    def _partial(self, name):
        return self.folder / (name + PARTIAL)

    def _open_partials(self):
        self._data = open(self._partial(EMBEDDINGS), "r+b")
        self._index = open(self._partial(INDEX), "r+b")

    def _commit(self):
        """Record what the partial files hold; call only after they are fsync'd."""
        self._committed_failed = len(self.failed)
        _write_json(self.folder / PROGRESS, {
            "settings": self.settings, "dimension": self.dim, "dtype": self.dtype.name,
            "rows": self.count, "index_bytes": self._index_bytes, "failed": self.failed})

    # -- writing ---------------------------------------------------------------

    def add(self, paths, rows):
        """Append rows (B, D) for ``paths`` (B of them) and commit them to disk."""
        self._check_open()
        paths = [os.fspath(p) for p in paths]
        rows = np.asarray(rows)
        if rows.shape != (len(paths), self.dim):
            raise ValueError(f"rows must be ({len(paths)}, {self.dim}) for {len(paths)} paths, "
                             f"but got shape {rows.shape}")
        with np.errstate(over="ignore"):  # reported below, naming the path
            stored = np.ascontiguousarray(rows, dtype=self.dtype)
        bad = ~np.isfinite(stored).all(axis=1)
        if bad.any():
            raise ValueError(f"the row for {paths[int(np.argmax(bad))]} is not finite as {self.dtype.name}"
                             + (" (float16 holds at most 65504; normalise the rows or use float32)"
                                if self.dtype == np.float16 and np.isfinite(rows[bad]).all() else ""))
        lines = _index_lines(self.count, paths)
        # Write from the committed ends: bytes a failed call left beyond them are overwritten.
        self._data.seek(_HEADER_BYTES + self.count * self._row_bytes)
        self._data.write(stored.tobytes())
        self._index.seek(self._index_bytes)
        self._index.write(lines)
        for fh in (self._data, self._index):
            fh.flush()
            os.fsync(fh.fileno())
        self.count += len(paths)
        self._index_bytes += len(lines)
        self.done.update(paths)
        self._commit()

    def add_failed(self, path, error):
        """Record an input that could not be embedded (it gets no row).

        The failure reaches the progress record with the next ``add``, at
        ``close`` or ``abandon``, or once the failures not yet recorded are
        as many as those recorded (and at least FAILED_COMMIT): every commit
        rewrites the whole list, so committing each one made n failures cost
        n² (4,000 unreadable files took 40 s), and doubling keeps it linear.
        A kill loses at most the unrecorded ones, which a resumed run tries again.
        """
        self._check_open()
        self.failed.append({"path": os.fspath(path), "error": str(error)})
        self.done.add(os.fspath(path))
        if len(self.failed) - self._committed_failed >= max(FAILED_COMMIT, self._committed_failed):
            self._commit()

    def close(self):
        """Finish the folder: embeddings.npy, index.csv, then embed.json. Returns embed.json's contents."""
        self._check_open()
        self._data.seek(0)
        self._data.write(_npy_header(self.count, self.dim, self.dtype))
        for fh, end in ((self._data, _HEADER_BYTES + self.count * self._row_bytes), (self._index, self._index_bytes)):
            fh.truncate(end)
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        for name in (EMBEDDINGS, INDEX):
            os.replace(self._partial(name), self.folder / name)
        info = {**self.settings, "dimension": self.dim, "dtype": self.dtype.name, "count": self.count,
                "failed": self.failed, "cnn_version": __version__}
        _write_json(self.folder / INFO, info)
        _fsync_dir(self.folder)
        os.unlink(self.folder / PROGRESS)
        self._closed = True
        return info

    def abandon(self):
        """Close the files and leave the run resumable (what a crash would leave)."""
        if not self._closed:
            if len(self.failed) > self._committed_failed:
                with contextlib.suppress(OSError):
                    self._commit()
            for fh in (self._data, self._index):
                with contextlib.suppress(OSError):
                    fh.close()
            self._closed = True

    def _check_open(self):
        if self._closed:
            raise ValueError(f"the writer for {self.folder} is closed")

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abandon()
