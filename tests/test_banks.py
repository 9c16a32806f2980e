"""Filter banks: the shipped kernels against their definitions and oracles, and bank-file errors."""

import math
import textwrap

import numpy as np
import pytest
import skimage.filters

from cnn_cli import filterbank
from cnn_cli.filterbank import gabor_kernel, gaussian_kernel, load_bank, log_kernel
from cnn_cli.specfile import SpecFileError

SHIPPED_BANKS = ["corners", "edges", "smoothing", "textures"]


def _conv_same(image, kernel):
    """Cross-correlate a 2-D image with a 2-D kernel through the engine (reflect, 'same')."""
    from cnn_cli.functional import conv2d

    x = np.asarray(image, np.float32)[None, None]
    w = np.asarray(kernel, np.float32)[None, None]
    return conv2d(x, w, padding="same", padding_mode="reflect")[0, 0].astype(np.float64)


def _write(tmp_path, text, name="bank.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ----------------------------------------------------------------- the shipped banks


def test_bank_error_is_the_spec_file_error_under_its_first_name():
    assert filterbank.BankError is SpecFileError


def test_every_shipped_bank_is_listed():
    assert set(SHIPPED_BANKS) <= set(filterbank.builtin_names("bank"))
    # pipelines are not banks, and banks are not pipelines
    assert "default" not in filterbank.builtin_names("bank")
    assert set(filterbank.builtin_names("pipeline")).isdisjoint(SHIPPED_BANKS)


@pytest.mark.parametrize("name", SHIPPED_BANKS)
def test_shipped_bank_loads_with_unique_finite_kernels(name):
    bank = load_bank(name)
    assert bank.name == name
    assert bank.kernels, f"{name} has no kernels"
    names = [k.name for k in bank.kernels]
    assert len(names) == len(set(names)), f"duplicate kernel names in {name}: {names}"
    for k in bank.kernels:
        assert k.weights.ndim in (2, 3), k.name
        assert 0 not in k.weights.shape, k.name
        assert np.all(np.isfinite(k.weights)), k.name
        assert math.isfinite(k.bias), k.name
        assert np.abs(k.weights).max() > 0, f"{name}:{k.name} is all zeros"
    assert isinstance(bank.description, str) and bank.description


def test_edges_bank_has_the_documented_kernels():
    bank = load_bank("edges")
    assert [k.name for k in bank.kernels] == [
        "sobel_x", "sobel_y", "scharr_x", "scharr_y", "prewitt_x", "prewitt_y",
        "roberts_diag", "roberts_antidiag", "laplacian_4", "laplacian_8", "laplacian_of_gaussian",
    ]
    sobel_x = {k.name: k.weights for k in bank.kernels}["sobel_x"]
    np.testing.assert_array_equal(sobel_x, [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    sobel_y = {k.name: k.weights for k in bank.kernels}["sobel_y"]
    np.testing.assert_array_equal(sobel_y, sobel_x.T)


def _fit_scale(ours, ref):
    """Least-squares s with ours ~ s * ref; returns (s, max |ours - s*ref| / max |ours|)."""
    s = float(np.sum(ours * ref) / np.sum(ref * ref))
    return s, float(np.abs(ours - s * ref).max() / np.abs(ours).max())


@pytest.mark.parametrize("ours_name, reference", [
    ("sobel_x", skimage.filters.sobel_v),   # vertical edges: d/dx
    ("sobel_y", skimage.filters.sobel_h),   # horizontal edges: d/dy
])
def test_sobel_maps_match_scikit_image(ours_name, reference):
    rng = np.random.default_rng(7)
    image = rng.random((40, 52))
    kernel = {k.name: k.weights for k in load_bank("edges").kernels}[ours_name]
    ours = _conv_same(image, kernel)[2:-2, 2:-2]
    ref = reference(image)[2:-2, 2:-2]
    scale, err = _fit_scale(ours, ref)
    assert abs(abs(scale) - 4.0) < 1e-4, scale  # skimage divides the kernel by 4
    assert err < 1e-5, err


def test_sobel_x_is_positive_where_the_image_brightens_to_the_right():
    ramp = np.tile(np.arange(20, dtype=np.float64), (12, 1))  # brighter towards +x
    kernels = {k.name: k.weights for k in load_bank("edges").kernels}
    gx = _conv_same(ramp, kernels["sobel_x"])[2:-2, 2:-2]
    gy = _conv_same(ramp, kernels["sobel_y"])[2:-2, 2:-2]
    np.testing.assert_allclose(gx, 8.0, atol=1e-4)  # (1+2+1) * (1 - (-1))
    np.testing.assert_allclose(gy, 0.0, atol=1e-4)


@pytest.mark.parametrize("frequency", [0.05, 0.1, 0.25, 0.4])
@pytest.mark.parametrize("theta", [0.0, math.pi / 6, math.pi / 4, math.pi / 2, 2.0])
def test_gabor_kernel_equals_scikit_image(frequency, theta):
    ours = gabor_kernel(frequency, theta)
    ref = skimage.filters.gabor_kernel(frequency, theta=theta)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours.real, ref.real, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.imag, ref.imag, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    dict(sigma_x=2.0, sigma_y=5.0),
    dict(sigma_x=4.0, sigma_y=1.5),
    dict(bandwidth=0.5),
    dict(bandwidth=2.0),
])
def test_gabor_kernel_equals_scikit_image_with_options(kwargs):
    ours = gabor_kernel(0.2, 0.7, **kwargs)
    ref = skimage.filters.gabor_kernel(0.2, theta=0.7, **kwargs)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_shipped_gabor_kernels_are_scikit_image_kernels():
    kernels = {k.name: k.weights for k in load_bank("textures").kernels}
    gabors = [n for n in kernels if n.startswith("gabor_")]
    assert len(gabors) == 16
    for f in (0.15, 0.3):
        for t in (0, 45, 90, 135):
            ref = skimage.filters.gabor_kernel(f, theta=math.radians(t))
            even, odd = kernels[f"gabor_f{f}_t{t}_even"], kernels[f"gabor_f{f}_t{t}_odd"]
            np.testing.assert_allclose(even, ref.real - ref.real.mean(), atol=1e-12)
            np.testing.assert_allclose(odd, ref.imag, atol=1e-12)
            assert abs(even.sum()) < 1e-12 and abs(odd.sum()) < 1e-12


LAWS = {  # Laws (1980), typed here independently of the package
    "L5": [1, 4, 6, 4, 1],
    "E5": [-1, -2, 0, 2, 1],
    "S5": [-1, 0, 2, 0, -1],
    "R5": [1, -4, 6, -4, 1],
    "W5": [-1, 2, 0, -2, 1],
}


def test_laws_masks_are_outer_products():
    kernels = {k.name: k.weights for k in load_bank("textures").kernels}
    laws = sorted(n for n in kernels if n.startswith("laws_"))
    assert len(laws) == 25
    expected = sorted(f"laws_{a}{b}" for a in LAWS for b in LAWS)
    assert laws == expected
    for a in LAWS:
        for b in LAWS:
            np.testing.assert_array_equal(kernels[f"laws_{a}{b}"], np.outer(LAWS[a], LAWS[b]))
    # E5 down the rows, L5 along them: not the transpose
    e5l5 = filterbank.laws_kernel("E5L5")
    np.testing.assert_array_equal(e5l5[:, 2], 6 * np.array(LAWS["E5"]))
    np.testing.assert_array_equal(e5l5[1], -2 * np.array(LAWS["L5"]))
    with pytest.raises(SpecFileError, match="X5L5"):
        filterbank.laws_kernel("X5L5")


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 3.3])
def test_gaussian_kernel_is_normalised_and_symmetric(sigma):
    k = gaussian_kernel(sigma)
    half = math.ceil(3 * sigma)
    assert k.shape == (2 * half + 1, 2 * half + 1)
    assert abs(k.sum() - 1.0) < 1e-12
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    assert np.unravel_index(np.argmax(k), k.shape) == (half, half)
    # the ratio of neighbouring taps is the Gaussian's
    assert k[half, half + 1] / k[half, half] == pytest.approx(math.exp(-1 / (2 * sigma**2)))
    assert gaussian_kernel(sigma, size=5).shape == (5, 5)
    with pytest.raises(SpecFileError):
        gaussian_kernel(sigma, size=4)


