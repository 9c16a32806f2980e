"""Static HTML reports of what ``cnn apply``, ``cnn train`` and ``cnn explain`` wrote.

Each report is one HTML file that opens from the file system, with no server
and no network. Pictures are the files the command wrote anyway, linked by
relative, percent-encoded paths; small data (a table's rows, a few
thumbnails of a model's mistakes) is inline. Nothing is fetched and no
library is loaded: the little JavaScript there is (a pager for long tables,
a viewer that shows a picture at full resolution) is part of the page.

Everything a user controls (file, class and filter names) is escaped: as
HTML with ``text``, in inline JSON with ``json_text`` (which escapes ``<``,
``>`` and ``&`` too, so a name holding ``</script>`` stays inside its
string), and in links with ``href`` (percent-encoded). A table of many rows
(an index of 10,000 images) is drawn a page at a time from its inline JSON,
so the document stays small however many rows there are, and thumbnails load
only when they scroll into view.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import quote

import numpy as np

from .choices import SAVE
from .fileio import NotRegularFileError, atomic_path
from .owned import GENERATOR, NotOursError, is_cnn_page

#: Rows of a long table drawn at once.
PAGE_SIZE = 50

#: The least width of a map on an image's page, in CSS pixels (as in ``_STYLE``); smaller maps are enlarged.
MAP_CARD = 140

#: Endings of the images a browser shows (PNG, JPEG, GIF, BMP, WebP); other
#: inputs (TIFF, PPM) get a link instead of a picture.
BROWSER_IMAGES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}

#: Misclassified validation images shown in a training report, the most confident mistakes first.
MISTAKES_SHOWN = 12

#: What each ``cnn apply --save`` choice writes, for the note on what a run left out.
SAVED_WHAT = {"maps": "a PNG per map", "grids": "a grid per layer", "raw": "features.npz"}


# --------------------------------------------------------------------------- escaping


def text(value):
    """``value`` as HTML text or an attribute value: escaped, with bytes that are not
    UTF-8 (a file name's, kept by Python as lone surrogates) shown as U+FFFD."""
    shown = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(shown, quote=True)


def url(relative):
    """A relative path ('/'-separated) as a URL: every byte but letters, digits, ``-._~``
    and ``/`` percent-encoded, so ``#``, ``?``, ``:`` and ``<`` are never read as syntax."""
    return quote(os.fsencode(str(relative)), safe="/")


def href(target, start):
    """The URL of the file ``target`` relative to the folder ``start`` (both resolved
    against the working directory, without following links)."""
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(start))
    return url(Path(relative).as_posix())


