"""timm ``GatherExcite`` (registry name ``ge``): the output of its ``gate``.

With extent 0 the gathered context is global, the gate is (B, C, 1, 1) and is read as a (B, C)
channel gate (kind ``ge``); with extent > 0 the context is gathered locally and resized to the
input, and the gate is a (B, C, H, W) map (kind ``ge_map``). Output = x * gate.
"""

from __future__ import annotations

from ..registry import register_adapter

register_adapter(
    "timm.layers.gather_excite.GatherExcite",
    kind=lambda m: "ge" if m.extent == 0 else "ge_map",
    read="gate",
    family="timm",
    describe=lambda m: {"extent": int(m.extent), "extra_params": m.gather is not None},
)
