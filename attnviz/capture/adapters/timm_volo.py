"""timm VOLO (``timm.models.volo``): the ``OutlookAttention`` of its first stage, the
``Attention`` of its transformer stages and the ``ClassAttention`` of its post-network class
blocks.

* ``OutlookAttention`` (Yuan et al. 2022, sec. 3.1, eq. 2-5): around every centre of the
  (B, H, W, C) map taken with ``stride`` s (the h x w = ceil(H / s) x ceil(W / s) centres, in
  raster order) a linear layer of the (average-pooled) centre token generates, per head, a
  K*K x K*K matrix, softmax over its last axis: row i is the weight of each of the K x K window
  slots (zero-padded by ``padding`` p) in the value aggregated to slot i; the K*K outputs of
  every window are summed back onto the map (``F.fold``). There are no keys: the weights are
  generated, but each row is still a distribution over window positions. The module calls
  ``softmax`` itself; its output is read as it is. Kind ``outlook``, (B, heads, h * w, K*K,
  K*K); ``cache.meta[name]``: ``window_grid`` (h, w), ``key_grid`` (H, W), ``window`` (K, K),
  ``stride``, ``padding`` and ``key_index`` (h * w, K*K): the flat map position
  (``y * W + x``) of every slot of every window (-1: padding), for the output slots and the
  value slots alike. Writing replaces the softmax output.
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
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import softmax_or_sdpa
from .timm_cait import class_attention, class_write, patch_context
from .timm_vit import _register


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, tuple[int, int], tuple[int, int], list]:
    """No prefix tokens; queries and keys on the (B, H, W, C) input's H x W grid."""
    grid = (int(inputs[0].shape[1]), int(inputs[0].shape[2]))
    return 0, grid, grid, []


@lru_cache(maxsize=64)
def outlook_index(h: int, w: int, kernel: int, stride: int, padding: int) -> Tensor:
    """(windows, K*K): flat map positions of the window slots (``nn.Unfold`` order), -1 for
    padding; windows are the ceil(H / s) x ceil(W / s) centres in raster order."""
    wy = torch.arange(-(-h // stride)).repeat_interleave(-(-w // stride))
    wx = torch.arange(-(-w // stride)).repeat(-(-h // stride))
    ky = (wy * stride - padding)[:, None] + torch.arange(kernel).repeat_interleave(kernel)[None]
    kx = (wx * stride - padding)[:, None] + torch.arange(kernel).repeat(kernel)[None]
    inside = (ky >= 0) & (ky < h) & (kx >= 0) & (kx < w)
    return torch.where(inside, ky * w + kx, torch.full_like(ky, -1))


def _outlook(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps["softmax()"]
    if len(calls) != 1:
        raise RuntimeError(f"OutlookAttention called softmax {len(calls)} times; expected once")
    h, w = int(inputs[0].shape[1]), int(inputs[0].shape[2])
    k, s, p = int(m.kernel_size), int(m.stride), int(m.padding)
    meta = {
        "window_grid": (-(-h // s), -(-w // s)),
        "key_grid": (h, w),
        "window": (k, k),
        "stride": s,
        "padding": p,
        "key_index": outlook_index(h, w, k, s, p),
    }
    return Reading(calls[0], meta)  # (B, heads, windows, K*K, K*K), the module's own tensor


register_adapter(
    "timm.models.volo.OutlookAttention",
    kind="outlook",
    read=Intercepted(functions=("softmax",), compute=_outlook),
    family="timm",
    describe=lambda m: {
        "heads": int(m.num_heads),
        "kernel": int(m.kernel_size),
        "stride": int(m.stride),
        "padding": int(m.padding),
    },
)
_register("timm.models.volo.Attention", _layout)
register_adapter(
    "timm.models.volo.ClassAttention",
    kind="class_token",
    read=softmax_or_sdpa(class_attention),
    family="timm",
    write=class_write,
    context=patch_context,
    describe=lambda m: {"heads": int(m.num_heads)},
)
