"""Per-query attention maps of Non-local sites, upsampled to the image (GCNet Fig. 2).

Row i of a Non-local attention (Wang et al. 2018, Eq. 1: y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j))
is the map of query position i over the key positions j. ``query_maps`` keeps only the rows of
the requested queries (``capture(..., queries=...)``), reshapes them to the key grid and
upsamples them to the image with the same ``cv2.resize`` as the overlays. At GC sites
(Cao et al. 2019, Eq. 4) the context map softmax_j(W_k x_j) is one map shared by every query.

Per-head token sites (kind ``token``: ViT, DeiT, PVT, Twins; ``bottleneck``; dims (batch, head,
query, key)): a row is softmax_j(q_i . k_j / sqrt(d)) of one head (Vaswani et al. 2017, eq. 1).
The queries are the patch tokens, cells of the patch grid (``query_grid``); the prefix tokens
(class, register, distillation) are not queries: their rows are kept apart (``prefix_maps``).
Maps lie on the key patch grid (``key_grid``, smaller than the query grid at PVT / Twins
spatial-reduction attention); the weight a row puts on prefix keys is kept beside them
(``prefix_key_weights``), so map + prefix weights sum to 1. Heads are kept apart, the head mean
last (``head_maps``); ``grid_maps`` is the head mean. The full maps are captured (one image)
and the rows chosen here, so that the prefix rows come from the same forward. Windowed sites
(``window``: Swin, Liu et al. 2021, eq. 4; ``halo``) keep their heads too: each row's window
slots are put on the key grid (:func:`attnviz.capture.window_to_grid`; zero outside the
window), without prefix tokens.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn

from ..capture import Site, query_kinds
from ..data.preprocess import EvalTransform, preprocess_for
from ..results import Result
from ._sites import (
    TokenLayout,
    choose_sites,
    has_heads,
    head_labels,
    is_windowed,
    window_rows,
    with_head_mean,
)
from .runner import Analysis, RunInfo, State, run
from .stats import is_distribution


# -- inputs and the one pixel <-> cell rule -------------------------------------------------------
def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255)
    return Image.fromarray(arr[:, :, :3].astype(np.uint8), "RGB")


def display_of(x: Tensor) -> np.ndarray:
    """A prepared (3, H, W) input as HxWx3 uint8, min-max scaled (for overlays)."""
    t = x.detach().float().cpu()
    lo, hi = float(t.min()), float(t.max())
    d = (t - lo) / (hi - lo) if hi > lo else t * 0
    arr = (d.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def display_image(image: Any, x: Tensor, transform: EvalTransform | None) -> np.ndarray:
    """What the model saw, as HxWx3 uint8: the transform's view of a PIL image, else the
    prepared input ``x`` min-max scaled."""
    if isinstance(image, Image.Image) and transform is not None and transform.geometry:
        return np.asarray(transform.view(image).convert("RGB"), dtype=np.uint8)
    return display_of(x)


def prepare_image(image: Any, preprocess: Any = None) -> tuple[Tensor, np.ndarray]:
    """``(model input (3, H, W), display image HxWx3 uint8)`` of one image.

    ``image``: a PIL image or HxWx3 array, prepared by
    :func:`attnviz.data.preprocess.preprocess_for` ``(preprocess)`` (displayed as the view the
    model sees), or an already prepared tensor (3, H, W) / (1, 3, H, W), displayed min-max
    scaled.
    """
    if isinstance(image, Tensor):
        t = image.detach().float().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3:
            raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
        return t, display_of(t)
    transform = preprocess_for(preprocess)
    pil = _as_pil(image)
    x = transform(pil)
    if transform.geometry is not None:
        return x, np.asarray(transform.view(pil).convert("RGB"), dtype=np.uint8).copy()
    return x, display_of(x)


def upsample(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear ``cv2.resize`` of an HxW map to ``size`` = (height, width), as float32."""
    h = np.asarray(heatmap, dtype=np.float32)
    if h.ndim != 2:
        raise ValueError(f"expected a 2-D heatmap, got shape {h.shape}")
    if h.shape == tuple(size):
        return h.copy()
    return cv2.resize(h, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)


