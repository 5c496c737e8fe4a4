"""timm global context (gcresnet*, gcresnext*): ``conv_attn`` logits, softmax over H*W.

The softmax is functional in ``GlobalContext.forward``; applying the same softmax to the same
logits gives the same tensor. Variants without attention pooling (``use_attn=False``) have
no attention map and are not sites. Both fusions (scale, add) share the map.
"""

from __future__ import annotations

from torch import nn

from ..registry import Written, register_adapter, softmax_over_positions


def _fusion(module: nn.Module) -> dict:
    fusion = [n for n in ("mlp_scale", "mlp_add") if getattr(module, n, None) is not None]
    return {"fusion": [f.removeprefix("mlp_") for f in fusion]}


register_adapter(
    "timm.layers.global_context.GlobalContext",
    kind="gc",
    read="conv_attn",
    transform=softmax_over_positions,
    family="timm",
    applies=lambda m: getattr(m, "conv_attn", None) is not None,
    describe=_fusion,
    # written at the functional softmax: (B, 1, H * W) -> (B, 1, H, W)
    write=Written(
        "softmax()",
        view=lambda m, raw, inputs: raw.reshape(inputs[0].shape[0], 1, *inputs[0].shape[-2:]),
    ),
)
