"""Hostile bank, pipeline and model files, through the CLI: one `Error:` line, exit 1, no traceback.

The README's "What happens when..." table is the spec: syntax errors give the
file, line and column; bad kernels and fields are named; model files are never
unpickled and declared sizes are checked before anything is allocated.
"""

import io
import json
import os
import re
import struct
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn
from cnn_cli.fileio import NpzError, load_npz_arrays
from cnn_cli.filterbank import BankError, load_bank
from cnn_cli.modelfile import ModelError, load_model
from tinymodel import META, save_tiny_model


def _one_error_line(result):
    """The refusal contract: exit 1 and exactly one line on stderr, `Error: ...`."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("Error: "), lines[0]
    return lines[0]


def _refused_naming(tmp_path, img, option, path, expected):
    """``cnn apply img OPTION PATH`` refuses with one line naming the file and each of ``expected``, writing nothing."""
    out = tmp_path / "out"
    line = _one_error_line(cnn("apply", img, option, path, "-o", out))
    assert str(path) in line, line
    for part in expected:
        assert part in line, (part, line)
    assert not (out / "img").exists()


@pytest.fixture
def img(tmp_path):
    path = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
    return path


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------- bank files

K = '[[kernel]]\nname = "k"\n'

BAD_BANKS = {
    # case: (file text, substrings the one error line must hold besides the file name)
    "nan literal": (K + "values = [[1, nan], [3, 4]]\n", ["'k'", "values", "finite"]),
    "inf literal": (K + "values = [[1, 2], [inf, 4]]\n", ["'k'", "finite"]),
    "minus inf in outer": ('[[kernel]]\nname = "o"\nouter = [[1, -inf], [1, 1]]\n', ["'o'", "finite"]),
    "nan scale": (K + "values = [[1, 2]]\nscale = nan\n", ["'k'", "scale", "finite"]),
    "inf bias": (K + "values = [[1, 2]]\nbias = inf\n", ["'k'", "bias", "finite"]),
    "scale overflows to inf": (K + "values = [[1e308, 1]]\nscale = 1e10\n", ["'k'", "finite"]),
    "empty row": (K + "values = [[]]\n", ["'k'", "empty"]),
    "empty list": (K + "values = []\n", ["'k'", "values"]),
    "ragged rows": (K + "values = [[1, 2, 3], [4, 5]]\n", ["'k'", "values"]),
    "ragged 3-D": (K + "values = [[[1, 2], [3, 4]], [[1, 2]]]\n", ["'k'", "values"]),
    "4-D values": (K + "values = [[[[1]]]]\n", ["'k'", "values", "4-D"]),
    "strings in values": (K + 'values = [["a", "b"]]\n', ["'k'", "values"]),
    "unknown field": (K + 'values = [[1]]\ncolour = "red"\n', ["'k'", "colour"]),
    "unknown gaussian parameter": (K + "gaussian = { sigma = 1.0, radius = 3 }\n", ["'k'", "radius"]),
    "two sources": (K + "values = [[1]]\nlaws = \"E5L5\"\n", ["'k'", "values", "laws"]),
    "no source": (K + "scale = 2.0\n", ["'k'", "values"]),
    "sigma 1e9": (K + "gaussian = { sigma = 1e9 }\n", ["'k'", "gaussian", "255"]),
    "log sigma 1e9": (K + "log = { sigma = 1e9 }\n", ["'k'", "log", "255"]),
    "size 100001": (K + "gaussian = { sigma = 1.0, size = 100001 }\n", ["'k'", "100001", "255"]),
    "size 1e300": (K + "gaussian = { sigma = 1.0, size = 1e300 }\n", ["'k'", "size"]),
    "negative sigma": (K + "gaussian = { sigma = -1.0 }\n", ["'k'", "sigma"]),
    "sigma inf": (K + "gaussian = { sigma = inf }\n", ["'k'", "sigma"]),
    "sigma nan": (K + "log = { sigma = nan }\n", ["'k'", "sigma"]),
    "tiny gabor frequency": (K + "gabor = { frequency = 1e-9 }\n", ["'k'", "gabor", "255"]),
    "huge gabor sigma_x": (K + "gabor = { frequency = 0.2, sigma_x = 1e9 }\n", ["'k'", "gabor", "255"]),
    "values 300 wide": (K + "values = [[" + ", ".join(["1"] * 300) + "]]\n", ["'k'", "300", "255"]),
    "gaussian not a table": (K + "gaussian = 2.0\n", ["'k'", "gaussian"]),
    "kernel not a table array": ('kernel = 3\n', ["[[kernel]]"]),
    "name missing": ("[[kernel]]\nvalues = [[1]]\n", ["kernel 1", "name"]),
    "duplicate names": (K + "values = [[1]]\n" + K + "values = [[2]]\n", ["'k'", "unique"]),
    "weights file missing": ('[weights]\nfile = "nope.npz"\nkey = "w"\n', ["nope.npz"]),
    "weights not a table": ("weights = 3\n", ["[weights]"]),
}


@pytest.mark.parametrize("case", list(BAD_BANKS))
def test_bad_bank_file_gives_one_line_naming_file_kernel_and_field(tmp_path, img, case):
    text, expected = BAD_BANKS[case]
    bank = _write(tmp_path, "bad.toml", text)
    _refused_naming(tmp_path, img, "--bank", bank, expected)


def test_three_dimensional_kernel_with_the_wrong_channel_count(tmp_path, img):
    bank = _write(tmp_path, "two_channel.toml", K + "values = [[[1, 0], [0, 1]], [[0, 1], [1, 0]]]\n")
    for color in ("gray", "rgb"):
        line = _one_error_line(cnn("apply", img, "--bank", bank, "--color", color, "-o", tmp_path / "out"))
        assert "'k'" in line and "2 input channels" in line and "two_channel" in line, line


@pytest.mark.parametrize("text, line_no", [
    ('description = "x"\n' + K + "values = [[1, 2], [3, 4]]\nscale = = 2\n", 5),
    (K + 'values = [[1, 2], [3, 4]]\n\n[[kernel]]\nname = "unterminated\nvalues = [[1]]\n', 6),
    (K + "values = [[1, 2] [3, 4]]\n", 3),
    ('kind = "bank"\n\n\n' + K + "values = [[1, 2], [3, 4]]\nzero_mean = maybe\n", 7),
])
def test_bank_syntax_error_gives_file_line_and_column(tmp_path, img, text, line_no):
    bank = _write(tmp_path, "syntax.toml", text)
    line = _one_error_line(cnn("apply", img, "--bank", bank, "-o", tmp_path / "out"))
    assert str(bank) in line, line
    assert f"line {line_no}" in line and "column" in line, line


def test_bank_file_that_is_binary_or_a_folder(tmp_path, img):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00\x01" * 50)
    line = _one_error_line(cnn("apply", img, "--bank", binary, "-o", tmp_path / "out"))
    assert "binary.toml" in line and "UTF-8" in line, line
    folder = tmp_path / "folder.toml"
    folder.mkdir()
    line = _one_error_line(cnn("apply", img, "--bank", folder, "-o", tmp_path / "out"))
    assert "folder.toml" in line, line


def test_huge_gabor_bandwidth_is_refused(tmp_path, img):
    bank = _write(tmp_path, "bw.toml", K + "gabor = { frequency = 0.2, bandwidth = 1e9 }\n")
    line = _one_error_line(cnn("apply", img, "--bank", bank, "-o", tmp_path / "out"))
    assert "'k'" in line and "gabor" in line and "bandwidth" in line, line


@pytest.mark.parametrize("source", ["gaussian = { sigma = 1e308 }",
                                    "log = { sigma = 1.1e308 }",
                                    "gabor = { frequency = 0.2, sigma_x = 1e308 }"])
def test_huge_kernel_parameters_are_refused_not_a_crash(tmp_path, img, source):
    bank = _write(tmp_path, "huge.toml", K + source + "\n")
    line = _one_error_line(cnn("apply", img, "--bank", bank, "-o", tmp_path / "out"))
    assert "'k'" in line and source.split(" =")[0] in line, line


@pytest.mark.parametrize("source", ["gaussian = {}", "log = { size = 5 }"])
def test_gaussian_or_log_without_sigma_is_refused(tmp_path, img, source):
    bank = _write(tmp_path, "nosigma.toml", K + source + "\n")
    line = _one_error_line(cnn("apply", img, "--bank", bank, "-o", tmp_path / "out"))
    assert "'k'" in line and "sigma" in line, line


def test_fractional_kernel_size_is_refused(tmp_path):
    bank = _write(tmp_path, "frac.toml", K + "gaussian = { sigma = 1.0, size = 3.5 }\n")
    with pytest.raises(BankError, match="size"):
        load_bank(str(bank))


def test_zero_mean_must_be_a_boolean(tmp_path):
    bank = _write(tmp_path, "zm.toml", K + 'values = [[1, 2], [3, 4]]\nzero_mean = "false"\n')
    with pytest.raises(BankError, match="zero_mean"):
        load_bank(str(bank))


# ----------------------------------------------------------------- pipeline files

CONV = '[[layer]]\ntype = "conv"\nbanks = ["edges:sobel_*"]\n'

BAD_PIPELINES = {
    "unknown layer type": (CONV + '[[layer]]\ntype = "transformer"\n', ["layer 1", "transformer", "type"]),
    "layer without type": (CONV + "[[layer]]\nkernel_size = 2\n", ["layer 1", "type"]),
    "unknown field": (CONV + '[[layer]]\ntype = "maxpool"\nkernel_size = 2\nsize = 3\n',
                      ["layer 1", "size", "maxpool"]),
    "unknown conv field": ('[[layer]]\ntype = "conv"\nbanks = ["edges"]\nfilters = 3\n', ["layer 0", "filters"]),
    "corner response on 2 channels": (CONV + '[[layer]]\ntype = "corner_response"\n',
                                      ["layer 1", "corner_response", "3 channels", "2"]),
    "products of 41 channels": ('[[layer]]\ntype = "conv"\nbanks = ["textures"]\n[[layer]]\ntype = "products"\n',
                                ["layer 1", "products", "41"]),
    "colour kernels on grey": ('[[layer]]\ntype = "conv"\nbanks = ["color"]\n', ["layer 0", "3 input channels"]),
    "pool size 0": (CONV + '[[layer]]\ntype = "maxpool"\nkernel_size = 0\n', ["layer 1", "kernel_size"]),
    "pool size as string": (CONV + '[[layer]]\ntype = "avgpool"\nkernel_size = "2"\n', ["layer 1", "kernel_size"]),
    "pool negative padding": (CONV + '[[layer]]\ntype = "maxpool"\nkernel_size = 2\npadding = -1\n',
                              ["layer 1", "padding"]),
    "conv mode bogus": ('[[layer]]\ntype = "conv"\nbanks = ["edges"]\nmode = "bogus"\n', ["layer 0", "mode"]),
    "conv banks not a list": ('[[layer]]\ntype = "conv"\nbanks = "edges"\n', ["layer 0", "banks"]),
    "conv unknown bank": ('[[layer]]\ntype = "conv"\nbanks = ["no_such_bank"]\n', ["layer 0", "no_such_bank"]),
    "bad bank inside": ('[[layer]]\ntype = "conv"\nbanks = ["inner.toml"]\n', ["layer 0", "inner.toml", "'k'"]),
    "learned layer in a pipeline": ('kind = "pipeline"\n' + CONV + '[[layer]]\ntype = "flatten"\n',
                                    ["layer 1", "flatten"]),
    "architecture given as a pipeline": (CONV + '[[layer]]\ntype = "flatten"\n', ["architecture"]),
    "bank given as a pipeline": (K + "values = [[1]]\n", ["bank"]),
    "normalize method bogus": (CONV + '[[layer]]\ntype = "normalize"\nmethod = "bogus"\n', ["layer 1", "method"]),
    "no layers": ('kind = "pipeline"\n', ["[[layer]]"]),
    "layer not a table": ("layer = [1, 2]\n", ["layer 0", "table"]),
    "syntax error": (CONV + '[[layer]]\ntype = "abs"\nslope = \n', ["line 6", "column"]),
}


@pytest.mark.parametrize("case", list(BAD_PIPELINES))
def test_bad_pipeline_file_gives_one_line_naming_file_and_layer(tmp_path, img, case):
    text, expected = BAD_PIPELINES[case]
    _write(tmp_path, "inner.toml", K + "values = [[1, nan]]\n")
    pipe = _write(tmp_path, "bad_pipe.toml", text)
    _refused_naming(tmp_path, img, "--pipeline", pipe, expected)


@pytest.mark.parametrize("field", ["stride = 0", 'padding = "bogus"', 'padding_mode = "bogus"',
                                   "padding = -3", "dilation = 0"])
def test_bad_conv_option_is_reported_once_naming_file_and_layer(tmp_path, img, field):
    pipe = _write(tmp_path, "opts.toml", CONV + field + "\n")
    other = tmp_path / "other.png"
    other.write_bytes(img.read_bytes())
    line = _one_error_line(cnn("apply", img, other, "--pipeline", pipe, "-o", tmp_path / "out"))
    assert str(pipe) in line and "layer 0" in line and field.split(" =")[0] in line, line


def test_info_on_a_pipeline_file(tmp_path):
    from cnn_cli.filterbank import builtin_dir

    pipe = tmp_path / "my_harris.toml"
    pipe.write_text((builtin_dir() / "harris.toml").read_text())
    result = cnn("info", pipe, "--size", "64")
    assert result.exit_code == 0, result.output
    assert "corner_response" in result.stdout


def test_info_on_a_bad_pipeline_name_is_one_line(tmp_path):
    line = _one_error_line(cnn("info", "no_such_pipeline"))
    assert "no_such_pipeline" in line


# ----------------------------------------------------------------- model files

@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model") / "good.npz")


def _arrays(path):
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def _savez(path, arrays):
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def _meta_bytes(meta):
    return np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)


def _npy_member(header_dict_text, payload=b""):
    """A .npy file by hand: magic, version 1.0, padded header text, then ``payload``."""
    text = header_dict_text
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1") + payload


def _zip_with(path, arrays, replace):
    """An npz holding ``arrays``, with the raw member bytes of ``replace`` (name -> bytes) swapped in."""
    with zipfile.ZipFile(path, "w") as z:
        for key, value in arrays.items():
            if key in replace:
                z.writestr(key + ".npy", replace[key])
            else:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, value, allow_pickle=False)
                z.writestr(key + ".npy", buf.getvalue())
    return path


def _check_refused(path, *parts, img):
    """load_model raises ModelError, and both `cnn predict` and `cnn info` print one line, exit 1."""
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert path.name in message, message
    for part in parts:
        assert part in message, (part, message)
    for args in (["predict", img, "--model", path], ["info", path]):
        line = _one_error_line(cnn(*args))
        assert path.name in line, line
        for part in parts:
            assert part in line, (part, line)
    return message


class _Booby:
    """Unpickling this creates a marker folder: proof that a pickle was loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("where", ["0.weight", "__meta__", "extra"])
