"""torchvision Swin (``swin_t/s/b``, ``swin_v2_t/s/b``): ``ShiftedWindowAttention`` and
``ShiftedWindowAttentionV2``.

Both modules call ``shifted_window_attention``, which attends within ws x ws windows:
``softmax(q k^T / sqrt(d) + B + M)`` (Liu et al. 2021, eq. 4), or for V2 scaled cosine
attention ``softmax(cos(q, k) exp(min(s, log 100)) + 16 sigmoid(B) + M)`` (Liu et al. 2022,
eq. 2 and 4), with the relative-position bias B and, in shifted blocks, the -100 mask M that
keeps tokens of different image regions apart after the cyclic shift. The function calls
``F.softmax`` once; its output, (B * windows, heads, N, N), is recorded as the module made it
(``Intercepted``): nothing is recomputed and the forward is not changed.

Where a window slot lies on the image is torchvision's order of operations, not timm's: the
(B, H, W, C) map is first zero-padded at the bottom / right to whole windows (pH, pW), then
rolled by -shift over the *padded* map, then cut into windows in raster order; the shift of an
axis is dropped when one window covers the padded axis. Padding is not masked as such (only the
shift mask can part it from a query's region): padding slots take part in the softmax, their
keys made from the qkv bias, so a row's weights on the image can sum to less than 1.

Kind ``window``, (B, heads, Nq, K): one row per position of the module's H x W input in raster
order, K = ws_h * ws_w slots of its window in raster order. ``cache.meta[name]``:
``query_grid`` / ``key_grid`` (H, W), ``window``, ``shift`` (the one applied) and
``key_index`` (Nq, K), the image position (``y * W + x``) of each slot, the shift undone; -1 for
padding slots. ``attnviz.capture.window_to_grid`` draws a row on the image.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter

SOFTMAX = Intercepted.key("softmax")


def applied_shift(
    h: int, w: int, window: tuple[int, int], shift: tuple[int, int]
) -> tuple[int, int]:
    """The shift ``shifted_window_attention`` applies: none along an axis one window covers."""
    padded = (-(-h // window[0]) * window[0], -(-w // window[1]) * window[1])
    return tuple(0 if ws >= p else s for ws, p, s in zip(window, padded, shift))


@lru_cache(maxsize=64)
def padded_window_layout(
    h: int, w: int, window: tuple[int, int], shift: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor]:
    """(window id (Nq,), slot (Nq,), key_index (Nq, K)) of each image position's query.

    Pad to (pH, pW), roll by -shift modulo the padded size, cut windows in raster order: image
    position (y, x) sits at (i, j) = ((y - s_h) mod pH, (x - s_w) mod pW), in window
    (i // ws_h, j // ws_w), slot (i mod ws_h, j mod ws_w); slot (a, b) of that window holds
    padded position ((i0 + a + s_h) mod pH, (j0 + b + s_w) mod pW), -1 when it is padding.
    ``shift`` must be the applied one (:func:`applied_shift`).
    """
    wh, ww = window
    ph, pw = -(-h // wh) * wh, -(-w // ww) * ww
    y = torch.arange(h).repeat_interleave(w)
    x = torch.arange(w).repeat(h)
    i, j = (y - shift[0]) % ph, (x - shift[1]) % pw
    window_id = (i // wh) * (pw // ww) + j // ww
    slot = (i % wh) * ww + j % ww
    ky = (i // wh * wh)[:, None] + torch.arange(wh).repeat_interleave(ww)[None, :]
    kx = (j // ww * ww)[:, None] + torch.arange(ww).repeat(wh)[None, :]
    oy, ox = (ky + shift[0]) % ph, (kx + shift[1]) % pw
    key_index = torch.where((oy < h) & (ox < w), oy * w + ox, -1)
    return window_id, slot, key_index


def windows_to_rows(weights: Tensor, b: int, window_id: Tensor, slot: Tensor) -> Tensor:
    """(B * windows, heads, N, K) -> (B, heads, Nq, K): the row of each query's (window, slot)."""
    per_window = weights.reshape(b, -1, *weights.shape[1:]).permute(0, 1, 3, 2, 4)
    return per_window[:, window_id, slot].permute(0, 2, 1, 3)


def _geometry(m: nn.Module, inputs: tuple) -> tuple[int, int, int, tuple, tuple]:
    b, h, w = (int(s) for s in inputs[0].shape[:3])
    window = tuple(int(s) for s in m.window_size)
    return b, h, w, window, applied_shift(h, w, window, tuple(int(s) for s in m.shift_size))


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"{type(m).__name__} called softmax {len(calls)} times; expected once")
    b, h, w, window, shift = _geometry(m, inputs)
    window_id, slot, key_index = padded_window_layout(h, w, window, shift)
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    meta = {
        "query_grid": (h, w),
        "key_grid": (h, w),
        "window": window,
        "shift": shift,
        "key_index": key_index,
    }
    attn = windows_to_rows(calls[0], b, window_id, slot)
    return Reading(attn, meta, rows_selected=rows is not None)


register_adapter(
    "torchvision.models.swin_transformer.ShiftedWindowAttention",  # and its V2 subclass
    kind="window",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="torchvision",
    write="its windows are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=lambda m, inputs: (int(inputs[0].shape[1]), int(inputs[0].shape[2])),
    describe=lambda m: {
        "heads": int(m.num_heads),
        "window": [int(s) for s in m.window_size],
        "shift": [int(s) for s in m.shift_size],
        "cosine": getattr(m, "logit_scale", None) is not None,
    },
)
