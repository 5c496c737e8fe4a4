"""timm LeViT (``timm.models.levit``): ``Attention`` and the shrinking ``AttentionDownsample``.

LeViT (Graham et al. 2021, sec. 4.2-4.3) computes ``softmax(q k^T / sqrt(d) + B)`` with a
learned attention bias B per head indexed by the (absolute) offset between query and key
positions. ``AttentionDownsample`` takes its queries on the map subsampled by ``stride``
(``query_grid`` ceil(H / s) x ceil(W / s)) and its keys on the full map (``key_grid``). The
module calls ``softmax`` itself (no fused path, no dropout): its output is read as it is.
Tokens are the H x W map in raster order, no prefix tokens; the map is the module's
``resolution`` for the linear variant (levit_*: (B, N, C)) or its input's for the conv one
(levit_conv_*: (B, C, H, W)).

Kind ``token``, (B, heads, Nq, Nk); ``cache.meta[name]``: ``prefix_tokens`` 0, ``query_grid``,
``key_grid``. Writing replaces the softmax output.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import SOFTMAX

Grid = tuple[int, int]


def _grids(m: nn.Module, inputs: tuple) -> tuple[Grid, Grid]:
    """(query grid, key grid) of this call."""
    x = inputs[0]
    key = (
        (int(x.shape[2]), int(x.shape[3])) if x.dim() == 4 else tuple(int(r) for r in m.resolution)
    )
    stride = int(getattr(m, "stride", 1))
    return (-(-key[0] // stride), -(-key[1] // stride)), key


def _attention(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"LeViT {type(m).__name__} called softmax {len(calls)} times")
    query, key = _grids(m, inputs)
    meta = {"prefix_tokens": 0, "prefix_names": [], "query_grid": query, "key_grid": key}
    return Reading(calls[0], meta)


for _type in ("Attention", "AttentionDownsample"):
    register_adapter(
        f"timm.models.levit.{_type}",
        kind="token",
        read=Intercepted(functions=("softmax",), compute=_attention),
        family="timm",
        query_grid=lambda m, inputs: _grids(m, inputs)[0],
        describe=lambda m: {"heads": int(m.num_heads), "stride": int(getattr(m, "stride", 1))},
    )
