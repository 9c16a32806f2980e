"""Pictures that show something: the scales of ``cnn apply --normalize`` (robust, asinh,
minmax) per map and per layer, value ranges and colour bars on grids, and bar charts
for layers of 1x1 maps. Scales are checked against numpy's percentiles and slow
per-pixel loops; readability against a photo."""

import json
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw

from cnn_cli import viz
from clirunner import cnn


def _heavy_tailed(seed=0, shape=(40, 50)):
    """A signed map like a Harris response: small values everywhere, one strong peak."""
    m = np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * np.float32(0.01)
    m[5, 7], m[20, 30] = 1.0, -0.3
    return m


def _naive_levels(m, low, high, curve=lambda v: v):
    """Levels 0..255 of ``m``, pixel by pixel:
    round(255 (curve(v) - curve(low)) / (curve(high) - curve(low))), clipped."""
    out = np.empty(m.shape, np.uint8)
    a, b = curve(low), curve(high)
    for idx, v in np.ndenumerate(m):
        out[idx] = min(255, max(0, math.floor((curve(float(v)) - a) / (b - a) * 255 + 0.5)))
    return out


def _close(levels, expected, tolerance=1):
    """float32 against float64 arithmetic: a level may differ by one where a value sits on a boundary."""
    assert np.abs(levels.astype(int) - expected.astype(int)).max() <= tolerance


def _shown(levels, near=2):
    """Fraction of pixels more than ``near`` levels from the most common level (the background)."""
    background = np.argmax(np.bincount(levels.ravel(), minlength=256))
    return float(np.mean(np.abs(levels.astype(int) - background) > near))


# ----------------------------------------------------------------- the scales


def test_robust_signed_map_is_symmetric_about_the_percentiles():
    m = _heavy_tailed()
    scale = viz.fit_scale(m, "robust")
    p1, p99 = np.percentile(m, [1, 99])
    bound = max(-p1, p99)
    assert (scale.low, scale.high) == pytest.approx((-bound, bound))
    levels = scale.levels(m)
    _close(levels, _naive_levels(m, scale.low, scale.high))
    assert levels[5, 7] == 255 and levels[20, 30] == 0, "the peaks are clipped to the ends"
    assert 0.005 < np.mean((levels == 0) | (levels == 255)) <= 0.03, "about 1 % clipped on each side"


def test_robust_one_signed_map_spans_the_1st_to_99th_percentile():
    m = np.abs(_heavy_tailed(seed=1)) + np.float32(0.5)
    scale = viz.fit_scale(m, "robust")
    assert (scale.low, scale.high) == pytest.approx(tuple(np.percentile(m, [1, 99])))
    _close(scale.levels(m), _naive_levels(m, scale.low, scale.high))


def test_robust_on_an_almost_constant_map_spans_min_to_max():
    # 99.9 % zeros: the 1st and 99th percentiles are both 0, and the few spikes must still show
    m = np.zeros((40, 50), np.float32)
    m[3, 4], m[10, 11] = 2.0, 0.5
    scale = viz.fit_scale(m, "robust")
    assert (scale.low, scale.high) == (0.0, 2.0)
    levels = scale.levels(m)
    assert levels[3, 4] == 255 and levels[10, 11] == 64 and levels[0, 0] == 0


def test_asinh_matches_its_formula_and_clips_nothing():
    m = _heavy_tailed(seed=2)
    scale = viz.fit_scale(m, "asinh")
    magnitudes = np.abs(m[m != 0])
    assert scale.softening == pytest.approx(float(np.median(magnitudes)), rel=1e-6)
    bound = float(np.abs(m).max())
    assert (scale.low, scale.high) == pytest.approx((-bound, bound))
    levels = scale.levels(m)
    _close(levels, _naive_levels(m, scale.low, scale.high, lambda v: math.asinh(v / scale.softening)))
    assert levels[5, 7] == 255 and levels[20, 30] > 0, "only the largest magnitude reaches an end"
    assert scale.levels(np.zeros((1, 1), np.float32))[0, 0] in (127, 128), "zero is mid-grey"
    # a typical value (the softening) lands well inside the scale, where minmax puts it at the background
    typical = np.array([[scale.softening]], np.float32)
    assert scale.levels(typical)[0, 0] >= 128 + 10
    assert viz.fit_scale(m, "minmax").levels(typical)[0, 0] <= 128 + 1


