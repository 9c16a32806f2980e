"""Images per second of `cnn apply` against an OpenCV script doing the same work, in one run.

    python bench/apply.py [--images 200] [--size 512] [--budget 540] [--folder DIR]

A quick run: ``--images 24 --budget 60``.

Inputs: a folder of grayscale PNGs that compress like photos (``photo_like``:
1/f noise, blurred shapes, a patch of grating, sensor noise; seeded), made
once and kept in ``--folder`` for the next run and for ``bench/scale.py``.

Five modes, with the default pipeline (edges and Gabor bank conv with
reflect padding, |x|, 2x2 max-pool, depthwise Gaussian, 2x2 max-pool):

- **full dump**: ``cnn apply DIR -o OUT --normalize minmax`` (maps, grids
  and raw: 55 PNGs, 5 grids, ``features.npz`` and a manifest per image)
  against the peer writing the same files, scaled the same way (min to max);
- **raw only**: ``cnn apply DIR -o OUT --save raw`` against the peer writing
  only ``features.npz`` (and a manifest);
- **compute only**: ``pipeline.forward`` against the peer's maps, nothing
  written, on images decoded beforehand (decoding is excluded on both
  sides), in the batches the tool makes (``stream.BATCH_PIXELS``: four
  512² images);
- **full dump, defaults** and **raw only, defaults**: ``cnn apply DIR -o OUT``
  and ``cnn apply DIR -o OUT --save raw`` exactly as users run them (asinh
  pictures, the HTML report), against the same peer runs (issue 25).

Ours runs as the ``cnn`` command in a subprocess, because that is what a
user gets: its rate counts the whole command, start-up included
(interpreter, imports, loading the Numba cache, the pipeline). The start-up
(wall time minus the run's own ``seconds`` from ``--json``) and the run-only
rate are printed beside it, so a small ``--images`` can be read too.

The peer is the script a user would write with OpenCV, sequential like most
such scripts: ``cv2.filter2D`` per kernel (the pipeline's own kernels, with
``BORDER_REFLECT_101``, which is the engine's reflect padding), NumPy abs
and max-pool, ``cv2.imwrite`` per map with its defaults (``PNG_PARAMS``),
a labelled grid per layer, ``np.savez`` of every layer, a JSON manifest.
Before any timing counts, its maps are checked against the engine's on
every image: max |peer - ours| / max |ours| per layer must be under 1e-4.

On a shared machine only ratios taken in one run mean anything: within each
mode the contenders alternate, the one going first changes from mode to
mode and round to round, and rounds repeat while ``--budget`` seconds allow
(medians are reported). Targets are those of issues 12 and 25.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as the `cnn` command does (BLAS on one thread, memory reuse), before numpy.
# The repository goes last, so a cnn_cli on PYTHONPATH (a worktree) comes first.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))
from cnn_cli import config  # noqa: E402

config.tune_process()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from _timing import time_once  # noqa: E402

#: Issues 12 and 25: ours / peer images per second.
TARGETS = {"full dump": 1.5, "raw only": 2.0, "compute only": 2.0,
           "full dump, defaults": 1.5, "raw only, defaults": 2.0}

#: Per mode: our options after ``cnn apply DIR -o OUT --json`` (None: pipeline.forward in-process), and
#: what the peer writes. The "defaults" rows run the command as users do (issue 25): asinh pictures,
#: grids and the HTML report; the peer still scales min to max, its cheapest picture.
MODES = {
    "full dump": (("--save", "maps,grids,raw", "--normalize", "minmax"), "maps,grids,raw"),
    "raw only": (("--save", "raw", "--normalize", "minmax"), "raw"),
    "compute only": (None, None),
    "full dump, defaults": ((), "maps,grids,raw"),
    "raw only, defaults": (("--save", "raw"), "raw"),
}

#: Largest max |peer - ours| / max |ours| on any layer for the peer to count as the same work.
SAME_MAPS = 1e-4

#: The peer writes PNGs as cv2.imwrite does by default: zlib's run-length strategy
#: at a fast level, as ours (viz.png_bytes) does; that default took 73 ms for the
#: 55 maps of an image, where asking for level 2 (and so the default strategy) took 194.
PNG_PARAMS = []
REFLECT = cv2.BORDER_REFLECT_101  # mirror about the edge pixel, as numpy's and the engine's "reflect"
DEFAULT_FOLDER = Path(tempfile.gettempdir()) / "cnn-bench-images"
PYCACHE = Path(tempfile.gettempdir()) / "cnn-bench-pycache"


# --------------------------------------------------------------------------- inputs


def photo_like(rng, size):
    """A uint8 (size, size) image with a photo's statistics: 1/f noise, soft shapes, texture, grain."""
    img = np.zeros((size, size), np.float32)
    for octave in range(1, 8):  # 1/f: each octave twice as fine and half as strong
        cells = 2**octave
        coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
        img += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) / 2**octave
    img = 0.5 + 0.18 * img / img.std()
    shapes = np.zeros_like(img)
    for _ in range(int(rng.integers(3, 7))):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 16, size // 4, 2))
        cv2.ellipse(shapes, centre, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(-0.3, 0.3)), -1)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = (int(v) for v in rng.integers(0, size, 2))
        w, h = (int(v) for v in rng.integers(size // 12, size // 3, 2))
        cv2.rectangle(shapes, (x0, y0), (x0 + w, y0 + h), float(rng.uniform(-0.3, 0.3)), -1)
    img += cv2.GaussianBlur(shapes, (0, 0), float(rng.uniform(0.8, 2.5)))
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    theta, freq = rng.uniform(0, np.pi), rng.uniform(20, 60)
    grating = np.sin(2 * np.pi * freq * (x * np.cos(theta) + y * np.sin(theta)))
    cx, cy = rng.uniform(0.25, 0.75, 2)
    window = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.12**2))
    img += 0.12 * grating * window
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)  # sensor grain
    return np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)


