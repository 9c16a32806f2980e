"""Keypoints and matching, HPatches-style, on scikit-image's photos: ours against OpenCV and scikit-image.

    python bench/keypoints.py [--photos astronaut,camera,...] [--views 10] [--budget 60] [--seed 0]
                              [--model M.npz [--layer L]]

A quick run: ``--views 3 --budget 20``.

**Data.** Each photo (grey, as read by ``cnn``) is seen again under
``--views`` random homographies about its centre: a rotation up to ±30°, a
scale in 0.7–1.4, a perspective term up to 3e-4 per pixel, a shift up to 5%
of the size; then brightness (±0.1), contrast (0.8–1.2) and Gaussian noise
(sigma 0.01–0.02). The ground truth is the homography. Everything is drawn
from ``--seed``.

**Repeatability** at 3 px, N = 500 (Mikolajczyk et al. 2005): of the points
of A that the homography carries inside B, and of B's that its inverse
carries inside A, the share that have a point of the other image within
3 px, over the smaller of the two counts. Ours with ``cnn keypoints``'s
defaults (``cnn_cli.config``: one scale, points kept 3 px apart by
goodFeaturesToTrack's rule) on the ``harris`` and ``shi_tomasi``
pipelines, ``harris`` with scikit-image's rule (``--suppression window``)
and over three scales (and, with ``--model M [--layer L]``, a model's
layer), against ``cv2.goodFeaturesToTrack`` (Harris, and the minimum
eigenvalue) and ``skimage.feature.corner_peaks`` of ``corner_harris``; every
detector with min_distance 3 (OpenCV and ours: no stronger point closer than
3 px; skimage and ``--suppression window``: the maximum of a 7 x 7 window)
and a quality threshold of 0.001 of the strongest, so that each gives up to
its 500 points (the same N).

**Matching**: the mean matching accuracy at 1, 3 and 5 px (the share of
putative matches, before RANSAC, whose point in B is within that distance of
the true one), and the homography success rate (the estimated homography
moves A's corners by less than 3 px from the true one). Ours (``cnn match``'s
defaults: harris over 3 scales, steered gradient descriptors, ratio 0.8,
mutual, our RANSAC at 3 px) against ORB and SIFT (500 features each; the same ratio
test and mutual check, on Hamming distances for ORB; ``cv2.findHomography``
with RANSAC at 3 px).

**Speed**: images per second for detection (our ``Detector`` with ``cnn keypoints``'s defaults, and over three scales;
``goodFeaturesToTrack``; ``corner_harris`` + ``corner_peaks``), and matched
pairs per second (both images' features, matching and the homography), on
decoded images, interleaved (``_timing``). Ours runs on the engine's threads;
OpenCV on its own; scikit-image on one.

Targets (issue 27): repeatability >= goodFeaturesToTrack's; homography
success >= ORB's; detection throughput >= the corner_peaks path.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as the `cnn` command does (BLAS on one thread, memory reuse), before numpy.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1]))
from cnn_cli import config

config.tune_process()

import argparse
import datetime
import os

import cv2
import numpy as np
from _timing import interleaved_medians, rounds_for, time_once
from skimage import data as skdata
from skimage import feature as skfeature

from cnn_cli import matching as M
from cnn_cli.imageio import LUMA
from cnn_cli.keypointing import Detector, KeypointOptions
from cnn_cli.sources import load_source

PHOTOS = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins")
#: Every detector's settings are ours by default (see cnn_cli.config for why each).
N = config.KEYPOINTS
MIN_DISTANCE = config.KEYPOINT_MIN_DISTANCE
QUALITY = config.KEYPOINT_THRESHOLD
EPS = 3.0
MMA_PX = (1, 3, 5)


# --------------------------------------------------------------------------- data


def photo(name):
    """A scikit-image photo as float32 (H, W) in [0, 1], grey as cnn reads it."""
    image = getattr(skdata, name)().astype(np.float32) / 255
    return image if image.ndim == 2 else np.tensordot(image[..., :3], LUMA, 1).astype(np.float32)


def random_view(rng, shape):
    """A homography (3, 3) about the image's centre, as the module docstring draws it."""
    h, w = shape
    angle, scale = np.radians(rng.uniform(-30, 30)), rng.uniform(0.7, 1.4)
    centre = np.array([[1, 0, -w / 2], [0, 1, -h / 2], [0, 0, 1]])
    turn = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 0],
                     [scale * np.sin(angle), scale * np.cos(angle), 0], [0, 0, 1]])
    perspective = np.array([[1, 0, 0], [0, 1, 0], [*rng.uniform(-3e-4, 3e-4, 2), 1]])
    shift = np.array([[1, 0, w / 2 + rng.uniform(-0.05, 0.05) * w], [0, 1, h / 2 + rng.uniform(-0.05, 0.05) * h],
                      [0, 0, 1]])
    matrix = shift @ perspective @ turn @ centre
    return matrix / matrix[2, 2]


