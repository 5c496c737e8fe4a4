"""Figures for the modules the other analyses do not serve: the spatial transformer's sampling
grid (Jaderberg et al. 2015, Fig. 3), residual-attention soft masks (Wang et al. 2017, Fig. 1)
DANet's channel affinity (Fu et al. 2019, Eq. 3) and where Inside-Outside Net's context comes
from (Bell et al. 2016, Fig. 4).

Each function takes captured tensors (``attnviz.capture``; e.g. ``cache[site]``,
``cache.inputs(site)``, ``cache.outputs(site)``) and returns a matplotlib Figure; nothing here
runs a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from ._style import SEQUENTIAL, colorbar, draw_overlay, new_axes, new_figure, shared_norm
from .overlay import to_rgb_uint8


def _numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().cpu()
        t = (t if t.dtype == torch.uint8 else t.float()).numpy()
    return np.asarray(t)


def _display(arr: np.ndarray) -> np.ndarray:
    """HxWxC float/uint8 -> HxWx3 uint8; floats outside [0, 1] are min-max scaled; a map with
    other than 1 or 3 channels (a feature map) is shown as its channel mean, in grey."""
    if arr.shape[2] not in (1, 3):
        arr = arr.mean(axis=2, keepdims=True)
    if arr.dtype != np.uint8:
        a = arr.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        arr = np.round(a * 255.0).astype(np.uint8)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return to_rgb_uint8(arr)


def display_images(images: Any) -> list[np.ndarray]:
    """Images as a list of HxWx3 uint8 arrays.

    Accepts a list of PIL images / HxWx3 arrays, or a batch (B, C, H, W) tensor or array (model
    inputs or feature maps, min-max scaled when outside [0, 1]; C other than 1 or 3 is shown as
    the channel mean), a (B, H, W, 3) array, or a single (C, H, W) / HxWx3 image.
    """
    if isinstance(images, Image.Image):
        return [to_rgb_uint8(images)]
    if isinstance(images, (list, tuple)):
        out = []
        for im in images:
            if isinstance(im, Image.Image):
                out.append(to_rgb_uint8(im))
            else:
                out.extend(display_images(im))
        return out
    arr = _numpy(images)
    if arr.ndim == 2:
        return [_display(arr[:, :, None])]
    if arr.ndim == 3:
        if arr.shape[2] in (1, 3) and arr.shape[0] not in (1, 3):
            return [_display(arr)]
        arr = arr[None]
    if arr.ndim != 4:
        raise ValueError(f"expected images (B, C, H, W), (C, H, W) or HxWx3, got {arr.shape}")
    if arr.shape[-1] in (1, 3) and arr.shape[1] not in (1, 3):  # (B, H, W, 3) arrays
        return [_display(a) for a in arr]
    return [_display(a.transpose(1, 2, 0)) for a in arr]


# -- spatial transformer ---------------------------------------------------------------------------
def grid_to_pixels(
    grid: Any, size: tuple[int, int], align_corners: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (u, v) of a sampling grid (H', W', 2) of normalised (x, y) in [-1, 1],
    for an input of ``size`` = (H, W), in the convention of ``grid_sample`` (pixel k centred at
    k): u = ((x + 1) W - 1) / 2, or (x + 1) (W - 1) / 2 with ``align_corners``."""
    g = _numpy(grid).astype(np.float64)
    if g.ndim != 3 or g.shape[-1] != 2:
        raise ValueError(f"expected a grid (H', W', 2), got shape {g.shape}")
    h, w = size
    if align_corners:
        return (g[..., 0] + 1) * (w - 1) / 2, (g[..., 1] + 1) * (h - 1) / 2
    return ((g[..., 0] + 1) * w - 1) / 2, ((g[..., 1] + 1) * h - 1) / 2


def _grid_lines(n: int, step: int) -> list[int]:
    lines = list(range(0, n, step))
    if lines[-1] != n - 1:
        lines.append(n - 1)
    return lines


