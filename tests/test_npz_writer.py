"""``fileio.write_npz`` writes the zip container itself: every byte is checked against ``np.savez``,
including the zip64 records that only files and members past zipfile's limits get."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from cnn_cli import fileio
from cnn_cli.fileio import save_npz_atomic, temporary_kind, write_npz

RNG = np.random.default_rng(25)

#: Arrays written from their memory: every dtype kind, 0-d, empty, and names zipfile must treat
#: as it does (dots, non-ASCII names, which set the UTF-8 flag, and a NUL, where zipfile ends a name).
FROM_MEMORY = {
    "layer0": RNG.standard_normal((3, 7, 5)).astype(np.float32),
    "half": RNG.standard_normal((2, 9)).astype(np.float16),
    "zero_d": np.array(7),
    "scalar": np.float64(3.5),
    "empty": np.zeros((0, 3), np.float32),
    "empty_1d": np.array([], np.uint8),
    "text": np.array(["ab", "ccc"]),
    "bytes": np.array([b"x", b"yz"]),
    "big_endian": np.arange(5, dtype=">i4"),
    "complex": np.array([1 + 2j, 3 - 4j], np.complex64),
    "bools": np.array([True, False, True]),
    "list": [1, 2, 3],
    "dates": np.array(["2020-01-01", "2026-12-08"], "M8[D]"),
    "record": np.zeros(2, [("x", "<f4"), ("y", "<i2")]),
    "a.b.npy": np.arange(4, dtype=np.int16),
    "größe": np.arange(3, dtype=np.uint32),
    "cut\0here": np.ones(2),
}

#: Arrays numpy writes otherwise, which send the file through zipfile: not C-ordered, objects.
BY_ZIPFILE = {
    "fortran": np.asfortranarray(RNG.standard_normal((4, 6))),
    "strided": RNG.standard_normal((6, 6))[::2],
    "objects": np.array([{"a": 1}, None], dtype=object),
}


def _savez_bytes(arrays, start=0):
    buffer = io.BytesIO(b"\0" * start)
    buffer.seek(start)
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _our_bytes(arrays, start=0):
    buffer = io.BytesIO(b"\0" * start)
    buffer.seek(start)
    write_npz(buffer, arrays)
    return buffer.getvalue()


def _check_readable(data, arrays, trusted=False):
    """zipfile finds no bad CRC, and np.load gives back every array under its name (a name
    zipfile cut at a NUL lost its ".npy", and np.load still reads the array in it)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
    trusted = trusted or any(np.asanyarray(v).dtype.hasobject for v in arrays.values())
    with np.load(io.BytesIO(data), allow_pickle=trusted) as npz:
        stored = [zipfile.ZipInfo(f"{name}.npy").filename for name in arrays]
        keys = [s.removesuffix(".npy") for s in stored]
        assert npz.files == keys
        for name, key in zip(arrays, keys):
            expected, got = np.asanyarray(arrays[name]), npz[key]
            assert got.dtype == expected.dtype and got.shape == expected.shape, name
            if not expected.dtype.hasobject:
                np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize("arrays", [FROM_MEMORY, BY_ZIPFILE, {**FROM_MEMORY, **BY_ZIPFILE}, {}],
                         ids=["from memory", "by zipfile", "mixed", "none"])
def test_the_same_bytes_as_np_savez(arrays):
    ours = _our_bytes(arrays)
    assert ours == _savez_bytes(arrays)
    if arrays:
        _check_readable(ours, arrays)


def test_members_and_headers_are_np_savez_s():
    """Member for member (the failure names the member): name, size, CRC, .npy header and data."""
    ours, numpys = _our_bytes(FROM_MEMORY), _savez_bytes(FROM_MEMORY)
    with zipfile.ZipFile(io.BytesIO(ours)) as a, zipfile.ZipFile(io.BytesIO(numpys)) as b:
        assert [i.filename for i in a.infolist()] == [i.filename for i in b.infolist()]
        for x, y in zip(a.infolist(), b.infolist()):
            assert (x.file_size, x.compress_size, x.CRC, x.flag_bits, x.header_offset, x.external_attr) == \
                (y.file_size, y.compress_size, y.CRC, y.flag_bits, y.header_offset, y.external_attr), x.filename
            assert a.read(x) == b.read(y), x.filename