@pytest.mark.parametrize("sigma", [0.8, 1.4, 2.5])
def test_log_kernel_zero_mean_negative_centre(sigma):
    k = log_kernel(sigma)
    half = math.ceil(4 * sigma)
    assert k.shape == (2 * half + 1, 2 * half + 1)
    assert abs(k.mean()) < 1e-12
    assert np.unravel_index(np.argmin(k), k.shape) == (half, half)
    assert k[half, half] < 0 and k.max() > 0
    np.testing.assert_allclose(k, k.T, atol=1e-15)
    np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-15)
    # flat regions give 0
    assert abs(_conv_same(np.full((30, 30), 0.7), k)[15, 15]) < 1e-5


def test_log_responds_most_to_a_blob_of_matching_size():
    sigma = 1.4
    yy, xx = np.mgrid[:41, :41]
    responses = []
    for radius in (1.0, sigma * math.sqrt(2), 5.0, 8.0):
        blob = ((yy - 20) ** 2 + (xx - 20) ** 2 <= radius**2).astype(np.float64)
        responses.append(_conv_same(blob, log_kernel(sigma))[20, 20])
    assert all(r < 0 for r in responses)
    assert int(np.argmin(responses)) in (1, 2)  # strongest near radius sigma*sqrt(2)


# ----------------------------------------------------------------- corner templates


