"""timm CaiT (``timm.models.cait``): class attention ``ClassAttn`` (CaiT, and XCiT's class
blocks) and talking-heads self-attention ``TalkingHeadAttn``.

* ``ClassAttn`` (Touvron et al. 2021, eq. 3-4): only the class token queries,
  ``softmax(q_cls k^T / sqrt(d))`` over the class token and the patches (fused
  ``scaled_dot_product_attention``, recomputed from the call's own q and k, or the module's
  ``softmax`` output). Kind ``class_token``, (B, heads, Nk); ``cache.meta[name]``:
  ``prefix_tokens`` (the class token), ``prefix_names``, ``key_grid``, ``path``.
* ``TalkingHeadAttn`` (Shazeer et al. 2020, via CaiT sec. 3): logits mixed across heads
  (``proj_l``), softmax, mixed across heads again (``proj_w``); the weights multiplied with v
  are ``proj_w``'s output (rows need not sum to 1), which is read. The CaiT self-attention
  stage holds patches only (the class token joins later). Kind ``talking_heads``,
  (B, heads, N, N), meta as kind ``token`` (``prefix_tokens``, ``query_grid``, ``key_grid``);
  writing replaces ``attn_drop``'s output, the tensor multiplied with v.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Computed, Reading, Written, register_adapter, site_context
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax


def patch_context(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    """The patch grid of the nearest enclosing model whose ``patch_embed`` knows it."""
    for owner in reversed(ancestors):
        grid = getattr(getattr(owner, "patch_embed", None), "grid_size", None)
        if grid is not None:
            return {"patch_grid": tuple(int(g) for g in grid)}
    return {}


def patch_layout(module: nn.Module, n_tokens: int) -> tuple[int, tuple[int, int], list[str]]:
    """(prefix tokens P, patch grid (H, W), prefix names) of a sequence of ``n_tokens``.

    The grid is the model's patch grid, P the tokens before it (0 or the class token); without
    a model grid that fits, the largest square grid the sequence ends with.
    """
    grid = site_context(module).get("patch_grid")
    if grid is None or not 0 <= n_tokens - grid[0] * grid[1] <= 1:
        side = math.isqrt(n_tokens)
        grid = (side, side) if side * side == n_tokens else (math.isqrt(n_tokens - 1),) * 2
    n_prefix = n_tokens - grid[0] * grid[1]
    return n_prefix, (int(grid[0]), int(grid[1])), ["class"] * n_prefix


def class_attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    """The class token's row of a class-attention module (CaiT ``ClassAttn``, VOLO
    ``ClassAttention``, CrossViT ``CrossAttention``), read by :func:`softmax_or_sdpa`."""
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        name = type(m).__name__
        raise RuntimeError(f"{name} called its attention {len(calls)} times; expected once")
    n_prefix, grid, names = patch_layout(m, int(inputs[0].shape[1]))
    if SOFTMAX in taps:
        attn, path = calls[0].output, "softmax"
    else:
        attn, path = sdpa_weights(calls[0]), "fused"
    meta = {"prefix_tokens": n_prefix, "prefix_names": names, "key_grid": grid, "path": path}
    return Reading(attn[:, :, 0], meta)  # (B, heads, 1, Nk): the class token's one row


def class_write(m: nn.Module) -> Written | str:
    """Write the class token's row: its softmax, unless the module runs fused attention."""
    return write_softmax(m, view=lambda module, raw, inputs: raw[:, :, 0])


register_adapter(
    "timm.models.cait.ClassAttn",
    kind="class_token",
    read=softmax_or_sdpa(class_attention),
    family="timm",
    write=class_write,
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads), "fused": bool(m.fused_attn)},
)


def _talking_heads(
    m: nn.Module, taps: Mapping[str, Tensor], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    n_prefix, grid, names = patch_layout(m, int(inputs[0].shape[1]))
    meta = {"prefix_tokens": n_prefix, "prefix_names": names, "query_grid": grid}
    meta["key_grid"] = grid
    attn = taps["proj_w"].permute(0, 3, 1, 2)  # (B, N, N, heads) -> (B, heads, N, N)
    return Reading(attn, meta, query_rows=None if rows is None else rows + n_prefix)


def _talking_grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return patch_layout(m, int(inputs[0].shape[1]))[1]


register_adapter(
    "timm.models.cait.TalkingHeadAttn",
    kind="talking_heads",
    read=Computed(taps=("proj_w",), compute=_talking_heads),
    family="timm",
    write=Written("attn_drop"),
    query_grid=_talking_grid,
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads)},
)