@pytest.mark.parametrize("method", ["asinh", "robust", "minmax"])
def test_value_at_inverts_the_levels(method):
    m = _heavy_tailed(seed=3)
    scale = viz.fit_scale(m, method)
    for level in (0, 40, 128, 200, 255):
        value = np.array([[scale.value_at(level / 255)]], np.float32)
        assert abs(int(scale.levels(value)[0, 0]) - level) <= 1, (method, level)


@pytest.mark.parametrize("method", ["asinh", "robust", "minmax"])
def test_a_zero_map_is_drawn_flat(method):
    scale = viz.fit_scale(np.zeros((4, 5), np.float32), method)
    assert all(np.isfinite([scale.low, scale.high, scale.softening]))
    assert np.all(scale.levels(np.zeros((4, 5), np.float32)) == 0)


def test_minmax_is_the_older_linear_scale():
    m = _heavy_tailed(seed=4)
    scale = viz.fit_scale(m, "minmax")
    bound = max(-float(m.min()), float(m.max()))
    assert (scale.low, scale.high) == (-bound, bound)
    assert viz.fit_scale(m, "none") == viz.Scale("none", 0.0, 1.0)


def test_an_unknown_method_is_refused():
    with pytest.raises(ValueError, match="normalisation must be one of"):
        viz.fit_scale(np.zeros(3, np.float32), "log")


def test_per_layer_fits_one_scale_over_every_map():
    maps = np.stack([_heavy_tailed(seed=5), 10 * _heavy_tailed(seed=6)])
    layer = viz.LayerPictures(maps, ["a", "b"], "robust", "layer", "gray")
    p1, p99 = np.percentile(maps, [1, 99])
    bound = max(-p1, p99)
    for c in range(2):
        assert (layer.record(c)["low"], layer.record(c)["high"]) == pytest.approx((-bound, bound))
        assert layer.record(c)["per"] == "layer"
    per_map = viz.LayerPictures(maps, ["a", "b"], "robust", "map", "gray")
    assert per_map.record(1)["high"] == pytest.approx(max(-np.percentile(maps[1], 1), np.percentile(maps[1], 99)))


def test_the_default_shows_the_corner_and_gabor_maps_of_a_photo():
    # issue 17: on photos, min-max scaling drew corner maps as a grey field with a white dot and
    # Gabor maps as near-uniform grey. The default must put about half the pixels or more off the
    # background (measured on this photo: 0.55 to 0.94; min-max scaling: 0.05 to 0.47).
    skimage_data = pytest.importorskip("skimage.data")
    from cnn_cli.choices import DEFAULT_NORMALIZATION
    from cnn_cli.pipeline import load_pipeline

    photo = (skimage_data.camera()[::2, ::2].astype(np.float32) / 255)[None, None]
    for pipeline, index, prefix in [("harris", 3, "harris"), ("shi_tomasi", 3, "shi_tomasi"), ("default", 0, "gabor")]:
        pipe = load_pipeline(pipeline).bind(["gray"])
        maps = pipe.forward(photo)[index][0]
        for m, name in zip(maps, pipe.channels[index]):
            if name.startswith(prefix):
                default = _shown(viz.fit_scale(m, DEFAULT_NORMALIZATION).levels(m))
                minmax = _shown(viz.fit_scale(m, "minmax").levels(m))
                assert default > 0.45 and default > 1.8 * minmax, (pipeline, name, default, minmax)


# ----------------------------------------------------------------- grids, colour bars, bars


