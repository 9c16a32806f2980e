"""Reading images into float32 arrays, defensively, and finding them on disk.

What each Pillow mode becomes (values end in [0, 1]):

- 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: 8-bit channels divided by 255 (P and
  CMYK via RGB);
- I;16 (16-bit PNG, TIFF) and 16-bit RGB and RGBA TIFFs (which Pillow alone
  would narrow to 8 bits): divided by 65535, so all 65536 levels survive;
  signed 16-bit TIFF: (x + 32768) / 65535, so negative values survive too;
  I (32-bit int): divided by 65535 when it fits in 16 bits, else by its maximum;
  F (float): kept when it lies in [0, 1], else rescaled by its min and max;
- LA, RGBA, PA and P with transparency: composited onto white (``BACKGROUND``);
- ``gray`` takes luminance 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, as
  Pillow's ``convert("L")``) in float, so 16-bit precision is kept;
  ``rgb`` repeats a grey image into three channels.

EXIF orientation is applied. Animated GIFs, multi-page TIFFs and WebPs give
their first frame. Formats are allow-listed by content, never by extension,
and no format that runs external programs (EPS, PDF) is ever opened. Only
regular files are opened (never a FIFO or a device).

A JPEG cut short whose end-of-image marker was put back decodes without
complaint (the decoder fills the missing blocks with flat grey); it is
refused as damaged (``jpeg_cut_short``).
"""

from __future__ import annotations

import importlib
import io
import re
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .inputs import EXTENSIONS, find_inputs  # noqa: F401  (EXTENSIONS: re-exported)

#: Formats we decode (Pillow's format names), as far as this Pillow has them;
#: MPO is a phone-camera JPEG that older Pillows keep apart. Only their plugins
#: load: Image.init() imports all 46 of Pillow's, 40 ms of every run.
Image.preinit()  # BMP, GIF, JPEG, PPM, PNG
for _plugin in ("TiffImagePlugin", "WebPImagePlugin", "MpoImagePlugin"):
    try:
        importlib.import_module(f"PIL.{_plugin}")
    except ImportError:  # a Pillow built without it
        pass
FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF", "PPM") if f in Image.OPEN)


#: Refuse images with more pixels than this before decoding (a decompression
#: bomb declares huge dimensions in a tiny file). ``cnn apply --max-pixels``.
MAX_PIXELS = 100_000_000

#: Alpha is composited onto this grey level (white).
BACKGROUND = 1.0

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


class ImageError(ValueError):
    """The file is not an image we can read; the message names the file."""


