"""DANet position and channel attention (Fu et al., "Dual Attention Network for Scene
Segmentation", CVPR 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

CHANNEL_ENERGIES = ("max_minus", "plain")


class PositionAttention(nn.Module):
    """Position attention module (PAM, Sec. 3.2, Eq. 1-2).

    ``query`` and ``key`` are 1x1 convs to C/8, D = ``value`` a 1x1 conv to C. As in the
    official code, s_ji = softmax_i(query_j . key_i) is the attention of output (query) position
    j over positions i (the paper writes exp(B_i . C_j), the same form with the two projections'
    roles swapped), computed by the named submodule ``softmax``: (B, N, N), one row per query
    j = y * W + x. E_j = alpha * sum_i s_ji D_i + A_j with ``alpha`` learned, initialised to 0.
    """

    def __init__(self, channels: int, key_ratio: int = 8, min_key_channels: int = 1) -> None:
        super().__init__()
        key_channels = max(channels // key_ratio, min_key_channels)
        self.channels = channels
        self.key_channels = key_channels
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.softmax = nn.Softmax(dim=-1)
        self.alpha = nn.Parameter(torch.zeros(1))

    def attend(self, x: Tensor) -> Tensor:
        """sum_i s_ji D_i as (B, C, H, W)."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        s = self.softmax(torch.bmm(q, k))  # (B, N, N)
        v = self.value(x).flatten(2)  # (B, C, N)
        return torch.bmm(v, s.transpose(1, 2)).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.alpha * self.attend(x) + x


class ChannelAttention(nn.Module):
    """Channel attention module (CAM, Sec. 3.3, Eq. 3-4).

    Energy e_ji = A_j . A_i over all positions (no convolutions). The paper's Eq. 3 takes
    x_ji = softmax_i(e_ji) (``energy="plain"``); the authors' official code (and the default
    here, ``energy="max_minus"``) takes softmax_i(max_k e_jk - e_ji), which favours channels
    that are *less* similar to channel j. The named submodule ``softmax`` outputs the
    (B, C, C) attention, one row per output channel j over source channels i.
    E_j = beta * sum_i x_ji A_i + A_j with ``beta`` a learned scalar initialised to 0.
    """

    def __init__(self, channels: int, energy: str = "max_minus") -> None:
        super().__init__()
        if energy not in CHANNEL_ENERGIES:
            raise ValueError(f"unknown energy {energy!r}; valid: {CHANNEL_ENERGIES}")
        self.channels = channels
        self.energy = energy
        self.softmax = nn.Softmax(dim=-1)
        self.beta = nn.Parameter(torch.zeros(1))

    def attend(self, x: Tensor) -> Tensor:
        """sum_i x_ji A_i as (B, C, H, W)."""
        b, c, h, w = x.shape
        a = x.reshape(b, c, h * w)
        e = torch.bmm(a, a.transpose(1, 2))  # (B, C, C)
        if self.energy == "max_minus":
            e = e.amax(dim=-1, keepdim=True) - e
        att = self.softmax(e)
        return torch.bmm(att, a).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.beta * self.attend(x) + x

    def extra_repr(self) -> str:
        return f"channels={self.channels}, energy={self.energy!r}"


class DualAttention(nn.Module):
    """Both DANet modules in parallel on the same features, fused by sum (Sec. 3.4).

    y = x + alpha * PAM-term + beta * CAM-term = ``position(x) + channel(x) - x``. DANet's head
    wraps each module in convolutions before the sum; this block keeps only the attention so it
    can sit inside a residual stage (and starts as the identity).
    """

    def __init__(self, channels: int, key_ratio: int = 8, energy: str = "max_minus") -> None:
        super().__init__()
        self.position = PositionAttention(channels, key_ratio=key_ratio)
        self.channel = ChannelAttention(channels, energy=energy)

    def forward(self, x: Tensor) -> Tensor:
        return self.position(x) + self.channel(x) - x
