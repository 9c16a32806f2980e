"""Keypoints from a corner response: peaks, sub-pixel positions, scales and angles.

The first steps of a feature matcher, each a function on numpy arrays (no
files, no printing; ``cnn_cli.keypointing`` runs them for ``cnn keypoints``
and ``cnn match``; steps 5 to 7 are in ``cnn_cli.matching``):

1. ``find_peaks``: non-maximum suppression of a response map, as OpenCV's
   ``goodFeaturesToTrack`` does it (the default) or as scikit-image's
   ``peak_local_max`` and ``corner_peaks`` do;
2. ``refine_peaks``: sub-pixel positions by a quadratic fit;
3. ``image_pyramid`` and ``detect``: peaks over a pyramid of scales, in the
   input image's coordinates, best first;
4. ``orientations``: each point's angle by its intensity centroid (ORB);
5. ``describe``: feature maps sampled on a grid rotated to each point's
   angle and scaled to its scale, normalised as SIFT does;
6. ``match_descriptors``: mutual nearest neighbours with Lowe's ratio test;
7. ``ransac``: a homography or an affine map from matches with outliers.

Coordinates: ``x`` is the column and ``y`` the row, with pixel centres at
integers, as in scikit-image and OpenCV. A point found at ``(x, y)`` on a
map of ``w`` columns that covers an image of ``W`` columns lies at
``(x + 0.5) * W / w - 0.5`` in the image. Angles are in degrees in [0, 360),
measured from +x towards +y (clockwise on the screen, as OpenCV's
``KeyPoint.angle``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from . import config
from .imageio import LUMA

#: ``find_peaks``'s rules of non-maximum suppression.
SUPPRESSIONS = ("distance", "window")

@dataclass(frozen=True)
class Keypoints:
    """K keypoints, best first, in the input image's pixels.

    Attributes
    ----------
    x, y : ndarray, shape (K,), float64
        Column and row (pixel centres at integers).
    score : ndarray, shape (K,), float64
        The response at the peak.
    scale : ndarray, shape (K,), float64
        Image pixels per pixel of the response map the point was found on
        (1 for the full-size map of a pipeline with ``same`` padding; the
        pyramid and strided layers make it larger).
    angle : ndarray, shape (K,), float64
        Orientation in degrees, [0, 360); 0 before ``orientations``.
    level : ndarray, shape (K,), int64
        Index of the pyramid level the point was found on.
    """

    x: np.ndarray
    y: np.ndarray
    score: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    level: np.ndarray

    def __len__(self):
        return len(self.x)

    @classmethod
    def empty(cls):
        f = np.zeros(0)
        return cls(f, f, f, f, f, np.zeros(0, np.int64))

    def take(self, index):
        """The keypoints at ``index`` (an integer array or a boolean mask), in that order."""
        return Keypoints(*(getattr(self, name)[index] for name in self.__dataclass_fields__))

    def with_angle(self, angle):
        return Keypoints(self.x, self.y, self.score, self.scale, np.asarray(angle, np.float64), self.level)

    def rows(self):
        """[(x, y, score, scale, angle), ...] as Python floats (for CSV and JSON)."""
        return [tuple(float(v) for v in row)
                for row in zip(self.x, self.y, self.score, self.scale, self.angle)]


def response_of(maps):
    """A layer's maps (C, h, w) as one response (h, w): the map itself, or the norm over channels."""
    if maps.shape[0] == 1:
        return maps[0]
    return np.sqrt(np.square(maps).sum(axis=0))


def grey(image):
    """An image (C, H, W) as one channel (H, W): its own, or the luminance of R, G, B (``imageio.LUMA``)."""
    return image[0] if image.shape[0] == 1 else np.tensordot(LUMA, image, 1)


# --------------------------------------------------------------------------- peaks


