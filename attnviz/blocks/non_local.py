"""Non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018).

The module is named ``non_local`` because ``nl`` is a Python keyword.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NL_MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")


class NonLocalAffinity(nn.Module):
    """The normalised pairwise function f(x_i, x_j) / C(x) of one instantiation (Sec. 3.2).

    ``forward(theta_x, phi_x)`` with theta_x (B, N, C') and phi_x (B, C', Nk) returns the
    attention (B, N, Nk), one row per query i:

    * ``gaussian`` / ``embedded_gaussian``: softmax_j(theta_i . phi_j) (Eq. 2-3);
    * ``dot_product``: theta_i . phi_j / Nk (Eq. 4);
    * ``concatenation``: ReLU(w^T [theta_i; phi_j]) / Nk (Eq. 5); w is ``project``.
    """

    def __init__(self, mode: str, inter_channels: int) -> None:
        super().__init__()
        if mode not in NL_MODES:
            raise ValueError(f"unknown non-local mode {mode!r}; valid modes: {NL_MODES}")
        self.mode = mode
        self.project = (
            nn.Linear(2 * inter_channels, 1, bias=False) if mode == "concatenation" else None
        )

    def forward(self, theta_x: Tensor, phi_x: Tensor) -> Tensor:
        nk = phi_x.shape[-1]
        if self.mode == "concatenation":
            c = theta_x.shape[-1]
            w = self.project.weight[0]
            # w^T [theta_i; phi_j] = w_theta . theta_i + w_phi . phi_j
            a = theta_x @ w[:c]  # (B, N)
            b = torch.einsum("c,bcn->bn", w[c:], phi_x)  # (B, Nk)
            return torch.relu(a[:, :, None] + b[:, None, :]) / nk
        f = torch.bmm(theta_x, phi_x)
        if self.mode == "dot_product":
            return f / nk
        return f.softmax(dim=-1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class NonLocalBlock(nn.Module):
    """Non-local block z_i = W_z y_i + x_i, y_i = sum_j f(x_i, x_j) g(x_j) / C(x) (Eq. 1, 6).

    ``theta``, ``phi``, ``g`` are 1x1 convs to C' = ``inter_channels`` (default C / 2); for the
    plain ``gaussian`` mode theta and phi are identities, so f = exp(x_i . x_j). ``pool``
    (2x2 max pooling when ``sub_sample``) is applied to the phi and g outputs. ``affinity``
    returns the normalised attention (B, N, Nk) read by capture. ``W_z`` is a 1x1 conv followed
    by BN whose scale is zero-initialised, so the block starts as the identity (``bn_layer=False``
    zero-initialises the conv instead).
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int | None = None,
        mode: str = "embedded_gaussian",
        sub_sample: bool = False,
        bn_layer: bool = True,
    ) -> None:
        super().__init__()
        inter = inter_channels or max(in_channels // 2, 1)
        self.in_channels = in_channels
        self.inter_channels = inter
        self.mode = mode
        self.sub_sample = sub_sample
        if mode == "gaussian":
            self.theta: nn.Module = nn.Identity()
            self.phi: nn.Module = nn.Identity()
            affinity_channels = in_channels
        else:
            self.theta = nn.Conv2d(in_channels, inter, 1)
            self.phi = nn.Conv2d(in_channels, inter, 1)
            affinity_channels = inter
        self.g = nn.Conv2d(in_channels, inter, 1)
        self.pool: nn.Module = nn.MaxPool2d(2) if sub_sample else nn.Identity()
        self.affinity = NonLocalAffinity(mode, affinity_channels)
        if bn_layer:
            self.W_z = nn.Sequential(nn.Conv2d(inter, in_channels, 1), nn.BatchNorm2d(in_channels))
            nn.init.zeros_(self.W_z[1].weight)
            nn.init.zeros_(self.W_z[1].bias)
        else:
            self.W_z = nn.Conv2d(inter, in_channels, 1)
            nn.init.zeros_(self.W_z.weight)
            nn.init.zeros_(self.W_z.bias)

    def key_grid(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) of the key grid for an input of ``height`` x ``width``."""
        return (height // 2, width // 2) if self.sub_sample else (height, width)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        theta_x = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi_x = self.pool(self.phi(x)).flatten(2)  # (B, C', Nk)
        g_x = self.pool(self.g(x)).flatten(2).transpose(1, 2)  # (B, Nk, C')
        att = self.affinity(theta_x, phi_x)  # (B, N, Nk)
        y = torch.bmm(att, g_x).transpose(1, 2).reshape(b, self.inter_channels, h, w)
        return self.W_z(y) + x
