"""Hostile image files: bombs, damaged and disguised files, every Pillow mode, orientation, frames.

The README's "What happens when..." table is the spec. Every bad file is built
here in a few lines, so each test shows exactly what it feeds the tool.
"""

import io
import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clirunner import cnn
from cnn_cli.imageio import ImageError, read_image

LUMA = np.array([0.299, 0.587, 0.114])


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def _save(path, array, mode=None, **kw):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)
    return path


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _encoded(fmt, array, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


# Reads one file with cnn_cli.imageio in a fresh process (no Numba) and reports the outcome, the time
# and how far the peak resident memory rose: a peak is only measurable in a process that has not
# already been through bigger allocations, as this test session has.
PROBE = """
import json, resource, sys, time
from cnn_cli.imageio import ImageError, read_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    result = {"shape": list(read_image(sys.argv[1], max_pixels=int(sys.argv[2])).shape)}
except ImageError as exc:
    result = {"error": str(exc)}
result["seconds"] = time.perf_counter() - start
result["growth_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
print(json.dumps(result))
"""


def _probe(path, max_pixels=100_000_000):
    child = subprocess.run([sys.executable, "-c", PROBE, str(path), str(max_pixels)],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout)


# ----------------------------------------------------------------- decompression bombs


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_declaring(width, height):
    """A ~70-byte PNG whose IHDR declares width x height (8-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


def _jpeg_declaring(width, height):
    data = bytearray(_encoded("JPEG", _noise((8, 8))))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _bmp_declaring(width, height):
    data = bytearray(_encoded("BMP", _noise((4, 4))))
    data[18:26] = struct.pack("<ii", width, height)  # BITMAPINFOHEADER biWidth, biHeight
    return bytes(data)


def _gif_declaring(width, height):
    data = bytearray(_encoded("GIF", _noise((4, 4))))
    data[6:10] = struct.pack("<HH", width, height)            # logical screen
    desc = data.index(b"\x2c", 13)                             # image descriptor
    data[desc + 5:desc + 9] = struct.pack("<HH", width, height)
    return bytes(data)


def _tiff_declaring(width, height):
    data = bytearray(_encoded("TIFF", _noise((4, 4))))
    assert data[:2] == b"II"
    ifd = struct.unpack("<I", data[4:8])[0]
    for k in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * k
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength
            value = width if tag == 256 else height
            if kind == 3:
                data[entry + 8:entry + 10] = struct.pack("<H", min(value, 65535))
            else:
                data[entry + 8:entry + 12] = struct.pack("<I", value)
    return bytes(data)


BOMBS = {
    "png": lambda: _png_declaring(100_000, 100_000),
    "jpg": lambda: _jpeg_declaring(65_000, 65_000),
    "bmp": lambda: _bmp_declaring(100_000, 100_000),
    "gif": lambda: _gif_declaring(65_535, 65_535),
    "tif": lambda: _tiff_declaring(100_000, 100_000),
    "ppm": lambda: b"P5\n100000 100000\n255\n" + b"\x00" * 64,
}


@pytest.mark.parametrize("ext", list(BOMBS))
def test_bomb_is_refused_from_its_header_fast_and_in_bounded_memory(tmp_path, ext):
    path = tmp_path / f"bomb.{ext}"
    path.write_bytes(BOMBS[ext]())
    assert path.stat().st_size < 2000
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message and "over the limit" in message and "--max-pixels" in message, message
    report = _probe(path)
    assert report.get("error") == message, report
    assert report["seconds"] < 1.0, report
    assert report["growth_mb"] < 100, report


def test_bomb_through_the_cli_names_the_file_and_max_pixels_moves_the_cap(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(12_000, 10_000))  # 1.2e8 pixels, over the default 1e8
    out = tmp_path / "out"
    start = time.perf_counter()
    result = cnn("apply", bomb, "-o", out)
    assert result.exit_code == 1, result.output
    assert time.perf_counter() - start < 5
    [line] = _error_lines(result)
    assert "bomb.png" in line and "over the limit" in line and "max-pixels" in line, line

    # Raised above the declared size, the header passes; the maps of 1.2e8 pixels would not fit
    # in memory, which apply says from the header alone, without touching 120 MB of pixels.
    result = cnn("apply", bomb, "-o", out, "--max-pixels", "200000000")
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result)
    assert "bomb.png" in line and "max-pixels" not in line, line
    assert "would need about" in line and "--max-memory" in line, line
    report = _probe(bomb, 200_000_000)
    assert "damaged or truncated" in report["error"] and report["seconds"] < 2 and report["growth_mb"] < 100, report

    # Lowered below a real image's size, that image is refused; at its size it is read.
    img = _save(tmp_path / "small.png", _noise((40, 50)))
    result = cnn("apply", img, "-o", out, "--bank", "edges:sobel_x", "--max-pixels", str(40 * 50 - 1))
    assert result.exit_code == 1, result.output
    assert "small.png" in result.stderr and "over the limit" in result.stderr
    assert not (out / "small").exists()
    result = cnn("apply", img, "-o", out, "--bank", "edges:sobel_x", "--max-pixels", str(40 * 50))
    assert result.exit_code == 0, result.output
    assert (out / "small" / "manifest.json").is_file()


def test_png_with_a_compressed_text_bomb_is_refused_or_read_quickly(tmp_path):
    """A valid 8x8 PNG with a zTXt chunk that inflates to 200 MB of zeros."""
    good = _encoded("PNG", _noise((8, 8)))
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * 200_000_000, 9))
    iend = good.rindex(b"IEND") - 4
    path = tmp_path / "textbomb.png"
    path.write_bytes(good[:iend] + ztxt + good[iend:])
    report = _probe(path)
    assert report.get("shape") == [1, 8, 8] or str(path) in report.get("error", ""), report
    assert report["seconds"] < 2 and report["growth_mb"] < 100, report


# ----------------------------------------------------------------- damaged and disguised files


def _assert_refused(path, *parts):
    with pytest.raises(ImageError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message, message
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])
def test_truncated_files_are_refused_at_every_cut(tmp_path, fmt, fraction):
    data = _encoded(fmt, _noise((64, 64, 3)), **({"quality": 90} if fmt == "JPEG" else {}))
    path = tmp_path / f"cut.{'png' if fmt == 'PNG' else 'jpg'}"
    path.write_bytes(data[:int(len(data) * fraction)])
    _assert_refused(path)


def test_progressive_jpeg_and_interlaced_png_truncated(tmp_path):
    for name, data in [("prog.jpg", _encoded("JPEG", _noise((64, 64, 3)), progressive=True)),
                       ("inter.png", _encoded("PNG", _noise((64, 64, 3)), interlace=1))]:
        for fraction in (0.3, 0.6, 0.9):
            path = tmp_path / name
            path.write_bytes(data[:int(len(data) * fraction)])
            _assert_refused(path)


@pytest.mark.parametrize("seed", range(4))
def test_random_bytes_are_refused(tmp_path, seed):
    path = tmp_path / f"random{seed}.png"
    path.write_bytes(np.random.default_rng(seed).bytes(4096))
    _assert_refused(path)


@pytest.mark.parametrize("name, content, expected", [
    ("empty.png", b"", None),
    ("empty.jpg", b"", None),
    ("notes.jpg", b"these are my holiday notes, not a photo\n" * 20, "not an image"),
    ("header_only.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", None),
    ("magic_only.png", b"\x89PNG\r\n\x1a\n", None),
    ("html.gif", b"<!DOCTYPE html><html><body>404</body></html>", "not an image"),
    ("zeros.bmp", b"\x00" * 1000, "not an image"),
])
def test_empty_and_non_image_files_are_refused(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    _assert_refused(path, *([expected] if expected else []))


def test_valid_png_named_gif_is_read_by_its_content(tmp_path):
    array = _noise((20, 30))
    path = tmp_path / "really_png.gif"
    path.write_bytes(_encoded("PNG", array))
    np.testing.assert_allclose(read_image(path)[0], array / 255.0, atol=1e-7)


EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
       b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n")
# DOS EPS binary header: magic C5D0D3C6, PostScript section offset and length.
DOS_EPS = b"\xc5\xd0\xd3\xc6" + struct.pack("<II", 30, len(EPS)) + b"\x00" * 18 + EPS
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


@pytest.fixture
def no_subprocesses(monkeypatch):
    """Fail the test if anything starts a program (Ghostscript for EPS, for one)."""
    started = []

    def refuse(*args, **kwargs):
        started.append(args)
        raise AssertionError(f"a subprocess was started: {args!r}")

    # Pretend Ghostscript is installed, so that opening an EPS would really try to run it.
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs")
    monkeypatch.setattr(subprocess, "Popen", refuse)
    monkeypatch.setattr("os.system", refuse)
    monkeypatch.setattr("os.posix_spawn", refuse, raising=False)
    monkeypatch.setattr("os.posix_spawnp", refuse, raising=False)
    yield started
    assert started == [], started


@pytest.mark.parametrize("name, content", [
    ("figure.png", EPS), ("figure.eps", EPS), ("dos.png", DOS_EPS), ("dos.eps", DOS_EPS),
    ("doc.png", PDF), ("doc.pdf", PDF),
])
def test_eps_and_pdf_are_never_opened(tmp_path, no_subprocesses, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    _assert_refused(path, "not an image")
    # through the CLI too, given explicitly (an .eps ending is not walked, but a named file is tried)
    out = tmp_path / "out"
    result = cnn("apply", path, "-o", out)
    assert result.exit_code == 1, result.output
    [line] = _error_lines(result)
    assert name in line and "not an image" in line, line
    assert not (out / Path(name).stem).exists()


def test_bad_files_in_a_batch_are_each_named_and_the_good_one_is_written(tmp_path):
    folder = tmp_path / "in"
    _save(folder / "good.png", _noise((32, 32)))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not a jpeg\n")
    (folder / "cut.png").write_bytes(_encoded("PNG", _noise((32, 32)))[:300])
    (folder / "fig.png").write_bytes(EPS)
    (folder / "bomb.gif").write_bytes(_gif_declaring(65_535, 65_535))
    out = tmp_path / "out"
    result = cnn("apply", folder, "-o", out, "--bank", "edges:sobel_x")
    assert result.exit_code == 3, result.output
    lines = _error_lines(result)
    for name in ("empty.png", "text.jpg", "cut.png", "fig.png", "bomb.gif"):
        assert sum(name in line for line in lines) == 1, (name, lines)
    assert "good.png" not in "\n".join(lines)
    assert "5 failed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good", "index.html"]


# ----------------------------------------------------------------- every Pillow mode


def _rgb_of(mode_image):
    """What the README promises, computed independently: (3, H, W) in [0, 1]."""
    im = mode_image
    if im.mode in ("LA", "RGBA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255
        rgb = rgba[..., :3] * rgba[..., 3:] + 1.0 * (1 - rgba[..., 3:])
    else:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float64) / 255
    return np.moveaxis(rgb, -1, 0)


def _mode_image(mode):
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    if mode == "1":
        return Image.fromarray(rng.integers(0, 2, (12, 10)).astype(bool))
    if mode == "P":  # palette with a transparent entry
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        im.info["transparency"] = 3
        return im
    if mode == "LA":
        return Image.fromarray(np.stack([rgb[..., 0], rgb[..., 1]], -1), mode="LA")
    if mode == "RGBA":
        return Image.fromarray(np.concatenate([rgb, rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)], -1))
    if mode == "PA":
        return Image.fromarray(np.concatenate([rgb, rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)], -1)
                               ).convert("PA")
    return Image.fromarray(rgb).convert(mode)


@pytest.mark.parametrize("mode, ext", [
    ("1", "png"), ("L", "png"), ("LA", "png"), ("P", "png"), ("P", "gif"), ("RGB", "png"),
    ("RGBA", "png"), ("CMYK", "tif"), ("CMYK", "jpg"), ("PA", "tif"), ("RGB", "webp"), ("RGBA", "webp"),
])
def test_8_bit_modes_read_as_documented(tmp_path, mode, ext):
    im = _mode_image(mode)
    path = tmp_path / f"img.{ext}"
    kw = {"quality": 100} if ext == "jpg" else {"lossless": True} if ext == "webp" else {}
    if mode == "P":
        kw["transparency"] = 3
    im.save(path, **kw)
    with Image.open(path) as on_disk:
        on_disk.load()
        assert on_disk.mode.startswith(mode[0]), on_disk.mode
        expected = _rgb_of(on_disk)  # the file as stored (JPEG and GIF may change values)
    rgb = read_image(path, color="rgb")
    gray = read_image(path)
    assert rgb.dtype == gray.dtype == np.float32
    assert rgb.shape == (3, 12, 10) and gray.shape == (1, 12, 10)
    assert 0 <= rgb.min() and rgb.max() <= 1 and 0 <= gray.min() and gray.max() <= 1
    np.testing.assert_allclose(rgb, expected, atol=1e-6)
    np.testing.assert_allclose(gray[0], np.tensordot(LUMA, expected, 1), atol=1e-5)


def test_transparent_pixels_of_every_alpha_mode_become_white(tmp_path):
    for mode in ("LA", "RGBA", "PA"):
        black = Image.new("RGBA", (6, 4), (0, 0, 0, 0)).convert(mode)
        path = tmp_path / f"clear_{mode}.{'tif' if mode == 'PA' else 'png'}"
        black.save(path)
        np.testing.assert_allclose(read_image(path, color="rgb"), 1.0, atol=1e-6, err_msg=mode)


def test_1_bit_image_is_exactly_0_and_1(tmp_path):
    bits = np.random.default_rng(1).integers(0, 2, (9, 13)).astype(bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    np.testing.assert_array_equal(read_image(path)[0], bits.astype(np.float32))


@pytest.mark.parametrize("ext", ["png", "tif"])
def test_16_bit_keeps_every_level(tmp_path, ext):
    values = (np.arange(40 * 50, dtype=np.int64) * 32 + 7).reshape(40, 50).astype(np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    path = tmp_path / f"deep.{ext}"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16"), im.mode
    img = read_image(path)
    assert len(np.unique(img)) == len(np.unique(values)) > 256
    np.testing.assert_allclose(img[0], values / 65535.0, rtol=0, atol=1e-7)
    assert img.min() == 0 and img.max() == 1


def test_32_bit_int_within_16_bits_is_divided_by_65535(tmp_path):
    values = np.array([[0, 1, 300], [65535, 40000, 12345]], np.int32)
    path = tmp_path / "i32.tif"
    Image.fromarray(values, mode="I").save(path)
    with Image.open(path) as im:
        assert im.mode == "I"
    np.testing.assert_allclose(read_image(path)[0], values / 65535.0, atol=1e-7)


def test_32_bit_int_beyond_16_bits_is_divided_by_its_maximum(tmp_path):
    values = np.array([[0, 1, 300], [2**31 - 1, 70000, 1 << 20]], np.int32)
    path = tmp_path / "i32big.tif"
    Image.fromarray(values, mode="I").save(path)
    img = read_image(path)
    assert 0 <= img.min() and img.max() <= 1 and np.all(np.isfinite(img))
    np.testing.assert_allclose(img[0], values / (2**31 - 1), atol=1e-7)


def test_32_bit_int_with_negative_values_stays_in_0_1(tmp_path):
    values = np.array([[-2**31, -5, 0], [5, 100000, 2**31 - 1]], np.int32)
    path = tmp_path / "i32neg.tif"
    Image.fromarray(values, mode="I").save(path)
    img = read_image(path)
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1 and np.all(np.isfinite(img))


def test_float_within_0_1_is_kept_and_nan_inf_become_finite(tmp_path):
    values = np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)
    path = tmp_path / "f.tif"
    Image.fromarray(values, mode="F").save(path)
    np.testing.assert_array_equal(read_image(path)[0], values)
    values[0, 0], values[0, 1], values[0, 2] = np.nan, np.inf, -np.inf
    Image.fromarray(values, mode="F").save(path)
    img = read_image(path)
    assert np.all(np.isfinite(img)) and 0 <= img.min() and img.max() <= 1
    np.testing.assert_array_equal(img[0].ravel()[3:], values.ravel()[3:])


def test_float_out_of_range_is_rescaled_by_min_and_max(tmp_path):
    values = np.array([[-2.0, 0.0], [3.0, 8.0]], np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(values, mode="F").save(path)
    np.testing.assert_allclose(read_image(path)[0], (values + 2) / 10, atol=1e-7)


def test_float_with_a_range_wider_than_float32_stays_finite(tmp_path):
    values = np.array([[-3e38, 0.0], [3e38, 1.0]], np.float32)
    path = tmp_path / "wide.tif"
    Image.fromarray(values, mode="F").save(path)
    img = read_image(path)
    assert np.all(np.isfinite(img)), img
    np.testing.assert_allclose(img[0], [[0.0, 0.5], [1.0, 0.5]], atol=1e-6)


def test_constant_float_image_out_of_range_is_finite(tmp_path):
    path = tmp_path / "flat.tif"
    Image.fromarray(np.full((4, 4), 7.5, np.float32), mode="F").save(path)
    img = read_image(path)
    assert np.all(np.isfinite(img)) and 0 <= img.min() and img.max() <= 1


# ----------------------------------------------------------------- orientation and frames


def _marked(h=20, w=30):
    """A landscape image with a bright block in its top-left corner and a grey one top-right."""
    a = np.zeros((h, w), np.uint8)
    a[:5, :5] = 255
    a[:5, -5:] = 128
    return a


# How a viewer shows the stored pixels for each EXIF orientation value.
ORIENTED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.T,
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).T,
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", list(ORIENTED))
def test_exif_orientation_in_png_exactly(tmp_path, orientation):
    stored = _marked()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(stored).save(path, exif=exif)
    np.testing.assert_allclose(read_image(path)[0], ORIENTED[orientation](stored) / 255.0, atol=1e-7)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_in_jpeg(tmp_path, orientation):
    stored = _marked(40, 64)
    stored[:8, :8] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"phone{orientation}.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    img = read_image(path)[0]
    expected = ORIENTED[orientation](stored) / 255.0
    assert img.shape == expected.shape
    assert np.abs(img - expected).mean() < 0.02


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_invalid_exif_orientation_is_ignored(tmp_path, orientation):
    stored = _marked()
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "odd.png"
    Image.fromarray(stored).save(path, exif=exif)
    np.testing.assert_allclose(read_image(path)[0], stored / 255.0, atol=1e-7)


def test_garbage_exif_block_does_not_crash(tmp_path):
    path = tmp_path / "junk_exif.jpg"
    Image.fromarray(_marked()).save(path, exif=b"Exif\x00\x00" + b"II*\x00\x08\x00\x00\x00" + b"\xff" * 40)
    try:
        img = read_image(path)
        assert img.shape in ((1, 20, 30), (1, 30, 20))
    except ImageError as exc:
        assert str(path) in str(exc)


def test_animated_gif_with_changing_palettes_and_sizes_gives_frame_0(tmp_path):
    first = np.zeros((16, 24, 3), np.uint8)
    first[..., 0] = 200  # red
    frames = [Image.fromarray(first)]
    for v in (30, 240):
        f = np.zeros((16, 24, 3), np.uint8)
        f[..., 2] = v  # blue frames with a different palette
        frames.append(Image.fromarray(f))
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40, loop=0, disposal=2)
    with Image.open(path) as im:
        assert im.n_frames == 3
    img = read_image(path, color="rgb")
    assert img.shape == (3, 16, 24)
    np.testing.assert_allclose(img[:, 0, 0], [200 / 255, 0, 0], atol=2 / 255)


def test_multipage_tiff_with_pages_of_other_modes_and_sizes_gives_page_0(tmp_path):
    page0 = (np.arange(12 * 16, dtype=np.uint16) * 300).reshape(12, 16)
    pages = [Image.fromarray(page0), Image.fromarray(_noise((30, 40, 3))), Image.fromarray(_noise((5, 5)))]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    with Image.open(path) as im:
        assert im.n_frames == 3
    img = read_image(path)
    assert img.shape == (1, 12, 16)
    np.testing.assert_allclose(img[0], page0 / 65535.0, atol=1e-7)


def test_apng_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((10, 14), v, np.uint8)) for v in (50, 250)]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=40)
    np.testing.assert_allclose(read_image(path), 50 / 255, atol=1e-6)


# ----------------------------------------------------------------- images smaller than a kernel


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (1, 200), (200, 2)])
def test_image_smaller_than_a_kernel_fails_alone_and_the_batch_goes_on(tmp_path, shape):
    folder = tmp_path / "in"
    _save(folder / "a_good.png", _noise((48, 48)))
    _save(folder / "b_tiny.png", _noise(shape, seed=3))
    _save(folder / "c_good.png", _noise((48, 48), seed=5))
    out = tmp_path / "out"
    result = cnn("apply", folder, "-o", out)  # the default pipeline has 7x7 Gabor kernels
    assert result.exit_code == 3, result.output
    [line] = _error_lines(result)
    assert "b_tiny.png" in line, line
    assert "larger than" in line or "padding" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["a_good", "c_good", "index.html"]
    assert "2 image(s)" in result.stderr and "1 failed" in result.stderr


def test_image_smaller_than_a_kernel_with_zero_padding_names_the_kernel_size(tmp_path):
    bank = tmp_path / "big.toml"
    bank.write_text('[[kernel]]\nname = "big"\ngaussian = { sigma = 3.0 }\n')  # 19x19
    pipe = tmp_path / "valid.toml"
    pipe.write_text('kind = "pipeline"\n[[layer]]\ntype = "conv"\nbanks = ["big.toml"]\npadding = "valid"\n')
    img = _save(tmp_path / "small.png", _noise((10, 40)))
    good = _save(tmp_path / "large.png", _noise((40, 40)))
    result = cnn("apply", img, good, "-o", tmp_path / "out", "--pipeline", pipe)
    assert result.exit_code == 3, result.output
    [line] = _error_lines(result)
    assert "small.png" in line and "larger than the padded input" in line, line
    assert (tmp_path / "out" / "large" / "features.npz").is_file()
