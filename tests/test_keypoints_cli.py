"""``cnn keypoints`` and ``cnn match``: exit codes and the files PRODUCT.md fixes."""

import csv
import json

import numpy as np
import pytest
from clirunner import cnn
from PIL import Image
from tinymodel import save_tiny_model

from cnn_cli import keypoints as K
from cnn_cli import matching as M

skdata = pytest.importorskip("skimage.data")
sktransform = pytest.importorskip("skimage.transform")

#: A known view change: B is A seen under this homography (a turn of about 8 degrees and some perspective).
TRUTH = np.array([[0.95, 0.14, 20.0], [-0.12, 0.97, 30.0], [1e-4, 5e-5, 1.0]])


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    image = skdata.camera()[::2, ::2]  # 256 x 256 keeps the tests quick
    warped = sktransform.warp(image, np.linalg.inv(TRUTH), output_shape=image.shape, preserve_range=True)
    Image.fromarray(image).save(folder / "a.png")
    Image.fromarray(warped.astype(np.uint8)).save(folder / "b.png")
    return folder / "a.png", folder / "b.png"


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _no_partials(folder):
    return not [p for p in folder.rglob("*") if p.name.endswith(".partial")]


def test_keypoints_writes_the_three_files(pair, tmp_path):
    out = tmp_path / "out"
    result = cnn("keypoints", pair[0], pair[1], "-o", out, "-n", "80")
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        folder = out / name
        rows = _rows(folder / "keypoints.csv")
        assert rows[0] == ["x", "y", "score", "scale", "angle"]
        assert 20 < len(rows) - 1 <= 80
        record = json.loads((folder / "keypoints.json").read_text())
        assert record["count"] == len(rows) - 1 == len(record["keypoints"])
        assert set(record["keypoints"][0]) == {"x", "y", "score", "scale", "angle"}
        values = np.array(rows[1:], float)
        assert np.all(np.diff(values[:, 2]) <= 0)  # strongest first
        assert values[:, :2].min() >= 0 and values[:, :2].max() < 256
        assert np.all((values[:, 4] >= 0) & (values[:, 4] < 360))
        with Image.open(folder / "overlay.png") as overlay:
            assert overlay.size == (256, 256) and overlay.mode == "RGB"
    assert _no_partials(out)


def test_keypoints_are_the_harris_peaks_of_the_image(pair, tmp_path):
    """The command's points are the library's, on the harris pipeline's response of the decoded image."""
    from cnn_cli.imageio import read_image
    from cnn_cli.sources import load_source

    result = cnn("keypoints", pair[0], "-o", tmp_path / "out", "-n", "50", "--min-distance", "4")
    assert result.exit_code == 0, result.output
    image = read_image(pair[0])
    response = load_source(pipeline="harris").pipeline.forward(image[None])[-1][0, 0]
    peaks = K.find_peaks(response, min_distance=4, threshold_rel=0.001, num_peaks=50)
    values = np.array(_rows(tmp_path / "out" / "a" / "keypoints.csv")[1:], float)
    assert len(values) == len(peaks)
    assert np.abs(values[:, 0] - peaks[:, 1]).max() <= 0.5 and np.abs(values[:, 1] - peaks[:, 0]).max() <= 0.5


def test_keypoints_json_scales_and_refusal_to_overwrite(pair, tmp_path):
    out = tmp_path / "out"
    result = cnn("keypoints", pair[0], "-o", out, "--scales", "3", "-n", "100", "--json")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["output"] == str(out / "a") and record["settings"]["scales"] == 3
    assert len({round(p["scale"], 3) for p in record["keypoints"]}) == 3
    again = cnn("keypoints", pair[0], "-o", out)
    assert again.exit_code == 1, again.output
    assert "exists; use --force" in again.stderr
    assert cnn("keypoints", pair[0], "-o", out, "--force").exit_code == 0
    assert _no_partials(out)


def test_a_batch_with_a_bad_input_exits_3_after_the_others(pair, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    out = tmp_path / "out"
    result = cnn("keypoints", broken, pair[0], "-o", out)
    assert result.exit_code == 3, result.output
    assert (out / "a" / "keypoints.csv").is_file() and not (out / "broken").exists()
    assert next(line for line in result.stderr.splitlines() if line.startswith("Error:")).count("broken.png") == 1


@pytest.mark.parametrize("size, suppression", [(5, "window"), (2, "distance")])
def test_an_image_smaller_than_the_window_gives_no_points(tmp_path, size, suppression):
    """7 x 7 windows (D = 3) find nothing in a 5 x 5 image; 3 x 3 windows, nothing in a 2 x 2 one."""
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size), np.uint8)).save(tiny)
    result = cnn("keypoints", tiny, "-o", tmp_path / "out", "--min-distance", "3", "--suppression", suppression)
    assert result.exit_code == 0, result.output
    assert _rows(tmp_path / "out" / "tiny" / "keypoints.csv") == [["x", "y", "score", "scale", "angle"]]


