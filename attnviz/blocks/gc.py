"""Global Context block (Cao et al., "GCNet: Non-local Networks Meet Squeeze-Excitation
Networks and Beyond", 2019)."""

from __future__ import annotations

from torch import Tensor, nn


class SpatialSoftmax(nn.Module):
    """Softmax over all H*W positions: (B, 1, H, W) logits -> (B, 1, H, W) weights."""

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c, h * w).softmax(dim=-1).reshape(b, c, h, w)


class GCBlock(nn.Module):
    """GC block (Eq. 4): z_i = x_i + W_v2 ReLU(LN(W_v1 sum_j a_j x_j)), a = softmax_j(W_k x_j).

    Context modelling: ``conv_mask`` (1x1, C -> 1) then ``softmax`` over all positions, whose
    output (B, 1, H, W) is the attention read by capture; transform ``channel_add``: 1x1 conv
    -> LayerNorm([C', 1, 1]) -> ReLU -> 1x1 conv (zero-initialised, so the block starts as the
    identity); fusion by broadcast addition.
    """

    def __init__(self, channels: int, ratio: float = 1 / 4) -> None:
        super().__init__()
        hidden = max(int(channels * ratio), 1)
        self.conv_mask = nn.Conv2d(channels, 1, 1)
        self.softmax = SpatialSoftmax()
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, hidden, 1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, 1),
        )
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        att = self.softmax(self.conv_mask(x)).reshape(b, 1, h * w)  # (B, 1, N)
        context = (x.reshape(b, c, h * w) * att).sum(dim=-1).reshape(b, c, 1, 1)
        return x + self.channel_add(context)
