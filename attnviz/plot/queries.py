"""Figures of Non-local query maps and GCNet's query-independence statistics.

* :func:`plot_query_grid`: GCNet Fig. 2 style grid: one row per image, one column per query
  point (marked with a white star), the query's attention map blended over the image
  (:func:`attnviz.plot.overlay.overlay`);
* :func:`statistics_table` / :func:`plot_statistics_table`: GCNet Table 1 as a DataFrame and
  as a figure, one row per site (or per model / Non-local instantiation), optionally with the
  paper's row;
* :func:`plot_query_distances`: seaborn heatmap of the pairwise distances between the query
  maps of one image;
* :func:`plot_query_heads`: at a per-head token site (ViT...), rows of query points and prefix
  tokens (the class token's map), columns the head mean and each head.

Nothing here runs a model: inputs are :class:`~attnviz.analysis.query_maps.QueryMapsResult`
and :class:`~attnviz.analysis.query_independence.QueryIndependenceResult` objects.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..capture import is_query_kind
from ._style import (
    OVERLAY_ALPHA,
    SEQUENTIAL,
    caption,
    colorbar,
    draw_overlay,
    model_name,
    new_axes,
    new_figure,
    shared_norm,
)

if TYPE_CHECKING:
    from ..analysis.query_independence import QueryIndependenceResult
    from ..analysis.query_maps import QueryMapsResult

TABLE_METRICS = ("cos_input", "cos_output", "cos_att", "jsd_att")
DEGENERACY_COLUMNS = ("row_entropy", "eff_keys", "argmax_keys")
METRIC_LABELS = {
    "cos_input": "cos input",
    "cos_output": "cos output",
    "cos_att": "cos att",
    "jsd_att": "JSD att",
    "row_entropy": "row entropy",
    "eff_keys": "eff. keys",
    "argmax_keys": "argmax keys",
    "max_weight": "max weight",
    "entropy": "GC entropy",
    "entropy_norm": "GC entropy / ln N",
}
MARKER = dict(marker="*", markersize=12, color="white", markeredgecolor="black", linestyle="none")


def plot_query_grid(
    results: QueryMapsResult | Sequence[QueryMapsResult],
    *,
    alpha: float = OVERLAY_ALPHA,
    colormap: str = SEQUENTIAL,
    panel_size: float = 2.0,
    titles: Sequence[str] | None = None,
    model: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """GCNet Fig. 2: rows are images, columns query points. Each panel draws the query's map
    over the image (``ax.images[1]``; all panels share one colour scale and one colour bar)
    with the query pixel marked (``ax.lines[0]`` holds its (x, y)); GC results fill one
    column. ``titles``: row labels (default "image 1", ...); ``model``: named in the title."""
    from ..analysis.query_independence import MAX_FIGURE_QUERIES

    results = [results] if not isinstance(results, Sequence) else list(results)
    if not results:
        raise ValueError("no query maps to plot")
    ncols = max(r.n_queries for r in results)
    if ncols > MAX_FIGURE_QUERIES:
        raise ValueError(
            f"{ncols} query maps per image: a figure shows at most {MAX_FIGURE_QUERIES} query "
            "points per image; pass fewer"
        )
    nrows = len(results)
    fig = new_figure((panel_size * ncols + 1.6, panel_size * nrows + 1.3), fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    norm = shared_norm(m for r in results for m in r.maps)
    same_cells = all(np.array_equal(r.query_cells, results[0].query_cells) for r in results)
    im = None
    for r, res in enumerate(results):
        for q in range(ncols):
            ax = axes[r, q]
            ax.set_xticks([])
            ax.set_yticks([])
            if q >= res.n_queries:
                ax.set_axis_off()
                continue
            im = draw_overlay(ax, res.image, res.maps[q], norm, cmap=colormap, alpha=alpha)
            if len(res.query_pixels):
                py, px = res.query_pixels[q]
                ax.plot([px], [py], **MARKER)
                cy, cx = res.query_cells[q]
                if r == 0 or not same_cells:
                    ax.set_title(f"query ({cy}, {cx})", fontsize="small")
            elif r == 0:
                ax.set_title("context map", fontsize="small")
            if q == 0:
                label = titles[r] if titles is not None else f"image {r + 1}"
                ax.set_ylabel(label, fontsize="small")
    site = results[0].site.get("alias", "")
    unit = "attention weight" if results[0].is_distribution else "attention"
    colorbar(fig, im, axes, label=unit, shrink=0.85)
    heads = results[0].site.get("heads")
    detail = f"{nrows} image{'s' if nrows != 1 else ''}; ★ marks the query"
    if heads:
        detail += f"; mean of {heads} heads over the key patches (prefix keys not drawn)"
    caption(
        fig,
        model or results[0].meta.get("model") or model_name(results[0]),
        f"attention maps of different query points at {site} (GCNet Fig. 2)",
        detail,
        "one colour scale for all panels; no error bars (one image per row)",
    )
    return fig


MAX_FIGURE_HEADS = 16  # head columns a figure shows legibly


def plot_query_heads(
    result: QueryMapsResult,
    *,
    queries: Sequence[int] | None = None,
    prefix: bool = True,
    alpha: float = OVERLAY_ALPHA,
    colormap: str = SEQUENTIAL,
    panel_size: float = 1.8,
    model: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Per-head maps of one image at a per-head site: one row per query (``queries``: indices
    into the result's queries, default all; the query pixel marked, ``ax.lines[0]``), then one
    row per prefix token (its map: the class token's ...; ``prefix=False`` leaves them out);
    columns the head mean, then each head. Each panel is the key-grid map over the image
    (``ax.images[1]``); one colour scale and one colour bar for all panels."""
    if not result.head_maps.size:
        raise ValueError(
            f"site {result.site.get('alias')} ({result.site.get('kind')}) has no heads: use "
            "plot_query_grid"
        )
    chosen = list(range(result.n_queries)) if queries is None else [int(q) for q in queries]
    if any(not 0 <= q < result.n_queries for q in chosen):
        raise ValueError(f"queries {chosen}: the result holds {result.n_queries} queries")
    labels = result.heads
    order = [len(labels) - 1, *range(len(labels) - 1)]  # the mean first
    if len(order) - 1 > MAX_FIGURE_HEADS:
        raise ValueError(f"{len(order) - 1} heads: a figure shows at most {MAX_FIGURE_HEADS}")
    rows = [(f"query ({int(result.query_cells[q, 0])}, {int(result.query_cells[q, 1])})",
             result.head_maps[q], result.query_pixels[q]) for q in chosen]  # fmt: skip
    if prefix:
        names = result.prefix_names
        rows += [(f"{names[p]} token", result.prefix_maps[p], None) for p in range(len(names))]
    if not rows:
        raise ValueError("no query and no prefix token to plot")
    norm = shared_norm(m[h] for _, m, _ in rows for h in order)
    ncols = len(order)
    fig = new_figure((panel_size * ncols + 1.6, panel_size * len(rows) + 1.4), fig)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    im = None
    for r, (label, maps, pixel) in enumerate(rows):
        for c, h in enumerate(order):
            ax = axes[r, c]
            im = draw_overlay(ax, result.image, maps[h], norm, cmap=colormap, alpha=alpha)
            if pixel is not None:
                ax.plot([pixel[1]], [pixel[0]], **MARKER)
            if r == 0:
                head = labels[h]
                ax.set_title("head mean" if head == "mean" else f"head {head}", fontsize="small")
            if c == 0:
                ax.set_ylabel(label, fontsize="small")
    unit = "attention weight" if result.is_distribution else "attention"
    colorbar(fig, im, axes, label=unit, shrink=0.85)
    kh, kw = result.grid_maps.shape[1:]
    held = float(result.prefix_key_weights[chosen, -1].sum(-1).mean()) if chosen else math.nan
    held_text = "" if math.isnan(held) or not result.prefix_key_weights.shape[-1] else (
        f"; the queries' mean weight on prefix keys, not drawn: {held:.3f}"
    )  # fmt: skip
    caption(
        fig,
        model or result.meta.get("model") or model_name(result),
        f"per-head attention maps at {result.site.get('alias', '')} over the {kh}x{kw} key "
        "patch grid",
        textwrap.fill(  # the figure is as wide as its panels: wrap to that width
            f"one image; ★ marks a patch query; prefix-token rows are not queries{held_text}",
            width=max(50, int(fig.get_figwidth() * 11)),
        ),
        "one colour scale for all panels; no error bars (one image)",
    )
    return fig


