"""Files that are written whole or not at all, and npz files read without trust.

Every output goes to a temporary name in the destination folder and is moved
into place with ``os.replace``, so a crash, a full disk or Ctrl-C never leaves
a half-written file at a final path.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import tokenize
import zipfile
from pathlib import Path

import numpy as np

#: Refuse npz members that declare more than this many bytes (2 GiB), and
#: files whose members declare more than MAX_TOTAL_BYTES together.
MAX_ARRAY_BYTES = 2 * 2**30
MAX_TOTAL_BYTES = 4 * 2**30

#: A compressed member may expand at most this much: float weights barely
#: compress, while a zip bomb expands a thousandfold.
MAX_COMPRESSION_RATIO = 50


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Temporary files and folders are created private (0600 / 0700); finished
#: outputs get the usual modes for this process's umask before they appear.
FILE_MODE = 0o666 & ~_current_umask()
DIR_MODE = 0o777 & ~_current_umask()


class NpzError(ValueError):
    """An npz file is missing, damaged, or holds something we will not load."""


@contextlib.contextmanager
def atomic_path(final, suffix=""):
    """Yield a temporary path next to ``final``; move it onto ``final`` on success.

    On any exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix}", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(final, data):
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def save_npz_atomic(final, arrays):
    """``np.savez`` to ``final`` atomically (uncompressed: fast to write and to memory-map)."""
    with atomic_path(final, ".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def replace_dir(staging, final, *, force):
    """Move a finished ``staging`` folder to ``final``.

    Without ``force`` an existing ``final`` is an error (FileExistsError). With
    it, the old folder is first renamed aside, so at every moment ``final`` is
    either the old complete output or the new one.
    """
    final = Path(final)
    os.chmod(staging, DIR_MODE)
    if not os.path.lexists(final):  # lexists: a dangling link is there too
        os.replace(staging, final)
        return
    if not force:
        raise FileExistsError(final)
    if final.is_symlink():
        final.unlink()
        os.replace(staging, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
    os.replace(final, old / "x")
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(old / "x", final)  # put the old output back
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)


def load_npz_arrays(path, keys=None):
    """Arrays from an npz file, never unpickling and never trusting declared sizes.

    Each member's header (shape, dtype) is read first and checked against the
    bytes actually stored, so a tiny member that declares 40 GB is refused
    before anything is allocated. ``keys`` limits what is loaded and must all
    be present.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise NpzError(f"{path}: no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError, RuntimeError) as exc:
        raise NpzError(f"{path}: not a readable npz (zip) file: {exc}") from None
    with archive:
        members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
        wanted = list(members) if keys is None else list(keys)
        missing = [k for k in wanted if k not in members]
        if missing:
            raise NpzError(f"{path}: missing array(s) {missing}")
        if sum(members[k].file_size for k in wanted) > MAX_TOTAL_BYTES:
            raise NpzError(f"{path}: its arrays hold more than {MAX_TOTAL_BYTES} bytes in all")
        return {key: _read_member(archive, members[key], path) for key in wanted}


def _read_member(archive, info, path):
    label = f"{path}: array '{info.filename[:-4]}'"
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise NpzError(f"{label}: expands {info.file_size // max(info.compress_size, 1)}-fold when "
                       "decompressed, which only a zip bomb does")
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise NpzError(f"{label}: unsupported npy version {version}")
            if dtype.hasobject:
                raise NpzError(f"{label}: holds Python objects, which we never load")
            declared = math.prod(int(d) for d in shape) * dtype.itemsize  # Python ints never wrap
            if declared > MAX_ARRAY_BYTES:
                raise NpzError(f"{label}: declares {declared} bytes, over the {MAX_ARRAY_BYTES}-byte limit")
            if declared > info.file_size:
                raise NpzError(f"{label}: declares {declared} bytes but only {info.file_size} are stored")
            data = fh.read(declared)
    except NpzError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError, tokenize.TokenError,
            NotImplementedError, RuntimeError) as exc:
        # numpy parses the header as a Python literal; zipfile refuses features it lacks.
        raise NpzError(f"{label}: damaged: {exc}") from None
    if len(data) != declared:
        raise NpzError(f"{label}: truncated ({len(data)} of {declared} bytes)")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape, order="F" if fortran else "C").copy()
