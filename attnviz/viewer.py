"""A query viewer that needs no kernel: one HTML/JS view of a per-query site (GCNet Fig. 2,
made interactive).

:class:`QueryViewer` takes a :class:`~attnviz.analysis.query_maps.QueryMapsResult` holding the
maps of every query cell of one image (or of a subsampled grid of cells; the view says which),
e.g. from :func:`viewer_maps`. It draws the image with the chosen query marked and that query's
map over it (viridis, one colour scale for every query, a colour bar). Hovering or clicking a
cell picks the query. The maps are embedded in the page as one base64 block of uint8 values
(quantised between the maps' joint min and max), the image as a PNG data URL; the script is
inline and makes no request. It renders as notebook output (``_repr_html_``) and inside the
report (:mod:`attnviz.report`).

At per-head token sites (ViT, DeiT, PVT...: :mod:`attnviz.analysis.query_maps`) the queries are
the patch cells; a menu picks the head (the head mean first, then each head) and buttons show
the maps of the prefix tokens (class, register...), which are not patches. Maps lie on the key
patch grid (smaller than the query grid at PVT / Twins); their weight on prefix keys is not
drawn. Every head and prefix map shares the one colour scale.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .analysis.query_maps import QueryMapsResult

__all__ = ["MAX_VIEWER_CELLS", "QueryViewer", "viewer_cells", "viewer_maps"]

MAX_VIEWER_CELLS = 1024  # query cells embedded at most; larger grids are subsampled


def viewer_cells(grid: Sequence[int], max_cells: int = MAX_VIEWER_CELLS) -> list[tuple[int, int]]:
    """Every cell of the (gh, gw) query grid, or every s-th row and column (the smallest
    stride s that keeps at most ``max_cells``)."""
    gh, gw = int(grid[0]), int(grid[1])
    stride = 1
    while math.ceil(gh / stride) * math.ceil(gw / stride) > max_cells:
        stride += 1
    return [(y, x) for y in range(0, gh, stride) for x in range(0, gw, stride)]


def viewer_maps(
    model: Any,
    image: Any,
    *,
    site: str | None = None,
    preprocess: Any = None,
    max_cells: int = MAX_VIEWER_CELLS,
) -> QueryMapsResult:
    """The maps of every query cell of one image at one per-query site (subsampled past
    ``max_cells``), ready for :class:`QueryViewer` (runs the model once)."""
    from .analysis.query_maps import query_maps

    grid: list[int] = []

    def cells(g: Sequence[int]) -> list[tuple[int, int]]:
        grid[:] = [int(g[0]), int(g[1])]
        return viewer_cells(g, max_cells)

    result = query_maps(
        model, image, queries=cells, site=site, query_space="cell", preprocess=preprocess
    )
    result.meta["query_grid"] = grid
    return result


def _viridis_lut() -> list[int]:
    from matplotlib import colormaps

    rgb = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    return rgb.ravel().tolist()


def _png_data_url(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class QueryViewer:
    """HTML/JS view of per-query attention maps (see the module docstring).

    ``QueryViewer(result, model=None, title=None)``; ``result.grid_maps`` (Q, kh, kw) and
    ``result.query_cells`` (Q, 2) give one map per embedded cell; the query grid comes from
    ``result.meta["query_grid"]`` or ``result.site["query_grid"]`` (else the cells' extent).
    """

    def __init__(self, result: QueryMapsResult, *, model: str | None = None, title: str = ""):
        if result.n_queries == 0 or len(result.query_cells) == 0:
            raise ValueError("the viewer needs per-query maps (a GC context map has no queries)")
        self.result = result
        self.model = model or str(result.meta.get("model") or "model")
        self.title = title
        cells = np.asarray(result.query_cells, dtype=np.int64)
        grid = result.meta.get("query_grid") or result.site.get("query_grid")
        if grid is None:
            grid = (int(cells[:, 0].max()) + 1, int(cells[:, 1].max()) + 1)
        self.query_grid = (int(grid[0]), int(grid[1]))
        self.cells = cells
        if result.head_maps.size:  # (H + 1, Q, kh, kw): the head mean first, then each head
            order = [len(result.heads) - 1, *range(len(result.heads) - 1)]
            maps = np.asarray(result.head_maps, dtype=np.float64).transpose(1, 0, 2, 3)[order]
            prefix = np.asarray(result.prefix_maps, dtype=np.float64).transpose(1, 0, 2, 3)
            prefix = (
                prefix[order] if prefix.size else prefix.reshape(len(order), 0, *maps.shape[2:])
            )
            self.heads = ["head mean", *(f"head {h}" for h in result.heads[:-1])]
        else:
            maps = np.asarray(result.grid_maps, dtype=np.float64)[None]
            prefix = np.zeros((1, 0, *maps.shape[2:]))
            self.heads = ["attention"]
        self.prefix_names = [str(n) for n in result.prefix_names][: prefix.shape[1]]
        # one colour scale per head (its queries and prefix tokens): a weak head stays visible
        self.head_vmin, self.head_vmax = [], []
        self._quantised = np.zeros(maps.shape, np.uint8)  # (heads, Q, kh, kw)
        self._prefix = np.zeros(prefix.shape, np.uint8)  # (heads, P, kh, kw)
        for h in range(len(maps)):
            both = np.concatenate([maps[h].ravel(), prefix[h].ravel()])
            lo, hi = float(np.nanmin(both)), float(np.nanmax(both))
            span = hi - lo if hi > lo else 1.0
            for src, dst in ((maps, self._quantised), (prefix, self._prefix)):
                dst[h] = np.clip(np.round((src[h] - lo) / span * 255), 0, 255)
            self.head_vmin.append(lo)
            self.head_vmax.append(hi)
        self.vmin, self.vmax = self.head_vmin[0], self.head_vmax[0]  # the (head-mean) map
        self.key_grid = (int(maps.shape[2]), int(maps.shape[3]))
        self.subsampled = len(cells) < self.query_grid[0] * self.query_grid[1]

    @property
    def n_cells(self) -> int:
        return int(len(self.cells))

    def data(self) -> dict[str, Any]:
        """What the page embeds: ``maps`` base64 uint8 (heads, Q, kh, kw) row-major, map q of
        head h at offset (h * Q + q) * kh * kw (one head, "attention", at a site without
        heads), quantised between ``head_vmin[h]`` and ``head_vmax[h]`` (``vmin`` / ``vmax``:
        those of the first, the head mean); ``prefix_maps`` (heads, P, kh, kw) likewise for the
        ``prefix`` tokens, on their head's scale."""
        r = self.result
        return {
            "image": _png_data_url(r.image),
            "size": [int(r.image.shape[0]), int(r.image.shape[1])],
            "grid": list(self.query_grid),
            "keys": list(self.key_grid),
            "cells": self.cells.tolist(),
            "maps": base64.b64encode(self._quantised.tobytes()).decode("ascii"),
            "heads": list(self.heads),
            "prefix": list(self.prefix_names),
            "prefix_maps": base64.b64encode(self._prefix.tobytes()).decode("ascii"),
            "vmin": self.vmin,
            "vmax": self.vmax,
            "head_vmin": list(self.head_vmin),
            "head_vmax": list(self.head_vmax),
            "lut": _viridis_lut(),
            "start": self._centre_cell(),
        }

    def _centre_cell(self) -> list[int]:
        centre = np.array([self.query_grid[0] // 2, self.query_grid[1] // 2])
        return self.cells[int(np.argmin(((self.cells - centre) ** 2).sum(axis=1)))].tolist()

    def caption(self) -> str:
        gh, gw = self.query_grid
        site = self.result.site.get("alias", "")
        if self.subsampled:
            which = f"maps of {self.n_cells} of the {gh * gw} query cells (subsampled grid)"
        else:
            which = f"maps of all {gh}x{gw} query cells"
        unit = "attention weight" if self.result.is_distribution else "attention"
        heads = ""
        scale = "one colour scale for every query"
        if len(self.heads) > 1:
            kh, kw = self.key_grid
            n = len(self.heads) - 1  # the last entry is the mean
            which_heads = "1 head and its mean" if n == 1 else f"{n} heads and their mean"
            heads = f"; {which_heads} (pick one) over the {kh}x{kw} key patch grid"
            scale = "one colour scale per head for all its queries"
            if self.prefix_names:
                heads += (
                    f"; the {', '.join(self.prefix_names)} token maps are not patch queries "
                    "(buttons); weight on prefix keys is not drawn"
                )
        return (
            f"{self.model}: attention map of the chosen query at {site}, one image; {which}"
            f"{heads}; {unit} on {scale}; hover or click a cell to pick it"
        )

    def to_html(self) -> str:
        """A self-contained ``<div>`` (inline data and script, no request)."""
        uid = "attnviz-qv-" + uuid.uuid4().hex[:10]
        payload = json.dumps(self.data(), separators=(",", ":"))
        title = f"<h4>{html.escape(self.title)}</h4>" if self.title else ""
        return _TEMPLATE.format(
            uid=uid,
            title=title,
            caption=html.escape(self.caption()),
            # no "<" in the JSON block: no "</script>", "<!--" or "<script" can end or
            # re-enter the script element (JSON.parse reads \u003c back as "<")
            payload=payload.replace("<", "\\u003c"),
            script=_SCRIPT,
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path: str | Path) -> Path:
        """A standalone HTML page holding the viewer."""
        path = Path(path)
        page = (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>attnviz query viewer'
            f"</title></head><body>{self.to_html()}</body></html>"
        )
        path.write_text(page, encoding="utf-8")
        return path


_TEMPLATE = """<div class="attnviz-query-viewer" id="{uid}" data-query="">{title}
<p class="attnviz-caption" style="font:13px sans-serif;max-width:640px">{caption}</p>
<div style="display:flex;gap:12px;align-items:flex-start">
<canvas class="qv-map" width="320" height="320" style="cursor:crosshair;width:320px;height:320px"
></canvas>
<div style="font:12px sans-serif"><canvas class="qv-bar" width="16" height="240"></canvas>
<div class="qv-ticks" style="white-space:pre-line"></div></div></div>
<div class="qv-controls" style="font:13px sans-serif"><select class="qv-head"></select>
<span class="qv-prefix"></span></div>
<p class="qv-info" style="font:13px sans-serif"></p>
<script type="application/json" class="qv-data">{payload}</script>
<script>{script}
attnvizQueryViewer(document.getElementById("{uid}"));</script>
</div>"""

_SCRIPT = r"""
function attnvizQueryViewer(root) {
  if (root.dataset.ready) return;
  root.dataset.ready = "1";
  var d = JSON.parse(root.querySelector(".qv-data").textContent);
  function bytes(b64) {
    var raw = atob(b64), out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  var maps = bytes(d.maps), prefixMaps = bytes(d.prefix_maps), head = 0, current = null;
  var nq = d.cells.length, np_ = d.prefix.length;
  var canvas = root.querySelector(".qv-map"), ctx = canvas.getContext("2d");
  if (d.size[1] >= d.size[0]) {  // the image's aspect, longest side 320 px
    canvas.height = Math.max(1, Math.round(320 * d.size[0] / d.size[1]));
  } else {
    canvas.width = Math.max(1, Math.round(320 * d.size[1] / d.size[0]));
  }
  canvas.style.width = canvas.width + "px"; canvas.style.height = canvas.height + "px";
  var W = canvas.width, H = canvas.height, kh = d.keys[0], kw = d.keys[1];
  var gh = d.grid[0], gw = d.grid[1], lut = d.lut, index = {};
  d.cells.forEach(function (c, q) { index[c[0] + "," + c[1]] = q; });
  var img = new Image(), grey = document.createElement("canvas");
  grey.width = W; grey.height = H;
  var small = document.createElement("canvas");
  small.width = kw; small.height = kh;
  function nearest(y, x) {
    var best = 0, bd = Infinity;
    d.cells.forEach(function (c, q) {
      var dd = (c[0] - y) * (c[0] - y) + (c[1] - x) * (c[1] - x);
      if (dd < bd) { bd = dd; best = q; }
    });
    return best;
  }
  function paint(block, off) {
    ctx.globalAlpha = 1; ctx.drawImage(grey, 0, 0);
    var sctx = small.getContext("2d"), id = sctx.createImageData(kw, kh);
    for (var p = 0; p < kh * kw; p++) {
      var v = block[off + p];
      id.data[4 * p] = lut[3 * v]; id.data[4 * p + 1] = lut[3 * v + 1];
      id.data[4 * p + 2] = lut[3 * v + 2]; id.data[4 * p + 3] = 255;
    }
    sctx.putImageData(id, 0, 0);
    ctx.imageSmoothingEnabled = true; ctx.globalAlpha = 0.6;
    ctx.drawImage(small, 0, 0, W, H); ctx.globalAlpha = 1;
  }
  function headText() { return d.heads.length > 1 ? ", " + d.heads[head] : ""; }
  function ticks() {
    var lo = d.head_vmin[head], hi = d.head_vmax[head];
    root.querySelector(".qv-ticks").textContent = "max " + hi.toPrecision(3) + "\nmin " +
      lo.toPrecision(3) + "\n(attention" + headText() + ")";
  }
  function drawPrefix(k) {
    current = -1 - k;
    paint(prefixMaps, (head * np_ + k) * kh * kw);
    root.dataset.query = "prefix:" + k;
    root.querySelector(".qv-info").textContent = d.prefix[k] + " token (not a patch query)" +
      headText();
  }
  function draw(q) {
    var cell = d.cells[q];
    current = q;
    paint(maps, (head * nq + q) * kh * kw);
    var cx = (cell[1] + 0.5) * W / gw, cy = (cell[0] + 0.5) * H / gh;
    ctx.beginPath(); ctx.arc(cx, cy, 6, 0, 2 * Math.PI);
    ctx.fillStyle = "white"; ctx.fill(); ctx.lineWidth = 2; ctx.strokeStyle = "black";
    ctx.stroke();
    root.dataset.query = cell[0] + "," + cell[1];
    root.querySelector(".qv-info").textContent = "query cell (y, x) = (" + cell[0] + ", " +
      cell[1] + ") of the " + gh + "x" + gw + " query grid" + headText();
  }
  function redraw() {
    if (current === null) return;
    if (current < 0) drawPrefix(-1 - current); else draw(current);
  }
  var select = root.querySelector(".qv-head");
  d.heads.forEach(function (label, h) {
    var o = document.createElement("option");
    o.value = String(h); o.textContent = label; select.appendChild(o);
  });
  if (d.heads.length < 2) select.style.display = "none";
  select.addEventListener("change", function () { head = +select.value; ticks(); redraw(); });
  var buttons = root.querySelector(".qv-prefix");
  d.prefix.forEach(function (name, k) {
    var b = document.createElement("button");
    b.type = "button"; b.textContent = name + " token";
    b.addEventListener("click", function () { drawPrefix(k); });
    buttons.appendChild(b);
  });
  function pick(ev) {
    var r = canvas.getBoundingClientRect();
    var x = Math.floor((ev.clientX - r.left) / r.width * gw);
    var y = Math.floor((ev.clientY - r.top) / r.height * gh);
    x = Math.max(0, Math.min(gw - 1, x)); y = Math.max(0, Math.min(gh - 1, y));
    var q = index[y + "," + x];
    draw(q === undefined ? nearest(y, x) : q);
  }
  canvas.addEventListener("mousemove", pick);
  canvas.addEventListener("click", pick);
  var bar = root.querySelector(".qv-bar"), bctx = bar.getContext("2d");
  for (var yb = 0; yb < bar.height; yb++) {
    var v = Math.round(255 * (1 - yb / (bar.height - 1)));
    bctx.fillStyle = "rgb(" + lut[3 * v] + "," + lut[3 * v + 1] + "," + lut[3 * v + 2] + ")";
    bctx.fillRect(0, yb, bar.width, 1);
  }
  ticks();
  img.onload = function () {
    var g = grey.getContext("2d");
    g.drawImage(img, 0, 0, W, H);
    var px = g.getImageData(0, 0, W, H);
    for (var k = 0; k < px.data.length; k += 4) {
      var l = 0.299 * px.data[k] + 0.587 * px.data[k + 1] + 0.114 * px.data[k + 2];
      px.data[k] = px.data[k + 1] = px.data[k + 2] = l;
    }
    g.putImageData(px, 0, 0);
    draw(nearest(d.start[0], d.start[1]));
  };
  img.src = d.image;
}
"""
