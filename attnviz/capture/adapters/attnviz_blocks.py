"""attnviz's own reference blocks (``attnviz.blocks``): each computes its attention in a
named submodule, so every read is the output of that submodule."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..registry import register_adapter


def _sk_fields(module: nn.Module) -> dict:
    dilations = [
        next(m for m in path.modules() if isinstance(m, nn.Conv2d)).dilation[0]
        for path in module.paths
    ]
    return {"branch_receptive_field": [2 * d + 1 for d in dilations]}


def _nl_grids(module: nn.Module, inputs: tuple, output: Any) -> dict:
    h, w = inputs[0].shape[-2:]
    return {"query_grid": (int(h), int(w)), "key_grid": tuple(module.key_grid(int(h), int(w)))}


_PKG = "attnviz.blocks"
register_adapter(f"{_PKG}.se.SEBlock", kind="se", read="gate", family="attnviz")
register_adapter(
    f"{_PKG}.sk.SKConv", kind="sk", read="select", family="attnviz", describe=_sk_fields
)
register_adapter(f"{_PKG}.cbam.ChannelGate", kind="cbam_channel", read="gate", family="attnviz")
register_adapter(f"{_PKG}.cbam.SpatialGate", kind="cbam_spatial", read="gate", family="attnviz")
register_adapter(f"{_PKG}.gc.GCBlock", kind="gc", read="softmax", family="attnviz")
register_adapter(
    f"{_PKG}.non_local.NonLocalBlock",
    kind="nl",
    read="affinity",
    family="attnviz",
    meta=_nl_grids,
    describe=lambda m: {"instantiation": m.mode, "sub_sample": bool(m.sub_sample)},
)
