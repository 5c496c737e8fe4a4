"""timm VOLO (``timm.models.volo``): the ``Attention`` of its transformer stages and the
``ClassAttention`` of its post-network class blocks. (Its ``OutlookAttention`` is not read here.)

* ``Attention`` (Yuan et al. 2022, sec. 3.2): ``softmax(q k^T / sqrt(d))`` over the H x W
  positions of its (B, H, W, C) input: fused (``scaled_dot_product_attention``, weights
  recomputed from the call's own q and k) or not (the module's ``softmax`` output). Kind
  ``token``, (B, heads, H * W, H * W), ``prefix_tokens`` 0, ``query_grid`` = ``key_grid`` =
  (H, W); writing replaces the softmax output (``fused_attn = False``).
* ``ClassAttention`` (CaiT's class attention, Touvron et al. 2021, eq. 3-4): the class token is
  the only query over the class token and the patches; the module calls ``softmax`` itself.
  Kind ``class_token``, (B, heads, Nk), ``prefix_tokens`` 1, ``key_grid`` (the square grid).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, Written, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax
from .timm_cait import patch_context, patch_layout


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[1]), int(inputs[0].shape[2])


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"VOLO Attention called its attention {len(calls)} times")
    grid = _grid(m, inputs)
    meta = {"prefix_tokens": 0, "prefix_names": [], "query_grid": grid, "key_grid": grid}
    if SOFTMAX in taps:
        return Reading(calls[0].output, {**meta, "path": "softmax"})
    attn = sdpa_weights(calls[0], rows)
    return Reading(attn, {**meta, "path": "fused"}, rows_selected=rows is not None)


def _class_attention(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"VOLO ClassAttention called softmax {len(calls)} times")
    n_prefix, grid, names = patch_layout(m, int(inputs[0].shape[1]))
    meta = {"prefix_tokens": n_prefix, "prefix_names": names, "key_grid": grid}
    return Reading(calls[0][:, :, 0], meta)  # (B, heads, 1, Nk): the class token's one row


register_adapter(
    "timm.models.volo.Attention",
    kind="token",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write=write_softmax,
    query_grid=_grid,
    describe=lambda m: {"heads": int(m.num_heads), "fused": bool(m.fused_attn)},
)
register_adapter(
    "timm.models.volo.ClassAttention",
    kind="class_token",
    read=Intercepted(functions=("softmax",), compute=_class_attention),
    family="timm",
    write=Written(SOFTMAX, view=lambda m, raw, inputs: raw[:, :, 0]),
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads)},
)