def _wedge(direction, size=21):
    """A bright 90-degree wedge, apex at the centre, opening towards ``direction``."""
    c = size // 2
    dr, dc = np.mgrid[:size, :size] - c
    up, down, left, right = -dr, dr, -dc, dc
    masks = {
        "n": up >= np.abs(dc), "s": down >= np.abs(dc),
        "e": right >= np.abs(dr), "w": left >= np.abs(dr),
        "ne": (up >= 0) & (right >= 0), "se": (down >= 0) & (right >= 0),
        "sw": (down >= 0) & (left >= 0), "nw": (up >= 0) & (left >= 0),
    }
    return masks[direction].astype(np.float64)


def test_corner_templates_are_zero_mean_and_pick_their_wedge():
    bank = load_bank("corners")
    names = [k.name for k in bank.kernels]
    directions = ["n", "ne", "e", "se", "s", "sw", "w", "nw"]
    assert sorted(names) == sorted(f"corner_{d}" for d in directions)
    for k in bank.kernels:
        assert k.weights.shape == (5, 5)
        assert abs(k.weights.sum()) < 1e-9, k.name
    for d in directions:
        image = _wedge(d)
        responses = {k.name: _conv_same(image, k.weights)[10, 10] for k in bank.kernels}
        assert responses[f"corner_{d}"] == pytest.approx(1.0, abs=1e-5), (d, responses)
        for name, r in responses.items():
            if name != f"corner_{d}":
                assert r < 0.9, (d, name, r)


def test_corner_se_lights_up_at_the_top_left_corner_of_a_rectangle():
    image = np.zeros((30, 40))
    image[8:22, 10:31] = 1.0
    se = {k.name: k.weights for k in load_bank("corners").kernels}["corner_se"]
    r = _conv_same(image, se)
    assert np.unravel_index(np.argmax(r), r.shape) == (8, 10)
    assert r.max() == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------- selection


def test_name_pattern_selection():
    assert [k.name for k in load_bank("edges:sobel_*").kernels] == ["sobel_x", "sobel_y"]
    assert [k.name for k in load_bank("edges:sobel_x").kernels] == ["sobel_x"]
    assert len(load_bank("textures:laws_*").kernels) == 25
    assert len(load_bank("textures:gabor_f0.3_*").kernels) == 8
    assert load_bank("edges:sobel_*").name == "edges:sobel_*"


def test_selection_by_file_path_and_pattern(tmp_path):
    path = _write(tmp_path, """
        [[kernel]]
        name = "a1"
        values = [[1, 0], [0, 1]]
        [[kernel]]
        name = "b1"
        values = [[0, 1], [1, 0]]
    """)
    assert [k.name for k in load_bank(f"{path}:b*").kernels] == ["b1"]
    assert [k.name for k in load_bank(str(path)).kernels] == ["a1", "b1"]


def test_pattern_matching_nothing_names_the_bank():
    with pytest.raises(SpecFileError) as info:
        load_bank("edges:nothing_*")
    message = str(info.value)
    assert "edges" in message and "nothing_*" in message
    assert "sobel_x" in message  # lists what there is


def test_unknown_bank_lists_the_shipped_ones():
    with pytest.raises(SpecFileError) as info:
        load_bank("nosuchbank")
    message = str(info.value)
    assert "nosuchbank" in message
    for name in SHIPPED_BANKS:
        assert name in message


def test_a_pipeline_name_is_not_a_bank():
    with pytest.raises(SpecFileError, match="no bank named 'default'"):
        load_bank("default")


# ----------------------------------------------------------------- bank-file errors


