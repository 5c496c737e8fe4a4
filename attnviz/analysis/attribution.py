"""Grad-CAM of several models (the CBAM paper's comparison), and spatial attention beside
Grad-CAM (attnviz's own comparison).

**The paper's comparison** (Woo et al., CBAM, ECCV 2018, Sec. 4.3, Fig. 4):
:func:`gradcam_comparison` applies Grad-CAM (Selvaraju et al. 2017, Eq. 1-2:
L = ReLU(sum_k a_k A^k), a_k = mean over positions of d y^c / d A^k; captum's
:class:`~captum.attr.LayerGradCam` at each model's last convolutional stage,
``relu_attributions=True``) to networks with and without attention (in the paper ResNet-50,
+SE, +CBAM; here e.g. plain_tiny, se_tiny, cbam_tiny) on the same images, for the same target
class, and reports each model's softmax probability of that class per image. The target is
the ground truth when labels exist, else the first model's prediction (so every model
explains the same class).

**attnviz's own comparison** (not in the paper, which did not correlate the spatial gate with
Grad-CAM): :func:`attention_vs_attribution` sets the maps of spatial attention sites (role
``spatial``: ``cbam_spatial``, CBAM's M_s, Eq. 3, and ``gc`` sites, GCNet's context weights
softmax_j(W_k x_j), Eq. 4) beside Grad-CAM at the last convolutional stage. The two maps
usually live on different grids (a 32x32 early gate against a 4x4 Grad-CAM): they are compared
at the coarser grid of the two, per axis (min of the heights, min of the widths), the finer
map average-pooled to it (:func:`torch.nn.functional.adaptive_avg_pool2d`); the table reports
the attention grid, the Grad-CAM grid and the comparison grid. Upsampling the coarse map to
pixels instead would make early sites disagree partly by construction (a bilinear 4x4 map is
smooth where a 32x32 gate has detail); ``compare_at="input"`` still gives that pixel-level
reading. The Grad-CAM target is the ground truth when labels exist, else the model's
prediction (or ``target=``). Default sites: the last site of each spatial kind in the model.

Agreement per image and site, on the maps at the comparison grid:

* Spearman rank correlation: Pearson correlation of the ranks (ties get their average rank);
  1 = same ordering, -1 = reversed; NaN if a map is constant.
* IoU of the top-k regions: region = cells at or above the map's k-quantile from the top
  (the ``ceil(k * HW)``-th largest value; ties at the threshold are all included);
  |A & B| / |A | B|; NaN if a map is constant (e.g. an all-zero Grad-CAM after the ReLU,
  which also makes rho NaN). Two independent maps without ties give the exact hypergeometric
  expectation at the comparison grid (:func:`attnviz.analysis.stats.top_k_iou_chance`: 0.158
  at 4x4 and k = 0.2; k / (2 - k) = 0.111 only in the large-grid limit), reported per site as
  ``iou_chance``.

One forward per batch and model: captum's ``LayerGradCam`` runs the model once with
gradients, through a wrapper that picks each image's target logit from the logits of that
same forward; capture records the attention of that forward (detached), so the maps compared
are those of the pass that Grad-CAM explains. Figures show the maps upsampled to the input
size (bilinear).
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
from captum.attr import LayerAttribution, LayerGradCam
from torch import Tensor, nn

from ..capture import Site
from ..capture.kinds import kinds_with_role
from ..results import Result, from_records, records
from ._sites import choose_sites
from .localisation import mask_share, pointing_hit
from .query_maps import display_image
from .runner import Analysis, RunInfo, State, run
from .stats import paired_difference, top_k_iou_chance


# ----------------------------------------------------------------------------- agreement
def rank_average(values: np.ndarray) -> np.ndarray:
    """Ranks 1..N of a flattened array, ties sharing their average rank."""
    a = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(a.size)
    sorted_a = a[order]
    first = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    dense = np.cumsum(first)[inverse]
    bounds = np.r_[np.nonzero(first)[0], a.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def spearman_rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two maps of equal size (Pearson correlation of average ranks)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.size != b.size:
        raise ValueError(f"maps differ in size: {a.shape} vs {b.shape}")
    ra, rb = rank_average(a), rank_average(b)
    ra -= ra.mean()
    rb -= rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    if denom == 0.0:
        return float("nan")
    return float((ra * rb).sum() / denom)


def top_k_region(a: np.ndarray, top_k: float) -> np.ndarray:
    """Boolean mask of the pixels >= the ceil(top_k * N)-th largest value (ties included)."""
    if not 0.0 < top_k <= 1.0:
        raise ValueError(f"top_k must be a fraction in (0, 1], got {top_k}")
    flat = np.asarray(a, dtype=np.float64).ravel()
    n = max(1, math.ceil(top_k * flat.size - 1e-9))
    threshold = np.partition(flat, flat.size - n)[flat.size - n]
    return (flat >= threshold).reshape(np.shape(a))


def top_k_iou(a: np.ndarray, b: np.ndarray, top_k: float = 0.2) -> float:
    """IoU of the top-k regions of two maps of equal shape (NaN if a map is constant)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"maps differ in shape: {np.shape(a)} vs {np.shape(b)}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    ra, rb = top_k_region(a, top_k), top_k_region(b, top_k)
    union = np.logical_or(ra, rb).sum()
    return float(np.logical_and(ra, rb).sum() / union)


def comparison_grid(a: Sequence[int], b: Sequence[int]) -> tuple[int, int]:
    """The grid two maps are compared at: the coarser of the two, per axis."""
    return (min(int(a[0]), int(b[0])), min(int(a[1]), int(b[1])))


def pool_to(maps: Tensor, grid: Sequence[int]) -> Tensor:
    """(B, H, W) maps average-pooled to ``grid`` (adaptive windows; unchanged if equal)."""
    grid = (int(grid[0]), int(grid[1]))
    if tuple(maps.shape[-2:]) == grid:
        return maps
    return F.adaptive_avg_pool2d(maps[:, None].float(), grid)[:, 0]


def pooled_agreement(
    attention: np.ndarray | Tensor, gradcam: np.ndarray | Tensor, top_k: float = 0.2
) -> tuple[float, float, tuple[int, int]]:
    """Spearman rho and top-k IoU of two 2-D maps at the coarser grid of the two (the finer
    map average-pooled to it); returns ``(rho, iou, grid)``."""
    a = torch.as_tensor(np.asarray(attention, dtype=np.float32))
    g = torch.as_tensor(np.asarray(gradcam, dtype=np.float32))
    if a.dim() != 2 or g.dim() != 2:
        raise ValueError(f"expected two 2-D maps, got {tuple(a.shape)} and {tuple(g.shape)}")
    grid = comparison_grid(a.shape, g.shape)
    pa, pg = pool_to(a[None], grid)[0].numpy(), pool_to(g[None], grid)[0].numpy()
    return spearman_rank_correlation(pa, pg), top_k_iou(pa, pg, top_k), grid


