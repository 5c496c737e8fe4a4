"""timm MViTv2 (``timm.models.mvitv2.MultiScaleAttention``: mvitv2_tiny ... mvitv2_huge_cls).

MViTv2 (Li et al. 2022, eq. 1-4) pools attention: queries, keys and values are each pooled by
their own strided depthwise conv (``pool_q``, ``pool_k``; or max/avg pools), so queries lie on
a ``query_grid`` (pooled by ``stride_q`` at a stage's first block) and keys on a coarser
``key_grid`` (pooled by ``stride_kv``). The weights are ``softmax(q k^T / sqrt(d) + E_rel)``
with the decomposed relative-position bias E_rel(i, j) = q_i . (R_h[dh] + R_w[dw]) (eq. 4) added
in place between the patch tokens; an optional class token is pooled by neither and is the
first query and the first key. The module calls ``softmax`` itself (no fused path, no
dropout): its output is read as it is.

Kind ``token``, (B, heads, Nq, Nk); ``cache.meta[name]``: ``prefix_tokens`` (1 with the class
token, else 0; keys carry the same prefix), ``prefix_names``, ``query_grid``, ``key_grid``.
Writing replaces the softmax output.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import SOFTMAX

Grid = tuple[int, int]


def _pooled(pool: nn.Module | None, grid: Grid) -> Grid:
    """The grid after ``pool`` (a strided conv or max/avg pool, floor mode), or ``grid``."""
    if pool is None:
        return grid
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    (kh, kw), (sh, sw), (ph, pw) = (
        pair(getattr(pool, a)) for a in ("kernel_size", "stride", "padding")
    )
    return (grid[0] + 2 * ph - kh) // sh + 1, (grid[1] + 2 * pw - kw) // sw + 1


def _grids(m: nn.Module, inputs: tuple) -> tuple[Grid, Grid]:
    """(query grid, key grid) of this call: the input's ``feat_size`` after each pool."""
    grid = (int(inputs[1][0]), int(inputs[1][1]))
    return _pooled(m.pool_q, grid), _pooled(m.pool_k, grid)


def _attention(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"MViTv2 MultiScaleAttention called softmax {len(calls)} times")
    query, key = _grids(m, inputs)
    n_prefix = int(bool(m.has_cls_token))
    meta = {
        "prefix_tokens": n_prefix,
        "prefix_names": ["class"] * n_prefix,
        "query_grid": query,
        "key_grid": key,
    }
    return Reading(calls[0], meta, query_rows=None if rows is None else rows + n_prefix)


register_adapter(
    "timm.models.mvitv2.MultiScaleAttention",
    kind="token",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    query_grid=lambda m, inputs: _grids(m, inputs)[0],
    describe=lambda m: {
        "heads": int(m.num_heads),
        "class_token": bool(m.has_cls_token),
        "rel_pos": str(m.rel_pos_type),
    },
)
