"""Property-based fuzzing of every parser and of the engine's argument checks.

Each property allows exactly two outcomes: a well-formed result, or the
module's own error type (``ImageError``, ``SpecFileError``, ``ModelError``,
``ValueError``). Anything else, a crash of another type, a non-finite or
out-of-range result, or a hang, is a bug.
"""

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from cnn_cli import functional as F
from cnn_cli.filterbank import MAX_KERNEL_SIDE, load_bank
from cnn_cli.imageio import ImageError, read_image
from cnn_cli.modelfile import ModelError, ModelMeta, load_model
from cnn_cli.specfile import SpecFileError
from tinymodel import save_tiny_model

FUZZ = settings(max_examples=80, deadline=3000,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


# ----------------------------------------------------------------- mutations


@st.composite
def mutated(draw, base):
    """``base`` bytes with a few flips, insertions, deletions and perhaps a truncation."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "dup"]))
        if not data:
            data += draw(st.binary(min_size=1, max_size=8))
            continue
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE]))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 32))]
        elif kind == "dup":
            end = min(len(data), pos + draw(st.integers(1, 64)))
            data[pos:pos] = data[pos:end]
        else:
            del data[pos:]
    return bytes(data)


# ----------------------------------------------------------------- images


def _encode(fmt, array, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


_rng = np.random.default_rng(0)
_gray = (np.add.outer(np.arange(16), np.arange(16)) * 8).astype(np.uint8)
_rgb = _rng.integers(0, 256, (12, 14, 3), dtype=np.uint8)
_exif = Image.Exif()
_exif[0x0112] = 6
IMAGE_SEEDS = {
    "png_gray": _encode("PNG", _gray),
    "png_rgba": _encode("PNG", np.dstack([_rgb, _rgb[..., :1]])),
    "png_16bit": _encode("PNG", (_gray.astype(np.uint16) * 257)),
    "png_palette": _encode("PNG", _rgb, optimize=True) if False else
    (lambda b: (Image.fromarray(_rgb).convert("P").save(b, format="PNG"), b.getvalue())[1])(io.BytesIO()),
    "jpeg": _encode("JPEG", _rgb, quality=80),
    "jpeg_exif": (lambda b: (Image.fromarray(_gray).save(b, format="JPEG", exif=_exif), b.getvalue())[1])(io.BytesIO()),
    "gif": _encode("GIF", _gray),
    "gif_anim": (lambda b: (Image.fromarray(_gray).save(b, format="GIF", save_all=True,
                                                        append_images=[Image.fromarray(255 - _gray)]),
                            b.getvalue())[1])(io.BytesIO()),
}


@FUZZ
@given(data=st.data(), color=st.sampled_from(["gray", "rgb"]))
def test_mutated_images_decode_or_raise_image_error(tmp_path, data, color):
    name = data.draw(st.sampled_from(sorted(IMAGE_SEEDS)), label="seed")
    blob = data.draw(mutated(IMAGE_SEEDS[name]), label="bytes")
    path = tmp_path / "fuzz.img"
    path.write_bytes(blob)
    try:
        img = read_image(path, color=color, max_pixels=2_000_000)
    except ImageError as exc:
        assert str(path) in str(exc)
        event("ImageError")
        return
    event("decoded")
    assert isinstance(img, np.ndarray) and img.dtype == np.float32 and img.ndim == 3
    assert img.shape[0] == (1 if color == "gray" else 3) and img.shape[1] >= 1 and img.shape[2] >= 1
    assert np.all(np.isfinite(img)), "non-finite pixels"
    assert img.min() >= 0 and img.max() <= 1, (img.min(), img.max())


# ----------------------------------------------------------------- bank files

BANK_SEED = """\
kind = "bank"
description = "fuzz seed"

[[kernel]]
name = "sobel_x"
values = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
scale = 0.25

[[kernel]]
name = "rgb"
values = [[[1, 0], [0, -1]], [[0, 1], [-1, 0]], [[1, 1], [-1, -1]]]

[[kernel]]
name = "sep"
outer = [[1, 2, 1], [-1, 0, 1]]
zero_mean = true

[[kernel]]
name = "blob"
log = { sigma = 1.5 }
bias = 0.5

[[kernel]]
name = "g"
gaussian = { sigma = 1.0, size = 5 }

[[kernel]]
name = "gab"
gabor = { frequency = 0.25, theta = 30, phase = "odd", bandwidth = 1.0 }

[[kernel]]
name = "laws"
laws = "E5L5"
"""

TOKENS = ["nan", "inf", "-inf", "1e308", "1e-308", "-1", "0", "0.0", "999999", "1e9", "[]", "[[", "]]",
          "[", "]", "{", "}", ",", "=", '"', "\n", " ", "true", "false", "size = 1000001", "sigma = 0",
          "values = [[1]]", "[[kernel]]", 'name = "x"', "3.5", "-0", "2", "e", "."]


@st.composite
def mutated_text(draw, base):
    text = base
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["token", "delete", "replace_number", "char"]))
        if kind == "token":
            text = text[:pos] + draw(st.sampled_from(TOKENS)) + text[pos:]
        elif kind == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 12)):]
        elif kind == "char":
            text = text[:pos] + draw(st.characters(codec="utf-8", exclude_categories=("Cs",))) + text[pos + 1:]
        else:
            numbers = [i for i, ch in enumerate(text) if ch.isdigit()]
            if numbers:
                i = draw(st.sampled_from(numbers))
                text = text[:i] + draw(st.sampled_from(["nan", "1e308", "-9", "0", "1e-320", "65537"])) + text[i + 1:]
    return text


def _check_bank(bank):
    assert bank.kernels
    for k in bank.kernels:
        w = k.weights
        assert isinstance(w, np.ndarray) and w.ndim in (2, 3) and 0 not in w.shape, (k.name, w.shape)
        assert max(w.shape[-2:]) <= MAX_KERNEL_SIDE
        assert np.all(np.isfinite(w)), k.name
        assert math.isfinite(k.bias)


@FUZZ
@given(text=mutated_text(BANK_SEED))
def test_mutated_bank_loads_finite_kernels_or_raises_spec_file_error(tmp_path, text):
    path = tmp_path / "fuzz_bank.toml"
    path.write_text(text, encoding="utf-8")
    try:
        bank = load_bank(str(path))
    except SpecFileError as exc:
        assert str(path) in str(exc) or "no bank named" in str(exc), str(exc)
        event("SpecFileError")
        return
    _check_bank(bank)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"


numbers = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, 3, 5, 255, 256, 257, 1e-300, 1e300, -1.0]))
scalars = st.one_of(numbers, st.booleans(), st.text(max_size=6))
matrices = st.one_of(
    st.lists(st.lists(numbers, min_size=0, max_size=4), min_size=0, max_size=4),
    st.lists(st.lists(st.lists(numbers, max_size=3), max_size=3), max_size=3),
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=10),
)
params = st.dictionaries(st.sampled_from(["sigma", "size", "frequency", "theta", "sigma_x", "sigma_y",
                                          "bandwidth", "phase", "radius"]),
                         st.one_of(numbers, st.sampled_from(["even", "odd", "both"])), max_size=4)


@st.composite
def kernel_tables(draw):
    table = {"name": draw(st.one_of(st.text(min_size=1, max_size=8), st.just("k"), st.integers()))}
    for source in draw(st.lists(st.sampled_from(["values", "outer", "gaussian", "log", "gabor", "laws"]),
                                min_size=0, max_size=2, unique=True)):
        table[source] = draw({"values": matrices, "outer": matrices, "laws": st.one_of(
            st.sampled_from(["E5L5", "L5L5", "Q5L5", "E5", ""]), numbers)}.get(source, params))
    for extra in draw(st.lists(st.sampled_from(["scale", "bias", "zero_mean", "colour"]), max_size=2, unique=True)):
        table[extra] = draw(scalars)
    return table


@FUZZ
@given(kernels=st.lists(kernel_tables(), min_size=1, max_size=3))
def test_generated_bank_loads_finite_kernels_or_raises_spec_file_error(tmp_path, kernels):
    lines = []
    for table in kernels:
        lines.append("[[kernel]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    path = tmp_path / "gen_bank.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        bank = load_bank(str(path))
    except SpecFileError:
        event("SpecFileError")
        return
    _check_bank(bank)


# ----------------------------------------------------------------- model files

@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("fuzzmodel") / "m.npz").read_bytes()


@pytest.fixture(scope="module")
def model_members(model_bytes):
    with zipfile.ZipFile(io.BytesIO(model_bytes)) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def _check_load(path):
    try:
        network, meta, extra = load_model(path)
    except ModelError as exc:
        assert Path(path).name in str(exc), str(exc)
        event("ModelError")
        return
    event("loaded")
    assert isinstance(meta, ModelMeta)
    for name, arr in network.state_dict().items():
        assert np.all(np.isfinite(arr)), name


@FUZZ
@given(data=st.data())
def test_mutated_model_bytes_load_or_raise_model_error(tmp_path, model_bytes, data):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(data.draw(mutated(model_bytes), label="bytes"))
    _check_load(path)


@FUZZ
@given(data=st.data())
def test_mutated_model_members_with_valid_crcs_load_or_raise_model_error(tmp_path, model_members, data):
    """Mutate one member (the JSON metadata or an .npy header/body) and re-zip, so the CRCs pass."""
    name = data.draw(st.sampled_from(sorted(model_members)), label="member")
    member = model_members[name]
    if name == "__meta__.npy":
        header_len = 10 + int.from_bytes(member[8:10], "little")
        text = member[header_len:].decode("utf-8")
        new_text = data.draw(mutated_text(text), label="meta")
        payload = new_text.encode("utf-8")
        arr = np.frombuffer(payload, np.uint8)
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr)
        new_member = buf.getvalue()
    else:
        new_member = data.draw(mutated(member), label="npy")
    path = tmp_path / "fuzz_members.npz"
    with zipfile.ZipFile(path, "w") as z:
        for key, value in model_members.items():
            z.writestr(key, new_member if key == name else value)
    _check_load(path)


# ----------------------------------------------------------------- the engine's arguments

DTYPES = ["float32", "float64", "float16", "int32", "uint8", "bool", "complex64", "object", "U3",
          "datetime64[s]"]
REAL = ["float32", "float64", "float16", "int32", "uint8", "bool"]
ints = st.one_of(st.integers(-3, 9), st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1]))
weird = st.one_of(st.none(), st.floats(allow_nan=True), st.text(max_size=4), st.booleans(),
                  st.tuples(ints, ints, ints), st.lists(ints, max_size=3), st.just(np.int64(2)))
int_or_pair = st.one_of(ints, st.tuples(ints, ints), weird)
# Padding is kept small: a padding of 2**31 on one side asks for a 16 GB array (see the report).
small_pad = st.one_of(st.integers(-3, 8), st.tuples(st.integers(-2, 8), st.integers(-2, 8)),
                      st.sampled_from(["same", "valid", "bogus", "SAME"]), weird)
plausible_pair = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))
plausible_pad = st.one_of(st.integers(0, 2), st.tuples(st.integers(0, 2), st.integers(0, 2)),
                          st.sampled_from(["same", "valid"]))


@st.composite
def arrays(draw, ndim_hint, shape_hint=None, plausible=False):
    if shape_hint is not None and (plausible or draw(st.booleans())):
        shape = shape_hint
    else:
        ndim = draw(st.one_of(st.just(ndim_hint), st.integers(0, 5)))
        shape = tuple(draw(st.lists(st.integers(0, 7), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from(REAL if plausible else DTYPES[:2] * 4 + DTYPES))
    size = int(np.prod(shape))
    if dtype == "object":
        return np.array([object()] * size, dtype=object).reshape(shape)
    if dtype == "U3":
        return np.full(shape, "1.5", dtype="U3")
    if dtype.startswith("datetime"):
        return np.zeros(shape, dtype=dtype)
    element = st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([np.nan, np.inf, -np.inf]))
    values = (draw(st.lists(element, min_size=size, max_size=size)) if size <= 64
              else np.linspace(-2, 2, size))
    with np.errstate(over="ignore", invalid="ignore"):
        return np.array(values, dtype=np.float64).reshape(shape).astype(dtype)


def _check_result(result):
    outputs = result if isinstance(result, tuple) else (result,)
    for out in outputs:
        if out is None:
            continue
        assert isinstance(out, np.ndarray) and out.dtype == np.float32, type(out)
        assert out.flags.c_contiguous


@pytest.fixture(scope="module")
def warm_engine():
    """Run every kernel once before the timed examples: after a change to the kernels, Numba
    recompiles on first use, which takes seconds and would trip Hypothesis's deadline."""
    x = np.random.default_rng(0).standard_normal((2, 4, 12, 12)).astype(np.float32)
    for algorithm in ("direct", "im2col", "fft"):
        for groups, stride, dilation in ((1, 1, 1), (2, 2, 2), (4, 1, 1)):
            w = np.ones((4, 4 // groups, 3, 3), np.float32)
            kw = dict(stride=stride, dilation=dilation, groups=groups, padding=1, algorithm=algorithm)
            try:
                y = F.conv2d(x, w, np.zeros(4, np.float32), **kw)
                F.conv2d_backward(x, w, np.ones_like(y), **kw)
            except ValueError:  # e.g. a path that does not take strides
                pass
    for fn in ("max", "avg"):
        y = getattr(F, f"{fn}_pool2d")(x, 3, 2, 1)
        getattr(F, f"{fn}_pool2d_backward")(x, np.ones_like(y), 3, 2, 1)


# Generous deadlines: a slow example is reported, but a cold cache or a busy machine is not a bug.
ENGINE = settings(FUZZ, max_examples=100, deadline=20_000)


@ENGINE
@given(data=st.data())
def test_conv2d_arguments_give_a_result_or_value_error(warm_engine, data):
    plausible = data.draw(st.booleans(), label="plausible")
    n, c, h, w = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)),
                  data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
    groups = data.draw(st.sampled_from([1, 1, c]) if plausible
                       else st.one_of(st.sampled_from([1, 1, 1, c]), ints, weird), label="groups")
    c_out = data.draw(st.integers(1, 4)) * (groups if isinstance(groups, int) and 0 < groups <= 4 else 1)
    c_in = c // groups if isinstance(groups, int) and 0 < groups <= c and c % groups == 0 else c
    k = data.draw(st.integers(1, 4))
    x = data.draw(arrays(4, (n, c, h, w), plausible), label="x")
    weight = data.draw(arrays(4, (c_out, c_in, k, k), plausible), label="weight")
    bias = data.draw(st.one_of(st.none(), arrays(1, (c_out,), plausible)), label="bias")
    kwargs = dict(
        stride=data.draw(plausible_pair if plausible else int_or_pair, label="stride"),
        padding=data.draw(plausible_pad if plausible else small_pad, label="padding"),
        dilation=data.draw(plausible_pair if plausible else int_or_pair, label="dilation"),
        groups=groups,
        padding_mode=data.draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]
                                               + ([] if plausible else ["bogus", None])), label="padding_mode"),
    )
    if data.draw(st.booleans()):
        kwargs["algorithm"] = data.draw(st.sampled_from(["auto", "direct", "im2col", "fft"]
                                                        + ([] if plausible else ["bogus"])), label="algorithm")
    backward = data.draw(st.booleans(), label="backward")
    try:
        if backward:
            grad_y = data.draw(arrays(4), label="grad_y")
            try:
                expected = F.conv2d(np.zeros(x.shape, np.float32) if x.dtype.kind in "biuf" else x,
                                    weight, **kwargs).shape
                if plausible or data.draw(st.booleans()):
                    grad_y = np.ones(expected, np.float32)
            except ValueError:
                pass
            result = F.conv2d_backward(x, weight, grad_y, **kwargs)
        else:
            result = F.conv2d(x, weight, bias, **kwargs)
    except ValueError:
        event("ValueError")
        return
    event("result")
    _check_result(result)


