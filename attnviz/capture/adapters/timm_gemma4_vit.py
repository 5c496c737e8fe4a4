"""timm Gemma 4 vision encoder attention (``timm.models.gemma4_vit.Gemma4Attention``).

Gemma 4's ViT attends with RMS-normalised q and k carrying 2-D rotary embeddings (Su et al.
2021, eq. 34; x on the first half of each head's channels, y on the second) and scale 1:
``softmax(q k^T + mask)`` (Vaswani et al. 2017, eq. 1 without 1/sqrt(d)), the mask being
-inf on padding keys (NaFlex inputs). Fused (``scaled_dot_product_attention(..., scale=1.0)``,
whose weights are recomputed from the call's own q, k, mask and scale, its output returned
unchanged) or not (the module's own ``softmax``): read by ``timm_vit``'s reader.

The module gets its tokens' positions only as the RoPE tables ``rope_cos`` / ``rope_sin``
(B, N, head_dim): the patch grid is read back from them, position p of each axis being the
angle of the lowest rotary frequency f (``p = atan2(sin, cos) / f``, exact while p f < pi:
235 patches per side at head_dim 64), checked against every frequency. Tokens in raster order
over (H, W) give ``query_grid`` = ``key_grid`` = (H, W); other layouts (NaFlex padding, mixed
sizes) one row (1, N), like ``timm_vit.token_layout``. No prefix tokens.

Kind ``token``, (B, heads, N, N); ``cache.meta[name]``: ``prefix_tokens`` 0, ``query_grid``,
``key_grid``, ``path``. Writing replaces the softmax (``module.fused_attn = False``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import site_context
from .timm_vit import _register

Grid = tuple[int, int]


def _context(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    """The RoPE base (theta) of the enclosing encoder's ``rotary_emb``."""
    for owner in reversed(ancestors):
        rotary = getattr(owner, "rotary_emb", None)
        if rotary is not None and hasattr(rotary, "rope_theta"):
            return {"rope_theta": float(rotary.rope_theta)}
    return {}


def rope_positions(cos: Tensor, sin: Tensor, theta: float) -> Tensor | None:
    """(N, 2) integer (y, x) positions of the tokens of one image from Gemma 4's 2-D RoPE
    tables (N, head_dim), or None if they do not decode exactly."""
    half = cos.shape[-1] // 2  # channels per axis: [x part | y part], each cat(freqs, freqs)
    freqs = 1.0 / theta ** (torch.arange(0, half, 2, dtype=torch.float64) / half)  # (half / 2,)
    j = freqs.numel() - 1  # the lowest frequency
    angles = torch.stack([sin[:, j::half], cos[:, j::half]]).double()  # (2, N, 2): x then y
    pos = torch.round(torch.atan2(angles[0], angles[1]) / freqs[j])  # (N, 2) as (x, y)
    expected = (pos[:, :, None] * freqs).repeat(1, 1, 2).reshape(len(pos), -1)  # (N, head_dim)
    if not torch.allclose(expected.cos(), cos.double(), atol=1e-3, rtol=0):
        return None
    return pos.flip(-1).long()


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, Grid, Grid, list[str]]:
    x, cos, sin = inputs[:3]
    n = int(x.shape[1])
    theta = site_context(m).get("rope_theta")
    pos = None if theta is None else rope_positions(cos[0], sin[0], theta)
    if pos is not None and torch.equal(cos, cos[:1].expand_as(cos)):  # one layout for the batch
        h, w = int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1
        raster = torch.stack([torch.arange(n) // w, torch.arange(n) % w], dim=-1)
        if h * w == n and torch.equal(pos.cpu(), raster):
            return 0, (h, w), (h, w), []
    return 0, (1, n), (1, n), []


_register(
    "timm.models.gemma4_vit.Gemma4Attention",
    _layout,
    context=_context,
    describe=lambda m: {
        "heads": int(m.num_heads),
        "head_dim": int(m.head_dim),
        "kv_heads": int(m.num_kv_heads),
        "fused": bool(m.fused_attn),
    },
)
