"""What ``cnn`` wrote in an output folder, so that ``--force`` replaces only that.

An output folder of ``apply``, ``explain`` or ``units`` holds a record of its
files (``manifest.json``, ``explain.json`` or ``units.json``). ``--force``
replaces a folder only when every file in it is one its record names (or the
record itself, or a page cnn wrote); a file the user put there (``thesis.tex``)
makes the command refuse that folder instead of deleting the file. An HTML
page is cnn's when its head carries ``GENERATOR``.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

#: The tag every page cnn writes carries in its head (``report.document``).
GENERATOR = '<meta name="generator" content="cnn">'

#: A record larger than this is not one cnn wrote (a 5,000-map manifest is about 2 MB).
MAX_RECORD_BYTES = 64 * 2**20

#: The end of apply's message for an input whose folder exists (the CLI gathers these into one line).
EXISTS = " exists; use --skip-existing to keep it or --force to replace it"

#: The page cnn writes into an image's folder, beside the files its record lists, and the
#: copy of the input that the page shows.
PAGE, INPUT_COPY = "index.html", "input.jpg"


#: The text chunk a picture cnn draws for the user to keep (``cnn banks show``) carries after its header.
PNG_MARK = b"tEXtSoftware\x00cnn"


#: The comment of the JPEG copy of an input that cnn apply keeps beside its maps.
JPEG_MARK = b"Software: cnn"


def marked_png(data):
    """PNG bytes ``data`` with ``PNG_MARK`` inserted after the IHDR chunk (which is 33 bytes in)."""
    body = PNG_MARK[4:]
    chunk = struct.pack(">I", len(body)) + PNG_MARK + struct.pack(">I", zlib.crc32(PNG_MARK))
    return data[:33] + chunk + data[33:]


class NotOursError(FileExistsError):
    """A path cnn would write holds a file cnn did not write, which even --force leaves alone."""


def _head(path, size):
    """The first ``size`` bytes of ``path`` when it is a regular file (not a link), else b""."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return b""
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def is_cnn_png(path):
    """True when ``path`` is a regular file that ``marked_png`` made (the mark follows IHDR and its length)."""
    return _head(path, 33 + 4 + len(PNG_MARK))[33 + 4:] == PNG_MARK


def is_cnn_jpeg(path):
    """True when ``path`` is a regular file whose head holds the JPEG comment ``JPEG_MARK``."""
    return b"\xff\xfe" + struct.pack(">H", len(JPEG_MARK) + 2) + JPEG_MARK in _head(path, 64)


def is_cnn_page(path):
    """True when ``path`` is a regular file whose first 600 bytes carry ``GENERATOR``."""
    return GENERATOR.encode() in _head(path, 600)


def _listed(name, doc):
    """The files a record (``name``, parsed ``doc``) says cnn wrote beside it."""
    if name == "manifest.json":  # cnn apply
        files = {"features.npz", (doc.get("keypoints") or {}).get("overlay")}  # keypoint_overlay's picture
        for layer in doc["layers"]:
            files.add(layer["grid"])
            files.update(entry["png"] for entry in layer["maps"])
    elif name == "explain.json":
        files = {target[key] for target in doc["targets"] for key in ("cam", "overlay")}
    else:  # units.json
        files = {"patches.npz"} | {layer["grid"] for layer in doc["layers"]}
    return {f for f in files if isinstance(f, str)}


def _record(folder):
    """(record name, the files it lists), or (None, set()) for a folder without a readable record."""
    for name in ("manifest.json", "explain.json", "units.json"):
        path = folder / name
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            continue
        try:
            return name, _listed(name, json.loads(path.read_bytes()))
        except (ValueError, TypeError, KeyError, AttributeError, OSError, RecursionError):
            continue
    return None, set()


def foreign_files(folder, *, limit=3):
    """Up to ``limit`` paths (relative, sorted) under ``folder`` that cnn did not write.

    A link at ``folder`` is nothing of the user's to lose (replacing it leaves its
    target alone): ``[]``. A file at ``folder`` is the user's: ``[its name]``.
    """
    folder = Path(folder)
    if folder.is_symlink() or not os.path.lexists(folder):
        return []
    if not folder.is_dir():
        return [folder.name]
    record, listed = _record(folder)
    known = listed | ({record} if record else set())
    foreign = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            relative = Path(root, name).relative_to(folder).as_posix()
            if relative in known or (relative == PAGE and record and is_cnn_page(folder / PAGE)) \
                    or (relative == INPUT_COPY and record == "manifest.json" and is_cnn_jpeg(folder / INPUT_COPY)):
                continue
            foreign.append(relative)
            if len(foreign) >= limit:
                return foreign
    return foreign


def refusal(folder, foreign):
    """The one line that refuses to replace ``folder``, which holds ``foreign`` files."""
    folder = Path(folder)
    if foreign == [folder.name] and not folder.is_dir():  # a device or a pipe is never replaced
        shown = f"{folder} is a file" if folder.is_file() else f"{folder} is not a regular file or folder"
    else:
        shown = f"{folder} holds {', '.join(foreign)}"
    return (f"{shown}, which cnn did not write; --force replaces only cnn's own outputs, "
            f"so move {'it' if len(foreign) == 1 else 'them'} away or choose another -o")
