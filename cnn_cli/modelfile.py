"""The model file: one npz, loadable without pickle, that says everything about a network.

Arrays:

- the weights under PyTorch state-dict names (``0.weight``, ``3.bn1.running_mean``...),
  in PyTorch's layouts, so ``torch_module.load_state_dict`` takes them as they are;
- ``__meta__``: UTF-8 JSON as uint8 bytes: format and version, the architecture
  (its layer tables), the class names, the preprocessing (input size, colour,
  per-channel mean and std) and the training metadata, read into and written
  from a ``meta.ModelMeta``;
- in checkpoints only, ``state.*``: the optimizer's state and the best weights
  so far, for ``--resume``.
"""

from __future__ import annotations

import json

import numpy as np

from .fileio import NpzError, load_npz_arrays, npz_keys, save_npz_atomic
from .meta import ModelError, ModelMeta
from .nn import Conv2d, Network
from .pipeline import build_layers, check_memory, plan_layers

META_KEY = "__meta__"
STATE_PREFIX = "state."

#: The largest ``__meta__`` read: the JSON of an architecture, classes and a
#: training history is a few KB, a long run's history a few hundred.
MAX_META_BYTES = 16 * 2**20

#: A file's arrays may declare at most this many bytes per parameter that its
#: architecture declares, plus ``ARRAY_SLACK``: five float64 copies, for the
#: weights and, in a checkpoint, the optimizer's two moments and the best weights.
BYTES_PER_DECLARED_PARAM = 5 * 8
ARRAY_SLACK = 2**20


def build_network(meta, seed=0, where=None):
    """A fresh network for the architecture and input shape recorded in ``meta`` (a ``ModelMeta``).

    The memory its weights and one image's maps will take is estimated from
    the architecture first; over the limit (``config.memory_limit``) it is
    refused (ModelError), before anything is allocated.
    """
    return _network(meta, _checked_layers(meta, where), seed)


def _checked_layers(meta, where=None, memory_limit=None):
    """(layers of ``meta``'s architecture, their Plan), refused when over the memory limit."""
    arch, pre = meta.architecture, meta.preprocessing
    where = where or f"architecture '{arch.name}'"
    try:
        layers = build_layers(arch.layers, where, substitutions={"classes": len(meta.classes)})
        plan = plan_layers(layers, (pre.channels, pre.image_size, pre.image_size))
        check_memory(plan, where, memory_limit)
    except (ValueError, TypeError) as exc:  # LayerError, SpecFileError
        raise ModelError(str(exc) if str(exc).startswith(str(where)) else f"{where}: {exc}") from None
    return layers, plan


def _network(meta, checked, seed=0):
    layers, _ = checked
    pre = meta.preprocessing
    return Network(layers, (pre.channels, pre.image_size, pre.image_size), seed=seed)


def save_model(path, network, meta, extra_state=None):
    """Write the model (and ``extra_state`` arrays, for a checkpoint) atomically.

    Refuses non-finite weights, so a diverged run never leaves a model behind.
    """
    arrays = {}
    for name, arr in network.state_dict().items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelError(f"weight '{name}' is not finite; refusing to save it")
        arrays[name] = arr
    arrays[META_KEY] = np.frombuffer(json.dumps(meta.to_json()).encode("utf-8"), dtype=np.uint8)
    for name, arr in (extra_state or {}).items():
        arrays[STATE_PREFIX + name] = arr
    save_npz_atomic(path, arrays)


