"""Capture: find attention sites in a model and record their tensors safely."""

from .core import (
    AttentionCache,
    Capture,
    CompiledModelError,
    capture,
    find_sites,
    unread_modules,
)
from .kinds import (
    KINDS,
    ROLES,
    Kind,
    get_kind,
    is_query_kind,
    kinds_with_role,
    query_kinds,
    register_kind,
    window_to_grid,
)
from .reductions import REDUCTIONS
from .registry import (
    Adapter,
    Computed,
    Intercepted,
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
    "ROLES",
    "CompiledModelError",
    "REDUCTIONS",
    "Adapter",
    "AttentionCache",
    "Capture",
    "Computed",
    "Intercepted",
    "Kind",
    "Reading",
    "Site",
    "adapter_for",
    "capture",
    "find_sites",
    "get_kind",
    "is_query_kind",
    "kinds_with_role",
    "query_kinds",
    "register_adapter",
    "register_kind",
    "registered_adapters",
    "softmax_over_positions",
    "stage_block",
    "unread_modules",
    "unregister_adapter",
    "window_to_grid",
]
