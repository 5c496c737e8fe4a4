"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .se import SEBlock


class ChannelGate(SEBlock):
    """Channel attention M_c(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F))) (Eq. 2).

    The SE block's layers (``fc1`` -> ReLU -> ``fc2``, then ``gate``) with max pooling added:
    the MLP is shared by both pooled vectors; ``gate`` (the sigmoid) is called once, so a
    forward hook on it reads M_c, shape (B, C, 1, 1).
    """

    def mlp(self, v: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(v)))

    def forward(self, x: Tensor) -> Tensor:
        avg = x.mean(dim=(2, 3), keepdim=True)
        mx = x.amax(dim=(2, 3), keepdim=True)
        return x * self.gate(self.mlp(avg) + self.mlp(mx))


class SpatialGate(nn.Module):
    """Spatial attention M_s(F) = sigmoid(f7x7([AvgPool(F); MaxPool(F)])) (Eq. 3).

    Pooling is over channels; the 7x7 conv is followed by BN as in the official code (which
    stacks [max, mean]; the paper's order [mean, max] is used here). A forward hook on ``gate``
    reads M_s, shape (B, 1, H, W).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * self.gate(self.bn(self.conv(pooled)))


class CBAM(nn.Module):
    """CBAM: F' = M_c(F) * F, F'' = M_s(F') * F' (Eq. 1); channel first, then spatial."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.spatial(self.channel(x))
