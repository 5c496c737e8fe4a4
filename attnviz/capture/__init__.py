"""Capture: find attention sites in a model and record their tensors safely."""

from .core import (
    AttentionCache,
    Capture,
    capture,
    find_sites,
    is_query_kind,
    query_kinds,
    register_query_kind,
)
from .kinds import KINDS, Kind, get_kind, register_kind
from .reductions import REDUCTIONS
from .registry import (
    Adapter,
    Computed,
    Reading,
    adapter_for,
    register_adapter,
    registered_adapters,
    softmax_over_positions,
    unregister_adapter,
)
from .site import Site, stage_block

__all__ = [
    "KINDS",
    "REDUCTIONS",
    "Adapter",
    "AttentionCache",
    "Capture",
    "Computed",
    "Kind",
    "Reading",
    "Site",
    "adapter_for",
    "capture",
    "find_sites",
    "get_kind",
    "is_query_kind",
    "query_kinds",
    "register_adapter",
    "register_kind",
    "register_query_kind",
    "registered_adapters",
    "softmax_over_positions",
    "stage_block",
    "unregister_adapter",
]
