"""timm ``BatNonLocalAttn`` (bat_resnext26ts): the bilinear attention transform.

``BilinearAttnTransform`` computes, functionally from its ``conv_p`` / ``conv_q`` outputs,
p = sigmoid(conv_p(.)) normalised over its last axis and q = sigmoid(conv_q(.)) normalised over
its first block axis, each (B, groups, bs, bs), and applies y = P x Q (P, Q expanded to the
H x W feature map by block repetition). The adapter repeats those operations and keeps
(B, 2, groups, bs, bs): index 0 = P (row i of the output mixes input rows j), index 1 = Q^T
(column i of the output mixes input columns j); every row sums to 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Computed, Reading, register_adapter


def _bilinear(
    m: nn.Module, taps: Mapping[str, Tensor], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    ba = m.ba
    tp, tq = taps["ba.conv_p"], taps["ba.conv_q"]
    b = tp.shape[0]
    p = tp.view(b, ba.groups, ba.block_size, ba.block_size).sigmoid()
    q = tq.view(b, ba.groups, ba.block_size, ba.block_size).sigmoid()
    p = p / p.sum(dim=3, keepdim=True)
    q = q / q.sum(dim=2, keepdim=True)
    h, w = inputs[0].shape[-2:]
    meta = {"block_size": int(ba.block_size), "groups": int(ba.groups), "grid": (int(h), int(w))}
    return Reading(torch.stack([p, q.transpose(-1, -2)], dim=1), meta)


register_adapter(
    "timm.layers.non_local_attn.BatNonLocalAttn",
    kind="bat",
    read=Computed(taps=("ba.conv_p", "ba.conv_q"), compute=_bilinear),
    write="its p and q matrices are normalised functionally in two steps; no one tensor to write",
    family="timm",
    describe=lambda m: {"block_size": int(m.ba.block_size), "groups": int(m.ba.groups)},
)
