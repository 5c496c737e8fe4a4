"""timm EfficientFormer (``timm.models.efficientformer.Attention``, the last stage's MHSA).

EfficientFormer (Li et al. 2022, sec. 3.2) flattens the last stage's H x W map to tokens and
computes ``softmax(q k^T / sqrt(d) + B)`` with a learned bias B per head indexed by the offset
between the two positions (LeViT's attention bias). The module calls ``softmax`` itself (no
fused path, no dropout): its output is read as it is. The map is square (the model's
``resolution``, img_size / 32); no prefix tokens (the distillation head reads the pooled map).

Kind ``token``, (B, heads, N, N); ``cache.meta[name]``: ``prefix_tokens`` 0, ``query_grid`` =
``key_grid`` (the square map). Writing replaces the softmax output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import SOFTMAX


def square_grid(n_tokens: int) -> tuple[int, int]:
    """The square grid of ``n_tokens`` tokens, or one row when the count is not square."""
    side = math.isqrt(n_tokens)
    return (side, side) if side * side == n_tokens else (1, n_tokens)


def _attention(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"EfficientFormer Attention called softmax {len(calls)} times")
    grid = square_grid(int(inputs[0].shape[1]))
    meta = {"prefix_tokens": 0, "prefix_names": [], "query_grid": grid, "key_grid": grid}
    return Reading(calls[0], meta)


register_adapter(
    "timm.models.efficientformer.Attention",
    kind="token",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    query_grid=lambda m, inputs: square_grid(int(inputs[0].shape[1])),
    describe=lambda m: {"heads": int(m.num_heads), "key_dim": int(m.key_dim)},
)
