"""timm SwiftFormer efficient additive attention (Shaker et al. 2023, Eq. 4-5).

``EfficientAdditiveAttention`` scores each token with a learned vector, alpha = normalize_N(
q w_a / sqrt(d)) over the H*W tokens (L2, so the scores are signed with sum of squares 1), and
pools the queries into one global query g = sum_i alpha_i q_i that multiplies every key. There
is no query-key map: alpha is a map over positions, read as kind ``additive`` (B, H, W). It is
the output of the module's third ``F.normalize`` call (query, key, then the scores), taken as
the module made it.
"""

from __future__ import annotations

from torch import nn

from ..registry import Intercepted, Reading, register_adapter


def _scores(module: nn.Module, taps, inputs: tuple, output, rows) -> Reading:
    calls = taps[Intercepted.key("normalize")]
    if len(calls) != 3:
        raise RuntimeError(f"EfficientAdditiveAttention normalised {len(calls)} times, not 3")
    b, _, h, w = inputs[0].shape
    return Reading(calls[2].reshape(b, h, w))


register_adapter(
    "timm.models.swiftformer.EfficientAdditiveAttention",
    kind="additive",
    read=Intercepted(("normalize",), _scores),
    family="timm",
    write="the scores are one of three normalize calls of the module; attnviz reads them only",
)
