"""Images per second of `cnn embed` against an OpenCV script computing the same vectors, in one run.

    python bench/embed.py [--images 200] [--size 512] [--budget 300] [--folder DIR]

A quick run: ``--images 24 --budget 60``.

Inputs are ``bench/apply.py``'s photo-like PNGs (the same folder, made once).
Ours is ``cnn embed DIR -o OUT --json`` as a user runs it: the default
pipeline, its last layer, mean-pooled (gap) and L2-normalised, one row per
image into ``embeddings.npy``. Its rate counts the whole command, start-up
included; the run-only rate (images / the run's ``seconds``) is printed
beside it.

The peer is ``bench/apply.py``'s OpenCV script (``cv2.imread``,
``cv2.filter2D`` per kernel with the pipeline's own kernels, NumPy for the
rest), sequential like most such scripts, plus the same pooling and
normalisation and an ``np.save`` of the rows. Before timing counts, its rows
are checked against ours: cosine similarity at least 1 - 1e-5 on every
image.

Target (issue 13): ours at least 2x the peer's images/s. The contenders
alternate, the first changing each round, while ``--budget`` allows; medians
are reported.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))
from cnn_cli import config  # noqa: E402

config.tune_process()

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
from apply import image_folder_arguments, Peer, make_folder  # noqa: E402

TARGET = 2.0

#: Smallest cosine similarity between the peer's row and ours for the peer to count as the same work.
SAME_ROWS = 1 - 1e-5


def run_embed(inputs, out):
    """Run ``cnn embed INPUTS -o OUT --json``; (wall seconds, its JSON summary)."""
    cmd = [sys.executable, "-m", "cnn_cli", "embed", str(inputs), "-o", str(out), "--json"]
    wall, proc = time_once(lambda: subprocess.run(cmd, capture_output=True, text=True))
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return wall, json.loads(proc.stdout)


def peer_rows(peer, paths, out_file=None):
    """The OpenCV script: decode, the pipeline's maps, mean of each channel of the last layer, L2; rows."""
    rows = []
    for path in paths:
        img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32) / np.float32(255)
        last = peer.maps(img)[-1]
        v = last.reshape(len(last), -1).mean(axis=1, dtype=np.float64)
        rows.append(v / max(np.linalg.norm(v), 1e-12))
    rows = np.asarray(rows, np.float32)
    if out_file is not None:
        np.save(out_file, rows)
    return rows


def main(argv=None):
    args, folder = image_folder_arguments(__doc__, 300, argv)

    from cnn_cli.sources import load_source

    began = time.perf_counter()
    paths = make_folder(folder, args.images, args.size)
    print(f"{len(paths)} images of {args.size}x{args.size} in {folder}")
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} cores; "
          f"cv2 {cv2.__version__} on {cv2.getNumThreads()} threads; engine threads {config.THREADS}")
    peer = Peer(load_source().pipeline)

    scratch = Path(tempfile.mkdtemp(prefix="cnn-bench-embed-", dir=folder.parent))
    samples = {"ours": [], "peer": [], "ours_run": []}
    rounds = 0
    try:
        # The first run of ours also warms the Numba cache; its rows check the peer's.
        wall, summary = run_embed(folder, scratch / "warm")
        print(f"first cnn embed: {wall:.1f} s wall ({summary['seconds']:.1f} s in the run)")
        ours = np.load(scratch / "warm" / "embeddings.npy")
        theirs = peer_rows(peer, paths)
        cosine = np.sum(ours.astype(np.float64) * theirs, axis=1)
        if cosine.min() < SAME_ROWS:
            raise SystemExit(f"peer rows differ from ours (smallest cosine {cosine.min():.8f}): "
                             "the comparison would mean nothing")
        print(f"peer rows = ours: smallest cosine similarity {cosine.min():.8f}")
        while True:
            round_start = time.perf_counter()
            order = ("ours", "peer") if rounds % 2 == 0 else ("peer", "ours")
            for who in order:
                out = scratch / who
                if who == "ours":
                    seconds, summary = run_embed(folder, out)
                    samples["ours_run"].append(summary["seconds"])
                else:
                    out.mkdir()
                    seconds = time_once(lambda: peer_rows(peer, paths, out / "embeddings.npy"))[0]
                samples[who].append(seconds)
                shutil.rmtree(out, ignore_errors=True)
            rounds += 1
            if time.perf_counter() - began + (time.perf_counter() - round_start) > args.budget:
                break
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    n = len(paths)
    ours, theirs = n / statistics.median(samples["ours"]), n / statistics.median(samples["peer"])
    run_only = n / statistics.median(samples["ours_run"])
    print(f"\n{rounds} round(s), medians; images/s (higher is better)")
    print(f"ours (the cnn command, start-up included) {ours:.2f}   run only {run_only:.2f}")
    print(f"peer (OpenCV script)                      {theirs:.2f}")
    print(f"ratio ours/peer {ours / theirs:.2f}   target {TARGET:.1f}   met: {'yes' if ours / theirs >= TARGET else 'NO'}")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"total {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