@ENGINE
@given(data=st.data())
def test_pool_arguments_give_a_result_or_value_error(warm_engine, data):
    plausible = data.draw(st.booleans(), label="plausible")
    fn = data.draw(st.sampled_from(["max", "avg"]))
    x = data.draw(arrays(4, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)),
                            data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))), plausible), label="x")
    if plausible:
        kernel = data.draw(plausible_pair, label="kernel")
        stride = data.draw(st.one_of(st.none(), plausible_pair), label="stride")
        padding = data.draw(st.integers(0, 1), label="padding")
    else:
        kernel = data.draw(st.one_of(st.integers(-1, 6), st.tuples(st.integers(0, 5), st.integers(0, 5)),
                                     ints, weird), label="kernel")
        stride = data.draw(st.one_of(st.none(), int_or_pair), label="stride")
        padding = data.draw(st.one_of(st.integers(-2, 4), st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
                                      weird), label="padding")
    forward = getattr(F, f"{fn}_pool2d")
    try:
        if data.draw(st.booleans(), label="backward"):
            try:
                shape = forward(np.zeros(x.shape, np.float32) if x.dtype.kind in "biuf" else x,
                                kernel, stride, padding).shape
                grad_y = (np.ones(shape, np.float32) if plausible or data.draw(st.booleans())
                          else data.draw(arrays(4)))
            except ValueError:
                grad_y = data.draw(arrays(4))
            result = getattr(F, f"{fn}_pool2d_backward")(x, grad_y, kernel, stride, padding)
        else:
            result = forward(x, kernel, stride, padding)
    except ValueError:
        event("ValueError")
        return
    event("result")
    _check_result(result)