def find_peaks(response, *, min_distance=1, threshold_abs=None, threshold_rel=None, exclude_border=True,
               num_peaks=None, suppression=config.KEYPOINT_SUPPRESSION):
    """Local maxima of ``response``, strongest first, kept ``min_distance`` (D) apart.

    Two rules of suppression (``suppression``):

    - ``"window"``, scikit-image's ``corner_peaks``: a pixel is a peak when
      it equals the maximum of the (2D+1) x (2D+1) window around it (the
      window is clipped at the image's edge as ``mode='nearest'`` does).
      Two such peaks within D of each other (Chebyshev distance) can only
      have equal values; they are resolved greedily, as ``corner_peaks``
      does: points in order of decreasing value, ties in raster order (row,
      then column); a point within D of one kept before it is dropped. So a
      2 x 2 plateau gives its top-left pixel.
    - ``"distance"``, OpenCV's ``goodFeaturesToTrack``: the maxima of 3 x 3
      windows, then, in order of decreasing value (ties in raster order),
      each point closer than D (Euclidean) to one kept before it, or next to
      it (a plateau, at D = 1), is dropped (``keep_apart``). A point beside a stronger one that was itself
      dropped survives here, where a (2D+1)^2 window would drop it. The
      default: ``config.KEYPOINT_SUPPRESSION`` gives the measurement.

    Either way the points are above the threshold: ``threshold_abs``
    (default: the map's minimum), raised to ``threshold_rel *
    response.max()`` when that is given. With ``exclude_border`` (True: the
    window's reach, D pixels for "window" and 1 for "distance", as each
    library does; or an int) no peak lies that close to the edge. A map that
    is constant everywhere has no peaks.

    Parameters
    ----------
    response : ndarray, shape (H, W)
    min_distance : int >= 1
    threshold_abs, threshold_rel : float or None
    exclude_border : bool or int
    num_peaks : int or None
        Keep at most this many (the strongest).
    suppression : {"window", "distance"}

    Returns
    -------
    ndarray, shape (K, 2), int64
        (row, column) of each peak, strongest first.

    Examples
    --------
    >>> r = np.zeros((5, 5)); r[2:4, 2:4] = 1
    >>> find_peaks(r).tolist()
    [[2, 2]]
    >>> r = np.zeros((7, 9)); r[3, 2], r[3, 4], r[3, 6] = 3, 2, 1
    >>> find_peaks(r, min_distance=3, exclude_border=False, suppression="distance").tolist()
    [[3, 2], [3, 6]]
    """
    response = np.asarray(response)
    if response.ndim != 2:
        raise ValueError(f"a response map must be 2-D (H, W), but got shape {response.shape}")
    if int(min_distance) != min_distance or min_distance < 1:
        raise ValueError(f"min_distance must be an integer of at least 1, but got {min_distance}")
    if num_peaks is not None and num_peaks < 1:
        raise ValueError(f"the number of peaks must be at least 1, but got {num_peaks}")
    if suppression not in SUPPRESSIONS:
        raise ValueError(f"suppression must be one of {', '.join(SUPPRESSIONS)}, but got {suppression!r}")
    min_distance = int(min_distance)
    window = min_distance if suppression == "window" else 1
    border = window if exclude_border is True else int(exclude_border or 0)
    if response.size == 0 or not np.all(np.isfinite(response)):
        if response.size:
            raise ValueError("the response map holds NaN or infinite values")
        return np.zeros((0, 2), np.int64)
    local_max = window_max(response, window)
    mask = response == local_max
    if mask.all():
        return np.zeros((0, 2), np.int64)  # a constant map has no peaks
    threshold = response.min() if threshold_abs is None else threshold_abs
    if threshold_rel is not None:
        threshold = max(threshold, threshold_rel * response.max())
    mask &= response > threshold
    if border:
        mask[:border] = mask[-border:] = False
        mask[:, :border] = mask[:, -border:] = False
    rows, cols = np.divmod(np.flatnonzero(mask), mask.shape[1])  # raster order (10x faster than np.nonzero)
    values = response[rows, cols]
    order = np.argsort(-values, kind="stable")
    peaks = np.stack([rows[order], cols[order]], axis=1).astype(np.int64)
    if suppression == "window":
        peaks = _resolve_plateaus(peaks, values[order], min_distance)
    else:  # neighbouring 3 x 3 maxima (a plateau) are too close at any D
        peaks = keep_apart(peaks, max(min_distance, 1.5), num_peaks)
    return peaks if num_peaks is None else peaks[:int(num_peaks)]


