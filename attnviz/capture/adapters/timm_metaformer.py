"""timm MetaFormer's ``Attention`` token mixer (CAFormer, the attention stages of
``timm.models.metaformer``): the same two paths as timm's ViT ``Attention``.

CAFormer (Yu et al. 2023, sec. 3) uses plain multi-head self-attention,
``softmax(q k^T / sqrt(d))`` (Vaswani et al. 2017, eq. 1), over the stage's H x W map flattened
to tokens (no prefix tokens): fused (``scaled_dot_product_attention``, weights recomputed from
the call's own q and k) or not (the module's ``softmax`` output). The stage flattens the map
itself, so the module sees N tokens only: the grid is the square one (or one row when N is not
square: a non-square input).

Kind ``token``, (B, heads, N, N), read by ``timm_vit``'s adapter (meta ``prefix_tokens`` 0,
``query_grid`` / ``key_grid``, ``path``).
"""

from __future__ import annotations

from .timm_vit import _register

_register("timm.models.metaformer.Attention")