@pytest.mark.parametrize("call", [
    lambda x, w: F.conv2d(x, w, stride=10**30),
    lambda x, w: F.conv2d(x, w, padding=10**30),
    lambda x, w: F.max_pool2d(x, 2, stride=10**30),
    lambda x, w: F.avg_pool2d(x, 2, stride=(1, 10**30)),
], ids=["conv stride", "conv padding", "max_pool stride", "avg_pool stride"])
def test_integers_beyond_int64_are_a_value_error(call):
    x = np.ones((1, 1, 8, 8), np.float32)
    w = np.ones((2, 1, 3, 3), np.float32)
    try:
        call(x, w)
    except ValueError:
        return
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} instead of ValueError: {exc}")


# ----------------------------------------------------------------- JPEGs cut short, with an end marker put back

_JPEG_SEEDS = {name: data for name, data in (
    ("baseline", _encode("JPEG", np.clip(_rng.normal(128, 40, (40, 56, 3)), 0, 255).astype(np.uint8), quality=90)),
    ("progressive", _encode("JPEG", np.clip(_rng.normal(128, 40, (40, 56, 3)), 0, 255).astype(np.uint8),
                            quality=85, progressive=True)),
    ("gray420", _encode("JPEG", np.clip(_rng.normal(100, 30, (33, 47)), 0, 255).astype(np.uint8), quality=75)),
)}


