"""Figures of SENet's role of excitation (Hu et al., TPAMI 2019, Fig. 6 and 7).

All take an :class:`~attnviz.analysis.excitation.ExcitationProfileResult` and return a Figure; the
curves are drawn over the result's evenly spaced channels (``SiteExcitation.channels``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis.excitation import ExcitationProfileResult, SiteExcitation
from ..capture.kinds import get_kind
from ._style import (
    DIVERGING,
    SEQUENTIAL,
    caption,
    class_colours,
    diverging_norm,
    dodge,
    model_name,
    new_axes,
    new_figure,
    shared_norm,
    site_list,
)


def _grid(fig: Figure, n: int, ncols: int, **kw) -> list:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return flat[:n]


def _chosen_sites(
    result: ExcitationProfileResult, sites: Sequence[str] | None
) -> list[SiteExcitation]:
    return list(result.sites) if sites is None else [result.site(s) for s in sites]


def _rows(result: ExcitationProfileResult, classes: Sequence[int | str] | None) -> list[int]:
    if classes is None:
        return list(range(len(result.classes)))
    return [result.class_index(c) for c in classes]


def _per_class(result: ExcitationProfileResult, rows: Sequence[int]) -> str:
    counts = [int(result.counts[k]) for k in rows]
    if not counts:
        return ""
    lo, hi = min(counts), max(counts)
    return f"{lo} per class" if lo == hi else f"{lo}-{hi} per class"


def _in_unit_range(s: SiteExcitation) -> bool:
    """The site's gate lies in [0, 1]: its kind says so (a sigmoid gate) and its values agree
    (a kind of logits, such as BAM's ``bam_channel``, or a module with another gate, does not)."""
    if get_kind(s.kind).value_range != (0.0, 1.0):
        return False
    values = np.concatenate([np.ravel(s.mean), np.ravel(s.class_mean)])
    values = values[np.isfinite(values)]
    return bool(values.size == 0 or (values.min() >= 0.0 and values.max() <= 1.0))


def _value_label(chosen: Sequence[SiteExcitation], what: str) -> str:
    """``what``, naming the sites whose values are not gates in [0, 1] (logits)."""
    other = [s.alias for s in chosen if not _in_unit_range(s)]
    return what if not other else f"{what}\n(not in [0, 1] at {site_list(other, 3)})"


def _unit_or_zero_line(ax: Axes, s: SiteExcitation) -> None:
    """[0, 1] limits for a gate in [0, 1]; otherwise the data's own limits and a zero line."""
    if _in_unit_range(s):
        ax.set_ylim(-0.02, 1.02)
    else:
        ax.axhline(0.0, color="0.5", lw=0.8, zorder=0)


def plot_excitation_by_class(
    result: ExcitationProfileResult,
    classes: Sequence[int | str] | None = None,
    *,
    sites: Sequence[str] | None = None,
    ncols: int = 3,
    show_all: bool = True,
    fig: Figure | None = None,
) -> Figure:
    """Fig. 6: a panel per site, mean excitation per class over the shown channels.

    One line per class (label = class name), plus the mean over all images (label ``"all"``,
    black, dashed) when ``show_all``. x = channel index, y = mean excitation; one legend
    below the panels. For more classes than a few lines can show, use
    :func:`plot_excitation_heatmap`.
    """
    rows = _rows(result, classes)
    chosen = _chosen_sites(result, sites)
    ncols = max(1, min(ncols, len(chosen)))
    nrows = math.ceil(len(chosen) / ncols)
    fig = new_figure((3.4 * ncols + 0.4, 2.6 * nrows + 1.4), fig)
    unit = all(_in_unit_range(s) for s in chosen)
    axes = _grid(fig, len(chosen), ncols, sharey=unit)
    colours = class_colours(len(rows))
    for ax, s in zip(axes, chosen):
        ch = s.channels
        for colour, k in zip(colours, rows):
            ax.plot(ch, s.class_mean[k, ch], lw=1.0, color=colour, label=result.class_names[k])
        if show_all:
            ax.plot(ch, s.mean[ch], color="black", ls="--", lw=1.4, label="all classes")
        ax.set_title(s.alias, fontsize="medium", loc="left")
        ax.set_xlabel("channel index")
        _unit_or_zero_line(ax, s)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    for i, ax in enumerate(axes):
        if i % ncols == 0:
            ax.set_ylabel(_value_label(chosen, "mean excitation"))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(6, len(labels)),
               fontsize="small")  # fmt: skip
    caption(
        fig,
        model_name(result),
        "mean excitation per class (SENet Fig. 6)",
        f"sites {site_list(s.alias for s in chosen)}; {result.n_images} images, "
        f"{_per_class(result, rows)}",
        f"{len(chosen[0].channels) if chosen else 0} evenly spaced channels; no error bars",
    )
    return fig


