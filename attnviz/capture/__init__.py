"""Capture: find attention sites in a model and record their tensors safely."""

from .core import (
    AttentionCache,
    Capture,
    CompiledModelError,
    capture,
    find_sites,
    unread_modules,
)
from .intervene import Intervention, NotWritableError, intervene
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
from .policies import POLICIES, Policy, PolicyError, get_policy, register_policy
from .reductions import REDUCTIONS
from .registry import (
    Adapter,
    Computed,
    Intercepted,
    Reading,
    Written,
    adapter_for,
    register_adapter,
    registered_adapters,
    softmax_over_positions,
    unregister_adapter,
)
from .site import Site, stage_block

__all__ = [
    "KINDS",
    "POLICIES",
    "ROLES",
    "CompiledModelError",
    "REDUCTIONS",
    "Adapter",
    "AttentionCache",
    "Capture",
    "Computed",
    "Intercepted",
    "Intervention",
    "NotWritableError",
    "Policy",
    "PolicyError",
    "Written",
    "Kind",
    "Reading",
    "Site",
    "adapter_for",
    "capture",
    "find_sites",
    "get_kind",
    "get_policy",
    "intervene",
    "is_query_kind",
    "kinds_with_role",
    "query_kinds",
    "register_adapter",
    "register_kind",
    "register_policy",
    "registered_adapters",
    "softmax_over_positions",
    "stage_block",
    "unread_modules",
    "unregister_adapter",
    "window_to_grid",
]