@pytest.mark.parametrize("args, message", [
    (["-n", "0"], "-n"),
    (["--min-distance", "0"], "--min-distance"),
    (["--layer", "9"], "no such layer"),
    (["--pipeline", "harris", "--model", "m.npz"], "only one of"),
    (["--suppression", "box"], "--suppression"),
])
def test_usage_errors_exit_2(pair, tmp_path, args, message):
    result = cnn("keypoints", pair[0], "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out" / "a").exists()


def test_a_model_layer_with_and_without_positions(pair, tmp_path):
    model = save_tiny_model(tmp_path / "tiny.npz")
    ok = cnn("keypoints", pair[0], "-o", tmp_path / "out", "--model", model, "--layer", "0", "--min-distance", "1")
    assert ok.exit_code == 0, ok.output
    values = np.array(_rows(tmp_path / "out" / "a" / "keypoints.csv")[1:], float).reshape(-1, 5)
    # The model sees an 8 x 8 image; its points are placed back in the 256 x 256 input.
    assert len(values) and np.all(values[:, 3] == pytest.approx(32.0))
    flat = cnn("keypoints", pair[0], "-o", tmp_path / "flat", "--model", model, "--layer", "flatten")
    assert flat.exit_code == 2, flat.output
    assert "gives a vector, not maps" in flat.stderr


