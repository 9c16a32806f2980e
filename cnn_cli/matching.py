"""Descriptors from feature maps, matches between two sets, and the geometry between two views:
steps 5 to 7 of the feature matcher whose first steps are ``cnn_cli.keypoints`` (coordinates
and angles as described there).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import config

#: The descriptor's grid: CELLS x CELLS cells, each the mean of SAMPLES x
#: SAMPLES bilinear samples SPACING level pixels apart (SIFT: 4 x 4 cells
#: of 4 x 4 gradients; our window is 4 * 4 * 1.5 = 24 px wide).
CELLS = 4
SAMPLES = 4
SPACING = 1.5

#: Orientation bins of a steered gradient descriptor (SIFT's 8).
GRADIENT_BINS = 8

#: SIFT's clipping of normalised descriptor entries, which keeps a few large
#: gradients (a lighting edge) from dominating; renormalised afterwards.
DESCRIPTOR_CLIP = 0.2


# --------------------------------------------------------------------------- descriptors


def sampling_grid(cells=CELLS, samples=SAMPLES, spacing=SPACING):
    """Offsets (u, v), shape (cells * samples)^2 each, of the grid's samples around its centre, in
    units of pixels before rotation, ordered cell by cell (row of cells, column of cells, then samples)."""
    n = cells * samples
    ticks = (np.arange(n) - (n - 1) / 2) * spacing
    v, u = np.meshgrid(ticks, ticks, indexing="ij")
    # Reorder so that each cell's samples are contiguous: (cell row, cell col, sample row, sample col).
    u = u.reshape(cells, samples, cells, samples).transpose(0, 2, 1, 3).reshape(-1)
    v = v.reshape(cells, samples, cells, samples).transpose(0, 2, 1, 3).reshape(-1)
    return u, v


def describe(maps, x, y, angle, *, stride=1.0, steer=False, cells=CELLS, samples=SAMPLES, spacing=SPACING,
             clip=DESCRIPTOR_CLIP):
    """Descriptors of points sampled from feature maps on a grid rotated to each point's angle.

    The grid has ``cells`` x ``cells`` cells of ``samples`` x ``samples``
    bilinear samples ``spacing * stride`` map pixels apart, centred on the
    point and rotated by its angle. Each sample is weighted by a Gaussian
    (sigma: half the grid's width) and each cell is the weighted sum of its
    samples, for every channel. The vector is L2-normalised, its entries
    clipped to ±``clip`` and normalised again (SIFT's treatment; ``clip=None``
    skips it).

    With ``steer`` the maps are an x and a y derivative (C = 2), a vector
    field that turns with the image: each sampled gradient is rotated into
    the point's frame and spread over ``GRADIENT_BINS`` orientation bins by
    its magnitude (linear interpolation between the two nearest bins), as
    SIFT's histograms do. Other maps (textures, learned channels) are
    sampled as they are: their channels do not turn with the image.

    Parameters
    ----------
    maps : ndarray, shape (C, H, W)
    x, y : ndarray, shape (K,)
        Positions in the maps' pixels.
    angle : ndarray, shape (K,)
        Degrees.
    stride : float
        Map pixels per pixel of the grid's units (the scale of the map).

    Returns
    -------
    ndarray, shape (K, D), float32
        D = cells^2 * C, or cells^2 * GRADIENT_BINS with ``steer``.
    """
    maps = np.asarray(maps, np.float32)
    if maps.ndim != 3:
        raise ValueError(f"feature maps must be (C, H, W), but got shape {maps.shape}")
    if steer and maps.shape[0] != 2:
        raise ValueError(f"a steered descriptor needs 2 maps (x and y derivatives), but got {maps.shape[0]}")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    k = len(x)
    u, v = sampling_grid(cells, samples, spacing)
    width = cells * samples * spacing
    weight = np.exp(-(u * u + v * v) / (2 * (width / 2) ** 2))
    theta = np.radians(np.asarray(angle, np.float64))[:, None]
    cos, sin = np.cos(theta), np.sin(theta)
    # Grid axis u runs along the point's angle, v perpendicular (x right, y down).
    sx = x[:, None] + stride * (u * cos - v * sin)
    sy = y[:, None] + stride * (u * sin + v * cos)
    sampled = np.stack([ndimage.map_coordinates(m, [sy, sx], order=1, mode="nearest") for m in maps], axis=-1)
    if steer:
        per_cell = _gradient_histograms(sampled, cos, sin, weight, cells, samples)
    else:
        per_cell = (sampled * weight[None, :, None]).reshape(k, cells * cells, samples * samples, len(maps))
        per_cell = per_cell.sum(axis=2)
    return normalize_descriptors(per_cell.reshape(k, per_cell.shape[1] * per_cell.shape[2]), clip)


def _gradient_histograms(sampled, cos, sin, weight, cells, samples):
    """Per-cell orientation histograms (K, cells^2, GRADIENT_BINS) of sampled gradients
    (K, P, 2), turned into each point's frame (``cos``, ``sin``: (K, 1)) and weighted by
    magnitude times ``weight`` (P,), each vote split linearly between its two nearest bins."""
    k, count = sampled.shape[:2]
    gx, gy = sampled[..., 0].astype(np.float64), sampled[..., 1].astype(np.float64)
    # The gradient in the point's frame: rotate by -angle.
    gu, gv = gx * cos + gy * sin, -gx * sin + gy * cos
    vote = np.hypot(gu, gv) * weight
    position = (np.arctan2(gv, gu) % (2 * np.pi)) / (2 * np.pi) * GRADIENT_BINS
    low = np.floor(position)
    upper = position - low
    low = low.astype(np.int64) % GRADIENT_BINS
    # Samples are ordered cell by cell (sampling_grid): sample j votes in cell j // samples^2.
    cell = np.arange(count) // (samples * samples)
    base = (np.arange(k)[:, None] * (cells * cells) + cell[None, :]) * GRADIENT_BINS
    size = k * cells * cells * GRADIENT_BINS
    histograms = (np.bincount((base + low).ravel(), (vote * (1 - upper)).ravel(), size)
                  + np.bincount((base + (low + 1) % GRADIENT_BINS).ravel(), (vote * upper).ravel(), size))
    return histograms.reshape(k, cells * cells, GRADIENT_BINS)


def normalize_descriptors(d, clip=DESCRIPTOR_CLIP):
    """Rows of ``d`` (K, D) L2-normalised, then clipped to ±``clip`` and normalised again; float32.
    A row of zeros stays zero."""
    d = np.asarray(d, np.float64)

    def unit(a):
        norm = np.linalg.norm(a, axis=1, keepdims=True)
        return a / np.where(norm > 0, norm, 1)

    d = unit(d)
    if clip is not None:
        d = unit(np.clip(d, -clip, clip))
    return d.astype(np.float32)


# --------------------------------------------------------------------------- matching


def match_descriptors(da, db, *, ratio=config.MATCH_RATIO, mutual=True):
    """Pairs (i, j) whose descriptors ``da[i]`` and ``db[j]`` are nearest neighbours.

    Euclidean distance. Lowe's ratio test keeps a pair when the distance to
    the nearest ``db`` row is below ``ratio`` times the distance to the
    second nearest; ``mutual`` also asks that ``da[i]`` be the nearest row of
    ``da`` to ``db[j]``. This is scikit-image's ``match_descriptors(...,
    cross_check=mutual, max_ratio=ratio)``. Ties go to the lower index.

    Parameters
    ----------
    da : ndarray, shape (Ka, D)
    db : ndarray, shape (Kb, D)
    ratio : float in (0, 1]

    Returns
    -------
    pairs : ndarray, shape (M, 2), int64
        (i, j), in order of i.
    distance : ndarray, shape (M,), float64
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"the ratio must be in (0, 1], but got {ratio}")
    da, db = np.asarray(da, np.float64), np.asarray(db, np.float64)
    if da.ndim != 2 or db.ndim != 2 or da.shape[1] != db.shape[1]:
        raise ValueError(f"descriptors must be (K, D) with the same D, but got {da.shape} and {db.shape}")
    if len(da) == 0 or len(db) == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    squared = (da * da).sum(1)[:, None] + (db * db).sum(1)[None, :] - 2 * da @ db.T
    distance = np.sqrt(np.maximum(squared, 0))
    nearest = np.argmin(distance, axis=1)
    i = np.arange(len(da))
    best = distance[i, nearest]
    keep = np.ones(len(da), bool)
    if mutual:
        keep &= np.argmin(distance, axis=0)[nearest] == i
    if ratio < 1 and len(db) > 1:
        second = np.partition(distance, 1, axis=1)[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            keep &= np.where(second > 0, best / second, 1.0) < ratio
    elif ratio < 1:
        keep[:] = False  # a single candidate has no second to compare with
    return np.stack([i[keep], nearest[keep]], axis=1).astype(np.int64), best[keep]


# --------------------------------------------------------------------------- geometry

GEOMETRIES = ("homography", "affine")


def _normalizing(points):
    """Hartley's similarity T (3, 3): moves ``points`` (M, 2) to mean 0 and mean distance sqrt(2)."""
    mean = points.mean(axis=0)
    spread = np.sqrt(((points - mean) ** 2).sum(axis=1)).mean()
    s = np.sqrt(2) / spread if spread > 0 else 1.0
    return np.array([[s, 0, -s * mean[0]], [0, s, -s * mean[1]], [0, 0, 1]])


def fit_homography(src, dst):
    """The homography H (3, 3), H[2, 2] = 1, taking ``src`` (M >= 4, 2) to ``dst`` in the least-squares
    sense of the DLT, with Hartley's normalisation; None when the points are degenerate (collinear)."""
    ts, td = _normalizing(src), _normalizing(dst)
    s = src @ ts[:2, :2].T + ts[:2, 2]
    d = dst @ td[:2, :2].T + td[:2, 2]
    m = len(s)
    a = np.zeros((2 * m, 9))
    a[0::2, 0:2], a[0::2, 2] = s, 1
    a[0::2, 6:8], a[0::2, 8] = -d[:, :1] * s, -d[:, 0]
    a[1::2, 3:5], a[1::2, 5] = s, 1
    a[1::2, 6:8], a[1::2, 8] = -d[:, 1:] * s, -d[:, 1]
    # Reduced SVD for the refit on many pairs (a full U of a 2M x 2M matrix took 0.15 s at
    # M = 500); four pairs give 8 rows, and the full form then keeps the null vector.
    _, sv, vt = np.linalg.svd(a, full_matrices=len(a) < 9)
    if m == 4 and sv[7] < 1e-9 * sv[0]:
        return None  # four points with three on a line fit no unique homography
    h = np.linalg.inv(td) @ vt[-1].reshape(3, 3) @ ts
    if abs(h[2, 2]) < 1e-12 or not np.all(np.isfinite(h)):
        return None
    h /= h[2, 2]
    return h if abs(np.linalg.det(h[:2, :2])) > 1e-9 else None


def fit_affine(src, dst):
    """The affine map A (3, 3), last row (0, 0, 1), taking ``src`` (M >= 3, 2) to ``dst`` by least
    squares; None when the points are collinear."""
    a = np.hstack([src, np.ones((len(src), 1))])
    if np.linalg.matrix_rank(a) < 3:
        return None
    solution, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return np.vstack([solution.T, [0, 0, 1]])


def project(matrix, points):
    """``points`` (M, 2) mapped by the 3 x 3 ``matrix`` (homogeneous coordinates); (M, 2)."""
    p = points @ matrix[:, :2].T + matrix[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return p[:, :2] / p[:, 2:]


def ransac(src, dst, *, geometry="homography", threshold=config.RANSAC_THRESHOLD, max_trials=config.RANSAC_MAX_TRIALS,
           confidence=config.RANSAC_CONFIDENCE, seed=0):
    """The homography or affine map taking ``src`` to ``dst``, robust to wrong pairs (RANSAC).

    Each trial fits a minimal sample (4 pairs for a homography, 3 for an
    affine map) drawn by ``numpy.random.default_rng(seed)``, and counts
    the pairs it maps within ``threshold`` pixels of their partner
    (inliers). Trials stop when ``confidence`` says that a better sample is
    unlikely (Fischler & Bolles; Hartley & Zisserman 4.7), or at
    ``max_trials``. The best model is refitted on its inliers by least
    squares, and the inliers counted again, twice; the refit is kept even
    when it counts a few inliers fewer, as a fit to all the inliers places
    points far from them (an image's corners) better than a fit to four: on
    bench/keypoints.py, refits that lost one of 375 inliers were 0.3 px off at
    the corners where the sample they replaced was 4.5 px off. The same input
    and seed give the same answer.

    Parameters
    ----------
    src, dst : ndarray, shape (M, 2)
        (x, y) of matched points.

    Returns
    -------
    matrix : ndarray, shape (3, 3), or None
        None when fewer pairs than a sample, or no sample fits.
    inliers : ndarray, shape (M,), bool
    """
    if geometry not in GEOMETRIES:
        raise ValueError(f"geometry must be one of {', '.join(GEOMETRIES)}, but got {geometry!r}")
    src, dst = np.asarray(src, np.float64).reshape(-1, 2), np.asarray(dst, np.float64).reshape(-1, 2)
    fit, size = (fit_homography, 4) if geometry == "homography" else (fit_affine, 3)
    m = len(src)
    none = np.zeros(m, bool)
    if m < size:
        return None, none
    rng = np.random.default_rng(seed)

    def inliers_of(model):
        error = np.linalg.norm(project(model, src) - dst, axis=1)
        return np.nan_to_num(error, nan=np.inf) < threshold

    best, best_in, trials, needed = None, none, 0, max_trials
    while trials < min(needed, max_trials):
        trials += 1
        sample = rng.choice(m, size, replace=False)
        model = fit(src[sample], dst[sample])
        if model is None:
            continue
        found = inliers_of(model)
        if found.sum() > best_in.sum():
            best, best_in = model, found
            share = found.sum() / m
            needed = trials if share >= 1 else np.log(1 - confidence) / np.log(1 - share ** size)
    if best is None:
        return None, none
    for _ in range(2):
        if best_in.sum() < size:
            break
        refit = fit(src[best_in], dst[best_in])
        if refit is None:
            break
        found = inliers_of(refit)
        if found.sum() < size:
            break
        best, best_in = refit, found
    return best, best_in
