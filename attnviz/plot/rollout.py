"""Figure of attention rollout (Abnar & Zuidema 2020): a token's rollout over the patch grid
beside the image.

Nothing here runs a model: the input is a :class:`~attnviz.analysis.rollout.RolloutResult`.
The caption states the method's caveats (residual mixing of 0.5 assumed, MLPs and value norms
ignored, not a faithful attribution: Jain & Wallace 2019; Abnar & Zuidema 2020, Sec. 5).
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from matplotlib.figure import Figure

from ._style import (
    OVERLAY_ALPHA,
    SEQUENTIAL,
    caption,
    colorbar,
    draw_overlay,
    new_figure,
    shared_norm,
)

if TYPE_CHECKING:
    from ..analysis.rollout import RolloutResult

__all__ = ["ROLLOUT_CAVEAT", "plot_rollout"]

ROLLOUT_CAVEAT = (
    "assumes residual mixing of 0.5 and ignores the MLPs and the values' norms: a flow of "
    "attention weights, not a faithful attribution (Abnar & Zuidema 2020; Jain & Wallace 2019)"
)


def plot_rollout(
    result: RolloutResult,
    *,
    token: str | int = 0,
    images: int | None = None,
    alpha: float = OVERLAY_ALPHA,
    colormap: str = SEQUENTIAL,
    panel_size: float = 2.2,
    model: str | None = None,
    fig: Figure | None = None,
) -> Figure:
    """One row per kept image: the image (``ax.images[0]``), the rollout row of ``token``
    (default the first, the class token when the model has one; or "patch mean") on the key
    patch grid (``ax.images[0]`` holds the kh x kw array), and that map over the image
    (``ax.images[1]``). All maps share one colour scale and one colour bar; the values are
    rollout weights on patch inputs (the rest of the row, ``prefix_mass``, sits on prefix
    inputs and is printed in the row label)."""
    t = result.token_index(token)
    n = len(result.images) if images is None else min(int(images), len(result.images))
    if n < 1:
        raise ValueError("the rollout result keeps no images for a figure (map_images=0)")
    maps = [result.maps[i, t] for i in range(n)]
    norm = shared_norm(maps)
    fig = new_figure((panel_size * 3 + 1.4, panel_size * n + 1.6), fig)
    axes = fig.subplots(n, 3, squeeze=False)
    im = None
    kh, kw = maps[0].shape
    for i in range(n):
        a_img, a_grid, a_over = axes[i]
        a_img.imshow(result.images[i], interpolation="nearest")
        ident = result.ids[i] if i < len(result.ids) else f"image {i + 1}"
        a_img.set_ylabel(f"{ident}\nprefix mass {result.prefix_mass[i, t]:.3f}", fontsize="small")
        im = a_grid.imshow(maps[i], cmap=colormap, norm=norm, interpolation="nearest")
        draw_overlay(a_over, result.images[i], maps[i], norm, cmap=colormap, alpha=alpha)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
        if i == 0:
            a_img.set_title("image (model input)", fontsize="small")
            a_grid.set_title(f"rollout, {kh}x{kw} patch grid", fontsize="small")
            a_over.set_title("rollout over the image", fontsize="small")
    colorbar(fig, im, axes, label="rollout weight on a patch input", shrink=0.85)
    aliases = [s["alias"] for s in result.sites]
    layers = f"{aliases[0]} ... {aliases[-1]}" if len(aliases) > 1 else "".join(aliases)
    name = result.tokens[t]
    detail = (
        f"A~ = {result.residual:g} I + {1 - result.residual:g} mean over heads, rows "
        f"renormalised; {n} image{'s' if n != 1 else ''}; caveat: {ROLLOUT_CAVEAT}"
    )
    caption(
        fig,
        model or result.meta.get("model") or result.model,
        f"attention rollout of the {name} token over {len(aliases)} layers ({layers})",
        textwrap.fill(detail, width=max(60, int(panel_size * 3 * 14))),
        "no error bars (one image per row)",
    )
    return fig
