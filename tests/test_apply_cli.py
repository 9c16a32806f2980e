"""`cnn apply` and friends through the command line (typer's CliRunner), and what they write."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image

from cnn_cli.cli import app
from clirunner import cnn


H, W = 48, 64


def _image(path, seed=0, shape=(H, W), constant=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if constant is None:
        data = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
        data[shape[0] // 4: shape[0] // 2, shape[1] // 4: shape[1] // 2] = 255  # some structure
    else:
        data = np.full(shape, constant, np.uint8)
    Image.fromarray(data, mode="L").save(path)
    return path


def _snapshot(folder):
    """{relative path: (bytes, mtime_ns)} of every file under ``folder``."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _no_leftovers(out):
    leftovers = [str(p) for p in Path(out).rglob("*")
                 if p.name.startswith(".") or "partial" in p.name or ".tmp" in p.name or ".old" in p.name]
    assert leftovers == [], leftovers


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def _check_folder(folder, input_path):
    """Everything the contract says ``cnn apply`` writes for one image; returns (manifest, arrays)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert Path(manifest["input"]).resolve() == Path(input_path).resolve()
    with np.load(folder / "features.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    layers = manifest["layers"]
    assert set(arrays) == {f"layer{i}" for i in range(len(layers))}
    pngs_expected = set()
    for i, layer in enumerate(layers):
        assert layer["index"] == i
        assert isinstance(layer["name"], str) and layer["name"]
        assert isinstance(layer["kind"], str) and layer["kind"]
        assert layer["npz_key"] == f"layer{i}"
        maps = arrays[layer["npz_key"]]
        assert maps.dtype == np.float32 and maps.ndim == 3
        assert list(maps.shape) == layer["shape"]
        assert np.all(np.isfinite(maps))
        c, h, w = maps.shape
        assert [m["channel"] for m in layer["maps"]] == list(range(c)), "one entry per map"
        for m in layer["maps"]:
            data = maps[m["channel"]]
            assert m["min"] == pytest.approx(float(data.min()), abs=1e-6)
            assert m["max"] == pytest.approx(float(data.max()), abs=1e-6)
            assert isinstance(m["filter"], str) and m["filter"]
            norm = m["normalization"]
            assert norm["method"] == manifest["normalization"]
            png = folder / m["png"]
            with Image.open(png) as im:
                im.load()
                assert im.size == (w, h), (png, im.size, (w, h))
            pngs_expected.add(png.resolve())
        grid = folder / layer["grid"]
        with Image.open(grid) as im:
            im.load()
            # every map is shown, none hidden: room for all c tiles, each at least map-sized
            # (tiles are only ever shrunk for maps larger than 256 px)
            if max(h, w) <= 256:
                assert im.size[0] * im.size[1] >= c * h * w, (grid, im.size, c, h, w)
        pngs_expected.add(grid.resolve())
    if "keypoints" in manifest:  # a corner pipeline's points on the input (cnn_cli.keypoint_overlay)
        pngs_expected.add((folder / manifest["keypoints"]["overlay"]).resolve())
    written = {p.resolve() for p in folder.rglob("*.png")}
    assert written == pngs_expected, "one PNG per map and one grid per layer (and keypoints), nothing else"
    assert (folder / "index.html").is_file(), "the image's page of the report"
    assert (folder / "input.jpg").is_file(), "the page's copy of the input, so a copied OUT keeps it"
    _no_leftovers(folder.parent)
    return manifest, arrays


# ----------------------------------------------------------------- cnn apply


def _apply_image(tmp_path, *options):
    """``cnn apply`` of a fresh test image TMP/img.png into TMP/out with ``options``: it must
    succeed and write the contract, one folder only. Returns (manifest, arrays, its folder)."""
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    result = cnn("apply", img, "-o", out, *options)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["img", "index.html"]  # the folder and the report
    manifest, arrays = _check_folder(out / "img", img)
    return manifest, arrays, out / "img"



def test_apply_default_pipeline_writes_the_contract(tmp_path):
    manifest, arrays, _ = _apply_image(tmp_path)
    layers = manifest["layers"]
    assert len(layers) >= 3, "the default pipeline has several layers"

    from cnn_cli.imageio import read_image
    from cnn_cli.pipeline import DEFAULT_PIPELINE, load_pipeline

    pipe = load_pipeline(DEFAULT_PIPELINE).bind(["gray"])
    assert [layer["kind"] for layer in layers] == [layer.kind for layer in pipe.layers]
    assert [[m["filter"] for m in layer["maps"]] for layer in layers] == pipe.channels
    expected = pipe.forward(read_image(tmp_path / "img.png")[None])
    for i, e in enumerate(expected):
        np.testing.assert_allclose(arrays[f"layer{i}"], e[0], rtol=1e-5, atol=1e-5)
    assert manifest["input_shape"] == [1, H, W]


def test_map_png_shows_its_map(tmp_path):
    img = _image(tmp_path / "img.png", seed=3)
    out = tmp_path / "out"
    assert cnn("apply", img, "-o", out, "--bank", "edges:sobel_x", "--normalize", "minmax").exit_code == 0
    manifest, arrays = _check_folder(out / "img", img)
    entry = manifest["layers"][0]["maps"][0]
    data = arrays["layer0"][0]
    low, high = entry["normalization"]["low"], entry["normalization"]["high"]
    # minmax per map, signed: symmetric about zero so 0 is mid-grey
    assert low == pytest.approx(-max(-entry["min"], entry["max"])) and high == pytest.approx(-low)
    expected = np.clip((data - low) * 255.0 / (high - low) + 0.5, 0, 255).astype(np.uint8)
    png = np.asarray(Image.open(out / "img" / entry["png"]).convert("L")).astype(int)
    assert np.abs(png - expected.astype(int)).max() <= 1


def test_apply_bank_gives_one_layer_of_eleven_maps(tmp_path):
    manifest, arrays, folder = _apply_image(tmp_path, "--bank", "edges")
    (layer,) = manifest["layers"]
    assert layer["kind"] == "conv" and layer["shape"] == [11, H, W]
    assert [m["filter"] for m in layer["maps"]][:2] == ["sobel_x", "sobel_y"]
    assert len(list(folder.rglob("*.png"))) == 12


def test_apply_two_banks_and_a_pattern(tmp_path):
    manifest, _, _ = _apply_image(tmp_path, "--bank", "edges:sobel_*", "--bank", "textures:laws_E5*")
    filters = [m["filter"] for m in manifest["layers"][0]["maps"]]
    assert filters == ["sobel_x", "sobel_y", "laws_E5L5", "laws_E5E5", "laws_E5S5", "laws_E5R5", "laws_E5W5"]


def test_apply_harris_pipeline(tmp_path):
    manifest, _, _ = _apply_image(tmp_path, "--pipeline", "harris")
    assert [layer["kind"] for layer in manifest["layers"]] == ["conv", "products", "conv", "corner_response"]
    assert manifest["layers"][-1]["shape"] == [1, H, W]
    assert manifest["keypoints"]["overlay"] == "keypoints.png"  # _apply_image checked that the file is there


def test_normalize_per_layer_is_recorded(tmp_path):
    # the older value: minmax, one scale per layer
    manifest, arrays, _ = _apply_image(tmp_path, "--bank", "edges", "--normalize", "per-layer")
    assert manifest["normalization"] == "minmax" and manifest["normalization_per"] == "layer"
    entries = manifest["layers"][0]["maps"]
    assert {(e["normalization"]["method"], e["normalization"]["per"]) for e in entries} == {("minmax", "layer")}
    # one scale for the whole layer, covering every map
    assert len({(e["normalization"]["low"], e["normalization"]["high"]) for e in entries}) == 1
    low, high = entries[0]["normalization"]["low"], entries[0]["normalization"]["high"]
    assert low <= float(arrays["layer0"].min()) and high >= float(arrays["layer0"].max())


def test_normalize_asinh_per_map_is_the_default(tmp_path):
    manifest, _, _ = _apply_image(tmp_path, "--bank", "edges")
    assert manifest["normalization"] == "asinh" and manifest["normalization_per"] == "map"
    scales = {(e["normalization"]["low"], e["normalization"]["high"]) for e in manifest["layers"][0]["maps"]}
    assert len(scales) > 1


def test_normalize_none_and_a_colormap(tmp_path):
    manifest, arrays, folder = _apply_image(tmp_path, "--bank", "smoothing:box_3", "--normalize", "none",
                                            "--cmap", "viridis")
    (entry,) = manifest["layers"][0]["maps"]
    assert entry["normalization"]["method"] == "none"
    assert (entry["normalization"]["low"], entry["normalization"]["high"]) == (0.0, 1.0)
    assert entry["normalization"]["colormap"] == "viridis" and manifest["colormap"] == "viridis"
    with Image.open(folder / entry["png"]) as im:
        assert im.mode == "RGB"


def test_constant_image_gives_finite_maps(tmp_path):
    img = _image(tmp_path / "flat.png", constant=128)
    out = tmp_path / "out"
    result = cnn("apply", img, "-o", out)
    assert result.exit_code == 0, result.output
    manifest, arrays = _check_folder(out / "flat", img)
    for m in manifest["layers"][0]["maps"]:
        assert abs(m["min"]) < 1e-4 and abs(m["max"]) < 1e-4, m  # flat input, zero-mean filters
    for layer in manifest["layers"]:
        for m in layer["maps"]:
            assert all(np.isfinite([m["normalization"]["low"], m["normalization"]["high"]]))


def test_rerun_without_force_leaves_the_output_alone(tmp_path):
    img = _image(tmp_path / "img.png", seed=1)
    out = tmp_path / "out"
    assert cnn("apply", img, "-o", out, "--bank", "edges").exit_code == 0
    before = _snapshot(out)
    _image(img, seed=2)  # the input changes
    result = cnn("apply", img, "-o", out, "--bank", "edges")
    assert result.exit_code != 0, result.output
    assert "--force" in result.stderr
    assert "Traceback" not in result.output
    assert _snapshot(out) == before

    result = cnn("apply", img, "-o", out, "--bank", "edges", "--force")
    assert result.exit_code == 0, result.output
    after = _snapshot(out)
    assert set(after) == set(before)
    assert after["img/features.npz"][0] != before["img/features.npz"][0]
    _, arrays = _check_folder(out / "img", img)
    from cnn_cli.imageio import read_image
    from cnn_cli.pipeline import bank_pipeline

    expected = bank_pipeline(["edges"]).bind(["gray"]).forward(read_image(img)[None])[0][0]
    np.testing.assert_allclose(arrays["layer0"], expected, rtol=1e-5, atol=1e-5)


def test_force_replaces_stale_files(tmp_path):
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    assert cnn("apply", img, "-o", out).exit_code == 0
    assert cnn("apply", img, "-o", out, "--bank", "edges", "--force").exit_code == 0
    # the old five-layer output is gone, not mixed in
    manifest, _ = _check_folder(out / "img", img)
    assert len(manifest["layers"]) == 1
    assert not (out / "img" / "layer1").exists()


def test_same_file_name_in_two_folders_goes_to_two_folders(tmp_path):
    a = _image(tmp_path / "a" / "x.png", seed=1)
    b = _image(tmp_path / "b" / "x.png", seed=2)
    out = tmp_path / "out"
    result = cnn("apply", a, b, "-o", out, "--bank", "edges:sobel_*")
    assert result.exit_code == 0, result.output
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2
    inputs = {Path(json.loads((f / "manifest.json").read_text())["input"]).resolve() for f in folders}
    assert inputs == {a.resolve(), b.resolve()}
    for f in folders:
        _check_folder(f, json.loads((f / "manifest.json").read_text())["input"])
    npz = [np.load(f / "features.npz")["layer0"] for f in folders]
    assert not np.array_equal(npz[0], npz[1])


def test_output_names_differ_ignoring_case(tmp_path):
    from cnn_cli.inputs import find_inputs

    a, b = _image(tmp_path / "a" / "Photo.png"), _image(tmp_path / "b" / "photo.png")
    found, _ = find_inputs([a, b])
    assert len({item.name.casefold() for item in found}) == 2


def test_folder_with_a_corrupt_file_exits_3(tmp_path):
    folder = tmp_path / "set"
    good = [_image(folder / "one.png", seed=1), _image(folder / "sub" / "two.png", seed=2)]
    bad = folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    out = tmp_path / "out"
    result = cnn("apply", folder, "-o", out, "--bank", "edges:sobel_*")
    assert result.exit_code == 3, result.output
    assert "broken.png" in result.stderr
    assert len(_error_lines(result)) == 1, result.stderr
    assert "Traceback" not in result.output
    # The folder is mirrored: set/sub/two.png writes out/sub/two/.
    for path in good:
        _check_folder(out / path.relative_to(folder).with_suffix(""), path)
    assert not (out / "broken").exists()
    _no_leftovers(out)


def test_rerun_does_not_ingest_its_own_output(tmp_path, monkeypatch):
    _image(tmp_path / "img.png")
    monkeypatch.chdir(tmp_path)
    assert cnn("apply", ".", "--bank", "edges:sobel_x").exit_code == 0
    result = cnn("apply", ".", "--bank", "edges:sobel_x", "--force")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "cnn-out").iterdir()) == ["img", "index.html"]


def test_missing_input_among_good_ones_exits_3(tmp_path):
    img = _image(tmp_path / "img.png")
    out = tmp_path / "out"
    result = cnn("apply", img, tmp_path / "missing.png", "-o", out, "--bank", "edges:sobel_x")
    assert result.exit_code == 3, result.output
    assert "missing.png" in result.stderr
    _check_folder(out / "img", img)


def test_missing_input_exits_1_with_one_error_line(tmp_path):
    result = cnn("apply", tmp_path / "nope.png", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = _error_lines(result)
    assert len(lines) == 1 and "nope.png" in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_bank_exits_1_naming_it(tmp_path):
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", "--bank", "nosuchbank")
    assert result.exit_code == 1, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and "nosuchbank" in lines[0], result.stderr
    assert "edges" in lines[0]  # says what there is
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "img").exists()


def test_unknown_pipeline_exits_1(tmp_path):
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", "--pipeline", "nosuchpipeline")
    assert result.exit_code == 1, result.output
    assert "nosuchpipeline" in result.stderr


def test_multichannel_bank_needs_color_rgb(tmp_path):
    bank = tmp_path / "rgb.toml"
    bank.write_text('[[kernel]]\nname = "redness"\n'
                    'values = [[[2]], [[-1]], [[-1]]]\n')
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    img = tmp_path / "red.png"
    Image.fromarray(rgb, mode="RGB").save(img)
    result = cnn("apply", img, "-o", tmp_path / "out", "--bank", bank)
    assert result.exit_code == 1, result.output
    assert "--color rgb" in result.stderr
    result = cnn("apply", img, "-o", tmp_path / "out", "--bank", bank, "--color", "rgb")
    assert result.exit_code == 0, result.output
    manifest, arrays = _check_folder(tmp_path / "out" / "red", img)
    assert manifest["input_shape"] == [3, H, W]
    np.testing.assert_allclose(arrays["layer0"], 2 * 200 / 255, atol=1e-5)


def test_image_smaller_than_the_kernels_fails_cleanly(tmp_path):
    img = _image(tmp_path / "tiny.png", shape=(3, 3))
    out = tmp_path / "out"
    result = cnn("apply", img, "-o", out)
    assert result.exit_code == 1, result.output
    assert "tiny.png" in result.stderr and "Traceback" not in result.output
    _no_leftovers(out)
    assert not (out / "tiny").exists()


@pytest.mark.parametrize("args", [
    ["--max-size", "0"],
    ["--max-pixels", "0"],
    ["--normalize", "sometimes"],
    ["--color", "cmyk"],
    ["--bank", "edges", "--pipeline", "harris"],
])
def test_usage_errors_exit_2(tmp_path, args):
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out" / "img").exists()


def test_no_input_is_a_usage_error():
    assert cnn("apply").exit_code == 2


def test_max_size_downscales(tmp_path):
    manifest, _, _ = _apply_image(tmp_path, "--bank", "edges:sobel_x", "--max-size", "32")
    assert manifest["input_shape"] == [1, 24, 32]
    assert manifest["layers"][0]["shape"] == [1, 24, 32]


def test_max_pixels_refuses_big_images(tmp_path):
    img = _image(tmp_path / "img.png")
    result = cnn("apply", img, "-o", tmp_path / "out", "--max-pixels", str(H * W - 1))
    assert result.exit_code == 1, result.output
    assert "img.png" in result.stderr and "max-pixels" in result.stderr


@pytest.mark.parametrize("fmt", ["gif", "bmp", "tiff", "webp"])
def test_apply_reads_other_formats(tmp_path, fmt):
    img = tmp_path / f"pic.{fmt}"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8), mode="L").save(img)
    result = cnn("apply", img, "-o", tmp_path / "out", "--bank", "edges:sobel_x")
    assert result.exit_code == 0, result.output
    _check_folder(tmp_path / "out" / "pic", img)


def test_apply_glob_input(tmp_path, monkeypatch):
    for name in ("a.png", "b.png", "c.jpg"):
        _image(tmp_path / "imgs" / name)
    monkeypatch.chdir(tmp_path)
    result = cnn("apply", "imgs/*.png", "-o", "out", "--bank", "edges:sobel_x")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a", "b", "index.html"]


# ----------------------------------------------------------------- banks, info, help


def test_banks_lists_every_bank_and_pipeline():
    from cnn_cli.filterbank import builtin_names

    result = cnn("banks")
    assert result.exit_code == 0, result.output
    names = builtin_names("bank") + builtin_names("pipeline")
    assert {"edges", "textures", "corners", "smoothing", "default", "harris", "shi_tomasi",
            "laws_energy"} <= set(names)
    for name in names:
        assert name in result.stdout, (name, result.output)
    assert "11" in result.stdout  # edges has 11 kernels


def test_banks_show_draws_and_refuses_to_overwrite(tmp_path):
    png = tmp_path / "k.png"
    result = cnn("banks", "show", "edges", "-o", png)
    assert result.exit_code == 0, result.output
    with Image.open(png) as im:
        im.load()
        assert im.size[0] > 100 and im.size[1] > 100
    before = (png.read_bytes(), png.stat().st_mtime_ns)
    result = cnn("banks", "show", "corners", "-o", png)
    assert result.exit_code == 1, result.output
    assert "--force" in result.stderr
    assert (png.read_bytes(), png.stat().st_mtime_ns) == before
    result = cnn("banks", "show", "corners", "-o", png, "--force")
    assert result.exit_code == 0, result.output
    assert png.read_bytes() != before[0]
    Image.open(png).load()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.png"]


def test_banks_show_pattern_and_unknown(tmp_path):
    result = cnn("banks", "show", "textures:gabor_*", "-o", tmp_path / "g.png")
    assert result.exit_code == 0, result.output
    assert "16" in result.stderr
    result = cnn("banks", "show", "nosuchbank", "-o", tmp_path / "n.png")
    assert result.exit_code == 1, result.output
    assert "nosuchbank" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "n.png").exists()


def test_info_shows_the_layers():
    result = cnn("info", "harris")
    assert result.exit_code == 0, result.output
    text = result.stdout
    for part in ("products", "corner_response", "sobel_x", "gaussian_s1", "(1, 512, 512)",
                 "(3, 512, 512)", "9x9", "3x3"):
        assert part in text, (part, text)


def test_info_size_option_and_unknown():
    result = cnn("info", "default", "--size", "256")
    assert result.exit_code == 0, result.output
    assert "(11, 64, 64)" in result.stdout and "40x40" in result.stdout
    result = cnn("info", "nosuchpipeline")
    assert result.exit_code == 1, result.output
    assert "nosuchpipeline" in result.stderr


def _command_paths():
    root = typer.main.get_command(app)
    paths = [[]]

    def walk(group, prefix):
        for name, command in getattr(group, "commands", {}).items():
            paths.append(prefix + [name])
            walk(command, prefix + [name])

    walk(root, [])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "cnn")
def test_help_has_an_example(path):
    result = cnn(*path, "--help")
    assert result.exit_code == 0, result.output
    assert "Example" in result.stdout, result.output


def test_help_lists_the_commands():
    names = [p for p in _command_paths() if len(p) == 1]
    assert ["apply"] in names and ["banks"] in names and ["info"] in names
    result = cnn("--help")
    for (name,) in names:
        assert name in result.stdout


def test_version():
    from cnn_cli import __version__

    result = cnn("--version")
    assert result.exit_code == 0 and __version__ in result.stdout


def test_importing_the_cli_does_not_import_numba():
    code = "import cnn_cli.cli, sys; print('numba' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_help_does_not_import_numba():
    code = ("import sys\nfrom cnn_cli.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('numba' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "120"})
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr
    assert "apply" in proc.stdout


def test_only_the_named_command_is_built_and_it_is_the_same_command():
    """``cnn NAME ...`` builds only NAME (Typer builds every command's options otherwise): the same
    usage, options and errors as the whole group's NAME; anything else runs the whole group."""
    from typer.testing import CliRunner

    from cnn_cli.cli import only_the_command

    runner = CliRunner()
    names = [c.name or typer.main.get_command_name(c.callback.__name__) for c in app.registered_commands]
    names += [g.name for g in app.registered_groups]
    assert {"apply", "train", "import", "banks"} <= set(names)
    for name in names:
        only = only_the_command(app, [name, "--help"])
        assert only is not app and len(only.registered_commands) + len(only.registered_groups) == 1
        for args in ([name, "--help"], [name, "--no-such-option"]):
            whole, single = runner.invoke(app, args), runner.invoke(only, args)
            assert (single.exit_code, single.output) == (whole.exit_code, whole.output), args
    assert len(app.registered_commands) == len(names) - len(app.registered_groups), "the group is not changed"
    for args in ([], ["--help"], ["--version"], ["no-such-command"]):
        assert only_the_command(app, args) is app
