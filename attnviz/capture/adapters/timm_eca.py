"""timm efficient channel attention: ``EcaModule`` and ``CecaModule``; gate output (B, 1, C)."""

from __future__ import annotations

from ..registry import register_adapter

for _type in ("timm.layers.eca.EcaModule", "timm.layers.eca.CecaModule"):
    register_adapter(_type, kind="eca", read="gate", family="timm")