BAD_BANKS = {
    "nan value": ("""
        [[kernel]]
        name = "bad_nan"
        values = [[1, nan], [0, 1]]
    """, ["bad_nan", "finite"]),
    "inf value": ("""
        [[kernel]]
        name = "bad_inf"
        values = [[1, 0], [-inf, 1]]
    """, ["bad_inf", "finite"]),
    "inf scale": ("""
        [[kernel]]
        name = "bad_scale"
        values = [[1, 0], [0, 1]]
        scale = inf
    """, ["bad_scale", "scale"]),
    "nan sigma": ("""
        [[kernel]]
        name = "bad_sigma"
        gaussian = { sigma = nan }
    """, ["bad_sigma", "sigma"]),
    "ragged": ("""
        [[kernel]]
        name = "ragged"
        values = [[1, 2, 3], [4, 5]]
    """, ["ragged", "values"]),
    "zero size": ("""
        [[kernel]]
        name = "empty"
        values = [[]]
    """, ["empty", "non-empty"]),
    "1-D values": ("""
        [[kernel]]
        name = "flat"
        values = [1, 2, 3]
    """, ["flat", "values", "2-D"]),
    "two sources": ("""
        [[kernel]]
        name = "twice"
        values = [[1, 0], [0, 1]]
        laws = "E5L5"
    """, ["twice", "exactly one", "values", "laws"]),
    "no source": ("""
        [[kernel]]
        name = "nothing"
        scale = 2.0
    """, ["nothing", "exactly one"]),
    "unknown field": ("""
        [[kernel]]
        name = "odd_field"
        values = [[1, 0], [0, 1]]
        colour = "red"
    """, ["odd_field", "colour"]),
    "unknown gaussian parameter": ("""
        [[kernel]]
        name = "g"
        gaussian = { sigma = 1.0, radius = 3 }
    """, ["'g'", "gaussian", "radius"]),
    "duplicate names": ("""
        [[kernel]]
        name = "twin"
        values = [[1, 0], [0, 1]]
        [[kernel]]
        name = "other"
        values = [[1]]
        [[kernel]]
        name = "twin"
        values = [[0, 1], [1, 0]]
    """, ["twin", "unique"]),
    "kernel over 255 px (values)": (
        "[[kernel]]\nname = \"wide\"\nvalues = [[" + ", ".join(["1"] * 256) + "]]\n",
        ["wide", "255"]),
    "kernel over 255 px (gaussian)": ("""
        [[kernel]]
        name = "big_gauss"
        gaussian = { sigma = 50.0 }
    """, ["big_gauss", "255"]),
    "even size": ("""
        [[kernel]]
        name = "even"
        gaussian = { sigma = 1.0, size = 4 }
    """, ["even", "size"]),
    "bad laws": ("""
        [[kernel]]
        name = "lw"
        laws = "Q5L5"
    """, ["lw", "laws", "Q5L5"]),
    "gabor without frequency": ("""
        [[kernel]]
        name = "gb"
        gabor = { theta = 45 }
    """, ["gb", "frequency"]),
    "gabor bad phase": ("""
        [[kernel]]
        name = "gp"
        gabor = { frequency = 0.2, phase = "quadrature" }
    """, ["gp", "phase"]),
    "outer not two lists": ("""
        [[kernel]]
        name = "ou"
        outer = [[1, 2, 1]]
    """, ["ou", "outer"]),
    "slash in name": ("""
        [[kernel]]
        name = "a/b"
        values = [[1]]
    """, ["name"]),
    "no kernels": ("""
        description = "nothing here"
    """, ["[[kernel]]"]),
    "description not a string": ("""
        description = 3
        [[kernel]]
        name = "k"
        values = [[1]]
    """, ["description"]),
}


@pytest.mark.parametrize("case", list(BAD_BANKS))
def test_bad_bank_file_raises_bank_error_naming_file_and_kernel(tmp_path, case):
    text, expected = BAD_BANKS[case]
    path = _write(tmp_path, text)
    with pytest.raises(SpecFileError) as info:
        load_bank(str(path))
    message = str(info.value)
    assert str(path) in message, message
    for part in expected:
        assert part in message, (part, message)


def test_invalid_toml_reports_the_line(tmp_path):
    path = _write(tmp_path, """\
        description = "ok"
        [[kernel]]
        name = "k"
        values = [[1, 2], [3, 4]]
        scale = = 2
    """)
    with pytest.raises(SpecFileError) as info:
        load_bank(str(path))
    message = str(info.value)
    assert str(path) in message and "TOML" in message
    assert "line 5" in message, message


def test_bank_file_that_is_missing(tmp_path):
    with pytest.raises(SpecFileError, match="no bank named"):
        load_bank(str(tmp_path / "missing.toml"))


def test_bank_file_that_is_not_utf8(tmp_path):
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecFileError, match="binary.toml"):
        load_bank(str(binary))


