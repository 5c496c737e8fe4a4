"""Per-query attention maps of Non-local sites, upsampled to the image (GCNet Fig. 2).

Row i of a Non-local attention (Wang et al. 2018, Eq. 1: y_i = 1/C(x) sum_j f(x_i, x_j) g(x_j))
is the map of query position i over the key positions j. ``query_maps`` keeps only the rows of
the requested queries (``capture(..., queries=...)``), reshapes them to the key grid and
upsamples them to the image with the same ``cv2.resize`` as the overlays. At GC sites
(Cao et al. 2019, Eq. 4) the context map softmax_j(W_k x_j) is one map shared by every query.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn

from ..capture import capture, query_kinds
from ..capture.core import select_sites
from ..errors import NoAttentionSitesError
from ..plot.overlay import upsample
from ..results import load_result_dir, save_result_dir, versions
from ._eval_mode import eval_mode
from .stats import is_distribution

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageLike = "Image.Image | np.ndarray | Tensor"
Preprocess = "Callable[[Image.Image], Tensor] | Any | None"


# -- inputs ---------------------------------------------------------------------------------------
def _as_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"expected an HxWx3 image array, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr * (255.0 if arr.max() <= 1.0 else 1.0)), 0, 255)
        return Image.fromarray(arr[:, :, :3].astype(np.uint8), "RGB")
    raise TypeError(f"expected a PIL image, an HxWx3 array or a tensor, got {type(image).__name__}")


def _resize_for(pil: Image.Image, preprocess: Any) -> Image.Image:
    """Resize / centre-crop like a PreprocessConfig (input_size, crop_pct, interpolation)."""
    size = getattr(preprocess, "input_size", None)
    if size is None:
        return pil
    h, w = int(size[-2]), int(size[-1])
    crop_pct = float(getattr(preprocess, "crop_pct", 1.0) or 1.0)
    interp = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}.get(
        str(getattr(preprocess, "interpolation", "bilinear")), Image.BILINEAR
    )
    if crop_pct >= 1.0:
        return pil.resize((w, h), interp)
    short = int(round(min(h, w) / crop_pct))
    iw, ih = pil.size
    scale = short / min(iw, ih)
    pil = pil.resize((max(w, round(iw * scale)), max(h, round(ih * scale))), interp)
    iw, ih = pil.size
    left, top = (iw - w) // 2, (ih - h) // 2
    return pil.crop((left, top, left + w, top + h))


def prepare_image(image: Any, preprocess: Any = None) -> tuple[Tensor, np.ndarray]:
    """``(input tensor (3, H, W), display image HxWx3 uint8)`` for one image.

    ``image``: a PIL image or HxWx3 array (resized / normalised by ``preprocess``: a callable
    PIL -> tensor, or an object with ``input_size``, ``mean``, ``std`` such as
    ``attnviz.models.PreprocessConfig``; default: no resize, ImageNet mean/std), or an already
    normalised tensor (3, H, W) / (1, 3, H, W), displayed min-max scaled.
    """
    if isinstance(image, Tensor):
        t = image.detach().float().cpu()
        if t.dim() == 4 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 3:
            raise ValueError(f"expected an image tensor (3, H, W), got shape {tuple(image.shape)}")
        lo, hi = float(t.min()), float(t.max())
        disp = (t - lo) / (hi - lo) if hi > lo else torch.zeros_like(t)
        disp_np = (disp.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        if disp_np.shape[2] == 1:
            disp_np = np.repeat(disp_np, 3, axis=2)
        return t, disp_np
    pil = _as_pil(image)
    if callable(preprocess):
        t = preprocess(pil)
        if not isinstance(t, Tensor):
            raise TypeError("preprocess must return a tensor (3, H, W)")
        disp = np.asarray(pil.resize((t.shape[-1], t.shape[-2]), Image.BILINEAR), dtype=np.uint8)
        return t.float(), disp
    pil = _resize_for(pil, preprocess)
    mean = tuple(getattr(preprocess, "mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(preprocess, "std", None) or IMAGENET_STD)
    disp = np.asarray(pil, dtype=np.uint8).copy()
    t = torch.from_numpy(disp).permute(2, 0, 1).float() / 255.0
    t = (t - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    return t, disp


# -- result ---------------------------------------------------------------------------------------
@dataclass
class QueryMapsResult:
    """Maps of a few query points at one site for one image.

    ``maps`` (Q, H, W): attention over the keys upsampled to the image (bilinear ``cv2.resize``
    of the key-grid map; values keep the attention's units); ``grid_maps`` (Q, kh, kw) the
    maps on the key grid; ``query_cells`` (Q, 2) the (y, x) query-grid cells; ``query_pixels``
    (Q, 2) the (y, x) image pixels the queries stand for (the pixels given, or the centres of
    the cells given). GC sites have one map (Q = 1) and no query points.
    """

    image: np.ndarray
    maps: np.ndarray
    grid_maps: np.ndarray
    query_cells: np.ndarray
    query_pixels: np.ndarray
    site: dict[str, Any]
    is_distribution: bool
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_queries(self) -> int:
        return int(self.maps.shape[0])

    def to_frame(self) -> pd.DataFrame:
        """One row per query: cell, pixel, map max / argmax (grid), entropy (distributions)."""
        rows = []
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
            if self.is_distribution:
                p = g.reshape(-1).astype(np.float64)
                row["entropy"] = float(-(p[p > 0] * np.log(p[p > 0])).sum())
            rows.append(row)
        return pd.DataFrame(rows)

    def pairwise_distances(self, metric: str = "cosine") -> np.ndarray:
        """(Q, Q) distances between the query maps on the key grid.

        ``"cosine"``: (1 - cos) / 2 as in GCNet Table 1; ``"jsd"``: Jensen-Shannon divergence
        (nats; only for distribution maps).
        """
        g = self.grid_maps.reshape(self.n_queries, -1).astype(np.float64)
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

    def save(self, directory: str | Path) -> Path:
        """Write ``maps.npz``, ``queries.csv``, ``manifest.json`` atomically into ``directory``."""
        arrays = {
            "image": self.image,
            "maps": self.maps,
            "grid_maps": self.grid_maps,
            "query_cells": self.query_cells,
            "query_pixels": self.query_pixels,
        }
        manifest = {
            "type": "QueryMapsResult",
            "site": self.site,
            "is_distribution": self.is_distribution,
            "info": self.info,
            "versions": versions(),
        }
        frames = {"queries.csv": self.to_frame()}
        return save_result_dir(
            directory, arrays=arrays, frames=frames, manifest=manifest, npz_name="maps.npz"
        )

    @classmethod
    def load(cls, directory: str | Path) -> QueryMapsResult:
        manifest, arrays = load_result_dir(directory, "maps.npz")
        return cls(
            site=manifest["site"],
            is_distribution=bool(manifest["is_distribution"]),
            info=manifest.get("info", {}),
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
def pick_site(model: nn.Module, site: str | None, kinds: Sequence[str] | None = None):
    """The (Site, module, adapter) of ``site`` (name or alias), default the first map site.

    Map sites are the per-query kinds (Non-local, self-attention, DANet position) and GC.
    """
    kinds = [*query_kinds(), "gc"] if kinds is None else list(kinds)
    selected = select_sites(model, kinds=kinds, sites=None if site is None else [site])
    if not selected:  # pragma: no cover - select_sites raises first
        raise NoAttentionSitesError(f"{type(model).__name__} has no Non-local or GC site")
    return selected[0]


def site_record(site: Any) -> dict[str, Any]:
    return {
        "name": site.name,
        "alias": site.alias,
        "kind": site.kind,
        "module_type": site.module_type,
        "instantiation": site.info.get("instantiation", site.info.get("mode")),
    }


def query_maps(
    model: nn.Module,
    image: Any,
    *,
    queries: Sequence[tuple[float, float]] | Callable[[tuple[int, int]], Sequence] | None,
    site: str | None = None,
    query_space: str = "pixel",
    preprocess: Any = None,
) -> QueryMapsResult:
    """Attention maps of the given query points at one Non-local (or GC) site of ``model``.

    ``queries``: (y, x) points, image pixels of the model input when ``query_space="pixel"``
    (mapped to the query-grid cell that contains them: cell = floor(pixel * grid / size)),
    or query-grid cells when ``query_space="cell"`` (also as a callable ``grid -> cells``,
    e.g. ``lambda g: grid_queries(g, 4)``). Only these rows are captured, in the one forward
    (``capture(..., queries=...)``). ``site``: name or alias (default: the first Non-local or
    GC site). At a GC site ``queries`` is ignored and the single context map is returned.
    ``image``/``preprocess``: see :func:`prepare_image`. The model is run in eval mode (its
    mode is restored afterwards).
    """
    if query_space not in ("pixel", "cell"):
        raise ValueError("query_space must be 'pixel' or 'cell'")
    site_obj, module, _ = pick_site(model, site)
    x, disp = prepare_image(image, preprocess)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    with eval_mode(model):
        if site_obj.kind == "gc":
            with capture(model, sites=[site_obj.name]) as cache, torch.no_grad():
                model(x[None])
            grid_maps = cache[site_obj.name][0][None].numpy().astype(np.float32)
            cells = np.zeros((0, 2), dtype=np.int64)
            pixels = np.zeros((0, 2), dtype=np.float64)
            is_dist = True
        else:
            if not queries:
                raise ValueError("give at least one query point (y, x) for a Non-local site")
            # pixel queries become cells once the hook knows the query grid (same forward);
            # cells are checked against the grid by capture itself
            if query_space == "pixel":
                selection = lambda grid: _cells(queries, query_space, grid, size)  # noqa: E731
            elif callable(queries):  # cells chosen from the grid, e.g. grid_queries(grid, n)
                selection = queries
            else:
                selection = [tuple(c) for c in _cells(queries, query_space, None, size)]
            with capture(model, sites=[site_obj.name], queries=selection) as cache:
                with torch.no_grad():
                    model(x[None])
            rows = cache[site_obj.name][0]  # (Q, Nk)
            grid = tuple(int(v) for v in cache.meta[site_obj.name]["query_grid"])
            cells = np.asarray(cache.meta[site_obj.name]["queries"], dtype=np.int64).reshape(-1, 2)
            pixels = _pixels(queries, query_space, cells, grid, size)
            kh, kw = cache.meta[site_obj.name].get("key_grid") or _square(rows.shape[1])
            if kh * kw != rows.shape[1]:
                raise ValueError(f"key grid {kh}x{kw} does not match {rows.shape[1]} keys")
            grid_maps = rows.reshape(-1, kh, kw).numpy().astype(np.float32)
            is_dist = is_distribution(rows.double())
    maps = np.stack([upsample(g, size) for g in grid_maps])
    return QueryMapsResult(
        image=disp,
        maps=maps,
        grid_maps=grid_maps,
        query_cells=np.asarray(cells, dtype=np.int64),
        query_pixels=np.asarray(pixels, dtype=np.float64),
        site=site_record(site_obj),
        is_distribution=is_dist,
        info={"query_space": query_space, "input_size": list(size)},
    )


def _square(n: int) -> tuple[int, int]:
    s = int(round(n**0.5))
    if s * s != n:
        raise ValueError(f"cannot infer the key grid of {n} keys")
    return s, s


def _cells(
    queries: Sequence[tuple[float, float]],
    query_space: str,
    grid: tuple[int, int] | None,
    size: tuple[int, int],
) -> list[tuple[int, int]]:
    """(Q, 2) query-grid cells: pixels map to the cell containing them (floor(p * grid / size))."""
    h, w = size
    cells = []
    for q in queries:
        if len(q) != 2:
            raise ValueError(f"a query is a (y, x) pair, got {q!r}")
        y, x = float(q[0]), float(q[1])
        if query_space == "pixel":
            assert grid is not None
            gh, gw = grid
            if not (0 <= y < h and 0 <= x < w):
                raise ValueError(f"query pixel (y={y}, x={x}) is outside the {h}x{w} image")
            cells.append((min(int(y * gh / h), gh - 1), min(int(x * gw / w), gw - 1)))
        else:
            if y != int(y) or x != int(x):
                raise ValueError(f"query cells are integer (y, x) pairs, got {q!r}")
            cells.append((int(y), int(x)))
    return cells


def _pixels(
    queries: Sequence[tuple[float, float]],
    query_space: str,
    cells: np.ndarray,
    grid: tuple[int, int],
    size: tuple[int, int],
) -> np.ndarray:
    """(Q, 2) pixels the queries stand for: the pixels given, or the centres of the cells."""
    if query_space == "pixel":
        return np.asarray([(float(q[0]), float(q[1])) for q in queries], dtype=np.float64)
    return np.asarray([cell_centre(tuple(c), grid, size) for c in cells], dtype=np.float64)


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
    "QueryMapsResult",
    "cell_centre",
    "grid_queries",
    "pick_site",
    "prepare_image",
    "query_maps",
]
