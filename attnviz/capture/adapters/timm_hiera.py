"""timm Hiera (``timm.models.hiera.MaskUnitAttention``: hiera_tiny_224 ... hiera_huge_224, the
abswin variants).

Hiera (Ryali et al. 2023, sec. 3-4) keeps its tokens "unrolled": ``Unroll`` reorders the patch
grid so that the strided sub-grids lie outermost, which makes a q-stride max-pool a max over the
first axis of ``view(B, q_stride, N / q_stride, C)`` and mask units (8 x 8 patches at the first
stage) strided slices of the sequence. ``MaskUnitAttention`` computes
``softmax(q k^T / sqrt(d))``, no position bias, fused (``scaled_dot_product_attention``,
weights recomputed from the call's own q and k) or not (the module's ``softmax`` output):

* with mask-unit attention (early stages) per mask unit: token n of the sequence is slot
  n // U of unit n % U (U units); the first block of a stage max-pools the queries by q_stride
  within each unit, so a unit's K keys serve K / q_stride queries;
* with global attention (late stages) over all tokens, queries pooled in a stage's first block.

The adapter follows each token to its image position by running the model's own ``Unroll`` on
the patch coordinates and the q-pooling (a pooled token is the max over q_stride tokens that
share one cell of the coarser grid), recorded per block when the sites are found (Hiera's token
order is fixed by its ``img_size``). Rows and keys are reordered to raster order:

* mask-unit blocks: kind ``window``, (B, heads, Hq * Wq, K), K = the unit's key slots in the
  module's order; ``cache.meta[name]``: ``key_index`` (Hq * Wq, K) (flat key-grid position
  ``y * Wk + x``), ``window`` (the unit's extent on the key grid), ``shift`` (0, 0);
* global blocks: kind ``token``, (B, heads, Hq * Wq, Hk * Wk), ``prefix_tokens`` 0.

Both: ``query_grid`` (Hq, Wq), ``key_grid`` (Hk, Wk), ``path``. Writing replaces the softmax
output only where the module's token order is already raster order (global blocks once every
unroll is consumed); elsewhere the reading is a reorder, not a reshape, of the module's tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Reading, Written, register_adapter, site_context
from ._sdpa import FUSED, SOFTMAX, sdpa_weights, softmax_or_sdpa, write_softmax

Grid = tuple[int, int]


def _token_positions(owner: nn.Module) -> list[tuple[Tensor, Grid, Tensor, Grid]]:
    """Per block: (key positions (N, 2) as (y, x), key grid, query positions, query grid), in
    the module's token order."""
    h, w = (int(s) for s in owner.unroll.size)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = torch.stack([ys, xs], -1).reshape(1, h * w, 2).float()
    pos = owner.unroll(coords)[0].round().long()  # the model's own token order
    grid, out = (h, w), []
    stride = tuple(int(s) for s in owner.q_stride)
    for blk in owner.blocks:
        key_pos, key_grid = pos, grid
        q = int(blk.attn.q_stride)
        if q > 1:  # pooled token m: max over tokens s * N / q + m, one cell of the coarser grid
            members = pos.view(q, -1, 2) // torch.tensor(stride)
            if not bool((members == members[:1]).all()):
                raise RuntimeError("Hiera's q-pooling does not pool one grid cell per token")
            pos, grid = members[0], (grid[0] // stride[0], grid[1] // stride[1])
        out.append((key_pos, key_grid, pos, grid))
    return out


def _context(module: nn.Module, ancestors: tuple[nn.Module, ...]) -> dict:
    """The block's query and key token positions, from the enclosing Hiera model."""
    for owner in reversed(ancestors):
        if hasattr(owner, "unroll") and hasattr(owner, "blocks"):
            index = next(i for i, b in enumerate(owner.blocks) if b.attn is module)
            key_pos, key_grid, query_pos, query_grid = _token_positions(owner)[index]
            flat_q = query_pos[:, 0] * query_grid[1] + query_pos[:, 1]
            flat_k = key_pos[:, 0] * key_grid[1] + key_pos[:, 1]
            return {
                "query_grid": query_grid,
                "key_grid": key_grid,
                "query_token": torch.argsort(flat_q),  # token of each raster query position
                "key_token": torch.argsort(flat_k),
                "key_flat": flat_k,  # raster key position of each token
                "raster": bool(
                    torch.equal(flat_q, torch.arange(len(flat_q)))
                    and torch.equal(flat_k, torch.arange(len(flat_k)))
                ),
            }
    return {}  # outside a Hiera model: the token order is unknown (reading it raises)


def _context_of(m: nn.Module) -> dict:
    ctx = site_context(m)
    if not ctx:
        raise RuntimeError("MaskUnitAttention outside a Hiera model: its token order is unknown")
    return ctx


def _attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"MaskUnitAttention called its attention {len(calls)} times")
    ctx = _context_of(m)
    n_tokens = int(inputs[0].shape[1])
    if n_tokens != len(ctx["key_flat"]):
        raise RuntimeError(
            f"MaskUnitAttention got {n_tokens} tokens, the model's grid has "
            f"{len(ctx['key_flat'])} (masked / dropped tokens are not supported)"
        )
    attn = calls[0].output if SOFTMAX in taps else sdpa_weights(calls[0])
    meta = {
        "query_grid": ctx["query_grid"],
        "key_grid": ctx["key_grid"],
        "path": "fused" if FUSED in taps else "softmax",
    }
    query_token = ctx["query_token"] if rows is None else ctx["query_token"][rows]
    if not m.use_mask_unit_attn:  # (B, heads, Nq, Nk) in token order -> raster order
        attn = attn[:, :, query_token][..., ctx["key_token"]]
        meta.update(prefix_tokens=0, prefix_names=[])
        return Reading(attn, meta, rows_selected=rows is not None)
    units = int(attn.shape[2])  # (B, heads, units, Tq, Tk)
    slots = int(attn.shape[-1])
    unit, row = query_token % units, query_token // units
    key_tokens = torch.arange(slots)[None, :] * units + torch.arange(units)[:, None]
    key_index = ctx["key_flat"][key_tokens]  # (units, Tk) raster key positions
    wk = int(ctx["key_grid"][1])
    ky, kx = key_index[0] // wk, key_index[0] % wk  # one unit's extent on the key grid
    window = (int(ky.max() - ky.min()) + 1, int(kx.max() - kx.min()) + 1)
    meta.update(window=window, shift=(0, 0))
    meta["key_index"] = key_index[ctx["query_token"] % units]  # all query rows
    attn = attn[:, :, unit, row]  # (B, heads, Nq, Tk)
    return Reading(attn, meta, rows_selected=rows is not None)


def _write(m: nn.Module) -> Written | str:
    if m.use_mask_unit_attn or not site_context(m).get("raster", False):
        return (
            "its tokens are in Hiera's unrolled order: the reading reorders them to image "
            "positions, not a reshape of the module's tensor"
        )
    return write_softmax(m)


register_adapter(
    "timm.models.hiera.MaskUnitAttention",
    kind=lambda m: "window" if m.use_mask_unit_attn else "token",
    read=softmax_or_sdpa(_attention),
    family="timm",
    write=_write,
    context=_context,
    query_grid=lambda m, inputs: tuple(_context_of(m)["query_grid"]),
    describe=lambda m: {
        "heads": int(m.heads),
        "q_stride": int(m.q_stride),
        "mask_unit_attn": bool(m.use_mask_unit_attn),
        "fused": bool(m.fused_attn),
    },
)
