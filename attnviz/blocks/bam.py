"""BAM: Bottleneck Attention Module (Park et al., BMVC 2018)."""

from __future__ import annotations

from torch import Tensor, nn

BAM_COMBINES = ("add", "mul")


class BAMChannel(nn.Module):
    """Channel branch M_c(F) = BN(MLP(AvgPool(F))) (Eq. 2), *before* the sigmoid: (B, C, 1, 1).

    MLP: C -> C/r -> C with BN + ReLU on the hidden layer (official code); ``reduction`` r = 16.
    The trailing BN of Eq. 2 is ``bn``. Note: BatchNorm on a pooled vector needs batch > 1 in
    train mode.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.bn_hidden = nn.BatchNorm1d(hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels)
        self.bn = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        z = x.mean(dim=(2, 3))
        return self.bn(self.fc2(self.act(self.bn_hidden(self.fc1(z))))).reshape(b, c, 1, 1)


class BAMSpatial(nn.Module):
    """Spatial branch M_s(F) = BN(f3(f2(f1(f0(F))))) (Eq. 3), *before* the sigmoid: (B, 1, H, W).

    f0: 1x1 conv C -> C/r; f1, f2: 3x3 convs with dilation d (r = 16, d = 4 in the paper),
    each followed by BN + ReLU; f3: 1x1 conv C/r -> 1, then BN.
    """

    def __init__(self, channels: int, reduction: int = 16, dilation: int = 4, n_dilated: int = 2):
        super().__init__()
        hidden = max(channels // reduction, 1)
        layers: list[nn.Module] = [
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n_dilated):
            layers += [
                nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation),
                nn.BatchNorm2d(hidden),
                nn.ReLU(inplace=True),
            ]
        layers += [nn.Conv2d(hidden, 1, 1), nn.BatchNorm2d(1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class BAM(nn.Module):
    """BAM: F' = F + F * M(F), M(F) = sigmoid(M_c(F) + M_s(F)) (Eq. 1, 4).

    ``channel`` and ``spatial`` output the pre-sigmoid branches (B, C, 1, 1) and (B, 1, H, W);
    the named submodule ``gate`` (the sigmoid) outputs the combined map M (B, C, H, W).
    ``combine="mul"`` uses sigmoid(M_c * M_s) as the authors' official code does
    (``1 + sigmoid(channel_att * spatial_att)``); the paper adds, the default here.
    """

    def __init__(
        self,
        channels: int,
        reduction: int = 16,
        dilation: int = 4,
        combine: str = "add",
    ) -> None:
        super().__init__()
        if combine not in BAM_COMBINES:
            raise ValueError(f"unknown BAM combine {combine!r}; valid: {BAM_COMBINES}")
        self.combine = combine
        self.channel = BAMChannel(channels, reduction)
        self.spatial = BAMSpatial(channels, reduction, dilation)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        mc, ms = self.channel(x), self.spatial(x)
        logits = mc + ms if self.combine == "add" else mc * ms
        return x + x * self.gate(logits)

    def extra_repr(self) -> str:
        return f"combine={self.combine!r}"
