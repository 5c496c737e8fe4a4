"""timm Next-ViT (``timm.models.nextvit``): the ``EfficientAttention`` (E-MHSA) of each
``NextTransformerBlock`` (nextvit_small / base / large).

E-MHSA (Li et al. 2022, sec. 3.3, eq. 4) computes ``softmax(q k^T / sqrt(d))`` with the
queries on every position of the block's H x W map (after its ``patch_embed``, stride 1 or 2)
and the keys and values spatially reduced: ``AvgPool1d(r^2)`` (``sr_ratio`` r) over the
token sequence in raster order, so key j is the mean of the r^2 consecutive tokens
j * r^2 ... (j + 1) * r^2 - 1 (a run along a row, which wraps to the next row when W is not a
multiple of r^2; trailing N mod r^2 tokens are in no key). Fused
(``scaled_dot_product_attention``, the weights recomputed from the call's own q and k) or not
(the module's ``softmax`` output). The attention module sees (B, N, C) tokens only; the block
knows H x W, so the site is the block.

Kind ``token``, (B, heads, H * W, Nk); ``cache.meta[name]``: ``prefix_tokens`` 0,
``query_grid`` (H, W), ``key_grid``: (H, W / r^2) when r^2 divides W, (H / (r^2 / W), 1)
when W divides r^2 (each key whole rows), else (1, Nk) (keys straddle rows: not a 2-D grid);
``key_members`` (Nk, r^2), the flat query-grid positions (``y * W + x``) each
key averages; ``path``. Writing replaces the softmax output (``e_mhsa.fused_attn = False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Reading, Written, declare_not_attention, register_adapter
from ._sdpa import softmax_or_sdpa, write_softmax
from .timm_vit import _attention as _token_attention

Grid = tuple[int, int]


def _query_grid(m: nn.Module, inputs: tuple) -> Grid:
    """The block's map after its ``patch_embed`` (AvgPool2d(2, ceil_mode) when stride 2)."""
    h, w = (int(s) for s in inputs[0].shape[-2:])
    if isinstance(m.patch_embed.pool, nn.AvgPool2d):
        return -(-h // 2), -(-w // 2)
    return h, w


def _key_grid(grid: Grid, pool: int) -> Grid:
    """The grid of the keys that average runs of ``pool`` raster tokens (see module doc)."""
    h, w = grid
    if w % pool == 0:
        return h, w // pool
    if pool % w == 0 and h % (pool // w) == 0:
        return h // (pool // w), 1
    return 1, (h * w) // pool


@lru_cache(maxsize=64)
def key_members(h: int, w: int, pool: int) -> Tensor:
    """(Nk, pool): the flat query-grid positions each key averages (AvgPool1d over raster)."""
    n_keys = (h * w) // pool
    return torch.arange(n_keys * pool).view(n_keys, pool)


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, Grid, Grid, list[str]]:
    grid = _query_grid(m, inputs)
    pool = int(m.e_mhsa.N_ratio) if m.e_mhsa.sr is not None else 1
    return 0, grid, _key_grid(grid, pool), []


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    reading = _token_attention(m, taps, inputs, output, rows, layout=_layout)
    pool = int(m.e_mhsa.N_ratio) if m.e_mhsa.sr is not None else 1
    reading.meta["key_members"] = key_members(*reading.meta["query_grid"], pool)
    return reading


def _write(m: nn.Module) -> Written | str:
    return write_softmax(m, inner="e_mhsa")


register_adapter(
    "timm.models.nextvit.NextTransformerBlock",
    kind="token",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write=_write,
    query_grid=lambda m, inputs: _query_grid(m, inputs),
    describe=lambda m: {
        "heads": int(m.e_mhsa.num_heads),
        "sr_ratio": int(m.e_mhsa.sr_ratio),
        "fused": bool(m.e_mhsa.fused_attn),
    },
)

declare_not_attention(
    "timm.models.nextvit.ConvAttention",
    "NextViT's multi-head convolutional attention is a grouped 3x3 conv, norm, activation and 1x1 "
    "projection; it forms no attention weights",
)