def test_pickled_arrays_are_never_loaded(tmp_path, good_model, img, where):
    marker = tmp_path / "UNPICKLED"
    arrays = _arrays(good_model)
    arrays[where] = np.array([_Booby(marker), {}], dtype=object)
    path = _savez(tmp_path / "pickled.npz", arrays)
    _check_refused(path, "objects", img=img)
    assert not marker.exists(), "a pickle inside the model file was executed"


def test_40_gb_declared_member_is_refused_before_allocating(tmp_path, good_model, img):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (100000, 100000), }"
    member = _npy_member(header)
    member += b"\x00" * (100 - len(member)) if len(member) < 100 else b""
    assert len(member) <= 128
    path = _zip_with(tmp_path / "bomb.npz", _arrays(good_model), {"0.weight": member})
    start = time.perf_counter()
    _check_refused(path, "0.weight", "40000000000", img=img)
    assert time.perf_counter() - start < 3
    child = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                           timeout=120)
    report = json.loads(child.stdout)
    assert report["error"] == "ModelError" and report["growth_mb"] < 100, report


def test_member_declaring_more_than_it_stores_is_refused(tmp_path, good_model, img):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 3, 3), }"
    path = _zip_with(tmp_path / "short.npz", _arrays(good_model), {"0.weight": _npy_member(header, b"\x00" * 8)})
    _check_refused(path, "0.weight", img=img)


