"""Figures of Grad-CAM across models (CBAM, Woo et al. 2018, Fig. 4) and of spatial attention
beside Grad-CAM (attnviz's own comparison).

:func:`plot_gradcam_comparison` / :func:`plot_target_probability` take a
:class:`~attnviz.analysis.attribution.GradCamComparisonResult`; :func:`plot_attention_vs_gradcam`
/ :func:`plot_agreement` an :class:`~attnviz.analysis.attribution.AttentionVsAttributionResult`.
Overlays draw the map (viridis, one colour scale per figure, a colour bar) over the image the
model saw in grey (:func:`attnviz.plot._style.draw_overlay`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..analysis.attribution import AttentionVsAttributionResult, GradCamComparisonResult
from ._style import (
    OVERLAY_ALPHA,
    SEQUENTIAL,
    caption,
    colorbar,
    draw_overlay,
    model_name,
    new_figure,
    shared_norm,
    site_list,
)

GRADCAM_LABEL = "Grad-CAM ÷ its max per image"


def _unit(cam: np.ndarray) -> np.ndarray:
    """A Grad-CAM map divided by its max (Grad-CAM has no common scale across images)."""
    cam = np.asarray(cam, dtype=np.float64)
    m = float(np.nanmax(cam)) if cam.size else 0.0
    return cam / m if m > 0 else np.zeros_like(cam)


def _kept(kept: int, images: Sequence[int] | None, max_images: int) -> list[int]:
    if kept == 0:
        raise ValueError("the result kept no maps (keep_maps=0); nothing to draw")
    idx = list(range(min(kept, max_images))) if images is None else list(images)
    for i in idx:
        if not 0 <= i < kept:
            raise IndexError(f"image {i} not kept; kept maps: 0..{kept - 1}")
    return idx


def plot_attention_vs_gradcam(
    result: AttentionVsAttributionResult,
    images: Sequence[int] | None = None,
    *,
    max_images: int = 4,
    sites: Sequence[str] | None = None,
    alpha: float = OVERLAY_ALPHA,
    colormap: str = SEQUENTIAL,
    fig: Figure | None = None,
) -> Figure:
    """A row per image: the image, Grad-CAM overlay, then one overlay per attention site
    (CBAM, Woo et al. 2018, Fig. 4 style). Columns are titled once (image / Grad-CAM / site);
    each attention panel gives the image's Spearman rho and top-k IoU against Grad-CAM. All
    attention panels share one colour scale; Grad-CAM panels share [0, 1] after dividing each
    map by its max. ``images``: indices into the kept maps (default the first
    ``max_images``); ``sites``: aliases or names (default all)."""
    idx = _kept(result.gradcam.shape[0], images, max_images)
    columns = (
        list(range(len(result.sites))) if sites is None else [result.site_index(s) for s in sites]
    )
    ncols = 2 + len(columns)
    fig = new_figure((2.1 * ncols + 0.6, 2.25 * len(idx) + 1.9), fig)
    axes = fig.subplots(len(idx), ncols, squeeze=False)
    att_norm = shared_norm(result.attention[j, i] for j in columns for i in idx)
    cam_norm = shared_norm([], vmin=0.0, vmax=1.0)
    cam_im = att_im = None
    for r, i in enumerate(idx):
        img = result.images[i]
        name = _class_name(result, int(result.targets[i]))
        axes[r, 0].imshow(img)
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        axes[r, 0].set_ylabel(f"target: {name}", fontsize="small")
        cam_im = draw_overlay(
            axes[r, 1], img, _unit(result.gradcam[i]), cam_norm, cmap=colormap, alpha=alpha
        )
        for c, j in enumerate(columns):
            ax = axes[r, 2 + c]
            att_im = draw_overlay(
                ax, img, result.attention[j, i], att_norm, cmap=colormap, alpha=alpha
            )
            ax.set_xlabel(
                f"ρ={result.spearman[i, j]:.2f}  IoU={result.iou[i, j]:.2f}", fontsize="small"
            )
    axes[0, 0].set_title("image", fontsize="medium")
    axes[0, 1].set_title("Grad-CAM", fontsize="medium")
    for c, j in enumerate(columns):
        axes[0, 2 + c].set_title(result.sites[j]["alias"], fontsize="medium")
    colorbar(fig, cam_im, axes[:, 1], location="bottom", label=GRADCAM_LABEL, shrink=0.95)
    colorbar(fig, att_im, axes[:, 2:], location="bottom", label="spatial attention",
                 shrink=0.6)  # fmt: skip
    where = "coarser grid" if result.compare_at == "coarser" else "input size"
    caption(
        fig,
        model_name(result),
        f"spatial attention vs Grad-CAM at {result.layer}",
        f"sites {site_list(result.sites[j]['alias'] for j in columns)}; {len(idx)} of "
        f"{len(result.ids)} images; ρ: Spearman, IoU of the top {result.top_k:.0%} at the {where}",
        "attention panels share one colour scale; no error bars (single images)",
    )
    return fig


def _class_name(result: AttentionVsAttributionResult, label: int) -> str:
    if 0 <= label < len(result.class_names):
        return result.class_names[label]
    return str(label)


def plot_agreement(result: AttentionVsAttributionResult, *, fig: Figure | None = None) -> Figure:
    """Per site, the mean (bar, +-1 std error bar) and per-image values (dots) of Spearman rho
    (left) and top-k IoU (right); the chance IoU k / (2 - k) as a dotted line."""
    summary = result.site_summary()
    x = np.arange(len(summary))
    fig = new_figure((max(7.0, 1.8 * len(x) + 4.5), 3.9), fig)
    ax_r, ax_i = fig.subplots(1, 2)
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
            label="mean ± std",
        )
        rng = np.random.default_rng(0)
        for j in range(len(x)):
            v = values[:, j]
            v = v[np.isfinite(v)]
            ax.scatter(j + rng.uniform(-0.15, 0.15, v.size), v, s=8, color="black", zorder=3,
                       label="one image" if j == 0 else None)  # fmt: skip
        ax.axhline(0.0, color="gray", lw=0.8)
    ax_i.axhline(float(summary["iou_chance"].iloc[0]), color="gray", ls=":", label="chance")
    ax_i.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax_r.set_ylabel("Spearman ρ with Grad-CAM")
    ax_r.set_ylim(-1.05, 1.05)
    ax_i.set_ylabel(f"IoU of the top {result.top_k:.0%}")
    ax_i.set_ylim(0.0, 1.05)
    grids = [f"{a}/{c}" for a, c in zip(summary["attention_grid"], summary["compare_grid"])]
    ticks = [f"{s}\n{g}" for s, g in zip(summary["site"], grids)]
    ax_r.set_xticks(x, ticks, fontsize="small")
    ax_i.set_xticks(x, ticks, fontsize="small")
    ax_r.set_xlabel("site, attention grid / grid compared at")
    ax_i.set_xlabel("site, attention grid / grid compared at")
    ax_r.set_title("rank correlation", fontsize="medium", loc="left")
    ax_i.set_title("overlap of the top regions", fontsize="medium", loc="left")
    caption(
        fig,
        model_name(result),
        f"agreement of spatial attention with Grad-CAM ({summary['gradcam_grid'].iloc[0]})",
        f"sites {site_list(summary['site'])}; {len(result.ids)} images",
        "error bars: std over images",
    )
    return fig


def plot_gradcam_comparison(
    result: GradCamComparisonResult,
    images: Sequence[int] | None = None,
    *,
    max_images: int = 4,
    alpha: float = OVERLAY_ALPHA,
    colormap: str = SEQUENTIAL,
    fig: Figure | None = None,
) -> Figure:
    """CBAM Fig. 4: a row per image, the image then one Grad-CAM overlay per model (columns
    titled once with the model); each panel gives the model's softmax probability P of the
    target class. Each map is divided by its max, so all panels share the scale [0, 1]."""
    kept = result.gradcam.shape[1] if result.gradcam.ndim == 4 else 0
    idx = _kept(kept, images, max_images)
    ncols = 1 + len(result.models)
    fig = new_figure((2.1 * ncols + 0.8, 2.25 * len(idx) + 1.6), fig)
    axes = fig.subplots(len(idx), ncols, squeeze=False)
    names = result.class_names
    norm = shared_norm([], vmin=0.0, vmax=1.0)
    im = None
    for r, i in enumerate(idx):
        img = result.images[i]
        t = int(result.targets[i])
        axes[r, 0].imshow(img)
        axes[r, 0].set_xticks([])
        axes[r, 0].set_yticks([])
        target = names[t] if 0 <= t < len(names) else str(t)
        axes[r, 0].set_ylabel(f"target: {target}", fontsize="small")
        for m in range(len(result.models)):
            ax = axes[r, 1 + m]
            im = draw_overlay(ax, img, _unit(result.gradcam[m, i]), norm, cmap=colormap,
                              alpha=alpha)  # fmt: skip
            ax.set_xlabel(f"P = {result.probability[i, m]:.3f}", fontsize="small")
    axes[0, 0].set_title("image", fontsize="medium")
    for m, name in enumerate(result.models):
        axes[0, 1 + m].set_title(name, fontsize="medium")
    colorbar(fig, im, axes[:, 1:], location="right", label=GRADCAM_LABEL, shrink=0.8)
    caption(
        fig,
        ", ".join(result.models),
        f"Grad-CAM of the {result.target_source} class (CBAM Fig. 4)",
        f"{len(idx)} of {len(result.ids)} images; P: softmax probability of the target",
        "all panels share one colour scale; no error bars (single images)",
    )
    return fig


def _optimum(result: GradCamComparisonResult) -> tuple[float, float] | None:
    """(label smoothing, loss-optimal P(target)) when every model shares a known smoothing."""
    smooth = {result.meta.get("label_smoothing", {}).get(m) for m in result.models}
    k = int(result.meta.get("num_classes") or len(result.class_names) or 0)
    if len(smooth) != 1 or None in smooth or not k:
        return None
    eps = float(next(iter(smooth)))
    return eps, 1.0 - eps + eps / k


def plot_target_probability(
    result: GradCamComparisonResult,
    *,
    measure: str = "probability",
    baseline: str | None = None,
    ax: Axes | None = None,
    fig: Figure | None = None,
) -> Figure:
    """Per model a measure of :attr:`GradCamComparisonResult.MEASURES` (default P(target), the
    softmax probability of the target class): a bar at the mean (``ax.patches``) and one dot
    per image, dots of one image joined across models; beside it (unless ``ax`` is given) the
    paired differences from ``baseline`` (default the first model): mean ± paired s.e. and the
    per-image differences. For P, the loss-optimal value under the models' label smoothing is
    drawn as a dashed line."""
    values = result.measure(measure)
    label = {"probability": "P(target class)", "margin": "margin: logit(target) − max other",
             "gradcam_share": "Grad-CAM mass on the object",
             "gradcam_pointing": "Grad-CAM maximum on the object"}[measure]  # fmt: skip
    x = np.arange(len(result.models))
    if ax is not None:
        fig, axes = ax.figure, [ax]
    else:
        fig = new_figure((max(8.0, 2.2 * len(x) + 4.0), 3.9), fig)
        axes = list(fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.0, 1.0]}))
    left = axes[0]
    left.bar(x, np.nanmean(values, axis=0), color="C0", alpha=0.5, label="mean")
    for row in values:
        left.plot(x, row, color="gray", lw=0.4, alpha=0.5)
    rng = np.random.default_rng(0)
    for m in x:
        left.scatter(m + rng.uniform(-0.08, 0.08, len(values)), values[:, m], s=8,
                     color="black", zorder=3, label="one image" if m == 0 else None)  # fmt: skip
    left.set_xticks(x, result.models)
    left.set_xlabel("model")
    left.set_ylabel(label)
    optimum = _optimum(result) if measure == "probability" else None
    if measure == "probability":
        left.set_ylim(0.0, 1.02)
    if optimum is not None:
        left.axhline(optimum[1], color="C3", ls="--", lw=1.0,
                     label=f"loss-optimal P with label\nsmoothing {optimum[0]:g}: "
                     f"{optimum[1]:.2f}")  # fmt: skip
    left.legend(fontsize="x-small", loc="lower left")
    left.set_title("per model: mean (bar) and images (dots)", fontsize="small", loc="left")
    if len(axes) > 1:
        right = axes[1]
        table = result.paired_differences(baseline, measure) if len(x) > 1 else None
        base = result.models[result.model_index(baseline) if baseline else 0]
        if table is not None and len(table):
            xs = np.arange(len(table))
            b = result.model_index(base)
            for j, name in enumerate(table["model"]):
                d = values[:, result.model_index(name)] - values[:, b]
                right.scatter(j + rng.uniform(-0.08, 0.08, len(d)), d, s=6, color="gray",
                              alpha=0.6, label="one image" if j == 0 else None)  # fmt: skip
            mean, se = table["mean_difference"].to_numpy(float), table["paired_se"].to_numpy(float)
            right.errorbar(xs, mean, yerr=se, fmt="o",
                           color="C0", capsize=4, ms=6, zorder=3,
                           label="mean ± paired s.e.")  # fmt: skip
            right.set_xticks(xs, list(table["model"]))
            right.set_xlim(-0.6, len(xs) - 0.4)
        right.axhline(0.0, color="black", lw=0.8)
        right.set_xlabel("model")
        short = label.split(":")[0]
        right.set_ylabel(f"{short}: model − {base}")
        right.set_title(f"paired on the same images, against {base}", fontsize="small",
                        loc="left")  # fmt: skip
        right.legend(fontsize="x-small", loc="lower left")
    note = ""
    if optimum is not None:
        note = f"; label smoothing {optimum[0]:g}: a higher P is not a better fit"
    caption(
        fig,
        model_name(result),
        f"{label}, target = the {result.target_source} class{note}",
        f"{len(values)} images",
        "error bars: paired s.e. of the difference (right); no error bars on the left",
    )
    return fig


def plot_localisation(result: GradCamComparisonResult, *, fig: Figure | None = None) -> Figure:
    """Where the object masks are known: per map (each model's Grad-CAM, then each spatial
    attention site) the share of its mass on the object and the pointing-game hit rate,
    mean ± s.e. over images, with the mean object area (the level of a map without
    preference) as a dashed line."""
    table = result.localisation_summary()
    if table.empty:
        raise ValueError("the result has no localisation: run it on images with object masks")
    n = len(table)
    fig = new_figure((8.0, 0.28 * n + 1.9), fig)
    axes = fig.subplots(1, 2, sharey=True)
    y = np.arange(n)[::-1]
    labels = [f"{r.model} · {r.map} ({r.grid})" for r in table.itertuples()]
    colours = [f"C{result.models.index(m) % 10}" for m in table["model"]]
    for ax, key, what in ((axes[0], "share", "mass on the object (share)"),
                          (axes[1], "pointing", "maximum on the object (hit rate)")):  # fmt: skip
        mean = table[f"{key}_mean" if key == "share" else key]
        ax.barh(y, mean, xerr=table[f"{key}_se"], color=colours, alpha=0.8, capsize=2)
        ax.axvline(float(table["object_area"].iloc[0]), color="black", ls="--", lw=0.9,
                   label="mean object area")  # fmt: skip
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel(what)
        ax.grid(axis="x", lw=0.3)
    axes[0].set_yticks(y, labels, fontsize="small")
    axes[1].legend(fontsize="x-small", loc="lower right")
    caption(
        fig,
        model_name(result),
        "Grad-CAM and spatial attention on the object mask",
        f"{len(result.ids)} images; dashed: the object's mean area (a map without preference)",
        "error bars: s.e. over images",
    )
    return fig
