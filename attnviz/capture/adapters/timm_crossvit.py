"""timm CrossViT (``timm.models.crossvit.CrossAttention``): cross-attention token fusion.

CrossViT (Chen et al. 2021, eq. 7-8) fuses two branches through their class tokens: the class
token of branch i (projected to branch j's width) is the only query, the keys are that class
token and branch j's patches: ``softmax(q_cls k^T / sqrt(d))``. The module calls ``softmax``
itself (no fused path): its (B, heads, 1, N) output is read as it is. The keys' patch grid is
the square grid of branch j (CrossViT's branches take square images).

Kind ``class_token``, (B, heads, Nk); ``cache.meta[name]``: ``prefix_tokens`` 1 (the
class token, of the other branch), ``prefix_names``, ``key_grid``. Writing replaces the
softmax output.
"""

from __future__ import annotations

from ..registry import register_adapter
from ._sdpa import softmax_or_sdpa
from .timm_cait import class_attention, class_write, patch_context

register_adapter(
    "timm.models.crossvit.CrossAttention",
    kind="class_token",
    read=softmax_or_sdpa(class_attention),
    family="timm",
    write=class_write,
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads)},
)