@pytest.mark.parametrize("shape", [(2**32, 2**32), (2**62 + 1, 4)])
def test_declared_size_that_overflows_int64_is_refused_as_a_model_error(tmp_path, good_model, img, shape):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %r, }" % (shape,)
    path = _zip_with(tmp_path / "overflow.npz", _arrays(good_model), {"0.weight": _npy_member(header, b"\0" * 16)})
    _check_refused(path, "0.weight", img=img)


@pytest.mark.parametrize("header", ["{'descr': '<f4', 'fortran_order': False, 'shape': )2,), }",
                                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,, }"])
def test_npy_header_that_is_not_python_syntax_is_a_model_error(tmp_path, good_model, img, header):
    path = _zip_with(tmp_path / "syntax.npz", _arrays(good_model), {"0.bias": _npy_member(header, b"\0" * 8)})
    _check_refused(path, "0.bias", img=img)


@pytest.mark.parametrize("header", ["{'descr': '<f9', 'fortran_order': False, 'shape': (2,), }",
                                    "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }",
                                    "['not', 'a', 'dict']",
                                    "{'descr': [('a', '<f4', (100000, 100000))], 'fortran_order': False, 'shape': (2,), }",
                                    "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}"])
def test_npy_header_with_bad_fields_is_a_model_error(tmp_path, good_model, img, header):
    path = _zip_with(tmp_path / "fields.npz", _arrays(good_model), {"0.bias": _npy_member(header, b"\0" * 8)})
    _check_refused(path, "0.bias", img=img)


def _patch_central_entry(data, member, offset, fmt, value):
    """Overwrite a field of ``member``'s central-directory entry in zip bytes ``data``."""
    data = bytearray(data)
    i = data.index(b"PK\x01\x02")
    while data[i + 46:i + 46 + struct.unpack("<H", data[i + 28:i + 30])[0]] != member:
        i = data.index(b"PK\x01\x02", i + 4)
    data[i + offset:i + offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    return bytes(data)


@pytest.mark.parametrize("field, offset, value", [("version needed 10.9", 6, 0x6D), ("encrypted flag", 8, 1),
                                                  ("compression method 99", 10, 99)])
def test_zip_features_we_cannot_read_are_a_model_error(tmp_path, good_model, img, field, offset, value):
    path = tmp_path / "zipfeature.npz"
    path.write_bytes(_patch_central_entry(good_model.read_bytes(), b"0.bias.npy", offset, "<H", value))
    _check_refused(path, img=img)


def test_compressed_member_cannot_inflate_memory(tmp_path, good_model):
    """A member may compress well (sparse weights do), but a model file may declare no more
    than its architecture can use: 128 MB for a model of 86 parameters is refused unread."""
    declared = (32, 1024, 1024)  # 128 MB of float32 zeros, about 125 KB once deflated
    path = tmp_path / "zipbomb.npz"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, value in _arrays(good_model).items():
            if key != "0.weight":
                member = io.BytesIO()
                np.lib.format.write_array(member, value)
                z.writestr(key + ".npy", member.getvalue())
        with z.open("0.weight.npy", "w", force_zip64=True) as fh:  # streamed: the test never holds 128 MB
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": declared})
            chunk = bytes(2**20)
            for _ in range(128):
                fh.write(chunk)
    assert path.stat().st_size < 2_000_000
    child = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert report["error"] == "ModelError" and "more than it can need" in report["message"], report
    assert report["growth_mb"] < 20, report
    with pytest.raises(NpzError, match="more than 1,048,576 bytes"):
        load_npz_arrays(path, max_bytes=2**20)


# Loads a model with cnn_cli.modelfile in a fresh process and reports the peak memory it took.
MEMORY_PROBE = """
import json, resource, sys
from cnn_cli.modelfile import load_model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
error = message = None
try:
    load_model(sys.argv[1])
except Exception as exc:
    error, message = type(exc).__name__, str(exc)
growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps({"error": error, "message": message, "growth_mb": growth}))
"""


def test_negative_declared_shape_is_refused(tmp_path, good_model, img):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 4), }"
    path = _zip_with(tmp_path / "negative.npz", _arrays(good_model), {"0.weight": _npy_member(header, b"\0" * 16)})
    _check_refused(path, "0.weight", img=img)


