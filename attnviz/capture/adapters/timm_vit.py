"""timm ``Attention`` (``timm.layers.attention``: ViT, DeiT, and the models built on them) and
EVA's ``EvaAttention`` (q and k carry rotary position embeddings) and BEiT's ``Attention`` (a
relative-position bias added before the softmax): the same two paths; PVT-v2's ``Attention``
and Twins' ``GlobalSubSampleAttn`` too, whose keys lie on a grid reduced by ``sr_ratio``
(``key_grid`` differs from ``query_grid``).

The module computes ``softmax(q k^T / sqrt(d) + mask)`` (Vaswani et al. 2017, eq. 1) over
the token sequence: the model's prefix tokens (class, register, distillation) first, then
the patch grid in raster order. With ``fused_attn`` True (timm's default) it calls
``F.scaled_dot_product_attention``, which never forms the weights: the adapter intercepts that
call and computes the weights from the call's own q, k, mask and scale (the call's output is
returned unchanged). With ``fused_attn`` False it records the module's own ``softmax`` output.

Kind ``token``, (B, heads, Nq, Nk). ``cache.meta[name]``: ``prefix_tokens`` (P),
``prefix_names``, ``query_grid`` / ``key_grid`` (the patch grid; token ``P + y * W + x`` is
patch (y, x)) and ``path`` (``"fused"`` or ``"softmax"``). ``queries=[(y, x), ...]`` keeps
those patch rows (only those rows are computed on the fused path); the prefix tokens' rows
are in the full maps. Writing (``attnviz.intervene``) replaces the softmax, so it needs
``module.fused_attn = False``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, register_adapter, site_context
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax
from .timm_crossvit import branch_context


def _prefix_names(owner: nn.Module, n_prefix: int) -> list[str]:
    names = ["class"] if getattr(owner, "cls_token", None) is not None else []
    if getattr(owner, "dist_token", None) is not None:
        names.append("distillation")
    names += ["register"] * int(getattr(owner, "num_reg_tokens", 0) or 0)
    return names if len(names) == n_prefix else ["prefix"] * n_prefix


def _context(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    """Prefix tokens and patch grid of the nearest enclosing ViT-like model (of the module's
    branch in a CrossViT, whose branches have their own class token and patch grid)."""
    branch = branch_context(ancestors)
    if branch:
        return branch
    for owner in reversed(ancestors):
        patch_embed = getattr(owner, "patch_embed", None)
        if hasattr(owner, "num_prefix_tokens") and patch_embed is not None:
            n_prefix = int(owner.num_prefix_tokens)
            grid = getattr(patch_embed, "grid_size", None)
            return {
                "prefix_tokens": n_prefix,
                "prefix_names": _prefix_names(owner, n_prefix),
                "patch_grid": tuple(int(g) for g in grid) if grid is not None else None,
            }
    return {}


def token_layout(module: nn.Module, n_tokens: int) -> tuple[int, tuple[int, int], list[str]]:
    """(prefix tokens P, patch grid (H, W), prefix names) of a sequence of ``n_tokens``.

    The grid is the model's patch grid when it holds the N - P patches; otherwise (another
    image size with a dynamic-size model) the square grid, or one row if N - P is not square.
    """
    ctx = site_context(module)
    n_prefix = int(ctx.get("prefix_tokens", 0))
    names = list(ctx.get("prefix_names", []))
    n_patch = n_tokens - n_prefix
    grid = ctx.get("patch_grid")
    if grid is None or grid[0] * grid[1] != n_patch:
        side = math.isqrt(n_patch)
        grid = (side, side) if side * side == n_patch else (1, n_patch)
    return n_prefix, (int(grid[0]), int(grid[1])), names


Grid = tuple[int, int]
#: (module, inputs) -> (prefix tokens P, query grid, key grid, prefix names)
Layout = Callable[[nn.Module, tuple], tuple[int, Grid, Grid, list[str]]]


def _vit_layout(module: nn.Module, inputs: tuple) -> tuple[int, Grid, Grid, list[str]]:
    """Queries and keys are the same tokens: the prefix tokens, then the patch grid."""
    n_prefix, grid, names = token_layout(module, int(inputs[0].shape[1]))
    return n_prefix, grid, grid, names


def _reduced_layout(module: nn.Module, inputs: tuple) -> tuple[int, Grid, Grid, list[str]]:
    """PVT-v2 spatial-reduction attention (Wang et al. 2022, eq. 1-2): queries on the H x W map
    (the ``feat_size`` argument), keys and values on the map reduced by the stride-R conv
    ``sr`` (``sr_ratio`` R), or average-pooled to 7 x 7 (the linear variant); no prefix tokens."""
    h, w = (int(s) for s in inputs[1])
    if getattr(module, "pool", None) is not None:
        size = module.pool.output_size
        key = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    elif getattr(module, "sr", None) is not None:
        (kh, kw), (sh, sw), (ph, pw) = module.sr.kernel_size, module.sr.stride, module.sr.padding
        key = ((h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)
    else:
        key = (h, w)
    return 0, (h, w), key, []


def _only(calls: tuple, what: str) -> Any:
    if len(calls) != 1:
        raise RuntimeError(f"timm Attention called {what} {len(calls)} times; expected once")
    return calls[0]


def _attention(
    m: nn.Module,
    taps: Mapping[str, Any],
    inputs: tuple,
    output: Any,
    rows: Tensor | None,
    layout: Layout = _vit_layout,
) -> Reading:
    n_prefix, grid, key_grid, names = layout(m, inputs)
    token_rows = None if rows is None else rows + n_prefix
    meta = {
        "prefix_tokens": n_prefix,
        "prefix_names": names,
        "query_grid": grid,
        "key_grid": key_grid,
    }
    if SOFTMAX in taps:  # non-fused: the module's own weights (B, heads, N, N)
        meta["path"] = "softmax"
        attn = _only(taps[SOFTMAX], "softmax").output
        return Reading(attn, meta, query_rows=token_rows)
    meta["path"] = "fused"
    attn = sdpa_weights(_only(taps[FUSED], "scaled_dot_product_attention"), token_rows)
    return Reading(attn, meta, rows_selected=rows is not None, query_rows=token_rows)


def _describe(m: nn.Module) -> dict:
    return {
        "heads": int(m.num_heads),
        "head_dim": int(getattr(m, "head_dim", 0) or round(m.scale**-2)),
        "fused": bool(m.fused_attn),
    }


def _register(
    module_type: str,
    layout: Layout = _vit_layout,
    context: Callable[[nn.Module, tuple[nn.Module, ...]], dict] = _context,
    describe: Callable[[nn.Module], dict] = _describe,
) -> None:
    """A token adapter for a ViT-like attention class: its softmax or fused call, the token
    ``layout`` (prefix tokens, query and key grids) from the ``context`` found with the sites."""
    register_adapter(
        module_type,
        kind="token",
        read=softmax_or_sdpa(functools.partial(_attention, layout=layout)),
        family="timm",
        write=write_softmax,
        query_grid=lambda m, inputs: layout(m, inputs)[1],
        context=context,
        describe=describe,
    )


for _type in (
    "timm.layers.attention.Attention",  # ViT, DeiT and the models built on them
    "timm.models.eva.EvaAttention",  # EVA / EVA-02: the same two paths, q and k after RoPE
    "timm.models.beit.Attention",  # BEiT: relative-position bias added (the SDPA call's mask)
):
    _register(_type)
_register("timm.models.pvt_v2.Attention", _reduced_layout)  # PVT-v2: keys on a reduced grid
_register("timm.models.twins.GlobalSubSampleAttn", _reduced_layout)  # Twins: the same reduction
