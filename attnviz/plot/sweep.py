"""Figures of the SKNet object-scale sweep (Li et al. 2019, Fig. 3 and Fig. 4).

Every function takes a :class:`~attnviz.analysis.scale_sweep.ScaleSweepResult` and returns a
matplotlib ``Figure``; none runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from ..analysis.scale_sweep import ScaleSweepResult

__all__ = ["plot_channel_attention", "plot_class_d", "plot_d_heatmap", "plot_stage_bars"]


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


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
    unit: str | None = None,
    *,
    branch: int = -1,
    image: int | str | None = None,
    run: int | str | None = "auto",
    scales: Sequence[float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Attention of one branch (default the largest kernel, the paper's b) against channel
    index at each scale, for one unit (default the stage-3 last unit, as SK_3_4 in Fig. 3a/b).

    ``image``: an index or id into the per-image results (``per_image=True``), else the mean
    over images. ``run``: average over runs of that many consecutive channels (None: every
    channel; ``"auto"``: runs of 16 as in the paper when the unit has >= 256 channels, else
    every channel).
    """
    if unit is None:
        last = result.stage_last_units()
        unit = next((a for a in last if result.unit(a).stage == 3), last[0])
    info = result.unit(unit)
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
    ax.set_ylabel(f"attention {branch_name}")
    ax.set_title(f"{info.alias}: {branch_name}, {what}")
    ax.legend(title="object scale")
    return fig


def plot_stage_bars(
    result: ScaleSweepResult,
    units: Sequence[str] | None = None,
    *,
    scales: Sequence[float] | None = None,
    image: int | str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bars of mean D per unit (default: the last unit of each stage) and scale, with the
    standard error as error bars (Fig. 3 right / 3c); ``image`` plots one image's D instead."""
    units = list(units) if units is not None else result.stage_last_units()
    sidx = _pick_scales(result, scales)
    fig, ax = _new_axes(ax, (1.2 + 1.4 * len(units), 3.6))
    x = np.arange(len(units))
    width = 0.8 / max(1, len(sidx))
    if image is not None:
        i = _image_index(result, image)
        title = f"D per unit, image {result.image_ids[i]}"
    else:
        title = f"mean D per unit over {result.n_images} images (± s.e.)"
    for j, si in enumerate(sidx):
        if image is not None:
            heights = [float(result.image_d[result.unit(u).alias][i, si]) for u in units]
            err = None
        else:
            heights = [float(result.d_mean[result.unit(u).alias][si]) for u in units]
            err = [float(result.d_sem[result.unit(u).alias][si]) for u in units]
        ax.bar(
            x + (j - (len(sidx) - 1) / 2) * width,
            heights,
            width,
            yerr=err,
            capsize=3,
            label=_scale_label(result.scales[si]),
        )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x, [result.unit(u).alias for u in units])
    ax.set_xlabel("SK unit")
    ax.set_ylabel("D = mean(b) - mean(a)")
    ax.set_title(title)
    ax.legend(title="object scale")
    return fig


def plot_class_d(
    result: ScaleSweepResult,
    units: Sequence[str] | None = None,
    *,
    scales: Sequence[float] | None = None,
) -> Figure:
    """D per class at two scales (default the first two) for chosen units (default: the last
    unit of the first, second and last stage: SK_2_3, SK_3_4, SK_5_3 in Fig. 4), one panel
    per unit, classes on the x axis."""
    if not result.class_names:
        raise ValueError("the sweep had no labels: per-class D needs labelled images")
    if units is None:
        last = result.stage_last_units()
        units = last if len(last) <= 3 else [last[0], last[1], last[-1]]
    units = [result.unit(u).alias for u in units]
    sidx = _pick_scales(result, scales if scales is not None else result.scales[:2])
    k = len(result.class_names)
    fig = Figure(figsize=(max(5.0, 0.45 * k + 2.0), 2.6 * len(units)), layout="constrained")
    axes = fig.subplots(len(units), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(k)
    for ax, alias in zip(axes, units):
        for si in sidx:
            ax.plot(
                x,
                result.class_d_mean[alias][si],
                marker="o",
                ms=3,
                label=_scale_label(result.scales[si]),
            )
        ax.set_ylabel(f"D at {alias}")
        ax.set_title(alias)
        ax.legend(title="object scale", fontsize="small")
    axes[-1].set_xticks(x, result.class_names, rotation=60, ha="right")
    axes[-1].set_xlabel("class")
    return fig


def plot_d_heatmap(
    result: ScaleSweepResult,
    units: Sequence[str] | None = None,
    *,
    scales: Sequence[float] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Seaborn heatmap of mean D over units (rows, model order) x scales (columns)."""
    import seaborn as sns

    table = result.d_table()
    if units is not None:
        table = table.loc[[result.unit(u).alias for u in units]]
    if scales is not None:
        table = table.iloc[:, _pick_scales(result, scales)]
    fig, ax = _new_axes(ax, (1.8 + 1.1 * table.shape[1], 1.0 + 0.38 * table.shape[0]))
    vmax = float(np.nanmax(np.abs(table.to_numpy()))) or 1.0
    sns.heatmap(
        table,
        ax=ax,
        annot=True,
        fmt="+.3f",
        cmap="RdBu_r",
        center=0.0,
        vmin=-vmax,
        vmax=vmax,
        cbar_kws={"label": "D"},
    )
    ax.set_xlabel("object scale")
    ax.set_ylabel("SK unit")
    ax.set_title("D = mean(b) - mean(a)")
    return fig