def load_model(path, memory_limit=None):
    """(network, ModelMeta, extra_state) from a model or checkpoint file; never unpickles.

    The metadata is read first, and the memory the architecture needs is
    checked (see ``build_network``) before any weight is read; the weights
    may declare no more bytes than the architecture can use. An ``.onnx``
    file is imported in memory with ``cnn import``'s defaults.
    """
    if str(path).lower().endswith(".onnx"):
        from .onnximport import import_onnx

        try:
            imported = import_onnx(path)
        except ValueError as exc:  # OnnxError, ImportRefused
            raise ModelError(str(exc)) from None
        return imported.network, imported.meta, {}
    try:
        keys = npz_keys(path)
        if META_KEY not in keys:
            raise ModelError(f"{path}: not a cnn model file (no {META_KEY} entry)")
        meta = _read_meta(path, load_npz_arrays(path, keys=[META_KEY], max_bytes=MAX_META_BYTES)[META_KEY])
        checked = _checked_layers(meta, str(path), memory_limit)
        weights_bytes = BYTES_PER_DECLARED_PARAM * checked[1].params + ARRAY_SLACK
        arrays = load_npz_arrays(path, keys=[k for k in keys if k != META_KEY], max_bytes=weights_bytes)
    except NpzError as exc:
        raise ModelError(str(exc)) from None
    extra = {k[len(STATE_PREFIX):]: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
    weights = {k: v for k, v in arrays.items() if not k.startswith(STATE_PREFIX)}
    for name, arr in weights.items():
        expected = "i" if name.endswith("num_batches_tracked") else "f"
        if arr.dtype.kind != expected:
            raise ModelError(f"{path}: weight '{name}' has dtype {arr.dtype}; expected "
                             f"{'an integer' if expected == 'i' else 'a float'} array")
    try:
        network = _network(meta, checked, seed=None)  # every weight is loaded next
        network.load_state_dict(weights)
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path}: {exc}") from None
    for name, arr in network.state_dict().items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelError(f"{path}: weight '{name}' holds NaN or inf")
    return network, meta, extra


def _read_meta(path, raw):
    """The ``ModelMeta`` of the ``__meta__`` array ``raw`` (UTF-8 JSON bytes); ModelError names ``path``."""
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelError(f"{path}: damaged metadata: {META_KEY} must be UTF-8 bytes (uint8), not {raw.dtype} "
                         f"of shape {raw.shape}")
    try:
        return ModelMeta.from_json(json.loads(raw.tobytes().decode("utf-8")))
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    except ValueError as exc:  # not UTF-8, not JSON, or a number of 5,000 digits
        raise ModelError(f"{path}: damaged metadata: {exc}") from None
    except RecursionError:
        raise ModelError(f"{path}: damaged metadata: nested too deeply to read") from None


def _mean_std(pre):
    return np.array(pre.mean, np.float32), np.array(pre.std, np.float32)


def preprocess(images, meta):
    """(N, 3, H, W) images in [0, 1], already resized -> the network's normalised input."""
    from .data import normalize, to_color

    return normalize(to_color(images, meta.preprocessing.color), *_mean_std(meta.preprocessing))


def image_transform(meta):
    """A function from a decoded image (C, H, W) in [0, 1], read in the model's
    colour, to the network's input (C, S, S): resized, then normalised."""
    from .data import normalize
    from .imageio import resize

    size = meta.preprocessing.image_size
    mean, std = _mean_std(meta.preprocessing)
    return lambda img: normalize(resize(img, size, size)[None], mean, std)[0]


def feature_pipeline(network, meta, name, memory_limit=None):
    """The network's layers that still output maps (up to the first flat output), as a
    bound ``Pipeline`` for ``cnn apply --model``."""
    from .pipeline import Pipeline

    count = next((i for i, s in enumerate(network.shapes) if len(s) != 3), len(network.layers))
    if count == 0:
        raise ModelError(f"{name}: the model has no layers that output feature maps")
    pipe = Pipeline(network.layers[:count], name, "learned layers of a trained model", name,
                    inputs=network.inputs[:count], names=network.names[:count])
    return pipe.bind(meta.preprocessing.channel_names, memory_limit)


def first_conv(network):
    """The network's first ``Conv2d`` layer, or None."""
    return next((layer for layer in network.layers if isinstance(layer, Conv2d)), None)