def iou_chance(top_k: float, grid: Sequence[int] | int) -> float:
    """Expected IoU of the top-k regions of two independent maps without ties on ``grid``
    (the comparison grid, or its number of cells), exact: see
    :func:`attnviz.analysis.stats.top_k_iou_chance`."""
    return top_k_iou_chance(grid, top_k)


# ----------------------------------------------------------------------------- selection
def default_spatial_sites(sites: Sequence[Site]) -> list[Site]:
    """The last site of each spatial kind (cbam_spatial, gc) in module order."""
    last: dict[str, Site] = {}
    for s in sites:
        last[s.kind] = s
    return [s for s in sites if last.get(s.kind) is s]


def default_gradcam_layer(model: nn.Module) -> str:
    """Name of the last convolutional stage: timm's last ``feature_info`` module, else
    ``layer4`` (ResNets), else ``features`` (torchvision EfficientNet / MobileNet), else the
    last ``nn.Conv2d``."""
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
            model.get_submodule(name)
            return name
        except (AttributeError, KeyError, IndexError, TypeError):
            pass
    for name in ("layer4", "features"):
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM; pass layer=")
    return convs[-1]


def _resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    if layer is None:
        layer = default_gradcam_layer(model)
    if isinstance(layer, str):
        try:
            return layer, model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"{type(model).__name__} has no submodule {layer!r}") from None
    for name, m in model.named_modules():
        if m is layer:
            return name, m
    raise ValueError("layer is not a submodule of the model")


# ----------------------------------------------------------------------------- result
@dataclass
class AttentionVsAttributionResult(Result):
    """Spatial attention vs Grad-CAM, per image and site (attnviz's own comparison).

    ``sites``: [{alias, name, kind, stage, block, grid, compare_grid}] (``grid`` the
    attention's, ``compare_grid`` where it met Grad-CAM, whose grid is
    ``meta["gradcam_grid"]``); ``compare_at`` "coarser" or "input"; ``spearman`` / ``iou`` (N, S);
    ``labels`` (N,) with -1 for unknown, ``predictions`` and ``targets`` (N,), ``ids`` (N,).
    Maps of the first ``len(images)`` images are kept for figures, at the input size:
    ``gradcam`` (M, H, W), ``attention`` (S, M, H, W), ``images`` (M, H, W, 3) uint8 (the view
    the model saw; min-max scaled when the source gave tensors).
    """

    kind: ClassVar[str] = "attention_vs_attribution"
    format_version: ClassVar[int] = 3

    sites: list[dict[str, Any]]
    layer: str
    top_k: float
    ids: list[str]
    labels: np.ndarray
    predictions: np.ndarray
    targets: np.ndarray
    target_source: str
    spearman: np.ndarray
    iou: np.ndarray
    gradcam: np.ndarray
    attention: np.ndarray
    images: np.ndarray
    class_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    compare_at: str = "coarser"

    @property
    def aliases(self) -> list[str]:
        return [s["alias"] for s in self.sites]

    def _grid_text(self, grid: Any) -> str:
        return "x".join(str(int(v)) for v in grid) if grid else "?"

    def site_index(self, key: str) -> int:
        for i, s in enumerate(self.sites):
            if key in (s["alias"], s["name"]):
                return i
        raise KeyError(f"no site {key!r}; sites: {self.aliases}")

    def to_frame(self) -> pd.DataFrame:
        """One row per image and site: id, label, prediction, target, site, spearman, iou."""
        rows = []
        for i, ident in enumerate(self.ids):
            for j, s in enumerate(self.sites):
                rows.append(
                    {
                        "image": ident,
                        "label": int(self.labels[i]),
                        "prediction": int(self.predictions[i]),
                        "target": int(self.targets[i]),
                        "site": s["alias"],
                        "kind": s["kind"],
                        "spearman": float(self.spearman[i, j]),
                        "iou": float(self.iou[i, j]),
                    }
                )
        return pd.DataFrame(rows)

    def effects(self) -> pd.DataFrame:
        """Per site: mean Spearman rho (``metric`` "spearman") and mean top-k IoU above its
        chance level (``metric`` "iou_above_chance"), each with its standard error over
        images (std ddof=1 / sqrt(n), NaNs left out)."""
        rows = []
        for j, s in enumerate(self.sites):
            chance = iou_chance(
                self.top_k, s.get("compare_grid") or self.meta.get("gradcam_grid") or 1
            )
            for metric, col, offset in (
                ("spearman", self.spearman[:, j], 0.0),
                ("iou_above_chance", self.iou[:, j], chance),
            ):
                ok = col[np.isfinite(col)]
                n = int(ok.size)
                rows.append(
                    {"site": s["alias"], "metric": metric,
                     "effect": float(ok.mean()) - offset if n else np.nan,
                     "se": float(ok.std(ddof=1) / math.sqrt(n)) if n > 1 else np.nan, "n": n}
                )  # fmt: skip
        return pd.DataFrame(rows, columns=["site", "metric", "effect", "se", "n"])

    def site_summary(self) -> pd.DataFrame:
        """Per site: grids, images, mean / std of Spearman and IoU (NaNs left out), chance IoU."""
        rows = []
        for j, s in enumerate(self.sites):
            rho, iou = self.spearman[:, j], self.iou[:, j]
            rows.append(
                {
                    "site": s["alias"],
                    "kind": s["kind"],
                    "layer": self.layer,
                    "attention_grid": self._grid_text(s.get("grid")),
                    "gradcam_grid": self._grid_text(self.meta.get("gradcam_grid")),
                    "compare_grid": self._grid_text(s.get("compare_grid")),
                    "n": int(np.isfinite(rho).sum()),
                    "spearman_mean": float(np.nanmean(rho)) if np.isfinite(rho).any() else np.nan,
                    "spearman_std": float(np.nanstd(rho)) if np.isfinite(rho).any() else np.nan,
                    "iou_mean": float(np.nanmean(iou)) if np.isfinite(iou).any() else np.nan,
                    "iou_std": float(np.nanstd(iou)) if np.isfinite(iou).any() else np.nan,
                    "iou_chance": iou_chance(
                        self.top_k, s.get("compare_grid") or self.meta.get("gradcam_grid") or 1
                    ),
                    "top_k": self.top_k,
                }
            )
        return pd.DataFrame(rows)

    def summary(self) -> str:
        """Per site: images, mean and std of Spearman's rho and of the top-k IoU (text)."""
        table = self.site_summary()[
            [
                "site",
                "attention_grid",
                "gradcam_grid",
                "compare_grid",
                "n",
                "spearman_mean",
                "spearman_std",
                "iou_mean",
                "iou_std",
                "iou_chance",
            ]
        ]
        head = (
            f"{len(self.ids)} images, Grad-CAM at {self.layer} for the {self.target_source} "
            f"class; top-{self.top_k:.0%} IoU (iou_chance: exact for two independent maps "
            "without ties at the compare grid)"
        )
        where = (
            "compared at the coarser grid of the two (the finer map average-pooled to it)"
            if self.compare_at == "coarser"
            else "compared at the input size (both maps upsampled, bilinear)"
        )
        note = (
            "attnviz's own comparison of the spatial attention with Grad-CAM (not the CBAM "
            "paper's, which compared Grad-CAM across models: gradcam_comparison); " + where
        )
        return "\n".join(
            [head, note, table.to_string(index=False, float_format=lambda v: f"{v:.3f}")]
        )

    def _payload(self):
        arrays = {
            "labels": self.labels,
            "predictions": self.predictions,
            "targets": self.targets,
            "spearman": self.spearman,
            "iou": self.iou,
            "gradcam": self.gradcam,
            "attention": self.attention,
            "images": self.images,
        }
        fields = {
            "paper": "Woo et al., CBAM, ECCV 2018, Sec. 4.3; Grad-CAM via captum LayerGradCam",
            "sites": self.sites,
            "layer": self.layer,
            "top_k": self.top_k,
            "compare_at": self.compare_at,
            "ids": self.ids,
            "target_source": self.target_source,
            "class_names": self.class_names,
            "skipped": records(self.skipped),
            "meta": self.meta,
        }
        frames = {"agreement.csv": self.to_frame(), "summary.csv": self.site_summary()}
        return arrays, frames, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], data: dict[str, np.ndarray]):
        return cls(
            sites=manifest["sites"],
            layer=manifest["layer"],
            top_k=float(manifest["top_k"]),
            compare_at=manifest.get("compare_at", "input"),
            ids=list(manifest["ids"]),
            target_source=manifest["target_source"],
            class_names=list(manifest.get("class_names", [])),
            skipped=from_records(manifest.get("skipped")),
            meta=dict(manifest.get("meta", {})),
            **data,
        )