def json_text(value):
    """``value`` as JSON that is safe inside ``<script type="application/json">``:
    ASCII only, and ``<``, ``>`` and ``&`` written as ``\\u003c`` and so on."""
    dumped = json.dumps(value, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return dumped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def number(value):
    """A statistic in four significant digits, or '–' when there is none."""
    return "–" if value is None else f"{value:.4g}"


def percent(value):
    return "–" if value is None else f"{100 * value:.1f} %"


# --------------------------------------------------------------------------- the page

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:1em 1.5em;color:#222}
h1{font-size:1.4em;overflow-wrap:anywhere} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} th{background:#f3f3f3}
th,td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums} #table{width:100%}
.meta,.note{color:#555} .note{background:#fff6d5;padding:4px 8px;border-radius:3px}
.mono{font-family:monospace;word-break:break-all}
.ok{color:#0a6b2c} .skipped{color:#666} .failed{color:#b00020}
.controls,.pager{margin:.6em 0} .pager button{margin:0 .4em}
img.zoom{cursor:zoom-in} img.wide{max-width:100%} img.px,#viewer img{image-rendering:pixelated}
img.thumb{width:64px;height:64px;object-fit:contain;background:#eee}
figure{display:inline-block;margin:4px 8px 8px 0;vertical-align:top}
figcaption{font-size:12px;color:#444;max-width:320px;overflow-wrap:anywhere}
figure img.fig,#table figure{width:160px}
.maps{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:6px}
.maps figure{margin:0} .maps img{width:100%;height:auto;background:#eee} .maps figcaption{font-size:11px}
#viewer{position:fixed;inset:0;background:rgba(0,0,0,.85);overflow:auto;text-align:center;padding:2em 0;cursor:zoom-out}
#viewer[hidden]{display:none} #viewer figure{margin:0} #viewer img{background:#fff}
#viewer figcaption{color:#eee;max-width:none;margin:.5em auto} #viewer a{color:#9cf}
"""

# The viewer shows a picture marked "zoom" at full resolution: scaled by the
# largest whole factor that fits the window, and never below 1:1, so every
# pixel of a map shows. The pager draws a page of rows of a long table from
# the inline JSON (#rows); the page number is kept in the address, so "back"
# from an image's page returns to it.
_SCRIPT = """
"use strict";
(() => {
  const box = document.getElementById("viewer"), big = box.querySelector("img");
  const caption = box.querySelector("span"), link = box.querySelector("a");
  const fit = () => {
    if (!big.naturalWidth) return;
    const k = Math.max(1, Math.floor(Math.min(innerWidth * 0.95 / big.naturalWidth,
                                              innerHeight * 0.85 / big.naturalHeight)));
    big.style.width = big.naturalWidth * k + "px";
  };
  big.addEventListener("load", fit);
  document.addEventListener("click", (event) => {
    const target = event.target;
    if (target instanceof HTMLImageElement && target.classList.contains("zoom") && !box.contains(target)) {
      event.preventDefault();
      big.style.width = "";
      big.src = target.currentSrc || target.src;
      caption.textContent = target.dataset.caption || target.alt;
      link.href = big.src;
      box.hidden = false;
      if (big.complete) fit();
    } else if (!box.hidden && !target.closest("#viewer a")) {
      box.hidden = true;
    }
  });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") box.hidden = true; });
})();
(() => {
  const data = document.getElementById("rows");
  if (!data) return;
  const spec = JSON.parse(data.textContent);
  const body = document.querySelector("#table tbody"), search = document.getElementById("search");
  const status = document.getElementById("status"), head = document.querySelector("#table thead tr");
  const make = (tag, text, cls) => {
    const node = document.createElement(tag);
    if (text != null) node.textContent = text;
    if (cls) node.className = cls;
    return node;
  };
  const picture = (src, caption, cls) => {
    const img = make("img", null, cls);
    img.loading = "lazy"; img.src = src; img.alt = caption; img.dataset.caption = caption;
    return img;
  };
  const cell = (type, value) => {
    const td = make("td");
    if (value == null) return td;
    if (type === "text") td.textContent = value;
    else if (type === "link") {
      if (value[1] == null) td.textContent = value[0];
      else { const a = make("a", value[0]); a.href = value[1]; td.append(a); }
    } else if (type === "thumb") {
      const img = picture(value[0], value[2] || "", value[1] == null ? "thumb zoom" : "thumb");
      if (value[1] == null) td.append(img);
      else { const a = make("a"); a.href = value[1]; a.append(img); td.append(a); }
    } else if (type === "figures") {
      td.style.minWidth = Math.min(value.length, 4) * 172 + "px";  // up to four side by side
      for (const [src, caption] of value) {
        const fig = make("figure");
        fig.append(picture(src, caption, "fig zoom"), make("figcaption", caption));
        td.append(fig);
      }
    } else if (type === "status") {
      td.append(make("span", value[0], value[0]));
      if (value[1]) td.append(make("div", value[1], "failed"));
    }
    return td;
  };
  for (const column of spec.columns) head.append(make("th", column.title));
  const column = spec.columns.findIndex((c) => c.type === "status");
  const counts = {};
  for (const row of spec.rows) counts[row[column][0]] = (counts[row[column][0]] || 0) + 1;
  for (const [name, count] of Object.entries(counts)) {
    const option = make("option", `${name} (${count})`);
    option.value = name;
    status.append(option);
  }
  document.getElementById("counts").textContent = `${spec.rows.length} in all: ` +
    Object.entries(counts).map(([name, count]) => `${count} ${name}`).join(", ");
  const words = (row) => row.map((v, i) => {
    const type = spec.columns[i].type;
    return v == null ? "" : type === "text" ? v : type === "link" || type === "status" ? v[0] + " " + (v[1] || "") : "";
  }).join(" ").toLowerCase();
  let shown = spec.rows, page = 1;
  const pages = () => Math.max(1, Math.ceil(shown.length / spec.page_size));
  const draw = (wanted) => {
    page = Math.min(Math.max(1, wanted), pages());
    const rows = shown.slice((page - 1) * spec.page_size, page * spec.page_size);
    body.replaceChildren(...rows.map((row) => {
      const tr = make("tr");
      row.forEach((value, i) => tr.append(cell(spec.columns[i].type, value)));
      return tr;
    }));
    for (const where of document.querySelectorAll(".pager .where"))
      where.textContent = `page ${page} of ${pages()} (${shown.length} rows)`;
    for (const button of document.querySelectorAll(".pager button"))
      button.disabled = button.dataset.step < 0 ? page <= 1 : page >= pages();
    history.replaceState(null, "", "#page=" + page);
  };
  const filter = () => {
    const query = search.value.trim().toLowerCase();
    shown = spec.rows.filter((row) => (!status.value || row[column][0] === status.value) &&
                                      (!query || words(row).includes(query)));
    draw(1);
  };
  search.addEventListener("input", filter);
  status.addEventListener("change", filter);
  for (const button of document.querySelectorAll(".pager button"))
    button.addEventListener("click", () => { draw(page + Number(button.dataset.step)); scrollTo(0, 0); });
  const start = /^#page=(\\d+)$/.exec(location.hash);
  draw(start ? Number(start[1]) : 1);
})();
"""

_VIEWER = ('<div id="viewer" hidden><figure><img alt=""><figcaption><span></span> · '
           '<a target="_blank">open the file</a></figcaption></figure></div>')


def document(title, body):
    """A whole HTML page (str) around ``body`` (HTML); ``title`` is escaped here."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'{GENERATOR}'
            f"<title>{text(title)}</title><style>{_STYLE}</style></head>\n<body>\n{body}\n{_VIEWER}\n"
            f"<script>{_SCRIPT}</script>\n</body></html>\n")


def _refuse_existing(path, replace):
    if os.path.lexists(path) and not replace:
        raise FileExistsError(path)


def write_page(path, html_text, *, replace):
    """Write a page atomically (a temporary name, then a rename). An existing file is
    kept unless ``replace`` (FileExistsError)."""
    _refuse_existing(path, replace)
    with atomic_path(path) as tmp:
        tmp.write_text(html_text, encoding="utf-8")


def write_or_keep(write, path, *, note, failed, replaced_by):
    """Run ``write()``, which writes the report ``path``. A report an earlier run left
    is kept (``write`` raised FileExistsError): ``note`` says so, naming the options
    (``replaced_by``) that replace it. A report that cannot be written becomes one of
    the run's failures: (None, message) appended to ``failed``."""
    try:
        write()
    except NotOursError:
        note(f"{path} was not written by cnn, so it was left as it is and this run wrote no report there")
    except FileExistsError:
        note(f"{path} exists (an earlier run's report) and was kept; {replaced_by} replaces it with this run's")
    except NotRegularFileError as exc:  # its message names the path
        failed.append((None, f"cannot write the report: {exc.strerror}"))
    except OSError as exc:
        failed.append((None, f"cannot write the report {path}: {exc.strerror or exc}"))


_PAGER = ('<nav class="pager"><button data-step="-1">← previous</button><span class="where"></span>'
          '<button data-step="1">next →</button></nav>')
_TABLE = f"""<div class="controls"><input id="search" type="search" placeholder="filter" aria-label="filter rows">
<select id="status" aria-label="status"><option value="">every status</option></select> <span id="counts"></span>
</div>{_PAGER}<table id="table"><thead><tr></tr></thead><tbody></tbody></table>{_PAGER}
<noscript><p class="note">The table is drawn by the page's own script; allow JavaScript for this file.</p></noscript>
"""


def write_table_page(path, title, intro, columns, rows, *, replace):
    """A page of ``intro`` (HTML) and a paged table, written atomically, row by row.

    ``columns`` are (title, type) pairs; ``rows`` an iterable (read once, never
    held) of lists with one value per column, by type: ``text`` a string;
    ``link`` [text, url or None]; ``thumb`` [src, url or None, caption] (a
    picture that links to url, or enlarges); ``figures`` [[src, caption],
    ...]; ``status`` [status, reason or None].
    """
    _refuse_existing(path, replace)
    if os.path.lexists(path) and not is_cnn_page(path):  # an index in OUT may be the user's own
        raise NotOursError(path)
    spec = {"page_size": PAGE_SIZE, "columns": [{"title": t, "type": k} for t, k in columns]}
    # The marker cannot occur in escaped text, where every "<" is "&lt;".
    head, _, tail = document(title, f'{intro}\n{_TABLE}<script type="application/json" id="rows"><!--rows--></script>'
                             ).partition("<!--rows-->")
    opening = json_text(spec)[:-1] + ',"rows":['
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(head + opening)
        for i, row in enumerate(rows):
            fh.write(("," if i else "") + json_text(row) + "\n")
        fh.write("]}" + tail)


# --------------------------------------------------------------------------- cnn apply


def apply_page(manifest, out_dir, name):
    """The page of one image (``OUT/<name>/index.html``), from its manifest: the input,
    each layer's grid, every map with its statistics, and links to the raw files.

    The input is shown from its copy in the folder (``input.jpg``), so a copied or zipped OUT
    keeps it; ``name`` is the folder's name under OUT, for the link back to ``OUT/index.html``.
    """
    saved = set(manifest.get("saved", SAVE))
    up = "../" * (name.count("/") + 1)
    _, height, width = manifest["input_shape"]
    source = manifest["input"]
    link = "input.jpg"
    pipeline = manifest.get("pipeline") or {}
    parts = [f'<nav><a href="{up}index.html">← all images</a></nav>',
             f"<h1>{text(name)}</h1>",
             f'<p class="meta">input <a class="mono" href="{link}">{text(source)}</a>, {width}×{height}, '
             f'{text(manifest.get("color", ""))}; pipeline {text(pipeline.get("name", ""))}'
             + (f" ({text(pipeline['description'])})" if pipeline.get("description") else "")
             + (f'; maps drawn {text(manifest.get("normalization", ""))}'  # only when maps or grids were
                + (f' per {text(manifest["normalization_per"])}' if manifest.get("normalization_per") else "")
                + f', colour map {text(manifest.get("colormap", ""))}' if {"maps", "grids"} & saved else "") + "</p>",
             '<p>files: <a href="manifest.json">manifest.json</a>'
             + (f' · <a href="features.npz">features.npz</a> ({text(manifest.get("dtype", "float32"))}, '
                'np.load(..., allow_pickle=False))' if "raw" in saved else "") + "</p>"]
    missing = [f"{choice} ({SAVED_WHAT[choice]})" for choice in SAVE if choice not in saved]
    if missing:
        parts.append(f'<p class="note">Not saved in this run (--save): {text(", ".join(missing))}.</p>')
    scale = max(1, 256 // max(height, width))  # a small input is enlarged, pixel by pixel
    parts.append(f'<figure><img class="zoom wide{" px" if scale > 1 else ""}" src="{link}" width="{width * scale}" '
                 f'alt="the input image" data-caption="{text(source)}"><figcaption>the input</figcaption></figure>')
    if isinstance(kp := manifest.get("keypoints"), dict):  # a corner pipeline's points (cnn_cli.keypoint_overlay)
        parts.append(f'<figure><img class="zoom wide" src="{url(kp["overlay"])}" width="{width * scale}" alt="keypoints">'
                     f'<figcaption>{text(kp["count"])} keypoints of {text(kp["layer"])}</figcaption></figure>')
    layers = manifest.get("layers", [])
    if layers:
        parts.append("<p>layers: " + " · ".join(
            f'<a href="#{text(layer["name"])}">{text(layer["name"])} {text(layer["kind"])}</a>' for layer in layers)
            + "</p>")
    parts += [_apply_layer(layer) for layer in layers]
    return document(f"{name} — cnn apply", "\n".join(parts))


def _field(receptive):
    if receptive is None:
        return ""
    return " · receptive field: the whole input" if receptive == "global" else \
        f" · receptive field {receptive}×{receptive} input pixels"


def _apply_layer(layer):
    name = text(layer["name"])
    _, height, width = layer["shape"]
    raw = f'features.npz key "{name}"' if layer.get("npz_key") else "raw maps not saved"
    out = [f'<section id="{name}"><h2>{name}: {text(layer["kind"])}</h2>',
           f'<p class="meta">{text(layer.get("description", ""))} · maps '
           f'{"×".join(str(d) for d in layer["shape"])}{_field(layer.get("receptive_field"))} · {raw}</p>']
    if layer.get("grid"):
        out.append(f'<figure><img class="zoom wide" loading="lazy" src="{url(layer["grid"])}" alt="grid of {name}" '
                   f'data-caption="{name}: every map"><figcaption>every map of {name}</figcaption></figure>')
    out.append('<div class="maps">')
    sharp = " px" if width < MAP_CARD else ""  # a small map is enlarged: show its pixels, never blur them
    for m in layer["maps"]:
        label = text(m["filter"])
        picture = ""
        if m.get("png"):  # width and height keep the place of a picture not loaded yet
            picture = (f'<a href="{url(m["png"])}"><img class="zoom{sharp}" loading="lazy" src="{url(m["png"])}" '
                       f'width="{width}" height="{height}" alt="{label}" '
                       f'data-caption="{name} · map {m["channel"]} · {label}"></a>')
        out.append(f'<figure class="map">{picture}<figcaption><span class="mono">{m["channel"]} {label}</span><br>'
                   f'min {number(m.get("min"))} · max {number(m.get("max"))}<br>'
                   f'mean {number(m.get("mean"))} · zeros {percent(m.get("zero_fraction"))}</figcaption></figure>')
    out.append("</div></section>")
    return "\n".join(out)


class ApplyIndex:
    """``OUT/index.html`` of a ``cnn apply`` run: its images, written or kept, and its failures.

    The folders are noted as results come (``add``), in an unlinked temporary
    file (in the system's temporary folder, not on OUT's possibly shared
    disk), so a run of millions of images holds only their names in memory and a
    killed run leaves nothing behind. ``write`` sorts them by name and reads each
    folder's manifest back, one at a time, into the rows of the page.
    """

    def __init__(self, out_root):
        self.out_root = Path(out_root)
        self.path = self.out_root / "index.html"
        self._folders = tempfile.TemporaryFile("w+", encoding="utf-8")
        self.count = 0

    def close(self):
        self._folders.close()

    def finish(self, summary, *, replace, note):
        """Write the page, unless the run (a ``runner.Summary``) was interrupted (its rerun writes
        it) or wrote and kept nothing, then close. An earlier run's page is replaced only when
        ``replace`` (--force or --skip-existing); otherwise it is kept, and ``note`` says so."""
        try:
            if not summary.interrupted and self.count:
                write_or_keep(lambda: self.write(summary.failed, replace=replace), self.path, note=note,
                              failed=summary.failed, replaced_by="--force or --skip-existing")
        finally:
            self.close()

    def add(self, out_dir, skipped):
        """Note a folder this run wrote (or kept, when ``skipped``)."""
        name = Path(out_dir).relative_to(self.out_root).as_posix()
        self._folders.write(json.dumps([name, "skipped" if skipped else "ok"]) + "\n")
        self.count += 1

    def write(self, failed, *, replace):
        """Write the page (FileExistsError when it exists and not ``replace``); ``failed``
        holds (input or None, message) pairs."""
        self._folders.seek(0)  # in name order, not the order the images were finished in
        rows = (self._row(*entry) for entry in sorted(json.loads(line) for line in self._folders))
        failures = ([None, None, path or "", None, ["failed", message]] for path, message in failed)
        intro = (f"<h1>cnn apply: {text(self.out_root.name or self.out_root)}</h1>"
                 '<p class="meta">Each image\'s page shows its input, every layer\'s grid and maps (click a map '
                 "to see it at full resolution) and their statistics.</p>")
        write_table_page(self.path, f"{self.out_root.name} — cnn apply", intro,
                         (("", "thumb"), ("image", "link"), ("input", "text"), ("size", "text"),
                          ("status", "status")),
                         itertools.chain(rows, failures), replace=replace)

    def _row(self, name, status):
        folder = self.out_root / name
        page = url(f"{name}/index.html") if (folder / "index.html").is_file() else None
        try:
            manifest = json.loads((folder / "manifest.json").read_bytes())
            source, (_, height, width) = manifest["input"], manifest["input_shape"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return [None, [name, None], "", None, ["failed", f"cannot read its manifest.json: {exc}"]]
        # The copy of the input in its folder; an earlier version's folder has none, so the input
        # itself, unless it has moved since (or was named relative to another folder): no thumbnail.
        copy = url(f"{name}/input.jpg") if (folder / "input.jpg").is_file() else None
        shown = copy or (Path(source).suffix.lower() in BROWSER_IMAGES and os.path.isfile(source))
        thumb = [copy or href(source, self.out_root), page, source] if shown else None
        return [thumb, [name, page], source, f"{width}×{height}, {manifest.get('color', '')}", [status, None]]


# --------------------------------------------------------------------------- cnn explain


def write_explain_index(out_root, records, failed, *, replace):
    """``DIR/index.html`` of a ``cnn explain`` run: each image's overlays, one per class
    explained, with the predictions; ``records`` are the explain.json records (with
    ``output``), ``failed`` (input or None, message) pairs."""
    out_root = Path(out_root)

    def row(record):
        folder = Path(record["output"])
        name = folder.relative_to(out_root).as_posix()
        shown = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in record["predictions"]) \
            + (f" (true class: {record['true_class']})" if record.get("true_class") else "")
        overlays = [[url(f"{name}/{t['overlay']}"),
                     f"{t['class']} p={t['probability']:.3f}" + (f" ({t['note']})" if t.get("note") else "")]
                    for t in record["targets"]]
        return [[name, url(f"{name}/explain.json")], record["input"], shown, overlays, ["ok", None]]

    first = records[0] if records else {}
    layer = first.get("layer")
    where = f"layer {layer['name']} ({layer['kind']})" if layer else "occlusion"
    intro = (f"<h1>cnn explain: {text(out_root.name or out_root)}</h1>"
             f'<p class="meta">method {text(first.get("method", ""))}, {text(where)}, model '
             f'{text(first.get("model") or "")}. Click an overlay to see it at full resolution.</p>')
    failures = ([None, path or "", None, None, ["failed", message]] for path, message in failed)
    write_table_page(out_root / "index.html", f"{out_root.name} — cnn explain", intro,
                     (("image", "link"), ("input", "text"), ("predicted", "text"), ("overlays", "figures"),
                      ("status", "status")),
                     itertools.chain(map(row, sorted(records, key=lambda r: r["output"])), failures), replace=replace)


# --------------------------------------------------------------------------- cnn train


def _data_png(image):
    """A Pillow image as a data: URL (for the few small pictures a report holds inline)."""
    from .viz import png_bytes

    return "data:image/png;base64," + base64.b64encode(png_bytes(image, smallest=True)).decode("ascii")


def _table(header, rows, numeric=()):
    """An HTML table; every cell is escaped; columns in ``numeric`` are right-aligned."""
    head = "".join(f"<th>{text(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{text(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def train_report(model_path, meta, network, x_val, y_val, probs, names=None):
    """The page ``MODEL.report.html`` (str): settings, learning curves, confusion matrix,
    per-class precision and recall, the first layer's kernels and the most confident
    mistakes on the validation images.

    ``meta`` is the finished model's metadata (with its result); ``x_val``
    (N, C, H, W) the normalised validation images, ``y_val`` their labels and
    ``probs`` (N, classes) the model's probabilities for them, ``names``
    their paths in the dataset (else they are numbered). The curves and the
    confusion matrix are the PNGs written beside the model.
    """
    from .evaluation import confusion_matrix, report

    model_path = Path(model_path)
    stem, classes = model_path.stem, meta.classes
    training, pre = meta.training, meta.preprocessing
    result, config = training.result, training.config
    parts = [f"<h1>cnn train: {text(model_path.name)}</h1>"]
    accuracy = "" if result.final_val_accuracy is None else \
        f"; validation accuracy {result.final_val_accuracy:.4f}, loss {result.final_val_loss:.4f}"
    parts.append(f'<p class="meta">{text(meta.architecture.name)}, {len(classes)} classes; {result.epochs_run} '
                 f"epochs, weights of epoch {result.kept_epoch}{accuracy}; finished {text(result.finished)}. "
                 f'Files: <a href="{url(model_path.name)}">{text(model_path.name)}</a> · '
                 f'<a href="{url(stem + ".metrics.json")}">{text(stem)}.metrics.json</a></p>')
    settings = [(k, v) for k, v in config.to_json().items() if k != "momentum" or config.optimizer == "sgd"] + [
        ("classes", ", ".join(classes)), ("channels", pre.channels), ("mean", pre.mean), ("std", pre.std),
        ("training images", training.train_images), ("validation images", training.val_images),
        ("split", training.split)]
    parts += ["<h2>Settings</h2>", _table(("setting", "value"), [(k, _setting(v)) for k, v in settings])]
    parts += ["<h2>Learning curves</h2>",
              f'<img class="zoom wide" src="{url(stem + ".curves.png")}" alt="learning curves">',
              _table(("epoch", "learning rate", "training loss", "training accuracy", "validation loss",
                      "validation accuracy", "seconds", "kept"),
                     [(h["epoch"], number(h["lr"]), number(h["train_loss"]), number(h["train_accuracy"]),
                       number(h["val_loss"]), number(h["val_accuracy"]), f"{h['seconds']:.1f}",
                       "yes" if h.get("kept") else "") for h in result.history], numeric=range(7))]
    if len(y_val):
        predicted = probs.argmax(axis=1)
        scores = report(confusion_matrix(y_val, predicted, len(classes)), classes)
        parts += ["<h2>Confusion matrix</h2>",
                  f'<img class="zoom wide" src="{url(stem + ".confusion.png")}" alt="confusion matrix">',
                  "<h2>Per class</h2>",
                  _table(("class", "precision", "recall", "f1", "validation images"),
                         [(name, number(row["precision"]), number(row["recall"]), number(row["f1"]), row["support"])
                          for name, row in scores["per_class"].items()], numeric=(1, 2, 3, 4)),
                  "<h2>Mistakes</h2>", _mistakes(x_val, y_val, probs, pre, classes, names)]
    else:
        parts.append('<p class="note">No validation images, so no confusion matrix, scores or mistakes.</p>')
    parts += ["<h2>Learned first-layer kernels</h2>", _kernels(network)]
    return document(f"{model_path.name} — cnn train", "\n".join(parts))


def _setting(value):
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(v) for v in value) or "–"
    return value if isinstance(value, (str, int)) else "–"  # None, or a field an older file lacks


def _mistakes(x_val, y_val, probs, pre, classes, names=None):
    from PIL import Image

    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y_val)
    if not len(wrong):
        return "<p>The model classifies every validation image correctly.</p>"
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:MISTAKES_SHOWN]
    mean = np.asarray(pre.mean, np.float32)[:, None, None]
    std = np.asarray(pre.std, np.float32)[:, None, None]
    figures = []
    for i in wrong:
        pixels = np.clip((x_val[i] * std + mean) * 255 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels[0]) if len(pixels) == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
        name = names[i] if names else f"validation image {i}"
        caption = (f"{name}: {classes[y_val[i]]}, predicted {classes[predicted[i]]} "
                   f"(p={probs[i, predicted[i]]:.3f}; p of {classes[y_val[i]]} {probs[i, y_val[i]]:.3f})")
        figures.append(f'<figure><img class="fig zoom px" src="{_data_png(image)}" alt="{text(caption)}" '
                       f'data-caption="{text(caption)}"><figcaption>{text(caption)}</figcaption></figure>')
    return (f"<p>{len(np.flatnonzero(predicted != y_val))} of {len(y_val)} validation images misclassified; "
            f"the {len(wrong)} most confident mistakes, as the model sees them:</p>" + "".join(figures))


def _kernels(network):
    from .modelfile import first_conv
    from .viz import grid, kernel_tiles

    conv = first_conv(network)
    if conv is None:
        return "<p>The model has no convolution layer.</p>"
    weights = conv.params["weight"]
    image = grid(kernel_tiles(list(weights)), [f"filter{i}" for i in range(len(weights))])
    shape = "×".join(str(d) for d in weights.shape)
    return (f'<p class="meta">weights {shape} (filters × input channels × height × width), on a diverging scale: '
            f'zero is mid-grey</p><img class="zoom wide" src="{_data_png(image)}" alt="first-layer kernels">')
