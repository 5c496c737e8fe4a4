"""Squeeze-and-Excitation block (Hu et al., "Squeeze-and-Excitation Networks", 2018)."""

from __future__ import annotations

from torch import Tensor, nn


class SEBlock(nn.Module):
    """SE block: ``x * sigmoid(W2 relu(W1 GAP(x)))``.

    Squeeze z = GAP(x) (Eq. 2), excitation s = sigmoid(W2 delta(W1 z)) (Eq. 3), scale
    x_c * s_c (Eq. 4). The gate is the named submodule ``gate`` so that a forward hook on it
    reads the excitation s, shape (B, C, 1, 1).
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8) -> None:
        super().__init__()
        hidden = max(channels // reduction, min_hidden)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))