def keep_apart(points, min_distance, most=None):
    """``points`` (K, 2) without each one closer than ``min_distance`` to one kept before it (greedy,
    in the given order: OpenCV's ``goodFeaturesToTrack``); at most ``most`` are kept.

    Distances are Euclidean; one of exactly ``min_distance`` is kept, as OpenCV keeps it.

    Examples
    --------
    >>> keep_apart(np.array([[0, 0], [0, 2], [0, 3], [3, 0]]), 3).tolist()
    [[0, 0], [0, 3], [3, 0]]
    """
    points = np.asarray(points).reshape(-1, 2)
    if len(points) < 2 or min_distance <= 0:
        return points[:most]
    # Integer positions have whole squared distances: under D^2 means at most ceil(D^2) - 1.
    radius = np.sqrt(np.ceil(min_distance ** 2) - 0.5) if np.issubdtype(points.dtype, np.integer) else \
        np.nextafter(float(min_distance), 0)
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")  # (i, j), i < j: i comes first
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    starts = np.searchsorted(pairs[:, 0], np.arange(len(points) + 1)).tolist()
    later = pairs[:, 1].tolist()
    dropped = bytearray(len(points))
    kept = []
    limit = len(points) if most is None else int(most)
    for i in range(len(points)):  # a Python loop over at most a few thousand candidates
        if dropped[i]:
            continue
        kept.append(i)
        if len(kept) == limit:
            break
        for j in later[starts[i]:starts[i + 1]]:
            dropped[j] = 1
    return points[kept]


def window_max(response, radius):
    """The maximum of the (2r+1) x (2r+1) window around each pixel, the edge repeated beyond the
    image: ``scipy.ndimage.maximum_filter(response, size=2r+1, mode="nearest")``.

    Up to ``config.KEYPOINT_SHIFTED_MAX_RADIUS``, as the running maximum of shifted views,
    rows then columns (2r numpy maxima each): 1.3 ms for a 512 x 512 map at
    r = 3, where ``maximum_filter`` took 11 ms (float64) and 15 ms (float32).
    """
    if radius > config.KEYPOINT_SHIFTED_MAX_RADIUS:
        return ndimage.maximum_filter(response, size=2 * radius + 1, mode="nearest")
    h, w = response.shape
    padded = np.pad(response, radius, mode="edge")
    rows = padded[:, :w].copy()
    for k in range(1, 2 * radius + 1):
        np.maximum(rows, padded[:, k:k + w], out=rows)
    out = rows[:h].copy()
    for k in range(1, 2 * radius + 1):
        np.maximum(out, rows[k:k + h], out=out)
    return out


def _resolve_plateaus(peaks, values, min_distance):
    """Drop each peak within ``min_distance`` of an earlier one (greedy, in the given order).

    Only peaks of equal value can be that close (each is the maximum of a
    window holding the other), so only values that occur twice are looked at.
    """
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    tied = np.flatnonzero(counts[inverse] > 1)
    if len(tied) == 0:
        return peaks
    keep = np.ones(len(peaks), bool)
    for group in np.unique(inverse[tied]):
        members = np.flatnonzero(inverse == group)  # in the peaks' order
        tree = cKDTree(peaks[members])
        for n, m in enumerate(members):
            if keep[m]:
                close = tree.query_ball_point(peaks[m], r=min_distance, p=np.inf)
                keep[members[[c for c in close if c > n]]] = False
    return peaks[keep]


