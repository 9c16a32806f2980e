"""Reading images into float32 arrays, defensively, and finding them on disk.

What each Pillow mode becomes (values end in [0, 1]):

- 1, L, P, RGB, CMYK, YCbCr, LAB, HSV: 8-bit channels divided by 255 (P and
  CMYK via RGB);
- I;16 (16-bit PNG, TIFF): divided by 65535, so all 65536 levels survive;
  I (32-bit int): divided by 65535 when it fits in 16 bits, else by its maximum;
  F (float): kept when it lies in [0, 1], else rescaled by its min and max;
- LA, RGBA, PA and P with transparency: composited onto white (``BACKGROUND``);
- ``gray`` takes luminance 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, as
  Pillow's ``convert("L")``) in float, so 16-bit precision is kept;
  ``rgb`` repeats a grey image into three channels.

EXIF orientation is applied. Animated GIFs, multi-page TIFFs and WebPs give
their first frame. Formats are allow-listed by content, never by extension,
and no format that runs external programs (EPS, PDF) is ever opened.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .inputs import EXTENSIONS, find_inputs  # noqa: F401  (EXTENSIONS: re-exported)

#: Formats we decode (Pillow's format names), as far as this Pillow has them;
#: MPO is a phone-camera JPEG that older Pillows keep apart.
Image.init()
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
    path = Path(path)
    too_big = (f"{path}: over the limit of {max_pixels} pixels "
               "(raise it with --max-pixels if you trust the file)")
    # Our check below replaces Pillow's (which fires at twice its own global
    # limit, with a less helpful message); Image.open reads only the header.
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning; we check below
            with Image.open(path, formats=FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{too_big}: it declares {w}x{h} = {w * h}")
                im.seek(0)
                im = ImageOps.exif_transpose(im)
                channels = _to_float(im)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image in a format we read ({', '.join(FORMATS)})") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError,
            ZeroDivisionError, MemoryError) as exc:
        # Pillow raises many exception types on damaged data; all mean the same.
        raise ImageError(f"{path}: damaged or truncated image ({type(exc).__name__}: {exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if color == "gray":
        img = channels[0:1] if channels.shape[0] == 1 else np.tensordot(LUMA, channels, 1)[None]
    else:
        img = np.repeat(channels, 3, axis=0) if channels.shape[0] == 1 else channels
    if max_size and max(img.shape[1:]) > max_size:
        img = _downscale(img, max_size)
    return np.ascontiguousarray(img, dtype=np.float32)


def image_shape(path, *, color="gray", max_size=None):
    """The (C, H, W) that ``read_image`` would return, from the header alone (OSError or
    ImageError when the header cannot be read; ``read_image`` then says why)."""
    pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=FORMATS) as im:
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientations that turn the image
                    w, h = h, w
    except (Image.UnidentifiedImageError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{path}: {exc}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit
    if max_size and max(h, w) > max_size:
        scale = max_size / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    return (1 if color == "gray" else 3, h, w)


def _to_float(im):
    """Pillow image -> (1 or 3, H, W) float32 in [0, 1]; alpha composited onto BACKGROUND."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return (np.asarray(im, dtype=np.float32) / 65535.0)[None]
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
