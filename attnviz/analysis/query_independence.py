"""GCNet's query-independence statistics of Non-local blocks (Cao et al. 2019, Table 1).

At a Non-local block z_i = W_z y_i + x_i (Wang et al. 2018, Eq. 6), for every image:

* ``cos_input``:  avg_dist of the block inputs x_i (C-vectors, one per position i);
* ``cos_output``: avg_dist of o_i = z_i - x_i, the block's output before the residual;
* ``cos_att``:    avg_dist of the attention rows w_i (one per query i, over the Nk keys;
  Nk < N when the keys are subsampled);
* ``jsd_att``:    mean Jensen-Shannon divergence (nats, max ln 2) of the rows w_i.

avg_dist = mean over pairs (i, j) of (1 - cos(v_i, v_j)) / 2. Pairs: all N^2 ordered pairs
including i = j, as the paper's 1/N^2 (``include_diagonal=True``, the default; the
diagonal contributes 0, so a set of N orthogonal vectors scores (1 - 1/N) / 2, not 0.5); with
``include_diagonal=False`` the N(N-1) pairs i != j. Cosines cost O(N*K)
(:func:`attnviz.analysis.stats.avg_cosine_distance`); the JSD is exact, O(N^2 K) time in
blocks of rows (:func:`attnviz.analysis.stats.avg_jsd`).

JSD only where rows are distributions: the embedded Gaussian and Gaussian instantiations
(softmax rows). Dot-product rows f/N can be negative and concatenation rows ReLU(.)/N do not
sum to 1, so ``jsd_att`` is NaN there (with a note): the divergence of re-normalised rows would
describe weights the block never used. Whether rows are distributions is checked on the data
(non-negative, row sums 1 within 1e-4), not assumed from the class. ``cos_att`` is defined for
all four (cosine ignores the 1/N scale); an all-zero row (possible with ReLU) has cosine 0
with every row, as in ``F.normalize``.

Full-size maps: the exact JSD is O(N^2 K) per map (N^2 K / 2 = 1.5e10 entropy terms at
N = K = 3136, a 56x56 site). Above ``exact_rows`` query rows (default 256, a 16x16 grid such
as the bundled nl_tiny's, whose exact mean costs 8e6 terms; a 28x28 site would already cost
2.4e8) ``jsd_att`` is estimated from ``jsd_pairs`` (default 2048) pairs drawn uniformly from
the same pairs, 2048 x K terms, seeded per image and site by (``seed``, the image's source
position, the site's index) so that batch size, resume and sharding do not change it
(:func:`attnviz.analysis.stats.sampled_jsd`). ``jsd_att_se`` holds each image's standard
error of the estimate (0 where exact); the table shows the standard error of the mean over
images, sqrt(sum se_i^2) / n, beside the std over images. At or below ``exact_rows`` rows
the pairs are sampled too where the printed mean does not need the exact value: an image's
sampled JSD is kept when its standard error is at most ``jsd_se * sqrt(n)`` (n the images
of the run; ``jsd_se`` default 5e-4, half a unit of the third decimal the tables print), so
the standard error of the mean stays within ``jsd_se``; otherwise (and for a single image,
or a map with fewer than ``jsd_pairs`` pairs) it is exact. At nl_tiny's 256 rows the
sample costs a tenth of the exact mean. ``exact=True`` forces the exact blocked computation
everywhere. The cosines are O(N K) and always exact.

Degeneracy beside the GCNet statistics (DESIGN.md section 7: query statistics must be read
beside the entropy of the rows), per Non-local site and image
(:func:`attnviz.analysis.stats.row_degeneracy`): ``row_entropy`` (mean row entropy, nats),
``eff_keys`` = exp(row_entropy) (1 = one-hot, Nk = uniform), ``max_weight`` (median largest
weight of a row) and ``argmax_keys`` (distinct keys that are some row's argmax). A site whose
mean ``eff_keys`` is below ``NEAR_ONE_HOT_KEYS`` = 2 (row entropy below ln 2) is flagged
"near one-hot" in the table and the summary: its rows are spikes, so a high cosine distance or
JSD says the spikes sit at different keys, not that broad maps differ.

Per-head token sites (kind ``token``: ViT, DeiT, PVT, Twins, torchvision ViT; ``bottleneck``;
(B, heads, Nq, Nk), see :mod:`attnviz.analysis.query_maps`): the same statistics for every head
apart and for the head mean (one column each: ``head`` 0 .. H-1 and "mean", labelled
``ALIAS/h0`` ... ``ALIAS/mean``). The queries are the patch tokens only; a row is taken whole
(the weights on prefix keys included), so it is the distribution the softmax gave. The prefix
tokens are reported apart: ``prefix_mass``, the mean weight a patch query puts on the prefix
keys (class, register... tokens), and ``prefix_cos``, the mean over patch queries i of
(1 - cos(w_0, w_i)) / 2 between the first prefix token's row (the class token) and row i.
``cos_input`` / ``cos_output`` belong to the layer, not to a head: they fill the "mean" column
only. x_i is the site module's input at patch token i; o_i its output there: timm's attention
modules return the attention branch before the residual (z = x + attn(norm(x))), so nothing
is subtracted (at torchvision's ViT the site is the whole encoder block, whose output holds the
residual and the MLP). Windowed kinds (Swin ``window``, HaloNet ``halo``) are not measured
here: rows of different windows have disjoint keys, so the statistics would mostly count
windows (their maps: :func:`attnviz.analysis.query_maps.query_maps` and the viewer).

Companion statistic at GC sites (GCNet Eq. 4, one context map per image): ``entropy`` of the
map softmax_j(W_k x_j) in nats and ``entropy_norm`` = entropy / ln(HW) (1 = uniform).

Every statistic is computed per image, then ``to_frame`` gives mean and std (ddof=0) over
images; results do not depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..capture import Site, is_query_kind
from ..results import Result, from_records, records
from ._sites import (
    HEAD_MEAN,
    TokenLayout,
    choose_sites,
    has_heads,
    head_labels,
    is_windowed,
    with_head_mean,
)
from .query_maps import (
    QueryMapsResult,
    cell_centre,
    display_image,
    grid_queries,
    map_kinds,
    site_record,
    token_rows,
    upsample,
)
from .runner import Analysis, RunInfo, State, run
from .stats import attention_statistics, avg_cosine_distance, entropy_stats

NL_METRICS = ("cos_input", "cos_output", "cos_att", "jsd_att")
DEGENERACY_METRICS = ("row_entropy", "eff_keys", "max_weight", "argmax_keys")
GC_METRICS = ("entropy", "entropy_norm")
TOKEN_METRICS = ("prefix_mass", "prefix_cos")
EXACT_ROWS = 256  # above this many query rows the JSD is sampled (unless exact=True)
JSD_PAIRS = 2048  # pairs of the sampled JSD
#: target standard error of a site's jsd_att mean over images: half a unit of the third
#: decimal, the precision the tables and figures print
JSD_SE = 5e-4
NEAR_ONE_HOT_KEYS = 2.0  # a site whose mean effective number of keys is below is near one-hot
MAX_FIGURE_QUERIES = 16  # query maps a figure row can show legibly
PAPER_TABLE1 = pd.DataFrame(
    [
        {
            "instantiation": "embedded_gaussian",
            "source": "GCNet Table 1 (COCO)",
            "cos_input": 0.402,
            "cos_output": 0.012,
            "cos_att": 0.020,
            "jsd_att": 0.011,
        }
    ]
)


@dataclass
class QueryIndependenceResult(Result):
    """Per-image statistics of every Non-local / GC site of one model.

    ``values[metric]`` is an (n_images, n_sites) float64 array, NaN where the metric does not
    apply to a site (GC metrics at Non-local sites, ``jsd_att`` for non-distribution rows);
    ``sites`` describes the sites (name, alias, kind, instantiation, query/key grid); a
    per-head site has one entry per head and one for the head mean (``head``: 0 .. H-1 or
    "mean", ``label`` "ALIAS/h0" ... "ALIAS/mean"); ``notes`` explains NaNs per site alias.
    """

    kind: ClassVar[str] = "query_independence"
    format_version: ClassVar[int] = 3

    model: str
    sites: list[dict[str, Any]]
    metrics: list[str]
    values: dict[str, np.ndarray]
    include_diagonal: bool = True
    notes: dict[str, str] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    map_site: dict[str, Any] | None = None
    map_cells: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    map_images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.uint8))
    map_grid_maps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0), np.float32))
    meta: dict[str, Any] = field(default_factory=dict)
    jsd_se: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    exact_rows: int | None = EXACT_ROWS
    jsd_pairs: int = JSD_PAIRS
    seed: int = 0

    @property
    def n_images(self) -> int:
        return int(next(iter(self.values.values())).shape[0]) if self.values else 0

    def to_frame(self) -> pd.DataFrame:
        """One row per site (per head and head mean at per-head sites, with ``alias`` and
        ``head`` columns): model, site, kind, instantiation, n_images, <metric>_mean/_std."""
        rows = []
        heads = any("head" in site for site in self.sites)
        for s, site in enumerate(self.sites):
            row: dict[str, Any] = {
                "model": self.model,
                "site": site_label(site),
                **({"alias": site["alias"], "head": site.get("head")} if heads else {}),
                "name": site["name"],
                "kind": site["kind"],
                "instantiation": site.get("instantiation"),
                "n_images": self.n_images,
            }
            for m in self.metrics:
                col = self.values[m][:, s]
                ok = col[~np.isnan(col)]
                row[f"{m}_mean"] = float(ok.mean()) if ok.size else math.nan
                row[f"{m}_std"] = float(ok.std()) if ok.size else math.nan
            if "jsd_att" in self.metrics:
                se = self.jsd_se[:, s] if self.jsd_se.size else np.zeros(0)
                ok = se[~np.isnan(self.values["jsd_att"][:, s])] if se.size else se
                row["jsd_att_se"] = float(np.sqrt(np.sum(ok**2)) / ok.size) if ok.size else math.nan
                row["jsd_att_sampled"] = int((ok > 0).sum())  # images whose JSD was sampled
            if "eff_keys" in self.metrics:
                row["near_one_hot"] = bool(row["eff_keys_mean"] < NEAR_ONE_HOT_KEYS)
            rows.append(row)
        return pd.DataFrame(rows)

    def effects(self) -> pd.DataFrame:
        """Every statistic of every site as an effect: keys site, metric; ``effect`` the mean
        over images, ``se`` its standard error over images (std ddof=1 / sqrt(n); for a
        sampled ``jsd_att`` the pair-sampling error added in quadrature), ``n`` the images."""
        rows = []
        for s, site in enumerate(self.sites):
            for m in self.metrics:
                col = self.values[m][:, s]
                ok = np.isfinite(col)
                n = int(ok.sum())
                mean = float(col[ok].mean()) if n else math.nan
                se = float(col[ok].std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
                if m == "jsd_att" and self.jsd_se.size and n:
                    pair = self.jsd_se[ok, s]
                    se = math.sqrt(se**2 + float(np.sum(pair**2)) / n**2) if n > 1 else se
                rows.append(
                    {"site": site_label(site), "metric": m, "effect": mean, "se": se, "n": n}
                )
        return pd.DataFrame(rows, columns=["site", "metric", "effect", "se", "n"])

    def near_one_hot(self) -> list[str]:
        """Aliases of the sites whose rows are near one-hot (mean eff_keys < 2)."""
        frame = self.to_frame()
        if "near_one_hot" not in frame:
            return []
        return frame.loc[frame["near_one_hot"].astype(bool), "site"].tolist()

    def per_image_frame(self) -> pd.DataFrame:
        """Long table: one row per (image, site) with every metric."""
        rows = []
        for i in range(self.n_images):
            for s, site in enumerate(self.sites):
                row = {"model": self.model, "image": i, "site": site_label(site)}
                row.update({m: float(self.values[m][i, s]) for m in self.metrics})
                rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Mean and std over images of every statistic, one row per site; the standard error
        of sampled JSDs; which sites are near one-hot."""
        frame = self.to_frame()
        cols = ["site", "kind", "instantiation"] + [
            c
            for c in frame.columns
            if c.endswith("_mean") or c.endswith("_std") or c in ("jsd_att_se", "near_one_hot")
        ]
        pairs = "pairs include i = j" if self.include_diagonal else "pairs i != j"
        head = f"{self.model}: {self.n_images} images ({len(self.skipped)} skipped), {pairs}"
        with pd.option_context("display.width", 250, "display.max_columns", 40):
            table = frame[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}")
        lines = [head, table]
        if "jsd_att_sampled" in frame and frame["jsd_att_sampled"].any():
            sampled = frame.loc[frame["jsd_att_sampled"].astype(bool), "site"].tolist()
            lines.append(
                f"jsd_att sampled at {', '.join(sampled)} ({self.jsd_pairs} random pairs per "
                f"image, seed {self.seed}; above {self.exact_rows} query rows, and below it where "
                "the mean's standard error stays within the target jsd_se): "
                "jsd_att_se is the standard error of the mean over images; exact=True / "
                "--exact computes it exactly"
            )
        for site in self.near_one_hot():
            row = frame[frame["site"] == site].iloc[0]
            lines.append(
                f"{site}: NEAR ONE-HOT rows: effective number of keys "
                f"{row['eff_keys_mean']:.2f}, median largest weight {row['max_weight_mean']:.3f}, "
                f"{row['argmax_keys_mean']:.1f} distinct argmax keys of "
                f"{self.sites[self._site_pos(site)].get('n_keys', '?')}: cosine distance and "
                "JSD measure spikes at different keys, not broad maps that differ"
            )
        lines += [f"{site}: {note}" for site, note in self.notes.items()]
        return "\n".join(lines)

    def _site_pos(self, alias: str) -> int:
        return [site_label(s) for s in self.sites].index(alias)

    def query_maps(self) -> list[QueryMapsResult]:
        """The per-query maps kept for figures (one :class:`QueryMapsResult` per image)."""
        if self.map_site is None:
            return []
        out = []
        for image, grid_maps in zip(self.map_images, self.map_grid_maps):
            size = image.shape[:2]
            grid = tuple(self.map_site.get("query_grid") or (0, 0))
            gc = self.map_site["kind"] == "gc"
            cells = np.zeros((0, 2), np.int64) if gc else self.map_cells
            out.append(
                QueryMapsResult(
                    image=image,
                    maps=np.stack([upsample(m, size) for m in grid_maps]),
                    grid_maps=grid_maps,
                    query_cells=cells,
                    query_pixels=np.asarray(
                        [cell_centre(tuple(c), grid, size) for c in cells], np.float64
                    ).reshape(-1, 2),
                    site=self.map_site,
                    is_distribution=bool(self.map_site.get("is_distribution", False)),
                    meta={"query_space": "cell", "input_size": list(size)},
                )
            )
        return out

    def _payload(self):
        arrays = dict(self.values)
        arrays.update(
            {
                "jsd::se": self.jsd_se,
                "maps::cells": self.map_cells,
                "maps::images": self.map_images,
                "maps::grid_maps": self.map_grid_maps,
            }
        )
        fields = {
            "model": self.model,
            "sites": self.sites,
            "metrics": self.metrics,
            "include_diagonal": self.include_diagonal,
            "notes": self.notes,
            "ids": self.ids,
            "skipped": records(self.skipped),
            "map_site": self.map_site,
            "meta": self.meta,
            "exact_rows": self.exact_rows,
            "jsd_pairs": self.jsd_pairs,
            "seed": self.seed,
        }
        frames = {"statistics.csv": self.to_frame(), "per_image.csv": self.per_image_frame()}
        return arrays, frames, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        metrics = list(manifest["metrics"])
        return cls(
            model=manifest["model"],
            sites=manifest["sites"],
            metrics=metrics,
            values={m: arrays[m] for m in metrics},
            include_diagonal=bool(manifest["include_diagonal"]),
            notes=manifest.get("notes", {}),
            ids=list(manifest.get("ids", [])),
            skipped=from_records(manifest.get("skipped")),
            map_site=manifest.get("map_site"),
            map_cells=arrays["maps::cells"],
            map_images=arrays["maps::images"],
            map_grid_maps=arrays["maps::grid_maps"],
            meta=dict(manifest.get("meta", {})),
            jsd_se=arrays.get("jsd::se", np.zeros((0, 0))),
            exact_rows=manifest.get("exact_rows", EXACT_ROWS),
            jsd_pairs=int(manifest.get("jsd_pairs", JSD_PAIRS)),
            seed=int(manifest.get("seed", 0)),
        )