def view(image, matrix, rng):
    """``image`` seen under ``matrix``, with brightness, contrast and noise."""
    h, w = image.shape
    warped = cv2.warpPerspective(image, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.1, 0.1)
    noisy = (warped - 0.5) * contrast + 0.5 + brightness + rng.normal(0, rng.uniform(0.01, 0.02), warped.shape)
    return np.clip(noisy, 0, 1).astype(np.float32)


def u8(image):
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- detectors (points (K, 2) as x, y)


def ours(detector):
    return lambda image: _xy(detector.features(image[None]).keypoints)


def _xy(points):
    return np.stack([points.x, points.y], axis=1)


def gftt(harris):
    def detect(image):
        found = cv2.goodFeaturesToTrack(u8(image), N, QUALITY, MIN_DISTANCE, useHarrisDetector=harris, k=0.04)
        return np.zeros((0, 2)) if found is None else found.reshape(-1, 2).astype(np.float64)
    return detect


def corner_peaks(image):
    peaks = skfeature.corner_peaks(skfeature.corner_harris(image), min_distance=MIN_DISTANCE, threshold_rel=QUALITY,
                                   num_peaks=N)
    return peaks[:, ::-1].astype(np.float64)


def _inside(points, shape):
    h, w = shape
    return (points[:, 0] >= 0) & (points[:, 0] <= w - 1) & (points[:, 1] >= 0) & (points[:, 1] <= h - 1)


