"""timm CoaT factorized attention (Xu et al. 2021, Eq. 2): F(Q, K, V) = Q (softmax_N(K)^T V).

``FactorAttnConvRelPosEnc`` never forms a query-key map: the softmax runs over the N tokens for
each key channel, so each of a head's Ch key channels is a distribution over the tokens from
which it pools the values (the role of LambdaNetworks' keys). Read from the module's own
softmax call as kind ``factor`` (B, heads, Ch, N), one row per key channel; tokens are the
class token (``prefix_tokens`` 1) then the H x W patch grid (``key_grid``, the module's own
``size`` argument).
"""

from __future__ import annotations

from torch import nn

from ..registry import Intercepted, Reading, register_adapter


def _key_weights(module: nn.Module, taps, inputs: tuple, output, rows) -> Reading:
    (k_softmax,) = taps[Intercepted.key("softmax")]  # (B, heads, N, Ch), softmax over N
    h, w = (int(s) for s in inputs[1])
    n = int(k_softmax.shape[2])
    prefix = n - h * w
    meta = {"prefix_tokens": prefix, "prefix_names": ["class"][:prefix], "key_grid": (h, w)}
    return Reading(k_softmax.transpose(-1, -2), meta)


register_adapter(
    "timm.models.coat.FactorAttnConvRelPosEnc",
    kind="factor",
    read=Intercepted(("softmax",), _key_weights),
    family="timm",
    write="the canonical rows are the key channels, a transpose of the module's tensor, not a "
    "reshape; attnviz reads them only",
    describe=lambda m: {"heads": int(m.num_heads)},
)