def plot_stn_sampling(
    inputs: Any,
    grid: Any,
    outputs: Any,
    *,
    max_images: int = 4,
    step: int = 4,
    align_corners: bool = False,
    color: str = "yellow",
    model: str = "model",
    fig: Figure | None = None,
) -> Figure:
    """The STN's sampling grid drawn over its input, the transformed output beside it.

    ``inputs`` (B, C, H, W): what the transformer saw (``cache.inputs(stn_site)``); ``grid``
    (B, H', W', 2): the ``stn_grid`` capture; ``outputs`` (B, C, H', W') (``cache.outputs``).
    Every ``step``-th row and column of the grid (and the last) is drawn as a polyline through
    the source pixels its points sample from: one row of panels per image.
    """
    if step < 1:
        raise ValueError("step must be >= 1")
    ins, outs = display_images(inputs), display_images(outputs)
    g = _numpy(grid)
    if g.ndim == 3:
        g = g[None]
    n = min(len(ins), len(outs), g.shape[0], max_images)
    if n < 1:
        raise ValueError("no images to plot")
    fig = new_figure((6.0, 3.0 * n + 0.6), fig)
    axes = fig.subplots(n, 2, squeeze=False)
    for i in range(n):
        img = ins[i]
        h, w = img.shape[:2]
        u, v = grid_to_pixels(g[i], (h, w), align_corners)
        ax = axes[i, 0]
        ax.imshow(img)
        for r in _grid_lines(u.shape[0], step):
            ax.plot(u[r, :], v[r, :], color=color, lw=0.8)
        for c in _grid_lines(u.shape[1], step):
            ax.plot(u[:, c], v[:, c], color=color, lw=0.8)
        ax.set_xlim(min(-0.5, u.min() - 0.5), max(w - 0.5, u.max() + 0.5))
        ax.set_ylim(max(h - 0.5, v.max() + 0.5), min(-0.5, v.min() - 0.5))
        ax.set_title("input + sampling grid" if i == 0 else "")
        ax.set_axis_off()
        axes[i, 1].imshow(outs[i])
        axes[i, 1].set_title("transformed output" if i == 0 else "")
        axes[i, 1].set_axis_off()
    fig.suptitle(
        f"{model}: spatial transformer sampling grid (Jaderberg et al. Fig. 3)\n"
        f"{n} image{'s' if n != 1 else ''}; every {step}th grid line; no error bars",
        fontsize="medium",
    )
    return fig


# -- residual attention ----------------------------------------------------------------------------
def plot_residual_masks(
    images: Any,
    masks: Any,
    *,
    channels: Sequence[int] = (),
    max_images: int = 4,
    alpha: float = 0.55,
    colormap: str = SEQUENTIAL,
    vmin: float | None = None,
    vmax: float | None = None,
    model: str = "model",
    fig: Figure | None = None,
) -> Figure:
    """Residual-attention soft masks M (Wang et al. 2017, Eq. 3) as overlays on the images.

    ``masks``: a ``ram`` capture (B, C, H, W), or its per-position summary (B, H, W)
    (``capture(..., reduce="channel_mean")``). Columns: the image, the mean of M over channels,
    then M of each channel in ``channels``. Each map is upsampled to the image; all panels share
    one colour scale (the joint min to max unless ``vmin`` / ``vmax`` are given) and one bar.
    """
    imgs = display_images(images)
    m = _numpy(masks).astype(np.float64)
    if m.ndim == 3:
        if channels:
            raise ValueError("channels need (B, C, H, W) masks; got a (B, H, W) summary")
        m = m[:, None]
    if m.ndim != 4:
        raise ValueError(f"expected masks (B, C, H, W) or (B, H, W), got shape {m.shape}")
    for c in channels:
        if not 0 <= c < m.shape[1]:
            raise ValueError(f"channel {c} out of range for {m.shape[1]} mask channels")
    n = min(len(imgs), m.shape[0], max_images)
    if n < 1:
        raise ValueError("no images to plot")
    ncols = 2 + len(channels)
    fig = new_figure((2.3 * ncols + 1.0, 2.3 * n + 0.9), fig)
    axes = fig.subplots(n, ncols, squeeze=False)
    per_image = [
        [("mean over channels", m[i].mean(axis=0))] + [(f"channel {c}", m[i, c]) for c in channels]
        for i in range(n)
    ]
    norm = shared_norm((mp for maps in per_image for _, mp in maps), vmin, vmax)
    im = None
    for i in range(n):
        axes[i, 0].imshow(imgs[i])
        for k, (label, mp) in enumerate(per_image[i], start=1):
            im = draw_overlay(axes[i, k], imgs[i], mp, norm, cmap=colormap, alpha=alpha)
            if i == 0:
                axes[i, k].set_title(label, fontsize="small")
        if i == 0:
            axes[i, 0].set_title("image", fontsize="small")
        for ax in axes[i]:
            ax.set_axis_off()
    colorbar(fig, im, axes, label="soft mask M", shrink=0.85)
    fig.suptitle(
        f"{model}: residual-attention soft masks (Wang et al. 2017, Eq. 3)\n"
        f"{n} image{'s' if n != 1 else ''}; one colour scale for all panels",
        fontsize="medium",
    )
    return fig


