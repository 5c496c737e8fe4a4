"""Figures of the SKNet object-scale sweep (Li et al. 2019, Fig. 3 and Fig. 4).

Every function takes a :class:`~attnviz.analysis.scale_sweep.ScaleSweepResult` and returns a
matplotlib ``Figure``; none runs a model.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._style import DIVERGING, caption, diverging_norm, dodge, new_axes, new_figure, no_minus_zero

if TYPE_CHECKING:
    from ..analysis.scale_sweep import ScaleSweepResult

__all__ = [
    "plot_channel_attention",
    "plot_class_d",
    "plot_class_delta",
    "plot_d_heatmap",
    "plot_delta_bars",
    "plot_image_views",
    "plot_stage_bars",
]


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    return new_axes(ax, figsize)


D_LABEL = "D = attention on largest − smallest kernel"


def _scale_label(s: float) -> str:
    return f"{s:g}x"


def _pick_scales(result: ScaleSweepResult, scales: Sequence[float] | None) -> list[int]:
    if scales is None:
        return list(range(len(result.scales)))
    return [result.scale_index(s) for s in scales]


def _image_index(result: ScaleSweepResult, image: int | str) -> int:
    if result.image_attention is None or result.image_ids is None:
        raise ValueError("per-image attention was not kept: run scale_sweep(..., per_image=True)")
    if isinstance(image, str):
        if image not in result.image_ids:
            raise KeyError(f"unknown image {image!r}; e.g. {result.image_ids[:3]}")
        return result.image_ids.index(image)
    if not -len(result.image_ids) <= image < len(result.image_ids):
        raise IndexError(f"image {image} out of range for {len(result.image_ids)} images")
    return int(image) % len(result.image_ids)


def run_means(values: np.ndarray, run: int) -> tuple[np.ndarray, np.ndarray]:
    """Means over consecutive runs of ``run`` channels (a last partial run is averaged too).

    Returns (x, y): x = index of the first channel of each run, y = the run means.
    """
    c = values.shape[-1]
    starts = np.arange(0, c, run)
    y = np.array([values[..., s : s + run].mean(axis=-1) for s in starts]).T
    return starts, y


def plot_channel_attention(
    result: ScaleSweepResult,
    site: str | None = None,
    *,
    branch: int = -1,
    image: int | str | None = None,
    run: int | str | None = "auto",
    scales: Sequence[float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Attention of one branch (default the largest kernel, the paper's b) against channel
    index at each scale, for one site (default the stage-3 last site, as SK_3_4 in Fig. 3a/b).

    ``image``: an index or id into the per-image results (``per_image=True``), else the mean
    over images. ``run``: average over runs of that many consecutive channels (None: every
    channel; ``"auto"``: runs of 16 as in the paper when the site has >= 256 channels, else
    every channel).
    """
    if site is None:
        last = result.stage_last_sites()
        site = next((a for a in last if result.site(a).stage == 3), last[0])
    info = result.site(site)
    if image is None:
        data = result.branch_mean[info.alias]  # (S, M, C)
        what = f"mean over {result.n_images} images"
    else:
        i = _image_index(result, image)
        data = result.image_attention[info.alias][i]
        what = f"image {result.image_ids[i]}"
    m = branch % data.shape[1]
    if run == "auto":
        run = 16 if data.shape[2] >= 256 else None
    fig, ax = _new_axes(ax, (6.4, 3.6))
    for si in _pick_scales(result, scales):
        values = np.asarray(data[si, m], dtype=np.float64)
        if run and run > 1:
            x, y = run_means(values, run)
        else:
            x, y = np.arange(values.shape[-1]), values
        ax.plot(
            x, y, marker="o" if len(x) <= 32 else None, ms=3, label=_scale_label(result.scales[si])
        )
    branch_name = "b (largest kernel)" if m == data.shape[1] - 1 else f"branch {m}"
    if m == 0:
        branch_name = "a (smallest kernel)"
    ax.set_xlabel("channel index" + (f" (runs of {run})" if run and run > 1 else ""))
    ax.set_ylabel(f"attention on {branch_name}")
    ax.set_title(
        f"{result.model_name}: site {info.alias}, attention on {branch_name} per channel\n"
        f"{what}; no error bars (means)",
        fontsize="medium",
    )
    ax.legend(title="object scale", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def plot_stage_bars(
    result: ScaleSweepResult,
    sites: Sequence[str] | None = None,
    *,
    scales: Sequence[float] | None = None,
    image: int | str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bars of mean D per site (default: the last site of each stage) and scale, with the
    standard error as error bars (Fig. 3 right / 3c); ``image`` plots one image's D instead."""
    sites = list(sites) if sites is not None else result.stage_last_sites()
    sidx = _pick_scales(result, scales)
    fig, ax = _new_axes(ax, (1.2 + 1.4 * len(sites), 3.6))
    x = np.arange(len(sites))
    width = 0.8 / max(1, len(sidx))
    if image is not None:
        i = _image_index(result, image)
        title = f"D per site, image {result.image_ids[i]}; no error bars (one image)"
    else:
        title = f"mean D per site, {result.n_images} images; error bars: s.e. of the mean"
    for j, si in enumerate(sidx):
        if image is not None:
            heights = [float(result.image_d[result.site(u).alias][i, si]) for u in sites]
            err = None
        else:
            heights = [float(result.d_mean[result.site(u).alias][si]) for u in sites]
            err = [float(result.d_sem[result.site(u).alias][si]) for u in sites]
        ax.bar(
            x + (j - (len(sidx) - 1) / 2) * width,
            heights,
            width,
            yerr=err,
            capsize=3,
            label=_scale_label(result.scales[si]),
        )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, [result.site(u).alias for u in sites])
    ax.set_xlabel("SK site (last of each stage)")
    ax.set_ylabel(D_LABEL)
    ax.set_title(f"{result.model_name}: {title}", fontsize="medium")
    ax.legend(title="object scale", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def plot_class_d(
    result: ScaleSweepResult,
    sites: Sequence[str] | None = None,
    *,
    scales: Sequence[float] | None = None,
    fig: Figure | None = None,
) -> Figure:
    """D per class at two scales (default the first two) for chosen sites (default: the last
    site of the first, second and last stage: SK_2_3, SK_3_4, SK_5_3 in Fig. 4), one panel
    per site, classes on the x axis: a dot per class and scale with the s.e. of D over the
    class's images as error bars (classes are unordered: no lines)."""
    if not result.class_names:
        raise ValueError("the sweep had no labels: per-class D needs labelled images")
    if sites is None:
        last = result.stage_last_sites()
        sites = last if len(last) <= 3 else [last[0], last[1], last[-1]]
    sites = [result.site(u).alias for u in sites]
    sidx = _pick_scales(result, scales if scales is not None else result.scales[:2])
    k = len(result.class_names)
    fig = _new_fig(fig, (max(6.0, 0.5 * k + 2.5), 2.3 * len(sites) + 1.2))
    axes = fig.subplots(len(sites), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(k)
    colours = _scale_colours(len(result.scales))
    offsets = dodge(len(sidx), 0.3)
    for ax, alias in zip(axes, sites):
        for off, si in zip(offsets, sidx):
            err = result.class_d_sem.get(alias)
            ax.errorbar(
                x + off,
                result.class_d_mean[alias][si],
                yerr=None if err is None else err[si],
                fmt="o",
                ms=4,
                capsize=2.5,
                lw=1.0,
                color=colours[si],
                label=_sx(result.scales[si]),
            )
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_ylabel("mean D")
        ax.set_title(alias, fontsize="medium", loc="left")
        ax.grid(axis="y", lw=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
               ncols=len(sidx), title="object scale", fontsize="small")  # fmt: skip
    axes[-1].set_xticks(x, result.class_names, rotation=90)
    axes[-1].set_xlabel("class")
    counts = result.class_count
    caption(
        fig,
        result.model_name,
        f"{D_LABEL} per class",
        f"{result.n_images} images ({int(counts.min()) if len(counts) else 0}-"
        f"{int(counts.max()) if len(counts) else 0} per class)",
        "error bars: s.e. of the class mean",
    )
    return fig


def plot_d_heatmap(
    result: ScaleSweepResult,
    sites: Sequence[str] | None = None,
    *,
    scales: Sequence[float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Mean D over sites (rows, model order) x scales (columns), diverging colours centred
    on 0 with symmetric limits, the value in each cell."""
    table = result.d_table()
    if sites is not None:
        table = table.loc[[result.site(u).alias for u in sites]]
    if scales is not None:
        table = table.iloc[:, _pick_scales(result, scales)]
    fig, ax = _new_axes(ax, (2.8 + 1.1 * table.shape[1], 1.6 + 0.38 * table.shape[0]))
    values = table.to_numpy(dtype=np.float64)
    norm = diverging_norm(values)
    im = ax.imshow(values, cmap=DIVERGING, norm=norm, aspect="auto")
    for (r, c), v in np.ndenumerate(values):
        if np.isfinite(v):
            shade = abs(v) / norm.vmax if norm.vmax else 0.0
            ax.text(c, r, no_minus_zero(v, "+.3f"), ha="center", va="center",
                    fontsize="small", color="white" if shade > 0.6 else "black")  # fmt: skip
    ax.set_xticks(np.arange(values.shape[1]), list(table.columns))
    ax.set_yticks(np.arange(values.shape[0]), list(table.index))
    fig.colorbar(im, ax=ax, label="mean D")
    ax.set_xlabel("object scale")
    ax.set_ylabel("SK site")
    ax.set_title(
        f"{result.model_name}: {D_LABEL}\nmean over {result.n_images} images; no error bars",
        fontsize="medium",
    )
    return fig


# --------------------------------------------------------------------------- issue 12 figures
def _scale_colours(n: int) -> list:
    """Perceptually uniform colours (viridis) for n scales."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.15, 0.85, max(n, 1))]


def _sx(s: float) -> str:
    """A scale as the paper writes it: 1.0x, 1.5x, 2.0x."""
    return f"{s:.1f}x" if float(s).is_integer() else f"{s:g}x"


def _new_fig(fig: Figure | None, figsize: tuple[float, float]) -> Figure:
    return new_figure(figsize, fig)


# per control condition: bar hatch (delta bars) and marker (Fig. 4)
CONTROL_HATCH = {
    "resolution_control": "//",
    "copies": "xx",
    "copies_perimeter": "..",
    "constant_area": "oo",
    "contrast_matched": "\\\\",
    "background_swap": "++",
}
CONTROL_MARKER = {
    "resolution_control": "v",
    "copies": "D",
    "copies_perimeter": "^",
    "constant_area": "o",
    "contrast_matched": "P",
    "background_swap": "X",
}


def _control_label(cond: str) -> str:
    return "resolution control" if cond == "resolution_control" else cond.replace("_", " ")


def _shares(result: ScaleSweepResult, site: str) -> str:
    """'copies 140 %, contrast matched 42 %, ...': the share of the site's ΔD each control
    reproduces (n.s. where the change itself has |z| < 3)."""
    table = result.control_table()
    if table.empty:
        return ""
    rows = table[table["site"] == site]
    one_scale = rows["scale"].nunique() == 1
    parts = []
    for r in rows.itertuples():
        share = f"{r.share:.0%}" if np.isfinite(r.share) else "n.s."
        at = "" if one_scale else f" {_sx(r.scale)}"
        parts.append(f"{_control_label(r.condition)}{at} {share}")
    head = f"share of ΔD({_sx(rows['scale'].iloc[0])}) reproduced: " if one_scale else ""
    return head + ", ".join(parts)


def plot_delta_bars(
    result: ScaleSweepResult,
    sites: Sequence[str] | None = None,
    *,
    scales: Sequence[float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bars of the paired change delta_D(s) = D(s) - D(1.0x) per site (default: the last
    site of each stage) and scale, with paired standard errors as error bars; every control
    the sweep ran (resolution control, content controls) stands beside the view it is matched
    to, hatched (one hatch per control)."""
    sites = [result.site(u).alias for u in (sites or result.stage_last_sites())]
    ref = result.reference_scale
    chosen = [s for s in (scales or result.scales) if s != ref]
    bars = []  # (label, condition, scale)
    kind = "native" if result.views_native else "zoom"
    controls = result.control_views()
    for s in chosen:
        bars.append((f"{kind} {_sx(s)}", "zoom", s))
        for cond, cs in controls:
            if cs == s:
                bars.append((f"{_control_label(cond)} ({_sx(s)})", cond, s))
    colours = dict(zip(chosen, _scale_colours(len(chosen))))
    fig, ax = _new_axes(ax, (1.6 + 1.1 * len(sites) * max(1, len(bars)) / 2, 3.8))
    x = np.arange(len(sites))
    width = 0.8 / max(1, len(bars))
    for j, (label, cond, s) in enumerate(bars):
        v = result.view_index(s, cond)
        heights = [float(result.delta_mean[a][v]) for a in sites]
        err = [float(result.delta_se[a][v]) for a in sites]
        control = cond != "zoom"
        ax.bar(
            x + (j - (len(bars) - 1) / 2) * width,
            heights,
            width,
            yerr=err,
            capsize=3,
            color=colours[s],
            alpha=0.45 if control else 1.0,
            hatch=CONTROL_HATCH.get(cond, "//") if control else None,
            edgecolor="black",
            linewidth=0.5,
            label=label,
        )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, sites)
    ax.set_xlabel("SK site (last of each stage)")
    ax.set_ylabel(f"ΔD = D(view) − D({_sx(ref)})")
    views = "native renders" if result.views_native else "crops of the original"
    n_ctrl = ", ".join(
        f"{int(result.view_count[result.view_index(s, 'resolution_control')])} "
        f"controlled at {_sx(s)}"
        for s in chosen
        if result.has_control(s)
    )
    what = "object drawn larger" if result.views_native else "zoomed view"
    what += " and its controls" if controls else ""
    ax.set_title(
        f"{result.model_name}: paired ΔD per image, {what}, {result.n_images} images "
        f"({views}{'; ' + n_ctrl if n_ctrl else ''})\nerror bars: paired s.e. of ΔD per image",
        fontsize="medium",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def plot_class_delta(
    result: ScaleSweepResult,
    sites: Sequence[str] | None = None,
    *,
    fig: Figure | None = None,
) -> Figure:
    """The SKNet paper's Fig. 4: per class, mean D at 1.0x against 1.5x and 2.0x for the last
    site of each stage (one panel per site). Error bars on the larger scales: the paired s.e.
    of the change ΔD of that class (D(s) − D(1.0x) per image). Every control the sweep ran
    adds open markers (per class: D(1.0x) + the control's ΔD of that class), and each panel
    says how much of the site's ΔD each control reproduces (``result.control_table()``)."""
    if not result.class_names:
        raise ValueError("the sweep had no labels: per-class D needs labelled images")
    sites = [result.site(u).alias for u in (sites or result.stage_last_sites())]
    k = len(result.class_names)
    extra = 0.35 * len(sites) + 0.4 if result.control_views() else 0.0
    fig = _new_fig(fig, (max(7.5, 0.5 * k + 2.5), 2.3 * len(sites) + 0.8 + extra))
    axes = fig.subplots(len(sites), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(k)
    colours = _scale_colours(len(result.scales))
    ref_i = result.scale_index(result.reference_scale)
    for ax, alias in zip(axes, sites):
        for si, s in enumerate(result.scales):
            y = result.class_d_mean[alias][si]
            if si == ref_i:
                ax.plot(x, y, marker="o", ms=4, color=colours[si], label=_sx(s), ls="none")
            else:
                v = result.view_index(s, "zoom")
                err = result.class_delta_se[alias][v]
                off = 0.08 * (si - ref_i)
                ax.errorbar(x + off, y, yerr=err, marker="s", ms=3.5, capsize=2.5, lw=1.0,
                            ls="none", color=colours[si],
                            label=f"{_sx(s)} (± paired s.e. of ΔD)")  # fmt: skip
        for cond, cs in result.control_views():
            v = result.view_index(cs, cond)
            y = result.class_d_mean[alias][ref_i] + result.class_delta_mean[alias][v]
            ax.plot(x + 0.08 * (result.scale_index(cs) - ref_i) + 0.12, y, ls="none",
                    marker=CONTROL_MARKER.get(cond, "v"), ms=4, mfc="none", mew=0.8,
                    color=colours[result.scale_index(cs)],
                    label=f"{_control_label(cond)} ({_sx(cs)})")  # fmt: skip
        ax.set_ylabel("mean D")
        shares = _shares(result, alias)
        title = alias + ("\n" + "\n".join(textwrap.wrap(shares, 95)) if shares else "")
        ax.set_title(title, fontsize="small" if shares else "medium", loc="left")
        ax.grid(axis="y", lw=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3,
               fontsize="small")  # fmt: skip
    axes[-1].set_xticks(x, result.class_names, rotation=90)
    axes[-1].set_xlabel("class")
    counts = result.class_count
    note = (
        "\nopen markers: controls; share = the control's ΔD / the larger view's ΔD,\npaired "
        "on the same images (n.s. where that ΔD has |z| < 3)"
        if result.control_views()
        else ""
    )
    fig.suptitle(
        f"{result.model_name}: per-class D, {result.n_images} images "
        f"({int(counts.min()) if len(counts) else 0}-{int(counts.max()) if len(counts) else 0}"
        " per class)\nerror bars: paired s.e. of the change from "
        f"{_sx(result.reference_scale)}" + note,
        fontsize="medium",
    )
    return fig


def plot_image_views(
    result: ScaleSweepResult,
    views: Sequence,
    image: int | str = 0,
    sites: Sequence[str] | None = None,
    *,
    run: int | None = None,
    n_images: int | None = None,
    fig: Figure | None = None,
) -> Figure:
    """The SKNet paper's Fig. 3 (left): one image's views (``views``: PIL images or arrays,
    one per scale, e.g. from :func:`attnviz.data.views.zoom_views` or
    :meth:`attnviz.data.ShapeScenes.views`) side by side above its per-channel attention
    difference a_large − a_small at each chosen site (default: the last site of stages 2
    and 3), one line per scale. Needs ``per_image=True``. ``run``: average runs of that many
    consecutive channels (the paper: 16). ``n_images``: the size of the sweep the image was
    taken from (for the title; default ``result.n_images``)."""
    i = _image_index(result, image)
    s = len(result.scales)
    if len(views) != s:
        raise ValueError(f"give one view per scale ({s}), got {len(views)}")
    if sites is None:
        last = result.stage_last_sites()
        sites = last[:2] if len(last) >= 2 else last
    sites = [result.site(u).alias for u in sites]
    fig = _new_fig(fig, (max(6.0, 2.0 * s), 2.2 + 2.4 * len(sites)))
    grid = fig.add_gridspec(1 + len(sites), s, height_ratios=[1.3] + [1.0] * len(sites))
    colours = _scale_colours(s)
    up = result.image_upsampling[i] if result.image_upsampling is not None else None
    for j, view in enumerate(views):
        ax = fig.add_subplot(grid[0, j])
        ax.imshow(np.asarray(view))
        ax.set_xticks([])
        ax.set_yticks([])
        label = _sx(result.scales[j])
        if up is not None and not result.views_native:
            label += f" (upsampled {up[j]:.2f}x)" if up[j] > 1 + 1e-9 else " (not upsampled)"
        ax.set_title(label, fontsize="medium", color=colours[j])
    for r, alias in enumerate(sites):
        ax = fig.add_subplot(grid[1 + r, :])
        att = np.asarray(result.image_attention[alias][i], dtype=np.float64)  # (S, M, C)
        for j in range(s):
            diff = att[j, -1] - att[j, 0]
            if run and run > 1:
                xs, ys = run_means(diff, run)
            else:
                xs, ys = np.arange(diff.shape[-1]), diff
            ax.plot(xs, ys, color=colours[j], lw=1.2, label=_sx(result.scales[j]))
        ax.axhline(0.0, color="black", lw=0.6)
        ax.set_ylabel("a_large − a_small")
        ax.set_title(f"{alias} ({result.site(alias).branch_text()})", fontsize="small", loc="left")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=s,
               title="object scale", fontsize="small")  # fmt: skip
    ax.set_xlabel("channel index" + (f" (runs of {run})" if run and run > 1 else ""))
    ident = result.image_ids[i].replace("\\", "/").rsplit("/", 1)[-1]
    fig.suptitle(
        f"{result.model_name}: image {ident} of the {n_images or result.n_images} swept, per-"
        "channel attention difference a_large − a_small; no error bars (one image)",
        fontsize="medium",
    )
    return fig
