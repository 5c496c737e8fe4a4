"""timm ``NonLocalAttn``: softmax(bmm(t^T, p) * scale) over keys, rows are queries.

The softmax is functional; it is recomputed here from the outputs of ``t`` and ``p`` with the
same operations, so the tensor equals the one the module used. With ``queries=`` only the
selected rows are computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Computed, Reading, Written, register_adapter


def _attention(
    module: nn.Module, taps: Mapping[str, Tensor], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    t, p = taps["t"], taps["p"]
    b, c, h, w = t.shape
    t = t.view(b, c, -1).permute(0, 2, 1)
    p = p.view(b, c, -1)
    if rows is not None:
        t = t[:, rows.to(t.device)]
    att = torch.softmax(torch.bmm(t, p) * module.scale, dim=2)
    return Reading(att, {"query_grid": (h, w), "key_grid": (h, w)}, rows_selected=rows is not None)


register_adapter(
    "timm.layers.non_local_attn.NonLocalAttn",
    kind="nl",
    read=Computed(taps=("t", "p"), compute=_attention),
    family="timm",
    describe=lambda m: {"instantiation": "embedded_gaussian", "scale": float(m.scale)},
    write=Written("softmax()"),  # the functional softmax, (B, HW, HW)
)
