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
with every row, as in ``torch.nn.functional.normalize``.

Companion statistic at GC sites (GCNet Eq. 4, one context map per image): ``entropy`` of the
map softmax_j(W_k x_j) in nats and ``entropy_norm`` = entropy / ln(HW) (1 = uniform).

Every statistic is computed per image, then ``to_frame`` gives mean and std (ddof=0) over
images; results do not depend on the batch size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..capture import capture, is_query_kind, query_kinds
from ..capture.core import select_sites
from ..data.sources import image_source, iter_batches
from ..results import load_result_dir, save_result_dir, versions
from ._eval_mode import eval_mode
from .query_maps import prepare_image, site_record
from .stats import avg_cosine_distance, avg_jsd, entropy_stats, is_distribution

NL_METRICS = ("cos_input", "cos_output", "cos_att", "jsd_att")
GC_METRICS = ("entropy", "entropy_norm")
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
class QueryIndependenceResult:
    """Per-image statistics of every Non-local / GC site of one model.

    ``values[metric]`` is an (n_images, n_sites) float64 array, NaN where the metric does not
    apply to a site (GC metrics at Non-local sites, ``jsd_att`` for non-distribution rows);
    ``sites`` describes the sites (name, alias, kind, instantiation, query/key grid);
    ``notes`` explains NaNs per site alias.
    """

    model: str
    sites: list[dict[str, Any]]
    metrics: list[str]
    values: dict[str, np.ndarray]
    include_diagonal: bool = True
    notes: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(next(iter(self.values.values())).shape[0]) if self.values else 0

    def to_frame(self) -> pd.DataFrame:
        """One row per site: model, site, kind, instantiation, n_images, <metric>_mean/_std."""
        rows = []
        for s, site in enumerate(self.sites):
            row: dict[str, Any] = {
                "model": self.model,
                "site": site["alias"],
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
            rows.append(row)
        return pd.DataFrame(rows)

    def per_image_frame(self) -> pd.DataFrame:
        """Long table: one row per (image, site) with every metric."""
        rows = []
        for i in range(self.n_images):
            for s, site in enumerate(self.sites):
                row = {"model": self.model, "image": i, "site": site["alias"]}
                row.update({m: float(self.values[m][i, s]) for m in self.metrics})
                rows.append(row)
        return pd.DataFrame(rows)

    def save(self, directory: str | Path) -> Path:
        """Write ``values.npz``, ``statistics.csv``, ``per_image.csv``, ``manifest.json``
        atomically (temp dir, then ``os.replace``)."""
        manifest = {
            "type": "QueryIndependenceResult",
            "model": self.model,
            "sites": self.sites,
            "metrics": self.metrics,
            "include_diagonal": self.include_diagonal,
            "notes": self.notes,
            "info": self.info,
            "versions": versions(),
        }
        frames = {"statistics.csv": self.to_frame(), "per_image.csv": self.per_image_frame()}
        return save_result_dir(
            directory, arrays=self.values, frames=frames, manifest=manifest, npz_name="values.npz"
        )

    @classmethod
    def load(cls, directory: str | Path) -> QueryIndependenceResult:
        manifest, values = load_result_dir(directory, "values.npz")
        return cls(
            model=manifest["model"],
            sites=manifest["sites"],
            metrics=list(manifest["metrics"]),
            values=values,
            include_diagonal=bool(manifest["include_diagonal"]),
            notes=manifest.get("notes", {}),
            info=manifest.get("info", {}),
        )


# -- per-image statistics ------------------------------------------------------------------------
def nonlocal_statistics(
    x: Tensor,
    output: Tensor,
    att: Tensor,
    metrics: Sequence[str] = NL_METRICS,
    *,
    include_diagonal: bool = True,
) -> dict[str, float]:
    """GCNet's statistics for one image: x, output (C, H, W) of the block, att (N, Nk).

    o = output - x (the block output before the residual). ``jsd_att`` is NaN when the rows
    are not distributions.
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
        if m == "cos_input":
            out[m] = avg_cosine_distance(x64, include_diagonal=include_diagonal)
        elif m == "cos_output":
            o = (output.double() - x.double()).reshape(c, n).T
            out[m] = avg_cosine_distance(o, include_diagonal=include_diagonal)
        elif m == "cos_att":
            out[m] = avg_cosine_distance(att, include_diagonal=include_diagonal)
        elif m == "jsd_att":
            out[m] = (
                avg_jsd(att, include_diagonal=include_diagonal)
                if is_distribution(att)
                else math.nan
            )
        else:
            raise ValueError(f"unknown metric {m!r}; valid: {NL_METRICS}")
    return out


def gc_statistics(context_map: Tensor) -> dict[str, float]:
    """Entropy (nats) and normalised entropy of one GC context map (H, W)."""
    h, hn = entropy_stats(context_map.reshape(1, -1))
    return {"entropy": float(h[0]), "entropy_norm": float(hn[0])}


# -- the analysis ----------------------------------------------------------------------------------
def _batches(images: Any, batch_size: int, preprocess: Any) -> Iterator[Tensor]:
    """Batches (B, 3, H, W) from a tensor batch or any input of :func:`image_source`."""
    if isinstance(images, Tensor):
        if images.dim() == 3:
            images = images[None]
        for start in range(0, images.shape[0], batch_size):
            yield images[start : start + batch_size]
        return
    source = image_source(images, id_style="path")
    for batch in iter_batches(source, batch_size, lambda img: prepare_image(img, preprocess)[0]):
        if batch.skipped:
            reasons = "; ".join(f"{i}: {r}" for i, r in batch.skipped)
            raise ValueError(f"unusable images: {reasons}")
        if batch.indices:
            yield batch.x


def query_independence(
    model: nn.Module,
    images: Any,
    *,
    sites: Sequence[str] | None = None,
    metrics: Sequence[str] = NL_METRICS,
    batch_size: int = 8,
    progress: bool = True,
    include_diagonal: bool = True,
    preprocess: Any = None,
    model_name: str | None = None,
) -> QueryIndependenceResult:
    """GCNet Table 1 statistics at every Non-local site (and entropy at GC sites) of ``model``.

    ``images``: a tensor (B, 3, H, W) of model inputs, or anything
    :func:`attnviz.data.sources.image_source` reads (folder, paths, Dataset / list of PIL
    images, arrays, tensors or (image, label) pairs, DataLoader); non-tensors go through
    ``preprocess`` (see :func:`attnviz.analysis.query_maps.prepare_image`); an unusable image
    raises. ``sites``: names or aliases (default: all Non-local and GC sites). Images are
    streamed: ``batch_size`` at a time, the cache is cleared after each batch. The model runs
    in eval mode (its mode is restored).
    """
    metrics = list(metrics)
    for m in metrics:
        if m not in NL_METRICS:
            raise ValueError(f"unknown metric {m!r}; valid: {NL_METRICS}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    selected = select_sites(model, kinds=[*query_kinds(), "gc"], sites=sites)
    site_objs = [s for s, _, _ in selected]
    has_gc = any(s.kind == "gc" for s in site_objs)
    has_nl = any(is_query_kind(s.kind) for s in site_objs)
    all_metrics = (metrics if has_nl else []) + (list(GC_METRICS) if has_gc else [])
    per_image: dict[str, list[list[float]]] = {m: [] for m in all_metrics}
    site_dicts = [site_record(s) for s in site_objs]
    notes: dict[str, str] = {}
    with eval_mode(model):
        bar = tqdm(desc="query independence", unit="img", disable=not progress)
        with capture(model, sites=[s.name for s in site_objs], io=True) as cache:
            for batch in _batches(images, batch_size, preprocess):
                with torch.no_grad():
                    model(batch)
                b = batch.shape[0]
                rows = {m: [[math.nan] * len(site_objs) for _ in range(b)] for m in all_metrics}
                for s, site in enumerate(site_objs):
                    att = cache[site.name]
                    if site.kind == "gc":
                        for i in range(b):
                            for m, v in gc_statistics(att[i]).items():
                                rows[m][i][s] = v
                        continue
                    xs, outs = cache.inputs(site.name), cache.outputs(site.name)
                    meta = cache.meta.get(site.name, {})
                    site_dicts[s]["query_grid"] = list(meta.get("query_grid", xs.shape[-2:]))
                    site_dicts[s]["key_grid"] = list(meta.get("key_grid") or [])
                    site_dicts[s]["n_keys"] = int(att.shape[-1])
                    for i in range(b):
                        st = nonlocal_statistics(
                            xs[i], outs[i], att[i], metrics, include_diagonal=include_diagonal
                        )
                        for m, v in st.items():
                            rows[m][i][s] = v
                        if "jsd_att" in st and math.isnan(st["jsd_att"]):
                            notes[site.alias] = (
                                "jsd_att not reported: attention rows are not probability "
                                "distributions (negative or not summing to 1), as in the "
                                "dot-product and concatenation instantiations"
                            )
                for m in all_metrics:
                    per_image[m].extend(rows[m])
                cache.clear()
                bar.update(b)
        bar.close()
    n = len(next(iter(per_image.values()))) if per_image else 0
    if n == 0:
        raise ValueError("no images were given")
    values = {
        m: np.asarray(v, dtype=np.float64).reshape(n, len(site_objs)) for m, v in per_image.items()
    }
    return QueryIndependenceResult(
        model=model_name or type(model).__name__,
        sites=site_dicts,
        metrics=all_metrics,
        values=values,
        include_diagonal=include_diagonal,
        notes=notes,
        info={"batch_size": batch_size},
    )


__all__ = [
    "GC_METRICS",
    "NL_METRICS",
    "PAPER_TABLE1",
    "QueryIndependenceResult",
    "gc_statistics",
    "nonlocal_statistics",
    "query_independence",
]
