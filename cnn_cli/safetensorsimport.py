"""Weights in a safetensors file for an architecture cnn ships: ``cnn import FILE.safetensors --arch NAME``.

A safetensors file holds tensors by name and nothing else, so the graph
comes from one of the architecture files in ``filters/`` (``ARCHITECTURES``),
written in the graph form with torchvision's module paths as node names:
torchvision's ``state_dict`` keys are then exactly our state-dict names
(``layer1.0.conv1.weight``). timm's ResNets use the same names, so their
files load too; no other renaming is done.

The class count is read from the classifier's weight (the node whose table
says ``"classes"``: ``fc`` for ResNets). Before anything is built, every
layer must have weights in the file and every tensor must belong to a layer,
both named in the refusal, which suggests the architecture the names fit.
Then each tensor's shape is checked against the layer built for the input
size (224 by default, as torchvision's models were trained).

**Input size.** torchvision's AlexNet and VGG pool their features with
AdaptiveAvgPool2d to 6x6 and 7x7 before the classifier. cnn has no adaptive
pooling; the shipped files leave it out, as it is the identity wherever the
last max pool already gives that size (224 to 255 pixels for VGG). At other
sizes the flattened features do not have the width the classifier's weights
take, and the import is refused with the sizes that fit, rather than run
with pooling the weights were not trained with. The ResNets, SqueezeNet and
MobileNetV2 end in global pooling and take any size large enough.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from types import SimpleNamespace

from .choices import IMPORT_ARCHITECTURES
from .layers import LayerError
from .meta import ModelError, ModelMeta
from .nn import INPUT, Network
from .onnximport import Imported, ImportOptions, ImportRefused, class_names, preprocessing_of
from .pipeline import build_layers, check_memory, load_architecture, plan_layers
from .tensorfile import read_safetensors
from .trainable import Param

#: ``--arch`` name -> the shipped architecture file (``filters/<file>.toml``). ``alexnet``
#: is the name of the small AlexNet-style preset for ``cnn train``, so torchvision's is
#: shipped as ``alexnet_imagenet``.
ARCHITECTURES = IMPORT_ARCHITECTURES

#: The input size when ``--size`` is not given: the one torchvision's ImageNet weights were trained at.
DEFAULT_SIZE = 224

#: The largest input side tried when looking for the sizes at which a classifier's width fits.
MAX_SIZE_SEARCHED = 1024

#: How many names a refusal lists before it counts the rest.
MAX_LISTED = 5

#: A BatchNorm's count of training batches: torch saves it, timm's exports may not, and
#: inference never reads it, so a file without it still loads.
OPTIONAL = ("num_batches_tracked",)

CLASSES = "classes"


def import_safetensors(path, arch, options=None) -> Imported:
    """An ``Imported`` (network, metadata, what was assumed) from the weights in ``path`` for ``arch``.

    ``options.size`` (H, W) is the input size (square; default 224); colour,
    mean, std, scale and classes as for ONNX files (``onnximport``).
    Raises ImportRefused or TensorFileError (both ValueErrors) with a message for the user.
    """
    options, path = options or ImportOptions(), Path(path)
    if arch not in ARCHITECTURES:
        raise ImportRefused(f"{path}: --arch {arch!r} is not an architecture cnn ships; use one of "
                            f"{', '.join(ARCHITECTURES)}")
    if options.output is not None:
        raise ImportRefused(f"{path}: --output picks one of an ONNX graph's outputs; {arch} has one, so leave "
                            "it out")
    h, w = options.size or (DEFAULT_SIZE, DEFAULT_SIZE)
    assumed = []
    # The option rules (square size, colour, ImageNet defaults) are ONNX import's; a safetensors
    # file records no preprocessing, so the input is described to them as a 3-channel image.
    described = SimpleNamespace(path=str(path), input_shape=(1, 3, h, w), metadata={})
    pre = preprocessing_of(described, options, assumed)
    tensors = read_safetensors(path)
    name, description, tables = load_architecture(ARCHITECTURES[arch])
    _check_layers(path, arch, tables, tensors)
    count = _class_count(path, arch, tables, tensors)
    tables = [{k: (count if v == CLASSES else v) for k, v in t.items()} for t in tables]
    size = pre["image_size"]
    shape = (3, size, size)
    where = f"{path}: {arch}"
    try:
        layers = build_layers(tables, where)
        _check_widths(path, arch, layers, tensors, size)
        check_memory(plan_layers(layers, shape), f"{where} at {size}x{size}")
        network = Network(layers, shape, seed=None)
    except (LayerError, ValueError) as exc:
        raise ImportRefused(str(exc) if str(exc).startswith(str(path)) else f"{where}: {exc}") from None
    _load(path, arch, network, tensors)
    classes = class_names(described, options, network.shapes[-1])
    source = {"format": "safetensors", "file": path.name, "sha256": _sha256(path), "architecture": arch,
              "tensors": len(tensors), "assumed": assumed}
    try:
        meta = ModelMeta.from_parts({"architecture": {"name": name, "layers": tables,
                                                      "description": f"{description}; weights from {path.name}"},
                                     "classes": classes, "preprocessing": pre, "source": source})
    except ModelError as exc:
        raise ImportRefused(f"{path}: {exc}") from None
    return Imported(network, meta, assumed)


def _listed(names):
    names = sorted(names)
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def _weighted_nodes(tables, where):
    """The names of the nodes of ``tables`` that hold weights (built without any: no memory taken)."""
    layers = build_layers(tables, where, substitutions={CLASSES: 2})
    return {name for name, layer in zip(layers.names, layers) if isinstance(layer, Param)}


def _check_layers(path, arch, tables, tensors):
    """Refuse a file whose tensors are not those of ``arch``'s layers, naming both sides, and
    suggesting the architecture whose layers the tensors fit."""
    given = {key.rpartition(".")[0] for key in tensors}
    wanted = _weighted_nodes(tables, arch)
    if given == wanted:
        return
    missing, stray = wanted - given, sorted(key for key in tensors if key.rpartition(".")[0] not in wanted)
    parts = ([f"{len(missing)} of its layers have no weights in the file ({_listed(missing)})"] if missing else [])
    parts += [f"{len(stray)} tensors belong to none of its layers ({_listed(stray)})"] if stray else []
    fits = [other for other, file in ARCHITECTURES.items()
            if other != arch and _weighted_nodes(load_architecture(file)[2], other) == given]
    hint = (f"the names fit --arch {' or '.join(fits)}" if fits else
            f"the names fit none of {', '.join(ARCHITECTURES)} (cnn reads torchvision's state-dict names, and "
            "timm's for the ResNets)")
    raise ImportRefused(f"{path}: the weights are not {arch}'s: " + "; ".join(parts) + f"; {hint}")


def _class_count(path, arch, tables, tensors):
    """The class count: the rows of the classifier's weight (the node whose table says "classes")."""
    node = next(t["name"] for t in tables if CLASSES in t.values())
    weight = tensors[f"{node}.weight"]
    if weight.ndim < 2:
        raise ImportRefused(f"{path}: '{node}.weight' has shape {weight.shape}; {arch}'s classifier weight "
                            "has a row per class")
    return int(weight.shape[0])


