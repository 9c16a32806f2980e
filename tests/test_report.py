"""The HTML reports (``cnn_cli.report``): escaping, structure, and what each command writes.

The pages are checked here as text; ``test_report_browser.py`` opens them in
Chromium.
"""

import html
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_cli import report
from clirunner import cnn

HOSTILE = "<img src=x onerror=alert(1)>"


def _image(path, seed=0, shape=(24, 32)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    data[: shape[0] // 2, : shape[1] // 3] = 0  # some exact zeros in the maps of a rectifier
    Image.fromarray(data, mode="L").save(path)
    return path


def _inline_json(page):
    """The rows' JSON of a table page, as the browser's JSON.parse would read it."""
    match = re.search(r'<script type="application/json" id="rows">(.*?)</script>', page, re.S)
    assert match, "no inline rows"
    return json.loads(match.group(1))


def _outside_text(page):
    """The page without its inline JSON: what the HTML parser reads as markup and text."""
    return re.sub(r'<script type="application/json" id="rows">.*?</script>', "", page, flags=re.S)


# --------------------------------------------------------------------------- escaping


def test_text_escapes_markup_and_quotes():
    assert report.text(HOSTILE + "\"'&") == "&lt;img src=x onerror=alert(1)&gt;&quot;&#x27;&amp;"


def test_text_shows_undecodable_bytes_of_a_file_name_as_replacement_characters():
    name = os.fsdecode(b"caf\xe9.png")  # a Latin-1 name on a UTF-8 system: a lone surrogate in Python
    shown = report.text(name)
    assert shown == "caf\ufffd.png"
    shown.encode("utf-8")  # writable as UTF-8, unlike the name itself


@pytest.mark.parametrize("name, encoded", [
    (HOSTILE + ".png", "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png"),
    ("a#b?c.png", "a%23b%3Fc.png"),
    ("javascript:alert(1)", "javascript%3Aalert%281%29"),  # never read as a scheme
    ("100%.png", "100%25.png"),
    ("dir/sub dir/x.png", "dir/sub%20dir/x.png"),
])
def test_url_percent_encodes_all_but_the_path_separators(name, encoded):
    assert report.url(name) == encoded


def test_url_encodes_the_raw_bytes_of_a_name_that_is_not_utf8():
    assert report.url(os.fsdecode(b"caf\xe9.png")) == "caf%E9.png"


def test_href_is_relative_to_the_page(tmp_path):
    assert report.href(tmp_path / "in" / "a b.png", tmp_path / "out" / "x") == "../../in/a%20b.png"


def test_inline_json_cannot_close_its_script_element():
    value = {"name": "</script><script>alert(1)</script><!--", "amp": "&"}
    dumped = report.json_text(value)
    assert not set("<>&") & set(dumped)
    assert json.loads(dumped) == value


# --------------------------------------------------------------------------- table pages


def test_table_page_holds_its_rows_as_inline_json_and_no_hostile_markup(tmp_path):
    rows = [[[HOSTILE, "a/index.html"], "</script><script>alert(2)</script>", ["ok", None]],
            [None, "b", ["failed", HOSTILE]]]
    path = tmp_path / "index.html"
    report.write_table_page(path, HOSTILE, f"<h1>{report.text(HOSTILE)}</h1>",
                            (("image", "link"), ("input", "text"), ("status", "status")), iter(rows), replace=False)
    page = path.read_text(encoding="utf-8")
    spec = _inline_json(page)
    assert spec["rows"] == rows
    assert [c["type"] for c in spec["columns"]] == ["link", "text", "status"]
    assert spec["page_size"] == report.PAGE_SIZE
    markup = _outside_text(page)
    assert "<img src=x" not in markup and "alert(2)" not in markup
    assert markup.count(html.escape(HOSTILE)) == 2  # the title and the heading
    assert page.count("</script>") == page.count("<script")  # no script element was closed early
    # Nothing from the network: no external script, style, or picture.
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page


def test_table_page_streams_ten_thousand_rows(tmp_path):
    rows = ([["x.png", None, f"row {i}"], [f"img{i}", f"img{i}/index.html"], ["ok", None]] for i in range(10_000))
    path = tmp_path / "index.html"
    report.write_table_page(path, "many", "", (("", "thumb"), ("image", "link"), ("status", "status")), rows,
                            replace=False)
    spec = _inline_json(path.read_text())
    assert len(spec["rows"]) == 10_000 and spec["rows"][-1][1] == ["img9999", "img9999/index.html"]
    # The rows are data; the table's body is empty until the page's script draws one page of it.
    assert "<tbody></tbody>" in path.read_text()


def test_a_page_is_never_replaced_without_leave(tmp_path):
    path = tmp_path / "index.html"
    path.write_text("earlier")
    with pytest.raises(FileExistsError):
        report.write_page(path, "new", replace=False)
    with pytest.raises(FileExistsError):
        report.write_table_page(path, "t", "", (("a", "text"),), iter([["x"]]), replace=False)
    assert path.read_text() == "earlier"
    report.write_page(path, "new", replace=True)
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]  # no temporary left


def test_a_failed_write_leaves_the_earlier_page_whole(tmp_path):
    path = tmp_path / "index.html"
    path.write_text("earlier")

    def rows():
        yield ["a"]
        raise OSError("disk full")

    with pytest.raises(OSError):
        report.write_table_page(path, "t", "", (("a", "text"),), rows(), replace=True)
    assert path.read_text() == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]


