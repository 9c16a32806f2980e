"""Reading bank, pipeline and architecture files, and the one error they raise.

All three are TOML. A file is given by its path, or by the name of a shipped
one (``edges`` is ``filters/edges.toml``). ``kind = "bank"``, ``"pipeline"``
or ``"architecture"`` says what a file is; without it the content does:
``[[kernel]]`` entries or a ``[weights]`` table make a bank, and ``[[layer]]``
tables a pipeline, or an architecture if one of them is a layer type that
only networks have (``registry.network_only``).

This module reads the text, the kinds, the names and the npz weights a bank
may point to; ``filterbank.parse_bank`` makes kernels of a bank's document
and ``pipeline.build_layers`` layers of ``[[layer]]`` tables. Every problem
is a ``SpecFileError`` whose message names the file and, where they apply,
the line and column, the kernel or layer, and what to change.
"""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

#: The largest bank, pipeline or architecture file read. Python's TOML reader
#: takes about a second per MiB of numbers (20 kernels of 255x255 values, 12
#: MiB, took 14 s), so larger weights belong in an npz (``[weights]``).
MAX_SPEC_BYTES = 16 * 2**20

#: The largest ``[weights]`` array a bank may point to (4096 kernels of 3 x
#: 63 x 63 float32 fit with room to spare).
MAX_WEIGHTS_BYTES = 256 * 2**20


class SpecFileError(ValueError):
    """A bank, pipeline or architecture file is wrong; the message says where and what to fix."""


def builtin_dir():
    """The folder of shipped bank, pipeline and architecture files.

    Installed, it is the ``cnn_cli.filters`` package data; in a source checkout
    (tests run from the repository root) it is ``filters/`` beside ``cnn_cli/``.
    """
    try:
        return Path(str(resources.files("cnn_cli.filters")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "filters"


def read_toml(path):
    """The parsed document of a TOML file; errors name the file, and the line and column of a syntax error.

    Only a regular file of at most MAX_SPEC_BYTES is read.
    """
    from .fileio import open_regular

    try:
        with open_regular(path, MAX_SPEC_BYTES, what="a bank, pipeline or architecture file") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpecFileError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise SpecFileError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except RecursionError:
        raise SpecFileError(f"{path}: arrays or tables nested too deeply to read") from None
    except ValueError as exc:  # larger than MAX_SPEC_BYTES
        raise SpecFileError(str(exc)) from None
    except OSError as exc:  # open_regular's messages name the file
        raise SpecFileError(exc.strerror or f"{path}: cannot read: {exc}") from None


def kind_of(doc, default="bank"):
    """"bank", "pipeline" or "architecture": the ``kind`` key, else guessed from
    the content; ``default`` when there is nothing to go by."""
    if "kind" in doc:
        return doc["kind"]
    if "kernel" in doc or "weights" in doc:
        return "bank"
    if "layer" not in doc:
        return default
    # Imported here: the registry imports every layer and so the engine (Numba), which
    # reading a bank does not need.
    from . import registry

    layers = doc.get("layer") if isinstance(doc.get("layer"), list) else []
    learned = any(isinstance(t, dict) and registry.network_only(t) for t in layers)
    return "architecture" if learned else "pipeline"


def builtin_names(kind):
    """Names of the shipped files of ``kind``, sorted."""
    return [p.stem for p in sorted(builtin_dir().glob("*.toml")) if kind_of(read_toml(p)) == kind]


def resolve_file(spec, kind):
    """A path for ``spec``: a file of that kind, or the name of a shipped one."""
    return read_spec(spec, kind)[0]


def read_spec(spec, kind):
    """(path, document) of the file of ``kind`` that ``spec`` names (see ``resolve_file``)."""
    path = Path(spec)
    if (path.suffix and path.is_file()) or _special(path):  # read_toml refuses a device, pipe or socket
        doc = read_toml(path)
        found = kind_of(doc, default=kind)
        if found != kind:
            raise SpecFileError(f"{path}: is a file of kind '{found}', but a {kind} is needed here")
        return path, doc
    shipped = builtin_dir() / f"{spec}.toml"
    if shipped.is_file() and kind_of(doc := read_toml(shipped)) == kind:
        return shipped, doc
    choices = ", ".join(builtin_names(kind))
    raise SpecFileError(f"no {kind} named '{spec}': give a file path or one of: {choices}")


def _special(path):
    """Whether ``path`` exists but is neither a regular file nor a folder (a FIFO, a device)."""
    try:
        return os.path.exists(path) and not (path.is_file() or path.is_dir())
    except (OSError, ValueError):
        return False


def read_weights(table, path):
    """The array a ``[weights]`` table of the file ``path`` points to: ``key`` in the npz ``file``,
    which is relative to ``path``."""
    where = str(path)
    if not isinstance(table, dict) or not isinstance(table.get("file"), str) or not isinstance(table.get("key"), str):
        raise SpecFileError(f"{where}: [weights] needs file = \"...npz\" and key = \"...\"")
    from .fileio import NpzError, load_npz_arrays

    npz_path = (Path(path).parent / table["file"]).resolve()
    try:
        arrays = load_npz_arrays(npz_path, keys=[table["key"]], max_bytes=MAX_WEIGHTS_BYTES)
    except NpzError as exc:
        raise SpecFileError(f"{where}: [weights]: {exc}") from None
    return arrays[table["key"]]
