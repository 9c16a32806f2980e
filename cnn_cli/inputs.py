"""Finding input images as a stream, each with the output folder name it gets.

``iter_inputs`` walks files, folders and globs lazily: a folder of a million
images starts at once, and only one directory's listing is held at a time
(its entries are sorted, so the order is stable). Each image comes with a
``name``, the folder it writes under OUT, which mirrors where it was found:

- a file given by itself: its stem (``shots/photo.png`` -> ``photo``);
- a folder: its tree, mirrored (``photos/brick/000.png`` -> ``brick/000``);
  when several inputs are given, each folder goes under its own name
  (``cnn apply photos/*`` -> ``brick/000``, ``stone/000``);
- a glob: its tree below the part before the first wildcard
  (``'photos/*/0*.png'`` -> ``brick/000``).

A hash of the entry's own path is appended only to names that mirroring
cannot separate: ``000.png`` beside ``000.jpg``, a file beside a folder of
its stem, names that differ only in case (one folder on macOS and Windows),
or two inputs with the same top-level name. Hidden entries, directory links
(which can loop), and folders that hold a ``cnn`` output (a ``manifest.json``, ``explain.json``, ``units.json``, ``embed.json``, ``keypoints.json`` or ``match.json``
it wrote) are skipped.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

#: File endings walked in folders and globs; content decides the real format.
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}

#: A manifest that starts with this (within its first bytes) marks a folder cnn wrote.
_OUTPUT_MARK = b'"cnn_version"'


@dataclass(frozen=True)
class Input:
    """An image to read, and its output folder under OUT ('/'-separated)."""

    path: Path
    name: str


@dataclass(frozen=True)
class Problem:
    """An input argument that gave no image, and why."""

    message: str


def safe_name(text, limit=80):
    """A file-name-safe version of ``text``: letters, digits, '.', '_' and '-' only."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "image"
    return cleaned[:limit]


def _tagged(name, key):
    return f"{name}-{hashlib.sha1(key.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


def _hidden(name):
    return name.startswith(".")


#: The JSON file each command writes into its output folders (apply's, explain's and
#: keypoints' per image, match's per pair, units' and embed's per run).
_OUTPUT_FILES = ("manifest.json", "explain.json", "units.json", "embed.json", "keypoints.json", "match.json")


def _is_output_folder(path):
    for name in _OUTPUT_FILES:
        file = os.path.join(path, name)
        if not os.path.isfile(file):  # never open a FIFO or a device named so
            continue
        try:
            with open(file, "rb") as fh:
                if _OUTPUT_MARK in fh.read(2**20):
                    return True
        except OSError:
            continue
    return False


def _is_image_name(name):
    return os.path.splitext(name)[1].lower() in EXTENSIONS


class _Walk:
    """One folder or glob walked lazily, yielding (path, mirrored name).

    ``patterns`` is a list of glob component lists still to match below a
    folder, or None for "every image below".
    """

    def __init__(self, root, patterns, follow_links, excluded):
        self.root = root
        self.patterns = patterns
        self.follow_links = follow_links
        self.excluded = excluded

    def __iter__(self):
        yield from self._dir(self.root, "", self.patterns)

    def _entries(self, folder, patterns):
        """(sorted subfolders, sorted image files) of ``folder`` that the walk may enter or take."""
        dirs, files = [], []
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return dirs, files
        dotted = patterns is not None and any(p[0].startswith(".") for p in patterns)
        for e in entries:
            if _hidden(e.name) and not dotted:
                continue
            try:
                if e.is_dir(follow_symlinks=False) or (self.follow_links and e.is_dir()):
                    if os.path.realpath(e.path) not in self.excluded and not _is_output_folder(e.path):
                        dirs.append(e.name)
                elif _is_image_name(e.name) and (e.is_file(follow_symlinks=False)
                                                 or (e.is_symlink() and (self.follow_links or patterns is not None)
                                                     and e.is_file())):
                    files.append(e.name)
            except OSError:
                continue
        return sorted(dirs), sorted(files)

    def _dir(self, folder, prefix, patterns):
        dirs, files = self._entries(folder, patterns)
        if patterns is None:
            plans = {d: None for d in dirs}
        else:
            files, plans = _match(dirs, files, patterns)
        # Names that mirroring cannot separate get a hash of the entry's name.
        stems = {f: safe_name(os.path.splitext(f)[0]) for f in files}
        folders = {d: safe_name(d) for d in plans}
        file_count = Counter(s.lower() for s in stems.values())
        dir_count = Counter(s.lower() for s in folders.values())
        for f in files:
            stem = stems[f]
            if file_count[stem.lower()] > 1 or dir_count[stem.lower()]:
                stem = _tagged(stem, prefix + f)
            yield Path(folder) / f, prefix + stem
        for d, sub in plans.items():
            name = folders[d]
            if dir_count[name.lower()] > 1:
                name = _tagged(name, prefix + d)
            yield from self._dir(os.path.join(folder, d), f"{prefix}{name}/", sub)


