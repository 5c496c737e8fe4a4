"""Spatial transformer (Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AffineTheta(nn.Module):
    """Regression layer of the localisation net: features (B, F) -> theta (B, 2, 3).

    Initialised to the identity transform (zero weights, bias [1, 0, 0, 0, 1, 0]), as the paper
    and the reference implementations do.
    """

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, 6)
        nn.init.zeros_(self.fc.weight)
        with torch.no_grad():
            self.fc.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))

    def forward(self, h: Tensor) -> Tensor:
        return self.fc(h).reshape(-1, 2, 3)


class AffineGrid(nn.Module):
    """Grid generator T_theta(G) (Eq. 1): ``affine_grid(theta, size)`` -> (B, H', W', 2).

    The last axis holds the normalised source coordinates (x, y) in [-1, 1] (x = -1 is the
    left edge); ``align_corners=False`` puts -1 and 1 on the outer pixel edges.
    """

    def __init__(self, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, theta: Tensor, size: tuple[int, int, int, int]) -> Tensor:
        return F.affine_grid(theta, list(size), align_corners=self.align_corners)


class GridSampler(nn.Module):
    """Bilinear sampler (Eq. 3-5): ``grid_sample(x, grid)``, zeros outside the input."""

    def __init__(self, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners

    def forward(self, x: Tensor, grid: Tensor) -> Tensor:
        return F.grid_sample(
            x, grid, mode="bilinear", padding_mode="zeros", align_corners=self.align_corners
        )


class SpatialTransformer(nn.Module):
    """Localisation net -> affine theta -> sampling grid -> sampled output (Sec. 3).

    ``localization``: two 3x3 conv + ReLU + 2x2 max-pool stages, adaptive average pooling to
    4x4 and a hidden fc layer; ``theta`` (:class:`AffineTheta`) gives theta (B, 2, 3);
    ``grid`` (:class:`AffineGrid`) the sampling grid (B, H', W', 2); ``sampler`` the output.
    ``out_size`` (H', W') defaults to the input's size.
    """

    def __init__(
        self,
        channels: int,
        out_size: tuple[int, int] | None = None,
        loc_channels: int = 8,
        hidden: int = 32,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.out_size = out_size
        self.localization = nn.Sequential(
            nn.Conv2d(channels, loc_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(loc_channels, loc_channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(loc_channels * 16, hidden),
            nn.ReLU(inplace=True),
        )
        self.theta = AffineTheta(hidden)
        self.grid = AffineGrid(align_corners)
        self.sampler = GridSampler(align_corners)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        out_h, out_w = self.out_size or (h, w)
        theta = self.theta(self.localization(x))
        grid = self.grid(theta, (b, c, out_h, out_w))
        return self.sampler(x, grid)
