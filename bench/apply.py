"""Images per second of `cnn apply` on a folder, with the default pipeline.

    python bench/apply.py [--images 200] [--size 512]

Writes a folder of synthetic images (shapes, gratings and noise, seeded),
then runs the same code path as `cnn apply folder/ -o out` and reports images
per second, maps per second, and where the time goes: decoding, the engine,
and writing (PNG encoding, npz, manifest).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as the `cnn` command does (BLAS on one thread, memory reuse), before numpy.
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
from cnn_cli import config  # noqa: E402

config.tune_process()

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from _timing import time_once  # noqa: E402


def synthetic_image(rng, size):
    """A grey image with a few shapes, a grating and noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    theta = rng.uniform(0, np.pi)
    img = 0.5 + 0.2 * np.sin(
        2 * np.pi * rng.uniform(8, 32) * (x * np.cos(theta) + y * np.sin(theta))
    )
    img += rng.normal(0, 0.05, img.shape)
    pil = Image.fromarray(np.uint8(np.clip(img, 0, 1) * 255), mode="L")
    draw = ImageDraw.Draw(pil)
    for _ in range(4):
        x0, y0 = rng.integers(0, size * 3 // 4, 2)
        w, h = rng.integers(size // 10, size // 4, 2)
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=int(rng.integers(0, 256)))
    return pil


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)

    from cnn_cli import apply as apply_mod
    from cnn_cli.apply import ApplyOptions, apply_images
    from cnn_cli.imageio import find_images
    from cnn_cli.pipeline import DEFAULT_PIPELINE, load_pipeline

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "images"
        src.mkdir()
        for i in range(args.images):
            synthetic_image(rng, args.size).save(src / f"img{i:04d}.png")
        paths, _ = find_images([src])
        pipe = load_pipeline(DEFAULT_PIPELINE).bind(["gray"])
        warm, _ = time_once(
            lambda: apply_images(paths[:1], Path(tmp) / "warm", pipe, ApplyOptions())
        )

        # Where the time goes: wrap the three stages of apply_images.
        spent = {"decode": 0.0, "engine": 0.0, "write": 0.0}

        def timed(stage, fn):
            def wrapper(*a, **k):
                t0 = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    spent[stage] += time.perf_counter() - t0

            return wrapper

        apply_mod.read_image = timed("decode", apply_mod.read_image)
        apply_mod.write_outputs = timed("write", apply_mod.write_outputs)
        pipe.forward = timed("engine", pipe.forward)
        total, results = time_once(
            lambda: apply_images(paths, Path(tmp) / "out", pipe, ApplyOptions())
        )
    maps = sum(r.maps for r in results)
    failed = sum(bool(r.error) for r in results)
    print(
        f"{args.images} images of {args.size}x{args.size}, default pipeline ({len(pipe.layers)} layers, "
        f"{maps // max(1, args.images)} maps each); first image with kernel loading: {warm:.2f} s"
    )
    print(
        f"total {total:.2f} s: {args.images / total:.1f} images/s, {maps / total:.0f} maps/s, {failed} failed"
    )
    for stage, seconds in spent.items():
        print(f"  {stage:7} {seconds:7.2f} s  ({100 * seconds / total:4.1f}%)")


if __name__ == "__main__":
    main()
