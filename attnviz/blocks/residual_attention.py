"""Residual attention: the soft mask branch of Wang et al., "Residual Attention Network for
Image Classification", CVPR 2017."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PreActUnit(nn.Module):
    """Pre-activation residual unit x + conv(ReLU(BN(conv(ReLU(BN(x)))))) (3x3 convs)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _units(channels: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[PreActUnit(channels) for _ in range(n)])


class ResidualAttention(nn.Module):
    """Trunk and soft mask branch, H = (1 + M(x)) * T(x) (attention residual learning, Eq. 3).

    ``trunk`` is ``trunk_units`` residual units (t = 2). The soft mask branch is bottom-up
    top-down (Sec. 3.3): ``depth`` max-poolings, each followed by ``mask_units`` residual units
    (r = 1), with a skip-connection unit between levels; bilinear upsampling back to each level
    (adding that level's features and its skip), the top level adds the trunk output, then
    ``mask_head`` (BN-ReLU-1x1 conv, twice) and the named submodule ``gate`` (sigmoid), whose
    output M in [0, 1] has shape (B, C, H, W). The paper's attention module wraps this in
    p = 1 residual unit before and after; stack those around the block.
    """

    def __init__(
        self, channels: int, depth: int = 1, trunk_units: int = 2, mask_units: int = 1
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.trunk = _units(channels, trunk_units)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.down = nn.ModuleList([_units(channels, mask_units) for _ in range(depth)])
        self.skip = nn.ModuleList([PreActUnit(channels) for _ in range(depth - 1)])
        self.up = nn.ModuleList([_units(channels, mask_units) for _ in range(depth - 1)])
        self.mask_head = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1, bias=False),
        )
        self.gate = nn.Sigmoid()

    def _mask_level(self, x: Tensor, level: int) -> Tensor:
        """Mask features below ``x``'s resolution, upsampled back to it."""
        y = self.down[level](self.pool(x))
        if level + 1 < self.depth:
            y = self.up[level](self._mask_level(y, level + 1) + y + self.skip[level](y))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def mask(self, x: Tensor, trunk: Tensor) -> Tensor:
        """M(x) in [0, 1], shape (B, C, H, W)."""
        return self.gate(self.mask_head(self._mask_level(x, 0) + trunk))

    def forward(self, x: Tensor) -> Tensor:
        t = self.trunk(x)
        return (1 + self.mask(x, t)) * t
