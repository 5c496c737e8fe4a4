"""timm iFormer (``timm.models.iformer.SHMA``): single-head modulation attention.

SHMA (Zheng 2025, iFormer sec. 3.3) computes one head ``softmax(q^T k / sqrt(d))`` over the
H x W positions of its (B, C, H, W) input and gates the attended values by a sigmoid branch
(the modulation). Fused (``scaled_dot_product_attention``, weights recomputed from the call's
own q and k) or not (the module's ``softmax`` output, (B, N, N), given a head axis of 1). With
``window_size`` > 0 (no timm model builds one) it attends within ws x ws windows of the map
padded bottom/right, laid out like Swin's (``timm_swin.window_layout``, shift 0).

Kind ``token``, (B, 1, H * W, H * W), ``cache.meta[name]``: ``prefix_tokens`` 0,
``query_grid`` = ``key_grid`` = (H, W), ``path``; windowed: kind ``window``, (B, 1, H * W, K)
with ``key_index`` (H * W, K).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, Written, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax
from .timm_swin import _per_window, window_layout


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[2]), int(inputs[0].shape[3])


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"SHMA called its attention {len(calls)} times; expected once")
    grid = _grid(m, inputs)
    meta = {"query_grid": grid, "key_grid": grid, "path": "fused" if FUSED in taps else "softmax"}
    if SOFTMAX in taps:
        attn = calls[0].output.unsqueeze(1)  # (B', 1, N, N): one head
    else:
        attn = sdpa_weights(calls[0], None if m.window_size else rows)
    if not m.window_size:
        meta.update(prefix_tokens=0, prefix_names=[])
        return Reading(attn, meta, rows_selected=FUSED in taps and rows is not None)
    window = (int(m.window_size),) * 2
    window_id, slot, key_index = window_layout(*grid, window, (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = _per_window(attn, int(inputs[0].shape[0]))[:, window_id, slot].permute(0, 2, 1, 3)
    meta.update(window=window, shift=(0, 0), key_index=key_index)
    return Reading(attn, meta, rows_selected=rows is not None)


def _write(m: nn.Module) -> Written | str:
    if m.window_size:
        return "its windows are reordered per image position on reading, not a reshape"
    return write_softmax(m, view=lambda module, raw, inputs: raw.unsqueeze(1))


register_adapter(
    "timm.models.iformer.SHMA",
    kind=lambda m: "window" if m.window_size else "token",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write=_write,
    query_grid=_grid,
    describe=lambda m: {
        "heads": 1,
        "window": int(m.window_size or 0),
        "fused": bool(m.fused_attn),
    },
)
