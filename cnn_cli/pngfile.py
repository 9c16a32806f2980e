"""PNG files of 8-bit pictures, encoded for speed: ``cnn apply`` writes dozens per image.

Each row gets PNG's Sub filter (a byte minus the byte of the pixel to its
left), then the rows are deflated by ISA-L (the ``isal`` package) at level 1
where it is installed: on the 55 asinh maps of a 512² photo-like image it
took 16 ms for 6.57 MB where the zlib ways below took 59 ms for 6.93 MB, and
on samples/shapes.png 14 ms for 1.20 MB against 61 ms for 1.27 MB (one
thread, 2026-12-08). Without it, zlib deflates the rows at level 1 in one of
three ways, chosen from the picture itself:

- pictures with flat stretches, where at least config.PNG_FLAT_FRACTION of the
  filtered bytes are zero (a pixel equal to its left neighbour), with zlib's
  default strategy, which finds row-long matches;
- noise-like pictures (the maps of photos) with its run-length strategy;
- and noise-like pictures that run-length would shrink by less than
  config.PNG_STORE_SAVING, judged on every config.PNG_PROBE_ROW-th row, stored: the PNG is
  as valid and decodes the same, and writing the extra bytes costs far less
  than deflating them.

Measured on the 55 maps of the default pipeline (single thread, 2026-12-07):
Pillow (five filters tried on every row, then level 2) took 232 ms for 5.5 MB
on a 512² photo-like image (bench/apply.py's inputs), where run-length took
82 ms for 5.8 MB. The maps of drawn shapes (samples/shapes.png, 20-90 % zero
bytes) took 42 ms and 1.25 MB with the default strategy against run-length's
76 ms and 3.2 MB; the maps of photos are at most 15 % zeros, and there the
default strategy took twice as long as run-length for the same size. With
the asinh pictures, run-length shrinks the maps of photos by 11-26 % (median
per image; skimage's astronaut, camera, coffee, rocket, brick, grass, and 2
bench images), deflating at about 12 ms per MB; from 27 % to 69 % of their
maps save under a fifth and are stored, at about 1 ms per MB. Storing them
took the 55 PNGs of a 512² photo from 110-133 ms of CPU to 45-95 (astronaut,
camera, grass, a bench image), for 5-10 % more bytes (0.85-0.95 a pixel).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from . import config

try:  # see the module's docstring; pyproject installs it where wheels exist
    from isal import isal_zlib as _isal
except ImportError:  # pragma: no cover - depends on the platform
    _isal = None

PNG_LEVEL, PNG_STRATEGY, PNG_FLAT_STRATEGY = 1, zlib.Z_RLE, zlib.Z_DEFAULT_STRATEGY
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MODES = ("L", "RGB")


def png_bytes(image, *, smallest=False):
    """PNG-encode a Pillow image: fast, for the many maps a run writes (see the module's
    docstring), or, with ``smallest``, as small as zlib makes it (for pictures inlined in a
    page). Modes other than L and RGB go through Pillow; an RGB picture whose channels are
    equal is written as grey.

    zlib releases the GIL, so several threads encode at once.
    """
    if smallest or image.mode not in _MODES:
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=9 if smallest else 2)
        return buf.getvalue()
    pixels = np.asarray(image)
    if pixels.ndim == 3 and np.array_equal(pixels[..., 0], pixels[..., 1]) \
            and np.array_equal(pixels[..., 1], pixels[..., 2]):
        pixels = pixels[..., 0]  # a grey picture (a grid in the gray colour map) is stored as grey: 3x smaller
    height, width = pixels.shape[:2]
    step = 1 if pixels.ndim == 2 else pixels.shape[2]  # bytes per pixel: Sub looks that far left
    rows = pixels.reshape(height, width * step)
    filtered = np.empty((height, width * step + 1), np.uint8)
    filtered[:, 0] = 1  # the Sub filter: each byte minus the byte of the pixel to its left, modulo 256
    filtered[:, 1:1 + step] = rows[:, :step]
    np.subtract(rows[:, step:], rows[:, :-step], out=filtered[:, 1 + step:])
    data = _deflate(filtered)
    header = struct.pack(">IIBBBBB", width, height, 8, 0 if step == 1 else 2, 0, 0, 0)  # colour type grey, RGB
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _deflate(filtered):
    """The zlib stream of the filtered rows (H, 1 + W * bytes per pixel), as the module's docstring says."""
    if _isal is not None:
        return _isal.compress(filtered, 1)  # releases the GIL, as zlib does
    height = filtered.shape[0]
    if np.count_nonzero(filtered[:, 1:]) <= (1 - config.PNG_FLAT_FRACTION) * (filtered.size - height):
        level, strategy = PNG_LEVEL, PNG_FLAT_STRATEGY
    else:
        level, strategy = PNG_LEVEL, PNG_STRATEGY
        probe = np.ascontiguousarray(filtered[::config.PNG_PROBE_ROW])
        if len(_zlib_stream(probe, level, strategy)) > (1 - config.PNG_STORE_SAVING) * probe.size:
            level = 0
    return _zlib_stream(filtered, level, strategy)


def _zlib_stream(data, level, strategy):
    deflate = zlib.compressobj(level, zlib.DEFLATED, 15, 8, strategy)
    return deflate.compress(data) + deflate.flush()


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
