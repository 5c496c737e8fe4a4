"""timm Visformer (``timm.models.visformer.Attention``): multi-head self-attention on a 2-D map.

Visformer (Chen et al. 2021, sec. 3) applies ``softmax(q k^T / sqrt(d))`` (Vaswani et al.
2017, eq. 1) over the H x W positions of its (B, C, H, W) input, q, k, v from one 1x1 conv:
fused (``scaled_dot_product_attention``, weights recomputed from the call's own q and k) or not
(the module's ``softmax`` output). No prefix tokens, no position bias.

Kind ``token``, (B, heads, H * W, H * W); ``cache.meta[name]``: ``prefix_tokens`` 0,
``query_grid`` = ``key_grid`` = (H, W), ``path``. Writing replaces the softmax output
(``fused_attn = False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[2]), int(inputs[0].shape[3])


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"Visformer Attention called its attention {len(calls)} times")
    grid = _grid(m, inputs)
    meta = {"prefix_tokens": 0, "prefix_names": [], "query_grid": grid, "key_grid": grid}
    if SOFTMAX in taps:
        return Reading(calls[0].output, {**meta, "path": "softmax"})
    attn = sdpa_weights(calls[0], rows)
    return Reading(attn, {**meta, "path": "fused"}, rows_selected=rows is not None)


register_adapter(
    "timm.models.visformer.Attention",
    kind="token",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write=write_softmax,
    query_grid=_grid,
    describe=lambda m: {"heads": int(m.num_heads), "fused": bool(m.fused_attn)},
)
