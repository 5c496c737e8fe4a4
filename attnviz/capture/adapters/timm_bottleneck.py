"""timm ``BottleneckAttn`` (BoTNet: botnet26t, sebotnet33ts, eca_botnext26ts, halo2botnet50ts).

The module computes ``softmax(q.k * scale + rel_pos(q))`` functionally, as (B * heads, HW,
HW). The adapter records the output of that softmax call as the module runs (``Intercepted``:
the tensor is the module's own, nothing is recomputed) and returns it as (B, heads, Nq, Nk):
rows are queries in raster order of the input's H x W grid, keys likewise. With ``queries=``
the selected rows (axis -2) are kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps["softmax()"]
    if len(calls) != 1:
        raise RuntimeError(f"BottleneckAttn called softmax {len(calls)} times; expected once")
    attn = calls[0]  # (B * heads, HW, HW), the tensor the module multiplies with v
    h, w = inputs[0].shape[-2:]
    b = inputs[0].shape[0]
    attn = attn.view(b, m.num_heads, attn.shape[-2], attn.shape[-1])
    return Reading(attn, {"query_grid": (int(h), int(w)), "key_grid": (int(h), int(w))})


register_adapter(
    "timm.layers.bottleneck_attn.BottleneckAttn",
    kind="bottleneck",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    describe=lambda m: {
        "heads": int(m.num_heads),
        "feat_size": [int(m.pos_embed.height), int(m.pos_embed.width)],
        "scale_pos_embed": bool(m.scale_pos_embed),
    },
)
