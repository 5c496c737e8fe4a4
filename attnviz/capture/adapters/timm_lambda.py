"""timm ``LambdaLayer`` (lambda_resnet26t, lambda_resnet26rpt_256, lamhalobotnet50ts).

The only softmax of a lambda layer is over the positions of its keys: ``k = softmax(k, -1)``
with k (B, K, H*W) taken functionally from the ``qkv`` conv output. The adapter records the
output of that softmax call as the module runs (``Intercepted``) and returns (B, K, H, W): one
distribution over positions per key channel. A lambda layer has no per-query attention map:
each query reads a summary ("lambda") of the whole context, so ``queries=`` does not apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter


def _keys(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps["softmax()"]
    if len(calls) != 1:
        raise RuntimeError(f"LambdaLayer called softmax {len(calls)} times; expected once")
    h, w = inputs[0].shape[-2:]
    k = calls[0]  # (B, K, H * W)
    return Reading(k.view(k.shape[0], k.shape[1], int(h), int(w)))


register_adapter(
    "timm.layers.lambda_layer.LambdaLayer",
    kind="lambda",
    read=Intercepted(functions=("softmax",), compute=_keys),
    family="timm",
    describe=lambda m: {
        "heads": int(m.num_heads),
        "dim_k": int(m.dim_qk),
        "position": "conv" if m.conv_lambda is not None else "relative",
    },
)
