"""Kinds of attention site: the canonical layout of each captured tensor.

Every adapter maps its implementation's raw tensor to the canonical layout of its kind,
so analyses never see implementation details (trailing 1x1 axes, (B, 1, C) ECA gates...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

Canonicalize = Callable[[Tensor], Tensor]


def per_channel(t: Tensor) -> Tensor:
    """(B, C, 1, 1), (B, 1, C) or (B, C) -> (B, C)."""
    return t.reshape(t.shape[0], -1)


def branches(t: Tensor) -> Tensor:
    """(B, M, C, 1, 1) or (B, M, C) -> (B, M, C)."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def spatial_map(t: Tensor) -> Tensor:
    """(B, 1, H, W) or (B, H, W) -> (B, H, W)."""
    if t.dim() == 4:
        if t.shape[1] != 1:
            raise ValueError(f"spatial attention must have one channel, got shape {tuple(t.shape)}")
        return t[:, 0]
    return t


def as_is(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class Kind:
    """One kind of attention: its name, alias prefix, axis names and canonical layout."""

    name: str
    prefix: str
    dims: tuple[str, ...]
    canonicalize: Canonicalize
    description: str
    is_distribution: bool = False  # rows along the last axis sum to 1 (softmax attention)


KINDS: dict[str, Kind] = {}


def register_kind(kind: Kind) -> Kind:
    """Add a kind (or replace one of the same name) and return it."""
    KINDS[kind.name] = kind
    return kind


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        from .registry import _ensure_builtin_adapters  # built-in adapters register more kinds

        _ensure_builtin_adapters()
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown attention kind {name!r}; valid kinds: {sorted(KINDS)}") from None


for _kind in (
    Kind("se", "SE", ("batch", "channel"), per_channel, "squeeze-and-excitation gate"),
    Kind(
        "sk",
        "SK",
        ("batch", "branch", "channel"),
        branches,
        "selective-kernel branch weights, softmax over branches; branch 0 = smallest field",
        is_distribution=False,
    ),
    Kind("eca", "ECA", ("batch", "channel"), per_channel, "efficient channel attention gate"),
    Kind("cbam_channel", "CBAMC", ("batch", "channel"), per_channel, "CBAM channel gate"),
    Kind("cbam_spatial", "CBAMS", ("batch", "height", "width"), spatial_map, "CBAM spatial gate"),
    Kind(
        "gc",
        "GC",
        ("batch", "height", "width"),
        spatial_map,
        "global-context attention, softmax over all H*W positions",
        is_distribution=True,
    ),
    Kind(
        "nonlocal",
        "NL",
        ("batch", "query", "key"),
        as_is,
        "non-local attention, one row per query position",
        is_distribution=True,
    ),
):
    register_kind(_kind)
