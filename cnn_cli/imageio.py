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

import glob
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

#: Formats we decode (Pillow's format names), as far as this Pillow has them;
#: MPO is a phone-camera JPEG that older Pillows keep apart.
Image.init()
FORMATS = tuple(f for f in ("PNG", "JPEG", "MPO", "BMP", "TIFF", "WEBP", "GIF", "PPM") if f in Image.OPEN)

#: File endings walked in folders and globs; content decides the real format.
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}

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


def _is_hidden(name):
    return name.startswith(".") or name.startswith("._")


def find_images(inputs, *, follow_links=False, exclude=()):
    """Expand files, folders (recursively, hidden entries skipped) and globs.

    Folders and globs keep files with image endings only, and skip the
    folders in ``exclude`` (the output folder, so a rerun does not read its
    own maps). Returns (found, problems): image paths in a stable order
    without duplicates, and one message per input that matched nothing.
    """
    found, problems, seen = [], [], set()
    excluded = {os.path.realpath(e) for e in exclude}

    def add(p):
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            found.append(Path(p))

    for item in inputs:
        item = str(item)
        path = Path(item)
        if path.is_dir():
            before = len(found)
            for root, dirs, files in os.walk(path, followlinks=follow_links):
                dirs[:] = sorted(d for d in dirs if not _is_hidden(d)
                                 and os.path.realpath(os.path.join(root, d)) not in excluded)
                for name in sorted(files):
                    full = Path(root) / name
                    if _is_hidden(name) or full.suffix.lower() not in EXTENSIONS:
                        continue
                    if full.is_symlink() and not follow_links:
                        continue
                    if full.is_file():
                        add(full)
            if len(found) == before:
                problems.append(f"{item}: folder holds no images ({', '.join(sorted(EXTENSIONS))})")
        elif path.is_file():
            add(path)
        elif glob.has_magic(item):
            matches = sorted(m for m in glob.glob(item, recursive=True)
                             if Path(m).is_file() and Path(m).suffix.lower() in EXTENSIONS
                             and not any(os.path.realpath(m).startswith(e + os.sep) for e in excluded))
            if not matches:
                problems.append(f"{item}: the pattern matches no files")
            for m in matches:
                add(m)
        else:
            problems.append(f"{item}: no such file or folder")
    return found, problems
