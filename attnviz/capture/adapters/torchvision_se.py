"""torchvision ``SqueezeExcitation`` (efficientnet, mobilenet_v3, regnet_y, maxvit).

``scale_activation`` (sigmoid, or hard sigmoid in mobilenet_v3) returns the excitation.
"""

from __future__ import annotations

from ..registry import register_adapter

register_adapter(
    "torchvision.ops.misc.SqueezeExcitation",
    kind="se",
    read="scale_activation",
    family="torchvision",
)