def statistics_table(
    results: QueryIndependenceResult | Sequence[QueryIndependenceResult],
    *,
    paper: bool = True,
    metrics: Sequence[str] = TABLE_METRICS,
) -> pd.DataFrame:
    """GCNet Table 1 as a DataFrame: one row per (model, Non-local site), columns
    ``<metric>`` (mean over images) and ``<metric>_std``, ``jsd_att_se`` (standard error of
    a sampled JSD, 0 if exact), the degeneracy columns ``row_entropy``, ``eff_keys``,
    ``argmax_keys``, ``max_weight`` (means over images) and ``near_one_hot``; ``paper=True``
    appends the paper's row(s) (``model`` = "GCNet paper"). GC sites are left out (see
    ``to_frame`` for them)."""
    from ..analysis.query_independence import PAPER_TABLE1

    results = [results] if not isinstance(results, Sequence) else list(results)
    rows = []
    for res in results:
        frame = res.to_frame()
        for _, row in frame[frame["kind"].map(is_query_kind)].iterrows():
            out = {
                "model": row["model"],
                "site": row["site"],
                "instantiation": row["instantiation"],
                "n_images": int(row["n_images"]),
            }
            for m in metrics:
                out[m] = row.get(f"{m}_mean", math.nan)
                out[f"{m}_std"] = row.get(f"{m}_std", math.nan)
            out["jsd_att_se"] = row.get("jsd_att_se", math.nan)
            for m in (*DEGENERACY_COLUMNS, "max_weight"):
                out[m] = row.get(f"{m}_mean", math.nan)
            out["near_one_hot"] = bool(row.get("near_one_hot", False))
            rows.append(out)
    if paper:
        for _, prow in PAPER_TABLE1.iterrows():
            out = {
                "model": "GCNet paper",
                "site": prow["source"],
                "instantiation": prow["instantiation"],
                "n_images": None,
            }
            for m in metrics:
                out[m] = prow.get(m, math.nan)
                out[f"{m}_std"] = math.nan
            out["jsd_att_se"] = math.nan
            for m in (*DEGENERACY_COLUMNS, "max_weight"):
                out[m] = math.nan
            out["near_one_hot"] = False
            rows.append(out)
    return pd.DataFrame(rows)


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(mean: float, std: float, digits: int, se: float | None = None) -> str:
    """ "mean ± std", "n/a", and " (se X)" for a sampled value."""
    if _missing(mean):
        return "n/a"
    text = f"{mean:.{digits}f}" if _missing(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"
    if not _missing(se) and se > 0:
        text += f" (se {se:.1e})"
    return text


def degeneracy_cell(row, digits: int = 2) -> str:
    """ "H nats / eff. keys / argmax keys", with "near one-hot" when flagged; n/a if absent."""
    h, k, a = (row.get(m) for m in DEGENERACY_COLUMNS)
    if _missing(a):
        return "n/a"
    head = "n/a" if _missing(h) else f"{h:.{digits}f} / {k:.{digits}f}"
    text = f"{head} / {int(round(a))}"
    return text + (" near one-hot" if bool(row.get("near_one_hot", False)) else "")


DEGENERACY_HEADER = "row entropy (nats) / eff. keys / argmax keys"


def plot_statistics_table(
    results: QueryIndependenceResult | Sequence[QueryIndependenceResult] | pd.DataFrame,
    *,
    paper: bool = True,
    digits: int = 3,
    metrics: Sequence[str] = TABLE_METRICS,
) -> Figure:
    """The :func:`statistics_table` drawn as a matplotlib table ("mean ± std" cells, "(se X)"
    after a sampled JSD, n/a where a metric does not apply, and the degeneracy column with
    "near one-hot" flags). ``fig.axes[0].tables[0]`` holds the cells."""
    table = (
        results
        if isinstance(results, pd.DataFrame)
        else statistics_table(results, paper=paper, metrics=metrics)
    )
    header = ["model", "site", "instantiation"] + [METRIC_LABELS[m] for m in metrics]
    header.append(DEGENERACY_HEADER)
    cells = []
    for _, row in table.iterrows():
        cells.append(
            [str(row["model"]), str(row["site"]), str(row["instantiation"])]
            + [
                _fmt(
                    row[m],
                    row.get(f"{m}_std"),
                    digits,
                    row.get("jsd_att_se") if m == "jsd_att" else None,
                )
                for m in metrics
            ]
            + [degeneracy_cell(row)]
        )
    fig = new_figure((2.0 + 1.5 * len(header), 0.9 + 0.3 * (len(cells) + 1)))
    ax = fig.add_subplot(111)
    ax.set_axis_off()
    tab = ax.table(cellText=cells, colLabels=header, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(10)
    tab.auto_set_column_width(list(range(len(header))))
    ax.set_title("Query independence (avg. distance over pairs; GCNet Table 1)", fontsize=9)
    return fig


def statistics_table_html(
    results: QueryIndependenceResult | Sequence[QueryIndependenceResult] | pd.DataFrame,
    *,
    paper: bool = True,
    digits: int = 3,
    metrics: Sequence[str] = TABLE_METRICS,
) -> str:
    """GCNet Table 1 as an HTML ``<table>`` (the cells of :func:`plot_statistics_table`)."""
    import html

    table = (
        results
        if isinstance(results, pd.DataFrame)
        else statistics_table(results, paper=paper, metrics=metrics)
    )
    header = ["model", "site", "instantiation", "images"]
    header += [METRIC_LABELS[m] for m in metrics] + [DEGENERACY_HEADER]
    out = ['<table class="attnviz-table">', "<thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in header]
    out.append("</tr></thead><tbody>")
    for _, row in table.iterrows():
        n = row.get("n_images")
        n = "" if _missing(n) else str(int(n))
        cells = [str(row["model"]), str(row["site"]), str(row["instantiation"]), n]
        cells += [
            _fmt(
                row[m],
                row.get(f"{m}_std"),
                digits,
                row.get("jsd_att_se") if m == "jsd_att" else None,
            )
            for m in metrics
        ]
        cells.append(degeneracy_cell(row))
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def plot_query_distances(
    result: QueryMapsResult,
    *,
    metric: str = "cosine",
    annot: bool = True,
    model: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of the (Q, Q) distances between one image's query maps
    (:meth:`QueryMapsResult.pairwise_distances`; sequential colours from 0, a colour bar);
    tick labels are the query cells."""
    d = result.pairwise_distances(metric)
    labels = [f"({int(y)},{int(x)})" for y, x in result.query_cells] or ["context"]
    fig, ax = new_axes(ax, (2.6 + 0.75 * len(labels), 1.8 + 0.6 * len(labels)))
    vmax = float(np.nanmax(d)) if d.size and np.nanmax(d) > 0 else 1.0
    im = ax.imshow(d, cmap=SEQUENTIAL, vmin=0.0, vmax=vmax, interpolation="nearest")
    if annot:
        for (r, c), v in np.ndenumerate(d):
            ax.text(c, r, f"{v:.3f}", ha="center", va="center", fontsize="x-small",
                    color="white" if v < 0.5 * vmax else "black")  # fmt: skip
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=45, ha="right")
    ax.set_yticks(ticks, labels)
    colorbar(fig, im, ax, label="(1 − cos) / 2" if metric == "cosine" else "JSD (nats)")
    ax.set_xlabel("query cell (y, x)")
    ax.set_ylabel("query cell (y, x)")
    who = model or result.meta.get("model") or "model"
    ax.set_title(
        f"{who}: distances between query maps\nat {result.site.get('alias')}, one image; "
        "no error bars",
        fontsize="medium",
    )
    return fig


__all__ = [
    "MAX_FIGURE_HEADS",
    "plot_query_heads",
    "statistics_table_html",
    "plot_query_distances",
    "plot_query_grid",
    "plot_statistics_table",
    "statistics_table",
]