# -- DANet channel attention -----------------------------------------------------------------------
def plot_channel_affinity(
    affinity: Any,
    *,
    image: int | None = None,
    cmap: str = SEQUENTIAL,
    title: str | None = None,
    model: str = "model",
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of DANet's channel attention x_ji (Fu et al. 2019, Eq. 3): row j = output channel,
    column i = source channel; each row sums to 1.

    ``affinity``: a ``cam`` capture (B, C, C) or one (C, C) map. ``image`` picks one
    image of the batch; by default the mean over the batch is shown.
    """
    a = _numpy(affinity).astype(np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise ValueError(f"expected a (B, C, C) or (C, C) channel affinity, got {a.shape}")
    if image is None:
        mat, what = a.mean(axis=0), f"mean over {a.shape[0]} image(s)"
    else:
        if not -a.shape[0] <= image < a.shape[0]:
            raise ValueError(f"image {image} out of range for a batch of {a.shape[0]}")
        mat, what = a[image], f"image {image}"
    fig, ax = new_axes(ax, (5.2, 4.6))
    im = ax.imshow(mat, cmap=cmap, interpolation="nearest")
    colorbar(fig, im, ax, label="attention x_ji")
    ax.set_xlabel("source channel i")
    ax.set_ylabel("output channel j")
    ax.set_title(
        title or f"{model}: DANet channel attention (Fu et al. Eq. 3)\n{what}; no error bars",
        fontsize="medium",
    )
    return fig


# -- Inside-Outside Net context --------------------------------------------------------------------
#: Colours of ION's four directions (Okabe-Ito: distinguishable with colour-vision deficiency).
DIRECTION_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7")
_DIRECTION_LABELS = ("from the left", "from the right", "from above", "from below")


def plot_direction_context(
    images: Any,
    shares: Any,
    *,
    max_images: int = 4,
    alpha: float = 0.85,
    colormap: str = SEQUENTIAL,
    model: str = "model",
    site: str = "ION",
    fig: Figure | None = None,
) -> Figure:
    """Which direction's context is used where: ION's direction shares (kind ``ion``,
    (B, 4, H, W), ``cache[site]``) over the images.

    Columns: the image; the direction with the largest share at each pixel (the four share
    maps upsampled to the image, then argmax; one colour per direction, see the legend); the
    share of each direction, all panels on one colour scale from 0 to the largest share shown
    (0.25 = an equal split; the bar's ticks say where 0.25 lies).
    The shares are a decomposition of the context the block adds, not a gate (see
    :class:`attnviz.blocks.IONContext`).
    """
    from matplotlib.colors import BoundaryNorm, ListedColormap, Normalize
    from matplotlib.patches import Patch

    from .overlay import upsample

    imgs = display_images(images)
    s = _numpy(shares).astype(np.float64)
    if s.ndim == 3:
        s = s[None]
    if s.ndim != 4 or s.shape[1] != 4:
        raise ValueError(f"expected direction shares (B, 4, H, W), got shape {s.shape}")
    n = min(len(imgs), s.shape[0], max_images)
    if n < 1:
        raise ValueError("no images to plot")
    fig = new_figure((2.3 * 6 + 1.2, 2.3 * n + 1.1), fig)
    axes = fig.subplots(n, 6, squeeze=False)
    top = float(np.ceil(s[:n].max() * 20.0) / 20.0) or 1.0
    norm = Normalize(0.0, max(top, 0.3))
    cats = ListedColormap(DIRECTION_COLOURS)
    im = None
    for i in range(n):
        img = imgs[i]
        axes[i, 0].imshow(img)
        up = np.stack([upsample(s[i, d], img.shape[:2]) for d in range(4)])
        grey = to_rgb_uint8(img).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        axes[i, 1].imshow(grey, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axes[i, 1].imshow(up.argmax(axis=0), cmap=cats, norm=BoundaryNorm(np.arange(5) - 0.5, 4),
                          alpha=alpha, interpolation="nearest")  # fmt: skip
        for d in range(4):
            im = draw_overlay(axes[i, 2 + d], img, s[i, d], norm, cmap=colormap, alpha=alpha)
        if i == 0:
            titles = ("image", "largest share", *_DIRECTION_LABELS)
            for ax, title in zip(axes[0], titles):
                ax.set_title(title, fontsize="small")
        for ax in axes[i]:
            ax.set_axis_off()
    bar = colorbar(fig, im, axes[:, 2:], label="share of the context", shrink=0.85)
    bar.ax.axhline(0.25, color="white", lw=1.0)  # an equal split
    handles = [Patch(color=c, label=lab) for c, lab in zip(DIRECTION_COLOURS, _DIRECTION_LABELS)]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize="small",
               frameon=False, title="largest share")  # fmt: skip
    fig.suptitle(
        f"{model}: where {site}'s context comes from (Inside-Outside Net, Bell et al. 2016)\n"
        f"{n} image{'s' if n != 1 else ''}; share ||t_d|| / sum ||t_d'|| of each sweep "
        "direction; not a gate",
        fontsize="medium",
    )
    return fig


__all__ = [
    "DIRECTION_COLOURS",
    "display_images",
    "grid_to_pixels",
    "plot_channel_affinity",
    "plot_direction_context",
    "plot_residual_masks",
    "plot_stn_sampling",
]
