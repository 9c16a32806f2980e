"""Reading an untrusted safetensors file with numpy alone (the weights half of ``cnn import --arch``).

The format (https://huggingface.co/docs/safetensors): an unsigned 64-bit
little-endian header length n, n bytes of JSON, then the tensors' bytes. The
JSON maps each tensor name to ``{"dtype": "F32", "shape": [...],
"data_offsets": [begin, end]}`` (offsets into the bytes after the header),
plus an optional ``"__metadata__"`` of str -> str.

Every size is checked before anything is allocated: the header length
against ``config.SAFETENSORS_MAX_HEADER_BYTES`` and the file, each shape's
element count times its dtype's size against its offsets, the offsets
against the file, and, as the format requires, the tensors must tile the
data without gaps or overlaps. The file itself is at most ``max_bytes``
(default ``config.SAFETENSORS_MAX_BYTES``). Anything wrong raises a
``TensorFileError`` that names the file and the tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from . import config
from .fileio import open_regular
from .onnxfile import count_elements

#: safetensors dtype -> numpy dtype of its stored bytes. BF16 is read as its
#: 16 bits and widened to float32 (numpy has no bfloat16).
DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
    "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "u1",
}

_TENSOR_KEYS = {"dtype", "shape", "data_offsets"}


class TensorFileError(ValueError):
    """A safetensors file cannot be read; the message names the file, the tensor and what is wrong."""


def read_safetensors(path, *, max_bytes=None) -> dict:
    """The tensors of the safetensors file ``path``: {name: array}, in the file's order.

    Floating-point tensors (F64, F32, F16, BF16) come back as float32,
    integer ones as int64 and BOOL as bool, each in its stored shape. The
    ``__metadata__`` entry is checked (str -> str) and left out; read it with
    ``read_safetensors_metadata``. Raises ``TensorFileError``.
    """
    path = Path(path)
    with _open(path, max_bytes) as fh:
        size = os.fstat(fh.fileno()).st_size
        header, start = _header(fh, path, size)
        entries = _entries(header, path, size - start)
        tensors = {}
        for name, dtype, shape, begin, end in entries:
            tensors[name] = _read_tensor(fh, path, name, dtype, shape, start + begin, end - begin)
    return tensors


def read_safetensors_metadata(path, *, max_bytes=None) -> dict:
    """The ``__metadata__`` of the safetensors file ``path`` (str -> str; {} when absent)."""
    path = Path(path)
    with _open(path, max_bytes) as fh:
        size = os.fstat(fh.fileno()).st_size
        header, start = _header(fh, path, size)
        _entries(header, path, size - start)  # the whole header is checked
    return dict(header.get("__metadata__", {}))


def _open(path, max_bytes):
    max_bytes = config.SAFETENSORS_MAX_BYTES if max_bytes is None else int(max_bytes)
    try:
        return open_regular(path, max_bytes=max_bytes, what="a safetensors file")
    except FileNotFoundError:
        raise TensorFileError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise TensorFileError(getattr(exc, "strerror", None) or str(exc)) from None


def _header(fh, path, size):
    """(the parsed JSON header, the offset where the tensors' bytes start)."""
    head = fh.read(8)
    if len(head) < 8:
        raise TensorFileError(f"{path}: {size} bytes is too short for a safetensors file (8-byte header "
                              "length, JSON header, data)")
    n = int.from_bytes(head, "little")
    if n > config.SAFETENSORS_MAX_HEADER_BYTES:
        raise TensorFileError(f"{path}: declares a {n:,}-byte header; safetensors headers are at most "
                              f"{config.SAFETENSORS_MAX_HEADER_BYTES:,} bytes; is it a safetensors file?")
    if 8 + n > size:
        raise TensorFileError(f"{path}: declares a {n:,}-byte header but holds only {size - 8:,} bytes after its "
                              "length; the file is truncated or not a safetensors file")
    raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_repeats, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TensorFileError(f"{path}: its header is not valid JSON ({type(exc).__name__}: {exc})"[:400]) from None
    if not isinstance(header, dict):
        raise TensorFileError(f"{path}: its header is a JSON {type(header).__name__}, not an object of tensors")
    return header, 8 + n


def _no_repeats(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"the key(s) {repeated} appear twice")
    return dict(pairs)


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def _entries(header, path, data_bytes):
    """[(name, dtype, shape, begin, end)] of every tensor in the header, in offset order, all checked."""
    metadata = header.get("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TensorFileError(f"{path}: __metadata__ must map names to strings")
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        label = f"{path}: tensor '{name}'"
        if not isinstance(info, dict) or set(info) != _TENSOR_KEYS:
            raise TensorFileError(f"{label}: its entry must have exactly the keys dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise TensorFileError(f"{label}: dtype {dtype!r} is not one cnn reads ({', '.join(DTYPES)})")
        if not isinstance(shape, list):
            raise TensorFileError(f"{label}: its shape must be a list of whole numbers, not {shape!r}"[:300])
        try:
            count = count_elements(shape, "its shape", max_rank=config.ONNX_MAX_RANK)
        except ValueError as exc:
            raise TensorFileError(f"{label}: {exc}") from None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
                or offsets[0] > offsets[1]):
            raise TensorFileError(f"{label}: data_offsets must be [begin, end] with 0 <= begin <= end, "
                                  f"not {offsets!r}"[:300])
        begin, end = offsets
        nbytes = count * np.dtype(DTYPES[dtype]).itemsize
        if end - begin != nbytes:
            raise TensorFileError(f"{label}: shape {tuple(shape)} of {dtype} takes {nbytes:,} bytes but its "
                                  f"data_offsets [{begin}, {end}] span {end - begin:,}")
        if end > data_bytes:
            raise TensorFileError(f"{label}: its data_offsets [{begin}, {end}] run past the end of the data "
                                  f"({data_bytes:,} bytes); the file is truncated")
        entries.append((name, dtype, tuple(shape), begin, end))
    entries.sort(key=lambda e: (e[3], e[4]))
    reached, previous = 0, None
    for name, _, _, begin, end in entries:
        if begin != reached:
            what = (f"overlaps tensor '{previous}'" if begin < reached else
                    f"leaves bytes {reached:,} to {begin:,} unused")
            raise TensorFileError(f"{path}: tensor '{name}' at [{begin}, {end}] {what}; the tensors of a "
                                  "safetensors file must tile its data in order")
        reached, previous = end, name
    if reached != data_bytes:
        raise TensorFileError(f"{path}: {data_bytes - reached:,} bytes after the last tensor belong to none; "
                              "the file is damaged or holds something else")
    return entries


def _read_tensor(fh, path, name, dtype, shape, offset, nbytes):
    stored = np.dtype(DTYPES[dtype])
    raw = np.empty(nbytes // stored.itemsize, stored)
    fh.seek(offset)
    got = fh.readinto(memoryview(raw).cast("B")) if nbytes else 0
    if got != nbytes:
        raise TensorFileError(f"{path}: tensor '{name}': the file ended early ({got:,} of {nbytes:,} bytes)")
    if dtype == "BF16":  # the high half of a float32
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype == "BOOL":
        return (raw != 0).reshape(shape)
    return raw.astype(np.float32 if raw.dtype.kind == "f" else np.int64, copy=False).reshape(shape)
