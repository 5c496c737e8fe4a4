"""attnviz: see and measure what the attention modules of convolutional networks do.

Data flows one way: ``capture`` (hooks, cache) -> ``analysis`` (result objects) -> ``plot``
(matplotlib figures).
"""

from __future__ import annotations

from .capture import (
    AttentionCache,
    Computed,
    Reading,
    Site,
    capture,
    find_sites,
    register_adapter,
)
from .errors import AttnvizError, NoAttentionSitesError

__version__ = "0.1.0"

__all__ = [
    "AttentionCache",
    "AttnvizError",
    "Computed",
    "NoAttentionSitesError",
    "Reading",
    "Site",
    "__version__",
    "capture",
    "find_sites",
    "register_adapter",
]
