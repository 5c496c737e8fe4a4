"""timm Visformer (``timm.models.visformer.Attention``): multi-head self-attention on a 2-D map.

Visformer (Chen et al. 2021, sec. 3) applies ``softmax(q k^T / sqrt(d))`` (Vaswani et al.
2017, eq. 1) over the H x W positions of its (B, C, H, W) input, q, k, v from one 1x1 conv:
fused (``scaled_dot_product_attention``, weights recomputed from the call's own q and k) or not
(the module's ``softmax`` output). No prefix tokens, no position bias.

Kind ``token``, (B, heads, H * W, H * W); ``cache.meta[name]``: ``prefix_tokens`` 0,
``query_grid`` = ``key_grid`` = (H, W), ``path``. Writing replaces the softmax output
(``fused_attn = False``). Read by ``timm_vit``'s adapter with the map's grid as the layout.
"""

from __future__ import annotations

from torch import nn

from .timm_vit import _register


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, tuple[int, int], tuple[int, int], list]:
    """No prefix tokens; queries and keys on the (B, C, H, W) input's H x W grid."""
    grid = (int(inputs[0].shape[2]), int(inputs[0].shape[3]))
    return 0, grid, grid, []


_register("timm.models.visformer.Attention", _layout)
