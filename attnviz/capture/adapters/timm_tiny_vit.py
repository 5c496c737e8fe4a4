"""timm TinyViT (``TinyVitBlock`` and its ``Attention``: tiny_vit_5m ... 21m).

TinyViT (Wu et al. 2022, sec. 3.1) attends within ws x ws windows of the (B, H, W, C) map,
padded bottom/right to whole windows (no shift), with LeViT's attention bias B per head indexed
by the offset between two positions: ``softmax(q k^T / sqrt(d) + B)``. Fused
(``scaled_dot_product_attention`` with B as its mask, whose weights are recomputed from the
call's own q, k and B) or not (the module's ``softmax`` output). The attention module sees
windows only, so the site is the block.

Kind ``window``, (B, heads, H * W, K): one row per image position, K = ws * ws slots of its
window; ``cache.meta[name]``: ``query_grid`` / ``key_grid`` (H, W), ``window``, ``shift``
(0, 0) and ``key_index`` (H * W, K) (``timm_swin.window_layout``; -1 for padding slots).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa
from .timm_swin import _per_window, window_layout


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[1]), int(inputs[0].shape[2])


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"TinyVitBlock called its attention {len(calls)} times")
    b = int(inputs[0].shape[0])
    h, w = _grid(m, inputs)
    window = (int(m.window_size),) * 2
    window_id, slot, key_index = window_layout(h, w, window, (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])
    attn = _per_window(attn, b)[:, window_id, slot].permute(0, 2, 1, 3)  # (B, heads, Nq, K)
    meta = {"query_grid": (h, w), "key_grid": (h, w), "window": window, "shift": (0, 0)}
    meta.update(key_index=key_index, path="fused" if FUSED in taps else "softmax")
    return Reading(attn, meta, rows_selected=rows is not None)


register_adapter(
    "timm.models.tiny_vit.TinyVitBlock",
    kind="window",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write="its windows are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=_grid,
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": [int(m.window_size)] * 2,
        "fused": bool(m.attn.fused_attn),
    },
)