@FUZZ
@given(data=st.data())
def test_jpeg_cut_anywhere_with_an_end_marker_is_refused_or_unchanged(tmp_path, data):
    """A JPEG cut short and given its end marker back is "damaged or truncated", unless
    the cut took nothing the decoder draws (the marker itself, or an empty last scan)."""
    name = data.draw(st.sampled_from(sorted(_JPEG_SEEDS)), label="seed")
    whole = _JPEG_SEEDS[name]
    cut = data.draw(st.integers(2, len(whole) - 1), label="cut")
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[:cut].rstrip(b"\xff") + b"\xff\xd9")
    (tmp_path / "whole.jpg").write_bytes(whole)
    try:
        got = read_image(path, color="rgb")
    except ImageError as exc:
        assert str(path) in str(exc)
        event("refused")
        return
    event("read")
    np.testing.assert_array_equal(got, read_image(tmp_path / "whole.jpg", color="rgb"))


# ----------------------------------------------------------------- planned sizes against built networks

_LAYER_TABLES = st.one_of(
    st.builds(lambda c, k, s, p, g: {"type": "conv", "out_channels": c * g, "kernel_size": k, "stride": s,
                                     "padding": p, "groups": g},
              st.integers(1, 6), st.integers(1, 5), st.integers(1, 3), st.integers(0, 2), st.sampled_from([1, 1, 2])),
    st.builds(lambda k: {"type": "maxpool", "kernel_size": k}, st.integers(1, 3)),
    st.builds(lambda k: {"type": "avgpool", "kernel_size": k, "stride": 1}, st.integers(1, 3)),
    st.just({"type": "relu"}), st.just({"type": "batchnorm"}),
    st.builds(lambda c, s: {"type": "residual", "out_channels": c, "stride": s}, st.integers(1, 6),
              st.integers(1, 2)),
)


