"""``cnn import``: a network from another tool written as an ordinary cnn model file."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .fileio import check_writable
from .meta import ModelError
from .modelfile import save_model
from .onnximport import ImportOptions, import_onnx
from .safetensorsimport import ARCHITECTURES, import_safetensors

#: The file kinds ``cnn import`` reads, by suffix.
READERS = (".onnx", ".safetensors")


@dataclass
class ImportSummary:
    output: str
    source: str
    format: str           # "onnx" or "safetensors"
    sha256: str
    opset: int | None     # ONNX files only
    nodes: int | None     # ONNX nodes the output depends on (ONNX files only)
    tensors: int | None   # tensors read (safetensors files only)
    architecture: str     # the file's name (ONNX), or the --arch the weights were read for
    layers: int           # our layers they became
    params: int
    input: list           # (C, H, W)
    classes: int
    assumed: list = field(default_factory=list)

    def to_json(self):
        return asdict(self)


class ImportFailed(ValueError):
    """The file cannot be imported or the output cannot be written; the message says why."""


class ImportUsageError(ImportFailed):
    """The options do not fit together or the file kinds (a usage error: exit 2)."""


def run(source, out, options=None, *, force=False, arch=None):
    """Import ``source`` and write it to ``out`` (refused if it exists, unless ``force``).

    An ONNX file (``.onnx``) carries its graph; a ``.safetensors`` file holds
    weights alone, for the architecture ``arch`` (one of ``ARCHITECTURES``).
    Everything is read and checked before ``out`` is touched, and the model
    file is written atomically. Returns an ``ImportSummary``; raises a
    ValueError (OnnxError, TensorFileError, ImportRefused, ModelError,
    ImportFailed) for the user.
    """
    source, out = Path(source), Path(out)
    suffix = source.suffix.lower()
    if suffix not in READERS:
        raise ImportUsageError(f"{source}: cnn import reads {', '.join(READERS)} files, not '{source.suffix}'")
    if suffix == ".safetensors" and arch is None:
        raise ImportUsageError(f"{source}: a safetensors file holds weights without their network; say whose they "
                           f"are with --arch ({', '.join(ARCHITECTURES)})")
    if suffix == ".onnx" and arch is not None:
        raise ImportUsageError(f"{source}: an ONNX file carries its own network, so --arch is for safetensors "
                           "files only; leave it out")
    if os.path.lexists(out) and not force:
        raise ImportFailed(f"{out} exists; use --force to replace it")
    if out.suffix != ".npz":
        raise ImportUsageError(f"{out}: a model file ends in .npz")
    try:
        check_writable(out)  # before a network of millions of weights is read and built
    except OSError as exc:
        raise ImportFailed(f"cannot write {out}: {exc.strerror or exc}") from None
    options = options or ImportOptions()
    imported = import_onnx(source, options) if arch is None else import_safetensors(source, arch, options)
    try:
        save_model(out, imported.network, imported.meta)
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc.strerror or exc}") from None
    net, meta = imported.network, imported.meta
    onnx = meta.source["format"] == "onnx"
    return ImportSummary(str(out), str(source), meta.source["format"], meta.source["sha256"],
                         meta.source["opset"] if onnx else None, imported.nodes if onnx else None,
                         None if onnx else meta.source["tensors"], meta.architecture.name,
                         len(net.layers), net.num_params, list(net.input_shape), len(meta.classes),
                         list(imported.assumed))