def pixel_to_cell(
    pixel: tuple[float, float], grid: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int]:
    """The (y, x) grid cell that contains image point (y, x): floor((p + 0.5) * grid / size).

    Coordinates put pixel centres at integers (as matplotlib's ``imshow`` and
    :func:`cell_centre` do): the image spans [-0.5, H - 0.5) and cell r spans
    [r * H / gh - 0.5, (r + 1) * H / gh - 0.5). A whole pixel belongs to the cell holding its
    centre, and ``pixel_to_cell(cell_centre(c)) == c``. The one rule for the analyses and the
    viewers.
    """
    (y, x), (gh, gw), (h, w) = pixel, grid, size
    if not (-0.5 <= y < h - 0.5 and -0.5 <= x < w - 0.5):
        raise ValueError(
            f"query pixel (y={y}, x={x}) is outside the {h}x{w} image "
            f"(y in [-0.5, {h - 0.5}), x in [-0.5, {w - 0.5}))"
        )
    cy = min(max(int(math.floor((y + 0.5) * gh / h)), 0), gh - 1)
    cx = min(max(int(math.floor((x + 0.5) * gw / w)), 0), gw - 1)
    return cy, cx


# -- result ---------------------------------------------------------------------------------------
@dataclass
class QueryMapsResult(Result):
    """Maps of a few query points at one site for one image.

    ``maps`` (Q, H, W): attention over the keys upsampled to the image (bilinear ``cv2.resize``
    of the key-grid map; values keep the attention's units); ``grid_maps`` (Q, kh, kw) the
    maps on the key grid; ``query_cells`` (Q, 2) the (y, x) query-grid cells; ``query_pixels``
    (Q, 2) the (y, x) image pixels the queries stand for (the pixels given, or the centres of
    the cells given). GC sites have one map (Q = 1) and no query points.

    Per-head sites (see the module docstring) also hold ``head_maps`` (Q, H + 1, kh, kw): each
    head, then their mean (``grid_maps`` = ``head_maps[:, -1]``); ``prefix_key_weights``
    (Q, H + 1, Pk): the rows' weights on the Pk prefix keys; ``prefix_maps`` (P, H + 1, kh, kw):
    the rows of the P prefix tokens (``prefix_names``: "class", "register", ...). Empty elsewhere.
    """

    kind: ClassVar[str] = "query_maps"
    format_version: ClassVar[int] = 3

    image: np.ndarray
    maps: np.ndarray
    grid_maps: np.ndarray
    query_cells: np.ndarray
    query_pixels: np.ndarray
    site: dict[str, Any]
    is_distribution: bool
    meta: dict[str, Any] = field(default_factory=dict)
    head_maps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0), np.float32))
    prefix_key_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    prefix_maps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 0), np.float32))
    prefix_names: list[str] = field(default_factory=list)

    @property
    def n_queries(self) -> int:
        return int(self.maps.shape[0])

    @property
    def heads(self) -> list[int | str]:
        """Labels of the ``head_maps`` axis: ``[0, ..., H - 1, "mean"]`` ([] without heads)."""
        return head_labels(self.head_maps.shape[1] - 1) if self.head_maps.size else []

    def head_index(self, head: int | str | None) -> int:
        """Position of ``head`` (an index or "mean"; None = the mean) on the head axis."""
        labels = self.heads
        if not labels:
            if head not in (None, "mean"):
                raise ValueError(f"site {self.site.get('alias')} has no heads")
            return -1
        key = "mean" if head is None else head
        if key not in labels:
            raise ValueError(f"unknown head {head!r}; heads: {labels}")
        return labels.index(key)

    def rows(self, head: int | str | None = None) -> np.ndarray:
        """(Q, K) whole rows of one head (default the mean): the key-grid map, then the
        weights on prefix keys (token sites), so that each row is what the softmax gave."""
        if not self.head_maps.size:
            return self.grid_maps.reshape(self.n_queries, -1)
        h = self.head_index(head)
        grid = self.head_maps[:, h].reshape(self.n_queries, -1)
        return np.concatenate([grid, self.prefix_key_weights[:, h]], axis=1)

    def to_frame(self) -> pd.DataFrame:
        """One row per query: cell, pixel, map max / argmax (grid), entropy (distributions) of
        the head mean; at token sites also ``prefix_weight``, the weight on prefix keys."""
        rows = []
        full = self.rows()
        for q in range(self.n_queries):
            g = self.grid_maps[q]
            ky, kx = np.unravel_index(int(np.argmax(g)), g.shape)
            row = {
                "site": self.site.get("alias"),
                "query": q,
                "cell_y": int(self.query_cells[q, 0]) if len(self.query_cells) else None,
                "cell_x": int(self.query_cells[q, 1]) if len(self.query_cells) else None,
                "pixel_y": float(self.query_pixels[q, 0]) if len(self.query_pixels) else None,
                "pixel_x": float(self.query_pixels[q, 1]) if len(self.query_pixels) else None,
                "max": float(g.max()),
                "argmax_y": int(ky),
                "argmax_x": int(kx),
            }
            if self.prefix_key_weights.size:
                row["prefix_weight"] = float(self.prefix_key_weights[q, -1].sum())
            if self.is_distribution:
                p = full[q].astype(np.float64)
                row["entropy"] = float(-(p[p > 0] * np.log(p[p > 0])).sum())
            rows.append(row)
        return pd.DataFrame(rows)

    def pairwise_distances(
        self, metric: str = "cosine", head: int | str | None = None
    ) -> np.ndarray:
        """(Q, Q) distances between the query rows (:meth:`rows`: the key-grid maps, plus the
        prefix-key weights at token sites) of one head (default the mean).

        ``"cosine"``: (1 - cos) / 2 as in GCNet Table 1; ``"jsd"``: Jensen-Shannon divergence
        (nats; only for distribution maps).
        """
        g = self.rows(head).astype(np.float64)
        q = self.n_queries
        out = np.zeros((q, q))
        if metric == "cosine":
            norms = np.linalg.norm(g, axis=1)
            u = g / np.where(norms > 0, norms, 1.0)[:, None]
            out = (1.0 - np.clip(u @ u.T, -1.0, 1.0)) / 2.0
            np.fill_diagonal(out, np.where(norms > 0, 0.0, 0.5))
            return out
        if metric == "jsd":
            if not self.is_distribution:
                raise ValueError("JSD needs maps that are probability distributions")
            for i in range(q):
                for j in range(q):
                    out[i, j] = jsd_of(g[i], g[j])
            return out
        raise ValueError("metric must be 'cosine' or 'jsd'")

    def summary(self) -> str:
        """One line per query: cell, pixel, largest weight and where it falls."""
        head = f"{self.n_queries} query maps at {self.site.get('alias')} ({self.site.get('kind')})"
        frame = self.to_frame()
        return head + "\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.4f}")

    def _payload(self):
        arrays = {
            "image": self.image,
            "maps": self.maps,
            "grid_maps": self.grid_maps,
            "query_cells": self.query_cells,
            "query_pixels": self.query_pixels,
            "head_maps": self.head_maps,
            "prefix_key_weights": self.prefix_key_weights,
            "prefix_maps": self.prefix_maps,
        }
        fields = {
            "site": self.site,
            "is_distribution": self.is_distribution,
            "meta": self.meta,
            "prefix_names": self.prefix_names,
        }
        return arrays, {"queries.csv": self.to_frame()}, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        return cls(
            site=manifest["site"],
            is_distribution=bool(manifest["is_distribution"]),
            meta=dict(manifest.get("meta", {})),
            prefix_names=list(manifest.get("prefix_names", [])),
            **arrays,
        )


