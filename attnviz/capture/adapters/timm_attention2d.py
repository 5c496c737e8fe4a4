"""timm ``MultiQueryAttention2d`` (``timm.layers.attention2d``): MobileNetV4 hybrids and
MobileNetV5 (Gemma 3n) multi-query attention blocks.

Mobile MQA (Qin et al. 2024, sec. 3.2): every query head shares one key and one value head
(Shazeer 2019); keys and values come from the map reduced by a strided depthwise conv
(``kv_stride``), queries optionally from the map average-pooled by ``query_strides``:
``softmax(q k^T / sqrt(d) + mask)`` (Vaswani et al. 2017, eq. 1). Fused
(``scaled_dot_product_attention`` with k of one head broadcast over the query heads: the weights
are recomputed from the call's own q and k, its output returned unchanged) or not (the module's
own ``softmax``): read by ``timm_vit``'s reader. The module's ``einsum`` layout makes its
softmax (B, Nq, heads, Nk); it is brought to the kind's layout.

Kind ``token``, (B, heads, Nq, Nk); ``cache.meta[name]``: ``prefix_tokens`` 0, ``query_grid``
(H / query stride, (H, W) order), ``key_grid`` (the map after the key branch's strided conv:
its own padding rule, TF "same" for MobileNetV5), ``path``. Writing replaces the softmax
(``module.fused_attn = False``; not in the einsum layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, Written, register_adapter
from ._conv_grid import conv_grid
from ._sdpa import softmax_or_sdpa, write_softmax
from .timm_vit import _attention, _context

Grid = tuple[int, int]


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, Grid, Grid, list[str]]:
    h, w = (int(s) for s in inputs[0].shape[-2:])
    sh, sw = m.query_strides
    return 0, (h // sh, w // sw), conv_grid(m.key, (h, w)), []


def _read(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    if getattr(m, "einsum", False):  # its softmax is (B, Nq, heads, Nk)
        reading = _attention(m, taps, inputs, output, None, layout=_layout)
        reading.attention = reading.attention.transpose(1, 2)
        return reading
    return _attention(m, taps, inputs, output, rows, layout=_layout)


def _write(m: nn.Module) -> Written | str:
    if getattr(m, "einsum", False):
        return "in the einsum layout the softmax is (B, Nq, heads, Nk), not the kind's layout"
    return write_softmax(m)


register_adapter(
    "timm.layers.attention2d.MultiQueryAttention2d",
    kind="token",
    read=softmax_or_sdpa(_read),
    family="timm",
    write=_write,
    query_grid=lambda m, inputs: _layout(m, inputs)[1],
    context=_context,
    describe=lambda m: {
        "heads": int(m.num_heads),
        "head_dim": int(m.key_dim),
        "kv_stride": int(m.kv_stride),
        "fused": bool(m.fused_attn),
    },
)