def make_folder(folder, count, size, seed=0):
    """``folder`` holding ``img0000.png``... (``count`` of them, ``size``²), made unless already there."""
    folder = Path(folder)
    stamp = folder / f".made-{count}-{size}-{seed}"
    if stamp.exists():
        return sorted(folder.glob("*.png"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        cv2.imwrite(str(folder / f"img{i:04d}.png"), photo_like(rng, size))
    stamp.touch()
    return sorted(folder.glob("*.png"))


def image_folder_arguments(doc, budget, argv=None, more=lambda parser: None):
    """The arguments of the bench scripts that run over ``make_folder``'s images (and those
    ``more(parser)`` adds); (args, folder)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    more(parser)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--budget", type=float, default=budget,
                        help=f"seconds; rounds beyond the first run while they fit (default {budget})")
    parser.add_argument("--folder", type=Path, default=None,
                        help=f"where the inputs are made and kept (default {DEFAULT_FOLDER}-N-SIZE)")
    args = parser.parse_args(argv)
    return args, args.folder or Path(f"{DEFAULT_FOLDER}-{args.images}-{args.size}")


# --------------------------------------------------------------------------- ours


def run_cli(inputs, out, *extra):
    """Run ``cnn apply INPUTS -o OUT --json EXTRA``; (wall seconds, its JSON summary).

    Python's bytecode is kept in PYCACHE (whatever ``PYTHONDONTWRITEBYTECODE``
    says), as an installed copy has it: compiling the tool's modules on every
    run cost 0.15 s of each command's start-up.
    """
    cmd = [sys.executable, "-m", "cnn_cli", "apply", str(inputs), "-o", str(out), "--json", *extra]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    wall, proc = time_once(lambda: subprocess.run(cmd, check=False, capture_output=True, text=True, env=env))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    summary = json.loads(proc.stdout)
    if summary["failed"]:
        raise SystemExit(f"{' '.join(cmd)}: {len(summary['failed'])} image(s) failed: {summary['failed'][0]}")
    return wall, summary


def engine_batches(pipeline, images, each=None):
    """Seconds of ``pipeline.forward`` over every image, in the tool's batches.

    ``each(i, maps)`` is called (untimed) with each image's maps, which are
    then dropped: 200 images' maps would take 6 GB.
    """
    from cnn_cli.stream import BATCH_IMAGES, BATCH_PIXELS

    per_batch = max(1, min(BATCH_IMAGES, BATCH_PIXELS // images[0].size))
    spent = 0.0
    for start in range(0, len(images), per_batch):
        x = np.stack(images[start:start + per_batch])[:, None]
        seconds, outputs = time_once(lambda: pipeline.forward(x))
        spent += seconds
        for b in range(len(x)) if each else ():
            each(start + b, [o[b] for o in outputs])
    return spent


# --------------------------------------------------------------------------- the peer


class Peer:
    """The OpenCV script: the default pipeline's kernels through ``cv2.filter2D``, NumPy for the rest."""

    def __init__(self, pipeline):
        kinds = [layer.kind for layer in pipeline.layers]
        if kinds != ["conv", "abs", "maxpool", "conv", "maxpool"]:
            raise SystemExit(f"the peer is written for the default pipeline (conv, abs, maxpool, conv, maxpool), "
                             f"but this one is {kinds}")
        first, energy = pipeline.layers[0], pipeline.layers[3]
        self.bank = [(w[o, 0], float(b[o])) for w, b, _ in first.filters for o in range(len(w))]
        w, b, groups = energy.filters[0]
        per_channel = len(w) // groups
        if per_channel != 1 or np.any(b) or not all(np.array_equal(w[0], k) for k in w):
            raise SystemExit("the peer expects one depthwise kernel, the same on every map, without bias")
        self.energy = w[0, 0]
        for k, _ in self.bank + [(self.energy, 0)]:
            if k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
                raise SystemExit(f"the peer's filter2D anchors odd kernels only, not {k.shape}")
        self.channels = pipeline.channels

    def maps(self, img):
        """The five layers' maps of one float32 (H, W) image."""
        conv = np.stack([cv2.filter2D(img, -1, k, borderType=REFLECT) + np.float32(b) for k, b in self.bank])
        rect = np.abs(conv)
        pooled = max_pool2(rect)
        energy = np.stack([cv2.filter2D(m, -1, self.energy, borderType=REFLECT) for m in pooled])
        return [conv, rect, pooled, energy, max_pool2(energy)]

    def compute(self, images):
        """Every image's maps, each dropped once made (compute only)."""
        for img in images:
            self.maps(img)

    def write(self, path, out_dir, layers, save):
        """One image's folder, as ``cnn apply`` lays it out."""
        out_dir.mkdir(parents=True)
        if "raw" in save:
            np.savez(out_dir / "features.npz", **{f"layer{i}": m for i, m in enumerate(layers)})
        manifest = []
        for i, maps in enumerate(layers):
            if "maps" in save:
                (out_dir / f"layer{i}").mkdir()
            entries, tiles = [], []
            for c, (m, name) in enumerate(zip(maps, self.channels[i])):
                lo, hi = float(m.min()), float(m.max())
                entry = {"channel": c, "filter": name, "min": lo, "max": hi}
                if save & {"maps", "grids"}:
                    levels = to_levels(m, lo, hi)
                    if "maps" in save:
                        entry["png"] = f"layer{i}/{c:03d}_{name}.png"
                        cv2.imwrite(str(out_dir / entry["png"]), levels, PNG_PARAMS)
                    tiles.append(levels)
                entries.append(entry)
            if "grids" in save:
                cv2.imwrite(str(out_dir / f"layer{i}_grid.png"), labelled_grid(tiles, self.channels[i]),
                            PNG_PARAMS)
            manifest.append({"index": i, "shape": list(maps.shape), "maps": entries})
        (out_dir / "manifest.json").write_text(json.dumps({"input": str(path), "layers": manifest}, indent=2))

    def run(self, paths, out_root, save):
        """Decode, compute and write every image (``save`` empty: compute only); seconds taken."""
        start = time.perf_counter()
        for path in paths:
            img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / np.float32(255)
            layers = self.maps(img)
            if save:
                self.write(path, Path(out_root) / path.stem, layers, save)
        return time.perf_counter() - start


def max_pool2(maps):
    c, h, w = maps.shape
    return maps[:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).max(axis=(2, 4))


def to_levels(m, lo, hi):
    """uint8 levels of a map over its range, symmetric about 0 when it crosses 0 (as ``viz.symmetric_range``)."""
    if lo < 0 < hi:
        lo, hi = -max(-lo, hi), max(-lo, hi)
    if not hi > lo:
        return np.zeros(m.shape, np.uint8)
    return np.clip((m - np.float32(lo)) * np.float32(255 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def labelled_grid(tiles, labels, tile_max=256, label_h=16, gap=4):
    """Tiles (at most ``tile_max`` on a side) in ceil(sqrt(n)) columns, each under its label; BGR."""
    factor = max(1, -(-max(tiles[0].shape) // tile_max))
    tiles = [cv2.resize(t, None, fx=1 / factor, fy=1 / factor, interpolation=cv2.INTER_AREA) if factor > 1 else t
             for t in tiles]
    th, tw = tiles[0].shape
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = -(-len(tiles) // cols)
    cell_w = max(tw, 240)
    canvas = np.full((rows * (th + label_h) + (rows + 1) * gap, cols * cell_w + (cols + 1) * gap, 3), 32, np.uint8)
    for k, (tile, label) in enumerate(zip(tiles, labels)):
        r, c = divmod(k, cols)
        x, y = gap + c * (cell_w + gap), gap + r * (th + label_h + gap)
        cv2.putText(canvas, label[:40], (x, y + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (230, 230, 230), 1, cv2.LINE_AA)
        x += (cell_w - tw) // 2
        canvas[y + label_h:y + label_h + th, x:x + tw] = tile[:, :, None]
    return canvas


def check_same_maps(pipeline, peer, images):
    """Max over images of max |peer - ours| / max |ours|, per layer; SystemExit when over SAME_MAPS."""
    worst = [0.0] * len(pipeline.layers)

    def compare(i, ours):
        for k, (a, b) in enumerate(zip(ours, peer.maps(images[i]))):
            if a.shape != b.shape:
                raise SystemExit(f"layer {k}: ours {a.shape}, peer {b.shape}: not the same work")
            worst[k] = max(worst[k], float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(a))), 1e-30)))

    engine_batches(pipeline, images, compare)
    if max(worst) > SAME_MAPS:
        raise SystemExit(f"peer maps differ from ours by up to {max(worst):.2e} (relative, per layer {worst}): "
                         "the comparison would mean nothing")
    return worst


# --------------------------------------------------------------------------- the run


def main(argv=None):
    args, folder = image_folder_arguments(__doc__, 540, argv)

    from cnn_cli.imageio import read_image
    from cnn_cli.sources import load_source

    began = time.perf_counter()
    made, paths = time_once(lambda: make_folder(folder, args.images, args.size))
    png_bytes = sum(p.stat().st_size for p in paths) / len(paths)
    print(f"{len(paths)} images of {args.size}x{args.size} in {folder} ({made:.1f} s to make or find); "
          f"PNG {png_bytes / 1e3:.0f} kB each, {png_bytes / args.size**2:.2f} bytes/pixel")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"{os.cpu_count()} cores; cv2 {cv2.__version__} on {cv2.getNumThreads()} threads; "
          f"engine threads {config.THREADS}")

    pipeline = load_source().pipeline
    peer = Peer(pipeline)
    images = [read_image(p)[0] for p in paths]

    # Warm both: our first run may compile or load the Numba cache; check the peer's maps.
    with tempfile.TemporaryDirectory(prefix="cnn-bench-warm-") as tmp:
        first = Path(tmp) / "one"
        first.mkdir()
        shutil.copy(paths[0], first)
        warm_wall, warm = run_cli(first, Path(tmp) / "out")
    print(f"first cnn apply of one image: {warm_wall:.1f} s wall ({warm['seconds']:.1f} s in the run)")
    worst = check_same_maps(pipeline, peer, images)
    print("peer maps = ours: max |peer - ours| / max |ours| per layer over all images: "
          + ", ".join(f"{w:.1e}" for w in worst))

    samples = {mode: {"ours": [], "peer": [], "ours_run": [], "startup": []} for mode in TARGETS}
    bytes_per_image = {}
    scratch = Path(tempfile.mkdtemp(prefix="cnn-bench-apply-", dir=folder.parent))
    rounds = 0
    try:
        while True:
            round_start = time.perf_counter()
            for m, (mode, (options, save)) in enumerate(MODES.items()):
                order = ("ours", "peer") if (m + rounds) % 2 == 0 else ("peer", "ours")
                for who in order:
                    out = scratch / f"{who}-{m}"
                    if mode == "compute only" and who == "ours":
                        seconds = engine_batches(pipeline, images)
                        samples[mode]["ours_run"].append(seconds)
                    elif mode == "compute only":
                        seconds = time_once(lambda: peer.compute(images))[0]
                    elif who == "ours":
                        seconds, summary = run_cli(folder, out, *options)
                        samples[mode]["ours_run"].append(summary["seconds"])
                        samples[mode]["startup"].append(seconds - summary["seconds"])
                        bytes_per_image[mode] = summary["bytes"] / summary["written"]
                    else:
                        seconds = peer.run(paths, out, frozenset(save.split(",")))
                    samples[mode][who].append(seconds)
                    shutil.rmtree(out, ignore_errors=True)
            rounds += 1
            took = time.perf_counter() - round_start
            if time.perf_counter() - began + took > args.budget:
                break
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    n = len(paths)
    print(f"\n{rounds} round(s), medians; images/s (higher is better); ours = the cnn command, start-up included")
    print(f"{'mode':19} {'ours img/s':>10} {'peer img/s':>10} {'ratio':>6} {'target':>6}  met   "
          f"{'ours run-only':>13} {'start-up':>8} {'written/img':>11}")
    for mode, target in TARGETS.items():
        s = samples[mode]
        ours, theirs = n / statistics.median(s["ours"]), n / statistics.median(s["peer"])
        ratio = ours / theirs
        run_only = n / statistics.median(s["ours_run"])
        startup = f"{statistics.median(s['startup']):.1f} s" if s["startup"] else "-"
        written = f"{bytes_per_image[mode] / 1e6:.1f} MB" if mode in bytes_per_image else "-"
        print(f"{mode:19} {ours:10.2f} {theirs:10.2f} {ratio:6.2f} {target:6.1f}  {'yes' if ratio >= target else 'NO ':4}"
              f"  {run_only:13.2f} {startup:>8} {written:>11}")
    print("compute only: decoding excluded on both sides; ours = pipeline.forward in the tool's batches")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
