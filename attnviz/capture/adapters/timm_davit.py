"""timm DaViT (``timm.models.davit``): spatial window attention (``SpatialBlock`` and its
``WindowAttention``) and channel group attention (``ChannelAttention``, ``ChannelAttentionV2``).

DaViT (Ding et al. 2022) alternates two attentions:

* spatial window attention (sec. 3.1): ``softmax(q k^T / sqrt(d))`` within ws x ws windows of
  the (B, C, H, W) map, padded bottom/right to whole windows, no shift, no position bias (a
  depth-wise conv ``cpe`` carries position). The fused path's weights are recomputed from the
  ``scaled_dot_product_attention`` call's own q and k; otherwise ``WindowAttention.softmax``'s
  output is read. The site is the block (it knows the map); kind ``window``, (B, heads, H * W,
  K), ``key_index`` as for Swin (``timm_swin.window_layout``, shift 0).
* channel group attention (sec. 3.2, eq. 3): per group of d channels, a d x d softmax over
  channels, the same mix at every token. ``ChannelAttention`` computes ``softmax((k s)^T v)``
  and applies it to the query's channels (``attn @ q^T``, timm's code, which swaps the paper's
  roles of q and v); ``ChannelAttentionV2`` computes ``softmax((q s)^T k)`` and applies it to
  v's channels. Kind ``xca``, (B, groups, d, d): row = output channel of the group, column =
  source channel; ``cache.meta[name]["mixes"]`` names the tensor whose channels are mixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, Written, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa
from .timm_swin import _per_window, _rows_of_call, window_layout


def _map(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[2]), int(inputs[0].shape[3])


def _windows(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    b = int(inputs[0].shape[0])
    h, w = _map(m, inputs)
    window = tuple(int(s) for s in m.window_size)
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"DaViT block called its attention {len(calls)} times; expected once")
    window_id, slot, key_index = window_layout(h, w, window, (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    if FUSED in taps and rows is not None:  # only the rows asked for are computed
        attn = _rows_of_call(calls[0], b, window_id, slot)
    else:
        attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])
        attn = _per_window(attn, b)[:, window_id, slot]  # (B, Nq, heads, K)
    meta = {"query_grid": (h, w), "key_grid": (h, w), "window": window, "shift": (0, 0)}
    meta.update(key_index=key_index, path="fused" if FUSED in taps else "softmax")
    return Reading(attn.permute(0, 2, 1, 3), meta, rows_selected=rows is not None)


register_adapter(
    "timm.models.davit.SpatialBlock",
    kind="window",
    read=softmax_or_sdpa(_windows),
    family="timm",
    write="its windows are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=_map,
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": [int(s) for s in m.window_size],
        "fused": bool(m.attn.fused_attn),
    },
)


def _channels(mixes: str):
    def compute(
        m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: Any, rows: Tensor | None
    ) -> Reading:
        calls = taps[SOFTMAX]
        if len(calls) != 1:
            raise RuntimeError(f"DaViT {type(m).__name__} called softmax {len(calls)} times")
        attn = calls[0]
        meta = {"head_channels": int(attn.shape[-1]), "tokens": int(inputs[0].shape[1])}
        return Reading(attn, {**meta, "mixes": mixes})

    return compute


for _type, _mixes in (("ChannelAttention", "q"), ("ChannelAttentionV2", "v")):
    register_adapter(
        f"timm.models.davit.{_type}",
        kind="xca",
        read=Intercepted(functions=("softmax",), compute=_channels(_mixes)),
        family="timm",
        write=Written(SOFTMAX),
        describe=lambda m: {"heads": int(getattr(m, "num_heads", 0) or m.groups)},
    )
