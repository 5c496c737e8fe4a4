"""Named reductions applied inside the hook, so the full attention tensor is never kept.

A reduction takes the canonical tensor of one forward and its :class:`Site` and returns a
tensor whose first axis is the batch (or ``None`` to keep nothing, e.g. when the callable
feeds its own accumulators).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .site import Site

Reduction = Callable[[Tensor, Site], "Tensor | None"]


def _mean(t: Tensor, site: Site) -> Tensor:
    return t.reshape(t.shape[0], -1).mean(dim=1)


def _max(t: Tensor, site: Site) -> Tensor:
    return t.reshape(t.shape[0], -1).amax(dim=1)


def _channel_mean(t: Tensor, site: Site) -> Tensor:
    if "channel" not in site.dims:
        raise ValueError(f"'channel_mean' needs a channel axis; site {site.name} has {site.dims}")
    return t.mean(dim=site.dims.index("channel"))


def _spatial_mean(t: Tensor, site: Site) -> Tensor:
    axes = tuple(
        i for i, d in enumerate(site.dims) if d in ("height", "width", "key", "window_key")
    )
    if not axes:
        raise ValueError(f"'spatial_mean' needs spatial axes; site {site.name} has {site.dims}")
    return t.mean(dim=axes)


def _entropy(t: Tensor, site: Site) -> Tensor:
    """Shannon entropy (nats) of each attention distribution: per query row, or per map."""
    if site.kind in ("gc",) or site.dims[-2:] == ("height", "width"):
        p = t.reshape(t.shape[0], -1)
    else:
        p = t
    return -(p * torch.log(p.clamp_min(1e-30))).sum(dim=-1)


REDUCTIONS: dict[str, Reduction] = {
    "mean": _mean,
    "max": _max,
    "channel_mean": _channel_mean,
    "spatial_mean": _spatial_mean,
    "entropy": _entropy,
}


def resolve_reduction(reduce: str | Reduction | None) -> Reduction | None:
    if reduce is None or callable(reduce):
        return reduce
    try:
        return REDUCTIONS[reduce]
    except KeyError:
        raise ValueError(
            f"unknown reduction {reduce!r}; named reductions: {sorted(REDUCTIONS)}, "
            "or pass a callable (tensor, site) -> tensor | None"
        ) from None