def _match(dirs, files, patterns):
    """One directory level of glob matching: (files taken, {subfolder: patterns below it})."""
    taken, plans = set(), {}
    for parts in patterns:
        head, rest = parts[0], parts[1:]
        if head == "**":  # this level, and every level below
            if rest:
                more, sub = _match(dirs, files, [rest])
                taken.update(more)
                for d, below in sub.items():
                    plans.setdefault(d, []).extend(b for b in below if b not in plans[d])
            for d in dirs:
                if parts not in plans.setdefault(d, []):
                    plans[d].append(parts)
        elif rest:
            for d in dirs:
                if fnmatch.fnmatchcase(d, head) and rest not in plans.setdefault(d, []):
                    plans[d].append(rest)
        else:
            taken.update(f for f in files if fnmatch.fnmatchcase(f, head))
    return sorted(taken), {d: p for d, p in plans.items() if p}


def _split_glob(pattern):
    """(the folder before the first wildcard, the components from there on)."""
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if glob.has_magic(part):
            root = Path(*parts[:i]) if i else Path(".")
            return root, [list(parts[i:])]
    return Path(pattern), []


def _missing(item):
    """Why an argument that is neither a file, a folder nor a pattern gives no image."""
    from .fileio import NotRegularFileError, special_kind

    try:
        what = special_kind(os.stat(item).st_mode)
    except OSError:
        what = None
    return NotRegularFileError(item, what, reading=True).strerror if what else f"{item}: no such file or folder"


def iter_inputs(inputs, *, exclude=(), follow_links=False):
    """Yield an ``Input`` per image found and a ``Problem`` per argument that matched nothing.

    Images come in a stable order; the same file reached twice (through two
    arguments) comes once. ``exclude`` lists folders never entered (the
    output folder, so a rerun does not read its own maps).
    """
    inputs = [str(i) for i in inputs]
    excluded = {os.path.realpath(e) for e in exclude}
    several = len(inputs) > 1
    claimed = Counter()  # top-level output names taken by earlier arguments
    seen = set()         # hashes of the real paths given out, where one file can come twice

    def top_level(name, key, renamed):
        head, sep, tail = name.partition("/")
        if head not in renamed:
            renamed[head] = _tagged(head, key) if claimed[head.lower()] else head
        return renamed[head] + sep + tail

    for item in inputs:
        path = Path(item)
        renamed = {}
        if path.is_dir():
            walk = _Walk(path, None, follow_links, excluded)
            prefix = safe_name(path.resolve().name) + "/" if several else ""
            stream = ((p, prefix + n) for p, n in walk)
            empty = f"{item}: folder holds no images ({', '.join(sorted(EXTENSIONS))})"
        elif path.is_file():
            stream = iter([(path, safe_name(path.stem))])
            empty = None
        elif glob.has_magic(item):
            root, parts = _split_glob(item)
            stream = iter(_Walk(root, parts, follow_links, excluded)) if root.is_dir() else iter(())
            empty = f"{item}: the pattern matches no files"
        else:
            yield Problem(_missing(item))
            continue
        count = 0
        for p, name in stream:
            if several or follow_links:
                key = hashlib.blake2b(os.path.realpath(p).encode("utf-8", "surrogateescape"),
                                      digest_size=8).digest()
                if key in seen:
                    continue
                seen.add(key)
            if several:
                name = top_level(name, f"{item}/{name}", renamed)
            count += 1
            yield Input(p, name)
        for head in renamed.values():
            claimed[head.lower()] += 1
        if not count and empty:
            yield Problem(empty)


def find_inputs(inputs, **kwargs):
    """``iter_inputs`` as two lists: (inputs, problem messages)."""
    found, problems = [], []
    for item in iter_inputs(inputs, **kwargs):
        (found if isinstance(item, Input) else problems).append(item if isinstance(item, Input) else item.message)
    return found, problems