def repeatability(a, b, matrix, shape_a, shape_b):
    """Mikolajczyk's repeatability at EPS px of points ``a`` (in A) and ``b`` (in B) under ``matrix`` A -> B."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    a_in_b = M.project(matrix, a)
    b_in_a = M.project(np.linalg.inv(matrix), b)
    a_kept = a_in_b[_inside(a_in_b, shape_b)]
    b_kept = b[_inside(b_in_a, shape_a)]
    if len(a_kept) == 0 or len(b_kept) == 0:
        return 0.0
    distance = np.linalg.norm(a_kept[:, None] - b_kept[None], axis=2)
    repeated = min((distance.min(axis=1) < EPS).sum(), (distance.min(axis=0) < EPS).sum())
    return repeated / min(len(a_kept), len(b_kept))


# --------------------------------------------------------------------------- matchers: (src, dst, H or None)


def ours_match(detector):
    def match(a, b):
        fa, fb = detector.features(a[None], descriptors=True), detector.features(b[None], descriptors=True)
        pairs, _ = M.match_descriptors(fa.descriptors, fb.descriptors, ratio=config.MATCH_RATIO)
        src, dst = _xy(fa.keypoints)[pairs[:, 0]], _xy(fb.keypoints)[pairs[:, 1]]
        matrix, _ = M.ransac(src, dst, threshold=config.RANSAC_THRESHOLD)
        return src, dst, matrix
    return match


def cv2_match(make, norm, ratio):
    extractor = make()

    def match(a, b):
        ka, da = extractor.detectAndCompute(u8(a), None)
        kb, db = extractor.detectAndCompute(u8(b), None)
        if da is None or db is None or len(ka) < 2 or len(kb) < 2:
            return np.zeros((0, 2)), np.zeros((0, 2)), None
        matcher = cv2.BFMatcher(norm)
        forward = matcher.knnMatch(da, db, k=2)
        backward = {m.queryIdx: m.trainIdx for m in matcher.match(db, da)}
        good = [p[0] for p in forward if len(p) == 2 and backward.get(p[0].trainIdx) == p[0].queryIdx
                and (ratio >= 1 or p[0].distance < ratio * p[1].distance)]
        src = np.array([ka[m.queryIdx].pt for m in good]).reshape(-1, 2)
        dst = np.array([kb[m.trainIdx].pt for m in good]).reshape(-1, 2)
        matrix = None
        if len(good) >= 4:
            matrix, _ = cv2.findHomography(src, dst, cv2.RANSAC, config.RANSAC_THRESHOLD)
        return src, dst, matrix
    return match


def corner_error(estimate, truth, shape):
    h, w = shape
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    if estimate is None:
        return np.inf
    moved = np.linalg.norm(M.project(estimate, corners) - M.project(truth, corners), axis=1)
    return float(np.nan_to_num(moved, nan=np.inf).max())


# --------------------------------------------------------------------------- the run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", default=",".join(PHOTOS))
    parser.add_argument("--views", type=int, default=10)
    parser.add_argument("--budget", type=float, default=60.0, help="seconds for the timing rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="also a model's layer as the response (cnn keypoints --model M --layer L)")
    parser.add_argument("--layer", help="the model's layer (default: its last layer with maps)")
    args = parser.parse_args(argv)
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}; load average before: "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} cores; cv2 {cv2.__version__}")
    rng = np.random.default_rng(args.seed)
    names = [n.strip() for n in args.photos.split(",") if n.strip()]
    pairs = []
    for name in names:
        image = photo(name)
        for _ in range(args.views):
            matrix = random_view(rng, image.shape)
            pairs.append((name, image, view(image, matrix, rng), matrix))
    print(f"{len(names)} photos x {args.views} views = {len(pairs)} pairs")

    harris, shi = load_source(pipeline="harris"), load_source(pipeline="shi_tomasi")
    defaults = KeypointOptions()  # cnn keypoints's
    triple = KeypointOptions(scales=config.MATCH_SCALES)  # cnn match's
    detectors = {
        "ours harris": ours(Detector(harris, defaults)),
        "ours shi_tomasi": ours(Detector(shi, defaults)),
        "ours harris --suppression window": ours(Detector(harris, KeypointOptions(suppression="window"))),
        f"ours harris --scales {triple.scales}": ours(Detector(harris, triple)),
        **({f"ours {Path(args.model).name} layer {args.layer or 'default'}": ours(Detector(
            load_source(model=args.model), KeypointOptions(layer=args.layer)))} if args.model else {}),
        "cv2 GFTT Harris": gftt(True),
        "cv2 GFTT min-eigen": gftt(False),
        "skimage corner_peaks": corner_peaks,
    }
    print(f"\nRepeatability at {EPS:g} px, N = {N} (mean over pairs; min and max over photos)")
    repeated = {}
    for label, detect in detectors.items():
        per_photo = {}
        for name, a, b, matrix in pairs:
            per_photo.setdefault(name, []).append(repeatability(detect(a), detect(b), matrix, a.shape, b.shape))
        means = [np.mean(v) for v in per_photo.values()]
        repeated[label] = np.mean([x for v in per_photo.values() for x in v])
        print(f"  {label:32s} {repeated[label]:.3f}   ({min(means):.3f}-{max(means):.3f})")

    matchers = {
        "ours (cnn match)": ours_match(Detector(harris, triple)),
        "cv2 ORB": cv2_match(lambda: cv2.ORB_create(N), cv2.NORM_HAMMING, config.MATCH_RATIO),
        "cv2 SIFT": cv2_match(lambda: cv2.SIFT_create(N), cv2.NORM_L2, config.MATCH_RATIO),
    }
    print(f"\nMatching: MMA at {', '.join(map(str, MMA_PX))} px (mean over pairs), putative matches, homography "
          f"success (corners < {EPS:g} px)")
    succeeded = {}
    for label, match in matchers.items():
        mma, counts, success = [], [], []
        for _, a, b, matrix in pairs:
            src, dst, estimate = match(a, b)
            counts.append(len(src))
            error = np.linalg.norm(M.project(matrix, src) - dst, axis=1) if len(src) else np.zeros(0)
            mma.append([(error < px).mean() if len(src) else 0.0 for px in MMA_PX])
            success.append(corner_error(estimate, matrix, a.shape) < EPS)
        mma = np.mean(mma, axis=0)
        succeeded[label] = np.mean(success)
        print(f"  {label:18s} MMA {' / '.join(f'{v:.3f}' for v in mma)}   matches {np.mean(counts):6.1f}   "
              f"success {np.mean(success):.3f} ({sum(success)}/{len(success)})")

    print("\nSpeed (medians of interleaved rounds, decoded images)")
    sample = [(a, b) for _, a, b, _ in pairs[::max(1, len(pairs) // 6)]]
    timed = ("ours harris", f"ours harris --scales {triple.scales}", "cv2 GFTT Harris", "skimage corner_peaks")
    detect_fns = {label: (lambda d=detectors[label]: [d(a) for a, _ in sample]) for label in timed}
    first, _ = time_once(lambda: [f() for f in detect_fns.values()])
    speed = {label: len(sample) / seconds
             for label, seconds in interleaved_medians(detect_fns, rounds_for(first, args.budget / 2)).items()}
    for label, rate in speed.items():
        print(f"  detection  {label:22s} {rate:7.1f} images/s")
    match_fns = {label: (lambda m=m: [m(a, b) for a, b in sample]) for label, m in matchers.items()}
    first, _ = time_once(lambda: [f() for f in match_fns.values()])
    medians = interleaved_medians(match_fns, rounds_for(first, args.budget / 2))
    for label, seconds in medians.items():
        print(f"  matching   {label:22s} {len(sample) / seconds:7.1f} pairs/s")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    print("\nTargets of issue 27, with cnn keypoints's and cnn match's defaults")
    for what, value, peer in (
            ("repeatability >= goodFeaturesToTrack (Harris)", repeated["ours harris"], repeated["cv2 GFTT Harris"]),
            ("repeatability >= goodFeaturesToTrack (min-eigen)", repeated["ours harris"],
             repeated["cv2 GFTT min-eigen"]),
            ("homography success >= ORB's", succeeded["ours (cnn match)"], succeeded["cv2 ORB"]),
            ("detection throughput >= corner_peaks path", speed["ours harris"], speed["skimage corner_peaks"])):
        print(f"  {what:50s} {value:7.3f} against {peer:7.3f}: {'met' if value >= peer else 'MISSED'}")


if __name__ == "__main__":
    main()
