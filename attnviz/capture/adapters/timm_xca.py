"""Cross-covariance attention: timm XCiT's ``XCA`` and EdgeNeXt's ``CrossCovarianceAttn``.

XCA (El-Nouby et al. 2021, eq. 5) attends across channels, not tokens: per head, q and k
(d channels x N tokens) are l2-normalised over the tokens and
``softmax(q_hat k_hat^T * tau)`` (d x d, tau a learned temperature per head) mixes the value
channels, the same mix at every token. The module's ``softmax`` output is read as it is; XCiT's
fused path (``fused_attn``, off by default: timm marks it experimental) folds tau into q and
calls ``scaled_dot_product_attention`` with scale 1, whose weights are recomputed from the
call's own q and k.

Kind ``xca``, (B, heads, d, d): axis 2 is the output channel of the head (a row per query
channel), axis 3 the source channel (the softmax axis); channel c of head h is channel
``h * d + c`` of the module's input projection. There is no spatial axis (``queries=`` does not
apply). ``cache.meta[name]``: ``head_channels`` d, ``tokens`` N, ``path``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Reading, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"{type(m).__name__} called softmax {len(calls)} times; expected once")
    if SOFTMAX in taps:
        attn, path = calls[0].output, "softmax"
    else:
        attn, path = sdpa_weights(calls[0]), "fused"
    meta = {"head_channels": int(attn.shape[-1]), "tokens": int(inputs[0].shape[1]), "path": path}
    return Reading(attn, meta)


for _type in ("timm.models.xcit.XCA", "timm.models.edgenext.CrossCovarianceAttn"):
    register_adapter(
        _type,
        kind="xca",
        read=softmax_or_sdpa(_attention),
        family="timm",
        write=write_softmax,
        describe=lambda m: {
            "heads": int(m.num_heads),
            "fused": bool(getattr(m, "fused_attn", False)),
        },
    )