def read_image(path, *, color="gray", max_size=None, max_pixels=MAX_PIXELS):
    """Decode ``path`` to a float32 array (C, H, W) in [0, 1], C = 1 (gray) or 3 (rgb).

    ``max_size`` downscales (Lanczos) so the longer side is at most that many pixels.
    """
    from .fileio import open_regular

    path = Path(path)
    too_big = (f"{path}: over the limit of {max_pixels} pixels "
               "(raise it with --max-pixels if you trust the file)")
    try:
        fh = open_regular(path, what="an image")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except OSError as exc:
        raise ImageError(exc.strerror or f"{path}: cannot read: {exc}") from None
    # Our check below replaces Pillow's (which fires at twice its own global
    # limit, with a less helpful message); Image.open reads only the header.
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning; we check below
            with Image.open(fh, formats=FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{too_big}: it declares {w}x{h} = {w * h}")
                im.seek(0)
                channels = _decode(im, fh, path)
    except ImageError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image in a format we read ({', '.join(FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError,
            ZeroDivisionError, MemoryError, RecursionError) as exc:
        # Pillow raises many exception types on damaged data; all mean the same.
        raise ImageError(f"{path}: damaged or truncated image ({type(exc).__name__}: {exc})"[:500]) from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if color == "gray":
        img = channels[0:1] if channels.shape[0] == 1 else np.tensordot(LUMA, channels, 1)[None]
    else:
        img = np.repeat(channels, 3, axis=0) if channels.shape[0] == 1 else channels
    if max_size and max(img.shape[1:]) > max_size:
        img = _downscale(img, max_size)
    return np.ascontiguousarray(img, dtype=np.float32)


def _decode(im, fh, path):
    """The first frame of the open image ``im`` (read from ``fh``) as (1 or 3, H, W) float32 in [0, 1], oriented."""
    wide = _wide_layout(im)
    if wide is not None:
        return _read_wide(im, fh, *wide)
    rawmode = _rawmode(im)
    im.load()
    if im.format in ("JPEG", "MPO"):
        fh.seek(0)
        if jpeg_cut_short(fh.read(), np.asarray(im)):
            raise ImageError(f"{path}: damaged or truncated image (its compressed data ends before "
                             "the last rows; the decoder would fill them with grey)")
    return _to_float(ImageOps.exif_transpose(im), signed16=rawmode in _SIGNED16)


# --------------------------------------------------------------------------- 16-bit layouts

#: Raw modes of signed 16-bit grey TIFFs, which Pillow reads into mode I.
_SIGNED16 = ("I;16S", "I;16BS", "I;16NS")

#: 16-bit colour TIFF layouts (raw mode without its byte order) that Pillow
#: narrows to 8 bits per channel, with what their fourth band is.
_WIDE = {"RGB;16": None, "RGBX;16": None, "RGBA;16": "straight"}


def _rawmode(im):
    """The raw mode of every tile of ``im`` if they share one (before loading), else None."""
    modes = {tile[3][0] for tile in (im.tile or []) if isinstance(tile[3], tuple) and tile[3]}
    return modes.pop() if len(modes) == 1 else None


def _wide_layout(im):
    """(raw mode, byte order L or B, alpha) to read ``im`` at 16 bits per channel, or None."""
    rawmode = _rawmode(im) if im.format == "TIFF" and im.mode in ("RGB", "RGBA") else None
    if not rawmode or rawmode[:-1] not in _WIDE or rawmode[-1] not in "LBN":
        return None
    order = rawmode[-1] if rawmode[-1] != "N" else ("L" if sys.byteorder == "little" else "B")
    return rawmode[:-1], order, _WIDE[rawmode[:-1]]


def _read_wide(im, fh, rawmode, order, alpha):
    """A 16-bit RGB(A) TIFF at full depth: decoded twice, for the high and the low bytes.

    Pillow has no 16-bit colour mode: it unpacks each 16-bit sample to its
    high byte (raw mode ``RGB;16L`` for little-endian data). Unpacked as if
    the data were of the other byte order, the same samples give their low
    bytes. Only the tiles' raw mode changes, so every compression works.
    """
    other = "B" if order == "L" else "L"
    im.load()
    high = np.asarray(ImageOps.exif_transpose(im), dtype=np.uint16)
    fh.seek(0)
    with Image.open(fh, formats=("TIFF",)) as again:
        again.seek(0)
        again.tile = [_with_rawmode(t, rawmode + other) for t in again.tile]
        again.load()
        low = np.asarray(ImageOps.exif_transpose(again), dtype=np.uint16)
    if low.shape != high.shape:
        raise ValueError(f"the two halves of the 16-bit samples decoded to {high.shape} and {low.shape}")
    levels = np.moveaxis((high << 8 | low).astype(np.float32) / 65535.0, -1, 0)
    rgb = levels[:3]
    if alpha == "straight":
        rgb = rgb * levels[3] + BACKGROUND * (1 - levels[3])
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _with_rawmode(tile, rawmode):
    """``tile`` (a Pillow tile descriptor) decoding with ``rawmode`` instead."""
    name, extents, offset, args = tile[:4]
    items = (name, extents, offset, (rawmode, *args[1:]))
    return type(tile)._make(items) if hasattr(type(tile), "_make") else items


# --------------------------------------------------------------------------- truncated JPEGs

#: The end of a scan's entropy-coded data: a marker other than a stuffed zero or a restart.
_SCAN_END = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")

#: Start-of-frame markers of DCT-based JPEGs (SOF0-SOF15 but DHT, JPG, DAC and the lossless ones).
_DCT_FRAMES = {0xC0, 0xC1, 0xC2, 0xC5, 0xC6, 0xC9, 0xCA, 0xCD, 0xCE}

#: Bytes put before the end-of-image marker to see whether the decoder wants
#: more data: scattered bits, never 0xFF (which would start a marker), and no
#: leading zero bits, which decode as the zeros the decoder fills in itself
#: (a filler starting 0x0D missed two cuts in three within the last block).
_FILLER = bytes((0xA5 + i * 167) % 255 for i in range(1024))


def _jpeg_scans(data):
    """(scans, offset of the first end-of-image marker or None, whether the scans
    cover every coefficient of every component down to the last bit)."""
    if data[:2] != b"\xff\xd8":
        return 0, None, True
    pos, scans, lowest, dct = 2, 0, {}, False
    while pos + 1 < len(data):
        if data[pos] != 0xFF or data[pos + 1] == 0xFF:
            pos += 1  # fill bytes, or junk between segments
            continue
        marker = data[pos + 1]
        if marker == 0xD9:
            complete = not dct or all(min(al) == max(al) == 0 for al in lowest.values())
            return scans, pos, complete
        if 0xD0 <= marker <= 0xD7 or marker in (0x00, 0x01, 0xD8):
            pos += 2
            continue
        if pos + 4 > len(data):
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if marker in _DCT_FRAMES and len(segment) >= 6:
            dct = True
            count = segment[5]
            lowest = {segment[6 + 3 * i]: [99] * 64 for i in range(count) if 6 + 3 * i < len(segment)}
        elif marker == 0xDA and segment:
            scans += 1
            count = segment[0]
            if len(segment) >= 4 + 2 * count:
                ss, se, al = segment[1 + 2 * count], segment[2 + 2 * count], segment[3 + 2 * count] & 15
                for i in range(count):
                    coefficients = lowest.get(segment[1 + 2 * i])
                    if coefficients is not None:
                        for k in range(ss, min(se, 63) + 1):
                            coefficients[k] = min(coefficients[k], al)
            end = _SCAN_END.search(data, pos + 2 + length)
            if end is None:
                break
            pos = end.end() - 2
            continue
        pos += 2 + length
    return scans, None, True


def jpeg_cut_short(data, decoded):
    """Whether the JPEG ``data`` (the whole file), decoded by Pillow to ``decoded``,
    was cut short and had its end-of-image marker put back.

    The decoder fills what it has no data for with zero bits and zero
    coefficients (flat grey) and says nothing, and Pillow gives no sign of it.
    So: a progressive JPEG whose scans stop before every coefficient is
    complete was cut; otherwise the file is decoded again with filler bytes
    before its end marker. A complete file ignores them (the decoder skips
    bytes between its last block and the marker); a cut one decodes them as
    the data it was missing, and changes. The second decode is the price: it
    doubles the decoding time of a JPEG (0.3 s for 12 Mpx here). Grey last
    pixels cannot stand in for it: a cut within the last block leaves them
    any colour.
    """
    scans, end, complete = _jpeg_scans(data)
    if end is None:
        return False  # no end marker: Pillow has already said it is truncated
    if not complete:
        return True
    head = data[:end].rstrip(b"\xff")  # a fill byte before the marker would make a marker of the filler
    with Image.open(io.BytesIO(head + _FILLER + data[end:]), formats=("JPEG", "MPO")) as again:
        again.load()
        return not np.array_equal(np.asarray(again), decoded)


def _orientation(im):
    """The EXIF orientation of an opened image, from its header alone.

    Pillow's ``getexif`` on a PNG decodes the whole image to look for an eXIf
    chunk after the pixels: a 60-byte PNG declaring 100000x100000 then took
    2.7 GB before its size was refused. A PNG's orientation is taken from an
    eXIf chunk before the pixels, as browsers read it.
    """
    if im.format == "PNG":
        raw = im.info.get("exif")
        if not raw:
            return 1
        exif = Image.Exif()
        exif.load(raw)
        return exif.get(0x0112, 1)
    return im.getexif().get(0x0112, 1)


def image_shape(path, *, color="gray", max_size=None):
    """The (C, H, W) that ``read_image`` would return, from the header alone (OSError or
    ImageError when the header cannot be read; ``read_image`` then says why)."""
    from .fileio import open_regular

    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with open_regular(path, what="an image") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fh, formats=FORMATS) as im:
                w, h = im.size
                if _orientation(im) in (5, 6, 7, 8):  # EXIF orientations that turn the image
                    w, h = h, w
    except (Image.UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if max_size and max(h, w) > max_size:
        scale = max_size / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    return (1 if color == "gray" else 3, h, w)


def _to_float(im, signed16=False):
    """Pillow image -> (1 or 3, H, W) float32 in [0, 1]; alpha composited onto BACKGROUND.

    ``signed16``: mode I holds signed 16-bit samples, shifted up by 32768.
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return (np.asarray(im, dtype=np.float32) / 65535.0)[None]
    if mode == "I" and signed16:
        return ((np.asarray(im, dtype=np.float64) + 32768.0) / 65535.0).astype(np.float32)[None]
    if mode == "I":
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if a.min() >= 0 and a.max() <= 65535 else max(abs(a).max(), 1.0)
        return np.clip(a / top, 0, 1).astype(np.float32)[None]
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)  # float64: hi - lo may exceed float32's range
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 1:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        return a.astype(np.float32)[None]
    has_alpha = mode in ("LA", "RGBA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in im.info)
    if mode in ("1", "L"):
        return (np.asarray(im.convert("L"), dtype=np.float32) / 255.0)[None]
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        rgb = rgba[..., :3] * alpha + BACKGROUND * (1 - alpha)
        return np.moveaxis(rgb, -1, 0)
    return np.moveaxis(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0, -1, 0)


def _downscale(img, max_size):
    c, h, w = img.shape
    scale = max_size / max(h, w)
    return resize(img, max(1, round(h * scale)), max(1, round(w * scale)))


def resize(img, height, width):
    """Resize (C, H, W) float32 to (C, height, width) with Lanczos (antialiased when shrinking)."""
    if img.shape[1:] == (height, width):
        return img
    return np.stack([
        np.asarray(Image.fromarray(ch, mode="F").resize((width, height), Image.Resampling.LANCZOS),
                   dtype=np.float32)
        for ch in img
    ])


def find_images(inputs, *, follow_links=False, exclude=()):
    """Expand files, folders (recursively, hidden entries skipped) and globs.

    Returns (paths, problems); see ``cnn_cli.inputs.iter_inputs``, which
    streams them with their output names.
    """
    found, problems = find_inputs(inputs, follow_links=follow_links, exclude=exclude)
    return [item.path for item in found], problems
