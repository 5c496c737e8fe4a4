"""Kinds and adapters for attnviz's reference blocks beyond SE/SK/CBAM/NL/GC: SAGAN
self-attention, DANet (position, channel), scSE (cSE, sSE), BAM, residual attention, STN.

Every block computes its attention in a named submodule (``softmax``, ``gate``, ``theta``...)
or is itself the attention (BAM's branches, STN's grid generator), so each adapter reads one
submodule output, and the tensor is the one the block went on to use.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..core import register_query_kind
from ..kinds import Kind, as_is, per_channel, register_kind, spatial_map
from ..registry import register_adapter


def _full_map(t: Tensor) -> Tensor:
    """(B, C, H, W), kept; a broadcastable (B, C, 1, 1) map is not expected here."""
    if t.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) map, got {tuple(t.shape)}")
    return t


NEW_KINDS: tuple[Kind, ...] = (
    Kind(
        "self_attention",
        "SA",
        ("batch", "query", "key"),
        as_is,
        "SAGAN self-attention, softmax over key positions, one row per query position",
        is_distribution=True,
    ),
    Kind(
        "danet_position",
        "PAM",
        ("batch", "query", "key"),
        as_is,
        "DANet position attention, softmax over key positions, one row per query position",
        is_distribution=True,
    ),
    Kind(
        "danet_channel",
        "CAM",
        ("batch", "channel", "source_channel"),
        as_is,
        "DANet channel attention, one row per output channel, softmax over source channels",
        is_distribution=True,
    ),
    Kind("cse", "CSE", ("batch", "channel"), per_channel, "scSE channel gate (cSE), sigmoid"),
    Kind(
        "sse",
        "SSE",
        ("batch", "height", "width"),
        spatial_map,
        "scSE spatial gate (sSE), sigmoid of a 1x1 conv",
    ),
    Kind(
        "bam_channel",
        "BAMC",
        ("batch", "channel"),
        per_channel,
        "BAM channel branch M_c before the sigmoid (logits)",
    ),
    Kind(
        "bam_spatial",
        "BAMS",
        ("batch", "height", "width"),
        spatial_map,
        "BAM spatial branch M_s before the sigmoid (logits)",
    ),
    Kind(
        "bam",
        "BAM",
        ("batch", "channel", "height", "width"),
        _full_map,
        "BAM combined map M = sigmoid(M_c + M_s), F' = F + F * M",
    ),
    Kind(
        "residual_mask",
        "RAM",
        ("batch", "channel", "height", "width"),
        _full_map,
        "residual-attention soft mask M in [0, 1], output (1 + M) * T",
    ),
    Kind(
        "stn_theta",
        "STN",
        ("batch", "row", "column"),
        as_is,
        "spatial-transformer affine matrix theta (target -> source, normalised coordinates)",
    ),
    Kind(
        "stn_grid",
        "STNG",
        ("batch", "height", "width", "xy"),
        as_is,
        "spatial-transformer sampling grid: source (x, y) in [-1, 1] per output pixel",
    ),
)
for _kind in NEW_KINDS:
    register_kind(_kind)
register_query_kind("self_attention")
register_query_kind("danet_position")

_PKG = "attnviz.blocks"


def _square_grid(module: nn.Module, inputs: tuple, output: Any) -> dict:
    h, w = int(inputs[0].shape[-2]), int(inputs[0].shape[-1])
    return {"query_grid": (h, w), "key_grid": (h, w)}


register_adapter(
    f"{_PKG}.self_attention.SelfAttention2d",
    kind="self_attention",
    read="softmax",
    family="attnviz",
    meta=_square_grid,
    describe=lambda m: {"key_channels": m.key_channels, "gamma": float(m.gamma.detach()[0])},
)
register_adapter(
    f"{_PKG}.danet.PositionAttention",
    kind="danet_position",
    read="softmax",
    family="attnviz",
    meta=_square_grid,
    describe=lambda m: {"key_channels": m.key_channels, "alpha": float(m.alpha.detach()[0])},
)
register_adapter(
    f"{_PKG}.danet.ChannelAttention",
    kind="danet_channel",
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
    kind="residual_mask",
    read="gate",
    family="attnviz",
    describe=lambda m: {"depth": m.depth},
)
register_adapter(f"{_PKG}.stn.SpatialTransformer", kind="stn_theta", read="theta", family="attnviz")
register_adapter(f"{_PKG}.stn.AffineGrid", kind="stn_grid", read="", family="attnviz")