# ----------------------------------------------------------------------------- the analysis
class AttentionVsAttribution(Analysis):
    """Spatial attention and captum Grad-CAM from one forward per batch.

    The forward is captum's own: ``LayerGradCam`` runs a wrapper of the model that picks,
    per image, the target logit (label, prediction or the given class) from the logits of that
    same forward, so capture records the attention of the forward that Grad-CAM explains.
    """

    name = "attention_vs_attribution"
    needs_grad = True
    keep_images = True

    def __init__(
        self,
        *,
        target: int | str | Sequence[int] | None = None,
        layer: str | nn.Module | None = None,
        sites: Iterable[str | Site] | str | None = None,
        top_k: float = 0.2,
        interpolate_mode: str = "bilinear",
        keep_maps: int = 16,
        compare_at: str = "coarser",
    ):
        top_k_region(np.zeros(4), top_k)  # validates top_k early
        if compare_at not in ("coarser", "input"):
            raise ValueError(f"compare_at must be 'coarser' or 'input', not {compare_at!r}")
        self.compare_at = compare_at
        if isinstance(target, str) and target not in ("label", "prediction"):
            raise ValueError(
                f"target must be None, 'label', 'prediction', a class index or one index per "
                f"image, not {target!r}"
            )
        self.target, self.layer, self.selection = target, layer, sites
        self.top_k, self.interpolate_mode, self.keep_maps = (
            float(top_k),
            interpolate_mode,
            keep_maps,
        )
        self._sites: list[Site] = []

    def sites(self, model: nn.Module) -> list[Site]:
        self._sites = choose_sites(
            model,
            kinds_with_role("spatial"),
            self.selection,
            what="spatial attention site",
            default=default_spatial_sites,
        )
        self._layer_name, layer = _resolve_layer(model, self.layer)
        self._model = model
        self._gradcam = LayerGradCam(self._select_target, layer)
        return self._sites

    def params(self) -> dict[str, Any]:
        target = self.target if isinstance(self.target, (int, str, type(None))) else "given"
        return {
            "target": target,
            "layer": self._layer_name,
            "top_k": self.top_k,
            "interpolate_mode": self.interpolate_mode,
            "keep_maps": self.keep_maps,
            "compare_at": self.compare_at,
        }

    def _select_target(self, x: Tensor) -> Tensor:
        logits = self._model(x)
        self._logits = logits.detach()
        return logits.gather(1, self._targets(logits)[:, None])

    def _targets(self, logits: Tensor) -> Tensor:
        pred = logits.argmax(dim=1)
        labels = self._batch_labels.to(logits.device)
        if self.target is None:
            return torch.where(labels >= 0, labels, pred)
        if self.target == "prediction":
            return pred
        if self.target == "label":
            if (labels < 0).any():
                raise ValueError("target='label' but some images have no label")
            return labels
        if isinstance(self.target, (int, np.integer)):
            return torch.full_like(pred, int(self.target))
        seq = np.asarray(self.target, dtype=np.int64).ravel()
        if seq.size <= int(self._batch_index.max()):
            raise ValueError(f"target has {seq.size} entries, fewer than the images")
        return torch.as_tensor(seq[self._batch_index], device=logits.device)

    def forward(self, model: nn.Module, x: Tensor, batch) -> Tensor:
        self._batch_labels = torch.tensor([-1 if v is None else v for v in batch.labels])
        self._batch_index = np.asarray([r.index for r in batch.records])
        cam = self._gradcam.attribute(
            x.detach().requires_grad_(True), target=0, relu_attributions=True
        )
        return cam.detach()

    def step(self, state: State, batch, cache, cam: Tensor) -> None:
        logits = self._logits
        preds = logits.argmax(dim=1).cpu().numpy()
        targets = self._targets(logits).cpu().numpy()
        size = (int(batch.x.shape[-2]), int(batch.x.shape[-1]))
        cam_up = LayerAttribution.interpolate(cam, size, self.interpolate_mode)[:, 0]
        cam_np = cam_up.float().cpu().numpy()
        cam_raw = cam[:, 0].detach().float().cpu()
        cam_grid = (int(cam.shape[-2]), int(cam.shape[-1]))
        att_up, pairs = [], []  # pairs: (attention, Grad-CAM) at the comparison grid, per site
        for s in self._sites:
            a = cache[s.name]
            if a.shape[0] != len(batch):
                raise RuntimeError(f"site {s.alias} fired more than once per image")
            grid = (int(a.shape[-2]), int(a.shape[-1]))
            up = F.interpolate(a[:, None].float(), size, mode=self.interpolate_mode)[:, 0]
            att_up.append(up.numpy())
            if self.compare_at == "input":
                common = size
                pairs.append((att_up[-1], cam_np))
            else:
                common = comparison_grid(grid, cam_grid)
                pairs.append((pool_to(a.float(), common).numpy(), pool_to(cam_raw, common).numpy()))
            state.info.setdefault("grid::" + s.name, list(grid))
            state.info.setdefault("compare::" + s.name, [int(common[0]), int(common[1])])
        state.info.setdefault("cam_grid", list(cam_grid))
        for j, r in enumerate(batch.records):
            label = -1 if r.label is None else r.label
            state.put("id", r.index, np.asarray(r.id))
            state.put("ytp", r.index, np.asarray([label, preds[j], targets[j]]))
            state.put(
                "spearman", r.index, [spearman_rank_correlation(a[j], c[j]) for a, c in pairs]
            )
            state.put("iou", r.index, [top_k_iou(a[j], c[j], self.top_k) for a, c in pairs])
            if r.index < self.keep_maps or len(state.rows.get("cam", {})) < self.keep_maps:
                state.put("cam", r.index, cam_np[j].astype(np.float32))
                state.put("att", r.index, np.stack([a[j] for a in att_up]).astype(np.float32))
                disp = display_image(batch.images[j], batch.x[j], self.transform)
                state.put("display", r.index, disp)

    def finalise(self, state: State, run: RunInfo) -> AttentionVsAttributionResult:
        _, ids = state.stacked("id")
        _, ytp = state.stacked("ytp")
        _, rho = state.stacked("spearman")
        _, iou = state.stacked("iou")
        idx, cams = state.stacked("cam")
        keep = np.argsort(idx)[: self.keep_maps]
        cams = cams[keep] if len(idx) else np.zeros((0, 0, 0), np.float32)
        att = state.stacked("att")[1][keep] if len(idx) else np.zeros((0, 0, 0, 0), np.float32)
        disp = state.stacked("display")[1][keep] if len(idx) else np.zeros((0, 0, 0, 3), np.uint8)
        labels = ytp[:, 0].astype(np.int64)
        if self.target is None:
            source = (
                "label"
                if (labels >= 0).all()
                else ("prediction" if (labels < 0).all() else "mixed")
            )
        elif isinstance(self.target, str):
            source = self.target
        elif isinstance(self.target, (int, np.integer)):
            source = "fixed"
        else:
            source = "given"
        n_sites = len(self._sites)
        return AttentionVsAttributionResult(
            sites=[
                {
                    "alias": s.alias,
                    "name": s.name,
                    "kind": s.kind,
                    "stage": s.stage,
                    "block": s.block,
                    "grid": state.info.get("grid::" + s.name, [0, 0]),
                    "compare_grid": state.info.get("compare::" + s.name, [0, 0]),
                }
                for s in self._sites
            ],
            layer=self._layer_name,
            top_k=self.top_k,
            ids=[str(v) for v in ids],
            labels=labels,
            predictions=ytp[:, 1].astype(np.int64),
            targets=ytp[:, 2].astype(np.int64),
            target_source=source,
            spearman=np.asarray(rho, dtype=np.float64).reshape(len(ids), n_sites),
            iou=np.asarray(iou, dtype=np.float64).reshape(len(ids), n_sites),
            gradcam=np.asarray(cams, dtype=np.float32),
            attention=np.transpose(att, (1, 0, 2, 3))
            if att.ndim == 4 and len(att)
            else np.zeros((n_sites, 0, *cams.shape[1:]), np.float32),
            images=np.asarray(disp, dtype=np.uint8),
            class_names=list(run.class_names),
            skipped=run.skipped,
            meta={
                "interpolate_mode": self.interpolate_mode,
                "gradcam_grid": state.info.get("cam_grid"),
            },
            compare_at=self.compare_at,
        )