def plot_excitation_heatmap(
    result: ExcitationProfileResult,
    classes: Sequence[int | str] | None = None,
    *,
    sites: Sequence[str] | None = None,
    ncols: int = 3,
    fig: Figure | None = None,
) -> Figure:
    """Fig. 6 for many classes: per site a class x channel heatmap of the mean excitation
    (rows: classes, then "all"): the gates in [0, 1] share one colour scale [0, 1]; sites
    whose values are not in [0, 1] (BAM's channel logits) share a second, diverging scale
    centred on 0 with its own colour bar."""
    rows = _rows(result, classes)
    chosen = _chosen_sites(result, sites)
    ncols = max(1, min(ncols, len(chosen)))
    nrows = math.ceil(len(chosen) / ncols)
    k = len(rows) + 1
    fig = new_figure((3.3 * ncols + 1.6, (0.16 * k + 1.3) * nrows + 1.0), fig)
    axes = _grid(fig, len(chosen), ncols)
    names = [result.class_names[r] for r in rows] + ["all classes"]
    panels = [np.vstack([s.class_mean[rows][:, s.channels], s.mean[s.channels][None]])
              for s in chosen]  # fmt: skip
    unit = [_in_unit_range(s) for s in chosen]
    scales = {
        True: (SEQUENTIAL, shared_norm([], vmin=0.0, vmax=1.0), "mean excitation"),
        False: (DIVERGING, diverging_norm([p for p, u in zip(panels, unit) if not u]),
                "mean value, not a gate in [0, 1] (logit)"),
    }  # fmt: skip
    images: dict[bool, list] = {True: [], False: []}
    for i, (ax, s, data, u) in enumerate(zip(axes, chosen, panels, unit)):
        ch = s.channels
        cmap, norm, _ = scales[u]
        im = ax.imshow(data, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
        images[u].append((ax, im))
        ax.axhline(len(rows) - 0.5, color="white", lw=1.5)
        ax.set_title(s.alias, fontsize="medium", loc="left")
        ticks = np.linspace(0, len(ch) - 1, min(4, len(ch))).round().astype(int)
        ax.set_xticks(ticks, [str(int(ch[t])) for t in ticks])
        ax.set_xlabel("channel index")
        if i % ncols == 0:
            ax.set_yticks(np.arange(k), names, fontsize="small")
        else:
            ax.set_yticks([])
    for u, drawn in images.items():
        if drawn:
            fig.colorbar(drawn[-1][1], ax=[a for a, _ in drawn], label=scales[u][2], shrink=0.9)
    caption(
        fig,
        model_name(result),
        "mean excitation per class and channel (SENet Fig. 6 as heatmaps)",
        f"sites {site_list(s.alias for s in chosen)}; {result.n_images} images, "
        f"{_per_class(result, rows)}",
        (
            "one colour scale for all panels"
            if len(set(unit)) < 2
            else "two colour scales: gates in [0, 1], and values that are not (logits)"
        )
        + "; no error bars",
    )
    return fig


def plot_excitation_std(
    result: ExcitationProfileResult,
    classes: int | str | Sequence[int | str],
    *,
    sites: Sequence[str] | None = None,
    ncols: int = 3,
    fig: Figure | None = None,
) -> Figure:
    """Fig. 7: the mean excitation of a class with a +-1 std band over the class's images;
    one panel per (class, site), sites wrapped in rows of ``ncols``."""
    if isinstance(classes, (int, str, np.integer)):
        classes = [classes]
    rows = [result.class_index(c) for c in classes]
    chosen = _chosen_sites(result, sites)
    pairs = [(k, s) for k in rows for s in chosen]
    ncols = max(1, min(ncols, len(chosen)))
    nrows = math.ceil(len(pairs) / ncols)
    fig = new_figure((3.4 * ncols + 0.4, 2.5 * nrows + 1.3), fig)
    unit = all(_in_unit_range(s) for s in chosen)
    axes = _grid(fig, len(pairs), ncols, sharey=unit)
    for i, (ax, (k, s)) in enumerate(zip(axes, pairs)):
        ch = s.channels
        mean, std = s.class_mean[k, ch], s.class_std[k, ch]
        ax.plot(ch, mean, color="C0", lw=1.2, label="class mean")
        ax.fill_between(ch, mean - std, mean + std, color="C0", alpha=0.3, label="± 1 std")
        title = s.alias if len(rows) == 1 else f"{s.alias}, {result.class_names[k]}"
        ax.set_title(title, fontsize="medium", loc="left")
        _unit_or_zero_line(ax, s)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        if i % ncols == 0:
            ax.set_ylabel(_value_label(chosen, "excitation"))
        if i >= len(pairs) - ncols:
            ax.set_xlabel("channel index")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2,
               fontsize="small")  # fmt: skip
    names = ", ".join(f"{result.class_names[k]} ({int(result.counts[k])} images)" for k in rows)
    caption(
        fig,
        model_name(result),
        "excitation within a class (SENet Fig. 7)",
        f"class {names}; sites {site_list(s.alias for s in chosen)}",
        "band: ± 1 std over the class's images",
    )
    return fig


