"""timm GC ViT (``timm.models.gcvit``): ``GlobalContextVitBlock`` and its
``WindowAttentionGlobal``.

GC ViT (Hatamizadeh et al. 2023, sec. 3.2-3.3) alternates local and global window attention,
both ``softmax(q k^T / sqrt(d) + B)`` within ws x ws windows of the (B, H, W, C) map, B the
learned relative-position bias; windows tile the map exactly (no shift, no padding). In local
blocks the queries are the window's own tokens; in global blocks (``use_global``) the keys and
values are the window's tokens but the queries are the ws x ws *global query tokens*, made once
per stage from the whole image (``global_block``) and shared by every window. The module calls
``softmax`` itself (no fused path): its output is read as it is. The attention module sees
windows only, so the site is the block.

Kind ``window``, (B, heads, H * W, K): row p is the query at slot s(p) of p's window — the
token at p in a local block, the global query token s(p) (cell s(p) of the ws x ws global
query grid) in a global block — and its K = ws * ws weights over p's window;
``cache.meta[name]``: ``query_grid`` / ``key_grid`` (H, W), ``window``, ``shift`` (0, 0),
``key_index`` (H * W, K) (slot -> image position), ``query`` (``"local"`` or ``"global"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import SOFTMAX
from .timm_swin import _per_window, window_layout


def _map(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[1]), int(inputs[0].shape[2])


def _is_global(m: nn.Module, inputs: tuple) -> bool:
    """True when the block ran with the stage's global queries (``q_global`` given)."""
    return bool(m.attn.use_global) and len(inputs) > 1 and inputs[1] is not None


def _attention(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"GC ViT block called softmax {len(calls)} times; expected once")
    b = int(inputs[0].shape[0])
    h, w = _map(m, inputs)
    window = tuple(int(s) for s in m.window_size)
    window_id, slot, key_index = window_layout(h, w, window, (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = _per_window(calls[0], b)[:, window_id, slot]  # (B, Nq, heads, K)
    meta = {"query_grid": (h, w), "key_grid": (h, w), "window": window, "shift": (0, 0)}
    meta.update(key_index=key_index, query="global" if _is_global(m, inputs) else "local")
    return Reading(attn.permute(0, 2, 1, 3), meta, rows_selected=rows is not None)


register_adapter(
    "timm.models.gcvit.GlobalContextVitBlock",
    kind="window",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    write="its windows are reordered per image position on reading, not a reshape of the "
    "module's tensor",
    query_grid=_map,
    describe=lambda m: {
        "heads": int(m.attn.num_heads),
        "window": [int(s) for s in m.window_size],
        "global": bool(m.attn.use_global),
    },
)
