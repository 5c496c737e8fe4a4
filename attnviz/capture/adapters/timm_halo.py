"""timm ``HaloAttn`` (halonet26t, sehalonet33ts, eca_halonext26ts, haloregnetz_b, halo2botnet,
lamhalobotnet).

HaloAttn splits the feature map into blocks of ``block_size`` x ``block_size`` queries; each
block attends to the keys of its haloed window (``win = block_size + 2 * halo_size`` per side,
zero-padded outside the map), softmax over the window, computed functionally as
(B * heads, blocks, queries per block, win * win). The adapter records the output of that
softmax call as the module runs (``Intercepted``: the module's own tensor) and reorders it to

    (B, heads, Nq, K): one row per query position, in raster order of the query grid
    (H / s, W / s) where s is the query stride; K = win * win window slots in raster order.

``cache.meta[name]`` holds ``query_grid``, ``key_grid`` (H, W), ``window`` (win, win),
``block_size``, ``halo_size``, ``query_stride`` and ``key_index``, an (Nq, K) LongTensor with
the flat key-grid position (``y * W + x``) of every window slot of every query, -1 for padding
slots (they hold zero keys and values but still receive weight). ``attnviz.capture.
window_to_grid`` scatters rows onto the key grid to draw a query's map on the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter


@lru_cache(maxsize=64)
def key_index(h: int, w: int, block_size: int, block_size_ds: int, halo: int) -> Tensor:
    """(Nq, win * win) flat key positions of each query's window slots, -1 for padding."""
    win = block_size + 2 * halo
    hq, wq = (h // block_size) * block_size_ds, (w // block_size) * block_size_ds
    qy = torch.arange(hq).repeat_interleave(wq)
    qx = torch.arange(wq).repeat(hq)
    top = (qy // block_size_ds) * block_size - halo  # window origin on the key grid
    left = (qx // block_size_ds) * block_size - halo
    wy = torch.arange(win).repeat_interleave(win)
    wx = torch.arange(win).repeat(win)
    ky = top[:, None] + wy[None, :]
    kx = left[:, None] + wx[None, :]
    inside = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
    idx = torch.where(inside, ky * w + kx, torch.full_like(ky, -1))
    idx.requires_grad_(False)
    return idx


def _query_grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    h, w = inputs[0].shape[-2:]
    return int(h) // m.block_stride, int(w) // m.block_stride


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps["softmax()"]
    if len(calls) != 1:
        raise RuntimeError(f"HaloAttn called softmax {len(calls)} times; expected once")
    attn = calls[0]  # (B * heads, blocks, bsd * bsd, win * win), the module's own tensor
    b, _, h, w = inputs[0].shape
    nhb, nwb = h // m.block_size, w // m.block_size
    bsd = m.block_size_ds
    n_slots = attn.shape[-1]
    attn = attn.view(b, m.num_heads, nhb, nwb, bsd, bsd, n_slots).permute(0, 1, 2, 4, 3, 5, 6)
    attn = attn.reshape(b, m.num_heads, nhb * bsd * nwb * bsd, n_slots)
    meta = {
        "query_grid": (nhb * bsd, nwb * bsd),
        "key_grid": (int(h), int(w)),
        "window": (m.win_size, m.win_size),
        "block_size": int(m.block_size),
        "halo_size": int(m.halo_size),
        "query_stride": int(m.block_stride),
        "key_index": key_index(int(h), int(w), m.block_size, bsd, m.halo_size),
    }
    return Reading(attn, meta)


register_adapter(
    "timm.layers.halo_attn.HaloAttn",
    kind="halo",
    read=Intercepted(functions=("softmax",), compute=_attention),
    write="its windows are reordered per query on reading, not a reshape of the module's tensor",
    family="timm",
    query_grid=_query_grid,
    describe=lambda m: {
        "heads": int(m.num_heads),
        "block_size": int(m.block_size),
        "halo_size": int(m.halo_size),
        "window": int(m.win_size),
        "query_stride": int(m.block_stride),
    },
)