def test_match_recovers_the_view_change(pair, tmp_path):
    out = tmp_path / "out"
    result = cnn("match", pair[0], pair[1], "-o", out, "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    folder = out / "a__b"
    assert record["output"] == str(folder)
    saved = json.loads((folder / "match.json").read_text())
    assert saved["matches"] == record["matches"] > 20
    assert 0.8 * saved["matches"] <= saved["inliers"] <= saved["matches"]
    matrix = np.array(saved["homography"])
    assert matrix.shape == (3, 3)
    corners = np.array([[0, 0], [255, 0], [255, 255], [0, 255]], float)
    assert np.linalg.norm(M.project(matrix, corners) - M.project(TRUTH, corners), axis=1).max() < 3
    rows = _rows(folder / "matches.csv")
    assert rows[0] == ["xa", "ya", "xb", "yb", "distance", "inlier"]
    assert len(rows) - 1 == saved["matches"]
    assert sum(int(r[5]) for r in rows[1:]) == saved["inliers"]
    values = np.array([r[:4] for r in rows[1:]], float)
    inlier = np.array([r[5] == "1" for r in rows[1:]])
    moved = np.linalg.norm(M.project(TRUTH, values[inlier, :2]) - values[inlier, 2:], axis=1)
    assert np.median(moved) < 1.5
    with Image.open(folder / "matches.png") as picture:
        assert picture.size == (512, 256)
    assert cnn("match", pair[0], pair[1], "-o", out).exit_code == 1  # exists
    assert _no_partials(out)


def test_match_without_geometry_and_with_an_affine_map(pair, tmp_path):
    none = cnn("match", pair[0], pair[1], "-o", tmp_path / "none", "--geometry", "none")
    assert none.exit_code == 0, none.output
    record = json.loads((tmp_path / "none" / "a__b" / "match.json").read_text())
    assert record["homography"] is None and record["inliers"] is None
    assert {r[5] for r in _rows(tmp_path / "none" / "a__b" / "matches.csv")[1:]} == {""}
    affine = cnn("match", pair[0], pair[1], "-o", tmp_path / "affine", "--geometry", "affine", "--json")
    assert affine.exit_code == 0, affine.output
    matrix = np.array(json.loads(affine.stdout)["homography"])
    assert np.allclose(matrix[2], [0, 0, 1])


def test_match_with_an_image_too_small_for_any_point(pair, tmp_path):
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((3, 3), 128, np.uint8)).save(tiny)
    result = cnn("match", tiny, pair[0], "-o", tmp_path / "out", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["keypoints"]["a"] == 0 and record["matches"] == 0 and record["homography"] is None
    assert _rows(tmp_path / "out" / "tiny__a" / "matches.csv") == [["xa", "ya", "xb", "yb", "distance", "inlier"]]


def test_match_refusals(pair, tmp_path):
    missing = cnn("match", pair[0], tmp_path / "nothing.png", "-o", tmp_path / "out")
    assert missing.exit_code == 1 and "nothing.png" in missing.stderr, missing.output
    assert not (tmp_path / "out" / "a__nothing").exists()
    bad = cnn("match", pair[0], pair[1], "-o", tmp_path / "out", "--ratio", "0")
    assert bad.exit_code == 2 and "--ratio" in bad.stderr, bad.output
    descriptor = cnn("match", pair[0], pair[1], "-o", tmp_path / "out", "--descriptor", "12")
    assert descriptor.exit_code == 2 and "--descriptor" in descriptor.stderr, descriptor.output


@pytest.mark.parametrize("command", ["keypoints", "match"])
def test_help_has_examples(command):
    result = cnn(command, "--help")
    assert result.exit_code == 0 and f"cnn {command} " in result.output and "Examples" in result.output


def test_max_size_keeps_coordinates_in_the_files_pixels(pair, tmp_path):
    result = cnn("keypoints", pair[0], "-o", tmp_path / "kp", "--max-size", "128", "--json", "--min-distance", "2")
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert record["image_size"] == [256, 256] and record["processed_size"] == [128, 128]
    xy = np.array([[p["x"], p["y"]] for p in record["keypoints"]])
    assert xy.max() > 160  # placed in the 256-pixel image, not the 128-pixel one it was read at
    assert {p["scale"] for p in record["keypoints"]} == {2.0}
    matched = cnn("match", pair[0], pair[1], "-o", tmp_path / "m", "--max-size", "128", "--json")
    assert matched.exit_code == 0, matched.output
    matrix = np.array(json.loads(matched.stdout)["homography"])
    corners = np.array([[0, 0], [255, 0], [255, 255], [0, 255]], float)
    assert np.linalg.norm(M.project(matrix, corners) - M.project(TRUTH, corners), axis=1).max() < 6


def test_a_layer_pooled_over_the_whole_image_is_refused(pair, tmp_path):
    spec = tmp_path / "pooled.toml"
    spec.write_text('kind = "pipeline"\n\n[[layer]]\ntype = "conv"\nbanks = ["edges:sobel_x", "edges:sobel_y"]\n'
                    'padding = "same"\n\n[[layer]]\ntype = "globalmaxpool"\n')
    pooled = cnn("keypoints", pair[0], "-o", tmp_path / "out", "--pipeline", spec, "--layer", "1")
    assert pooled.exit_code == 2, pooled.output
    assert "pools over the whole image" in pooled.stderr and "0 (conv)" in pooled.stderr
    # With no --layer, the last layer that keeps positions responds.
    default = cnn("keypoints", pair[0], "-o", tmp_path / "out", "--pipeline", spec, "--json")
    assert default.exit_code == 0, default.output
    assert json.loads(default.stdout)[0]["layer"]["index"] == 0


def test_apply_with_a_corner_pipeline_shows_its_keypoints(pair, tmp_path):
    """cnn apply --pipeline harris draws the points cnn keypoints finds on the input, lists the picture
    in the manifest, shows it on the image's page, and --force replaces the folder it is in."""
    from cnn_cli.keypoint_overlay import POINT_COLOR

    out = tmp_path / "out"
    result = cnn("apply", pair[0], "-o", out, "--pipeline", "harris")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "a" / "manifest.json").read_text())
    record = manifest["keypoints"]
    assert record["overlay"] == "keypoints.png" and record["layer"] == "layer3"
    assert '<img class="zoom wide" src="keypoints.png"' in (out / "a" / "index.html").read_text()
    listed = cnn("keypoints", pair[0], "-o", tmp_path / "kp")
    assert listed.exit_code == 0, listed.output
    assert record["count"] == len(_rows(tmp_path / "kp" / "a" / "keypoints.csv")) - 1 > 100
    with Image.open(out / "a" / "keypoints.png") as overlay:
        pixels = np.asarray(overlay.convert("RGB"))
    assert pixels.shape == (256, 256, 3)
    drawn = np.all(pixels == POINT_COLOR, axis=2)
    assert drawn.sum() > 4 * record["count"]  # a circle per point
    assert cnn("apply", pair[0], "-o", out, "--pipeline", "harris", "--force").exit_code == 0


@pytest.mark.parametrize("args", [["--pipeline", "default"], ["--pipeline", "harris", "--save", "raw"]])
def test_apply_draws_keypoints_only_for_a_corner_pipeline_and_pictures(pair, tmp_path, args):
    result = cnn("apply", pair[0], "-o", tmp_path / "out", *args)
    assert result.exit_code == 0, result.output
    assert "keypoints" not in json.loads((tmp_path / "out" / "a" / "manifest.json").read_text())
    assert not (tmp_path / "out" / "a" / "keypoints.png").exists()


def test_apply_draws_the_keypoints_of_a_response_layer_it_does_not_save(pair, tmp_path):
    result = cnn("apply", pair[0], "-o", tmp_path / "out", "--pipeline", "shi_tomasi", "--layers", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "a" / "manifest.json").read_text())
    assert [layer["index"] for layer in manifest["layers"]] == [0]
    assert manifest["keypoints"]["count"] > 100 and (tmp_path / "out" / "a" / "keypoints.png").is_file()