def site_label(site: dict[str, Any]) -> str:
    """A site entry's name in tables: its alias, "ALIAS/hK" or "ALIAS/mean" for a head."""
    head = site.get("head")
    if head is None:
        return str(site["alias"])
    return f"{site['alias']}/{head if head == HEAD_MEAN else f'h{head}'}"


# -- per-image statistics ------------------------------------------------------------------------
def nonlocal_statistics(
    x: Tensor,
    output: Tensor,
    att: Tensor,
    metrics: Sequence[str] = NL_METRICS,
    *,
    include_diagonal: bool = True,
    exact_rows: int | None = EXACT_ROWS,
    jsd_pairs: int = JSD_PAIRS,
    seed: int | Sequence[int] = 0,
    max_se: float | None = None,
) -> dict[str, float]:
    """GCNet's statistics for one image: x, output (C, H, W) of the block, att (N, Nk).

    o = output - x (the block output before the residual). ``jsd_att`` is NaN when the rows
    are not distributions; with more than ``exact_rows`` rows (None: never) it is sampled
    from ``jsd_pairs`` pairs seeded by ``seed``, and ``jsd_att_se`` is its standard error
    (0 when exact); up to ``exact_rows`` too where that standard error is at most ``max_se``
    (:func:`attnviz.analysis.stats.attention_statistics`). The degeneracy figures
    (``row_entropy``, ``eff_keys``, ``max_weight``, ``argmax_keys``) are always added.
    """
    c, h, w = x.shape
    n = h * w
    if att.shape[0] != n:
        raise ValueError(f"attention has {att.shape[0]} query rows but the input has {h}x{w}={n}")
    if output.shape != x.shape:
        raise ValueError(
            f"the site's output {tuple(output.shape)} differs from its input {tuple(x.shape)}: "
            "o_i = z_i - x_i needs a residual block (z = W_z y + x)"
        )
    x64 = x.double().reshape(c, n).T
    out: dict[str, float] = {}
    for m in metrics:
        if m not in NL_METRICS:
            raise ValueError(f"unknown metric {m!r}; valid: {NL_METRICS}")
    if "cos_input" in metrics:
        out["cos_input"] = avg_cosine_distance(x64, include_diagonal=include_diagonal)
    if "cos_output" in metrics:
        o = (output.double() - x.double()).reshape(c, n).T
        out["cos_output"] = avg_cosine_distance(o, include_diagonal=include_diagonal)
    stats = attention_statistics(
        att,
        include_diagonal=include_diagonal,
        exact_rows=exact_rows,
        pairs=jsd_pairs,
        seed=seed,
        max_se=max_se,
        jsd="jsd_att" in metrics,
        cos="cos_att" in metrics,
    )
    return out | stats


