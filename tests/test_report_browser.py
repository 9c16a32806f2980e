"""The HTML reports in a real browser: Chromium, driven by Playwright, opening them from file://.

Every picture must load, no script may fail, the links between pages must
work, a map must open at full resolution, and names holding HTML must show
as text. Screenshots go to ``test-artifacts/`` (or ``$CNN_TEST_ARTIFACTS``).

The tests skip, saying why, when Playwright or a Chromium cannot start
(``playwright install`` is not needed: the system's ``chromium`` is used,
or the one ``$CNN_CHROMIUM`` names); the browser is launched once for the
module. CI sets ``CNN_BROWSER_TESTS=required`` once it has installed
Chromium, and then a browser that does not start fails the tests instead.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_cli import report
from clirunner import cnn

HOSTILE = "<img src=x onerror=alert(1)>"
ARTIFACTS = Path(os.environ.get("CNN_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")


def _unavailable(reason):
    """Skip the module, saying why; fail instead where CI has installed a browser."""
    if os.environ.get("CNN_BROWSER_TESTS") == "required":
        pytest.fail(f"CNN_BROWSER_TESTS=required, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, launched once; every test skips when it cannot start."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[test]')")
    executable = os.environ.get("CNN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        _unavailable("no chromium on PATH (apt-get install chromium, or set CNN_CHROMIUM)")
    with sync_playwright() as playwright:
        try:
            # --no-sandbox: Chromium's sandbox refuses to run as root, as in CI containers.
            launched = playwright.chromium.launch(executable_path=executable, headless=True,
                                                  args=["--no-sandbox", "--disable-gpu"])
        except Exception as exc:  # Playwright's Error, or the driver failing to start
            _unavailable(f"{executable} did not start: {str(exc).splitlines()[0]}")
        yield launched
        launched.close()


class Page:
    """A browser tab that records console errors, uncaught exceptions and dialogs (alert() and friends)."""

    def __init__(self, browser, path):
        self.tab = browser.new_page(viewport={"width": 1200, "height": 800})
        self.problems = []
        self.tab.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.tab.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.tab.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))
        self.tab.goto(Path(path).as_uri())

    def images_that_failed(self):
        """Scroll every picture into view (so lazy ones load), wait for it; the sources that did not load."""
        return self.tab.evaluate("""async () => {
            const failed = [];
            for (const img of [...document.images].filter((i) => !i.closest("#viewer"))) {
                img.scrollIntoView();
                if (!img.complete) await Promise.race([
                    new Promise((done) => { img.addEventListener("load", done); img.addEventListener("error", done); }),
                    new Promise((done) => setTimeout(done, 5000))]);
                if (!img.naturalWidth) failed.push(img.getAttribute("src"));
            }
            return failed;
        }""")

    def check(self, shot):
        """Every picture loaded, nothing failed or fired; a full-page screenshot in the artefacts."""
        assert self.images_that_failed() == []
        assert self.tab.locator("img[src='x']").count() == 0  # the hostile name made no element
        self.screenshot(shot, full_page=True)
        assert self.problems == []

    def screenshot(self, name, full_page=False):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.tab.screenshot(path=ARTIFACTS / f"{name}.png", full_page=full_page)

    def close(self):
        self.tab.close()


@pytest.fixture
def page(browser):
    opened = []

    def open_page(path):
        opened.append(Page(browser, path))
        return opened[-1]

    yield open_page
    for p in opened:
        p.close()


def _image(path, seed, shape=(64, 64)):
    data = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    data[16:40, 16:40] = 255
    Image.fromarray(data, mode="L").save(path)


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """``cnn apply`` of two 64x64 images, one named with HTML, and a file that is no image."""
    root = tmp_path_factory.mktemp("apply")
    (root / "in").mkdir()
    _image(root / "in" / f"{HOSTILE}.png", 0)
    _image(root / "in" / "plain.png", 1)
    (root / "in" / "broken.png").write_bytes(b"not a png")
    result = cnn("apply", root / "in", "-o", root / "out")
    assert result.exit_code == 3, result.output
    return root / "out"


def test_apply_index_lists_every_image_and_shows_names_as_text(applied, page):
    index = page(applied / "index.html")
    rows = index.tab.locator("#table tbody tr")
    assert rows.count() == 3
    assert HOSTILE in index.tab.locator("#table").inner_text()  # the name, literally
    failed = rows.filter(has_text="broken.png")
    assert "failed" in failed.inner_text() and "not an image" in failed.inner_text()
    assert "3 in all: 2 ok, 1 failed" in index.tab.locator("#counts").inner_text()
    index.check("apply-index")


def test_apply_index_to_an_image_page_and_back(applied, page):
    index = page(applied / "index.html")
    index.tab.get_by_role("link", name="img_src_x_onerror_alert_1", exact=True).click()
    index.tab.wait_for_load_state()
    assert index.tab.url.endswith("/img_src_x_onerror_alert_1/index.html")
    assert HOSTILE in index.tab.locator("p.meta").first.inner_text()
    assert index.tab.locator(".maps img").count() == 55  # every map of the default pipeline
    assert index.tab.locator("img[src$='_grid.png']").count() == 5
    index.check("apply-image")
    index.tab.go_back()
    assert index.tab.locator("#table tbody tr").count() == 3
    index.tab.get_by_role("link", name="plain", exact=True).click()
    index.tab.get_by_role("link", name="← all images").click()
    assert index.tab.url.split("#")[0].endswith("/out/index.html")
    assert index.tab.locator("#table tbody tr").count() == 3
    assert index.problems == []


def test_clicking_a_map_shows_it_at_full_resolution(applied, page):
    image = page(applied / "plain" / "index.html")
    viewer = image.tab.locator("#viewer")
    assert viewer.is_hidden()
    first = image.tab.locator(".maps img").first
    first.click()
    assert viewer.is_visible()
    big = viewer.locator("img")
    big.evaluate("(img) => img.decode()")
    natural, shown = big.evaluate("(img) => [img.naturalWidth, img.getBoundingClientRect().width]")
    assert natural == 64  # the map's own resolution: layer 0 keeps the input's size
    assert shown >= natural and shown % natural == 0  # enlarged by whole pixels, never shrunk
    assert shown > first.evaluate("(img) => img.getBoundingClientRect().width")
    assert "sobel_x" in viewer.inner_text()
    image.screenshot("apply-map-viewer")
    image.tab.keyboard.press("Escape")
    assert viewer.is_hidden()
    assert image.problems == []


def test_a_run_without_pictures_says_what_was_not_saved(applied, page, tmp_path):
    result = cnn("apply", applied.parent / "in" / "plain.png", "-o", tmp_path / "out", "--save", "raw")
    assert result.exit_code == 0, result.output
    image = page(tmp_path / "out" / "plain" / "index.html")
    assert "Not saved in this run (--save): maps (a PNG per map), grids (a grid per layer)." in \
        image.tab.locator("p.note").inner_text()
    assert image.tab.locator(".maps img").count() == 0 and image.tab.locator(".maps figure").count() == 55
    image.check("apply-raw-only")


def test_a_long_index_draws_one_page_of_rows_at_a_time(tmp_path, page):
    rows = ([None, [f"image {i:05d}", None], f"/data/{i:05d}.png", None, ["ok" if i % 7 else "failed", None]]
            for i in range(10_000))
    report.write_table_page(tmp_path / "index.html", "many", "<h1>many</h1>",
                            (("", "thumb"), ("image", "link"), ("input", "text"), ("size", "text"),
                             ("status", "status")), rows, replace=False)
    index = page(tmp_path / "index.html")
    body = index.tab.locator("#table tbody tr")
    assert body.count() == report.PAGE_SIZE
    assert "page 1 of 200" in index.tab.locator(".pager .where").first.inner_text()
    index.tab.locator(".pager button[data-step='1']").first.click()
    assert body.first.locator("td").nth(1).inner_text() == "image 00050"
    assert index.tab.url.endswith("#page=2")
    index.tab.locator("#search").fill("image 09999")
    assert body.count() == 1
    index.tab.locator("#search").fill("")
    index.tab.locator("#status").select_option("failed")
    assert "page 1 of 29 (1429 rows)" in index.tab.locator(".pager .where").first.inner_text()
    index.check("long-index")


def test_train_report(trained_html_class, page):
    shown = page(trained_html_class.root / "m.report.html")
    classes = shown.tab.locator("table").nth(2).inner_text()  # settings, epochs, then the classes' scores
    assert trained_html_class.hostile_class in classes and "precision" in classes
    assert shown.tab.locator("img[src='m.curves.png']").count() == 1
    assert shown.tab.locator("img[src='m.confusion.png']").count() == 1
    assert shown.tab.locator("img[src^='data:image/png']").count() >= 2  # kernels, and mistakes
    shown.check("train-report")


def test_explain_index(trained_html_class, page, tmp_path):
    out = tmp_path / "ex"
    result = cnn("explain", trained_html_class.data / trained_html_class.hostile_class, "--model",
                 trained_html_class.model, "-o", out, "--top-k", "2")
    assert result.exit_code == 0, result.output
    index = page(out / "index.html")
    assert index.tab.locator("#table tbody tr").count() == 6
    assert index.tab.locator("#table figure img").count() == 12
    assert trained_html_class.hostile_class in index.tab.locator("#table").inner_text()
    index.check("explain-index")
    index.tab.locator("#table figure img").first.click()
    assert index.tab.locator("#viewer").is_visible()
    assert index.problems == []
