"""timm Swin (``SwinTransformerBlock`` and its ``WindowAttention``: swin_tiny ... swin_large).

Swin (Liu et al. 2021, eq. 4) attends within ws x ws windows: ``softmax(q k^T / sqrt(d) + B)``
with the learned relative-position bias B, plus, in shifted blocks, the -100 mask that keeps
tokens of different image regions apart after the cyclic shift. ``WindowAttention`` only sees
windows (B * windows, N, C); where they lie on the image is known to its block (cyclic shift,
padding to whole windows), so the site is the block. The adapter records the weights as the
module makes them: the output of ``WindowAttention``'s softmax, or, when ``fused_attn`` is
True, the weights of its ``scaled_dot_product_attention`` call computed from the call's own q,
k and bias + mask (the call's output is returned unchanged).

Kind ``window``, (B, heads, Nq, K): one row per position of the block's H x W input in raster
order, K = ws * ws slots of its window in raster order. ``cache.meta[name]``: ``query_grid``
and ``key_grid`` (H, W), ``window``, ``shift`` and ``key_index`` (Nq, K), the flat image
position (``y * W + x``) of each slot (the shift undone; -1 for padding slots).
``attnviz.capture.window_to_grid`` draws a row on the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Reading, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_arguments, sdpa_weights, softmax_or_sdpa


@lru_cache(maxsize=64)
def window_layout(
    h: int, w: int, window: tuple[int, int], shift: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(window id (Nq,), slot (Nq,), key_index (Nq, K)) of each image position's query.

    The block rolls the map by -shift, pads it to whole windows (bottom/right) and cuts
    windows in raster order; slot (py, px) of window (wy, wx) holds the rolled position
    (wy * ws_h + py, wx * ws_w + px), i.e. image position ((i + shift_h) % H, ...).
    """
    wh, ww = window
    n_wx = -(-w // ww)  # windows per row (the map is padded to whole windows)
    y = torch.arange(h).repeat_interleave(w)
    x = torch.arange(w).repeat(h)
    i, j = (y - shift[0]) % h, (x - shift[1]) % w  # where each position sits after the roll
    window_id = (i // wh) * n_wx + j // ww
    slot = (i % wh) * ww + j % ww
    ky = (i // wh * wh)[:, None] + torch.arange(wh).repeat_interleave(ww)[None, :]
    kx = (j // ww * ww)[:, None] + torch.arange(ww).repeat(wh)[None, :]
    inside = (ky < h) & (kx < w)
    key_index = torch.where(inside, (ky + shift[0]) % h * w + (kx + shift[1]) % w, -1)
    return window_id, slot, key_index


def _per_window(t: Tensor, b: int) -> Tensor:
    """(B * windows, heads, N, X) -> (B, windows, N, heads, X) (a view)."""
    return t.reshape(b, -1, *t.shape[1:]).permute(0, 1, 3, 2, 4)


def _rows_of_call(call: Any, b: int, window_id: Tensor, slot: Tensor) -> Tensor:
    """(B, Nq, heads, K): the fused call's weights of the query slots asked for only."""
    a = sdpa_arguments(call)
    q = _per_window(a["query"], b)[:, window_id, slot].unsqueeze(-2)  # (B, Nq, heads, 1, d)
    k = a["key"].reshape(b, -1, *a["key"].shape[1:])[:, window_id]  # (B, Nq, heads, K, d)
    mask = a["attn_mask"]
    if mask is not None:  # (B * windows | 1, heads, N, K): bias (+ shift mask)
        if mask.shape[0] == 1:
            mask = _per_window(mask, 1)[:, torch.zeros_like(window_id), slot]
        else:
            mask = _per_window(mask, b)[:, window_id, slot]
        mask = mask.unsqueeze(-2)
    a.update(query=q, key=k, attn_mask=mask)
    return sdpa_weights(a).squeeze(-2)


def _query_grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[1]), int(inputs[0].shape[2])


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    b, h, w = (int(s) for s in inputs[0].shape[:3])
    window = tuple(int(s) for s in m.window_size)
    shift = tuple(int(s) for s in m.shift_size)
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"Swin block called its attention {len(calls)} times; expected once")
    window_id, slot, key_index = window_layout(h, w, window, shift)
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    if FUSED in taps and rows is not None:  # only the rows asked for are computed
        attn = _rows_of_call(calls[0], b, window_id, slot)
    else:  # (B * windows, heads, N, K): the module's own weights, or the fused call's
        attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])
        attn = _per_window(attn, b)[:, window_id, slot]  # (B, Nq, heads, K)
    attn = attn.permute(0, 2, 1, 3)  # (B, heads, Nq, K)
    meta = {
        "query_grid": (h, w),
        "key_grid": (h, w),
        "window": window,
        "shift": shift,
        "key_index": key_index,
    }
    return Reading(attn, meta, rows_selected=rows is not None)


register_adapter(
    "timm.models.swin_transformer.SwinTransformerBlock",
    kind="window",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write="its windows are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=_query_grid,
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": [int(s) for s in m.window_size],
        "shift": [int(s) for s in m.shift_size],
        "fused": bool(m.attn.fused_attn),
    },
)
