"""torchvision MaxViT (``maxvit_t``): ``PartitionAttentionLayer`` and its
``RelativePositionalMultiHeadAttention``.

MaxViT (Tu et al. 2022, sec. 3.2) attends within partitions of the (H, W) map: ``window``
partitions are p x p blocks of neighbouring positions, ``grid`` partitions are positions spread
p apart (dilated). torchvision cuts the map into p x p blocks (``WindowPartition``, p the
layer's ``p``); a grid layer then swaps the two partition axes, so it attends across blocks.
The attention module computes ``softmax(q (k / sqrt(C)) ^T + B)`` (Vaswani et al. 2017, eq. 1,
with torchvision's scale: the feature width C, not the head width) with the learned relative-
position bias B (Dai et al. 2021, eq. 3), by one functional ``F.softmax``; its output,
(B, partitions, heads, K, K), is recorded as the module made it (``Intercepted``).

The attention module sees partitions only, so the site is the ``PartitionAttentionLayer``
(input (B, C, H, W)). Kind ``window``, (B, heads, H * W, K): one row per image position in
raster order. ``cache.meta[name]``: ``query_grid`` / ``key_grid`` (H, W), ``partition``
(``"window"`` or ``"grid"``), ``window`` (the partition's extent in positions) and
``key_index`` (H * W, K), the image position (``y * W + x``) of each slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from .torchvision_swin import SOFTMAX, padded_window_layout


@lru_cache(maxsize=64)
def grid_layout(h: int, w: int, p: int) -> tuple[Tensor, Tensor, Tensor]:
    """(partition id (HW,), slot (HW,), key_index (HW, K)) of a grid layer with block size p.

    After ``WindowPartition`` and the swap, partition (a, b) holds offset (a, b) of every p x p
    block, its slots the blocks in raster order: position (y, x) is in partition
    (y mod p, x mod p) at slot (y // p, x // p), and slot (u, v) is position
    (u p + y mod p, v p + x mod p).
    """
    nu, nv = h // p, w // p
    y = torch.arange(h).repeat_interleave(w)
    x = torch.arange(w).repeat(h)
    part = (y % p) * p + x % p
    slot = (y // p) * nv + x // p
    ky = (y % p)[:, None] + (torch.arange(nu) * p).repeat_interleave(nv)[None, :]
    kx = (x % p)[:, None] + (torch.arange(nv) * p).repeat(nu)[None, :]
    return part, slot, ky * w + kx


def _layout(m: nn.Module, h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    p = int(m.p)
    if m.partition_type == "grid":
        return grid_layout(h, w, p)
    return padded_window_layout(h, w, (p, p), (0, 0))


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"PartitionAttentionLayer called softmax {len(calls)} times; expected 1")
    h, w = int(inputs[0].shape[2]), int(inputs[0].shape[3])
    part, slot, key_index = _layout(m, h, w)
    if rows is not None:
        part, slot = part[rows], slot[rows]
    attn = calls[0].permute(0, 1, 3, 2, 4)[:, part, slot]  # (B, Nq, heads, K)
    p = int(m.p)
    meta = {
        "query_grid": (h, w),
        "key_grid": (h, w),
        "partition": m.partition_type,
        "window": (p, p) if m.partition_type == "window" else (h // p, w // p),
        "shift": (0, 0),
        "key_index": key_index,
    }
    return Reading(attn.permute(0, 2, 1, 3), meta, rows_selected=rows is not None)


register_adapter(
    "torchvision.models.maxvit.PartitionAttentionLayer",
    kind="window",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="torchvision",
    write="its partitions are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=lambda m, inputs: (int(inputs[0].shape[2]), int(inputs[0].shape[3])),
    describe=lambda m: {
        "heads": int(m.n_heads),
        "partition": m.partition_type,
        "block": int(m.p),
    },
)