def refine_peaks(response, peaks):
    """Sub-pixel positions of ``peaks`` by fitting a quadratic to each 3 x 3 neighbourhood.

    The fit is the second-order Taylor expansion from central differences
    (as SIFT refines its extrema): offset = -H^-1 g, with g the gradient and
    H the Hessian at the peak. A fit whose Hessian is not negative definite
    (a ridge, a flat top), or whose offset leaves the pixel, keeps the
    integer position; offsets are clipped to half a pixel. Neighbours past
    the edge repeat the edge.

    Parameters
    ----------
    response : ndarray, shape (H, W)
    peaks : ndarray, shape (K, 2), int
        (row, column) as ``find_peaks`` gives them.

    Returns
    -------
    ndarray, shape (K, 2), float64
        (row, column) of each peak, refined.
    """
    peaks = np.asarray(peaks, np.int64).reshape(-1, 2)
    out = peaks.astype(np.float64)
    if len(peaks) == 0:
        return out
    h, w = response.shape
    r, c = peaks[:, 0], peaks[:, 1]
    up, down = np.maximum(r - 1, 0), np.minimum(r + 1, h - 1)
    left, right = np.maximum(c - 1, 0), np.minimum(c + 1, w - 1)
    f = np.asarray(response, np.float64)
    centre = f[r, c]
    gx = (f[r, right] - f[r, left]) / 2
    gy = (f[down, c] - f[up, c]) / 2
    hxx = f[r, right] - 2 * centre + f[r, left]
    hyy = f[down, c] - 2 * centre + f[up, c]
    hxy = (f[down, right] - f[down, left] - f[up, right] + f[up, left]) / 4
    det = hxx * hyy - hxy * hxy
    peak_shaped = (hxx < 0) & (det > 0)
    safe = np.where(peak_shaped, det, 1.0)
    dx = -(hyy * gx - hxy * gy) / safe
    dy = -(hxx * gy - hxy * gx) / safe
    good = peak_shaped & (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    out[good, 0] += np.clip(dy[good], -0.5, 0.5)
    out[good, 1] += np.clip(dx[good], -0.5, 0.5)
    return out


# --------------------------------------------------------------------------- pyramid and detection


def pyramid_shapes(height, width, levels, factor=config.KEYPOINT_SCALE_FACTOR):
    """(H_l, W_l) of each level: level l is ``factor**l`` times smaller, rounded, at least 1 px.

    Levels that would be smaller than 8 px on a side are left out, so a
    small image can have fewer levels than asked for.
    """
    if levels < 1:
        raise ValueError(f"the number of scales must be at least 1, but got {levels}")
    shapes = [(int(height), int(width))]
    for level in range(1, int(levels)):
        h, w = round(height / factor ** level), round(width / factor ** level)
        if min(h, w) < 8:
            break
        shapes.append((h, w))
    return shapes


def resample(image, height, width):
    """``image`` (C, H, W) resized to (C, height, width): Gaussian anti-aliasing, then bilinear.

    The Gaussian's sigma is 0.5 * sqrt(s^2 - 1) for a shrink by s, so the
    result has about the blur of an image taken at the smaller size.
    """
    image = np.asarray(image, np.float32)
    _c, h, w = image.shape
    if (h, w) == (height, width):
        return image
    sy, sx = h / height, w / width
    sigma = (0, 0.5 * np.sqrt(max(sy * sy - 1, 0)), 0.5 * np.sqrt(max(sx * sx - 1, 0)))
    smooth = ndimage.gaussian_filter(image, sigma, mode="nearest") if max(sigma) > 0 else image
    rows = (np.arange(height) + 0.5) * sy - 0.5
    cols = (np.arange(width) + 0.5) * sx - 0.5
    # Separable bilinear interpolation: rows, then columns.
    r0 = np.clip(np.floor(rows).astype(int), 0, h - 1)
    r1 = np.minimum(r0 + 1, h - 1)
    fr = np.clip(rows - r0, 0, 1).astype(np.float32)[None, :, None]
    tmp = smooth[:, r0] * (1 - fr) + smooth[:, r1] * fr
    c0 = np.clip(np.floor(cols).astype(int), 0, w - 1)
    c1 = np.minimum(c0 + 1, w - 1)
    fc = np.clip(cols - c0, 0, 1).astype(np.float32)[None, None, :]
    return np.ascontiguousarray(tmp[:, :, c0] * (1 - fc) + tmp[:, :, c1] * fc, dtype=np.float32)


def image_pyramid(image, levels, factor=config.KEYPOINT_SCALE_FACTOR):
    """``image`` (C, H, W) at ``levels`` sizes, each ``factor`` smaller (``pyramid_shapes``); a list."""
    shapes = pyramid_shapes(image.shape[1], image.shape[2], levels, factor)
    return [resample(image, h, w) for h, w in shapes]


def to_image(position, map_size, image_size):
    """A coordinate on a map of ``map_size`` pixels along its axis, in an image of ``image_size`` pixels."""
    return (np.asarray(position, np.float64) + 0.5) * (image_size / map_size) - 0.5


def detect(responses, image_shape, *, num_peaks=config.KEYPOINTS, threshold_rel=config.KEYPOINT_THRESHOLD,
           min_distance=config.KEYPOINT_MIN_DISTANCE, subpixel=True, suppression=config.KEYPOINT_SUPPRESSION):
    """Keypoints from response maps of one image at several scales.

    Each map's peaks (``find_peaks`` with ``suppression`` and
    ``min_distance``, its border excluded) are refined (``refine_peaks``)
    and placed in the image (``to_image``). The threshold is ``threshold_rel`` times the strongest
    response over all maps. Each level gets a share of ``num_peaks`` in
    proportion to its map's area, as ORB shares its features among levels
    (responses of different levels are not on one scale); what a level
    leaves unused goes to the strongest remaining points of the others.

    Parameters
    ----------
    responses : list of ndarray, each shape (h_l, w_l)
        The response of level l; it covers the whole image.
    image_shape : (H, W)
        The input image's size, which coordinates refer to.
    num_peaks : int >= 1
    threshold_rel : float
    min_distance : int >= 1
    suppression : {"distance", "window"}
        See ``find_peaks``.

    Returns
    -------
    Keypoints
        At most ``num_peaks``, strongest first within each level's share
        (angles 0: see ``orientations``).
    """
    if num_peaks < 1:
        raise ValueError(f"the number of keypoints must be at least 1, but got {num_peaks}")
    if not responses:
        return Keypoints.empty()
    height, width = image_shape
    strongest = max(float(r.max()) if r.size else -np.inf for r in responses)
    found = []
    for level, response in enumerate(responses):
        h, w = response.shape
        threshold = threshold_rel * strongest
        # find_peaks also asks for more than the map's minimum: a flat map has no peaks.
        peaks = find_peaks(response, min_distance=min_distance, threshold_abs=max(threshold, response.min()),
                           num_peaks=num_peaks, suppression=suppression)
        where = refine_peaks(response, peaks) if subpixel else peaks.astype(np.float64)
        scale = np.sqrt((height / h) * (width / w))
        found.append(Keypoints(to_image(where[:, 1], w, width), to_image(where[:, 0], h, height),
                               response[peaks[:, 0], peaks[:, 1]].astype(np.float64),
                               np.full(len(peaks), scale), np.zeros(len(peaks)),
                               np.full(len(peaks), level, np.int64)))
    areas = np.array([r.size for r in responses], np.float64)
    quota = np.floor(num_peaks * areas / areas.sum()).astype(int)
    quota[0] += num_peaks - quota.sum()
    chosen = [kp.take(np.arange(min(len(kp), q))) for kp, q in zip(found, quota)]
    spare = num_peaks - sum(len(kp) for kp in chosen)
    rest = [kp.take(np.arange(len(c), len(kp))) for kp, c in zip(found, chosen)]
    extra = _concatenate(rest)
    if spare > 0 and len(extra):
        extra = extra.take(np.argsort(-extra.score, kind="stable")[:spare])
        chosen.append(extra)
    return _concatenate(chosen)


def _concatenate(parts):
    parts = [p for p in parts if len(p)]
    if not parts:
        return Keypoints.empty()
    return Keypoints(*(np.concatenate([getattr(p, name) for p in parts]) for name in Keypoints.__dataclass_fields__))


def level_position(keypoints, image_shape, level_shape):
    """(x, y) of ``keypoints`` in the pixels of an image of ``level_shape`` (H_l, W_l) covering the input."""
    (height, width), (h, w) = image_shape, level_shape
    return to_image(keypoints.x, width, w), to_image(keypoints.y, height, h)


# --------------------------------------------------------------------------- orientation


def _moment_kernels(radius):
    """The first moments' weights, dx * g and dy * g inside the disc of ``radius`` (g a Gaussian of
    sigma radius / 2) on a (2r+1)^2 grid, r = ceil(radius), each put at the four corners of a
    (2r+2)^2 one: (2r+2)^2 x 8, columns (shift down, shift right, x or y), float64."""
    r = int(np.ceil(radius))
    n = 2 * r + 1
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    weight = np.exp(-(dx * dx + dy * dy) / (2 * (radius / 2) ** 2)) * (dy * dy + dx * dx <= radius * radius)
    shifted = np.zeros((2, 2, 2, n + 1, n + 1))
    for down in (0, 1):
        for right in (0, 1):
            shifted[down, right, 0, down:down + n, right:right + n] = dx * weight
            shifted[down, right, 1, down:down + n, right:right + n] = dy * weight
    return shifted.reshape(8, -1).T


def intensity_angle(image, x, y, *, radius=config.KEYPOINT_ORIENTATION_RADIUS):
    """Orientation of each point by its intensity centroid (Rosin 1999; ORB), in degrees.

    The angle of the vector (m10, m01) of the first moments of the
    intensities in a Gaussian-weighted disc of ``radius`` pixels around the
    point, sampled bilinearly at integer offsets from it (beyond the edge, the
    edge repeats). The disc is symmetric, so the moments of the intensities
    and of the intensities minus their mean are the same.

    Each point's samples come from the (2r+2)^2 pixels around it: a sample
    at a fractional offset (fy, fx) from a pixel is (1-fy)(1-fx) of it plus
    its neighbours' shares, so each moment is four weighted sums of that
    block, shifted by a pixel, all eight of them one matrix product (1.6 ms
    for 500 points, where ``scipy.ndimage.map_coordinates`` of every sample
    took 25).

    Parameters
    ----------
    image : ndarray, shape (H, W)
    x, y : ndarray, shape (K,)
        Positions in ``image``'s pixels.

    Returns
    -------
    ndarray, shape (K,), float64, in [0, 360)
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) == 0:
        return np.zeros(0)
    r = int(np.ceil(radius))
    size = 2 * r + 2
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    # Rows y0 - r .. y0 + r + 1 and the same columns of each point, out of an edge-padded image.
    padded = np.pad(np.asarray(image, np.float32), r + 1, mode="edge")
    h, w = padded.shape
    y0 = np.clip(y0.astype(np.int64) + 1, 0, h - size)
    x0 = np.clip(x0.astype(np.int64) + 1, 0, w - size)
    blocks = np.lib.stride_tricks.sliding_window_view(padded, (size, size))[y0, x0]
    m = (blocks.reshape(len(x), -1).astype(np.float64) @ _moment_kernels(radius)).reshape(-1, 2, 2, 2)
    m = (1 - fy) * ((1 - fx) * m[:, 0, 0] + fx * m[:, 0, 1]) + fy * ((1 - fx) * m[:, 1, 0] + fx * m[:, 1, 1])
    angle = np.degrees(np.arctan2(m[:, 1], m[:, 0])) % 360
    return np.where(angle >= 360, 0.0, angle)  # -1e-15 % 360 rounds to 360


def orientations(images, keypoints, image_shape, *, radius=config.KEYPOINT_ORIENTATION_RADIUS):
    """``keypoints`` with angles from ``intensity_angle`` on the pyramid level each was found on.

    ``images`` are the levels, each (H_l, W_l) (grey); the disc's radius is
    ``radius`` level pixels times the response map's stride on that level.
    """
    angle = np.zeros(len(keypoints))
    height, width = image_shape
    for level, image in enumerate(images):
        on = np.flatnonzero(keypoints.level == level)
        if len(on) == 0:
            continue
        h, w = image.shape
        x, y = level_position(keypoints.take(on), image_shape, (h, w))
        stride = keypoints.scale[on[0]] / np.sqrt((height / h) * (width / w))
        angle[on] = intensity_angle(image, x, y, radius=radius * max(stride, 1.0))
    return keypoints.with_angle(angle)
