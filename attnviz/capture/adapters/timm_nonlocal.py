"""timm ``NonLocalAttn``: softmax(bmm(t^T, p) * scale) over keys, rows are queries.

The softmax is functional: its output is intercepted as the module makes it (nothing is
recomputed, so reading costs a copy, not a second bmm and softmax). ``queries=`` keeps the
selected rows of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, Written, register_adapter


def _attention(
    module: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps["softmax()"]
    if len(calls) != 1:
        raise RuntimeError(f"NonLocalAttn called softmax {len(calls)} times; expected once")
    h, w = inputs[0].shape[-2:]
    grid = (int(h), int(w))
    return Reading(calls[0], {"query_grid": grid, "key_grid": grid})  # (B, HW, HW)


register_adapter(
    "timm.layers.non_local_attn.NonLocalAttn",
    kind="nl",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    describe=lambda m: {"instantiation": "embedded_gaussian", "scale": float(m.scale)},
    write=Written("softmax()"),  # the functional softmax, (B, HW, HW)
)
