"""timm CBAM and light CBAM: one site per gate.

``LightChannelAttn`` applies its sigmoid functionally, so its attention is the sigmoid of
``fc2``'s output (fc2 runs once there; in ``ChannelAttn`` it runs twice and the gate once).
"""

from __future__ import annotations

import torch

from ..registry import Written, register_adapter

register_adapter("timm.layers.cbam.ChannelAttn", kind="cbam_channel", read="gate", family="timm")
register_adapter(
    "timm.layers.cbam.LightChannelAttn",
    kind="cbam_channel",
    read="fc2",
    transform=torch.sigmoid,
    family="timm",
    write=Written("sigmoid()"),  # the functional sigmoid of fc2's output
)
for _type in ("timm.layers.cbam.SpatialAttn", "timm.layers.cbam.LightSpatialAttn"):
    register_adapter(_type, kind="cbam_spatial", read="gate", family="timm")
