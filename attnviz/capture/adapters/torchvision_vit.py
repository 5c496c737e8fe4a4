"""torchvision ViT (``vit_b_16`` ... ``vit_h_14``): the ``nn.MultiheadAttention`` of each
``EncoderBlock``.

The block calls ``self_attention(x, x, x, need_weights=False)`` on ``x = ln_1(input)``, so
the weights are never returned (and in eval under ``no_grad`` torch runs its fused native
kernel). The adapter taps ``ln_1`` and computes them as ``F.multi_head_attention_forward``
does: ``[q, k, v] = x W_in^T + b_in``, per head ``softmax(q k^T / sqrt(d))`` (Vaswani et al.
2017, eq. 1; the block passes no mask). The forward is not touched (taps only), so the output
is the same bit for bit.

Kind ``token``, (B, heads, Nq, Nk): the class token first, then the patch grid in raster
order (``cache.meta[name]``: ``prefix_tokens``, ``prefix_names``, ``query_grid``, ``key_grid``).
``queries=[(y, x), ...]`` computes those patch rows only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Computed, Reading, register_adapter, site_context


def _context(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    """The patch grid and class token of the enclosing torchvision VisionTransformer."""
    for owner in reversed(ancestors):
        if hasattr(owner, "image_size") and hasattr(owner, "patch_size"):
            side = int(owner.image_size) // int(owner.patch_size)
            n_prefix = 1 if getattr(owner, "class_token", None) is not None else 0
            return {"prefix_tokens": n_prefix, "patch_grid": (side, side)}
    return {}


def _layout(module: nn.Module, n_tokens: int) -> tuple[int, tuple[int, int]]:
    ctx = site_context(module)
    n_prefix = int(ctx.get("prefix_tokens", 0))
    grid = ctx.get("patch_grid")
    if grid is None or grid[0] * grid[1] != n_tokens - n_prefix:
        side = math.isqrt(n_tokens - n_prefix)
        exact = side * side == n_tokens - n_prefix
        grid = (side, side) if exact else (1, n_tokens - n_prefix)
    return n_prefix, grid


def _query_grid(module: nn.Module, inputs: tuple) -> tuple[int, int]:
    return _layout(module, int(inputs[0].shape[1]))[1]


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    mha = m.self_attention
    if not (mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn):
        raise RuntimeError("this EncoderBlock's MultiheadAttention is not torchvision's plain one")
    x = taps["ln_1"]  # (B, N, E): query, key and value of the call
    b, n, e = x.shape
    heads = mha.num_heads
    d = e // heads
    n_prefix, grid = _layout(m, n)
    token_rows = None if rows is None else rows + n_prefix
    w_q, w_k = mha.in_proj_weight[:e], mha.in_proj_weight[e : 2 * e]
    bias = mha.in_proj_bias
    b_q, b_k = (None, None) if bias is None else (bias[:e], bias[e : 2 * e])
    xq = x if token_rows is None else x.index_select(1, token_rows.to(x.device))
    q = F.linear(xq, w_q, b_q).view(b, -1, heads, d).transpose(1, 2)
    k = F.linear(x, w_k, b_k).view(b, n, heads, d).transpose(1, 2)
    attn = ((q * math.sqrt(1.0 / float(d))) @ k.transpose(-2, -1)).softmax(dim=-1)
    meta = {
        "prefix_tokens": n_prefix,
        "prefix_names": ["class"] * n_prefix,
        "query_grid": grid,
        "key_grid": grid,
    }
    return Reading(attn, meta, rows_selected=rows is not None, query_rows=token_rows)


register_adapter(
    "torchvision.models.vision_transformer.EncoderBlock",
    kind="token",
    read=Computed(taps=("ln_1",), compute=_attention),
    family="torchvision",
    write="torchvision's ViT calls MultiheadAttention with need_weights=False: its weights "
    "are recomputed from the block's ln_1 output, not a tensor the block uses",
    query_grid=_query_grid,
    context=_context,
    describe=lambda m: {"heads": int(m.self_attention.num_heads)},
)
