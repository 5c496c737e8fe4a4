"""timm NesT (``timm.models.nest.Attention``): self-attention within image blocks.

NesT (Zhang et al. 2022, sec. 3, eq. 1) cuts the (square) map into T blocks of b x b positions
(``blockify``: blocks and their positions in raster order) and applies
``softmax(q k^T / sqrt(d))`` within each block independently, on (B, T, N, C) tokens.
Fused (``scaled_dot_product_attention`` on (B, heads, T, N, d), whose weights are recomputed from
the call's own q and k) or not (the module's ``softmax`` output). The module's input holds the
whole layout (T blocks on a sqrt(T) x sqrt(T) grid, as ``deblockify`` assumes; N = b^2), so the
site is the module.

Kind ``window``, (B, heads, H * W, K), H = W = sqrt(T) * b: one row per image position, K = b^2
slots of its block; ``cache.meta[name]``: ``query_grid`` / ``key_grid``, ``window`` (b, b),
``shift`` (0, 0), ``key_index`` (H * W, K) (``timm_swin.window_layout``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa
from .timm_swin import window_layout


def _layout(inputs: tuple) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W), (b, b)) of (B, T, N, C) block tokens."""
    _, t, n, _ = inputs[0].shape
    side, block = math.isqrt(int(t)), math.isqrt(int(n))
    return (side * block, side * block), (block, block)


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"NesT Attention called its attention {len(calls)} times")
    grid, window = _layout(inputs)
    block_id, slot, key_index = window_layout(*grid, window, (0, 0))
    if rows is not None:
        block_id, slot = block_id[rows], slot[rows]
    attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])  # (B, heads, T, N, N)
    attn = attn.permute(0, 2, 3, 1, 4)[:, block_id, slot]  # (B, Nq, heads, K)
    meta = {"query_grid": grid, "key_grid": grid, "window": window, "shift": (0, 0)}
    meta.update(key_index=key_index, path="fused" if FUSED in taps else "softmax")
    return Reading(attn.permute(0, 2, 1, 3), meta, rows_selected=rows is not None)


register_adapter(
    "timm.models.nest.Attention",
    kind="window",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write="its blocks are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=lambda m, inputs: _layout(inputs)[0],
    describe=lambda m: {"heads": int(m.num_heads), "fused": bool(m.fused_attn)},
)
