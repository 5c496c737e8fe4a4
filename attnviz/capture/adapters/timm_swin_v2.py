"""timm Swin V2 (``SwinTransformerV2Block`` and its ``WindowAttention``: swinv2_tiny ... large).

Swin V2 (Liu et al. 2022, eq. 2 and 4) attends within ws x ws windows with scaled cosine
attention: ``softmax(cos(q, k) * exp(min(s, log 100)) + 16 sigmoid(B) + mask)``, the learned
logit scale s per head and B the continuous relative-position bias of a small MLP over log
relative coordinates, plus the -100 mask of shifted blocks. There is no fused path: the module
applies ``nn.Softmax`` (``attn.softmax``), whose output is read as it is. Windows are laid
out as in Swin V1 (roll by -shift, pad to whole windows, raster order), so the site is the block
and the layout is ``timm_swin.window_layout``.

Kind ``window``, (B, heads, Nq, K): one row per position of the block's H x W input in raster
order, K = ws * ws slots of its window; ``cache.meta[name]``: ``query_grid`` / ``key_grid``
(H, W), ``window``, ``shift`` and ``key_index`` (Nq, K), each slot's image position
(``y * W + x``, the shift undone; -1 for padding slots).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..registry import Computed, Reading, register_adapter
from .timm_swin import _per_window, window_layout

SOFTMAX = "attn.softmax"
WRITE = (
    "its windows are reordered per image position on reading, not a reshape of the module's tensor"
)


def query_grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[1]), int(inputs[0].shape[2])


def windows_on_image(m: nn.Module, weights: Tensor, inputs: tuple, rows: Tensor | None) -> Reading:
    """A Swin-style block's (B * windows, heads, N, N) weights as one row per image position.

    The block (input (B, H, W, C), ``window_size``, ``shift_size``) rolls by -shift, pads to
    whole windows and partitions in raster order, as Swin V1 does (``window_layout``).
    """
    b, h, w = (int(s) for s in inputs[0].shape[:3])
    window = tuple(int(s) for s in m.window_size)
    shift = tuple(int(s) for s in m.shift_size)
    window_id, slot, key_index = window_layout(h, w, window, shift)
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = _per_window(weights, b)[:, window_id, slot]  # (B, Nq, heads, K)
    meta = {
        "query_grid": (h, w),
        "key_grid": (h, w),
        "window": window,
        "shift": shift,
        "key_index": key_index,
    }
    return Reading(attn.permute(0, 2, 1, 3), meta, rows_selected=rows is not None)


def _attention(
    m: nn.Module, taps: Mapping[str, Tensor], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    return windows_on_image(m, taps[SOFTMAX], inputs, rows)


register_adapter(
    "timm.models.swin_transformer_v2.SwinTransformerV2Block",
    kind="window",
    read=Computed(taps=(SOFTMAX,), compute=_attention),
    family="timm",
    write=WRITE,
    query_grid=query_grid,
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": [int(s) for s in m.window_size],
        "shift": [int(s) for s in m.shift_size],
        "cosine": True,
    },
)
