"""ONNX protobufs as plain values, with every size bounded: the bottom floor of ``cnn import``'s ONNX reading.

``TensorReader`` turns a TensorProto (in-file bytes, typed fields, or
external data beside the model) into a numpy array, checking the declared
element count (``count_elements``) before anything is allocated;
``attr_value`` does the same for an AttributeProto; ``Node`` is one node as
plain Python values; ``static_shapes`` asks onnx's shape inference for the
static shapes of a graph of such nodes. ``onnxfold`` (folding) and
``onnxfile`` (reading a file, ``read_onnx``) build on this module, which
imports neither. The ``onnx`` module itself is passed in by the caller, so
nothing here imports it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import config
from .fileio import open_regular

#: Constants with at most this many elements are given to shape inference as
#: values (a Reshape's target, a Resize's scales); larger ones (weights) only
#: by their shape, so that inference never copies the weights.
_INFER_VALUE_ELEMENTS = 4096


class OnnxError(ValueError):
    """An ONNX file cannot be read; the message names the file, what is wrong and what to change."""


@dataclass
class Node:
    """One ONNX node as plain Python values.

    ``inputs`` and ``outputs`` are tensor names ("" for an omitted optional
    one). After ``read_onnx`` an input names a constant (in
    ``OnnxGraph.constants``), the image input or another node's output:
    never an alias. ``attrs`` holds ints, floats, str, lists of them and
    numpy arrays (TENSOR attributes; float32, int64 or bool, as constants).
    """

    name: str          # the node's name; "<op>_<index>" if the file gave none, "_2"... added to repeats
    op: str            # op_type
    domain: str        # "" for the default domain
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- reading tensors

#: TensorProto data type -> (numpy dtype of its stored bytes, numpy dtype we compute in).
#: bfloat16 is stored as its 16 bits and computed in float32 (numpy has no bfloat16).
DTYPES = {
    1: ("<f4", np.float32),    # FLOAT
    2: ("u1", np.uint8),       # UINT8
    3: ("i1", np.int8),        # INT8
    4: ("<u2", np.uint16),     # UINT16
    5: ("<i2", np.int16),      # INT16
    6: ("<i4", np.int32),      # INT32
    7: ("<i8", np.int64),      # INT64
    9: ("u1", np.bool_),       # BOOL
    10: ("<f2", np.float16),   # FLOAT16
    11: ("<f8", np.float64),   # DOUBLE
    12: ("<u4", np.uint32),    # UINT32
    13: ("<u8", np.uint64),    # UINT64
    16: ("<u2", np.float32),   # BFLOAT16
}
_TYPE_NAMES = {0: "UNDEFINED", 8: "STRING", 14: "COMPLEX64", 15: "COMPLEX128"}
FLOAT_TYPES = (1, 10, 11, 16)


def type_name(code):
    try:
        from onnx import TensorProto

        return TensorProto.DataType.Name(code)
    except (ImportError, ValueError):
        return _TYPE_NAMES.get(code, f"type {code}")


def onnx_type(dtype):
    """The TensorProto type code of a numpy dtype we compute in."""
    dtype = np.dtype(dtype)
    for code, (_, ours) in DTYPES.items():
        if code != 16 and np.dtype(ours) == dtype:
            return code
    raise KeyError(dtype)


def count_elements(dims, what, *, max_elements=None, max_rank=None):
    """The element count of a tensor with ``dims``, checked before anything is allocated.

    Each dim must be a non-negative int, at most ``max_rank`` of them (default
    ``config.ONNX_MAX_RANK``), and their product at most ``max_elements``
    (default ``config.ONNX_MAX_ELEMENTS``). Raises ValueError naming ``what``.
    """
    max_elements = config.ONNX_MAX_ELEMENTS if max_elements is None else max_elements
    max_rank = config.ONNX_MAX_RANK if max_rank is None else max_rank
    dims = list(dims)
    if len(dims) > max_rank:
        raise ValueError(f"{what} has {len(dims)} dimensions; at most {max_rank} are read")
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 0:
            raise ValueError(f"{what} has the dimension {d!r}; dimensions are whole numbers >= 0")
    count = math.prod(int(d) for d in dims)  # at most 32 factors below 2**63: exact and quick
    if count > max_elements:
        raise ValueError(f"{what} declares {count:,} elements (shape {tuple(int(d) for d in dims)}); "
                         f"at most {max_elements:,} are read")
    return count


class TensorReader:
    """Reads tensors of one model file: in-file data, typed fields, or bounded external data."""

    def __init__(self, path, budget, max_bytes):
        self.path = Path(path)
        self.folder = self.path.parent
        self.budget = budget          # bytes that external data may still take
        self.max_bytes = max_bytes    # the limit for the file and its external data together
        self._files = {}              # location -> open file, size

    def close(self):
        for fh, _ in self._files.values():
            fh.close()
        self._files.clear()

    def array(self, t, what):
        """The numpy array of TensorProto ``t`` in the type we compute in (see ``DTYPES``)."""
        if t.data_type not in DTYPES:
            raise OnnxError(f"{self.path}: {what} is of type {type_name(t.data_type)}, which cnn does not "
                            f"read; cnn reads float, integer and bool tensors")
        try:
            count = count_elements(t.dims, what)
        except ValueError as exc:
            raise OnnxError(f"{self.path}: {exc}") from None
        stored, ours = DTYPES[t.data_type]
        itemsize = np.dtype(stored).itemsize
        shape = tuple(int(d) for d in t.dims)
        if t.data_location == 1:  # EXTERNAL
            raw = self._external(t, what, count * itemsize)
        elif t.HasField("raw_data"):
            raw = t.raw_data
            if len(raw) != count * itemsize:
                raise OnnxError(f"{self.path}: {what} declares shape {shape} ({count * itemsize:,} bytes) but "
                                f"stores {len(raw):,} bytes; the file is damaged or forged")
        else:
            return self._typed(t, what, count, shape, ours)
        arr = np.frombuffer(raw, dtype=stored, count=count)
        if t.data_type == 16:  # bfloat16: the high half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif t.data_type == 9:
            arr = arr != 0
        return arr.astype(ours, copy=True).reshape(shape)

    def _typed(self, t, what, count, shape, ours):
        code = t.data_type
        if code == 1:
            values = t.float_data
        elif code == 11:
            values = t.double_data
        elif code == 7:
            values = t.int64_data
        elif code in (12, 13):
            values = t.uint64_data
        else:  # int32_data holds INT8/16/32, UINT8/16, BOOL, and float16/bfloat16 bit patterns
            values = t.int32_data
        if len(values) != count:  # a repeated field's length is stored: no copy is made to check it
            raise OnnxError(f"{self.path}: {what} declares shape {shape} ({count:,} elements) but stores "
                            f"{len(values):,} values; the file is damaged or forged")
        if code == 10:
            return np.asarray(values, np.int64).astype(np.uint16).view(np.float16).reshape(shape)
        if code == 16:
            return (np.asarray(values, np.int64).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if code == 9:
            return (np.asarray(values, np.int64) != 0).reshape(shape)
        wide = np.float64 if code in (1, 11) else np.uint64 if code in (12, 13) else np.int64  # holds every value
        return np.asarray(values, dtype=wide).astype(ours).reshape(shape)

    def _external(self, t, what, nbytes):
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        try:
            offset = int(info.get("offset", "0"))
            length = int(info.get("length", str(nbytes)))
        except ValueError:
            raise OnnxError(f"{self.path}: {what} has external data with offset {info.get('offset')!r} and "
                            f"length {info.get('length')!r}; both must be whole numbers") from None
        if offset < 0 or length != nbytes:
            raise OnnxError(f"{self.path}: {what} declares {nbytes:,} bytes but its external data says "
                            f"offset {offset}, length {length}; the file is damaged or forged")
        fh, size = self._open(location, what)
        if offset + length > size:
            raise OnnxError(f"{self.path}: {what} is stored at bytes {offset:,} to {offset + length:,} of "
                            f"'{location}', which holds only {size:,} bytes; the data file is truncated "
                            f"or belongs to another model")
        if length > self.budget:
            raise OnnxError(f"{self.path}: the model and its external data hold more than the "
                            f"{self.max_bytes:,}-byte limit for a model")
        self.budget -= length
        fh.seek(offset)
        raw = fh.read(length)
        if len(raw) != length:
            raise OnnxError(f"{self.path}: '{location}' ended early while reading {what}")
        return raw

    def _open(self, location, what):
        if location in self._files:
            return self._files[location]
        parts = location.replace("\\", "/").split("/")
        if (not location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in parts[0]
                or ".." in parts or "\0" in location):
            raise OnnxError(f"{self.path}: {what} names the external data file {location!r}, which is not "
                            f"a file inside the model's folder; cnn reads external data only from beside "
                            f"the model")
        full = self.folder / location
        folder = os.path.realpath(self.folder)
        if os.path.commonpath([folder, os.path.realpath(full)]) != folder:  # a link that leads out
            raise OnnxError(f"{self.path}: the external data file '{location}' leads outside the model's "
                            f"folder; cnn reads external data only from beside the model")
        try:
            fh = open_regular(full, what="an external data file")
        except FileNotFoundError:
            raise OnnxError(f"{self.path}: {what} is stored in '{location}', which is missing; keep the data "
                            f"file beside the model, under the name it was saved with") from None
        except (OSError, ValueError) as exc:
            raise OnnxError(f"{self.path}: {getattr(exc, 'strerror', None) or exc}") from None
        self._files[location] = (fh, os.fstat(fh.fileno()).st_size)
        return self._files[location]


def attr_value(a, reader, what):
    """A python value for AttributeProto ``a``: int, float, str, lists of them, or a numpy array."""
    kind = a.type
    if kind == 1:
        return float(a.f)
    if kind == 2:
        return int(a.i)
    if kind == 3:
        return _decode(a.s, reader, what)
    if kind == 4:
        return reader.array(a.t, what)
    if kind == 6:
        return [float(v) for v in a.floats]
    if kind == 7:
        return [int(v) for v in a.ints]
    if kind == 8:
        return [_decode(s, reader, what) for s in a.strings]
    if kind == 9:
        return [reader.array(t, f"{what}[{i}]") for i, t in enumerate(a.tensors)]
    raise OnnxError(f"{reader.path}: {what} is of attribute type {a.type} (a graph, sparse tensor or type), "
                    f"which cnn does not read")


def _decode(data, reader, what):
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxError(f"{reader.path}: {what} is not UTF-8 text") from None


# ----------------------------------------------------------------------------- static shapes


def static_shapes(onnx, model, nodes, protos, constants, input_name, input_shape, outputs, path):
    """{tensor name: static shape} for the graph ``nodes`` (with the input bound), by ONNX shape inference.

    Constants read by the nodes go in as initializers when they are small
    (their values matter: a Reshape's target) and as inputs of known shape
    otherwise (weights: only their shape matters). Names with a dimension
    inference could not fix are left out.
    """
    helper = onnx.helper
    graph_inputs = [helper.make_tensor_value_info(input_name, _input_type(model, input_name), list(input_shape))]
    initializers = []
    read = dict.fromkeys(x for n in nodes for x in n.inputs if x in constants)
    for name in read:
        value = constants[name]
        code = onnx_type(value.dtype)
        graph_inputs.append(helper.make_tensor_value_info(name, code, list(value.shape)))
        if value.size <= _INFER_VALUE_ELEMENTS:
            initializers.append(onnx.numpy_helper.from_array(value, name))
    made = {out for n in nodes for out in n.outputs if out}
    graph_outputs = [helper.make_empty_tensor_value_info(name) for name in dict.fromkeys(outputs) if name in made]
    node_protos = []
    for n in nodes:
        proto = onnx.NodeProto()
        proto.CopyFrom(protos[id(n)])
        del proto.input[:]
        proto.input.extend(n.inputs)
        node_protos.append(proto)
    graph = helper.make_graph(node_protos, "shapes", graph_inputs, graph_outputs, initializers)
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = max(model.ir_version, 3)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False)
    except Exception as exc:  # onnx raises its own error types; all mean the same here
        raise OnnxError(f"{path}: ONNX shape inference failed on this graph: {exc}"[:1000]) from None
    shapes = {}
    for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        t = v.type.tensor_type
        if v.name in constants or not t.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if all(d is not None for d in dims):
            shapes[v.name] = tuple(int(d) for d in dims)
    return shapes


def _input_type(model, name):
    for v in model.graph.input:
        if v.name == name:
            return v.type.tensor_type.elem_type
    return 1