@settings(FUZZ, max_examples=60)
@given(tables=st.lists(_LAYER_TABLES, min_size=1, max_size=5), head=st.sampled_from(["linear", "netvlad", "none"]),
       channels=st.sampled_from([1, 3]), size=st.integers(4, 24))
def test_planned_sizes_are_what_a_network_builds(tables, head, channels, size):
    """``plan_layers`` (sizes from declarations, nothing allocated) agrees with ``Network``
    on every output shape and on the number of parameters, or both refuse."""
    from cnn_cli.nn import Network
    from cnn_cli.pipeline import build_layers, plan_layers

    tables = list(tables) + {"linear": [{"type": "flatten"}, {"type": "linear", "out_features": 3}],
                             "netvlad": [{"type": "netvlad", "clusters": 2}], "none": []}[head]
    try:
        network = Network(build_layers(tables, "fuzz"), (channels, size, size))
    except ValueError:
        event("refused")
        try:  # the plan may refuse too, or leave it to the network, but never crash
            plan_layers(build_layers(tables, "fuzz"), (channels, size, size))
        except ValueError:
            pass
        return
    event("built")
    plan = plan_layers(build_layers(tables, "fuzz"), (channels, size, size))
    assert [p.shape for p in plan.layers] == [tuple(s) for s in network.shapes]
    assert plan.params == sum(v.size for v in network.state_dict().values())