def _patch_tokens(t: Tensor, layout: TokenLayout) -> Tensor | None:
    """One image's site input or output as (N, C) patch tokens: (tokens, C) with the prefix
    dropped, or a (C, H, W) map flattened; None when it does not hold the query patches."""
    n = layout.query_grid[0] * layout.query_grid[1]
    if t.dim() == 2 and t.shape[0] == layout.prefix + n:
        return t[layout.prefix :].double()
    if t.dim() == 3 and t.shape[1] * t.shape[2] == n:
        return t.double().reshape(t.shape[0], n).T
    return None


def token_statistics(
    x: Tensor | None,
    output: Tensor | None,
    att: Tensor,
    layout: TokenLayout,
    metrics: Sequence[str] = NL_METRICS,
    *,
    include_diagonal: bool = True,
    seed: int | Sequence[int] = 0,
    **options: Any,
) -> list[dict[str, float]]:
    """GCNet's statistics at a per-head site for one image: one dict per head, then the head
    mean (see the module docstring). ``att`` (heads, Nq, Nk) with the prefix tokens;
    ``x`` / ``output``: the site module's input and output (None: no ``cos_input`` /
    ``cos_output``); ``options``: those of :func:`attnviz.analysis.stats.attention_statistics`
    (``exact_rows``, ``pairs``), seeded per head by ``(*seed, head)``."""
    rows = with_head_mean(att.double() if att.dtype == torch.float64 else att.float())
    patch = rows[:, layout.patch_rows()]  # (H + 1, N, Nk): whole rows of the patch queries
    seed = tuple(seed) if isinstance(seed, Sequence) else (seed,)
    out = []
    for h in range(patch.shape[0]):
        st = attention_statistics(
            patch[h],
            include_diagonal=include_diagonal,
            seed=(*seed, h),
            jsd="jsd_att" in metrics,
            cos="cos_att" in metrics,
            **options,
        )
        st["prefix_mass"] = (
            float(layout.prefix_keys(patch[h]).double().sum(-1).mean())
            if layout.key_prefix
            else math.nan
        )
        st["prefix_cos"] = math.nan
        if layout.prefix:
            u = F.normalize(patch[h].double(), dim=1).mean(0)
            c = F.normalize(rows[h, 0].double(), dim=0)
            st["prefix_cos"] = float((1.0 - c @ u) / 2.0)
        out.append(st)
    for m, t in (("cos_input", x), ("cos_output", output)):
        tokens = None if t is None else _patch_tokens(t, layout)
        if m in metrics:
            out[-1][m] = (
                math.nan
                if tokens is None
                else avg_cosine_distance(tokens, include_diagonal=include_diagonal)
            )
            for st in out[:-1]:
                st[m] = math.nan
    return out