def test_a_header_numpy_writes_in_version_2():
    """A dtype whose description passes 64 KiB: numpy's version 2.0 header, written from memory too."""
    wide = np.zeros(2, [(f"field_{i:05d}_{'x' * 20}", "<f4") for i in range(2500)])
    with pytest.warns(UserWarning, match="format 2.0"):
        numpys = _savez_bytes({"wide": wide})
    assert _our_bytes({"wide": wide}) == numpys
    _check_readable(numpys, {"wide": wide}, trusted=True)  # a header this long needs trust to load


def test_a_header_only_utf8_holds_goes_through_zipfile():
    """Field names outside Latin-1 make numpy write version 3.0; the file is still np.savez's."""
    greek = np.zeros(3, [("λ", "<f4")])
    with pytest.warns(UserWarning, match="format 3.0"):
        numpys = _savez_bytes({"greek": greek})
    with pytest.warns(UserWarning, match="format 3.0"):
        assert _our_bytes({"greek": greek}) == numpys


def test_zip64_offsets_past_4_gib(tmp_path):
    """Members that start 5 GiB into a (sparse) file: their offsets and the central directory's
    need zip64 fields and end records, written as zipfile writes them."""
    start = 5 * 2**30
    arrays = {"layer0": RNG.standard_normal((2, 3, 4)).astype(np.float32), "b.c": np.arange(6)}
    tails = []
    for name, write in (("ours", write_npz), ("numpy", lambda fh, a: np.savez(fh, **a))):
        path = tmp_path / name
        with open(path, "wb") as fh:
            fh.seek(start)
            write(fh, arrays)
        with open(path, "rb") as fh:
            fh.seek(start)
            tails.append(fh.read())
    assert tails[0] == tails[1]
    assert b"PK\x06\x06" in tails[0] and b"PK\x06\x07" in tails[0]  # zip64 end record and locator
    with open(tmp_path / "ours", "rb") as fh:
        with zipfile.ZipFile(fh) as archive:
            assert archive.testzip() is None
            assert archive.infolist()[0].header_offset == start
        fh.seek(start)
        with np.load(fh, allow_pickle=False) as npz:
            np.testing.assert_array_equal(npz["layer0"], arrays["layer0"])


@pytest.mark.parametrize("limit", ["ZIP64_LIMIT", "ZIP_FILECOUNT_LIMIT"])
def test_zip64_past_zipfiles_size_and_count_limits(monkeypatch, limit):
    """Members over zipfile's size limit (their sizes and the directory's offset move into zip64
    fields), or more members than its count limit (zip64 end records): the limit is lowered, for
    numpy's zipfile and for us alike, as no test can hold a 2 GiB array or 65,536 of them."""
    monkeypatch.setattr(zipfile, limit, {"ZIP64_LIMIT": 100, "ZIP_FILECOUNT_LIMIT": 3}[limit])
    arrays = {f"layer{i}": np.arange(i * 10, dtype=np.float32) for i in range(5)}  # 128 to 288 bytes
    ours = _our_bytes(arrays)
    assert ours == _savez_bytes(arrays)
    assert b"PK\x06\x06" in ours
    monkeypatch.undo()
    _check_readable(ours, arrays)
    with zipfile.ZipFile(io.BytesIO(ours)) as archive:
        assert [i.file_size for i in archive.infolist()] == [128 + 4 * 10 * i for i in range(5)]


def test_the_crc_is_zlibs_without_isal(monkeypatch):
    """Where ISA-L is not installed zlib's CRC is taken: the same file."""
    with_isal = _our_bytes(FROM_MEMORY)
    monkeypatch.setattr(fileio, "_crc32", zlib.crc32)
    assert _our_bytes(FROM_MEMORY) == with_isal


