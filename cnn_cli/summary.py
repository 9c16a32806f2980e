"""What ``cnn info`` and ``cnn banks`` show, as rows of text: layers of a model,
architecture or pipeline, and the shipped banks, pipelines and architectures."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .choices import CHANNEL_NAMES

#: The width of an architecture's last layer is its class count, which comes
#: from a dataset; an architecture file alone has none. Its summary shows the
#: shapes for this many classes, and its title says so.
ASSUMED_CLASSES = 10

#: ``cnn info`` names this many classes at most (an ImageNet model has 1,000).
MAX_CLASSES_SHOWN = 20


@dataclass
class LayerRow:
    index: int
    layer: str                 # the layer's one-line description
    shape: tuple               # output shape (C, H, W), or (features,) after flatten
    params: int
    receptive_field: str       # "RxR" input pixels, or "global"


@dataclass
class Summary:
    title: str
    rows: list                 # LayerRow, one per layer
    notes: list = field(default_factory=list)  # lines to show below the table


def _row(index, layer, shape, rf, name=None, inputs=None):
    """A row; in a graph, the layer is shown with its node name and the nodes it reads."""
    text = layer.describe()
    if name is not None:
        text = f"{name}: {text}" + (f" <- {', '.join(inputs)}" if inputs else "")
    return LayerRow(index, text, tuple(shape), layer.num_params, rf if rf == "global" else f"{rf}x{rf}")


def network_rows(network):
    """One ``LayerRow`` per layer of a ``Network``."""
    from .pipeline import receptive_fields

    fields = receptive_fields(network.layers, network.inputs)
    if network.inputs == [(i - 1,) for i in range(len(network.layers))] and \
            network.names == [str(i) for i in range(len(network.layers))]:
        return [_row(i, layer, shape, rf) for i, (layer, shape, rf)
                in enumerate(zip(network.layers, network.shapes, fields))]
    names = ["input" if j < 0 else network.names[j] for j in range(-1, len(network.layers))]
    return [_row(i, layer, shape, rf, network.names[i], [names[j + 1] for j in ins] if ins != (i - 1,) else [])
            for i, (layer, shape, rf, ins) in enumerate(zip(network.layers, network.shapes, fields, network.inputs))]


def model_summary(path):
    """The layers of a model file, its classes, preprocessing and validation accuracy."""
    from .modelfile import load_model

    network, meta, _ = load_model(path)
    pre = meta.preprocessing
    shown = meta.classes[:MAX_CLASSES_SHOWN]
    more = f", ... ({len(meta.classes) - len(shown)} more)" if len(meta.classes) > len(shown) else ""
    notes = [f"classes ({len(meta.classes)}): {', '.join(shown)}{more}",
             f"input: {pre.color} {pre.image_size}x{pre.image_size}, mean {pre.mean}, std {pre.std}"]
    if meta.source is not None:
        src = meta.source
        how = "fine-tuned" if src.get("fine_tuned") else "imported"
        notes.append(f"{how} from {src.get('format')} file {src.get('file')} (SHA-256 {src.get('sha256')})")
        notes += [note if src.get("fine_tuned") else f"assumed: {note}" for note in src.get("assumed", [])]
    if meta.training is not None and meta.training.result is not None:
        acc = meta.training.result.final_val_accuracy
        notes.append(f"validation accuracy: {acc:.4f}" if isinstance(acc, float) else f"validation accuracy: {acc}")
    return Summary(f"{path}: {meta.architecture.name}", network_rows(network), notes)


def architecture_summary(spec, color, size):
    """The layers of an architecture for ``color`` input of size x size and ``ASSUMED_CLASSES`` classes."""
    from .nn import Network
    from .pipeline import build_layers, check_memory, load_architecture, plan_layers

    name, _, tables = load_architecture(spec)
    layers = build_layers(tables, name, substitutions={"classes": ASSUMED_CLASSES})
    shape = (len(CHANNEL_NAMES[color]), size, size)
    check_memory(plan_layers(layers, shape), f"{spec} at {size}x{size}")  # before any weight is made
    network = Network(layers, shape)
    return Summary(f"{spec} ({ASSUMED_CLASSES} classes assumed)", network_rows(network))


def pipeline_summary(spec, color, size):
    """The layers of a pipeline for ``color`` input of size x size."""
    from .pipeline import load_pipeline

    pipe = load_pipeline(spec).bind(list(CHANNEL_NAMES[color]))
    rows = [_row(r.index, r.layer, r.shape, r.receptive_field) for r in pipe.summary(size, size)]
    return Summary(f"{pipe.name}: {pipe.description}", rows)


def summarize(target, *, color="gray", size=512):
    """The summary of a model file (``.npz``), or else an architecture or pipeline (name or file).

    ``color`` and ``size`` give the input of an architecture or pipeline; a
    model records its own. Raises ``ModelError`` or ``BankError`` (both
    ``ValueError``) for a target that cannot be read.
    """
    if target.endswith((".npz", ".onnx")):
        return model_summary(Path(target))
    if _is_image(target):
        raise ValueError(f"{target} is an image; cnn info takes a model (.npz or .onnx), a pipeline or an "
                         "architecture (a name or a .toml file). To see an image's maps: cnn apply IMAGE")
    if _is_architecture(target):
        return architecture_summary(target, color, size)
    return pipeline_summary(target, color, size)


#: The first bytes of the image formats cnn reads.
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"P5", b"P6")


def _is_image(target):
    """Whether ``target`` is a file that starts as an image does."""
    try:
        with open(target, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head.startswith(_IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _is_architecture(target):
    from .filterbank import BankError, resolve_file

    try:
        resolve_file(target, "architecture")
        return True
    except BankError:
        return False


def catalog():
    """The shipped banks, pipelines and architectures, as (title, header, rows) tables of text."""
    from .filterbank import builtin_names, load_bank
    from .pipeline import load_architecture, load_pipeline

    banks = []
    for name in builtin_names("bank"):
        bank = load_bank(name)
        sizes = sorted({k.size for k in bank.kernels})
        banks.append((name, str(len(bank.kernels)), ", ".join(f"{h}x{w}" for h, w in sizes), bank.description))
    pipes = []
    for name in builtin_names("pipeline"):
        pipe = load_pipeline(name)
        pipes.append((name, str(len(pipe.layers)), pipe.description))
    archs = []
    for name in builtin_names("architecture"):
        _, description, tables = load_architecture(name)
        archs.append((name, str(len(tables)), description))
    return [("Filter banks", ("bank", "kernels", "size", "description"), banks),
            ("Pipelines", ("pipeline", "layers", "description"), pipes),
            ("Architectures (cnn train --arch)", ("architecture", "layers", "description"), archs)]


@dataclass
class Profile:
    """Where one forward pass of a model spends its time (``cnn info MODEL --profile``)."""

    title: str
    nodes: list                # profiling.NodeTime, a step each, in run order
    kinds: list                # profiling.KindTime, slowest first
    total_ms: float
    multiply_adds: int


def profile_model(path, *, batch=1, repeat=3):
    """Time each step of a model's forward pass on ``batch`` random images at its own size.

    A first pass compiles or loads the kernels and is not counted; each step
    (a node, or a conv and the node fused into it) then gets its median over
    ``repeat`` passes.
    """
    import numpy as np

    from .modelfile import load_model
    from .profiling import by_kind, multiply_adds, profile

    network, meta, _ = load_model(path)
    pre = meta.preprocessing
    x = np.random.default_rng(0).standard_normal((batch, pre.channels, pre.image_size, pre.image_size))
    x = x.astype(np.float32)
    profile(network, x[:1])
    nodes = profile(network, x, repeat)
    total = sum(node.ms for node in nodes)
    return Profile(f"{path}: one forward pass of {batch} image(s) of {pre.image_size}x{pre.image_size}, "
                   f"median of {repeat}", nodes, by_kind(nodes), total, multiply_adds(network, batch))
