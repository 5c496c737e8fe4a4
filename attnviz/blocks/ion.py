"""Inside-Outside Net context (Bell, Zitnick, Bala & Girshick, "Inside-Outside Net: Detecting
Objects in Context with Skip Pooling and Recurrent Neural Networks", CVPR 2016, arXiv
1512.04143, Sec. 3.1 and Fig. 4): four directional IRNN sweeps, two stacked.

The four directions are named by where their context comes from: ``from_left`` is the sweep
that moves right (its state at (y, x) has seen row y at columns 0..x), ``from_right`` moves
left, ``from_above`` moves down, ``from_below`` moves up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The sweep directions, named by the side of the map their context comes from.
DIRECTIONS = ("from_left", "from_right", "from_above", "from_below")


class IRNN(nn.Module):
    """Four-directional IRNN layer (Fig. 4): a shared input-to-hidden 1x1 conv (its output
    copied to the four directions), then per direction d the ReLU recurrence

        h_d(p) = max(0, W_d h_d(p - step_d) + u(p)),   h_d = 0 before the map's edge,

    with W_d (hidden x hidden) initialised to the identity (Le et al. 2015). Output
    (B, 4, hidden, H, W), the directions in :data:`DIRECTIONS` order. The input-to-hidden
    conv is followed by batch norm (ION normalises its context by L2 instead; batch norm keeps
    a small network trainable from scratch).
    """

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.input = nn.Sequential(nn.Conv2d(in_channels, hidden, 1, bias=False),
                                   nn.BatchNorm2d(hidden))  # fmt: skip
        self.recurrent = nn.Parameter(torch.eye(hidden).repeat(4, 1, 1))  # (4, hidden, hidden)

    @staticmethod
    def _sweep(u: Tensor, w: Tensor) -> Tensor:
        """Two sweeps along the last axis: u (B, 2, C, L, T), w (2, C, C) -> (B, 2, C, L, T)."""
        states = []
        h = u.new_zeros(u.shape[:-1])
        for t in range(u.shape[-1]):
            h = torch.relu(torch.einsum("dij,bdjl->bdil", w, h) + u[..., t])
            states.append(h)
        return torch.stack(states, dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        u = self.input(x)  # (B, hidden, H, W)
        w = self.recurrent
        rows = torch.stack((u, u.flip(-1)), dim=1)  # rightwards, leftwards along W
        rows = self._sweep(rows, w[:2])
        cols = torch.stack((u, u.flip(-2)), dim=1).transpose(-1, -2)  # down, up along H
        cols = self._sweep(cols, w[2:]).transpose(-1, -2)
        return torch.stack(
            (rows[:, 0], rows[:, 1].flip(-1), cols[:, 0], cols[:, 1].flip(-2)), dim=1
        )


class DirectionalTerms(nn.Module):
    """The context's 1x1 output conv split by direction: (B, 4, hidden, H, W) ->
    (B, 4, C, H, W), t_d = V_d h_d. Their sum over d is the conv of the concatenated
    directions (ION's concat + 1x1 conv, bias-free), so each t_d is exactly direction d's
    part of what the block adds to its input."""

    def __init__(self, hidden: int, channels: int) -> None:
        super().__init__()
        self.channels = channels
        # V_d (4, C, hidden), zero so that the block starts as the identity
        self.weight = nn.Parameter(torch.zeros(4, channels, hidden))

    def forward(self, h: Tensor) -> Tensor:
        return torch.einsum("dch,bdhyx->bdcyx", self.weight, h)


class IONContext(nn.Module):
    """ION's context block on a (B, C, H, W) map: two stacked four-directional IRNNs (the
    second's input-to-hidden conv mixes the first's concatenated directions, Fig. 4), then

        y = x + sum_d V_d h2_d        (``terms``: :class:`DirectionalTerms`)

    ION concatenates the context with the region's own features and reduces them by a 1x1
    conv; the residual sum here is that conv with the identity on x, so an image classifier
    can carry the block anywhere in its trunk. After two sweeps every position has seen the
    whole map (one horizontal and one vertical step of context).

    What attnviz reads here (kind ``ion``) is where the context each position receives comes
    from: the share ||t_d(p)|| / sum_d' ||t_d'(p)|| of each direction. It is a decomposition
    of the added context, not attention: ION has no gate, and nothing in the block selects or
    weights the directions by these numbers; terms of different directions can cancel (the
    shares count their sizes, not their net effect). The sweeps' magnitudes ||h_d(p)|| are
    read beside it (kind ``ion_sweep``).
    """

    def __init__(self, channels: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or channels
        self.channels = channels
        self.hidden = hidden
        self.irnn1 = IRNN(channels, hidden)
        self.irnn2 = IRNN(4 * hidden, hidden)
        self.terms = DirectionalTerms(hidden, channels)

    def context_terms(self, x: Tensor) -> Tensor:
        """t_d (B, 4, C, H, W), in :data:`DIRECTIONS` order."""
        h1 = self.irnn1(x)
        h2 = self.irnn2(h1.flatten(1, 2))
        return self.terms(h2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.context_terms(x).sum(dim=1)
