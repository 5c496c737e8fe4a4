"""timm EfficientFormerV2 (``timm.models.efficientformer_v2``): ``Attention2d`` (talking-heads
attention on a 2-D map) and ``Attention2dDownsample`` (queries on the map halved).

EfficientFormerV2 (Li et al. 2023, sec. 3.3) computes logits ``q k^T / sqrt(d) + B`` with
LeViT's attention bias B; ``Attention2d`` then mixes heads before and after the softmax (1x1
convs ``talking_head1`` / ``talking_head2``, Shazeer et al. 2020), optionally on the map
strided by 2 (``stride_conv``, the resolution ``resolution``); the weights multiplied with v
are ``talking_head2``'s output, which is read (rows need not sum to 1). ``Attention2dDownsample``
takes its queries on the map halved (``resolution2``, a local-global query) and its keys on the
full map; it calls ``softmax`` itself, whose output is read. No fused path in either.

* ``Attention2d``: kind ``talking_heads``, (B, heads, N, N) on ``resolution``;
  writing replaces ``talking_head2``'s output.
* ``Attention2dDownsample``: kind ``token``, (B, heads, Nq, Nk), ``query_grid`` =
  ``resolution2``, ``key_grid`` = ``resolution``; writing replaces the softmax output.

``cache.meta[name]``: ``prefix_tokens`` 0, ``query_grid``, ``key_grid``.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..registry import Computed, Intercepted, Reading, Written, register_adapter
from ._sdpa import SOFTMAX


def _meta(query: tuple, key: tuple) -> dict:
    query, key = tuple(int(s) for s in query), tuple(int(s) for s in key)
    return {"prefix_tokens": 0, "prefix_names": [], "query_grid": query, "key_grid": key}


def _talking(
    m: nn.Module, taps: Mapping[str, Tensor], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    return Reading(taps["talking_head2"], _meta(m.resolution, m.resolution))


def _downsample(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"Attention2dDownsample called softmax {len(calls)} times")
    return Reading(calls[0], _meta(m.resolution2, m.resolution))


register_adapter(
    "timm.models.efficientformer_v2.Attention2d",
    kind="talking_heads",
    read=Computed(taps=("talking_head2",), compute=_talking),
    family="timm",
    write=Written("talking_head2"),
    query_grid=lambda m, inputs: tuple(int(s) for s in m.resolution),
    describe=lambda m: {"heads": int(m.num_heads), "strided": m.stride_conv is not None},
)
register_adapter(
    "timm.models.efficientformer_v2.Attention2dDownsample",
    kind="token",
    read=Intercepted(functions=("softmax",), compute=_downsample),
    family="timm",
    query_grid=lambda m, inputs: tuple(int(s) for s in m.resolution2),
    describe=lambda m: {"heads": int(m.num_heads)},
)
