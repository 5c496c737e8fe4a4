"""timm Swin V2-CR (``SwinTransformerV2CrBlock`` and its ``WindowMultiHeadAttention``:
swinv2_cr_tiny ... giant), timm's own re-implementation of Swin V2.

The same scaled cosine attention as Swin V2 (Liu et al. 2022, eq. 2 and 4):
``softmax(cos(q, k) * exp(min(s, log 100)) + B + mask)``, B from the relative-position MLP over
log coordinates (no 16 sigmoid here), plus the -100 mask of shifted blocks. The module calls
``Tensor.softmax`` itself (no fused path): the adapter records that call's output as it is. The
block rolls, pads and partitions like Swin V1, so the site is the block.

Kind ``window``, (B, heads, Nq, K), one row per image position; ``cache.meta[name]``:
``query_grid`` / ``key_grid`` (H, W), ``window``, ``shift`` and ``key_index`` (Nq, K) (see
``timm_swin_v2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import SOFTMAX
from .timm_swin_v2 import WRITE, query_grid, windows_on_image


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"Swin V2-CR block called softmax {len(calls)} times; expected once")
    return windows_on_image(m, calls[0], inputs, rows)


register_adapter(
    "timm.models.swin_transformer_v2_cr.SwinTransformerV2CrBlock",
    kind="window",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    write=WRITE,
    query_grid=query_grid,
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": [int(s) for s in m.window_size],
        "shift": [int(s) for s in m.shift_size],
        "cosine": True,
    },
)
