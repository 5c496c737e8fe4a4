"""timm HieraDet, SAM 2's image encoder (``timm.models.hieradet_sam2``: ``MultiScaleBlock`` and
its ``MultiScaleAttention``; sam2_hiera_tiny ... large, hieradet_small).

Hiera as SAM 2 uses it (Ryali et al. 2023; Ravi et al. 2024) on a (B, H, W, C) map: most blocks
attend within ws x ws windows (the map padded bottom/right to whole windows, windows in raster
order), a few over the whole map (``window_size`` 0); the first block of a stage pools its
queries by a ``q_stride`` max-pool, so its queries lie on the (H / s, W / s) grid (each window's
ws x ws keys serve the (ws / s) x (ws / s) queries pooled from them) while its keys stay on
H x W. No position bias: ``softmax(q k^T / sqrt(d))``, fused (``scaled_dot_product_attention``,
weights recomputed from the call's own q and k) or not (the module's ``softmax`` output). The
attention module sees windows only, so the site is the block.

* windowed blocks: kind ``window``, (B, heads, Hq * Wq, K), K = ws * ws key slots of the
  query's window in raster order; ``cache.meta[name]``: ``window`` (key window), ``shift``
  (0, 0), ``key_index`` (Hq * Wq, K) (flat key-grid position ``y * W + x``; -1 for padding
  slots, which hold zero tokens and still get weight); not writable (reordered on reading);
* global blocks: kind ``token``, (B, heads, Hq * Wq, H * W), ``prefix_tokens`` 0; writing
  replaces the softmax output (``attn.fused_attn = False``).

Both: ``query_grid`` (Hq, Wq), ``key_grid`` (H, W), ``path``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Reading, Written, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax
from .timm_swin import _per_window

Grid = tuple[int, int]
_REORDERED = "its windows are reordered per image position on reading, not a reshape"


def _grids(m: nn.Module, inputs: tuple) -> tuple[Grid, Grid]:
    """(query grid, key grid): the block's H x W input, the queries max-pooled by q_stride."""
    h, w = int(inputs[0].shape[1]), int(inputs[0].shape[2])
    if m.q_stride:
        return (h // int(m.q_stride[0]), w // int(m.q_stride[1])), (h, w)
    return (h, w), (h, w)


@lru_cache(maxsize=64)
def pooled_window_layout(
    query_grid: Grid, query_window: Grid, key_grid: Grid, key_window: Grid
) -> tuple[Tensor, Tensor, Tensor]:
    """(window id (Nq,), slot (Nq,), key_index (Nq, K)) of each query position: query (y, x)
    sits in slot (y % wq_h, x % wq_w) of window (y // wq_h, x // wq_w); that window's keys are
    the key_window cells at (wy * ws_h, wx * ws_w) of the key grid (-1 beyond it: padding)."""
    (hq, wq), (qh, qw), (hk, wk), (kh, kw) = query_grid, query_window, key_grid, key_window
    n_wx = -(-wk // kw)  # windows per row of the padded key map
    if -(-wq // qw) != n_wx or -(-hq // qh) != -(-hk // kh):
        raise ValueError(f"query windows {query_grid}/{query_window} do not match the key windows")
    y = torch.arange(hq).repeat_interleave(wq)
    x = torch.arange(wq).repeat(hq)
    window_id = (y // qh) * n_wx + x // qw
    slot = (y % qh) * qw + x % qw
    ky = (y // qh * kh)[:, None] + torch.arange(kh).repeat_interleave(kw)[None, :]
    kx = (x // qw * kw)[:, None] + torch.arange(kw).repeat(kh)[None, :]
    key_index = torch.where((ky < hk) & (kx < wk), ky * wk + kx, -1)
    return window_id, slot, key_index


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"HieraDet block called its attention {len(calls)} times")
    b = int(inputs[0].shape[0])
    query_grid, key_grid = _grids(m, inputs)
    meta = {
        "query_grid": query_grid,
        "key_grid": key_grid,
        "path": "fused" if FUSED in taps else "softmax",
    }
    attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])
    if not m.is_windowed:  # (B, heads, Nq, Nk) over the whole map
        meta.update(prefix_tokens=0, prefix_names=[])
        return Reading(attn, meta)
    key_window = tuple(int(s) for s in m.window_size)
    stride = tuple(int(s) for s in m.q_stride) if m.q_stride else (1, 1)
    query_window = (key_window[0] // stride[0], key_window[1] // stride[1])
    window_id, slot, key_index = pooled_window_layout(
        query_grid, query_window, key_grid, key_window
    )
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = _per_window(attn, b)[:, window_id, slot].permute(0, 2, 1, 3)  # (B, heads, Nq, K)
    meta.update(window=key_window, shift=(0, 0), key_index=key_index)
    return Reading(attn, meta, rows_selected=rows is not None)


def _write(m: nn.Module) -> Written | str:
    if m.is_windowed:
        return _REORDERED
    return write_softmax(m, inner="attn")


register_adapter(
    "timm.models.hieradet_sam2.MultiScaleBlock",
    kind=lambda m: "window" if m.is_windowed else "token",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write=_write,
    query_grid=lambda m, inputs: _grids(m, inputs)[0],
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": [int(s) for s in m.window_size],
        "q_stride": [int(s) for s in m.q_stride] if m.q_stride else [1, 1],
        "fused": bool(m.attn.fused_attn),
    },
)
