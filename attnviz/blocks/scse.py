"""Concurrent spatial and channel squeeze & excitation (Roy et al., "Concurrent Spatial and
Channel 'Squeeze & Excitation' in Fully Convolutional Networks", MICCAI 2018)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

SCSE_FUSIONS = ("add", "max")


class ChannelSE(nn.Module):
    """cSE (Sec. 2.1): x_c * sigmoid(W2 ReLU(W1 z))_c with z = GAP(x); W1 reduces C by ``reduction``
    (r = 2 in the paper). The named submodule ``gate`` outputs the gate (B, C, 1, 1)."""

    def __init__(self, channels: int, reduction: int = 2) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        z = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(z))))


class SpatialSE(nn.Module):
    """sSE (Sec. 2.2): x_{:,i,j} * sigmoid(W_sq . x_{:,i,j}); ``squeeze`` is the 1x1 conv C -> 1,
    the named submodule ``gate`` outputs the spatial gate q (B, 1, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(channels, 1, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.squeeze(x))


class SCSE(nn.Module):
    """scSE (Sec. 2.3): both recalibrations of the same input, fused.

    ``fusion="add"`` (default) is the MICCAI 2018 paper: x_scSE = x_cSE + x_sSE.
    ``fusion="max"`` is the element-wise max-out that the journal version (Roy et al., IEEE TMI
    2019) found best among its aggregation strategies.
    """

    def __init__(self, channels: int, reduction: int = 2, fusion: str = "add") -> None:
        super().__init__()
        if fusion not in SCSE_FUSIONS:
            raise ValueError(f"unknown scSE fusion {fusion!r}; valid: {SCSE_FUSIONS}")
        self.fusion = fusion
        self.cse = ChannelSE(channels, reduction)
        self.sse = SpatialSE(channels)

    def forward(self, x: Tensor) -> Tensor:
        c, s = self.cse(x), self.sse(x)
        return c + s if self.fusion == "add" else torch.maximum(c, s)

    def extra_repr(self) -> str:
        return f"fusion={self.fusion!r}"