def _stage_sites(result: ExcitationProfileResult, sites: Sequence[str] | None) -> list:
    """Default: the last site of each stage (every site when sites have no stage)."""
    if sites is not None:
        return [result.site(s) for s in sites]
    last: dict = {}
    for s in result.sites:
        last[s.stage if s.stage is not None else s.alias] = s
    return list(last.values())


def plot_gate_stage_bars(
    result: ExcitationProfileResult,
    sites: Sequence[str] | None = None,
    *,
    by_class: bool = True,
    fig: Figure | None = None,
) -> Figure:
    """Per-stage bars of a channel gate (SE, ECA, CBAM channel, splat: any kind of role
    ``channel``; SENet Sec. 7.2): per site (default the last of each stage) the mean gate
    value over channels and images, error bars the std over images averaged over channels;
    beside it (``by_class`` and labels exist) a dot per class, error bars the same std within
    the class. For SK's branch attention per stage see :func:`attnviz.plot.plot_stage_bars`."""
    chosen = _stage_sites(result, sites)
    x = np.arange(len(chosen))
    aliases = [s.alias for s in chosen]
    with_classes = by_class and len(result.classes) > 1
    width = 1.1 * len(chosen) + 2.0
    fig = new_figure((width * (2 if with_classes else 1) + 0.6, 3.6), fig)
    axes = fig.subplots(1, 2 if with_classes else 1, squeeze=False, sharey=True)[0]
    kinds = sorted({s.kind for s in chosen})
    ax = axes[0]
    ax.bar(
        x,
        [float(s.mean.mean()) for s in chosen],
        yerr=[float(s.std.mean()) for s in chosen],
        color="C0",
        alpha=0.8,
        capsize=3,
        width=0.6,
    )
    ax.set_xticks(x, aliases, rotation=30, ha="right")
    ax.set_xlabel("site (last of each stage)")
    ax.set_ylabel(_value_label(chosen, "gate value (mean over channels)"))
    if all(_in_unit_range(s) for s in chosen):
        ax.set_ylim(0.0, 1.05)
    else:
        ax.axhline(0.0, color="0.5", lw=0.8, zorder=0)
    ax.set_title("all images", fontsize="medium", loc="left")
    if with_classes:
        ax2 = axes[1]
        rows = list(range(len(result.classes)))
        colours = class_colours(len(rows))
        for off, colour, k in zip(dodge(len(rows), 0.6), colours, rows):
            ax2.errorbar(
                x + off,
                [float(s.class_mean[k].mean()) for s in chosen],
                yerr=[float(s.class_std[k].mean()) for s in chosen],
                fmt="o",
                ms=3.5,
                lw=0.8,
                capsize=2,
                color=colour,
                label=result.class_names[k],
            )
        ax2.set_xticks(x, aliases, rotation=30, ha="right")
        ax2.set_xlabel("site (last of each stage)")
        ax2.set_title("per class", fontsize="medium", loc="left")
        ax2.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    caption(
        fig,
        model_name(result),
        f"channel gate per stage ({', '.join(kinds)})",
        f"sites {site_list(aliases)}; {result.n_images} images",
        "error bars: std over images, averaged over channels",
    )
    return fig


