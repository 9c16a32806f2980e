"""Reading images defensively, and finding them on disk."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from cnn_cli.imageio import ImageError, find_images, read_image

H, W = 48, 64

Image.init()
def _gradient():
    """A smooth grey (H, W) uint8 image with many levels and no symmetry."""
    yy, xx = np.mgrid[:H, :W]
    return (xx * 2 + yy * 2 + 10).astype(np.uint8)


def _color():
    g = _gradient()
    return np.stack([g, 255 - g, np.full_like(g, 60)], axis=-1)


FORMATS = {
    "png": dict(ext="png", kw={}, tol=0),
    "jpeg": dict(ext="jpg", kw={"quality": 95, "subsampling": 0}, tol=0.05),
    "bmp": dict(ext="bmp", kw={}, tol=0),
    "tiff": dict(ext="tif", kw={}, tol=0),
    "webp": dict(ext="webp", kw={"lossless": True}, tol=0),
    "gif": dict(ext="gif", kw={}, tol=0),
}


def _saved(tmp_path, fmt, pixels, mode):
    """``pixels`` saved as an image of format ``fmt``: (its FORMATS entry, path); skips WebP without support."""
    if fmt == "webp" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    spec = FORMATS[fmt]
    path = tmp_path / f"img.{spec['ext']}"
    Image.fromarray(pixels, mode=mode).save(path, **spec["kw"])
    return spec, path


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_format_reads_grey(tmp_path, fmt):
    spec, path = _saved(tmp_path, fmt, _gradient(), "L")
    img = read_image(path)
    assert img.dtype == np.float32 and img.shape == (1, H, W)
    assert img.min() >= 0 and img.max() <= 1
    expected = _gradient() / 255.0
    assert np.abs(img[0] - expected).mean() <= max(spec["tol"] / 4, 1e-6)
    assert np.abs(img[0] - expected).max() <= spec["tol"] + 1e-6


@pytest.mark.parametrize("fmt", ["png", "jpeg", "bmp", "tiff", "webp", "gif"])
def test_every_format_reads_rgb(tmp_path, fmt):
    spec, path = _saved(tmp_path, fmt, _color(), "RGB")
    rgb = read_image(path, color="rgb")
    assert rgb.shape == (3, H, W)
    expected = np.moveaxis(_color(), -1, 0) / 255.0
    if fmt == "gif":  # a palette of 256 colours: compare with what Pillow decodes
        expected = np.moveaxis(np.asarray(Image.open(path).convert("RGB")), -1, 0) / 255.0
    assert np.abs(rgb - expected).max() <= spec["tol"] + 1e-6
    gray = read_image(path, color="gray")
    assert gray.shape == (1, H, W)
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    np.testing.assert_allclose(gray[0], luma, atol=1e-5)


def test_grey_image_read_as_rgb_repeats_the_channel(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(_gradient(), mode="L").save(path)
    rgb = read_image(path, color="rgb")
    assert rgb.shape == (3, H, W)
    np.testing.assert_array_equal(rgb[0], rgb[1])
    np.testing.assert_array_equal(rgb[0], rgb[2])
    np.testing.assert_allclose(rgb[0], _gradient() / 255.0, atol=1e-7)


def test_format_is_decided_by_content_not_extension(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(_gradient(), mode="L").save(path, format="PNG")
    np.testing.assert_allclose(read_image(path)[0], _gradient() / 255.0, atol=1e-7)


def test_16_bit_png_keeps_its_levels(tmp_path):
    values = (np.arange(H * W, dtype=np.int64) * 21).reshape(H, W)
    values[-1, -1] = 65535
    values = values.astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")  # really 16-bit on disk
    img = read_image(path)
    assert img.shape == (1, H, W)
    assert len(np.unique(img)) > 256
    np.testing.assert_allclose(img[0], values / 65535.0, rtol=0, atol=1e-7)
    assert img.max() == pytest.approx(1.0)
    rgb = read_image(path, color="rgb")
    assert rgb.shape == (3, H, W) and len(np.unique(rgb[1])) > 256


def test_rgba_is_composited_onto_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 255                       # red
    rgba[0, :, 3] = 0                        # row 0: fully transparent
    rgba[1, :, 3] = 255                      # row 1: opaque
    rgba[2:, :, 3] = 128                     # half transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    img = read_image(path, color="rgb")
    assert img.shape == (3, 4, 6)
    np.testing.assert_allclose(img[:, 0], 1.0, atol=1e-6)                   # white
    np.testing.assert_allclose(img[:, 1], [[1.0] * 6, [0.0] * 6, [0.0] * 6], atol=1e-6)
    a = 128 / 255
    np.testing.assert_allclose(img[0, 2:], 1.0, atol=1e-6)
    np.testing.assert_allclose(img[1, 2:], 1 - a, atol=1e-6)
    gray = read_image(path)
    np.testing.assert_allclose(gray[0, 0], 1.0, atol=1e-6)


def test_grey_with_alpha_and_palette_transparency(tmp_path):
    la = np.zeros((3, 5, 2), np.uint8)
    la[..., 1] = 0  # transparent black -> white
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    np.testing.assert_allclose(read_image(path), 1.0, atol=1e-6)

    p = Image.new("P", (5, 3), 0)
    p.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    p.info["transparency"] = 0
    path = tmp_path / "p.gif"
    p.save(path, transparency=0)
    np.testing.assert_allclose(read_image(path, color="rgb"), 1.0, atol=1e-6)


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((40, 60), np.uint8)  # landscape on disk: 60 wide, 40 high
    array[:10, :] = 255                   # a bright band at the top
    exif = Image.Exif()
    exif[0x0112] = 6                      # "rotate 90 CW to view"
    path = tmp_path / "phone.jpg"
    Image.fromarray(array, mode="L").save(path, exif=exif, quality=95)
    img = read_image(path)
    assert img.shape == (1, 60, 40)
    # the top band of the stored image is on the right once rotated clockwise
    assert img[0, :, -5:].mean() > 0.9 and img[0, :, :5].mean() < 0.1


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((20, 30), v, np.uint8), mode="L") for v in (200, 10, 90)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    img = read_image(path)
    assert img.shape == (1, 20, 30)
    np.testing.assert_allclose(img, 200 / 255, atol=1 / 255)


def test_multipage_tiff_gives_its_first_page(tmp_path):
    pages = [Image.fromarray(np.full((12, 16), v, np.uint8), mode="L") for v in (30, 220)]
    path = tmp_path / "pages.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    np.testing.assert_allclose(read_image(path), 30 / 255, atol=1e-6)


# ----------------------------------------------------------------- bad files


def _png_bytes(array):
    path_like = __import__("io").BytesIO()
    Image.fromarray(array).save(path_like, format="PNG")
    return path_like.getvalue()


def _assert_image_error(path, *parts, **kwargs):
    with pytest.raises(ImageError) as info:
        read_image(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


def test_truncated_png(tmp_path):
    data = _png_bytes(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    _assert_image_error(path)


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _assert_image_error(path)


def test_text_file_named_png_is_reported_as_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _assert_image_error(path, "not an image")


def test_non_image_is_reported_as_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    _assert_image_error(path, "not an image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_image_error(path)


def test_missing_file_and_folder(tmp_path):
    _assert_image_error(tmp_path / "nope.png", "no such file")
    folder = tmp_path / "dir.png"
    folder.mkdir()
    _assert_image_error(folder)


def test_formats_outside_the_allow_list_are_refused(tmp_path):
    path = tmp_path / "x.ico"
    Image.fromarray(_gradient()[:32, :32], mode="L").save(path, format="ICO")
    _assert_image_error(path, "not an image")


def _png_header_only(width, height):
    """A tiny PNG that declares width x height and holds almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_huge_declared_dimensions_are_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(5000, 4000))
    message = _assert_image_error(path, "20000000", "max-pixels", max_pixels=1_000_000)
    assert "5000x4000" in message
    # the same file under a limit it fits is decoded (and found truncated)
    small = tmp_path / "ok.png"
    Image.fromarray(_gradient(), mode="L").save(small)
    with pytest.raises(ImageError, match="over the limit"):
        read_image(small, max_pixels=H * W - 1)
    assert read_image(small, max_pixels=H * W).shape == (1, H, W)