def gc_statistics(context_map: Tensor) -> dict[str, float]:
    """Entropy (nats) and normalised entropy of one GC context map (H, W)."""
    h, hn = entropy_stats(context_map.reshape(1, -1))
    return {"entropy": float(h[0]), "entropy_norm": float(hn[0])}


# -- the analysis ---------------------------------------------------------------------------------
class QueryIndependence(Analysis):
    """GCNet Table 1 statistics per image, and (optionally) query maps for figures, from the
    same forward."""

    name = "query_independence"

    def __init__(
        self,
        sites: Iterable[str | Site] | str | None = None,
        metrics: Sequence[str] = NL_METRICS,
        include_diagonal: bool = True,
        n_queries: int = 4,
        map_images: int = 0,
        map_site: str | None = None,
        model_name: str | None = None,
        exact: bool = False,
        exact_rows: int = EXACT_ROWS,
        jsd_pairs: int = JSD_PAIRS,
        seed: int = 0,
        jsd_se: float = JSD_SE,
    ):
        metrics = list(metrics)
        for m in metrics:
            if m not in NL_METRICS:
                raise ValueError(f"unknown metric {m!r}; valid: {NL_METRICS}")
        if n_queries < 1 or map_images < 0:
            raise ValueError("n_queries must be >= 1 and map_images >= 0")
        if n_queries > MAX_FIGURE_QUERIES:
            raise ValueError(
                f"n_queries={n_queries}: the query-map figure shows at most "
                f"{MAX_FIGURE_QUERIES} query points per image"
            )
        if exact_rows < 1 or jsd_pairs < 2 or not jsd_se >= 0:
            raise ValueError("exact_rows must be >= 1, jsd_pairs >= 2 and jsd_se >= 0")
        self.jsd_se = float(jsd_se)
        self.exact, self.exact_rows, self.jsd_pairs, self.seed = (
            bool(exact),
            int(exact_rows),
            int(jsd_pairs),
            int(seed),
        )
        self.selection, self.metrics, self.include_diagonal = sites, metrics, include_diagonal
        self.n_queries, self.map_images, self.map_selection = n_queries, map_images, map_site
        self.model_name = model_name
        self.keep_images = map_images > 0

    def sites(self, model: nn.Module) -> list[Site]:
        kinds = [k for k in map_kinds() if not is_windowed(k)]  # rows over a key grid
        self._sites = choose_sites(
            model, kinds, self.selection, what="per-query (Non-local) or GC site"
        )
        self._map_site = None
        if self.map_images:
            key = self.map_selection
            pool = [s for s in self._sites if key in (None, s.name, s.alias)]
            if not pool:
                valid = ", ".join(s.alias for s in self._sites)
                raise ValueError(f"unknown site {key!r} for the query maps; valid: {valid}")
            self._map_site = pool[0]
        self._model_name = self.model_name or type(model).__name__
        has_nl = any(is_query_kind(s.kind) for s in self._sites)
        has_gc = any(s.kind == "gc" for s in self._sites)
        has_tok = any(has_heads(s.kind) for s in self._sites)
        nl = self.metrics + list(DEGENERACY_METRICS) if has_nl else []
        self._all_metrics = nl + (list(TOKEN_METRICS) if has_tok else [])
        self._all_metrics += list(GC_METRICS) if has_gc else []
        # the columns of the values: one per site, or one per head and the head mean
        self._columns: list[tuple[int, int | str | None]] = []
        for s, site in enumerate(self._sites):
            if not has_heads(site.kind):
                self._columns.append((s, None))
                continue
            if "heads" not in site.info:
                raise ValueError(f"site {site.alias} ({site.kind}) does not say its heads")
            self._columns += [(s, h) for h in head_labels(site.info["heads"])]
        return self._sites

    def _cols(self, s: int) -> list[int]:
        return [c for c, (site, _) in enumerate(self._columns) if site == s]

    def params(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "include_diagonal": self.include_diagonal,
            "n_queries": self.n_queries,
            "map_images": self.map_images,
            "exact": self.exact,
            "exact_rows": self.exact_rows,
            "jsd_pairs": self.jsd_pairs,
            "seed": self.seed,
            "jsd_se": self.jsd_se,
        }

    def capture_options(self) -> dict[str, Any]:
        return {"io": True}

    def step(self, state: State, batch, cache, output) -> None:
        b = len(batch)
        rows = {m: np.full((b, len(self._columns)), np.nan) for m in self._all_metrics}
        se = np.full((b, len(self._columns)), np.nan)
        for s, site in enumerate(self._sites):
            att = cache[site.name]
            if site.kind == "gc":
                for i in range(b):
                    for m, v in gc_statistics(att[i]).items():
                        rows[m][i, self._cols(s)[0]] = v
                continue
            if has_heads(site.kind):
                self._token_step(state, batch, cache, s, rows, se)
                continue
            s_col = self._cols(s)[0]
            xs, outs = cache.inputs(site.name), cache.outputs(site.name)
            meta = cache.meta.get(site.name, {})
            state.info.setdefault(
                f"grid::{site.name}",
                {
                    "query_grid": list(meta.get("query_grid", xs.shape[-2:])),
                    "key_grid": list(meta.get("key_grid") or []),
                    "n_keys": int(att.shape[-1]),
                },
            )
            for i in range(b):
                st = nonlocal_statistics(
                    xs[i],
                    outs[i],
                    att[i],
                    self.metrics,
                    include_diagonal=self.include_diagonal,
                    exact_rows=None if self.exact else self.exact_rows,
                    jsd_pairs=self.jsd_pairs,
                    seed=(self.seed, batch.records[i].index, s),
                    max_se=self._max_se(),
                )
                se[i, s_col] = st.pop("jsd_att_se", np.nan)
                for m, v in st.items():
                    rows[m][i, s_col] = v
                if "jsd_att" in st and math.isnan(st["jsd_att"]):
                    state.info[f"note::{site.alias}"] = (
                        "jsd_att not reported: attention rows are not probability "
                        "distributions (negative or not summing to 1), as in the "
                        "dot-product and concatenation instantiations"
                    )
        for i, r in enumerate(batch.records):
            state.put("id", r.index, np.asarray(r.id))
            for m in self._all_metrics:
                state.put(m, r.index, rows[m][i])
            state.put("jsd::se", r.index, se[i])
        if self._map_site is not None:
            self._keep_maps(state, batch, cache)

    def _max_se(self) -> float | None:
        """Each image's JSD may be sampled where its standard error is at most
        ``jsd_se * sqrt(n)``: the s.e. of the mean over the run's n images,
        sqrt(sum se_i^2) / n, then stays at most ``jsd_se``."""
        if self.exact or not self.n_items:
            return None
        return self.jsd_se * math.sqrt(self.n_items)

    def _token_step(self, state: State, batch, cache, s: int, rows, se) -> None:
        """The statistics of one per-head site, per head and head mean (columns of site s)."""
        site = self._sites[s]
        att = cache[site.name]
        layout = TokenLayout.of(att, cache.meta.get(site.name, {}))
        cols = self._cols(s)
        if att.shape[1] + 1 != len(cols):
            raise ValueError(
                f"site {site.alias}: {att.shape[1]} heads captured, {len(cols) - 1} declared"
            )
        state.info.setdefault(
            f"grid::{site.name}",
            {
                "query_grid": list(layout.query_grid),
                "key_grid": list(layout.key_grid),
                "n_keys": int(att.shape[-1]),
                "prefix_tokens": layout.prefix,
                "prefix_names": list(layout.prefix_names),
            },
        )
        xs, outs = cache.inputs(site.name), cache.outputs(site.name)
        for i in range(len(batch)):
            per_head = token_statistics(
                xs[i],
                outs[i],
                att[i],
                layout,
                self.metrics,
                include_diagonal=self.include_diagonal,
                seed=(self.seed, batch.records[i].index, s),
                exact_rows=None if self.exact else self.exact_rows,
                pairs=self.jsd_pairs,
                max_se=self._max_se(),
            )
            for col, st in zip(cols, per_head):
                se[i, col] = st.pop("jsd_att_se", np.nan)
                for m, v in st.items():
                    if m in rows:
                        rows[m][i, col] = v
            if "jsd_att" in per_head[-1] and math.isnan(per_head[-1]["jsd_att"]):
                state.info[f"note::{site.alias}"] = (
                    "jsd_att and the row entropies not reported: the rows are not probability "
                    "distributions (e.g. talking-heads attention mixes heads after the softmax)"
                )

    def _keep_maps(self, state: State, batch, cache) -> None:
        site = self._map_site
        att = cache[site.name]
        if site.kind == "gc":
            grid_maps = att[:, None].numpy()
        else:
            meta = cache.meta.get(site.name, {})
            grid = tuple(int(v) for v in meta["query_grid"])
            kg = meta.get("key_grid") or grid
            if self.n_queries > grid[0] * grid[1]:
                raise ValueError(
                    f"n_queries={self.n_queries}: site {site.alias} has a {grid[0]}x{grid[1]} "
                    f"query grid, at most {grid[0] * grid[1]} query points"
                )
            cells = grid_queries(grid, self.n_queries)
            if len(set(cells)) < len(cells):  # evenly spread points repeat on a small grid
                most = max(
                    n for n in range(1, self.n_queries) if len(set(grid_queries(grid, n))) == n
                )
                raise ValueError(
                    f"n_queries={self.n_queries}: site {site.alias}'s {grid[0]}x{grid[1]} query "
                    f"grid holds at most {most} distinct evenly spread query points"
                )
            state.info["map_cells"] = [list(c) for c in cells]
            state.info["map_grid"] = list(grid)
            if has_heads(site.kind):  # the head mean on the key grid
                grid_maps = token_rows(att, TokenLayout.of(att, meta), cells)[0][:, :, -1]
            else:
                idx = [y * grid[1] + x for y, x in cells]
                grid_maps = att[:, idx].reshape(att.shape[0], len(idx), kg[0], kg[1]).numpy()
        kept = state.rows.get("map", {})
        for j, r in enumerate(batch.records):
            if r.index < self.map_images or len(kept) < self.map_images:
                state.put("map", r.index, grid_maps[j].astype(np.float32))
                disp = display_image(batch.images[j], batch.x[j], self.transform)
                state.put("map_image", r.index, disp)
                kept = state.rows["map"]

    def finalise(self, state: State, run: RunInfo) -> QueryIndependenceResult:
        site_dicts = []
        for s, head in self._columns:
            d = site_record(self._sites[s])
            d.update(state.info.get(f"grid::{self._sites[s].name}", {}))
            if head is not None:
                d["head"] = head
                d["label"] = site_label(d)
            site_dicts.append(d)
        n_cols = len(self._columns)
        values = {
            m: state.stacked(m)[1].reshape(-1, n_cols).astype(np.float64) for m in self._all_metrics
        }
        notes = {k.split("::", 1)[1]: v for k, v in state.info.items() if k.startswith("note::")}
        result = QueryIndependenceResult(
            model=self._model_name,
            sites=site_dicts,
            metrics=list(self._all_metrics),
            values=values,
            include_diagonal=self.include_diagonal,
            notes=notes,
            ids=[str(v) for v in state.stacked("id")[1]],
            skipped=run.skipped,
            jsd_se=state.stacked("jsd::se")[1].reshape(-1, n_cols).astype(np.float64)
            if "jsd_att" in self._all_metrics
            else np.zeros((0, 0)),
            exact_rows=None if self.exact else self.exact_rows,
            jsd_pairs=self.jsd_pairs,
            seed=self.seed,
        )
        if self._map_site is not None and "map" in state.rows:
            idx, maps = state.stacked("map")
            order = np.argsort(idx)[: self.map_images]
            site = site_record(self._map_site)
            site["query_grid"] = state.info.get("map_grid")
            flat = maps.reshape(*maps.shape[:2], -1).astype(np.float64)
            site["is_distribution"] = bool(
                flat.size and (flat >= 0).all() and np.allclose(flat.sum(-1), 1.0, atol=1e-4)
            )
            result.map_site = site
            result.map_cells = np.asarray(state.info.get("map_cells", []), np.int64).reshape(-1, 2)
            result.map_grid_maps = maps[order]
            result.map_images = state.stacked("map_image")[1][order]
        return result


