"""Adapters for attnviz's reference blocks beyond SE/SK/CBAM/NL/GC: SAGAN self-attention,
DANet (position, channel), scSE (cSE, sSE), BAM, residual attention, STN, ION's context. Their
kinds are defined with the others in ``kinds.py``.

Every block computes its attention in a named submodule (``softmax``, ``gate``, ``theta``...)
or is itself the attention (BAM's branches, STN's grid generator), so each adapter reads one
submodule output, and the tensor is the one the block went on to use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..registry import register_adapter

_PKG = "attnviz.blocks"


def _square_grid(module: nn.Module, inputs: tuple, output: Any) -> dict:
    h, w = int(inputs[0].shape[-2]), int(inputs[0].shape[-1])
    return {"query_grid": (h, w), "key_grid": (h, w)}


register_adapter(
    f"{_PKG}.self_attention.SelfAttention2d",
    kind="sa",
    read="softmax",
    family="attnviz",
    meta=_square_grid,
    describe=lambda m: {"key_channels": m.key_channels, "gamma": float(m.gamma.detach()[0])},
)
register_adapter(
    f"{_PKG}.danet.PositionAttention",
    kind="pam",
    read="softmax",
    family="attnviz",
    meta=_square_grid,
    describe=lambda m: {"key_channels": m.key_channels, "alpha": float(m.alpha.detach()[0])},
)
register_adapter(
    f"{_PKG}.danet.ChannelAttention",
    kind="cam",
    read="softmax",
    family="attnviz",
    describe=lambda m: {"energy": m.energy, "beta": float(m.beta.detach()[0])},
)
register_adapter(f"{_PKG}.scse.ChannelSE", kind="cse", read="gate", family="attnviz")
register_adapter(f"{_PKG}.scse.SpatialSE", kind="sse", read="gate", family="attnviz")
register_adapter(f"{_PKG}.bam.BAMChannel", kind="bam_channel", read="", family="attnviz")
register_adapter(f"{_PKG}.bam.BAMSpatial", kind="bam_spatial", read="", family="attnviz")
register_adapter(
    f"{_PKG}.bam.BAM",
    kind="bam",
    read="gate",
    family="attnviz",
    describe=lambda m: {"combine": m.combine},
)
register_adapter(
    f"{_PKG}.residual_attention.ResidualAttention",
    kind="ram",
    read="gate",
    family="attnviz",
    describe=lambda m: {"depth": m.depth},
)
register_adapter(f"{_PKG}.stn.SpatialTransformer", kind="stn_theta", read="theta", family="attnviz")
register_adapter(f"{_PKG}.stn.AffineGrid", kind="stn_grid", read="", family="attnviz")


def direction_shares(terms: Tensor, eps: float = 1e-12) -> Tensor:
    """(B, 4, C, H, W) terms -> (B, 4, H, W): ||t_d(p)||_2 / sum_d' ||t_d'(p)||_2 (a position
    that receives no context gets 1/4 each)."""
    norms = terms.norm(dim=2)
    total = norms.sum(dim=1, keepdim=True)
    return torch.where(total > eps, norms / total.clamp_min(eps), torch.full_like(norms, 0.25))


def sweep_magnitudes(states: Tensor) -> Tensor:
    """(B, 4, hidden, H, W) IRNN states -> (B, 4, H, W): ||h_d(p)||_2."""
    return states.norm(dim=2)


_ION_NO_WRITE = (
    "ION's direction shares are read from the context the block adds; the block applies no "
    "weight that could be replaced (scale a direction's terms instead)"
)
register_adapter(
    f"{_PKG}.ion.IONContext",
    kind="ion",
    read="terms",
    transform=direction_shares,
    family="attnviz",
    write=_ION_NO_WRITE,
    describe=lambda m: {"hidden": m.hidden},
)
register_adapter(
    f"{_PKG}.ion.IRNN",
    kind="ion_sweep",
    read="",
    transform=sweep_magnitudes,
    family="attnviz",
    write="an IRNN's state is a sweep's memory, not attention; attnviz reads its size only",
    describe=lambda m: {"hidden": m.hidden},
)
