"""timm ``SplitAttn`` (ResNeSt, registry name ``splat``).

``rsoftmax`` (a ``RadixSoftmax``) returns the attention flattened as (B, R * C), radix-major:
with radix R > 1 a softmax over the R splits, read as (B, R, C) (kind ``splat``, role
``branch``); with radix 1 a sigmoid, read as a (B, C) channel gate (kind ``splat_gate``). The
splits share one kernel size, so branch indices are not receptive fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Computed, Reading, Written, register_adapter


def _attention(
    module: nn.Module, taps: Mapping[str, Tensor], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    a = taps["rsoftmax"]
    if module.radix > 1:
        a = a.view(a.shape[0], module.radix, -1)  # the view SplitAttn.forward applies
    return Reading(a)


def _describe(module: nn.Module) -> dict:
    conv = module.conv
    return {
        "radix": int(module.radix),
        "cardinality": int(module.rsoftmax.cardinality),
        "kernel_size": list(conv.kernel_size),
        "dilation": list(conv.dilation),
    }


register_adapter(
    "timm.layers.split_attn.SplitAttn",
    kind=lambda m: "splat" if m.radix > 1 else "splat_gate",
    read=Computed(taps=("rsoftmax",), compute=_attention),
    family="timm",
    describe=_describe,
    write=Written(
        "rsoftmax",
        view=lambda m, raw, inputs: _attention(m, {"rsoftmax": raw}, inputs, None, None).attention,
    ),
)