def plot_specificity(
    result: ExcitationProfileResult, *, measure: str = "specificity", ax: Axes | None = None
) -> Figure:
    """Class specificity of each site against depth, with its controls.

    x = site position (ticks labelled with aliases). For ``measure="specificity"``: the
    excitation (``ax.get_lines()[0]``, red), the squeeze input GAP(x) (``lines[1]``, blue,
    dashed) and the label-permutation null of the excitation: its mean (``lines[2]``, grey,
    dotted) and a grey band from its 5th to its 95th percentile (``ax.collections``), when the
    result has a null. ``measure="class_spread"``: the excitation's class spread alone.
    """
    table = result.specificity()
    if measure not in ("specificity", "class_spread"):
        raise ValueError(f"measure must be 'specificity' or 'class_spread', not {measure!r}")
    fig, ax = new_axes(ax, (max(5.5, 0.9 * len(table) + 3.5), 3.6))
    x = np.arange(len(table))
    label = "excitation (gate)" if measure == "specificity" else "class spread"
    ax.plot(x, table[measure].to_numpy(), marker="o", color="C3", label=label)
    if measure == "specificity":
        ax.plot(
            x,
            table["squeeze_specificity"].to_numpy(),
            marker="s",
            color="C0",
            ls="--",
            label="squeeze input GAP(x)",
        )
        nulls = [s.null[np.isfinite(s.null)] for s in result.sites]
        if all(n.size for n in nulls):
            lo = np.asarray([np.percentile(n, 5) for n in nulls])
            hi = np.asarray([np.percentile(n, 95) for n in nulls])
            ax.plot(
                x,
                [n.mean() for n in nulls],
                color="gray",
                ls=":",
                label=f"null mean ({result.permutations} label permutations)",
            )
            ax.fill_between(x, lo, hi, color="gray", alpha=0.25, lw=0, label="null 5-95%")
    ax.set_xticks(x, table["site"].tolist(), rotation=45, ha="right")
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("site (shallow to deep)")
    ax.set_ylabel(measure.replace("_", " "))
    source = "" if result.label_source == "given" else "; classes: predictions"
    band = (
        "grey band: 5-95% of the label-permutation null"
        if measure == "specificity" and result.permutations
        else "no error bars"
    )
    ax.set_title(
        f"{model_name(result)}: class specificity vs depth, {result.n_images} images"
        f"{source}\n{band}",
        fontsize="medium",
    )
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
