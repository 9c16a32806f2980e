"""Commands that find corners and match them across images: keypoints, match."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from .. import config
from .common import (
    EXIT_USAGE,
    Color,
    MaxPixels,
    ModelOption,
    app,
    check_output_or_fail,
    echo,
    echo_json,
    exit_batch,
    fail,
    out_of_memory,
    run_with_progress,
    stoppable,
)

#: The pipeline whose last layer is the response when neither --pipeline nor --model is given.
DEFAULT_RESPONSE = "harris"

KeyPipeline = Annotated[str | None, typer.Option("--pipeline", help=f"Pipeline (name or file) whose layer is the corner response: harris, shi_tomasi, or your own. [default: {DEFAULT_RESPONSE}]", show_default=False)]
KeyLayer = Annotated[str | None, typer.Option("--layer", help="Layer whose maps are the response (several channels: their norm): an index (negative from the end), 'last', layer<i>, or a kind that occurs once. [default: the last layer with maps]", show_default=False)]
Points = Annotated[int, typer.Option("-n", "--num", min=1, help="Keypoints per image at most (the strongest).")]
Threshold = Annotated[float, typer.Option("--threshold", min=0.0, max=0.999999, help="Keep peaks above this fraction of the image's strongest response.")]
MinDistance = Annotated[int, typer.Option("--min-distance", min=1, help="D: no two keypoints closer than D pixels (see --suppression).")]


class Suppression(str, Enum):
    distance = "distance"
    window = "window"


DEFAULT_SUPPRESSION = Suppression(config.KEYPOINT_SUPPRESSION)
SuppressionOption = Annotated[Suppression, typer.Option("--suppression", help="distance: maxima of 3x3 windows, each dropped when closer than D to a stronger kept one (OpenCV's goodFeaturesToTrack); window: maxima of (2D+1)x(2D+1) windows, none within D of the edge (scikit-image's corner_peaks).")]
MaxSize = Annotated[int | None, typer.Option(min=1, help="Downscale images so the longer side is at most this many pixels.")]
Force = Annotated[bool, typer.Option("--force", help="Replace existing output folders.")]


class Geometry(str, Enum):
    homography = "homography"
    affine = "affine"
    none = "none"


def _options(**values):
    from ..keypointing import KeypointOptions

    return KeypointOptions(**values)


#: --color: as cnn apply reads images; a model reads them in its own colour.
ColorOption = Annotated[Color, typer.Option(help="Read images as luminance (gray) or as R, G, B channels, for a pipeline of 3-channel kernels (a model reads its own).")]


def _source(pipeline, model, color):
    """The source of the maps, or one Error line."""
    from ..sources import load_source

    if pipeline and model:
        fail("give only one of --pipeline and --model", EXIT_USAGE)
    try:
        return load_source(pipeline=None if model else pipeline or DEFAULT_RESPONSE, model=model and str(model),
                           color=color.value)
    except (ValueError, MemoryError) as exc:
        fail(out_of_memory(exc))


@app.command()
def keypoints(
    inputs: Annotated[list[str], typer.Argument(help="Image files, folders (walked recursively) or globs.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; each image gets OUT/<name>/, named as cnn apply names it.")] = Path("cnn-keypoints"),
    pipeline: KeyPipeline = None,
    model: ModelOption = None,
    color: ColorOption = Color.gray,
    layer: KeyLayer = None,
    num: Points = config.KEYPOINTS,
    threshold: Threshold = config.KEYPOINT_THRESHOLD,
    min_distance: MinDistance = config.KEYPOINT_MIN_DISTANCE,
    suppression: SuppressionOption = DEFAULT_SUPPRESSION,
    scales: Annotated[int, typer.Option("--scales", min=1, help="Pyramid levels, each sqrt(2) smaller: corners of several sizes (a point's scale says which).")] = config.KEYPOINT_SCALES,
    max_size: MaxSize = None,
    max_pixels: MaxPixels = 100_000_000,
    force: Force = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON array with each image's keypoints.json (and its output folder).")] = False,
):
    """Corners as keypoints: peaks of a corner response, refined to sub-pixel, each with a scale and an angle.

    Peaks are the maxima of 3x3 windows over --threshold times the strongest
    response, none closer than D to a stronger one (as goodFeaturesToTrack;
    --suppression window: as corner_peaks), the -n strongest kept; positions
    come from a quadratic fit, angles from the intensity centroid (as ORB).

    Each folder holds keypoints.csv (x,y,score,scale,angle; pixels of the
    input, angle in degrees clockwise from +x), keypoints.json (the same,
    with the source and settings) and overlay.png (the points drawn on the
    image).

    Examples:

      cnn keypoints photo.png

      cnn keypoints photos/ -o corners --pipeline shi_tomasi -n 1000 --min-distance 5

      cnn keypoints photo.png --scales 4 --json

      cnn keypoints photo.png --model model.npz --layer 1
    """
    from ..keypointing import run

    check_output_or_fail(out)
    source = _source(pipeline, model, color)
    options = _options(num=num, threshold=threshold, min_distance=min_distance, suppression=suppression.value,
                       scales=scales, layer=layer, max_size=max_size, max_pixels=max_pixels, force=force)
    summary = run_with_progress("keypoints", out, lambda progress: run(inputs, out, source, options,
                                                                       progress=progress))
    if json_out:
        echo_json(summary.records)
    else:
        for record in summary.records:
            echo(f"{record['input']}: {record['count']} keypoints -> {record['output']}")
    exit_batch(summary.failed, summary.records)


@app.command()
def match(
    a: Annotated[Path, typer.Argument(help="The first image.", show_default=False)],
    b: Annotated[Path, typer.Argument(help="The second image.", show_default=False)],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder; the pair gets OUT/<a>__<b>/ (the images' file stems).")] = Path("cnn-match"),
    pipeline: KeyPipeline = None,
    model: ModelOption = None,
    color: ColorOption = Color.gray,
    layer: KeyLayer = None,
    descriptor: Annotated[str | None, typer.Option("--descriptor", help="Layer whose maps are sampled around each keypoint (same grammar as --layer). An x/y derivative pair (harris's layer 0) is steered to each point's angle. [default: a pipeline's first layer; a model's --layer]", show_default=False)] = None,
    ratio: Annotated[float, typer.Option("--ratio", max=1.0, help="Lowe's ratio test: keep a match when its distance is under RATIO times the second nearest's.")] = config.MATCH_RATIO,
    geometry: Annotated[Geometry, typer.Option("--geometry", help="Map fitted by RANSAC (seeded) to tell inliers from outliers; none keeps every mutual match.")] = Geometry.homography,
    num: Points = config.KEYPOINTS,
    threshold: Threshold = config.KEYPOINT_THRESHOLD,
    min_distance: MinDistance = config.KEYPOINT_MIN_DISTANCE,
    suppression: SuppressionOption = DEFAULT_SUPPRESSION,
    scales: Annotated[int, typer.Option("--scales", min=1, help="Pyramid levels, each sqrt(2) smaller: matches across a change of scale.")] = config.MATCH_SCALES,
    max_size: MaxSize = None,
    max_pixels: MaxPixels = 100_000_000,
    force: Force = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print match.json (and the output folder) as one JSON object.")] = False,
):
    """Match the keypoints of two images, and the geometry between the views.

    Descriptors are feature maps sampled on a 4x4 grid of cells rotated to
    each keypoint's angle and scaled to its scale (SIFT's normalisation);
    pairs are mutual nearest neighbours that pass the ratio test; RANSAC then
    fits a homography or an affine map.

    OUT/<a>__<b>/ holds matches.csv (xa,ya,xb,yb,distance,inlier),
    matches.png (side by side: inliers green, outliers red) and match.json
    (homography: 3x3 rows or null, inliers, matches, settings).

    Examples:

      cnn match left.png right.png

      cnn match a.jpg b.jpg -o pairs --geometry affine --ratio 0.7 --json

      cnn match a.png b.png --pipeline shi_tomasi --scales 4 -n 1000
    """
    from ..imageio import ImageError
    from ..keypointing import match_pair
    from ..layersel import OptionError

    check_output_or_fail(out)
    source = _source(pipeline, model, color)
    options = _options(num=num, threshold=threshold, min_distance=min_distance, suppression=suppression.value,
                       scales=scales, layer=layer, descriptor=descriptor, ratio=ratio, geometry=geometry.value,
                       max_size=max_size, max_pixels=max_pixels, force=force)
    kept = "no unfinished output is left"
    try:
        with stoppable(kept):
            result = match_pair(a, b, out, source, options)
    except OptionError as exc:
        fail(str(exc), EXIT_USAGE)
    except (ImageError, ValueError, OSError, MemoryError) as exc:
        fail(out_of_memory(exc) if not isinstance(exc, OSError) else f"cannot write {out}: {exc.strerror or exc}")
    record = result.record
    if json_out:
        echo_json(record)
    else:
        inliers = "no geometry" if record["inliers"] is None else f"{record['inliers']} inliers"
        echo(f"{a} ~ {b}: {record['keypoints']['a']} and {record['keypoints']['b']} keypoints, "
             f"{record['matches']} matches, {inliers} -> {record['output']}")