@pytest.mark.parametrize("fraction", [0.0, 0.05, 0.3, 0.5, 0.8, 0.97, 0.999])
def test_truncated_model_is_refused(tmp_path, good_model, img, fraction):
    data = good_model.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[:int(len(data) * fraction)])
    _check_refused(path, img=img)


def test_model_with_a_damaged_member_is_refused(tmp_path, good_model, img):
    data = bytearray(good_model.read_bytes())
    start = data.index(b"__meta__.npy") + 200  # inside the stored JSON: the CRC no longer matches
    data[start:start + 4] = b"XXXX"
    path = tmp_path / "crc.npz"
    path.write_bytes(bytes(data))
    _check_refused(path, img=img)


@pytest.mark.parametrize("name, content", [
    ("garbage.npz", np.random.default_rng(0).bytes(3000)),
    ("empty.npz", b""),
    ("text.npz", b"this is a model, trust me\n"),
    ("png.npz", b"\x89PNG\r\n\x1a\n" + b"\0" * 100),
])
def test_garbage_model_file_is_refused(tmp_path, img, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    _check_refused(path, img=img)


def test_model_that_is_missing_or_a_folder(tmp_path, img):
    _check_refused(tmp_path / "missing.npz", img=img)
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    _check_refused(folder, img=img)


def _variant(tmp_path, good_model, name, edit):
    arrays = _arrays(good_model)
    edit(arrays)
    return _savez(tmp_path / name, arrays)


def _set_meta(**changes):
    def edit(arrays):
        meta = json.loads(arrays["__meta__"].tobytes())
        for key, value in changes.items():
            if value is None:
                meta.pop(key, None)
            else:
                meta[key] = value
        arrays["__meta__"] = _meta_bytes(meta)
    return edit


def _set(key, value):
    def edit(arrays):
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    return edit


def _nan_weight(arrays):
    w = arrays["4.weight"].copy()
    w[1, 3] = np.nan
    arrays["4.weight"] = w


def _inf_bias(arrays):
    arrays["0.bias"] = np.array([0.0, np.inf], np.float32)


MODEL_CASES = {
    "no meta": (_set("__meta__", None), ["__meta__"]),
    "plain npz of weights only": (lambda a: [a.pop(k) for k in list(a) if k != "0.weight"], ["__meta__"]),
    "format version 2": (_set_meta(format_version=2), ["version", "2"]),
    "format version as text": (_set_meta(format_version="1"), ["version"]),
    "format version missing": (_set_meta(format_version=None), ["version"]),
    "another format": (_set_meta(format="keras"), ["not a cnn model"]),
    "meta not json": (_set("__meta__", np.frombuffer(b"{not json", np.uint8)), ["metadata"]),
    "meta not utf-8": (_set("__meta__", np.frombuffer(b"\xff\xfe{}", np.uint8)), ["metadata"]),
    "meta a json list": (_set("__meta__", np.frombuffer(b"[1, 2]", np.uint8)), ["not a cnn model"]),
    "no classes": (_set_meta(classes=None), ["classes"]),
    "no architecture": (_set_meta(architecture=None), ["architecture"]),
    "wrong shape": (_set("0.weight", np.zeros((3, 1, 3, 3), np.float32)), ["0.weight", "(3, 1, 3, 3)"]),
    "wrong rank": (_set("0.bias", np.zeros((2, 1), np.float32)), ["0.bias"]),
    "missing weight": (_set("4.bias", None), ["4.bias"]),
    "unexpected weight": (_set("9.weight", np.zeros(3, np.float32)), ["9.weight"]),
    "nan weight": (_nan_weight, ["4.weight", "NaN"]),
    "inf bias": (_inf_bias, ["0.bias"]),
    "unknown layer type": (_set_meta(architecture={"name": "x", "layers": [{"type": "transformer"}]}),
                           ["transformer"]),
    "image size 0": (_set_meta(preprocessing={**META["preprocessing"], "image_size": 0}), []),
    "absurd image size": (_set_meta(preprocessing={**META["preprocessing"], "image_size": 10**6}), []),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_inconsistent_model_file_is_refused(tmp_path, good_model, img, case):
    edit, parts = MODEL_CASES[case]
    path = _variant(tmp_path, good_model, "bad.npz", edit)
    _check_refused(path, *parts, img=img)


def test_the_good_model_itself_works(good_model, img):
    for args in (["predict", img, "--model", good_model], ["info", good_model]):
        result = cnn(*args)
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("dtype", ["complex64", "U8", "bool"])
def test_weights_that_are_not_real_floats_are_refused(tmp_path, good_model, img, dtype):
    arrays = _arrays(good_model)
    arrays["0.weight"] = arrays["0.weight"].astype(dtype)
    path = _savez(tmp_path / "dtype.npz", arrays)
    _check_refused(path, "0.weight", img=img)


@pytest.mark.parametrize("change", [{"mean": []}, {"color": "cmyk"}, {"std": [0.0]}, {"std": [-1.0]}])
def test_model_with_impossible_preprocessing_is_refused(tmp_path, good_model, img, change):
    path = _variant(tmp_path, good_model, "pre.npz",
                    _set_meta(preprocessing={**META["preprocessing"], **change}))
    _check_refused(path, "preprocessing", img=img)


def test_checkpoint_given_as_a_model_and_model_given_to_resume(tmp_path, good_model, img):
    """--resume needs a checkpoint; a finished model is refused with one line."""
    data = tmp_path / "data"
    for c in ("cat", "dog"):
        for i in range(3):
            p = data / c / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((12, 12), 40 * i, np.uint8)).save(p)
    line = _one_error_line(cnn("train", data, "-o", tmp_path / "new.npz", "--resume", good_model))
    assert good_model.name in line and "checkpoint" in line, line


def test_model_file_named_like_the_input_is_not_reinterpreted(tmp_path, img):
    """An image given as --model is refused as a model file, not read as an image."""
    path = tmp_path / "photo.npz"
    path.write_bytes(img.read_bytes())
    _check_refused(path, img=img)
    assert re.search(r"zip|npz", str(pytest.raises(ModelError, load_model, path).value))


def test_degenerate_kernel_refusal_is_one_line_in_a_real_process(tmp_path, img):
    import subprocess
    import sys

    bank = _write(tmp_path, "tiny.toml", K + "gaussian = { sigma = 1e-300 }\n")
    proc = subprocess.run([sys.executable, "-m", "cnn_cli", "apply", str(img), "--bank", str(bank),
                           "-o", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "tiny.toml" in lines[0], proc.stderr


def test_write_npz_writes_what_np_savez_writes():
    """The same members, CRCs and bytes as ``np.savez``, for the arrays it writes from memory and the rest."""
    from cnn_cli.fileio import write_npz

    rng = np.random.default_rng(0)
    arrays = {"maps": rng.standard_normal((3, 4, 5)).astype(np.float32), "half": np.ones((2, 7), np.float16),
              "fortran": np.asfortranarray(rng.standard_normal((5, 6))), "strided": rng.standard_normal((6, 6))[::2],
              "scalar": np.float64(3.5), "zero_d": np.array(7), "empty": np.zeros((0, 3), np.float32),
              "text": np.array(["ab", "c"]), "big_endian": np.arange(5, dtype=">i4"), "list": [1, 2, 3],
              "dates": np.array(["2020-01-01"], "M8[D]"), "record": np.zeros(2, [("x", "<f4"), ("y", "<i2")])}
    ours, numpys = io.BytesIO(), io.BytesIO()
    write_npz(ours, arrays)
    np.savez(numpys, **arrays)
    with zipfile.ZipFile(ours) as a, zipfile.ZipFile(numpys) as b:
        assert [(i.filename, i.file_size, i.CRC) for i in a.infolist()] == \
            [(i.filename, i.file_size, i.CRC) for i in b.infolist()]
        for name in a.namelist():
            assert a.read(name) == b.read(name), name
    loaded = _loaded(ours)
    np.testing.assert_array_equal(loaded["maps"], arrays["maps"])


def _loaded(buffer):
    with np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}
