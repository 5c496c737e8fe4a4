"""timm SAM image encoder ViT (``timm.models.vision_transformer_sam``: ``Block`` and its
``Attention``, samvit_*).

SAM's ViT (Kirillov et al. 2023, app. A; ViTDet, Li et al. 2022) attends within ws x ws windows
of the (B, H, W, C) map (padded bottom/right, raster order) in most blocks and over the whole
map in a few (``window_size`` 0): ``softmax(q k^T / sqrt(d) + B)`` with the decomposed
relative-position bias B (``use_rel_pos``) or rotary q, k. The module folds heads into the
batch ((B * windows * heads, N, d)); fused (``scaled_dot_product_attention``, weights
recomputed from the call's own q, k and B) or not (the module's ``softmax`` output). The
attention module sees windows only, so the site is the block.

* windowed blocks: kind ``window``, (B, heads, H * W, K), ``key_index`` (H * W, K) as for Swin
  (``timm_swin.window_layout``, shift 0, -1 for padding slots), ``window``;
* global blocks: kind ``token``, (B, heads, H * W, H * W), ``prefix_tokens`` 0; writing
  replaces the softmax output (``fused_attn = False``).

``cache.meta[name]``: ``query_grid`` / ``key_grid`` (H, W), ``path``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, Written, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax
from .timm_swin import _per_window, window_layout

_REORDERED = "its windows are reordered per image position on reading, not a reshape"


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[1]), int(inputs[0].shape[2])


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"SAM Block called its attention {len(calls)} times; expected once")
    b, heads = int(inputs[0].shape[0]), int(m.attn.num_heads)
    grid = _grid(m, inputs)
    meta = {"query_grid": grid, "key_grid": grid, "path": "fused" if FUSED in taps else "softmax"}
    if not m.window_size:  # the whole map: (B * heads, N, N)
        meta.update(prefix_tokens=0, prefix_names=[])
        if SOFTMAX in taps:
            return Reading(calls[0].output.view(b, heads, *calls[0].output.shape[-2:]), meta)
        attn = sdpa_weights(calls[0], rows)
        return Reading(attn.view(b, heads, *attn.shape[-2:]), meta, rows_selected=rows is not None)
    window = (int(m.window_size),) * 2
    window_id, slot, key_index = window_layout(*grid, window, (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])
    attn = attn.view(-1, heads, *attn.shape[-2:])  # (B * windows, heads, K, K)
    attn = _per_window(attn, b)[:, window_id, slot].permute(0, 2, 1, 3)  # (B, heads, Nq, K)
    meta.update(window=window, shift=(0, 0), key_index=key_index)
    return Reading(attn, meta, rows_selected=rows is not None)


def _write(m: nn.Module) -> Written | str:
    if m.window_size:
        return _REORDERED
    return write_softmax(
        m,
        view=lambda mod, raw, inputs: raw.view(inputs[0].shape[0], -1, *raw.shape[-2:]),
        inner="attn",
    )


register_adapter(
    "timm.models.vision_transformer_sam.Block",
    kind=lambda m: "window" if m.window_size else "token",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write=_write,
    query_grid=_grid,
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": int(m.window_size),
        "fused": bool(m.attn.fused_attn),
    },
)
