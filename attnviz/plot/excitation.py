"""Figures of SENet's role of excitation (Hu et al., TPAMI 2019, Fig. 6 and 7).

All take an :class:`~attnviz.analysis.excitation.ExcitationProfileResult` and return a Figure; the
curves are drawn over the result's evenly spaced channels (``SiteExcitation.channels``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis.excitation import ExcitationProfileResult, SiteExcitation


def _panels(n: int, ncols: int, width: float = 3.6, height: float = 2.8):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, height * nrows),
        squeeze=False,
        sharey=True,
        layout="tight",
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in flat[:n]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, flat[:n], flat[n:]


def _legend(axes: list, spare: list) -> None:
    """Legend in the first unused panel if there is one, else on the last panel."""
    handles, labels = axes[-1].get_legend_handles_labels()
    if spare:
        spare[0].set_visible(True)
        spare[0].axis("off")
        spare[0].legend(handles, labels, loc="center", fontsize="small")
    else:
        axes[-1].legend(fontsize="x-small", loc="lower right")


def _chosen_sites(
    result: ExcitationProfileResult, sites: Sequence[str] | None
) -> list[SiteExcitation]:
    return list(result.sites) if sites is None else [result.site(s) for s in sites]


def plot_excitation_by_class(
    result: ExcitationProfileResult,
    classes: Sequence[int | str] | None = None,
    *,
    sites: Sequence[str] | None = None,
    ncols: int = 3,
    show_all: bool = True,
) -> Figure:
    """Fig. 6: a panel per site, mean excitation per class over the shown channels.

    One line per class (label = class name), plus the mean over all images (label ``"all"``,
    black, dashed) when ``show_all``. x = channel index, y = mean excitation.
    """
    rows = (
        list(range(len(result.classes)))
        if classes is None
        else [result.class_index(c) for c in classes]
    )
    chosen = _chosen_sites(result, sites)
    fig, axes, spare = _panels(len(chosen), ncols)
    for ax, s in zip(axes, chosen):
        ch = s.channels
        for k in rows:
            ax.plot(ch, s.class_mean[k, ch], lw=1.0, label=result.class_names[k])
        if show_all:
            ax.plot(ch, s.mean[ch], color="black", ls="--", lw=1.4, label="all")
        ax.set_title(s.alias)
        ax.set_xlabel("channel index")
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("mean excitation")
    _legend(axes, spare)
    fig.suptitle("Excitation per class (SENet Fig. 6)")
    return fig


def plot_excitation_std(
    result: ExcitationProfileResult,
    classes: int | str | Sequence[int | str],
    *,
    sites: Sequence[str] | None = None,
) -> Figure:
    """Fig. 7: the mean excitation of a class with a +-1 std band; a row per class (one class
    or several), a column per site."""
    if isinstance(classes, (int, str, np.integer)):
        classes = [classes]
    rows = [result.class_index(c) for c in classes]
    chosen = _chosen_sites(result, sites)
    fig, axes = plt.subplots(
        len(rows),
        len(chosen),
        figsize=(3.0 * len(chosen), 2.5 * len(rows)),
        squeeze=False,
        sharey=True,
        layout="tight",
    )
    for r, k in enumerate(rows):
        for ax, s in zip(axes[r], chosen):
            ch = s.channels
            mean, std = s.class_mean[k, ch], s.class_std[k, ch]
            ax.plot(ch, mean, color="C0", lw=1.2, label="mean")
            ax.fill_between(ch, mean - std, mean + std, color="C0", alpha=0.3, label="± std")
            ax.set_title(f"{s.alias}: {result.class_names[k]} (n={result.counts[k]})", fontsize=9)
            ax.set_ylim(-0.02, 1.02)
        axes[r, 0].set_ylabel("excitation")
    for ax in axes[-1]:
        ax.set_xlabel("channel index")
    axes[0, -1].legend(fontsize="small", loc="best")
    fig.suptitle("Excitation within a class: mean ± std (SENet Fig. 7)")
    return fig


def plot_specificity(
    result: ExcitationProfileResult, *, measure: str = "specificity", ax=None
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
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.8, 0.9 * len(table) + 2.5), 3.4), layout="tight")
    else:
        fig = ax.figure
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
    source = "" if result.label_source == "given" else " (classes: predictions)"
    ax.set_title(f"Class specificity vs depth{source}", fontsize=10)
    ax.legend(fontsize="x-small", loc="best")
    return fig
