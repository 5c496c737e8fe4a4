"""timm coordinate-attention family: ``CoordAttn`` (coord), ``EfficientLocalAttn`` (ela),
``SimpleCoordAttn`` (scoord), ``StripAttn`` (strip).

coord and ela call their ``gate`` module twice per forward: first on the height encoding
((B, C, H, 1)), then on the width encoding ((B, C, 1, W)); the output is ``x * a_h * a_w``.
Both calls are recorded (``Computed(..., every_call=True)``) and kept as one site whose tensor
is (B, C, H + W); ``AttentionCache.parts(name)`` gives ``height`` (B, C, H) and ``width``
(B, C, W). scoord and strip call ``gate`` once on the broadcast sum, a (B, C, H, W) map.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Computed, Reading, register_adapter


def _two_gates(
    m: nn.Module, taps: Mapping[str, tuple[Tensor, ...]], inputs: tuple, output: Any, rows: Any
) -> Reading:
    calls = taps["gate"]
    if len(calls) != 2:
        raise RuntimeError(
            f"{type(m).__name__}.gate ran {len(calls)} times in one forward; expected 2 "
            "(height, then width)"
        )
    a_h, a_w = calls
    h, w = a_h.shape[-2], a_w.shape[-1]
    if a_h.shape[-1] != 1 or a_w.shape[-2] != 1:
        raise RuntimeError(f"unexpected gate shapes {tuple(a_h.shape)}, {tuple(a_w.shape)}")
    att = torch.cat([a_h[..., 0], a_w[..., 0, :]], dim=-1)  # (B, C, H + W)
    return Reading(att, {"parts": {"height": int(h), "width": int(w)}})


_TWO_GATES = Computed(taps=("gate",), compute=_two_gates, every_call=True)
_PKG = "timm.layers.coord_attn"
_TWICE = "its gate runs twice per forward (height, then width); writing is not supported"
register_adapter(f"{_PKG}.CoordAttn", kind="coord", read=_TWO_GATES, family="timm", write=_TWICE)
register_adapter(
    f"{_PKG}.EfficientLocalAttn", kind="ela", read=_TWO_GATES, family="timm", write=_TWICE
)
register_adapter(f"{_PKG}.SimpleCoordAttn", kind="scoord", read="gate", family="timm")
register_adapter(f"{_PKG}.StripAttn", kind="strip", read="gate", family="timm")
