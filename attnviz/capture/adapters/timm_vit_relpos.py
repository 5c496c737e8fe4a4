"""timm ViT with relative-position bias (``timm.models.vision_transformer_relpos``:
``RelPosAttention``, vit_relpos_* and vit_srelpos_*): the same two paths as timm's ViT
``Attention``.

``softmax(q k^T / sqrt(d) + B)`` (Vaswani et al. 2017, eq. 1; Liu et al. 2021, eq. 4) with B
from the module's ``rel_pos`` (a table or a log-coordinate MLP, zero rows/columns for the
prefix tokens) or the model's ``shared_rel_pos``: fused (``scaled_dot_product_attention`` with
B as its mask, whose weights are recomputed from the call's own q, k and B) or not (the
module's ``softmax`` output).

Kind ``token``, (B, heads, N, N), read by ``timm_vit``'s adapter (meta ``prefix_tokens``,
``prefix_names``, ``query_grid`` / ``key_grid``, ``path``).
"""

from __future__ import annotations

from .timm_vit import _register

_register("timm.models.vision_transformer_relpos.RelPosAttention")