def entropy_of(p: np.ndarray) -> float:
    """Shannon entropy (nats) of one distribution; zero entries contribute 0."""
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def jsd_of(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in nats: H((p + q) / 2) - (H(p) + H(q)) / 2."""
    return max(entropy_of((p + q) / 2.0) - (entropy_of(p) + entropy_of(q)) / 2.0, 0.0)


# -- analysis -------------------------------------------------------------------------------------
def map_kinds() -> list[str]:
    """Kinds with per-query maps (role ``query``) and GC's single context map."""
    return [*query_kinds(), "gc"]


def pick_site(
    model: nn.Module, site: str | Site | None, kinds: Sequence[str] | None = None
) -> Site:
    """The site ``site`` (name or alias), default the first per-query or GC site."""
    kinds = map_kinds() if kinds is None else list(kinds)
    chosen = choose_sites(
        model, kinds, None if site is None else [site], what="per-query (Non-local) or GC site"
    )
    return chosen[0]


def site_record(site: Any) -> dict[str, Any]:
    record = {
        "name": site.name,
        "alias": site.alias,
        "kind": site.kind,
        "module_type": site.module_type,
        "instantiation": site.info.get("instantiation", site.info.get("mode")),
    }
    if "heads" in site.info:
        record["heads"] = int(site.info["heads"])
    return record


def token_rows(
    att: Tensor,
    layout: TokenLayout,
    cells: Sequence[tuple[int, int]] | None,
    rows_only: bool = False,
):
    """Per-head maps of the query ``cells`` (all patches when None) and of the prefix tokens,
    from a full (B, heads, Nq, Nk) capture (``rows_only``: ``att`` holds just the query rows,
    no prefix rows): ``(head_maps (B, Q, H + 1, kh, kw), prefix_key_weights (B, Q, H + 1, Pk),
    prefix_maps (B, P, H + 1, kh, kw))``, the head mean last (float32 numpy)."""
    rows = with_head_mean(att.float())
    q = rows if rows_only else rows[:, :, layout.patch_rows(cells)]
    q = q.transpose(1, 2)  # (B, Q, H + 1, Nk)
    prefix = rows[:, :, : layout.prefix].transpose(1, 2)  # (B, P, H + 1, Nk)
    return (
        layout.key_maps(q).numpy(),
        layout.prefix_keys(q).numpy(),
        layout.key_maps(prefix).numpy(),
    )


class QueryMaps(Analysis):
    """The maps of a few query points at one site, for each image (one forward per batch)."""

    name = "query_maps"
    keep_images = True

    def __init__(
        self,
        queries: Sequence[tuple[float, float]] | Callable[[tuple[int, int]], Sequence] | None,
        site: str | Site | None = None,
        query_space: str = "pixel",
    ):
        if query_space not in ("pixel", "cell"):
            raise ValueError("query_space must be 'pixel' or 'cell'")
        if queries is not None and not callable(queries):
            queries = [tuple(q) for q in queries]
            for q in queries:
                if len(q) != 2:
                    raise ValueError(f"a query is a (y, x) pair, got {q!r}")
                if query_space == "cell" and any(float(v) != int(v) for v in q):
                    raise ValueError(f"query cells are integer (y, x) pairs, got {q!r}")
        self.queries, self.selection, self.query_space = queries, site, query_space
        self._size: tuple[int, int] | None = None

    def sites(self, model: nn.Module) -> list[Site]:
        self.site = pick_site(model, self.selection)
        if self.site.kind != "gc" and not self.queries:
            raise ValueError("give at least one query point (y, x) for a per-query site")
        return [self.site]

    def params(self) -> dict[str, Any]:
        q = "callable" if callable(self.queries) else self.queries
        return {"queries": q, "query_space": self.query_space}

    def capture_options(self) -> dict[str, Any]:
        if self.site.kind == "gc" or has_heads(self.site.kind):  # heads: rows chosen in step
            return {}
        if self.query_space == "pixel":  # pixels become cells once the hook knows the grid
            return {
                "queries": lambda grid: [pixel_to_cell(q, grid, self._size) for q in self.queries]
            }
        if callable(self.queries):
            return {"queries": self.queries}
        return {"queries": [(int(y), int(x)) for y, x in self.queries]}

    def inputs(self, x: Tensor) -> Tensor:
        self._size = (int(x.shape[-2]), int(x.shape[-1]))  # for pixel queries, in the forward
        return x

    def step(self, state: State, batch, cache, output) -> None:
        name = self.site.name
        meta = cache.meta.get(name, {})
        rows = cache[name]
        if self.site.kind == "gc":
            grid_maps = rows[:, None].numpy()  # (B, 1, H, W)
            cells = np.zeros((0, 2), dtype=np.int64)
        elif has_heads(self.site.kind) or is_windowed(self.site.kind):
            if is_windowed(self.site.kind):  # only the chosen rows were captured
                chosen = [tuple(int(v) for v in c) for c in meta["queries"]]
                dense = window_rows(rows, meta)  # (B, heads, Q, kh * kw)
                qg, kg = (tuple(int(v) for v in meta[k]) for k in ("query_grid", "key_grid"))
                layout = TokenLayout(0, 0, qg, kg, ())  # type: ignore[arg-type]
                heads, prefix_w, prefix_maps = token_rows(dense, layout, None, rows_only=True)
            else:
                layout = TokenLayout.of(rows, meta)
                chosen = self._cells(layout.query_grid)
                heads, prefix_w, prefix_maps = token_rows(rows, layout, chosen)
            cells = np.asarray(chosen, dtype=np.int64).reshape(-1, 2)
            grid_maps = heads[:, :, -1]
            state.info["query_grid"] = list(layout.query_grid)
            state.info["prefix_names"] = list(layout.prefix_names)
            for j, r in enumerate(batch.records):
                state.put("head_maps", r.index, heads[j])
                state.put("prefix_key_weights", r.index, prefix_w[j])
                state.put("prefix_maps", r.index, prefix_maps[j])
        else:
            cells = np.asarray(meta["queries"], dtype=np.int64).reshape(-1, 2)
            kh, kw = meta.get("key_grid") or _square(rows.shape[-1])
            if kh * kw != rows.shape[-1]:
                raise ValueError(f"key grid {kh}x{kw} does not match {rows.shape[-1]} keys")
            grid_maps = rows.reshape(rows.shape[0], -1, kh, kw).numpy()
            state.info["query_grid"] = [int(v) for v in meta["query_grid"]]
        state.info["cells"] = cells.tolist()
        for j, r in enumerate(batch.records):
            state.put("grid_maps", r.index, grid_maps[j].astype(np.float32))
            state.put(
                "display", r.index, display_image(batch.images[j], batch.x[j], self.transform)
            )

    def _cells(self, grid: tuple[int, int]) -> list[tuple[int, int]]:
        """The query cells on ``grid`` (pixels mapped by :func:`pixel_to_cell`)."""
        if self.query_space == "pixel":
            assert self._size is not None
            return [pixel_to_cell(q, grid, self._size) for q in self.queries]
        cells = self.queries(grid) if callable(self.queries) else self.queries
        out = [(int(y), int(x)) for y, x in cells]
        for y, x in out:
            if not (0 <= y < grid[0] and 0 <= x < grid[1]):
                raise ValueError(f"query cell ({y}, {x}) is outside the {grid[0]}x{grid[1]} grid")
        return out

    def finalise(self, state: State, run: RunInfo) -> QueryMapsResult:
        _, grid_maps = state.stacked("grid_maps")
        _, display = state.stacked("display")
        g = grid_maps[0]
        size = display[0].shape[:2]
        cells = np.asarray(state.info["cells"], dtype=np.int64).reshape(-1, 2)  # set by step()
        if self.site.kind == "gc":
            pixels = np.zeros((0, 2), dtype=np.float64)
        elif self.query_space == "pixel":
            pixels = np.asarray([(float(y), float(x)) for y, x in self.queries])
        else:
            grid = tuple(state.info["query_grid"])
            pixels = np.asarray([cell_centre(tuple(c), grid, size) for c in cells], np.float64)
        result = QueryMapsResult(
            image=display[0],
            maps=np.stack([upsample(m, size) for m in g]),
            grid_maps=g,
            query_cells=cells,
            query_pixels=pixels.reshape(-1, 2),
            site=site_record(self.site),
            is_distribution=self.site.kind == "gc",
            meta={"query_space": self.query_space, "input_size": list(size)},
        )
        if "head_maps" in state.rows:
            result.head_maps = state.stacked("head_maps")[1][0]
            result.prefix_key_weights = state.stacked("prefix_key_weights")[1][0]
            result.prefix_maps = state.stacked("prefix_maps")[1][0]
            result.prefix_names = list(state.info.get("prefix_names", []))
            result.site["query_grid"] = list(state.info["query_grid"])
        if self.site.kind != "gc":
            full = torch.from_numpy(result.rows().astype(np.float64))
            result.is_distribution = is_distribution(full)
        return result


def query_maps(
    model: nn.Module,
    image: Any,
    *,
    queries: Sequence[tuple[float, float]] | Callable[[tuple[int, int]], Sequence] | None,
    site: str | None = None,
    query_space: str = "pixel",
    preprocess: Any = None,
) -> QueryMapsResult:
    """Attention maps of the given query points at one per-query (or GC) site of ``model``.

    ``queries``: (y, x) points, image pixels of the model input when ``query_space="pixel"``
    (mapped to the query-grid cell that contains them, :func:`pixel_to_cell`), or query-grid
    cells when ``query_space="cell"`` (also as a callable ``grid -> cells``, e.g.
    ``lambda g: grid_queries(g, 4)``). Only these rows are captured, in the one forward
    (``capture(..., queries=...)``). ``site``: name or alias (default: the first per-query
    or GC site). At a GC site ``queries`` is ignored and the single context map is returned.
    ``image``: an image file, a PIL image or array (prepared by ``preprocess``, default the
    model's own) or a prepared (3, H, W) tensor. The model runs in eval mode (its mode is restored).
    """
    if isinstance(image, Tensor):
        images: Any = image[None] if image.dim() == 3 else image[:1]
    elif isinstance(image, (str, os.PathLike)):
        images = [image]
    else:
        images = [_as_pil(image)]
    result = run(
        QueryMaps(queries, site, query_space),
        model,
        images,
        preprocess=preprocess,
        batch_size=1,
        progress=False,
        strict=True,
    )
    assert isinstance(result, QueryMapsResult)
    return result


def _square(n: int) -> tuple[int, int]:
    s = int(round(n**0.5))
    if s * s != n:
        raise ValueError(f"cannot infer the key grid of {n} keys")
    return s, s


def cell_centre(cell: tuple[int, int], grid: tuple[int, int], size: tuple[int, int]) -> tuple:
    """Pixel coordinates (y, x) of the centre of a grid cell (pixel centres at integers)."""
    return (
        (cell[0] + 0.5) * size[0] / grid[0] - 0.5,
        (cell[1] + 0.5) * size[1] / grid[1] - 0.5,
    )


def grid_queries(grid: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """``n`` query cells spread evenly over a grid (GCNet Fig. 2 style: corners to centre)."""
    gh, gw = grid
    k = max(1, int(np.ceil(np.sqrt(n))))
    ys = np.linspace(0, gh - 1, k + 2)[1:-1].round().astype(int)
    xs = np.linspace(0, gw - 1, k + 2)[1:-1].round().astype(int)
    cells = [(int(y), int(x)) for y in ys for x in xs]
    return cells[:n]


__all__ = [
    "QueryMaps",
    "QueryMapsResult",
    "pixel_to_cell",
    "upsample",
    "cell_centre",
    "display_image",
    "grid_queries",
    "pick_site",
    "prepare_image",
    "query_maps",
]