def test_a_real_file_and_its_atomic_save(tmp_path):
    path = tmp_path / "features.npz"
    save_npz_atomic(path, FROM_MEMORY)
    np.savez(tmp_path / "numpy.npz", **FROM_MEMORY)
    assert path.read_bytes() == (tmp_path / "numpy.npz").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["features.npz", "numpy.npz"]


def test_a_bad_path_leaves_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        save_npz_atomic(tmp_path / "missing" / "features.npz", FROM_MEMORY)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), OSError(28, "No space left on device")], ids=repr)
def test_an_interrupted_write_leaves_nothing_and_keeps_the_old_file(tmp_path, monkeypatch, stop):
    """Stopped after the first member (Ctrl-C, a full disk): no file at the final path, no
    temporary left beside it, and an earlier file there untouched."""
    calls = []

    def crc32(data, value=0):
        calls.append(len(data))
        if len(calls) > 2:  # each member takes two: its .npy header, then its data
            raise stop
        return zlib.crc32(data, value)

    monkeypatch.setattr(fileio, "_crc32", crc32)
    fresh = tmp_path / "fresh.npz"
    with pytest.raises(type(stop)):
        save_npz_atomic(fresh, FROM_MEMORY)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.npz"
    old.write_bytes(b"earlier")
    calls.clear()
    with pytest.raises(type(stop)):
        save_npz_atomic(old, FROM_MEMORY)
    assert old.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir() if temporary_kind(p.name)] == []


# --------------------------------------------------------------------------- DirectFile


def _direct_bytes(path, arrays):
    with fileio.DirectFile(path) as fh:
        write_npz(fh, arrays)
    return path.read_bytes()


@pytest.mark.parametrize("chunk", [fileio.DIRECT_CHUNK, 2 * fileio.DIRECT_ALIGN])
def test_direct_writes_whatever_the_pieces(tmp_path, monkeypatch, chunk):
    """Members smaller than a block, one block exactly, many chunks and a ragged tail: np.savez's bytes."""
    monkeypatch.setattr(fileio, "DIRECT_CHUNK", chunk)
    align = fileio.DIRECT_ALIGN
    for size in (0, 1, align, align - 128, 3 * chunk, 3 * chunk + 5, 5 * 2**20 + 3):
        arrays = {"a": RNG.integers(0, 255, size, dtype=np.uint8), "b.c": np.arange(7, dtype=np.float32)}
        path = tmp_path / f"{size}.npz"
        path.touch()
        assert _direct_bytes(path, arrays) == _savez_bytes(arrays), size


def test_where_direct_writes_are_refused_the_page_cache_takes_them(tmp_path, monkeypatch):
    """O_DIRECT refused at open (tmpfs), at the first write (another alignment), or missing (not Linux)."""
    arrays = {"maps": RNG.standard_normal((3, 700, 800)).astype(np.float32)}  # 6.7 MB: two chunks and a tail
    expected = _savez_bytes(arrays)
    path = tmp_path / "f.npz"
    path.touch()
    real_write, refused = os.write, []

    def write(fd, data):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(len(data))
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    assert _direct_bytes(path, arrays) == expected
    assert len(refused) == 1  # then the rest went through the cache
    monkeypatch.undo()
    if os.path.isdir("/dev/shm"):  # tmpfs refuses O_DIRECT at open
        with tempfile.NamedTemporaryFile(dir="/dev/shm", suffix=".npz") as shm:
            assert _direct_bytes(Path(shm.name), arrays) == expected
    monkeypatch.delattr(os, "O_DIRECT")
    assert _direct_bytes(path, arrays) == expected


def test_a_failed_direct_write_is_raised(tmp_path, monkeypatch):
    """Errors other than a refusal (a full disk) reach the caller, and atomic_path removes the file."""
    def write(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(OSError, match="No space"):
        save_npz_atomic(tmp_path / "f.npz", FROM_MEMORY)
    assert list(tmp_path.iterdir()) == []