def test_grid_writes_each_value_range_under_its_label():
    tiles = [Image.new("L", (64, 64), 100), Image.new("L", (64, 64), 200)]
    notes = [viz.range_note(-0.8, 1.2), viz.range_note(0.0, 0.0)]
    assert notes == ["-0.8…1.2", "0"]
    picture = viz.grid(tiles, ["sobel_x", "flat"], notes=notes)
    font = viz._font()
    cell_w = (picture.size[0] - 3 * viz.GAP) // 2
    for i, note in enumerate(notes):
        x, y = viz.GAP + i * (cell_w + viz.GAP), viz.GAP + viz.LABEL_HEIGHT
        expected = Image.new("RGB", (cell_w, viz.LABEL_HEIGHT), viz.BACKGROUND)
        ImageDraw.Draw(expected).text((0, 1), note, fill=viz.NOTE_TEXT, font=font)
        crop = picture.crop((x, y, x + cell_w, y + viz.LABEL_HEIGHT))
        assert np.array_equal(np.asarray(crop), np.asarray(expected)), note
    # and the tiles sit below both lines
    assert picture.getpixel((viz.GAP + 32, viz.GAP + 2 * viz.LABEL_HEIGHT + 5)) == (100, 100, 100)


def test_layer_grid_notes_are_each_maps_min_and_max(monkeypatch):
    maps = np.stack([_heavy_tailed(seed=7), np.abs(_heavy_tailed(seed=8))])
    seen = {}
    monkeypatch.setattr(viz, "GridFrame", lambda size, labels, **kw: seen.update(kw, labels=labels, size=size))
    viz.LayerPictures(maps, ["a", "b"], "asinh", "map", "gray").grid_frame()
    assert seen["size"] == maps.shape[:0:-1]  # a picture's (width, height)
    assert seen["labels"] == ["a", "b"]
    assert seen["notes"] == [f"{m.min():.3g}…{m.max():.3g}" for m in maps]
    assert seen["footer"] is None, "a colour bar only when one scale serves the layer"


def _find_ramp(picture, cmap, width):
    """Whether some row of ``picture`` holds the colour map's ramp over ``width`` pixels."""
    ramp = viz.colormap_lut(cmap)[np.linspace(0, 255, width).round().astype(np.uint8)]
    pixels = np.asarray(picture.convert("RGB"))
    return any(np.array_equal(row[x:x + width], ramp) for row in pixels for x in range(len(row) - width + 1)
               if np.array_equal(row[x], ramp[0]))


def test_colorbar_ticks_read_the_values_at_their_place(monkeypatch):
    m = _heavy_tailed(seed=9)
    scale = viz.fit_scale(m, "asinh")
    drawn = []
    original = ImageDraw.ImageDraw.text
    monkeypatch.setattr(ImageDraw.ImageDraw, "text", lambda self, xy, text, **kw: (drawn.append(text),
                                                                                  original(self, xy, text, **kw)))
    bar = viz.colorbar(scale, "viridis", viz.COLORBAR_WIDTH, "title")
    assert _find_ramp(bar, "viridis", viz.COLORBAR_WIDTH)
    # five ticks at 0, 1/4, ... 1 of the bar, each the value drawn there: s sinh(a + f (b - a))
    s = scale.softening
    a, b = math.asinh(scale.low / s), math.asinh(scale.high / s)
    assert drawn == ["title"] + [f"{s * math.sinh(a + f * (b - a)):.3g}" for f in (0, 0.25, 0.5, 0.75, 1)]
    # far from even in value: the 3/4 tick lies below a quarter of the top value
    assert abs(scale.value_at(0.75)) < 0.25 * scale.high


def test_bar_chart_draws_each_bar_from_zero_to_its_value():
    values = np.array([0.5, -0.2, 0.0, 3.0], np.float32)
    low, high = viz.bar_axis(values)
    assert (low, high) == pytest.approx((-0.2, 3.0))
    _check_bars(viz.bar_chart(values, ["a", "b", "zero", "d"], low, high), values, low, high)


