"""Pipelines: shipped files, shapes and receptive fields, corner detectors, conv modes, file errors."""

import textwrap

import numpy as np
import pytest
import scipy.ndimage as ndi

from cnn_cli import filterbank, registry
from cnn_cli.filterbank import load_bank
from cnn_cli.filterlayers import BankConv
from cnn_cli.pipeline import bank_pipeline, load_pipeline
from cnn_cli.specfile import SpecFileError

SHIPPED_PIPELINES = ["default", "harris", "shi_tomasi", "laws_energy"]

#: By hand. Receptive field r_out = r_in + (k - 1) * j_in, j_out = j_in * stride.
#: default: conv 13x13 (LoG sigma 1.4 -> 2*ceil(5.6)+1, Gabor f=0.3 -> 2*ceil(3*1.874)+1)
#: -> abs -> maxpool 2 (13 + 1 = 14, j = 2) -> gaussian_s2 13x13 (14 + 12*2 = 38) -> maxpool 2 (38 + 2 = 40).
EXPECTED_512 = {
    "default": ([(11, 512, 512), (11, 512, 512), (11, 256, 256), (11, 256, 256), (11, 128, 128)],
                [13, 13, 14, 38, 40]),
    "harris": ([(2, 512, 512), (3, 512, 512), (3, 512, 512), (1, 512, 512)], [3, 3, 9, 9]),
    "shi_tomasi": ([(2, 512, 512), (3, 512, 512), (3, 512, 512), (1, 512, 512)], [3, 3, 9, 9]),
    "laws_energy": ([(25, 512, 512)] * 3, [5, 5, 19]),
}


def _write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


