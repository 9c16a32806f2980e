"""Reading safetensors files with numpy alone (``cnn_cli.tensorfile``).

Files written by the ``safetensors`` package (a test extra) are read back
equal; forged headers are each refused with a TensorFileError that names the
file and the tensor, never another exception type.
"""

from __future__ import annotations

import json
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnn_cli import config
from cnn_cli.tensorfile import TensorFileError, read_safetensors, read_safetensors_metadata


def write_raw(path, header, data=b""):
    """A safetensors file from a header (dict, or raw bytes) and the data bytes."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_round_trip_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {
        "conv1.weight": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
        "conv1.bias": rng.standard_normal(8).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
        "ids": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
        "bytes": np.arange(5, dtype=np.uint8),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 4), np.float32),
        "f64": rng.standard_normal(3),
    }
    path = tmp_path / "w.safetensors"
    st.save_file(tensors, str(path), metadata={"format": "pt"})
    out = read_safetensors(path)
    assert set(out) == set(tensors)
    for name, value in tensors.items():
        got = out[name]
        assert got.shape == value.shape, name
        kind = value.dtype.kind
        assert got.dtype == {"f": np.float32, "b": np.bool_}.get(kind, np.int64), name
        np.testing.assert_array_equal(got, value.astype(got.dtype), err_msg=name)
        assert got.flags.writeable and got.flags.c_contiguous
    assert read_safetensors_metadata(path) == {"format": "pt"}


def test_half_precision_becomes_float32(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    values = np.array([1.5, -2.25, 65504.0, 1e-3], np.float16)
    path = tmp_path / "h.safetensors"
    st.save_file({"h": values}, str(path))
    out = read_safetensors(path)["h"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, values.astype(np.float32))


def test_bfloat16_from_torch_becomes_float32(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    values = torch.tensor([[1.0, -3.5], [1e20, 0.0078125]], dtype=torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    st.save_file({"w": values, "f16": values.to(torch.float16)[:, :1].contiguous()}, str(path))
    out = read_safetensors(path)
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], values.float().numpy())
    np.testing.assert_array_equal(out["f16"], values.to(torch.float16)[:, :1].float().numpy())


def test_hand_written_bf16_and_bool(tmp_path):
    bits = np.array([0x3FC0, 0xC060], "<u2")  # 1.5 and -3.5 in bfloat16
    header = {"b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]},
              "m": {"dtype": "BOOL", "shape": [3], "data_offsets": [4, 7]}}
    out = read_safetensors(write_raw(tmp_path / "x.safetensors", header, bits.tobytes() + b"\x00\x01\x02"))
    np.testing.assert_array_equal(out["b"], [1.5, -3.5])
    assert out["m"].tolist() == [False, True, True]


def header_for(shape=(2,), dtype="F32", offsets=(0, 8), **extra):
    return {"t": {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets), **extra}}


FORGERIES = [
    ("unknown dtype", header_for(dtype="F128"), b"\0" * 8, r"tensor 't': dtype 'F128' is not one cnn reads"),
    ("shape*itemsize mismatch", header_for(shape=(3,)), b"\0" * 8,
     r"tensor 't': shape \(3,\) of F32 takes 12 bytes but its data_offsets \[0, 8\] span 8"),
    ("offsets past the end", header_for(shape=(4,), offsets=(0, 16)), b"\0" * 8,
     r"tensor 't': its data_offsets \[0, 16\] run past the end of the data \(8 bytes\)"),
    ("huge shape", header_for(shape=(10**6, 10**6), offsets=(0, 8)), b"\0" * 8,
     r"tensor 't': its shape declares 1,000,000,000,000 elements"),
    ("negative dim", header_for(shape=(-2,)), b"\0" * 8, r"tensor 't': its shape has the dimension -2"),
    ("float dim", header_for(shape=(2.0,)), b"\0" * 8, r"tensor 't': its shape has the dimension 2.0"),
    ("reversed offsets", header_for(offsets=(8, 0)), b"\0" * 8, r"tensor 't': data_offsets must be \[begin, end\]"),
    ("extra key", header_for(extra=1), b"\0" * 8, r"tensor 't': its entry must have exactly the keys"),
    ("not an object", [1, 2], b"", r"its header is a JSON list"),
    ("non-JSON", b"{\"t\": nope}", b"", r"its header is not valid JSON"),
    ("NaN", b"{\"t\": NaN}", b"", r"its header is not valid JSON"),
    ("not UTF-8", b"{\"\xff\": 1}", b"", r"its header is not valid JSON"),
    ("repeated key", b'{"t": 1, "t": 2}', b"", r"appear twice"),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, b"", r"its header is not valid JSON"),
    ("bad metadata", {"__metadata__": {"a": 1}}, b"", r"__metadata__ must map names to strings"),
    ("trailing bytes", header_for(), b"\0" * 12, r"4 bytes after the last tensor belong to none"),
]


@pytest.mark.parametrize("header, data, message", [f[1:] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
def test_forged_headers_refused(tmp_path, header, data, message):
    path = write_raw(tmp_path / "f.safetensors", header, data)
    with pytest.raises(TensorFileError, match=message) as info:
        read_safetensors(path)
    assert str(info.value).startswith(f"{path}: ")


def test_overlapping_and_gapped_offsets_refused(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    with pytest.raises(TensorFileError, match=r"tensor 'b' at \[4, 12\] overlaps tensor 'a'"):
        read_safetensors(write_raw(tmp_path / "o.safetensors", header, b"\0" * 12))
    header["b"]["data_offsets"] = [12, 20]
    with pytest.raises(TensorFileError, match=r"tensor 'b' at \[12, 20\] leaves bytes 8 to 12 unused"):
        read_safetensors(write_raw(tmp_path / "g.safetensors", header, b"\0" * 20))


def peak_while_refused(path, message):
    """The most memory Python held while ``read_safetensors(path)`` refused the file with ``message``."""
    tracemalloc.start()
    try:
        with pytest.raises(TensorFileError, match=message):
            read_safetensors(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_huge_header_length_refused_without_allocating(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    assert peak_while_refused(path, r"declares a 1,152,921,504,606,846,976-byte header") < 2**20
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    with pytest.raises(TensorFileError, match=r"declares a 1,000-byte header but holds only 2 bytes"):
        read_safetensors(path)


def test_tiny_file_declaring_a_huge_tensor_refused_without_allocating(tmp_path):
    n = 2**30  # within the element cap, so only the offsets stand between it and 4 GB
    header = {"t": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}
    path = write_raw(tmp_path / "t.safetensors", header, b"\0" * 8)
    assert peak_while_refused(path, "run past the end of the data") < 2**20


def test_short_files_and_limits(tmp_path, monkeypatch):
    (tmp_path / "s.safetensors").write_bytes(b"\1\0")
    with pytest.raises(TensorFileError, match="2 bytes is too short for a safetensors file"):
        read_safetensors(tmp_path / "s.safetensors")
    with pytest.raises(TensorFileError, match="no such file"):
        read_safetensors(tmp_path / "missing.safetensors")
    path = write_raw(tmp_path / "ok.safetensors", header_for(), np.float32([1, 2]).tobytes())
    np.testing.assert_array_equal(read_safetensors(path)["t"], [1, 2])
    with pytest.raises(TensorFileError, match="larger than a safetensors file can be"):
        read_safetensors(path, max_bytes=16)
    monkeypatch.setattr(config, "SAFETENSORS_MAX_HEADER_BYTES", 8)
    with pytest.raises(TensorFileError, match="safetensors headers are at most 8 bytes"):
        read_safetensors(path)


def test_header_padding_and_empty_file_of_tensors(tmp_path):
    text = json.dumps(header_for()).encode() + b"    "  # the reference writer pads to 8 bytes with spaces
    path = write_raw(tmp_path / "p.safetensors", text, np.float32([3, 4]).tobytes())
    np.testing.assert_array_equal(read_safetensors(path)["t"], [3, 4])
    assert read_safetensors(write_raw(tmp_path / "e.safetensors", {})) == {}


def damage(data, raw, max_cut=8):
    """``raw`` with one to four bytes overwritten or runs of up to ``max_cut`` bytes cut, as hypothesis draws."""
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            del raw[at:at + data.draw(st.integers(1, max_cut))]
    return bytes(raw)


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_damaged_files_raise_only_tensor_file_error(data):
    header = {"__metadata__": {"format": "pt"},
              "a": {"dtype": "F16", "shape": [2, 3], "data_offsets": [0, 12]},
              "b": {"dtype": "I64", "shape": [1], "data_offsets": [12, 20]},
              "c": {"dtype": "BF16", "shape": [], "data_offsets": [20, 22]}}
    text = json.dumps(header).encode()
    raw = damage(data, struct.pack("<Q", len(text)) + text + bytes(range(22)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.safetensors"
        path.write_bytes(raw)
        try:
            out = read_safetensors(path)
        except TensorFileError:
            return
    assert all(v.dtype in (np.float32, np.int64, np.bool_) for v in out.values())
