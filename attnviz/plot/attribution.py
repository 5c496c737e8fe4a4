"""Figures of Grad-CAM across models (CBAM, Woo et al. 2018, Fig. 4) and of spatial attention
beside Grad-CAM (attnviz's own comparison).

:func:`plot_gradcam_comparison` / :func:`plot_target_probability` take a
:class:`~attnviz.analysis.attribution.GradCamComparisonResult`; :func:`plot_attention_vs_gradcam`
/ :func:`plot_agreement` an :class:`~attnviz.analysis.attribution.AttentionVsAttributionResult`.
Overlays blend an OpenCV colormap over the image the model saw
(:func:`attnviz.plot.overlay.overlay`).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..analysis.attribution import AttentionVsAttributionResult, GradCamComparisonResult
from .overlay import overlay


def plot_attention_vs_gradcam(
    result: AttentionVsAttributionResult,
    images: Sequence[int] | None = None,
    *,
    max_images: int = 4,
    sites: Sequence[str] | None = None,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Figure:
    """A row per image: the image, Grad-CAM overlay, then one overlay per attention site.

    Attention panels are titled with the site and the image's Spearman rho and top-k IoU
    against Grad-CAM. ``images`` are indices into the kept maps (default: the first
    ``max_images``); ``sites`` aliases or names of the sites to draw (default: all).
    """
    kept = result.gradcam.shape[0]
    if kept == 0:
        raise ValueError("the result kept no maps (keep_maps=0); nothing to draw")
    idx = list(range(min(kept, max_images))) if images is None else list(images)
    for i in idx:
        if not 0 <= i < kept:
            raise IndexError(f"image {i} not kept; kept maps: 0..{kept - 1}")
    columns = (
        list(range(len(result.sites))) if sites is None else [result.site_index(s) for s in sites]
    )
    ncols = 2 + len(columns)
    fig, axes = plt.subplots(
        len(idx),
        ncols,
        figsize=(2.3 * ncols, 2.4 * len(idx)),
        squeeze=False,
        layout="tight",
    )
    for r, i in enumerate(idx):
        img = result.images[i]
        name = _class_name(result, int(result.targets[i]))
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"{result.ids[i][-18:]}\ntarget {name}", fontsize=8)
        axes[r, 1].imshow(overlay(img, result.gradcam[i], alpha=alpha, colormap=colormap))
        axes[r, 1].set_title(f"Grad-CAM ({result.layer})", fontsize=8)
        for c, j in enumerate(columns):
            site = result.sites[j]
            ax = axes[r, 2 + c]
            ax.imshow(overlay(img, result.attention[j, i], alpha=alpha, colormap=colormap))
            ax.set_title(
                f"{site['alias']}\nrho={result.spearman[i, j]:.2f} IoU={result.iou[i, j]:.2f}",
                fontsize=8,
            )
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    where = "coarser grid" if result.compare_at == "coarser" else "input size"
    fig.suptitle(
        f"Spatial attention vs Grad-CAM (attnviz's comparison at the {where}; "
        f"top-{result.top_k:.0%} IoU)",
        fontsize=10,
    )
    return fig


def _class_name(result: AttentionVsAttributionResult, label: int) -> str:
    if 0 <= label < len(result.class_names):
        return result.class_names[label]
    return str(label)


def plot_agreement(result: AttentionVsAttributionResult) -> Figure:
    """Per site, the mean (bar, +-1 std error bar) and per-image values (dots) of Spearman rho
    (left) and top-k IoU (right); the chance IoU k / (2 - k) as a dotted line."""
    summary = result.site_summary()
    x = np.arange(len(summary))
    fig, (ax_r, ax_i) = plt.subplots(
        1, 2, figsize=(max(6.0, 1.6 * len(x) + 4), 3.4), layout="tight"
    )
    for ax, key, values in (
        (ax_r, "spearman", result.spearman),
        (ax_i, "iou", result.iou),
    ):
        ax.bar(
            x,
            summary[f"{key}_mean"].to_numpy(),
            yerr=summary[f"{key}_std"].to_numpy(),
            color="C0",
            alpha=0.6,
            capsize=3,
        )
        rng = np.random.default_rng(0)
        for j in range(len(x)):
            v = values[:, j]
            v = v[np.isfinite(v)]
            ax.scatter(j + rng.uniform(-0.15, 0.15, v.size), v, s=8, color="black", zorder=3)
        ax.set_xticks(x, summary["site"].tolist(), rotation=30, ha="right")
        ax.axhline(0.0, color="gray", lw=0.8)
    ax_i.axhline(float(summary["iou_chance"].iloc[0]), color="gray", ls=":", label="chance")
    ax_i.legend(fontsize="small")
    ax_r.set_ylabel("Spearman rho")
    ax_r.set_ylim(-1.05, 1.05)
    ax_i.set_ylabel(f"IoU of top {result.top_k:.0%}")
    ax_i.set_ylim(0.0, 1.05)
    grids = [f"{a}/{c}" for a, c in zip(summary["attention_grid"], summary["compare_grid"])]
    ax_r.set_xticks(x, [f"{s}\n{g}" for s, g in zip(summary["site"], grids)], fontsize=8)
    ax_r.set_title(
        f"rank correlation with Grad-CAM ({summary['gradcam_grid'].iloc[0]})\n"
        "site: attention grid / grid compared at",
        fontsize=9,
    )
    ax_i.set_title("overlap of the top regions", fontsize=9)
    return fig


def plot_gradcam_comparison(
    result: GradCamComparisonResult,
    images: Sequence[int] | None = None,
    *,
    max_images: int = 4,
    alpha: float = 0.5,
    colormap: str = "jet",
) -> Figure:
    """CBAM Fig. 4: a row per image, the image then one Grad-CAM overlay per model, titled with
    the model and its softmax probability P of the target class."""
    kept = result.gradcam.shape[1] if result.gradcam.ndim == 4 else 0
    if kept == 0:
        raise ValueError("the result kept no maps (keep_maps=0); nothing to draw")
    idx = list(range(min(kept, max_images))) if images is None else list(images)
    for i in idx:
        if not 0 <= i < kept:
            raise IndexError(f"image {i} not kept; kept maps: 0..{kept - 1}")
    ncols = 1 + len(result.models)
    fig, axes = plt.subplots(
        len(idx), ncols, figsize=(2.3 * ncols, 2.5 * len(idx)), squeeze=False, layout="tight"
    )
    names = result.class_names
    for r, i in enumerate(idx):
        img = result.images[i]
        t = int(result.targets[i])
        axes[r, 0].imshow(img)
        target = names[t] if 0 <= t < len(names) else str(t)
        axes[r, 0].set_title(f"{result.ids[i][-18:]}\ntarget {target}", fontsize=8)
        for m, name in enumerate(result.models):
            ax = axes[r, 1 + m]
            ax.imshow(overlay(img, result.gradcam[m, i], alpha=alpha, colormap=colormap))
            ax.set_title(f"{name}\nP = {result.probability[i, m]:.3f}", fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"Grad-CAM of each model for the {result.target_source} class (CBAM Fig. 4 style)",
        fontsize=10,
    )
    return fig


def plot_target_probability(result: GradCamComparisonResult) -> Figure:
    """Per model the softmax probability of the target class: a bar at the mean (``ax.patches``)
    and one dot per image, dots of one image joined across models by a thin line."""
    x = np.arange(len(result.models))
    fig, ax = plt.subplots(figsize=(max(3.5, 1.3 * len(x) + 1.5), 3.2), layout="tight")
    p = result.probability
    ax.bar(x, p.mean(axis=0), color="C0", alpha=0.5)
    for row in p:
        ax.plot(x, row, color="gray", lw=0.4, alpha=0.5)
    rng = np.random.default_rng(0)
    for m in x:
        ax.scatter(m + rng.uniform(-0.08, 0.08, len(p)), p[:, m], s=8, color="black", zorder=3)
    ax.set_xticks(x, result.models)
    ax.set_ylim(0.0, 1.02)
    ax.set_ylabel("P(target class)")
    ax.set_title(f"Softmax probability of the {result.target_source} class", fontsize=9)
    return fig
