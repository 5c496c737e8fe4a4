"""timm CrossViT (``timm.models.crossvit.CrossAttention``): cross-attention token fusion.

CrossViT (Chen et al. 2021, eq. 7-8) fuses two branches through their class tokens: the class
token of branch i (projected to branch j's width) is the only query, the keys are that class
token and branch j's patches: ``softmax(q_cls k^T / sqrt(d))``. The module calls ``softmax``
itself (no fused path): its (B, heads, 1, N) output is read as it is. The keys' patch grid is
the square grid of branch j (CrossViT's branches take square images).

Kind ``class_token``, (B, heads, Nk); ``cache.meta[name]``: ``prefix_tokens`` 1 (the
class token, of the other branch), ``prefix_names``, ``key_grid``. Writing replaces the
softmax output.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..registry import Intercepted, Reading, Written, register_adapter
from ._sdpa import SOFTMAX
from .timm_cait import patch_context, patch_layout


def _attention(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"CrossViT CrossAttention called softmax {len(calls)} times")
    n_prefix, grid, names = patch_layout(m, int(inputs[0].shape[1]))
    meta = {"prefix_tokens": n_prefix, "prefix_names": names, "key_grid": grid}
    return Reading(calls[0][:, :, 0], meta)  # (B, heads, 1, Nk): the class token's one row


register_adapter(
    "timm.models.crossvit.CrossAttention",
    kind="class_token",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    write=Written(SOFTMAX, view=lambda m, raw, inputs: raw[:, :, 0]),
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads)},
)
