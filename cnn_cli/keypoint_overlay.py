"""Pictures of keypoints: ``cnn keypoints``'s overlay, ``cnn match``'s side-by-side pair, and the
overlay ``cnn apply`` adds to an image's folder when its pipeline ends in a corner response.

``cnn apply --pipeline harris`` (or ``shi_tomasi``) writes, beside the maps,
``keypoints.png``: the points ``cnn keypoints`` finds with its defaults
(``cnn_cli.config``) at one scale, drawn on the input. The manifest names it
under ``keypoints`` (with the count, the layer and the settings), and the
image's page in the report shows it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from . import config, viz

#: Colours of the pictures: keypoints, inlier matches, outlier matches.
POINT_COLOR = (255, 80, 0)
INLIER_COLOR = (40, 220, 60)
OUTLIER_COLOR = (230, 40, 40)

#: The file ``cnn apply`` writes in an image's folder for a corner pipeline.
APPLY_OVERLAY = "keypoints.png"

#: The layer kind whose maps are a corner response (the last layer of ``harris`` and ``shi_tomasi``).
CORNER_KIND = "corner_response"


def _rgb(image):
    """(C, H, W) in [0, 1] -> a Pillow RGB picture."""
    pixels = viz.to_uint8(image, 0.0, 1.0)
    pixels = np.repeat(pixels, 3, axis=0) if pixels.shape[0] == 1 else pixels
    return Image.fromarray(np.ascontiguousarray(np.moveaxis(pixels, 0, -1)), mode="RGB")


def _dimmed(image):
    return Image.eval(_rgb(image), lambda v: int(v * 0.75))


def _draw_points(draw, points, color=POINT_COLOR):
    for x, y, _, scale, angle in points.rows():
        r = 3 * max(scale, 1.0)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=color)
        t = np.radians(angle)
        draw.line((x, y, x + r * np.cos(t), y + r * np.sin(t)), fill=color)


def overlay_picture(image, points):
    """The image (C, H, W) in [0, 1], dimmed, with a circle per keypoint (radius 3 x its scale)
    and a line from its centre along its angle."""
    picture = _dimmed(image)
    _draw_points(ImageDraw.Draw(picture), points)
    return picture


def matches_picture(image_a, image_b, points_a, points_b, pairs, inliers):
    """A and B side by side (tops aligned), dimmed, and a line per match: inliers
    ``INLIER_COLOR``, outliers ``OUTLIER_COLOR`` (drawn first, under the inliers)."""
    a, b = _dimmed(image_a), _dimmed(image_b)
    canvas = Image.new("RGB", (a.width + b.width, max(a.height, b.height)), (0, 0, 0))
    canvas.paste(a, (0, 0))
    canvas.paste(b, (a.width, 0))
    draw = ImageDraw.Draw(canvas)
    for good in (False, True):
        for (i, j), inlier in zip(pairs, inliers):
            if bool(inlier) == good:
                draw.line((points_a.x[i], points_a.y[i], points_b.x[j] + a.width, points_b.y[j]),
                          fill=INLIER_COLOR if good else OUTLIER_COLOR)
    return canvas


# --------------------------------------------------------------------------- cnn apply


def corner_layer(pipeline):
    """The index of ``pipeline``'s last layer when it is a corner response, else None."""
    last = len(pipeline.layers) - 1
    return last if last >= 0 and pipeline.layers[last].kind == CORNER_KIND else None


def layers_needed(pipeline):
    """The layers whose maps ``apply_overlay`` reads (a set: the corner layer, or none)."""
    layer = corner_layer(pipeline)
    return set() if layer is None else {layer}


def apply_overlay(folder, image, layer_maps, pipeline, save):
    """Draw a corner pipeline's keypoints on ``image`` (C, H, W) as ``folder/keypoints.png``.

    ``layer_maps`` holds each layer's maps (C, h, w) (None for layers not
    kept); ``save`` is ``cnn apply --save``'s set: the picture is drawn when
    maps or grids are. Returns the manifest's entry, ``{"keypoints": {...}}``,
    or ``{}`` when nothing was drawn (not a corner pipeline, no pictures saved).
    """
    layer = corner_layer(pipeline)
    if layer is None or not {"maps", "grids"} & set(save) or layer_maps[layer] is None:
        return {}
    # Imported here: keypoints imports scipy (0.4 s), which no other apply needs.
    from . import keypoints as kp

    shape = image.shape[1:]
    points = kp.detect([kp.response_of(layer_maps[layer])], shape)
    points = kp.orientations([kp.grey(image)], points, shape)
    (folder / APPLY_OVERLAY).write_bytes(viz.png_bytes(overlay_picture(image, points)))
    settings = {"num": config.KEYPOINTS, "threshold": config.KEYPOINT_THRESHOLD,
                "min_distance": config.KEYPOINT_MIN_DISTANCE, "suppression": config.KEYPOINT_SUPPRESSION,
                "scales": 1}
    return {"keypoints": {"overlay": APPLY_OVERLAY, "layer": f"layer{layer}", "count": len(points),
                          "settings": settings}}
