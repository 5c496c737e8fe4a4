"""Selective Kernel convolution (Li et al., "Selective Kernel Networks", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SKConv(nn.Module):
    """SK convolution with M paths: split, fuse, select.

    Split (Sec. 3.1): path m is a 3x3 grouped conv with dilation m + 1 (path 0 has the smallest
    receptive field; path 1 is the paper's "5x5" as a dilated 3x3), each followed by BN + ReLU,
    giving U_m. Fuse: U = sum_m U_m (Eq. 1), s = GAP(U) (Eq. 2), z = ReLU(BN(W_r s)) with
    d = max(C / r, L) (Eq. 3, ``fc_reduce``). Select: logits ``fc_select(z)`` viewed as
    (B, M, C, 1, 1), ``select`` = softmax over M (Eq. 5), V = sum_m a_m * U_m (Eq. 6).
    A forward hook on ``select`` reads the attention a, shape (B, M, C, 1, 1).

    Note: ``fc_reduce`` holds a BatchNorm on a 1x1 map, so train mode needs batch size > 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        num_paths: int = 2,
        groups: int = 1,
        reduction: int = 16,
        min_dim: int = 32,
    ) -> None:
        super().__init__()
        self.num_paths = num_paths
        self.out_channels = out_channels
        self.paths = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    out_channels,
                    3,
                    stride=stride,
                    padding=m + 1,
                    dilation=m + 1,
                    groups=groups,
                    bias=False,
                ),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )
            for m in range(num_paths)
        )
        d = max(out_channels // reduction, min_dim)
        self.fc_reduce = nn.Sequential(
            nn.Conv2d(out_channels, d, 1, bias=False), nn.BatchNorm2d(d), nn.ReLU(inplace=True)
        )
        self.fc_select = nn.Conv2d(d, num_paths * out_channels, 1)
        self.select = nn.Softmax(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        feats = torch.stack([path(x) for path in self.paths], dim=1)  # (B, M, C, H, W)
        s = feats.sum(dim=1).mean(dim=(2, 3), keepdim=True)  # (B, C, 1, 1)
        logits = self.fc_select(self.fc_reduce(s))
        att = self.select(logits.view(x.shape[0], self.num_paths, self.out_channels, 1, 1))
        return (feats * att).sum(dim=1)