def _check_widths(path, arch, layers, tensors, size):
    """Refuse an input size at which a linear layer would read more or fewer features than its
    weights take (AlexNet's and VGG's classifiers), naming the sizes that fit."""
    plan = plan_layers(layers, (3, size, size))
    for i, (name, layer) in enumerate(zip(layers.names, layers)):
        weight = tensors.get(f"{name}.weight")
        if layer.kind != "linear" or weight is None or weight.ndim != 2:
            continue
        (j,) = layers.inputs[i]
        width = math.prod((3, size, size) if j == INPUT else plan.layers[j].shape)
        if width == weight.shape[1]:
            continue
        fits = [s for s in range(1, MAX_SIZE_SEARCHED + 1) if _width_at(layers, j, s) == weight.shape[1]]
        if not fits:
            advice = f"no input size up to {MAX_SIZE_SEARCHED} gives that"
        else:
            best = DEFAULT_SIZE if DEFAULT_SIZE in fits else fits[0]
            advice = f"import it at --size {best}" + (f" (any size from {fits[0]} to {fits[-1]} fits)"
                                                       if len(fits) > 1 else "")
        raise ImportRefused(
            f"{path}: {arch}'s '{name}' takes {weight.shape[1]:,} features (its weight is {tuple(weight.shape)}), "
            f"but a {size}x{size} input gives {_maps(plan, layers, j, size)} = {width:,}; torchvision pools the "
            f"features to a fixed size there with AdaptiveAvgPool2d, which cnn does not have: {advice}")


def _maps(plan, layers, j, size):
    """The last maps (C x H x W) before node ``j``'s flattened output, as text."""
    while j != INPUT and len(plan.layers[j].shape) == 1 and len(layers.inputs[j]) == 1:
        j = layers.inputs[j][0]  # back through dropout and flatten
    return "x".join(str(d) for d in ((3, size, size) if j == INPUT else plan.layers[j].shape)) + " maps"


def _width_at(layers, j, size):
    """The flattened width of node ``j``'s output for a size x size input, or None if it cannot take it."""
    if j == INPUT:
        return 3 * size * size
    try:
        plan = plan_layers(layers[: j + 1], (3, size, size), inputs=layers.inputs[: j + 1])
    except (LayerError, ValueError):
        return None
    return math.prod(plan.layers[j].shape)


def _load(path, arch, network, tensors):
    """Copy the tensors in, each checked for name, shape and type first."""
    own = network.state_dict()
    missing = [k for k in own if k not in tensors and k.rpartition(".")[2] not in OPTIONAL]
    stray = [k for k in tensors if k not in own]
    if missing or stray:
        parts = ([f"missing {_listed(missing)}"] if missing else []) + ([f"unexpected {_listed(stray)}"] if stray else [])
        raise ImportRefused(f"{path}: the weights do not fit {arch}: {'; '.join(parts)}")
    wrong = [f"'{k}' is {tuple(v.shape)} where {arch} needs {own[k].shape}" for k, v in tensors.items()
             if v.shape != own[k].shape]
    if wrong:
        raise ImportRefused(f"{path}: the weights do not fit {arch}: " + "; ".join(wrong[:MAX_LISTED])
                            + (f"; and {len(wrong) - MAX_LISTED} more" if len(wrong) > MAX_LISTED else ""))
    ints = [k for k, v in tensors.items() if v.dtype.kind != "f" and k.rpartition(".")[2] not in OPTIONAL]
    if ints:
        raise ImportRefused(f"{path}: tensor(s) {_listed(ints)} hold integers or booleans; weights are "
                            "floating-point")
    for key, value in tensors.items():
        own[key][...] = value


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["ARCHITECTURES", "DEFAULT_SIZE", "import_safetensors"]
