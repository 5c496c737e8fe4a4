"""timm ConViT (``timm.models.convit``): gated positional self-attention ``GPSA`` and the
plain ``MHSA`` of its last blocks.

* ``GPSA`` (d'Ascoli et al. 2021, eq. 5): per head, a gate ``g = sigmoid(lambda_h)`` mixes
  content attention ``softmax(q k^T / sqrt(d))`` with positional attention
  ``softmax(v_pos^T r_ij)`` (``pos_proj`` of the relative offsets), renormalised over keys:
  ``A = ((1 - g) C + g P) / sum_j(...)``. The weights the module multiplies with v are the input
  of its ``attn_drop`` (after the in-place renormalisation); the adapter reads ``attn_drop``'s
  output, equal to that input in eval mode and with timm's default ``attn_drop_rate`` 0.
  GPSA blocks see the patches only (the class token joins at ``local_up_to_layer``).
* ``MHSA``: ``softmax(q k^T / sqrt(d))`` over the class token and the patches; the module
  calls ``softmax`` itself (no fused path), whose output is read as it is.

Kind ``token``, (B, heads, N, N); ``cache.meta[name]``: ``prefix_tokens`` (0 in GPSA, 1 in
MHSA), ``prefix_names``, ``query_grid`` = ``key_grid`` (the patch grid).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Computed, Intercepted, Reading, Written, register_adapter
from ._sdpa import SOFTMAX
from .timm_cait import patch_context, patch_layout


def _reading(m: nn.Module, attn: Tensor, inputs: tuple, rows: Tensor | None) -> Reading:
    n_prefix, grid, names = patch_layout(m, int(inputs[0].shape[1]))
    meta = {"prefix_tokens": n_prefix, "prefix_names": names, "query_grid": grid}
    meta["key_grid"] = grid
    return Reading(attn, meta, query_rows=None if rows is None else rows + n_prefix)


def _gpsa(
    m: nn.Module, taps: Mapping[str, Tensor], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    return _reading(m, taps["attn_drop"], inputs, rows)


def _mhsa(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"ConViT MHSA called softmax {len(calls)} times; expected once")
    return _reading(m, calls[0], inputs, rows)


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return patch_layout(m, int(inputs[0].shape[1]))[1]


register_adapter(
    "timm.models.convit.GPSA",
    kind="token",
    read=Computed(taps=("attn_drop",), compute=_gpsa),
    family="timm",
    write=Written("attn_drop"),
    query_grid=_grid,
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads), "gated": True},
)
register_adapter(
    "timm.models.convit.MHSA",
    kind="token",
    read=Intercepted(functions=("softmax",), compute=_mhsa),
    family="timm",
    query_grid=_grid,
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads), "gated": False},
)