def test_huge_image_message_with_default_limit(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20000, 20000))
    _assert_image_error(path, "over the limit", "max-pixels")


def test_max_pixels_is_the_only_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(_gradient(), mode="L").save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # H*W = 3072 > 2 * 100
    img = read_image(path, max_pixels=10**6)
    assert img.shape == (1, H, W)


def test_max_size_downscales_the_longer_side(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(_color(), mode="RGB").save(path)
    small = read_image(path, max_size=32)
    assert small.shape == (1, 24, 32) and small.dtype == np.float32
    full = read_image(path)
    assert abs(float(small.mean()) - float(full.mean())) < 0.03
    rgb = read_image(path, color="rgb", max_size=16)
    assert rgb.shape == (3, 12, 16)
    # no upscaling
    assert read_image(path, max_size=1000).shape == (1, H, W)
    tall = tmp_path / "tall.png"
    Image.fromarray(np.zeros((100, 10), np.uint8), mode="L").save(tall)
    assert read_image(tall, max_size=50).shape == (1, 50, 5)


# ----------------------------------------------------------------- finding images


def _touch_png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(path, format="PNG")
    return path


def _names(found, root):
    return sorted(str(Path(p).relative_to(root)) for p in found)


def test_find_images_walks_folders_and_skips_hidden(tmp_path):
    root = tmp_path / "photos"
    _touch_png(root / "a.png")
    _touch_png(root / "sub" / "b.JPG")
    _touch_png(root / "sub" / "deeper" / "c.tiff")
    _touch_png(root / ".hidden.png")
    _touch_png(root / "._a.png")                 # macOS AppleDouble
    _touch_png(root / "sub" / "._b.JPG")
    _touch_png(root / ".cache" / "d.png")        # hidden folder
    _touch_png(root / "sub" / ".git" / "e.png")
    (root / "notes.txt").write_text("not an image")
    (root / "data.npz").write_bytes(b"")
    found, problems = find_images([root])
    assert problems == []
    assert _names(found, root) == ["a.png", "sub/b.JPG", "sub/deeper/c.tiff"]
    # a stable order, and the same file twice is listed once
    again, _ = find_images([root, root / "a.png"])
    assert again == found


def test_find_images_explicit_files_and_globs(tmp_path, monkeypatch):
    root = tmp_path / "set"
    for name in ("x1.png", "x2.png", "y.png"):
        _touch_png(root / name)
    _touch_png(root / "nested" / "x3.png")
    monkeypatch.chdir(tmp_path)
    found, problems = find_images(["set/x*.png"])
    assert problems == [] and _names(found, "set") == ["x1.png", "x2.png"]
    found, problems = find_images(["set/**/x*.png"])
    assert problems == [] and _names(found, "set") == ["nested/x3.png", "x1.png", "x2.png"]
    found, problems = find_images([str(root / "y.png")])
    assert problems == [] and found == [root / "y.png"]
    # an explicit file is taken whatever its ending; its content decides later
    odd = root / "scan.dat"
    odd.write_bytes(b"x")
    found, problems = find_images([str(odd)])
    assert found == [odd] and problems == []


def test_find_images_reports_what_matched_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    _touch_png(tmp_path / "good.png")
    found, problems = find_images([tmp_path / "missing.png", str(tmp_path / "*.nothing"),
                                   empty, tmp_path / "good.png"])
    assert found == [tmp_path / "good.png"]
    assert len(problems) == 3
    assert "missing.png" in problems[0] and "no such file" in problems[0]
    assert "*.nothing" in problems[1] and "matches no files" in problems[1]
    assert str(empty) in problems[2] and "no images" in problems[2]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_find_images_does_not_follow_links_by_default(tmp_path):
    outside = _touch_png(tmp_path / "outside" / "o.png")
    root = tmp_path / "walk"
    _touch_png(root / "real.png")
    os.symlink(outside, root / "link.png")
    os.symlink(outside.parent, root / "linkdir")
    found, _ = find_images([root])
    assert _names(found, root) == ["real.png"]
    found, _ = find_images([root], follow_links=True)
    # link.png and linkdir/o.png are one file: listed once
    assert len(found) == 2
    assert {os.path.realpath(p) for p in found} == {os.path.realpath(outside),
                                                    os.path.realpath(root / "real.png")}


def test_glob_matches_only_image_endings(tmp_path):
    _touch_png(tmp_path / "d" / "a.png")
    (tmp_path / "d" / "notes.txt").write_text("x")
    found, problems = find_images([str(tmp_path / "d" / "*")])
    assert problems == []
    assert [p.name for p in found] == ["a.png"]