def _rng_image(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


# ----------------------------------------------------------------- shipped pipelines


def test_shipped_pipelines_are_listed():
    assert set(SHIPPED_PIPELINES) <= set(filterbank.builtin_names("pipeline"))


@pytest.mark.parametrize("name", SHIPPED_PIPELINES)
def test_shipped_pipeline_summary_matches_hand_computation(name):
    pipe = load_pipeline(name).bind(["gray"])
    assert pipe.name == name and pipe.description
    rows = pipe.summary(512, 512)
    shapes, fields = EXPECTED_512[name]
    assert [row.shape for row in rows] == shapes
    assert [row.receptive_field for row in rows] == fields
    assert [row.index for row in rows] == list(range(len(shapes)))
    assert [len(row.channels) for row in rows] == [s[0] for s in shapes]


@pytest.mark.parametrize("name", SHIPPED_PIPELINES)
def test_summary_shapes_equal_a_real_forward_pass(name):
    pipe = load_pipeline(name).bind(["gray"])
    x = _rng_image((2, 1, 64, 80))
    outputs = pipe.forward(x)
    rows = pipe.summary(64, 80)
    assert len(outputs) == len(rows) == len(pipe.layers) == len(pipe.channels)
    for out, row, names in zip(outputs, rows, pipe.channels):
        assert out.dtype == np.float32
        assert out.shape == (2, *row.shape), (row.index, out.shape, row.shape)
        assert out.shape[1] == len(names)
        assert np.all(np.isfinite(out))
    # the two images of the batch are independent
    single = pipe.forward(x[1:2])
    for a, b in zip(outputs, single):
        np.testing.assert_allclose(a[1:2], b, rtol=1e-5, atol=1e-5)


def test_harris_channel_names():
    pipe = load_pipeline("harris").bind(["gray"])
    assert pipe.channels == [
        ["sobel_x", "sobel_y"],
        ["sobel_x*sobel_x", "sobel_x*sobel_y", "sobel_y*sobel_y"],
        ["gaussian_s1@sobel_x*sobel_x", "gaussian_s1@sobel_x*sobel_y", "gaussian_s1@sobel_y*sobel_y"],
        ["harris"],
    ]


def test_receptive_field_of_a_custom_stack(tmp_path):
    # conv 3 (r=3) -> maxpool 2 (r=4, j=2) -> conv 5 dilation 2 (extent 9: r = 4 + 8*2 = 20)
    # -> avgpool 3 stride 3 (r = 20 + 2*2 = 24, j = 6) -> global
    path = _write(tmp_path / "p.toml", """
        kind = "pipeline"
        [[layer]]
        type = "conv"
        banks = ["edges:sobel_x"]
        [[layer]]
        type = "maxpool"
        kernel_size = 2
        [[layer]]
        type = "conv"
        banks = ["smoothing:box_5"]
        dilation = 2
        [[layer]]
        type = "avgpool"
        kernel_size = 3
        [[layer]]
        type = "globalmaxpool"
    """)
    pipe = load_pipeline(str(path)).bind(["gray"])
    rows = pipe.summary(60, 62)
    assert [r.receptive_field for r in rows] == [3, 4, 20, 24, "global"]
    assert [r.shape for r in rows] == [(1, 60, 62), (1, 30, 31), (1, 30, 31), (1, 10, 10), (1, 1, 1)]
    outputs = pipe.forward(_rng_image((1, 1, 60, 62)))
    assert [o.shape[1:] for o in outputs] == [r.shape for r in rows]


# ----------------------------------------------------------------- corners


def _rectangle():
    image = np.zeros((60, 84), np.float32)
    image[12:42, 22:66] = 1.0   # corners at (12, 22), (12, 65), (41, 22), (41, 65)
    return image, [(12, 22), (12, 65), (41, 22), (41, 65)]


@pytest.mark.parametrize("name", ["harris", "shi_tomasi"])
def test_corner_pipelines_find_the_four_corners_of_a_rectangle(name):
    image, corners = _rectangle()
    pipe = load_pipeline(name).bind(["gray"])
    response = pipe.forward(image[None, None])[-1][0, 0]
    assert response.shape == image.shape
    peaks = np.argwhere((response == ndi.maximum_filter(response, size=5)) & (response > 0))
    values = response[tuple(peaks.T)]
    strongest = [tuple(int(v) for v in peaks[i]) for i in np.argsort(-values)[:4]]
    assert len(strongest) == 4, strongest
    for corner in corners:
        distances = [max(abs(corner[0] - p[0]), abs(corner[1] - p[1])) for p in strongest]
        assert min(distances) <= 2, (corner, strongest)
    top = response.max()
    assert top > 0
    # the middle of each edge is far weaker than a corner
    for r, c in [(12, 44), (41, 44), (27, 22), (27, 65)]:
        assert response[r, c] < 0.05 * top, (r, c, response[r, c], top)
    # flat regions give nothing
    assert abs(response[27, 44]) < 1e-6 * top and abs(response[2, 2]) < 1e-6 * top


def test_harris_is_negative_on_edges():
    image, _ = _rectangle()
    response = load_pipeline("harris").bind(["gray"]).forward(image[None, None])[-1][0, 0]
    assert response[12, 44] < 0 and response[27, 22] < 0


# ----------------------------------------------------------------- conv modes


def test_depthwise_mode_runs_every_kernel_on_every_channel_alone():
    bank = load_bank("edges:sobel_*")
    layer = BankConv([bank], mode="depthwise")
    assert layer.build((3, 24, 30)) == (6, 24, 30)
    names = layer.channel_names(["R", "G", "B"])
    assert names == ["sobel_x@R", "sobel_y@R", "sobel_x@G", "sobel_y@G", "sobel_x@B", "sobel_y@B"]
    x = _rng_image((2, 3, 24, 30), seed=1)
    y = layer.forward(x)
    assert y.shape == (2, 6, 24, 30)
    alone = BankConv([bank], mode="mean")
    alone.build((1, None, None))
    for c in range(3):
        np.testing.assert_allclose(y[:, 2 * c:2 * c + 2], alone.forward(x[:, c:c + 1]), rtol=1e-5, atol=1e-5)


def test_depthwise_mode_with_two_banks_of_different_sizes():
    banks = [load_bank("edges:sobel_x"), load_bank("smoothing:gaussian_s1")]
    layer = BankConv(banks, mode="depthwise")
    assert layer.build((2, None, None)) == (4, None, None)
    names = layer.channel_names(["a", "b"])
    assert names == ["sobel_x@a", "sobel_x@b", "gaussian_s1@a", "gaussian_s1@b"]
    x = _rng_image((1, 2, 20, 26), seed=2)
    y = layer.forward(x)
    assert y.shape == (1, 4, 20, 26)
    for i, bank in enumerate(banks):
        alone = BankConv([bank])
        alone.build((1, None, None))
        for c in range(2):
            np.testing.assert_allclose(y[:, 2 * i + c], alone.forward(x[:, c:c + 1])[:, 0], rtol=1e-5, atol=1e-5)


def test_mean_mode_on_rgb_equals_conv_of_the_channel_mean():
    bank = load_bank("edges")
    rgb = BankConv([bank], mode="mean")
    assert rgb.build((3, 28, 36)) == (len(bank.kernels), 28, 36)
    assert rgb.channel_names(["R", "G", "B"]) == [k.name for k in bank.kernels]
    gray = BankConv([bank], mode="mean")
    gray.build((1, 28, 36))
    x = _rng_image((1, 3, 28, 36), seed=3)
    np.testing.assert_allclose(rgb.forward(x), gray.forward(x.mean(axis=1, keepdims=True)),
                               rtol=1e-4, atol=1e-5)


def test_kernels_of_different_sizes_in_one_bank_are_centred(tmp_path):
    path = _write(tmp_path / "mixed.toml", """
        [[kernel]]
        name = "shift_right"
        values = [[0, 0, 1]]
        [[kernel]]
        name = "identity5"
        values = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    """)
    layer = BankConv([load_bank(str(path))])
    layer.build((1, None, None))
    x = _rng_image((1, 1, 12, 14), seed=4)
    y = layer.forward(x)
    np.testing.assert_allclose(y[0, 1], x[0, 0], atol=1e-6)
    np.testing.assert_allclose(y[0, 0, :, :-1], x[0, 0, :, 1:], atol=1e-6)  # y[i, j] = x[i, j + 1]


def test_bias_is_added(tmp_path):
    path = _write(tmp_path / "b.toml", """
        [[kernel]]
        name = "k"
        values = [[1]]
        bias = 0.5
    """)
    pipe = bank_pipeline([str(path)]).bind(["gray"])
    x = _rng_image((1, 1, 6, 7))
    np.testing.assert_allclose(pipe.forward(x)[0], x + 0.5, atol=1e-6)


RGB_BANK = """
    [[kernel]]
    name = "redness"
    values = [[[0, 0, 0], [0, 2, 0], [0, 0, 0]],
              [[0, 0, 0], [0, -1, 0], [0, 0, 0]],
              [[0, 0, 0], [0, -1, 0], [0, 0, 0]]]
"""


def test_multichannel_bank_over_gray_suggests_color_rgb(tmp_path):
    path = _write(tmp_path / "rgb.toml", RGB_BANK)
    with pytest.raises(SpecFileError) as info:
        bank_pipeline([str(path)]).bind(["gray"])
    message = str(info.value)
    assert "--color rgb" in message and "redness" in message and "3" in message


def test_multichannel_bank_over_rgb_is_used_as_written(tmp_path):
    path = _write(tmp_path / "rgb.toml", RGB_BANK)
    pipe = bank_pipeline([str(path)]).bind(["R", "G", "B"])
    assert pipe.channels == [["redness"]]
    x = _rng_image((1, 3, 10, 12), seed=5)
    y = pipe.forward(x)[0]
    np.testing.assert_allclose(y[0, 0], 2 * x[0, 0] - x[0, 1] - x[0, 2], atol=1e-5)


def test_multichannel_bank_cannot_run_depthwise(tmp_path):
    path = _write(tmp_path / "rgb.toml", RGB_BANK)
    with pytest.raises(SpecFileError, match="depthwise"):
        bank_pipeline([str(path)], mode="depthwise").bind(["R", "G", "B"])


# ----------------------------------------------------------------- pipeline-file errors


def test_corner_response_with_wrong_channels_names_the_layer(tmp_path):
    path = _write(tmp_path / "p.toml", """
        kind = "pipeline"
        [[layer]]
        type = "conv"
        banks = ["edges:sobel_x"]
        [[layer]]
        type = "corner_response"
    """)
    pipe = load_pipeline(str(path))
    with pytest.raises(SpecFileError) as info:
        pipe.bind(["gray"])
    message = str(info.value)
    assert str(path) in message
    assert "layer 1" in message and "corner_response" in message and "3" in message


PIPELINE_ERRORS = {
    "unknown type": ("""
        [[layer]]
        type = "convolve"
    """, ["layer 0", "convolve"]),
    "missing type": ("""
        [[layer]]
        kernel_size = 2
    """, ["layer 0", "type"]),
    "unknown field": ("""
        [[layer]]
        type = "abs"
        [[layer]]
        type = "maxpool"
        kernel_sz = 2
    """, ["layer 1", "kernel_sz", "maxpool"]),
    "conv without banks": ("""
        [[layer]]
        type = "conv"
    """, ["layer 0", "banks"]),
    "unknown bank": ("""
        [[layer]]
        type = "conv"
        banks = ["nosuchbank"]
    """, ["layer 0", "nosuchbank"]),
    "bad conv mode": ("""
        [[layer]]
        type = "conv"
        banks = ["edges"]
        mode = "sum"
    """, ["layer 0", "sum"]),
    "bad pool size": ("""
        [[layer]]
        type = "maxpool"
        kernel_size = 0
    """, ["layer 0", "kernel_size"]),
    "bad corner method": ("""
        [[layer]]
        type = "corner_response"
        method = "fast"
    """, ["layer 0", "fast"]),
    "no layers": ("""
        kind = "pipeline"
    """, ["[[layer]]"]),
}


@pytest.mark.parametrize("case", list(PIPELINE_ERRORS))
def test_bad_pipeline_file(tmp_path, case):
    text, expected = PIPELINE_ERRORS[case]
    path = _write(tmp_path / "p.toml", text)
    with pytest.raises(SpecFileError) as info:
        load_pipeline(str(path))
    message = str(info.value)
    assert str(path) in message, message
    for part in expected:
        assert part in message, (part, message)


def test_unknown_pipeline_name_lists_the_shipped_ones():
    with pytest.raises(SpecFileError) as info:
        load_pipeline("nosuchpipeline")
    for name in SHIPPED_PIPELINES:
        assert name in str(info.value)
    with pytest.raises(SpecFileError, match="no pipeline named 'edges'"):
        load_pipeline("edges")


def test_image_smaller_than_the_output_window_is_an_error():
    pipe = load_pipeline("default").bind(["gray"])
    with pytest.raises(SpecFileError, match="layer"):
        pipe.summary(1, 1)


def test_bank_files_in_a_pipeline_are_relative_to_it(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    _write(folder / "two.toml", """
        [[kernel]]
        name = "double"
        values = [[2]]
        [[kernel]]
        name = "triple"
        values = [[3]]
    """)
    path = _write(folder / "p.toml", """
        kind = "pipeline"
        [[layer]]
        type = "conv"
        banks = ["two.toml:tri*", "edges:sobel_x"]
    """)
    monkeypatch.chdir(tmp_path)  # not the pipeline's folder
    pipe = load_pipeline(str(path)).bind(["gray"])
    assert pipe.channels == [["triple", "sobel_x"]]
    x = _rng_image((1, 1, 8, 9))
    np.testing.assert_allclose(pipe.forward(x)[0][0, 0], 3 * x[0, 0], atol=1e-6)


def test_activation_products_and_normalize_layers(tmp_path):
    path = _write(tmp_path / "p.toml", """
        kind = "pipeline"
        [[layer]]
        type = "conv"
        banks = ["edges:sobel_*"]
        [[layer]]
        type = "leaky_relu"
        slope = 0.1
        [[layer]]
        type = "products"
        [[layer]]
        type = "normalize"
        method = "standardize"
    """)
    pipe = load_pipeline(str(path)).bind(["gray"])
    assert pipe.channels[2] == ["sobel_x*sobel_x", "sobel_x*sobel_y", "sobel_y*sobel_y"]
    x = _rng_image((1, 1, 20, 24), seed=6)
    g, leaky, prod, norm = pipe.forward(x)
    np.testing.assert_allclose(leaky, np.where(g > 0, g, 0.1 * g), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(prod[0, 1], leaky[0, 0] * leaky[0, 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.mean(axis=(2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(norm.std(axis=(2, 3)), 1, atol=1e-3)


# ----------------------------------------------------------------- the layer registry

#: Fields some types cannot do without, by field name.
REQUIRED_FIELDS = {"banks": lambda: [load_bank("edges")], "out_channels": lambda: 2, "out_features": lambda: 2}


@pytest.mark.parametrize("entry", registry.LAYER_TYPES, ids=lambda t: f"{t.name}-{t.cls.__name__}")
def test_every_registered_type_follows_the_shape_protocol(entry):
    """Each entry makes a layer that knows its entry, and whose ``build`` gives the shape ``forward`` gives."""
    layer = entry.make({f: make() for f, make in REQUIRED_FIELDS.items() if f in entry.fields})
    assert layer.kind == entry.name and registry.type_of(layer) is entry
    in_shape = (12,) if entry.name == "linear" else (3, 12, 10)
    if layer.arity != 1:  # a merge reads two
        out_shape = layer.build([in_shape, in_shape])
        assert layer.forward([_rng_image((2, *in_shape))] * 2).shape == (2, *out_shape)
        assert layer.build([(3, None, None)] * 2)[1:] == (None, None)
        return
    out_shape = layer.build(in_shape, np.random.default_rng(0))
    y = layer.forward(_rng_image((2, *in_shape)))
    assert y.shape == (2, *out_shape)
    params = dict(layer.params)
    assert layer.build(in_shape) == out_shape, "building again without an rng changes nothing"
    assert all(layer.params[k] is v for k, v in params.items())
    if len(in_shape) == 3:
        unknown = layer.build((3, None, None))
        assert len(unknown) == len(out_shape) and all(u in (None, o) for u, o in zip(unknown, out_shape))


def test_registry_is_where_types_are_used():
    assert registry.names()[0] == "conv" and len(registry.names()) == len(set(registry.names()))
    pipeline_only = {t.name for t in registry.LAYER_TYPES if t.where == registry.PIPELINE_ONLY}
    assert {"products", "corner_response", "normalize"} <= pipeline_only
    assert registry.network_only({"type": "conv", "out_channels": 4})
    assert not registry.network_only({"type": "conv", "banks": ["edges"]})
    assert not registry.network_only({"type": "relu"})
    with pytest.raises(ValueError, match=r"\['groups'\] are for a conv layer with out_channels"):
        registry.find({"type": "conv", "banks": ["edges"], "groups": 2})