# --------------------------------------------------------------------------- cnn apply


def _manifest(source, saved=("grids", "maps", "raw")):
    maps = [{"channel": 0, "filter": HOSTILE, "png": "layer0/000_img.png" if "maps" in saved else None,
             "min": -1.0, "max": 2.0, "mean": 0.25, "zero_fraction": 0.5}]
    return {"input": str(source), "input_shape": [1, 8, 8], "color": "gray", "saved": list(saved),
            "pipeline": {"name": "p", "description": HOSTILE},
            "layers": [{"index": 0, "name": "layer0", "kind": "conv", "description": HOSTILE, "shape": [1, 8, 8],
                        "receptive_field": 3, "npz_key": "layer0" if "raw" in saved else None,
                        "grid": "layer0_grid.png" if "grids" in saved else None, "maps": maps}]}


def test_apply_page_escapes_names_and_links_the_files(tmp_path):
    source = tmp_path / "in" / f"{HOSTILE}.png"
    page = report.apply_page(_manifest(source), tmp_path / "out" / "a" / "b", "a/b")
    assert "<img src=x" not in page
    assert html.escape(HOSTILE) in page
    assert 'href="../../index.html"' in page  # back to OUT's index, two folders up
    assert 'src="input.jpg"' in page  # the copy in the folder (issue 28: a zipped OUT kept no input)
    assert 'src="layer0/000_img.png"' in page and 'src="layer0_grid.png"' in page
    assert 'href="features.npz"' in page and 'href="manifest.json"' in page
    assert "receptive field 3×3" in page
    assert "mean 0.25" in page and "zeros 50.0 %" in page
    assert "Not saved" not in page


def test_apply_page_says_what_was_not_saved(tmp_path):
    page = report.apply_page(_manifest(tmp_path / "x.tif", saved=("raw",)), tmp_path / "out" / "x", "x")
    assert "Not saved in this run (--save): maps (a PNG per map), grids (a grid per layer)." in page
    shown = page.split("<body>")[1].split('<div id="viewer"')[0]
    assert shown.count("<img") == 1 and 'src="input.jpg"' in shown  # a TIFF input is shown from its JPEG copy


