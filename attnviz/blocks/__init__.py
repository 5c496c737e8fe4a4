"""Paper-faithful reference attention blocks, one file per mechanism.

``create_attn(name, channels, **kwargs)`` builds a block from the string registry
``ATTN_BLOCKS`` (``se``, ``cbam``, ``gc``, ``nl``; the non-local block takes ``mode=...``).
SK is a convolution, not a block applied to a feature map: use :class:`SKConv` directly.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .bam import BAM, BAMChannel, BAMSpatial
from .cbam import CBAM, ChannelGate, SpatialGate
from .danet import ChannelAttention, DualAttention, PositionAttention
from .gc import GCBlock, SpatialSoftmax
from .ion import DIRECTIONS, IRNN, DirectionalTerms, IONContext
from .non_local import NL_MODES, NonLocalAffinity, NonLocalBlock
from .residual_attention import ResidualAttention
from .scse import SCSE, ChannelSE, SpatialSE
from .se import SEBlock
from .self_attention import SelfAttention2d
from .sk import SKConv
from .stn import SpatialTransformer

ATTN_BLOCKS: dict[str, Callable[..., nn.Module]] = {
    "se": SEBlock,
    "cbam": CBAM,
    "gc": GCBlock,
    "nl": NonLocalBlock,
    "sa": SelfAttention2d,
    "danet": DualAttention,
    "pam": PositionAttention,
    "cam": ChannelAttention,
    "cse": ChannelSE,
    "sse": SpatialSE,
    "scse": SCSE,
    "bam": BAM,
    "ram": ResidualAttention,
    "stn": SpatialTransformer,
    "ion": IONContext,
}


def create_attn(name: str, channels: int, **kwargs) -> nn.Module:
    """Build the attention block registered as ``name`` for a ``channels``-channel map."""
    try:
        factory = ATTN_BLOCKS[name]
    except KeyError:
        raise ValueError(
            f"unknown attention block {name!r}; valid names: {sorted(ATTN_BLOCKS)}"
        ) from None
    return factory(channels, **kwargs)


__all__ = [
    "ATTN_BLOCKS",
    "BAM",
    "CBAM",
    "NL_MODES",
    "SCSE",
    "BAMChannel",
    "BAMSpatial",
    "ChannelAttention",
    "ChannelGate",
    "ChannelSE",
    "DIRECTIONS",
    "DirectionalTerms",
    "DualAttention",
    "GCBlock",
    "IONContext",
    "IRNN",
    "NonLocalAffinity",
    "NonLocalBlock",
    "PositionAttention",
    "ResidualAttention",
    "SEBlock",
    "SKConv",
    "SelfAttention2d",
    "SpatialGate",
    "SpatialSE",
    "SpatialSoftmax",
    "SpatialTransformer",
    "create_attn",
]
