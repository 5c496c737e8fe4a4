"""timm EfficientViT (MSRA) (``timm.models.efficientvit_msra``: efficientvit_m0 ... m5).

Cascaded group attention (Liu et al. 2023, eq. 1-2): head j attends over its own channel split,
added to head j - 1's output (the cascade), within ws x ws windows cut by
``LocalWindowAttention`` (the map padded bottom/right to whole windows, no shift):
``softmax(q k^T / sqrt(d) + B_j)``, q after a depthwise conv, B_j a learned bias per head
indexed by the absolute offset between query and key (as LeViT). ``CascadedGroupAttention``
calls ``softmax`` once per head, sequentially; it only sees windows, so the site is its
``LocalWindowAttention``, which knows where they lie on the map. The softmax outputs are
recorded as the module made them.

Kind ``window``, (B, heads, H * W, K): one row per map position in raster order, K = ws * ws
slots of its window (padding slots included: they are keys of the softmax);
``cache.meta[name]``: ``query_grid`` = ``key_grid`` (H, W), ``window`` (ws, ws), ``shift``
(0, 0), ``key_index`` (H * W, K) (``timm_swin.window_layout``, -1 for padding slots).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import SOFTMAX
from .timm_swin import window_layout


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]  # one per head, each (B * windows, K, K)
    heads = len(m.attn.qkvs)
    if len(calls) != heads:
        raise RuntimeError(f"CascadedGroupAttention called softmax {len(calls)} times, not {heads}")
    b, _, h, w = inputs[0].shape
    ws = int(m.attn.resolution)
    window_id, slot, key_index = window_layout(h, w, (ws, ws), (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = torch.stack(calls, dim=1)  # (B * windows, heads, K, K)
    attn = attn.reshape(b, -1, *attn.shape[1:])  # (B, windows, heads, K, K)
    attn = attn.transpose(2, 3)[:, window_id, slot].permute(0, 2, 1, 3)  # (B, heads, Nq, K)
    meta = {"query_grid": (h, w), "key_grid": (h, w), "window": (ws, ws), "shift": (0, 0)}
    meta["key_index"] = key_index
    return Reading(attn, meta, rows_selected=rows is not None)


register_adapter(
    "timm.models.efficientvit_msra.LocalWindowAttention",
    kind="window",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    write="one softmax per head (cascaded), and its windows are reordered per map position on "
    "reading, not a reshape of one module tensor",
    query_grid=lambda m, inputs: (int(inputs[0].shape[-2]), int(inputs[0].shape[-1])),
    describe=lambda m: {"heads": len(m.attn.qkvs), "window": [int(m.attn.resolution)] * 2},
)
