"""SAGAN self-attention (Zhang et al., "Self-Attention Generative Adversarial Networks", 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SelfAttention2d(nn.Module):
    """SAGAN self-attention: y_i = gamma * o_i + x_i (Sec. 3, Eq. 1-3).

    ``query`` and ``key`` are 1x1 convs to C / ``key_ratio`` (C/8 in the paper), ``value`` (h)
    a 1x1 conv to C. The paper writes s_ij = f(x_i)^T g(x_j) and beta_ji = softmax over i of
    s_ij for output position j; here, with i the query position, beta_ij = softmax_j(q_i . k_j)
    (q = ``query`` plays g, k = ``key`` plays f). The named submodule ``softmax`` outputs
    beta (B, N, N), one row per query position i = y * W + x, and o_i = sum_j beta_ij h(x_j).
    ``gamma`` is a learned scalar initialised to 0, so the block starts as the identity.

    The paper adds a further 1x1 conv ``v`` after the weighted sum (h to C-bar, v back to C);
    the authors' public code (and this block) maps the value straight to C with no output
    conv (v = identity). The block's residual is ``gamma * o``, so ``output - input`` at this
    site is gamma * o.
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
        self.gamma = nn.Parameter(torch.zeros(1))

    def attend(self, x: Tensor) -> Tensor:
        """o = sum_j beta_ij h(x_j) as (B, C, H, W), the block's output before gamma and x."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.key(x).flatten(2)  # (B, C', N)
        beta = self.softmax(torch.bmm(q, k))  # (B, N, N), rows = queries
        v = self.value(x).flatten(2)  # (B, C, N)
        return torch.bmm(v, beta.transpose(1, 2)).reshape(b, c, h, w)

    def forward(self, x: Tensor) -> Tensor:
        return self.gamma * self.attend(x) + x
