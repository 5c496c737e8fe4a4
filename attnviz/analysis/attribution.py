"""Spatial attention beside Grad-CAM (CBAM, Woo et al. ECCV 2018, Sec. 4.3 / Fig. 4).

For every image: the spatial attention maps of the chosen ``cbam_spatial`` sites (CBAM's M_s,
Eq. 3) and ``gc`` sites (GCNet's context weights softmax_j(W_k x_j), Eq. 4), upsampled to the
input size (bilinear), beside Grad-CAM (Selvaraju et al. 2017, Eq. 1-2: L = ReLU(sum_k a_k A^k),
a_k = mean over positions of d y^c / d A^k) from captum's :class:`~captum.attr.LayerGradCam` at
the last convolutional stage, ``relu_attributions=True``, upsampled with
:meth:`LayerAttribution.interpolate` (same mode). The Grad-CAM target is the ground truth when
labels exist, else the model's prediction (or ``target=``).

Default sites: the last site of each spatial kind in the model (for CBAM ResNets the last
block of the last stage, the map nearest to the Grad-CAM layer, on the same grid).

Agreement per image and site, on the upsampled maps:

* Spearman rank correlation: Pearson correlation of the pixel ranks (ties get their average
  rank); 1 = same ordering, -1 = reversed; NaN if a map is constant.
* IoU of the top-k regions: region = pixels at or above the map's k-quantile from the top
  (the ``ceil(k * HW)``-th largest value; ties at the threshold are all included);
  |A & B| / |A | B|; NaN if a map is constant (e.g. an all-zero Grad-CAM after the ReLU,
  which also makes rho NaN). Two independent random maps give k / (2 - k) on average (0.111 at
  k = 0.2), reported as ``iou_chance``.

Two forwards per batch: the attention is captured in a ``torch.no_grad`` forward (which also
gives the predictions that pick the target), then captum runs its own forward with gradients
enabled for Grad-CAM; capture is not active during captum's forward.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from torch import nn

from ..capture import Site, capture, find_sites
from ..errors import NoAttentionSitesError
from ..results import load_result_dir, save_result_dir, versions
from ._eval_mode import eval_mode
from .excitation import _progress, iter_image_batches

SPATIAL_KINDS: tuple[str, ...] = ("cbam_spatial", "gc")


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


def iou_chance(top_k: float) -> float:
    """Expected IoU of the top-k regions of two independent random maps: k / (2 - k)."""
    return top_k / (2.0 - top_k)


# ----------------------------------------------------------------------------- selection
def default_spatial_sites(sites: Sequence[Site]) -> list[Site]:
    """The last site of each spatial kind (cbam_spatial, gc) in module order."""
    last: dict[str, Site] = {}
    for s in sites:
        last[s.kind] = s
    return [s for s in sites if last.get(s.kind) is s]


def _spatial_sites(model: nn.Module, sites: Iterable[str | Site] | str | None) -> list[Site]:
    all_sites = [s for s in find_sites(model) if s.kind in SPATIAL_KINDS]
    if not all_sites:
        kinds = sorted({s.kind for s in find_sites(model)})
        raise NoAttentionSitesError(
            f"{type(model).__name__} has no spatial attention site ({', '.join(SPATIAL_KINDS)});"
            f" its sites are of kind {kinds or 'none'}"
        )
    if sites is None:
        return default_spatial_sites(all_sites)
    if isinstance(sites, str) and sites == "all":
        return all_sites
    wanted = [sites] if isinstance(sites, (str, Site)) else list(sites)
    by_key = {s.name: s for s in all_sites} | {s.alias: s for s in all_sites}
    keep = set()
    for w in wanted:
        key = w.name if isinstance(w, Site) else str(w)
        if key not in by_key:
            valid = ", ".join(f"{s.alias} ({s.name})" for s in all_sites)
            raise ValueError(f"unknown spatial attention site {key!r}; valid sites: {valid}")
        keep.add(by_key[key].name)
    return [s for s in all_sites if s.name in keep]


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
class AttributionComparison:
    """Spatial attention vs Grad-CAM, per image and site.

    ``sites``: [{alias, name, kind, stage, block, grid}]; ``spearman`` / ``iou`` (N, S);
    ``labels`` (N,) with -1 for unknown, ``predictions`` and ``targets`` (N,), ``ids`` (N,).
    Maps of the first ``len(images)`` images are kept for figures, at the input size:
    ``gradcam`` (M, H, W), ``attention`` (S, M, H, W), ``images`` (M, H, W, 3) uint8 (the view
    the model saw; min-max scaled when the source gave tensors).
    """

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

    @property
    def aliases(self) -> list[str]:
        return [s["alias"] for s in self.sites]

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

    def summary(self) -> pd.DataFrame:
        """Per site: images, mean / std of Spearman and IoU (NaNs left out), chance IoU."""
        rows = []
        for j, s in enumerate(self.sites):
            rho, iou = self.spearman[:, j], self.iou[:, j]
            rows.append(
                {
                    "site": s["alias"],
                    "kind": s["kind"],
                    "layer": self.layer,
                    "n": int(np.isfinite(rho).sum()),
                    "spearman_mean": float(np.nanmean(rho)) if np.isfinite(rho).any() else np.nan,
                    "spearman_std": float(np.nanstd(rho)) if np.isfinite(rho).any() else np.nan,
                    "iou_mean": float(np.nanmean(iou)) if np.isfinite(iou).any() else np.nan,
                    "iou_std": float(np.nanstd(iou)) if np.isfinite(iou).any() else np.nan,
                    "iou_chance": iou_chance(self.top_k),
                    "top_k": self.top_k,
                }
            )
        return pd.DataFrame(rows)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``attribution.npz``, ``agreement.csv``, ``summary.csv``, ``manifest.json``."""
        directory = Path(directory)
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
        manifest = {
            "analysis": "attention_vs_attribution",
            "paper": "Woo et al., CBAM, ECCV 2018, Sec. 4.3; Grad-CAM via captum LayerGradCam",
            "sites": self.sites,
            "layer": self.layer,
            "top_k": self.top_k,
            "ids": self.ids,
            "target_source": self.target_source,
            "class_names": self.class_names,
            "skipped": [list(x) for x in self.skipped],
            "meta": self.meta,
            "versions": versions(),
        }
        frames = {"agreement.csv": self.to_frame(), "summary.csv": self.summary()}
        return save_result_dir(
            directory,
            arrays=arrays,
            frames=frames,
            manifest=manifest,
            npz_name="attribution.npz",
            keep_other_files=True,
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> AttributionComparison:
        manifest, data = load_result_dir(directory, "attribution.npz")
        return cls(
            sites=manifest["sites"],
            layer=manifest["layer"],
            top_k=float(manifest["top_k"]),
            ids=list(manifest["ids"]),
            target_source=manifest["target_source"],
            class_names=list(manifest.get("class_names", [])),
            skipped=[tuple(x) for x in manifest["skipped"]],
            meta=manifest.get("meta", {}),
            **data,
        )


# ----------------------------------------------------------------------------- the analysis
def _targets_for(
    target: Any, labels: np.ndarray, predictions: np.ndarray, offset: int
) -> tuple[np.ndarray, str]:
    if target is None:
        t = np.where(labels >= 0, labels, predictions)
        source = (
            "label" if (labels >= 0).all() else ("prediction" if (labels < 0).all() else "mixed")
        )
        return t, source
    if isinstance(target, str):
        if target == "prediction":
            return predictions.copy(), "prediction"
        if target == "label":
            if (labels < 0).any():
                raise ValueError("target='label' but some images have no label")
            return labels.copy(), "label"
        raise ValueError(
            f"target must be None, 'label', 'prediction', an int or a sequence, not {target!r}"
        )
    if isinstance(target, (int, np.integer)):
        return np.full_like(labels, int(target)), "fixed"
    seq = np.asarray(target, dtype=np.int64).ravel()
    if seq.size < offset + len(labels):
        raise ValueError(f"target has {seq.size} entries, fewer than the images")
    return seq[offset : offset + len(labels)], "given"


def attention_vs_attribution(
    model: nn.Module,
    images: Any,
    *,
    target: int | str | Sequence[int] | None = None,
    layer: str | nn.Module | None = None,
    labels: Sequence[int] | None = None,
    sites: Iterable[str | Site] | str | None = None,
    top_k: float = 0.2,
    interpolate_mode: str = "bilinear",
    batch_size: int = 8,
    preprocess: Any = None,
    limit: int | None = None,
    keep_maps: int = 16,
    progress: bool = True,
) -> AttributionComparison:
    """CBAM spatial / GC context maps beside captum Grad-CAM, with per-image agreement.

    ``images`` as in :func:`attnviz.analysis.excitation.iter_image_batches` (folder, paths,
    tensor, Dataset, DataLoader). ``target``: None (label if known, else prediction),
    ``"label"``, ``"prediction"``, a class index, or one index per image. ``layer``: module
    or name for Grad-CAM (default :func:`default_gradcam_layer`). ``sites``: names / aliases,
    ``"all"``, or None for the last site of each spatial kind. ``keep_maps``: how many images'
    maps to keep for figures (agreement is computed for all). The model runs in eval mode; its
    training flag is restored.
    """
    top_k_region(np.zeros(4), top_k)  # validates top_k early
    chosen = _spatial_sites(model, sites)
    layer_name, layer_module = _resolve_layer(model, layer)
    stream = iter_image_batches(
        images,
        model,
        labels=labels,
        batch_size=batch_size,
        preprocess=preprocess,
        limit=limit,
        keep_display=True,
    )
    gradcam = LayerGradCam(model, layer_module)
    ids: list[str] = []
    all_labels, all_preds, all_targets = [], [], []
    rhos, ious = [], []
    kept_cam: list[np.ndarray] = []
    kept_att: list[np.ndarray] = []
    kept_img: list[np.ndarray] = []
    grids: dict[str, tuple[int, int]] = {}
    sources: set[str] = set()
    device = next(model.parameters()).device
    with eval_mode(model):
        total = None if stream.total is None else -(-stream.total // batch_size)
        for batch in _progress(stream.batches, total, progress, "attention vs Grad-CAM"):
            x = batch.x.to(device)
            size = (int(x.shape[-2]), int(x.shape[-1]))
            with torch.no_grad(), capture(model, sites=[s.name for s in chosen]) as cache:
                logits = model(x)
            preds = logits.argmax(dim=1).cpu().numpy()
            y = np.asarray(batch.labels, dtype=np.int64)
            tgt, source = _targets_for(target, y, preds, len(ids))
            sources.add(source)
            with torch.enable_grad():
                cam = gradcam.attribute(
                    x.detach().clone().requires_grad_(True),
                    target=torch.as_tensor(tgt, dtype=torch.long, device=device),
                    relu_attributions=True,
                )
            cam_up = LayerAttribution.interpolate(cam.detach(), size, interpolate_mode)[:, 0]
            cam_np = cam_up.float().cpu().numpy()
            att_up = []
            for s in chosen:
                a = cache[s.name]
                if a.shape[0] != x.shape[0]:
                    raise RuntimeError(f"site {s.alias} fired more than once per image")
                grids[s.name] = (int(a.shape[-2]), int(a.shape[-1]))
                up = F.interpolate(a[:, None].float(), size, mode=interpolate_mode)[:, 0]
                att_up.append(up.numpy())
            for i in range(x.shape[0]):
                rhos.append([spearman_rank_correlation(a[i], cam_np[i]) for a in att_up])
                ious.append([top_k_iou(a[i], cam_np[i], top_k) for a in att_up])
                if len(kept_cam) < keep_maps:
                    kept_cam.append(cam_np[i])
                    kept_att.append(np.stack([a[i] for a in att_up]))
                    kept_img.append(batch.display[i])
            ids.extend(batch.ids)
            all_labels.append(y)
            all_preds.append(preds)
            all_targets.append(tgt)
    if not ids:
        reasons = "; ".join(f"{p}: {r}" for p, r in stream.skipped[:5])
        raise ValueError(f"no usable images ({len(stream.skipped)} skipped: {reasons})")
    h, w = kept_cam[0].shape if kept_cam else (0, 0)
    return AttributionComparison(
        sites=[
            {
                "alias": s.alias,
                "name": s.name,
                "kind": s.kind,
                "stage": s.stage,
                "block": s.block,
                "grid": list(grids.get(s.name, (0, 0))),
            }
            for s in chosen
        ],
        layer=layer_name,
        top_k=float(top_k),
        ids=ids,
        labels=np.concatenate(all_labels),
        predictions=np.concatenate(all_preds),
        targets=np.concatenate(all_targets).astype(np.int64),
        target_source=sources.pop() if len(sources) == 1 else "mixed",
        spearman=np.asarray(rhos, dtype=np.float64).reshape(len(ids), len(chosen)),
        iou=np.asarray(ious, dtype=np.float64).reshape(len(ids), len(chosen)),
        gradcam=np.asarray(kept_cam, dtype=np.float32).reshape(-1, h, w),
        attention=(
            np.stack(kept_att, axis=1).astype(np.float32)
            if kept_att
            else np.zeros((len(chosen), 0, h, w), np.float32)
        ),
        images=np.asarray(kept_img, dtype=np.uint8).reshape(-1, h, w, 3),
        class_names=list(stream.class_names),
        skipped=list(stream.skipped),
        meta={"model": type(model).__name__, "interpolate_mode": interpolate_mode},
    )
