"""timm TNT (``timm.models.tnt.Attention``: tnt_s_patch16_224, tnt_b_patch16_224 and legacy).

Transformer in Transformer (Han et al. 2021, eq. 2-5) runs one attention class twice per block:
the *inner* attention (``Block.attn_in``) over the p' x p' "pixel" embeddings of each patch
(batched as (B * patches, p'^2, c)), and the *outer* attention (``Block.attn_out``) over the
class token and the patch embeddings. Both compute ``softmax(q k^T / sqrt(d))`` with their own
``softmax`` call (no fused path, no bias), recorded as the module made it.

* inner: kind ``window``, (B, heads, Nq, K): one row per pixel of the pixel grid
  (patch grid (gh, gw) times p' x p': (gh * p', gw * p'), raster order; one pixel embedding
  stands for a stride x stride cell of the image), K = p'^2 slots of its patch in raster order;
  ``cache.meta[name]``: ``query_grid`` = ``key_grid`` (the pixel grid), ``window`` (p', p'),
  ``shift`` (0, 0), ``key_index`` (Nq, K) (``timm_swin.window_layout``), ``patch_grid``;
* outer: kind ``token``, (B, heads, 1 + gh * gw, 1 + gh * gw): the class token, then the patch
  grid in raster order; ``cache.meta[name]``: ``prefix_tokens`` 1, ``prefix_names``,
  ``query_grid`` = ``key_grid`` = (gh, gw).

Which one a module is, and the grids, come from its enclosing ``Block`` and ``TNT`` model (the
site context). Writing: the outer softmax is replaced as it is; the inner one cannot be (its
patches are reordered onto the pixel grid on reading, not a reshape of the module's tensor).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, Written, register_adapter, site_context
from ._sdpa import SOFTMAX
from .timm_swin import window_layout

Grid = tuple[int, int]


def _context(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    """Inner or outer (the block's ``attn_in`` or ``attn_out``), patch grid, pixels per patch."""
    block = ancestors[-1] if ancestors else None
    inner = block is not None and getattr(block, "attn_in", None) is module
    for owner in reversed(ancestors):
        pixel_embed = getattr(owner, "pixel_embed", None)
        if pixel_embed is not None:
            return {
                "inner": inner,
                "patch_grid": tuple(int(g) for g in pixel_embed.grid_size),
                "pixels": tuple(int(p) for p in pixel_embed.new_patch_size),
                "prefix_tokens": int(getattr(owner, "num_prefix_tokens", 1)),
            }
    return {"inner": inner}


def _kind(module: nn.Module) -> str:
    return "window" if site_context(module).get("inner") else "token"


def _layout(module: nn.Module) -> tuple[Grid, Grid, int]:
    """(patch grid, pixels per patch, prefix tokens) of the enclosing TNT."""
    ctx = site_context(module)
    if "patch_grid" not in ctx:
        raise RuntimeError("a TNT Attention outside a TNT model: its token layout is unknown")
    return ctx["patch_grid"], ctx["pixels"], ctx["prefix_tokens"]


def _query_grid(module: nn.Module, inputs: tuple) -> Grid:
    (gh, gw), (ph, pw), _ = _layout(module)
    return (gh * ph, gw * pw) if site_context(module).get("inner") else (gh, gw)


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"TNT Attention called softmax {len(calls)} times; expected once")
    attn = calls[0]  # (B * patches, heads, p'^2, p'^2) inner, (B, heads, N, N) outer
    (gh, gw), (ph, pw), n_prefix = _layout(m)
    if not site_context(m).get("inner"):
        meta = {"prefix_tokens": n_prefix, "prefix_names": ["class"] * n_prefix}
        meta.update(query_grid=(gh, gw), key_grid=(gh, gw))
        token_rows = None if rows is None else rows + n_prefix
        return Reading(attn, meta, query_rows=token_rows)
    h, w = gh * ph, gw * pw
    window_id, slot, key_index = window_layout(h, w, (ph, pw), (0, 0))
    if rows is not None:
        window_id, slot = window_id[rows], slot[rows]
    attn = attn.reshape(-1, gh * gw, *attn.shape[1:])  # (B, patches, heads, K, K)
    attn = attn.transpose(2, 3)[:, window_id, slot].permute(0, 2, 1, 3)  # (B, heads, Nq, K)
    meta = {"query_grid": (h, w), "key_grid": (h, w), "window": (ph, pw), "shift": (0, 0)}
    meta.update(key_index=key_index, patch_grid=(gh, gw))
    return Reading(attn, meta, rows_selected=rows is not None)


def _write(module: nn.Module) -> Written | str:
    if site_context(module).get("inner"):
        return (
            "TNT's inner attention is reordered from patches onto the pixel grid on reading, "
            "not a reshape of the module's tensor"
        )
    return Written(SOFTMAX)


register_adapter(
    "timm.models.tnt.Attention",
    kind=_kind,
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    write=_write,
    query_grid=_query_grid,
    context=_context,
    describe=lambda m: {"heads": int(m.num_heads), "head_dim": int(m.head_dim)},
)
