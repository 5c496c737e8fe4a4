"""timm ``AttentionRope`` (``timm.layers.attention``): DeepSeek ViT, Qwen3 ViT and EVA models
built with ``attn_type='rope'`` (Perception Encoder ``vit_pe_*``).

The module is timm's ViT ``Attention`` with rotary position embeddings (Su et al. 2021, eq. 34)
applied to q and k of the patch tokens (not the prefix tokens), optional q/k norms and
grouped-query heads (k and v repeated per query head before the call):
``softmax(q k^T / sqrt(d) + mask)`` (Vaswani et al. 2017, eq. 1). The same two paths as
``Attention``: fused ``scaled_dot_product_attention`` (the weights are recomputed from the
call's own q, k, mask and scale, its output returned unchanged) or the module's own ``softmax``.
So it is read by ``timm_vit``'s reader with the ViT token layout.

Kind ``token``, (B, heads, N, N); ``cache.meta[name]``: ``prefix_tokens``, ``prefix_names``,
``query_grid`` = ``key_grid`` (the enclosing model's patch grid, (H, W)), ``path``. Writing
replaces the softmax (``module.fused_attn = False``).
"""

from __future__ import annotations

from .timm_vit import _register

_register("timm.layers.attention.AttentionRope")
