"""ONNX networks as ordinary cnn models: the op table half of ``cnn import``.

``onnxfile.read_onnx`` reads and folds the file; here each remaining node
becomes one of our layers through the ``from_onnx`` of the layer type that
lists its op type (``registry.onnx_importers``), so an op's import sits
beside its layer and its export. The result is an architecture in the graph
form (``[[layer]]`` tables with ``name`` and ``inputs``), weights under
state-dict names (``<node>.weight``: the initializer's own prefix where it
has one, as torch writes them), and the preprocessing, so every command that
takes ``--model`` runs it like a model ``cnn train`` wrote.

Everything a file holds that we cannot run is refused before any image is
read, every node named in one message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import registry
from .layers import LayerError
from .meta import ModelError, ModelMeta
from .nn import Network
from .onnxfile import OnnxError, read_onnx
from .pipeline import build_layers

#: The common ImageNet normalisation, assumed for a 3-channel input when nothing says otherwise.
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

#: How many refused nodes one message lists before it counts the rest.
MAX_LISTED = 12


class ImportRefused(ValueError):
    """The file holds nodes cnn cannot run, or options that do not fit it; the message names them."""


@dataclass
class ImportOptions:
    """``cnn import``'s options; None means "from the file, else the default"."""

    size: tuple = None          # (H, W)
    color: str = None           # "rgb", "bgr" or "gray"
    mean: list = None
    std: list = None
    scale: float = None         # 1 or 255: the pixel range the network expects
    classes: list = None
    output: str = None          # the graph output to use; the first by default


@dataclass
class Imported:
    network: Network
    meta: ModelMeta
    assumed: list = field(default_factory=list)   # what was assumed, one sentence each
    nodes: int = 0
    #: Our node name -> the ONNX tensor it computes (to check each node against ONNX Runtime).
    tensors: dict = field(default_factory=dict)


class _Context:
    """What a layer type's ``from_onnx`` may ask about the graph."""

    def __init__(self, graph, readers):
        self.graph, self.opset, self._readers = graph, graph.opset, readers

    def const(self, name):
        return self.graph.constants.get(name) if name else None

    def shape(self, name):
        shape = self.graph.shapes.get(name)
        return None if shape is None else tuple(shape)

    def dynamic(self, node):
        return [n for n in node.inputs if n and n not in self.graph.constants]

    def used(self, name):
        return bool(name) and self._readers.get(name, 0) > 0

    def used_beyond_first(self, node):
        return any(self.used(name) for name in node.outputs[1:])


def _ancestors(graph, output):
    """The nodes ``output`` depends on, in the graph's (topological) order."""
    producer = {o: node for node in graph.nodes for o in node.outputs if o}
    needed, stack = set(), [output]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(n for n in node.inputs if n)
    return [node for node in graph.nodes if id(node) in needed]


def _node_name(node, arrays, used):
    """A state-dict-friendly name: the weights' own prefix (``layer1.0.conv1``) where the file
    names them so; else the module path torch's exporter writes into the node's name
    (``/layer1/layer1.0/conv1/Conv`` is ``layer1.0.conv1``); else the node's name, ``/`` as ``.``."""
    name = ""
    weight = node.inputs[1] if len(node.inputs) > 1 else ""
    if arrays and weight.endswith(".weight") and not weight.startswith("onnx::"):
        name = weight[: -len(".weight")]
    if not name:
        parts = [p for p in node.name.strip("/").split("/") if p]
        if len(parts) > 1 and parts[-1].split("_")[0] == node.op:
            parts.pop()  # the op's own name closes the path
        path = []
        for part in parts:  # "layer2", "layer2.0", "downsample", "downsample.0": each extends the one before
            if path and part.startswith(path[-1] + "."):
                path[-1] = part
            else:
                path.append(part)
        name = ".".join(path)
        name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", name).strip("._") or node.op.lower()
    base, i = name, 1
    while name in used or name == "input":
        i += 1
        name = f"{base}_{i}"
    used.add(name)
    return name