def test_apply_writes_the_report_and_the_statistics(tmp_path):
    a, b = _image(tmp_path / "in" / f"{HOSTILE}.png"), _image(tmp_path / "in" / "b.png", seed=1)
    (tmp_path / "in" / "bad.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = cnn("apply", tmp_path / "in", "-o", out)
    assert result.exit_code == 3, result.output
    spec = _inline_json((out / "index.html").read_text())
    by_status = {}
    for row in spec["rows"]:
        by_status.setdefault(row[-1][0], []).append(row)
    assert sorted(r[2] for r in by_status["ok"]) == sorted([str(a), str(b)])
    assert [r[2] for r in by_status["failed"]] == [str(tmp_path / "in" / "bad.png")]
    for folder in (p for p in out.iterdir() if p.is_dir()):
        page = (folder / "index.html").read_text()
        manifest = json.loads((folder / "manifest.json").read_text())
        assert "<img src=x" not in page
        with np.load(folder / "features.npz", allow_pickle=False) as npz:
            for layer in manifest["layers"]:
                maps = npz[layer["npz_key"]]
                assert layer["receptive_field"] in ("global",) or layer["receptive_field"] >= 1
                for m in layer["maps"]:
                    values = maps[m["channel"]]
                    assert m["mean"] == pytest.approx(float(values.mean(dtype=np.float64)), rel=1e-6, abs=1e-9)
                    assert m["zero_fraction"] == np.count_nonzero(values == 0) / values.size
        assert any(m["zero_fraction"] > 0 for layer in manifest["layers"] for m in layer["maps"])
    # The default pipeline's receptive fields, r_out = r_in + (k - 1) * j: 13x13 kernels, |x|, a 2x2 pool
    # (j becomes 2), a 13x13 Gaussian (14 + 12 * 2) and a 2x2 pool (38 + 2), as `cnn info` prints them.
    assert [layer["receptive_field"] for layer in manifest["layers"]] == [13, 13, 14, 38, 40]


def test_apply_no_html_writes_no_page(tmp_path):
    out = tmp_path / "out"
    result = cnn("apply", _image(tmp_path / "a.png"), "-o", out, "--no-html")
    assert result.exit_code == 0, result.output
    assert not list(out.rglob("*.html"))


def test_apply_keeps_an_earlier_index_unless_told(tmp_path):
    out = tmp_path / "out"
    assert cnn("apply", _image(tmp_path / "a.png"), "-o", out).exit_code == 0
    first = (out / "index.html").read_text()
    result = cnn("apply", _image(tmp_path / "b.png", seed=1), "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "index.html").read_text() == first  # kept, and the run said so
    assert "index.html exists" in result.stderr and "--skip-existing" in result.stderr
    result = cnn("apply", tmp_path / "a.png", tmp_path / "b.png", "-o", out, "--skip-existing")
    assert result.exit_code == 0, result.output
    rows = _inline_json((out / "index.html").read_text())["rows"]
    assert sorted((r[1][0], r[-1][0]) for r in rows) == [("a", "skipped"), ("b", "skipped")]


def test_apply_writes_no_index_when_nothing_was_written(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    result = cnn("apply", tmp_path / "bad.png", "-o", tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert not (tmp_path / "out" / "index.html").exists()


# --------------------------------------------------------------------------- cnn train and cnn explain


def test_train_report_shows_the_run(trained_html_class):
    page = (trained_html_class.root / "m.report.html").read_text()
    assert "<b onmouseover" not in page
    assert html.escape(trained_html_class.hostile_class) in page
    for name in ("m.curves.png", "m.confusion.png", "m.npz", "m.metrics.json"):
        assert f'"{name}"' in page
    assert page.count("data:image/png;base64,") >= 2  # the kernels and at least one mistake
    assert "<h2>Per class</h2>" in page and "<h2>Learned first-layer kernels</h2>" in page
    # Each mistake is named by its file in the dataset.
    captions = re.findall(r"<figcaption>([^<]*)</figcaption>", page)
    assert captions and all(re.match(r"[^:]+/\d{3}\.png: ", c) for c in captions), captions


def test_train_no_html(trained_html_class, tmp_path):
    (tmp_path / "m.report.html").write_text("an earlier run's report, of another model")
    result = cnn("train", trained_html_class.data, "-o", tmp_path / "m.npz", "--epochs", "1", "--no-html")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.confusion.png", "m.curves.png", "m.metrics.json",
                                                          "m.npz"]


def test_explain_writes_an_index_of_overlays(trained_html_class, tmp_path):
    out = tmp_path / "ex"
    result = cnn("explain", trained_html_class.data / "blob", "--model", trained_html_class.model, "-o", out,
                 "--top-k", "2")
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    spec = _inline_json(page)
    assert len(spec["rows"]) == 6
    for row in spec["rows"]:
        name = row[0][0]
        record = json.loads((out / name / "explain.json").read_text())
        assert [src for src, _ in row[3]] == [f"{name}/{report.url(t['overlay'])}" for t in record["targets"]]
    assert "<b onmouseover" not in _outside_text(page)
    other = tmp_path / "other.png"
    other.write_bytes((trained_html_class.data / "horizontal" / "000.png").read_bytes())
    result = cnn("explain", other, "--model", trained_html_class.model, "-o", out)
    assert result.exit_code == 0, result.output
    assert (out / "other").is_dir() and "index.html exists" in result.stderr
    assert (out / "index.html").read_text() == page


def test_explain_no_html(trained_html_class, tmp_path):
    out = tmp_path / "ex"
    result = cnn("explain", trained_html_class.data / "blob" / "000.png", "--model", trained_html_class.model,
                 "-o", out,
                 "--no-html")
    assert result.exit_code == 0, result.output
    assert not list(out.rglob("*.html"))


@pytest.mark.parametrize("command", ["apply", "train", "explain"])
def test_help_mentions_the_report(command):
    result = cnn(command, "--help")
    assert "--no-html" in result.output and "report" in result.output
