"""timm Twins-SVT locally-grouped self-attention (``timm.models.twins.LocallyGroupedAttn``).

Twins (Chu et al. 2021, sec. 3.2, LSA) attends within ws x ws windows of the H x W map (the
module's ``size`` argument), padded bottom/right to whole windows, no shift, no position bias:
``softmax(q k^T / sqrt(d))`` per window. Fused (``scaled_dot_product_attention`` on
(B, windows, heads, K, d), whose weights are recomputed from the call's own q and k) or not
(the module's ``softmax`` output). The module knows the map, so the site is the module itself.
(Twins' global sub-sampled attention ``GlobalSubSampleAttn`` is read by ``timm_vit``.)

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
from .timm_swin import window_layout


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    h, w = inputs[1]
    return int(h), int(w)


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"LocallyGroupedAttn called its attention {len(calls)} times")
    h, w = _grid(m, inputs)
    window = (int(m.ws), int(m.ws))
    window_id, slot, key_index = window_layout(h, w, window, (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])  # (B, win, heads, K, K)
    attn = attn.transpose(2, 3)[:, window_id, slot]  # (B, Nq, heads, K)
    attn = attn.permute(0, 2, 1, 3)  # (B, heads, Nq, K)
    meta = {"query_grid": (h, w), "key_grid": (h, w), "window": window, "shift": (0, 0)}
    meta.update(key_index=key_index, path="fused" if FUSED in taps else "softmax")
    return Reading(attn, meta, rows_selected=rows is not None)


register_adapter(
    "timm.models.twins.LocallyGroupedAttn",
    kind="window",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write="its windows are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=_grid,
    describe=lambda m: {"heads": int(m.num_heads), "window": [int(m.ws)] * 2},
)