def _refusal(path, unsupported, refused):
    parts = [f"node '{n.name}' ({n.op})" for n in unsupported[:MAX_LISTED]]
    parts += [f"node '{n.name}' ({n.op}): {why}" for n, why in refused[:MAX_LISTED]]
    more = len(unsupported) + len(refused) - len(parts)
    text = f"{path}: " + "; ".join(parts) + (f"; and {more} more" if more > 0 else "")
    if unsupported:
        text += f" — not supported; cnn runs: {', '.join(sorted(registry.onnx_importers()))}"
    return ImportRefused(text)


def _tables(graph, output, path):
    """(graph-form tables, weights by state-dict name, node count, {our name: ONNX tensor}) for the
    nodes ``output`` needs."""
    importers = registry.onnx_importers()
    nodes = _ancestors(graph, output)
    readers = {}
    for node in nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    ctx = _Context(graph, readers)
    tensors = {graph.input_name: "input"}
    tables, weights, used, unsupported, refused = [], {}, set(), [], []
    for node in nodes:
        owner = importers.get(node.op)
        if owner is None:
            unsupported.append(node)
            continue
        try:
            made = owner.from_onnx(node, ctx)
        except (LayerError, KeyError, TypeError, ValueError) as exc:
            refused.append((node, str(exc)))
            continue
        missing = [t for t in made.inputs if t not in tensors]
        if missing:  # it reads a node that was refused: that node is named already
            continue
        if made.table is None:
            tensors[node.outputs[0]] = tensors[made.inputs[0]]
            continue
        name = _node_name(node, made.arrays, used)
        tables.append({**made.table, "name": name, "inputs": [tensors[t] for t in made.inputs]})
        weights.update({f"{name}.{k}": np.asarray(v) for k, v in made.arrays.items()})
        tensors[node.outputs[0]] = name
    if unsupported or refused:
        raise _refusal(path, unsupported, refused)
    if output not in tensors or tensors[output] == "input":
        raise ImportRefused(f"{path}: the output '{output}' is not computed from the image input")
    return tables, weights, len(nodes), {name: t for t, name in tensors.items() if name != "input"}


def preprocessing_of(graph, options, assumed):
    """The model's preprocessing: options, else what ``cnn export`` recorded, else the defaults."""
    _, channels, h, w = graph.input_shape
    if h != w:
        raise ImportRefused(f"{graph.path}: the input is {h}x{w}; cnn models take square images, "
                            "so give a square --size")
    recorded = _recorded(graph, "preprocessing", dict)
    if recorded is not None and not any(v is not None for v in (options.mean, options.std, options.scale)):
        # cnn export puts (x - mean) / std inside the graph: the image goes in as [0, 1] pixels.
        color = options.color or recorded.get("color", "rgb" if channels == 3 else "gray")
        return {"image_size": int(h), "color": color, "channels": channels,
                "mean": [0.0] * channels, "std": [1.0] * channels, "scale": "normalised inside the graph"}
    color = options.color or ("rgb" if channels == 3 else "gray")
    if (color in ("rgb", "bgr")) != (channels == 3) or channels not in (1, 3):
        raise ImportRefused(f"{graph.path}: the input has {channels} channels, which --color {color} does not give")
    mean, std = options.mean, options.std
    if color == "bgr":  # given in the network's B, G, R order; the model takes R, G, B (see _rgb_first)
        mean, std = (None if v is None else list(v)[::-1] for v in (mean, std))
        color = "rgb"
    if channels == 3 and mean is None and std is None and options.scale is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        assumed.append(f"ImageNet normalisation (mean {mean}, std {std}) of RGB pixels in [0, 1]")
    mean = [0.0] * channels if mean is None else list(mean)
    std = [1.0] * channels if std is None else list(std)
    scale = 1.0 if options.scale is None else float(options.scale)
    if len(mean) == 1 and channels == 3:
        mean = mean * 3
    if len(std) == 1 and channels == 3:
        std = std * 3
    # (x * scale - mean) / std is (x - mean / scale) / (std / scale) for pixels x in [0, 1].
    return {"image_size": int(h), "color": color, "channels": channels,
            "mean": [m / scale for m in mean], "std": [s / scale for s in std],
            "scale": f"pixels in [0, {scale:g}]"}