def attention_vs_attribution(
    model: nn.Module,
    images: Any,
    *,
    target: int | str | Sequence[int] | None = None,
    layer: str | nn.Module | None = None,
    sites: Iterable[str | Site] | str | None = None,
    top_k: float = 0.2,
    interpolate_mode: str = "bilinear",
    keep_maps: int = 16,
    compare_at: str = "coarser",
    **run_options: Any,
) -> AttentionVsAttributionResult:
    """CBAM spatial / GC context maps beside captum Grad-CAM, with per-image agreement
    (attnviz's own comparison; the CBAM paper's is :func:`gradcam_comparison`).

    ``compare_at``: ``"coarser"`` (default) compares each site's map and Grad-CAM at the
    coarser grid of the two, the finer average-pooled to it; ``"input"`` at the input size,
    both upsampled (``interpolate_mode``).

    ``target``: None (label if known, else prediction), ``"label"``, ``"prediction"``, a
    class index, or one index per image. ``layer``: module or name for Grad-CAM (default
    :func:`default_gradcam_layer`). ``sites``: names / aliases, ``"all"``, or None for the
    last site of each spatial kind. ``keep_maps``: how many images' maps to keep for figures
    (agreement is computed for all). ``run_options``: those of
    :func:`attnviz.analysis.runner.run`. One forward per batch (see
    :class:`AttentionVsAttribution`); the model runs in eval mode, its flags restored.
    """
    analysis = AttentionVsAttribution(
        target=target,
        layer=layer,
        sites=sites,
        top_k=top_k,
        interpolate_mode=interpolate_mode,
        keep_maps=keep_maps,
        compare_at=compare_at,
    )
    result = run(analysis, model, images, **run_options)
    assert isinstance(result, AttentionVsAttributionResult)
    return result


