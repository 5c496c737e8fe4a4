"""timm CSATv2: its ``SpatialTransformerBlock`` is declared not attention.

Its softmax is (B, B), over the batch: q @ k^T of (B, N) tensors with one scalar per token, and
the LayerNorm over that single channel makes q, k and v independent of the input, so the
weights are 1/B for every input. There is no map over positions to read.
"""

from __future__ import annotations

from ..registry import declare_not_attention

declare_not_attention(
    "timm.models.csatv2.SpatialTransformerBlock",
    "its softmax runs over the batch (B x B) and is 1/B for every input: no map over positions",
)