def _check_bars(picture, values, low, high):
    """Each row's bar runs from the zero line to where its value lies on the axis low..high."""
    pixels = np.asarray(picture.convert("RGB"))
    # the zero line is the one mark in the chart's first pixel row (text starts below it)
    (zero,) = [x for x in range(pixels.shape[1]) if tuple(pixels[viz.GAP, x]) == viz.NOTE_TEXT]

    def x_of(v):
        return round((v - low) / (high - low) * (viz.BAR_AXIS_WIDTH - 1))

    for i, v in enumerate(values):
        row = pixels[viz.GAP + i * viz.BAR_ROW + viz.BAR_ROW // 2]
        end = zero + x_of(float(v)) - x_of(0.0)
        expected = {"positive": list(range(zero + 1, end + 1)) if v > 0 else [],
                    "negative": list(range(end, zero)) if v < 0 else []}
        for sign, colour in (("positive", viz.POSITIVE_BAR), ("negative", viz.NEGATIVE_BAR)):
            xs = [x for x in range(len(row)) if tuple(row[x]) == colour]
            assert xs == expected[sign], (i, v, sign)


# ----------------------------------------------------------------- cnn apply


def _image(path, data):
    Image.fromarray(data, mode="L").save(path)
    return path


def _photo_like(path, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    data[12:24, 16:32] = 255
    return _image(path, data)


def _apply(tmp_path, *options, image=None):
    img = image or _photo_like(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", *options)
    assert result.exit_code == 0, result.output
    folder = tmp_path / "out" / img.stem
    manifest = json.loads((folder / "manifest.json").read_text())
    with np.load(folder / "features.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return manifest, arrays, folder


def _png(folder, entry):
    return np.asarray(Image.open(folder / entry["png"]).convert("L"))


def test_apply_robust_records_the_percentiles_and_draws_by_them(tmp_path):
    manifest, arrays, folder = _apply(tmp_path, "--bank", "edges:sobel_x", "--normalize", "robust")
    assert manifest["normalization"] == "robust" and manifest["normalization_per"] == "map"
    (entry,) = manifest["layers"][0]["maps"]
    data = arrays["layer0"][0]
    p1, p99 = np.percentile(data, [1, 99])
    bound = max(-p1, p99)
    norm = entry["normalization"]
    assert norm["method"] == "robust" and norm["per"] == "map"
    assert (norm["low"], norm["high"]) == pytest.approx((-bound, bound))
    _close(_png(folder, entry), _naive_levels(data, norm["low"], norm["high"]))


def test_apply_default_png_maps_back_to_values_through_the_manifest(tmp_path):
    manifest, arrays, folder = _apply(tmp_path, "--pipeline", "harris")
    entry = manifest["layers"][3]["maps"][0]
    norm = entry["normalization"]
    assert norm["method"] == "asinh" and norm["softening"] > 0
    data = arrays["layer3"][0]
    expected = _naive_levels(data, norm["low"], norm["high"], lambda v: math.asinh(v / norm["softening"]))
    _close(_png(folder, entry), expected)


def test_apply_per_layer_has_one_scale_and_a_colour_bar(tmp_path):
    manifest, arrays, folder = _apply(tmp_path, "--bank", "edges:sobel_*", "--normalize", "robust",
                                      "--per", "layer", "--cmap", "viridis")
    layer = manifest["layers"][0]
    p1, p99 = np.percentile(arrays["layer0"], [1, 99])
    bound = max(-p1, p99)
    for entry in layer["maps"]:
        assert (entry["normalization"]["low"], entry["normalization"]["high"]) == pytest.approx((-bound, bound))
        assert entry["normalization"]["per"] == "layer"
    assert _find_ramp(Image.open(folder / layer["grid"]), "viridis", viz.COLORBAR_WIDTH)

    manifest, _, folder = _apply(tmp_path, "--bank", "edges:sobel_*", "--cmap", "viridis", "--force")
    assert not _find_ramp(Image.open(folder / manifest["layers"][0]["grid"]), "viridis", viz.COLORBAR_WIDTH)


def test_apply_older_values_keep_working(tmp_path):
    manifest, _, _ = _apply(tmp_path, "--bank", "edges:sobel_x", "--normalize", "per-map")
    assert (manifest["normalization"], manifest["normalization_per"]) == ("minmax", "map")
    manifest, _, _ = _apply(tmp_path, "--bank", "edges:sobel_x", "--normalize", "per-layer", "--per", "layer",
                            "--force")
    assert (manifest["normalization"], manifest["normalization_per"]) == ("minmax", "layer")


@pytest.mark.parametrize("options", [("--normalize", "per-layer", "--per", "map"), ("--normalize", "log"),
                                     ("--per", "image")])
def test_apply_bad_normalisation_is_a_usage_error(tmp_path, options):
    img = _photo_like(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", *options)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "img").exists()


def test_apply_without_pictures_fits_no_scale(tmp_path):
    manifest, _, _ = _apply(tmp_path, "--bank", "edges:sobel_x", "--save", "raw")
    assert [m["normalization"] for m in manifest["layers"][0]["maps"]] == [None]


def test_apply_draws_a_global_pooling_layer_as_bars(tmp_path):
    (tmp_path / "pool.toml").write_text(
        'kind = "pipeline"\n[[layer]]\ntype = "conv"\nbanks = ["edges:sobel_*"]\npadding = "same"\n'
        'padding_mode = "replicate"\n[[layer]]\ntype = "globalavgpool"\n')
    y, x = np.mgrid[0:48, 0:64]
    ramp = _image(tmp_path / "ramp.png", np.clip(100 + 2 * x - 3 * y, 0, 255).astype(np.uint8))
    manifest, arrays, folder = _apply(tmp_path, "--pipeline", tmp_path / "pool.toml", image=ramp)
    layer = manifest["layers"][1]
    values = arrays["layer1"][:, 0, 0]
    assert layer["shape"] == [2, 1, 1] and values[0] * values[1] < 0, "one positive and one negative mean"
    low, high = min(0.0, float(values.min())), max(0.0, float(values.max()))
    for c, entry in enumerate(layer["maps"]):
        norm = entry["normalization"]
        assert (norm["method"], norm["per"]) == ("bars", "layer")
        assert (norm["low"], norm["high"]) == pytest.approx((low, high))
        picture = Image.open(folder / entry["png"])
        assert picture.size[0] > 100, "a labelled bar, not a 1x1 picture"
        _check_bars(picture, values[c:c + 1], low, high)
    grid = Image.open(folder / layer["grid"])
    assert grid.size[1] == 2 * viz.BAR_ROW + 2 * viz.GAP, "one row per channel"
    _check_bars(grid, values, low, high)


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (37, 64), (512, 300), (3, 4, 3), (33, 17, 3)])
def test_png_bytes_decode_to_the_same_pixels(shape):
    """Our encoder (Sub filter, run-length deflate) against Pillow's decoder, for grey and RGB,
    on noise (every byte value, so the filter's modulo-256 wrap is exercised) and on flat areas."""
    import io

    from PIL import Image

    from cnn_cli.viz import png_bytes

    rng = np.random.default_rng(sum(shape))
    noise = rng.integers(0, 256, shape, dtype=np.uint8)
    flat = np.zeros(shape, np.uint8)
    flat[: shape[0] // 2] = 255
    for pixels in (noise, flat):
        image = Image.fromarray(pixels)
        for smallest in (False, True):
            data = png_bytes(image, smallest=smallest)
            _check_chunks(data)
            with Image.open(io.BytesIO(data)) as decoded:
                decoded.load()  # checks every chunk's CRC and the zlib stream
                assert decoded.format == "PNG"
                np.testing.assert_array_equal(np.asarray(decoded.convert(image.mode)), pixels)


def test_png_bytes_store_a_grey_rgb_picture_as_grey():
    import io

    from PIL import Image

    from cnn_cli.viz import png_bytes

    grey = np.random.default_rng(0).integers(0, 256, (20, 30), dtype=np.uint8)
    rgb = Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    with Image.open(io.BytesIO(png_bytes(rgb))) as decoded:
        assert decoded.mode == "L"
        np.testing.assert_array_equal(np.asarray(decoded), grey)
    coloured = np.repeat(grey[..., None], 3, axis=2)
    coloured[5, 7, 2] ^= 1  # one byte of one channel differs
    with Image.open(io.BytesIO(png_bytes(Image.fromarray(coloured)))) as decoded:
        assert decoded.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(decoded), coloured)


def _check_chunks(data):
    """The PNG signature, then chunks whose lengths add up and whose CRC-32s are right, ending in IEND."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, kinds = 8, []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        kinds.append(kind)
        at += 12 + length
    assert at == len(data) and kinds[0] == b"IHDR" and kinds[-1] == b"IEND"


def test_png_bytes_of_other_modes_go_through_pillow():
    import io

    from PIL import Image

    from cnn_cli.viz import png_bytes

    image = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 3, 4), mode="RGBA")
    with Image.open(io.BytesIO(png_bytes(image))) as decoded:
        np.testing.assert_array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize("q", [0.0, 0.1, 0.5, 0.75, 0.999, 1.0])
@pytest.mark.parametrize("size", [1, 2, 5, 1000, 1001])
def test_quantile_is_numpys(q, size):
    values = np.random.default_rng(size).standard_normal(size).astype(np.float32) ** 3
    assert viz.quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-6, abs=1e-12)


def test_asinh32_is_arcsinh_to_float32_precision():
    """The vectorised asinh of the pictures, against numpy's float64 arcsinh, specials included."""
    from cnn_cli.viz import asinh32

    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(10**5) * s for s in (1e-7, 1e-3, 1e-2, 1, 50, 1e6)]
    specials = [0.0, -0.0, np.nan, np.inf, -np.inf, 9.9e-4, 1.01e-3, 1e19, -3e30, 3e38, 1e-40]
    x = np.concatenate(parts + [specials]).astype(np.float32)
    y, r = asinh32(x), np.arcsinh(x.astype(np.float64))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.array_equal(np.isnan(y), np.isnan(r)) and np.array_equal(np.isinf(y), np.isinf(r))
    assert np.array_equal(np.signbit(y), np.signbit(r)), "the sign, of -0.0 too"
    finite = np.isfinite(r)
    err = np.abs(y[finite] - r[finite])
    assert err.max() <= 4e-6, err.max()
    assert (err / np.maximum(np.abs(r[finite]), 1e-3)).max() <= 2e-4, "relative, worst just above 1e-3"


def _asinh32_in_plain_steps(x):
    """asinh32 as first written: one numpy expression a step (the reference of the leaner version)."""
    a = np.abs(x)
    with np.errstate(over="ignore"):
        t = np.log(np.sqrt(np.square(a) + 1) + a)
    t = np.where(a < np.float32(1e-3), a, t)
    large = a > np.float32(1e18)
    t[large] = np.log(a[large]) + np.float32(np.log(2.0))
    return np.copysign(t, x)


def _levels_in_plain_steps(scale, m):
    """``Scale.levels`` as first written: a new array a step."""
    low, high = scale.low, scale.high
    values = m.astype(np.float32)
    if scale.method == "asinh":
        low, high = np.arcsinh(np.array([low, high], np.float64) / scale.softening)
        values = _asinh32_in_plain_steps(values / np.float32(scale.softening))
    if not high > low:
        return np.zeros(m.shape, np.uint8)
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)


def test_asinh32_in_place_is_the_plain_steps_bit_for_bit():
    from cnn_cli.viz import asinh32

    rng = np.random.default_rng(1)
    specials = [0.0, -0.0, np.nan, np.inf, -np.inf, 9.9e-4, 1e-3, 1.01e-3, 1e18, 1.1e18, -3e30, 3e38, 1e-40]
    x = np.concatenate([rng.standard_normal(10**4) * s for s in (1e-4, 1, 1e3)] + [specials]).astype(np.float32)
    for softening in (None, 0.37, 1e-20):
        with np.errstate(over="ignore"):  # 3e38 / 1e-20
            plain = _asinh32_in_plain_steps(x if softening is None else x / np.float32(softening))
            ours = asinh32(x, softening)
        np.testing.assert_array_equal(ours, plain)  # NaNs in the same places
        assert np.array_equal(np.signbit(ours), np.signbit(plain))


@pytest.mark.parametrize("method", ["asinh", "robust", "minmax", "none"])
@pytest.mark.parametrize("seed", range(6))
def test_levels_are_the_plain_steps_bit_for_bit(method, seed):
    """The pictures' levels (in place, fewer arrays) are those of the plain numpy steps, pixel for pixel."""
    rng = np.random.default_rng(seed)
    maps = [_heavy_tailed(seed), np.abs(_heavy_tailed(seed)), rng.standard_normal((64, 48)).astype(np.float32) ** 5,
            np.zeros((8, 8), np.float32), np.full((5, 9), -2.5, np.float32),
            (rng.random((33, 17)) < 0.5).astype(np.float32) * np.float32(1e-30)]
    for m in maps:
        scale = viz.fit_scale(m, method)
        np.testing.assert_array_equal(scale.levels(m), _levels_in_plain_steps(scale, m))
        np.testing.assert_array_equal(viz.to_uint8(m, -0.3, 0.7), _levels_in_plain_steps(viz.Scale("minmax", -0.3, 0.7), m))


def test_png_bytes_with_isa_l_decode_to_the_picture():
    """ISA-L's deflate (the ``isal`` package), as png_bytes uses it where it is installed."""
    import io

    from cnn_cli import pngfile

    if pngfile._isal is None:
        pytest.skip("isal is not installed")
    rng = np.random.default_rng(1)
    for pixels in (rng.integers(0, 256, (64, 50), dtype=np.uint8), np.zeros((3, 700), np.uint8),
                   rng.integers(0, 256, (40, 30, 3), dtype=np.uint8), np.full((1, 1), 7, np.uint8)):
        with Image.open(io.BytesIO(pngfile.png_bytes(Image.fromarray(pixels)))) as decoded:
            decoded.load()
            np.testing.assert_array_equal(np.asarray(decoded), pixels)


def test_png_bytes_deflate_as_the_picture_asks(monkeypatch):
    """Without ISA-L, flat pictures (PNG_FLAT_FRACTION of the filtered bytes zero or more) take zlib's default
    strategy, noise-like ones run-length, and those run-length would shrink by less than
    PNG_STORE_SAVING are stored; every one decodes to the picture."""
    import io

    from cnn_cli import pngfile

    monkeypatch.setattr(pngfile, "_isal", None)  # the zlib ways, where ISA-L is not installed
    streams = []
    real = pngfile._zlib_stream
    monkeypatch.setattr(pngfile, "_zlib_stream", lambda data, level, strategy: streams.append(
        (data.size, level, strategy)) or real(data, level, strategy))
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # incompressible
    smooth = np.cumsum(rng.choice([-2, -1, 1, 2], (64, 64)), axis=1).astype(np.uint8)  # small steps: deflate pays
    flat = noise.copy()
    flat[:, 1::3] = flat[:, 0::3][:, : flat[:, 1::3].shape[1]]  # a third of the pixels repeat their left neighbour
    for pixels in (noise, smooth, flat):
        with Image.open(io.BytesIO(pngfile.png_bytes(Image.fromarray(pixels)))) as decoded:
            np.testing.assert_array_equal(np.asarray(decoded), pixels)
    whole, probe = 64 * 65, 8 * 65
    rle, default = pngfile.PNG_STRATEGY, pngfile.PNG_FLAT_STRATEGY
    assert streams == [(probe, 1, rle), (whole, 0, rle),  # noise: probed, stored
                       (probe, 1, rle), (whole, 1, rle),  # smooth: probed, run-length
                       (whole, 1, default)], streams