# ----------------------------------------------------------------------------- the paper's
@dataclass
class GradCamComparisonResult(Result):
    """Grad-CAM of several models on the same images (CBAM paper, Sec. 4.3, Fig. 4).

    ``models`` the model names, ``layers`` their Grad-CAM layers, ``gradcam_grids`` the grid of
    each model's Grad-CAM; per image: ``ids``, ``labels`` (-1 unknown), ``targets`` (the class
    every model explains), ``predictions`` (N, M) and ``probability`` (N, M), the softmax
    probability of the target class. ``gradcam`` (M, K, H, W): the maps of the first K images
    at the input size, for figures; ``images`` (K, H, W, 3) uint8, the view the models saw.

    Calibration-free measures beside P: ``margin`` (N, M) = logit of the target minus the
    largest other logit (> 0 iff the model predicts the target). Localisation, where the
    object masks are known (:mod:`attnviz.analysis.localisation`): ``object_area`` (N,) the
    object's share of the view (the chance level of both measures); ``gradcam_share`` /
    ``gradcam_pointing`` (N, M) Grad-CAM's mass share on the object and pointing-game hit;
    ``attention_sites`` (one dict per spatial attention site of every model: model, alias,
    name, kind, grid) with ``attention_share`` / ``attention_pointing`` (N, S).
    ``meta["label_smoothing"]``: per model the label smoothing it was trained with (bundled
    models, from the manifest; None when unknown).
    """

    kind: ClassVar[str] = "gradcam_comparison"
    format_version: ClassVar[int] = 1

    models: list[str]
    layers: list[str]
    gradcam_grids: list[list[int]]
    ids: list[str]
    labels: np.ndarray
    targets: np.ndarray
    target_source: str
    predictions: np.ndarray
    probability: np.ndarray
    gradcam: np.ndarray
    images: np.ndarray
    class_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    margin: np.ndarray | None = None
    object_area: np.ndarray | None = None
    gradcam_share: np.ndarray | None = None
    gradcam_pointing: np.ndarray | None = None
    attention_sites: list[dict[str, Any]] = field(default_factory=list)
    attention_share: np.ndarray | None = None
    attention_pointing: np.ndarray | None = None

    MEASURES: ClassVar[dict[str, str]] = {
        "probability": "P(target) = softmax probability of the target class",
        "margin": "margin = logit(target) - largest other logit",
        "gradcam_share": "share of Grad-CAM's mass on the object",
        "gradcam_pointing": "pointing game: Grad-CAM's maximum on the object (hit rate)",
    }

    def measure(self, name: str) -> np.ndarray:
        """(N, M) per-image values of a measure of :attr:`MEASURES`."""
        if name not in self.MEASURES:
            raise ValueError(f"unknown measure {name!r}; valid: {list(self.MEASURES)}")
        values = getattr(self, name)
        if values is None:
            raise ValueError(f"this result has no {name!r} (object masks or logits unknown)")
        return np.asarray(values, dtype=np.float64)

    def smoothing_note(self) -> str:
        """What P(target) can mean for these models: with label smoothing eps over K
        classes the loss-optimal P(target) is 1 - eps + eps / K, not 1."""
        smooth = self.meta.get("label_smoothing") or {}
        k = int(self.meta.get("num_classes") or len(self.class_names) or 0)
        known = {m: smooth.get(m) for m in self.models if smooth.get(m) is not None}
        if not known:
            return "label smoothing of the models unknown: P(target) may be calibrated to < 1"
        parts = []
        for eps in sorted(set(known.values())):
            names = ", ".join(m for m, e in known.items() if e == eps)
            best = 1 - eps + eps / k if k else float("nan")
            parts.append(f"{names}: label smoothing {eps:g} (loss-optimal P(target) {best:.2f})")
        return (
            "trained with " + "; ".join(parts) + ": a higher P(target) is not a better fit; "
            "accuracy and the margin do not depend on calibration"
        )

    def model_index(self, key: str) -> int:
        if key not in self.models:
            raise KeyError(f"no model {key!r}; models: {self.models}")
        return self.models.index(key)

    def to_frame(self) -> pd.DataFrame:
        """One row per image and model: image, model, label, target, prediction, probability."""
        rows = []
        for i, ident in enumerate(self.ids):
            for m, name in enumerate(self.models):
                rows.append(
                    {
                        "image": ident,
                        "model": name,
                        "label": int(self.labels[i]),
                        "target": int(self.targets[i]),
                        "prediction": int(self.predictions[i, m]),
                        "probability": float(self.probability[i, m]),
                        "margin": float(self.margin[i, m]) if self.margin is not None else np.nan,
                    }
                )
        return pd.DataFrame(rows)

    def model_summary(self) -> pd.DataFrame:
        """Per model: layer, Grad-CAM grid, images, mean / std / median of the target-class
        probability, accuracy (NaN without labels) and how often the model's probability is
        the highest of the models."""
        known = self.labels >= 0
        best = np.argmax(self.probability, axis=1) if len(self.ids) else np.zeros(0, int)
        rows = []
        for m, name in enumerate(self.models):
            p = self.probability[:, m]
            correct = self.predictions[known, m] == self.labels[known]
            rows.append(
                {
                    "model": name,
                    "layer": self.layers[m],
                    "gradcam_grid": "x".join(str(v) for v in self.gradcam_grids[m]),
                    "n": len(p),
                    "probability_mean": float(p.mean()) if p.size else np.nan,
                    "probability_std": float(p.std()) if p.size else np.nan,
                    "probability_median": float(np.median(p)) if p.size else np.nan,
                    "accuracy": float(correct.mean()) if correct.size else np.nan,
                    "highest_share": float((best == m).mean()) if p.size else np.nan,
                    "margin_mean": float(self.margin[:, m].mean())
                    if self.margin is not None and p.size
                    else np.nan,
                    "margin_median": float(np.median(self.margin[:, m]))
                    if self.margin is not None and p.size
                    else np.nan,
                }
            )
        return pd.DataFrame(rows)

    def localisation_summary(self) -> pd.DataFrame:
        """Per map (each model's Grad-CAM, then each spatial attention site): images, mean
        mass share on the object ± s.e., pointing-game hit rate ± s.e., and the mean object
        area (the chance level of both); empty without object masks."""
        if self.gradcam_share is None or self.object_area is None:
            return pd.DataFrame()
        area = float(np.mean(self.object_area))
        rows = []

        def se(v: np.ndarray) -> float:
            return float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else np.nan

        def row(model: str, what: str, grid: str, share: np.ndarray, hit: np.ndarray) -> dict:
            sh, pt = share[np.isfinite(share)], hit[np.isfinite(hit)]
            return {"model": model, "map": what, "grid": grid, "n": int(sh.size),
                    "share_mean": float(sh.mean()) if sh.size else np.nan, "share_se": se(sh),
                    "pointing": float(pt.mean()) if pt.size else np.nan, "pointing_se": se(pt),
                    "object_area": area}  # fmt: skip

        for m, name in enumerate(self.models):
            grid = "x".join(str(v) for v in self.gradcam_grids[m])
            rows.append(row(name, "Grad-CAM", grid, self.gradcam_share[:, m],
                            self.gradcam_pointing[:, m]))  # fmt: skip
        for j, site in enumerate(self.attention_sites):
            grid = "x".join(str(v) for v in site.get("grid", []))
            rows.append(row(site["model"], site["alias"], grid, self.attention_share[:, j],
                            self.attention_pointing[:, j]))  # fmt: skip
        return pd.DataFrame(rows)

    def effects(self) -> pd.DataFrame:
        """Per model and measure of :attr:`MEASURES` that was recorded: the mean over images,
        and for every model but the first the paired difference to the first model
        (``measure`` "<measure>_difference"), each with its (paired) standard error over
        images."""
        rows = []
        for measure in self.MEASURES:
            values = getattr(self, measure, None)
            if values is None or np.size(values) == 0:
                continue
            values = np.asarray(values, dtype=np.float64)
            for m, name in enumerate(self.models):
                v = values[:, m][np.isfinite(values[:, m])]
                se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else np.nan
                mean = float(v.mean()) if v.size else np.nan
                rows.append(
                    {"model": name, "measure": measure, "effect": mean, "se": se, "n": v.size}
                )
                if m == 0:
                    continue
                ok = np.isfinite(values[:, m]) & np.isfinite(values[:, 0])
                d = paired_difference(values[ok, m], values[ok, 0])
                rows.append(
                    {"model": name, "measure": f"{measure}_difference",
                     "effect": d["mean_difference"], "se": d["paired_se"], "n": d["n"]}
                )  # fmt: skip
        return pd.DataFrame(rows, columns=["model", "measure", "effect", "se", "n"])

    def paired_differences(
        self, baseline: str | None = None, measure: str = "probability"
    ) -> pd.DataFrame:
        """Per model against ``baseline`` (default: the first model) on the same images:
        the mean of measure(model) - measure(baseline) (``measure``: a name of
        :attr:`MEASURES`, default P(target)), its paired standard error and z, the share of
        images where the model's value is higher, and the exact sign test's two-sided p.
        Images where either value is NaN are left out."""
        base = self.model_index(baseline) if baseline is not None else 0
        values = self.measure(measure)
        rows = []
        for m, name in enumerate(self.models):
            if m == base:
                continue
            ok = np.isfinite(values[:, m]) & np.isfinite(values[:, base])
            diff = paired_difference(values[ok, m], values[ok, base])
            rows.append({"measure": measure, "model": name, "baseline": self.models[base], **diff})
        return pd.DataFrame(rows)

    def summary(self) -> str:
        head = (
            f"{len(self.ids)} images, {len(self.models)} models, Grad-CAM for the "
            f"{self.target_source} class (CBAM paper Sec. 4.3: P = softmax probability of "
            "that class)"
        )
        fmt = "{:.3f}".format
        text = (
            head
            + "\n"
            + self.model_summary().drop(columns=["n"]).to_string(index=False, float_format=fmt)
        )
        text += "\n" + self.smoothing_note()
        measures = [m for m in self.MEASURES if getattr(self, m) is not None]
        if len(self.ids) > 1 and len(self.models) > 1:
            paired = pd.concat([self.paired_differences(measure=m) for m in measures])
            text += (
                "\npaired on the same images: value(model) - value(baseline), mean ± paired "
                "s.e., share of images higher, exact sign test\n"
                + paired.to_string(index=False, float_format="{:.3g}".format)
            )
        loc = self.localisation_summary()
        if len(loc):
            text += (
                "\nlocalisation on the object mask (maps at the input size): share = map mass "
                "on the object, pointing = map maximum on the object; both are "
                f"{loc['object_area'].iloc[0]:.3f} (the mean object area) for a map without "
                "preference; ± = s.e. over images\n"
                + loc.to_string(index=False, float_format="{:.3f}".format)
            )
        return text

    def _payload(self):
        arrays = {
            "labels": self.labels,
            "targets": self.targets,
            "predictions": self.predictions,
            "probability": self.probability,
            "gradcam": self.gradcam,
            "images": self.images,
        }
        for key in ("margin", "object_area", "gradcam_share", "gradcam_pointing",
                    "attention_share", "attention_pointing"):  # fmt: skip
            if getattr(self, key) is not None:
                arrays[key] = np.asarray(getattr(self, key), dtype=np.float64)
        fields = {
            "paper": "Woo et al., CBAM, ECCV 2018, Sec. 4.3 / Fig. 4 (Grad-CAM across models)",
            "attention_sites": self.attention_sites,
            "models": self.models,
            "layers": self.layers,
            "gradcam_grids": self.gradcam_grids,
            "ids": self.ids,
            "target_source": self.target_source,
            "class_names": self.class_names,
            "skipped": records(self.skipped),
            "meta": self.meta,
        }
        frames = {"probability.csv": self.to_frame(), "models.csv": self.model_summary()}
        if self.gradcam_share is not None:
            frames["localisation.csv"] = self.localisation_summary()
        return arrays, frames, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], data: dict[str, np.ndarray]):
        return cls(
            models=list(manifest["models"]),
            layers=list(manifest["layers"]),
            gradcam_grids=[list(g) for g in manifest["gradcam_grids"]],
            ids=list(manifest["ids"]),
            target_source=manifest["target_source"],
            class_names=list(manifest.get("class_names", [])),
            skipped=from_records(manifest.get("skipped")),
            meta=dict(manifest.get("meta", {})),
            attention_sites=list(manifest.get("attention_sites", [])),
            **data,
        )