def query_independence(
    model: nn.Module,
    images: Any,
    *,
    sites: Iterable[str | Site] | str | None = None,
    metrics: Sequence[str] = NL_METRICS,
    include_diagonal: bool = True,
    model_name: str | None = None,
    n_queries: int = 4,
    map_images: int = 0,
    map_site: str | None = None,
    exact: bool = False,
    exact_rows: int = EXACT_ROWS,
    jsd_pairs: int = JSD_PAIRS,
    seed: int = 0,
    jsd_se: float = JSD_SE,
    **run_options: Any,
) -> QueryIndependenceResult:
    """GCNet Table 1 statistics at every per-query site (and entropy at GC sites) of ``model``.

    ``images``: anything :func:`attnviz.analysis.runner.run` reads (folder, paths, a
    (N, 3, H, W) tensor of prepared inputs, Dataset, DataLoader). ``sites``: names or aliases
    (default: all per-query and GC sites). ``map_images`` > 0 also keeps, from the same
    forward, the maps of ``n_queries`` evenly spread query cells at ``map_site`` (default the
    first site) for that many images (:meth:`QueryIndependenceResult.query_maps`); at most
    ``MAX_FIGURE_QUERIES`` (16) and at most the site's grid cells, else ValueError.
    Above ``exact_rows`` query rows the JSD is estimated from ``jsd_pairs`` seeded random
    pairs with a standard error, and below wherever the standard error of the mean over
    images stays at most ``jsd_se``; ``exact=True`` computes it exactly everywhere (see the
    module docstring). The degeneracy figures are always reported at Non-local sites.
    ``run_options``: those of :func:`attnviz.analysis.runner.run`.
    """
    analysis = QueryIndependence(
        sites,
        metrics,
        include_diagonal,
        n_queries,
        map_images,
        map_site,
        model_name,
        exact=exact,
        exact_rows=exact_rows,
        jsd_pairs=jsd_pairs,
        seed=seed,
        jsd_se=jsd_se,
    )
    result = run(analysis, model, images, **run_options)
    assert isinstance(result, QueryIndependenceResult)
    return result


__all__ = [
    "DEGENERACY_METRICS",
    "EXACT_ROWS",
    "GC_METRICS",
    "JSD_SE",
    "MAX_FIGURE_QUERIES",
    "NL_METRICS",
    "PAPER_TABLE1",
    "QueryIndependenceResult",
    "TOKEN_METRICS",
    "site_label",
    "token_statistics",
    "gc_statistics",
    "nonlocal_statistics",
    "query_independence",
]