def test_absurd_sigma_is_refused_before_building(tmp_path):
    path = _write(tmp_path, """
        [[kernel]]
        name = "huge"
        gaussian = { sigma = 1e6 }
    """)
    with pytest.raises(SpecFileError, match="255"):
        load_bank(str(path))


def test_scale_zero_mean_and_bias_fields(tmp_path):
    path = _write(tmp_path, """
        [[kernel]]
        name = "k"
        values = [[1, 2], [3, 6]]
        zero_mean = true
        scale = 0.5
        bias = 0.25
    """)
    (k,) = load_bank(str(path)).kernels
    np.testing.assert_allclose(k.weights, 0.5 * (np.array([[1, 2], [3, 6]]) - 3.0))
    assert k.bias == 0.25


def test_three_dimensional_values_make_a_multichannel_kernel(tmp_path):
    path = _write(tmp_path, """
        [[kernel]]
        name = "redness"
        values = [[[0, 0, 0], [0, 2, 0], [0, 0, 0]],
                  [[0, 0, 0], [0, -1, 0], [0, 0, 0]],
                  [[0, 0, 0], [0, -1, 0], [0, 0, 0]]]
    """)
    (k,) = load_bank(str(path)).kernels
    assert k.channels == 3 and k.size == (3, 3)


# ----------------------------------------------------------------- [weights] npz banks


def test_weights_npz_bank(tmp_path):
    rng = np.random.default_rng(3)
    single = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    rgb = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    flat = rng.standard_normal((3, 3, 3)).astype(np.float32)
    sub = tmp_path / "banks"
    sub.mkdir()
    np.savez(sub / "w.npz", single=single, rgb=rgb, flat=flat)

    path = _write(sub, """
        description = "learned"
        [weights]
        file = "w.npz"
        key = "single"
        names = ["f0", "f1", "f2", "f3"]
    """, "learned.toml")
    bank = load_bank(str(path))
    assert [k.name for k in bank.kernels] == ["f0", "f1", "f2", "f3"]
    for k, w in zip(bank.kernels, single):
        assert k.weights.shape == (3, 3)
        np.testing.assert_array_equal(k.weights, w[0])

    path = _write(sub, """
        [weights]
        file = "w.npz"
        key = "rgb"
    """, "rgb.toml")
    bank = load_bank(str(path))
    assert [k.name for k in bank.kernels] == ["rgb[0]", "rgb[1]"]
    assert all(k.channels == 3 for k in bank.kernels)
    np.testing.assert_array_equal(bank.kernels[1].weights, rgb[1])

    path = _write(sub, """
        [weights]
        file = "w.npz"
        key = "flat"
    """, "flat.toml")
    bank = load_bank(str(path))
    assert len(bank.kernels) == 3 and bank.kernels[0].weights.shape == (3, 3)
    np.testing.assert_array_equal(bank.kernels[2].weights, flat[2])


@pytest.mark.parametrize("table, expected", [
    ('file = "w.npz"\nkey = "nope"', ["nope", "missing"]),
    ('file = "absent.npz"\nkey = "a"', ["absent.npz"]),
    ('file = "w.npz"\nkey = "a"\nnames = ["x"]', ["names"]),
    ('file = "w.npz"\nkey = "vec"', ["(C_out, C_in, kH, kW)"]),
    ('file = "w.npz"', ["key"]),
    ('file = "obj.npz"\nkey = "o"', ["Python objects"]),
    ('file = "notzip.npz"\nkey = "a"', ["notzip.npz"]),
])
def test_weights_npz_errors(tmp_path, table, expected):
    np.savez(tmp_path / "w.npz", a=np.ones((2, 1, 3, 3)), vec=np.ones(5))
    np.savez(tmp_path / "obj.npz", o=np.array([{"x": 1}, None], dtype=object))
    (tmp_path / "notzip.npz").write_text("not a zip file")
    path = _write(tmp_path, "[weights]\n" + table + "\n")
    with pytest.raises(SpecFileError) as info:
        load_bank(str(path))
    message = str(info.value)
    assert str(path) in message, message
    for part in expected:
        assert part in message, (part, message)


def test_weights_npz_with_nonfinite_values_is_refused(tmp_path):
    w = np.ones((2, 1, 3, 3))
    w[1, 0, 1, 1] = np.nan
    np.savez(tmp_path / "w.npz", a=w)
    path = _write(tmp_path, '[weights]\nfile = "w.npz"\nkey = "a"\nnames = ["ok", "broken"]\n')
    with pytest.raises(SpecFileError, match="broken"):
        load_bank(str(path))
