"""timm squeeze-and-excitation variants.

The gate's output is the excitation; the SE module's own output is not read because timm's
blocks add the shortcut to it in place afterwards.
"""

from __future__ import annotations

from ..registry import register_adapter

for _type in (
    "timm.layers.squeeze_excite.SEModule",  # seresnet*, seresnext*, senet154
    "timm.layers.squeeze_excite.SqueezeExciteCl",  # channels-last variant, (B, 1, 1, C)
    "timm.models._efficientnet_blocks.SqueezeExcite",  # efficientnet, mobilenetv3
    "timm.layers.squeeze_excite.EffectiveSEModule",  # ese_vovnet (hard sigmoid gate)
):
    register_adapter(_type, kind="se", read="gate", family="timm")

# legacy_seresnet*, legacy_senet154: the gate is a named nn.Sigmoid.
register_adapter("timm.models.senet.SEModule", kind="se", read="sigmoid", family="timm")
# hgnet_* (PP-HGNet): effective SE (Lee & Park 2020, CenterMask eq. 2), x * sigmoid(W mean(x)),
# one 1x1 conv and a named nn.Sigmoid; the module returns torch.mul(x, gate).
register_adapter("timm.models.hgnet.EseModule", kind="se", read="sigmoid", family="timm")
