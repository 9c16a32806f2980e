"""``cnn import``: a network from another tool written as an ordinary cnn model file."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .meta import ModelError
from .modelfile import save_model
from .onnximport import ImportOptions, import_onnx

#: The file kinds ``cnn import`` reads, by suffix.
READERS = (".onnx",)


@dataclass
class ImportSummary:
    output: str
    source: str
    sha256: str
    opset: int
    nodes: int            # ONNX nodes the output depends on
    layers: int           # our layers they became
    params: int
    input: list           # (C, H, W)
    classes: int
    assumed: list = field(default_factory=list)

    def to_json(self):
        return asdict(self)


class ImportFailed(ValueError):
    """The file cannot be imported or the output cannot be written; the message says why."""


def run(source, out, options=None, *, force=False):
    """Import ``source`` and write it to ``out`` (refused if it exists, unless ``force``).

    Everything is read and checked before ``out`` is touched, and the model
    file is written atomically. Returns an ``ImportSummary``; raises a
    ValueError (OnnxError, ImportRefused, ModelError, ImportFailed) for the user.
    """
    source, out = Path(source), Path(out)
    if source.suffix.lower() not in READERS:
        raise ImportFailed(f"{source}: cnn import reads {', '.join(READERS)} files, not '{source.suffix}'")
    if os.path.lexists(out) and not force:
        raise ImportFailed(f"{out} exists; use --force to replace it")
    if out.suffix != ".npz":
        raise ImportFailed(f"{out}: a model file ends in .npz")
    imported = import_onnx(source, options or ImportOptions())
    try:
        save_model(out, imported.network, imported.meta)
    except OSError as exc:
        raise ModelError(f"cannot write {out}: {exc.strerror or exc}") from None
    net, meta = imported.network, imported.meta
    return ImportSummary(str(out), str(source), meta.source["sha256"], meta.source["opset"], imported.nodes,
                         len(net.layers), net.num_params, list(net.input_shape), len(meta.classes),
                         list(imported.assumed))
