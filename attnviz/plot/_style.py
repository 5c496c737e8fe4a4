"""The conventions every attnviz figure follows (one place, so every plot says the same).

* A figure is made with pyplot (``plt.figure``) unless the caller gives ``ax=`` / ``fig=``, so
  it shows in a notebook and with ``plt.show()``; the CLI and the report close what they save.
* Colour: :data:`SEQUENTIAL` (viridis, perceptually uniform) for attention and other
  non-negative maps, :data:`DIVERGING` (RdBu_r, centred on 0 with symmetric limits) for
  differences. Every map has a colour bar; the panels of a figure share one norm.
* Every figure names the model, the sites, the number of images and what its error bars are
  (:func:`caption`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

SEQUENTIAL = "viridis"
DIVERGING = "RdBu_r"
CLASS_COLOURS = "tab10"  # qualitative: classes are unordered categories
OVERLAY_ALPHA = 0.55


def new_figure(figsize: tuple[float, float], fig: Figure | None = None) -> Figure:
    """``fig`` if given, else a new pyplot figure with constrained layout."""
    if fig is not None:
        return fig
    return plt.figure(figsize=figsize, layout="constrained")


def new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """(figure, axes): ``ax`` and its figure if given, else a new pyplot figure."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(figsize)
    return fig, fig.add_subplot()


def model_name(result: Any) -> str:
    """The model a result was computed on, as the CLI named it (short class name else)."""
    meta = getattr(result, "meta", None) or {}
    name = meta.get("model") if isinstance(meta, dict) else None
    if not name:
        name = getattr(result, "model", None)
    if not name and getattr(result, "models", None):
        name = ", ".join(str(m) for m in result.models)
    if not name and isinstance(meta, dict):
        name = meta.get("run", {}).get("model_class")
    if not name:
        return "model"
    name = str(name)
    if "." in name and "/" not in name and not name.endswith((".pt", ".pth", ".safetensors")):
        name = name.rsplit(".", 1)[-1]
    return name


def site_list(aliases: Iterable[str], limit: int = 6) -> str:
    """ "SE_2_3, SE_3_4 and SE_4_2" (shortened to the first and last past ``limit``)."""
    items = [str(a) for a in aliases]
    if len(items) > limit:
        return f"{items[0]} ... {items[-1]} ({len(items)} sites)"
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(fig: Figure, model: str, what: str, detail: str, errorbars: str) -> None:
    """The suptitle of a figure: "<model>: <what>" on one line, then "<detail>; <errorbars>"."""
    fig.suptitle(f"{model}: {what}\n{detail}; {errorbars}", fontsize="medium")


def shared_norm(
    maps: Iterable[np.ndarray], vmin: float | None = None, vmax: float | None = None
) -> Normalize:
    """One linear norm over all ``maps`` (their joint finite min / max unless given; [0, 1]
    when there is nothing finite to span)."""
    arrays = [np.asarray(m, dtype=np.float64).ravel() for m in maps]
    values = np.concatenate([a[np.isfinite(a)] for a in arrays] or [np.zeros(0)])
    lo = float(vmin) if vmin is not None else float(values.min()) if values.size else 0.0
    hi = float(vmax) if vmax is not None else float(values.max()) if values.size else 1.0
    if not hi > lo:
        hi = lo + 1e-12
    return Normalize(vmin=lo, vmax=hi)


def diverging_norm(values: Iterable[np.ndarray] | np.ndarray) -> Normalize:
    """A norm symmetric about 0: [-m, m] with m the largest |value| (1 if all are 0)."""
    parts = [values] if isinstance(values, np.ndarray) else list(values)
    flat = [np.asarray(v, dtype=float).ravel() for v in parts]  # arrays of any shapes
    arr = np.concatenate(flat) if flat else np.zeros(0)
    finite = np.abs(arr[np.isfinite(arr)])
    m = float(finite.max()) if finite.size else 1.0
    m = m or 1.0
    return Normalize(vmin=-m, vmax=m)


def draw_overlay(
    ax: Axes,
    image: np.ndarray,
    heatmap: np.ndarray,
    norm: Normalize,
    *,
    cmap: str = SEQUENTIAL,
    alpha: float = OVERLAY_ALPHA,
):
    """The image in grey (``ax.images[0]``), the heatmap upsampled to it and coloured with
    ``cmap`` / ``norm`` on top (``ax.images[1]``, returned: give it to a colour bar)."""
    from .overlay import to_rgb_uint8, upsample

    img = to_rgb_uint8(image)
    grey = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    up = upsample(np.asarray(heatmap, dtype=np.float64), img.shape[:2])
    im = ax.imshow(up, cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def colorbar(fig: Figure, mappable: Any, axes: Sequence[Axes] | Axes, label: str, **kw: Any):
    """One colour bar for ``axes`` (all panels that share the mappable's norm), drawn opaque
    even when the mappable is a translucent overlay."""
    from matplotlib.cm import ScalarMappable

    kw.setdefault("shrink", 0.85)
    alpha = mappable.get_alpha() if hasattr(mappable, "get_alpha") else None
    if alpha is not None and alpha < 1:
        mappable = ScalarMappable(norm=mappable.norm, cmap=mappable.cmap)
    return fig.colorbar(mappable, ax=axes, label=label, **kw)


def no_minus_zero(value: float, fmt: str) -> str:
    """``format(value, fmt)`` without "-0.000" (a value that rounds to zero prints as 0)."""
    text = format(value, fmt)
    if float(text) == 0.0:
        text = format(0.0, fmt.replace("+", ""))
    return text


def class_colours(n: int) -> list:
    """Qualitative colours for n unordered classes."""
    from matplotlib import colormaps

    cmap = colormaps[CLASS_COLOURS if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def dodge(n: int, width: float = 0.6) -> np.ndarray:
    """x offsets for n series side by side around a category."""
    if n <= 1:
        return np.zeros(max(n, 1))
    return np.linspace(-width / 2, width / 2, n)
