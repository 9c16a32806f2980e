"""Draw the sample images shipped in samples/ (run: python samples/make_samples.py).

Everything is drawn here from geometric shapes and formulas, so the images are
ours to give away (CC0, see README.md).
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent


def shapes(size=512):
    """Grey scene: a rectangle, a disc, a triangle, gratings at four angles, a checkerboard."""
    y, x = np.mgrid[0:size, 0:size] / size
    img = 0.35 + 0.15 * x  # a gentle ramp, so flat areas are not perfectly flat
    for i, theta in enumerate((0, 45, 90, 135)):
        t = np.radians(theta)
        wave = 0.5 + 0.5 * np.sin(2 * np.pi * 24 * (x * np.cos(t) + y * np.sin(t)))
        cy, cx = 0.68 + 0.16 * (i // 2), 0.1 + 0.16 * (i % 2)
        mask = (abs(y - cy) < 0.07) & (abs(x - cx) < 0.07)
        img[mask] = wave[mask]
    check = ((np.floor(x * 32) + np.floor(y * 32)) % 2).astype(float)
    mask = (x > 0.6) & (x < 0.9) & (y > 0.62) & (y < 0.92)
    img[mask] = 0.2 + 0.6 * check[mask]
    pil = Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255), mode="L")
    draw = ImageDraw.Draw(pil)
    draw.rectangle((48, 48, 200, 160), fill=235)
    draw.ellipse((260, 50, 420, 210), fill=30)
    draw.polygon([(120, 200), (220, 320), (40, 320)], fill=220)
    return pil.filter(ImageFilter.GaussianBlur(0.7))


def colour(size=256):
    """RGB scene: red, green and blue discs of equal luminance contrast on grey."""
    pil = Image.new("RGB", (size, size), (128, 128, 128))
    draw = ImageDraw.Draw(pil)
    draw.ellipse((20, 30, 120, 130), fill=(220, 40, 40))
    draw.ellipse((136, 30, 236, 130), fill=(40, 180, 40))
    draw.rectangle((70, 150, 190, 230), fill=(50, 60, 230))
    return pil


if __name__ == "__main__":
    shapes().save(HERE / "shapes.png", optimize=True)
    colour().save(HERE / "colour.png", optimize=True)