class _Models(nn.Module):
    """The compared models as one module for the runner (eval mode and device for all)."""

    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        self.models = nn.ModuleDict({f"m{i}": m for i, m in enumerate(models.values())})


class GradCamComparison(Analysis):
    """Grad-CAM and the target-class probability of every model, per batch (one forward with
    gradients per model and batch, through captum's LayerGradCam). With ``masks`` (source
    position -> the object's coverage in the original image) it also scores Grad-CAM and every
    spatial attention site of every model (recorded in that same forward) on the object
    (:mod:`attnviz.analysis.localisation`)."""

    name = "gradcam_comparison"
    needs_grad = True
    keep_images = True

    def __init__(
        self,
        models: dict[str, nn.Module],
        *,
        target: int | str | Sequence[int] | None = None,
        layer: str | dict[str, str] | None = None,
        keep_maps: int = 8,
        interpolate_mode: str = "bilinear",
        masks: Any = None,
    ):
        if not models:
            raise ValueError("give at least one model")
        if masks is not None and not callable(masks):
            raise TypeError("masks must be a callable: source position -> coverage (H, W)")
        self.masks = masks
        self._sites: list[Site] = []
        self._site_model: list[int] = []
        if isinstance(target, str) and target not in ("label", "prediction"):
            raise ValueError(
                f"target must be None, 'label', 'prediction', a class index or one index per "
                f"image, not {target!r}"
            )
        self.models, self.target, self.layer = dict(models), target, layer
        self.keep_maps, self.interpolate_mode = keep_maps, interpolate_mode

    def sites(self, model: nn.Module) -> list[Site]:
        self._layers, self._cams = [], []
        for i, (name, m) in enumerate(self.models.items()):
            wanted = self.layer.get(name) if isinstance(self.layer, dict) else self.layer
            layer_name, layer = _resolve_layer(m, wanted)
            self._layers.append(layer_name)
            self._cams.append(LayerGradCam(self._picker(i), layer))
        if self.masks is None:
            return []
        from ..capture import find_sites

        spatial = set(kinds_with_role("spatial"))
        self._sites = [s for s in find_sites(model) if s.kind in spatial]
        self._site_model = [int(s.name.split(".")[1][1:]) for s in self._sites]
        return self._sites

    def params(self) -> dict[str, Any]:
        target = self.target if isinstance(self.target, (int, str, type(None))) else "given"
        return {
            "models": list(self.models),
            "layers": getattr(self, "_layers", None),
            "target": target,
            "keep_maps": self.keep_maps,
            "interpolate_mode": self.interpolate_mode,
            "masks": self.masks is not None,
        }

    def _mask(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """The object's coverage in the view the models saw (the transform's geometric
        steps applied to the mask, bilinear), float (H, W)."""
        from PIL import Image

        mask = np.asarray(self.masks(index), dtype=np.float32)
        view = Image.fromarray(mask, mode="F")
        if self.transform is not None and self.transform.geometry is not None:
            view = self.transform.view(view)
        if view.size != (size[1], size[0]):
            view = view.resize((size[1], size[0]), Image.BILINEAR)
        return np.clip(np.asarray(view, dtype=np.float64), 0.0, 1.0)

    def _picker(self, i: int):
        model = list(self.models.values())[i]

        def pick(x: Tensor) -> Tensor:
            logits = model(x)
            self._logits[i] = logits.detach()
            if self._batch_targets is None:  # the first model fixes the batch's targets
                self._batch_targets = self._targets(logits.detach())
            return logits.gather(1, self._batch_targets.to(logits.device)[:, None])

        return pick

    _targets = AttentionVsAttribution._targets

    def forward(self, model: nn.Module, x: Tensor, batch) -> list[Tensor]:
        self._batch_labels = torch.tensor([-1 if v is None else v for v in batch.labels])
        self._batch_index = np.asarray([r.index for r in batch.records])
        self._batch_targets = None
        self._logits: dict[int, Tensor] = {}
        cams = []
        for cam in self._cams:
            out = cam.attribute(x.detach().requires_grad_(True), target=0, relu_attributions=True)
            cams.append(out.detach())
        return cams

    def step(self, state: State, batch, cache, cams: list[Tensor]) -> None:
        targets = self._batch_targets.cpu()
        size = (int(batch.x.shape[-2]), int(batch.x.shape[-1]))
        probs, preds, ups, margins = [], [], [], []
        for i, cam in enumerate(cams):
            logits = self._logits[i].float().cpu()
            p = torch.softmax(logits, dim=1).gather(1, targets[:, None])[:, 0]
            probs.append(p.numpy())
            preds.append(logits.argmax(dim=1).numpy())
            true = logits.gather(1, targets[:, None])[:, 0]
            other = logits.scatter(1, targets[:, None], float("-inf")).max(dim=1).values
            margins.append((true - other).double().numpy())
            state.info.setdefault("num_classes", int(logits.shape[1]))
            state.info.setdefault(f"grid::{i}", [int(cam.shape[-2]), int(cam.shape[-1])])
            up = LayerAttribution.interpolate(cam, size, self.interpolate_mode)[:, 0]
            ups.append(up.float().cpu().numpy())
        att = []  # per spatial site: (B, H, W) at the input size
        for s in self._sites:
            a = cache[s.name]
            if a.shape[0] != len(batch):
                raise RuntimeError(f"site {s.alias} fired more than once per image")
            state.info.setdefault("grid::" + s.name, [int(a.shape[-2]), int(a.shape[-1])])
            up = F.interpolate(a[:, None].float(), size, mode=self.interpolate_mode)[:, 0]
            att.append(up.numpy())
        kept = state.rows.get("cam", {})
        for j, r in enumerate(batch.records):
            state.put("margin", r.index, np.asarray([v[j] for v in margins], np.float64))
            if self.masks is not None:
                mask = self._mask(r.index, size)
                cams_j = np.stack([u[j] for u in ups])
                state.put("area", r.index, np.asarray([mask.mean()]))
                state.put("cam_share", r.index, mask_share(cams_j, mask))
                state.put("cam_hit", r.index, pointing_hit(cams_j, mask))
                if att:
                    att_j = np.stack([a[j] for a in att])
                    state.put("att_share", r.index, mask_share(att_j, mask))
                    state.put("att_hit", r.index, pointing_hit(att_j, mask))
            label = -1 if r.label is None else r.label
            state.put("id", r.index, np.asarray(r.id))
            state.put("yt", r.index, np.asarray([label, int(targets[j])]))
            state.put("prob", r.index, np.asarray([p[j] for p in probs], np.float64))
            state.put("pred", r.index, np.asarray([p[j] for p in preds], np.int64))
            if r.index < self.keep_maps or len(kept) < self.keep_maps:
                state.put("cam", r.index, np.stack([u[j] for u in ups]).astype(np.float32))
                state.put(
                    "display", r.index, display_image(batch.images[j], batch.x[j], self.transform)
                )
                kept = state.rows["cam"]

    def finalise(self, state: State, run: RunInfo) -> GradCamComparisonResult:
        _, ids = state.stacked("id")
        _, yt = state.stacked("yt")
        _, prob = state.stacked("prob")
        _, pred = state.stacked("pred")
        n_models = len(self.models)
        idx, cams = state.stacked("cam")
        order = np.argsort(idx)[: self.keep_maps]
        if len(idx):
            cams = np.transpose(cams[order], (1, 0, 2, 3))
            disp = state.stacked("display")[1][order]
        else:
            cams = np.zeros((n_models, 0, 0, 0), np.float32)
            disp = np.zeros((0, 0, 0, 3), np.uint8)
        labels = yt[:, 0].astype(np.int64)
        if self.target is None:
            source = (
                "label"
                if (labels >= 0).all()
                else ("first model's predicted" if (labels < 0).all() else "label or predicted")
            )
        elif isinstance(self.target, str):
            source = self.target if self.target == "label" else "first model's predicted"
        elif isinstance(self.target, (int, np.integer)):
            source = "fixed"
        else:
            source = "given"
        n = len(ids)
        loc: dict[str, Any] = {"margin": state.stacked("margin")[1].reshape(n, n_models)}
        if self.masks is not None:
            n_sites = len(self._sites)
            loc["object_area"] = state.stacked("area")[1].reshape(n)
            loc["gradcam_share"] = state.stacked("cam_share")[1].reshape(n, n_models)
            loc["gradcam_pointing"] = state.stacked("cam_hit")[1].reshape(n, n_models)
            names = list(self.models)
            loc["attention_sites"] = [
                {"model": names[m], "alias": s.alias, "name": s.name.split(".", 2)[2],
                 "kind": s.kind, "grid": state.info.get("grid::" + s.name, [0, 0])}
                for s, m in zip(self._sites, self._site_model)
            ]  # fmt: skip
            empty = np.zeros((n, 0))
            loc["attention_share"] = (
                state.stacked("att_share")[1].reshape(n, n_sites) if n_sites else empty
            )
            loc["attention_pointing"] = (
                state.stacked("att_hit")[1].reshape(n, n_sites) if n_sites else empty
            )
        return GradCamComparisonResult(
            models=list(self.models),
            layers=list(self._layers),
            gradcam_grids=[state.info.get(f"grid::{i}", [0, 0]) for i in range(n_models)],
            ids=[str(v) for v in ids],
            labels=labels,
            targets=yt[:, 1].astype(np.int64),
            target_source=source,
            predictions=np.asarray(pred, np.int64).reshape(len(ids), n_models),
            probability=np.asarray(prob, np.float64).reshape(len(ids), n_models),
            gradcam=np.asarray(cams, np.float32),
            images=np.asarray(disp, np.uint8),
            class_names=list(run.class_names),
            skipped=run.skipped,
            meta={
                "interpolate_mode": self.interpolate_mode,
                "num_classes": state.info.get("num_classes"),
            },
            **loc,
        )


def _named_models(models: Any) -> dict[str, nn.Module]:
    if isinstance(models, nn.Module):
        models = [models]
    if isinstance(models, dict):
        out = dict(models)
    else:
        out = {}
        for item in models:
            name, m = item if isinstance(item, tuple) else (type(item).__name__, item)
            base, k = name, 2
            while name in out:
                name, k = f"{base}_{k}", k + 1
            out[name] = m
    for name, m in out.items():
        if not isinstance(m, nn.Module):
            raise TypeError(f"model {name!r} is not an nn.Module")
    return out


def gradcam_comparison(
    models: dict[str, nn.Module] | Sequence[nn.Module | tuple[str, nn.Module]],
    images: Any,
    *,
    target: int | str | Sequence[int] | None = None,
    layer: str | dict[str, str] | None = None,
    keep_maps: int = 8,
    interpolate_mode: str = "bilinear",
    preprocess: Any = None,
    masks: Any = "auto",
    **run_options: Any,
) -> GradCamComparisonResult:
    """The CBAM paper's comparison: Grad-CAM of several models on the same images, with each
    model's softmax probability of the target class per image (see the module docstring).

    ``models``: {name: model}, or a list of models / (name, model) pairs, e.g. a baseline
    without attention, +SE and +CBAM. All models see the same inputs, prepared with
    ``preprocess`` (default: the first model's evaluation transform). ``target``: None
    (the label if known, else the first model's prediction), ``"label"``, ``"prediction"``
    (the first model's), a class index, or one index per image. ``layer``: a layer name for
    every model or {name: layer} (default: each model's :func:`default_gradcam_layer`).
    ``keep_maps``: images whose maps are kept for figures. ``run_options``: those of
    :func:`attnviz.analysis.runner.run`; one pass over the images, every batch through every
    model (one forward with gradients each), eval mode restored afterwards.

    ``masks``: the object's coverage per image, a callable (source position -> (H, W) in
    [0, 1] at the original image size); ``"auto"`` (default) takes
    :meth:`attnviz.data.ShapesDataset.mask` when ``images`` is a ShapesDataset, else none.
    With masks, Grad-CAM and every spatial attention site of every model are scored on the
    object (mass share, pointing game; :mod:`attnviz.analysis.localisation`). The margin
    (target logit minus the largest other) is always kept; ``meta["label_smoothing"]`` gives
    the bundled models' training label smoothing (P(target) is then optimal below 1).
    """
    from ..data.shapes import ShapesDataset

    named = _named_models(models)
    if isinstance(masks, str):
        if masks != "auto":
            raise ValueError(f"masks must be 'auto', None or a callable, not {masks!r}")
        masks = images.mask if isinstance(images, ShapesDataset) else None
    if preprocess is None:
        preprocess = next(iter(named.values()))  # the first model's own transform
    analysis = GradCamComparison(
        named,
        target=target,
        layer=layer,
        keep_maps=keep_maps,
        interpolate_mode=interpolate_mode,
        masks=masks,
    )
    result = run(analysis, _Models(named), images, preprocess=preprocess, **run_options)
    assert isinstance(result, GradCamComparisonResult)
    result.meta["label_smoothing"] = {name: _label_smoothing(name) for name in named}
    return result


def _label_smoothing(name: str) -> float | None:
    """The label smoothing a bundled model was trained with (its manifest), else None."""
    try:
        from ..data.assets import read_manifest

        entry = read_manifest()["models"][name]
    except Exception:
        return None
    value = (entry.get("optimizer") or {}).get("label_smoothing")
    return None if value is None else float(value)