def _rgb_first(tables, weights, path):
    """A network that takes B, G, R made to take R, G, B: the input channels of every layer
    that reads the image are reversed (a convolution's weights, a per-channel affine map), so
    images are read as for any RGB model and nothing is swapped at run time."""
    for table in tables:
        if "input" not in table["inputs"]:
            continue
        name, kind = table["name"], table["type"]
        if kind == "conv" and table.get("groups", 1) == 1:
            weights[f"{name}.weight"] = np.ascontiguousarray(weights[f"{name}.weight"][:, ::-1])
        elif kind == "affine" and table["shape"][0] == 3 and len(table["shape"]) == 3:
            for param in ("weight", "bias"):
                weights[f"{name}.{param}"] = np.ascontiguousarray(weights[f"{name}.{param}"][::-1])
        else:
            raise ImportRefused(f"{path}: --color bgr reverses the channels where the image goes in, but node "
                                f"'{name}' ({kind}) reads it; cnn can do that for convolutions and "
                                "per-channel scales only")


def _recorded(graph, key, kind):
    """A JSON value that ``cnn export`` wrote into ``metadata_props``, or None."""
    try:
        value = json.loads(graph.metadata[key])
    except (KeyError, ValueError):
        return None
    return value if isinstance(value, kind) else None


def class_names(graph, options, out_shape):
    if options.classes is not None:
        classes = list(options.classes)
    else:
        classes = _recorded(graph, "classes", list) or [f"class{i}" for i in range(out_shape[0])]
    if len(classes) != out_shape[0]:
        raise ImportRefused(f"{graph.path}: {len(classes)} class names for {out_shape[0]} outputs")
    return [str(c) for c in classes]


def import_onnx(path, options=None):
    """An ``Imported`` (network, metadata, what was assumed) from the ONNX file ``path``.

    Raises ImportRefused or OnnxError (both ValueErrors) with a message for the user.
    """
    options = options or ImportOptions()
    graph = read_onnx(path, size=options.size)
    output = graph.resolve(options.output or graph.outputs[0])
    if options.output and options.output not in graph.outputs:
        raise ImportRefused(f"{path}: no output '{options.output}'; the outputs are {graph.outputs}")
    tables, weights, count, made = _tables(graph, output, path)
    assumed = []
    if len(tables) > 1 and tables[-1]["type"] == "softmax" and tables[-1]["inputs"] == [tables[-2]["name"]]:
        # A classifier's final softmax: cnn predict applies it, and explanations need the logits.
        tables.pop()
        assumed.append("the final Softmax is left to cnn predict, which applies it to the logits")
    pre = preprocessing_of(graph, options, assumed)
    if options.color == "bgr":
        _rgb_first(tables, weights, path)
        assumed.append("the network takes B, G, R: its first layers' input channels were reversed, so it "
                       "takes R, G, B as every cnn model does")
    try:
        layers = build_layers(tables, str(path))
        network = Network(layers, (pre["channels"], pre["image_size"], pre["image_size"]), seed=None)
        network.load_state_dict(weights)
    except (LayerError, ValueError) as exc:
        raise ImportRefused(f"{path}: {exc}") from None
    classes = class_names(graph, options, network.shapes[-1])
    source = {"format": "onnx", "file": Path(path).name, "sha256": graph.sha256, "opset": graph.opset,
              "producer": graph.producer, "assumed": assumed}
    try:
        meta = ModelMeta.from_parts({"architecture": {"name": Path(path).stem, "layers": tables,
                                                      "description": f"imported from {Path(path).name}"},
                                     "classes": classes, "preprocessing": pre, "source": source})
    except ModelError as exc:
        raise ImportRefused(f"{path}: {exc}") from None
    return Imported(network, meta, assumed, count, made)


__all__ = ["ImportOptions", "ImportRefused", "Imported", "OnnxError", "import_onnx"]
