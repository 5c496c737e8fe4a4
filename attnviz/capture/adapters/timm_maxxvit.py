"""timm MaxViT / CoAtNet (``timm.models.maxxvit``): ``AttentionCl`` and ``Attention2d``.

Both compute ``softmax(q k^T / sqrt(d) + B)`` (Vaswani et al. 2017, eq. 1) with a learned
relative-position bias B (``rel_pos``: a table, the TF table or an MLP; Dai et al. 2021, eq. 3),
fused (``scaled_dot_product_attention`` with B as its mask, whose weights the adapter
recomputes from the call's own q, k and B) or not (the module's own ``softmax`` output).

* CoAtNet's ``TransformerBlock2d`` attends over its whole (downsampled) map: kind ``token``,
  (B, heads, N, N), no prefix tokens, ``query_grid`` = ``key_grid`` = the map the attention
  sees (after the block's stride-2 pool when it downsamples); the site is the block, whose
  output has that grid.
* MaxViT's ``PartitionAttentionCl`` / ``PartitionAttention2d`` (Tu et al. 2022, sec. 3.2)
  attend within partitions of the (H, W) map: ``block`` partitions are p x p windows of
  neighbouring positions, ``grid`` partitions are g x g positions spread H / g apart (dilated).
  The attention module sees partitions only, so the site is the partition block: kind
  ``window``, (B, heads, H * W, K), one row per image position, K = p * p slots;
  ``cache.meta[name]["key_index"]`` (H * W, K) maps each slot to its image position
  (``y * W + x``), ``partition`` is ``"block"`` or ``"grid"``, ``window`` the partition size.
* MaxViT's experimental ``ParallelPartitionAttention`` (maxvit_tiny_pm) runs a block and a grid
  attention side by side on the same map: one ``window`` site whose heads are the block heads
  then the grid heads (``head_partition``), K = 2 p^2 slots (the block partition's, then the
  grid partition's; a head's weights on the other partition's slots are 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Call, Intercepted, Reading, Written, register_adapter
from ._sdpa import FUSED, SOFTMAX, sdpa_arguments, sdpa_weights, write_softmax
from .timm_swin import _per_window, _rows_of_call, window_layout

_FUNCTIONS = ("softmax", "scaled_dot_product_attention")


def _one_call(taps: Mapping[str, Any], owner: str) -> Any:
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 1:
        raise RuntimeError(f"{owner} called its attention {len(calls)} times; expected once")
    return calls[0]


@lru_cache(maxsize=64)
def grid_layout(h: int, w: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """(partition id (HW,), slot (HW,), key_index (HW, K)) of timm's ``grid_partition``.

    ``grid_partition`` views the map as (g_h, H / g_h, g_w, W / g_w) and makes one partition
    per (y mod H / g_h, x mod W / g_w); slot (a, b) of it is image position
    (a * H / g_h + y mod H / g_h, b * W / g_w + x mod W / g_w).
    """
    gh, gw = grid
    sh, sw = h // gh, w // gw  # distance between the positions of one partition
    y = torch.arange(h).repeat_interleave(w)
    x = torch.arange(w).repeat(h)
    part = (y % sh) * sw + x % sw
    slot = (y // sh) * gw + x // sw
    ky = (y % sh)[:, None] + (torch.arange(gh) * sh).repeat_interleave(gw)[None, :]
    kx = (x % sw)[:, None] + (torch.arange(gw) * sw).repeat(gh)[None, :]
    return part, slot, ky * w + kx


def _batched_bias(call: Call) -> Call:
    """The call with its bias as (1, heads, N, N): ``RelPosBiasTf`` gives (heads, N, N)."""
    a = sdpa_arguments(call)
    if a["attn_mask"] is not None and a["attn_mask"].dim() == 3:
        a["attn_mask"] = a["attn_mask"].unsqueeze(0)
    return Call((), a, call.output)


def _map_size(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    """(H, W) of a partition block's input: NCHW (2d) or channels last (Cl, Parallel)."""
    x = inputs[0]
    if type(m).__name__ == "PartitionAttention2d":
        return int(x.shape[2]), int(x.shape[3])
    return int(x.shape[1]), int(x.shape[2])


def _layout(block: bool, h: int, w: int, size: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    return window_layout(h, w, size, (0, 0)) if block else grid_layout(h, w, size)


def _on_image(call: Any, fused: bool, b: int, part: Tensor, slot: Tensor, rows: Tensor | None):
    """(B, heads, Nq, K): one attention call's weights, a row per (kept) image position."""
    if fused and rows is not None:  # only the rows asked for are computed
        attn = _rows_of_call(_batched_bias(call), b, part, slot)
    else:  # (B * partitions, heads, N, K): the module's own weights, or the fused call's
        attn = sdpa_weights(call) if fused else call.output
        attn = _per_window(attn, b)[:, part, slot]  # (B, Nq, heads, K)
    return attn.permute(0, 2, 1, 3)


def _partition_attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    b = int(inputs[0].shape[0])
    h, w = _map_size(m, inputs)
    size = tuple(int(s) for s in m.partition_size)
    call = _one_call(taps, type(m).__name__)
    part, slot, key_index = _layout(m.partition_block, h, w, size)
    if rows is not None:
        part, slot = part[rows], slot[rows]
    attn = _on_image(call, FUSED in taps, b, part, slot, rows)
    meta = {
        "query_grid": (h, w),
        "key_grid": (h, w),
        "partition": "block" if m.partition_block else "grid",
        "window": size,
        "shift": (0, 0),
        "key_index": key_index,
        "path": "fused" if FUSED in taps else "softmax",
    }
    return Reading(attn, meta, rows_selected=rows is not None)


def _parallel_attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    """``ParallelPartitionAttention``: block heads (``attn_block``) then grid heads
    (``attn_grid``), each on its own partition; K = 2 p^2 slots, the block partition's then
    the grid partition's, a head's weights on the other partition's slots are 0."""
    calls = taps.get(SOFTMAX) or taps.get(FUSED)
    if len(calls) != 2:
        raise RuntimeError(f"ParallelPartitionAttention called {len(calls)} attentions; expected 2")
    b = int(inputs[0].shape[0])
    h, w = _map_size(m, inputs)
    size = tuple(int(s) for s in m.partition_size)
    parts, keys = [], []
    for block, call in zip((True, False), calls):  # _partition_attn: block first, then grid
        part, slot, key_index = _layout(block, h, w, size)
        if rows is not None:
            part, slot = part[rows], slot[rows]
        parts.append(_on_image(call, FUSED in taps, b, part, slot, rows))
        keys.append(key_index)
    zeros = [torch.zeros_like(a) for a in parts]
    attn = torch.cat([torch.cat([parts[0], zeros[0]], -1), torch.cat([zeros[1], parts[1]], -1)], 1)
    heads = ["block"] * parts[0].shape[1] + ["grid"] * parts[1].shape[1]
    meta = {
        "query_grid": (h, w),
        "key_grid": (h, w),
        "partition": "block+grid",
        "head_partition": heads,
        "window": size,
        "shift": (0, 0),
        "key_index": torch.cat(keys, -1),
        "path": "fused" if FUSED in taps else "softmax",
    }
    return Reading(attn, meta, rows_selected=rows is not None)


def _pooled(n: int, pool: nn.Module, axis: int) -> int:
    """Output length of a max/avg pool along one axis (``nn.MaxPool2d`` / ``nn.AvgPool2d``)."""
    k, s, p = (
        v if isinstance(v, int) else v[axis] for v in (pool.kernel_size, pool.stride, pool.padding)
    )
    span = n + 2 * p - k
    return (-(-span // s) if getattr(pool, "ceil_mode", False) else span // s) + 1


def _block_grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    """The map CoAtNet's attention sees: the block's input, pooled when the block downsamples."""
    h, w = int(inputs[0].shape[-2]), int(inputs[0].shape[-1])
    down = getattr(m.norm1, "down", None)
    if down is None:
        return h, w
    return _pooled(h, down.pool, 0), _pooled(w, down.pool, 1)


def _block_attention(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    grid = (int(output.shape[-2]), int(output.shape[-1]))  # the output keeps the attention's grid
    call = _one_call(taps, "TransformerBlock2d")
    meta = {"prefix_tokens": 0, "prefix_names": [], "query_grid": grid, "key_grid": grid}
    if SOFTMAX in taps:
        return Reading(call.output, {**meta, "path": "softmax"})
    attn = sdpa_weights(call, rows)
    return Reading(attn, {**meta, "path": "fused"}, rows_selected=rows is not None)


def _block_write(m: nn.Module) -> Written | str:
    return write_softmax(m, inner="attn")


def _describe(m: nn.Module) -> dict:
    return {"heads": int(m.attn.num_heads), "fused": bool(m.attn.fused_attn)}


register_adapter(
    "timm.models.maxxvit.TransformerBlock2d",
    kind="token",
    read=Intercepted(functions=_FUNCTIONS, compute=_block_attention, with_args=True, any_of=True),
    family="timm",
    write=_block_write,
    query_grid=_block_grid,
    describe=_describe,
)

for _type in ("PartitionAttentionCl", "PartitionAttention2d"):
    register_adapter(
        f"timm.models.maxxvit.{_type}",
        kind="window",
        read=Intercepted(
            functions=_FUNCTIONS, compute=_partition_attention, with_args=True, any_of=True
        ),
        family="timm",
        write="its partitions are reordered per image position on reading, not a reshape of "
        "the module's tensor",
        query_grid=_map_size,
        describe=lambda m: {
            **_describe(m),
            "partition": "block" if m.partition_block else "grid",
            "window": [int(s) for s in m.partition_size],
        },
    )

register_adapter(
    "timm.models.maxxvit.ParallelPartitionAttention",
    kind="window",
    read=Intercepted(
        functions=_FUNCTIONS, compute=_parallel_attention, with_args=True, any_of=True
    ),
    family="timm",
    write="its two partitions' heads are reordered per image position and joined on reading, "
    "not a reshape of the module's tensors",
    query_grid=_map_size,
    describe=lambda m: {
        "heads": int(m.attn_block.num_heads + m.attn_grid.num_heads),
        "partition": "block+grid",
        "window": [int(s) for s in m.partition_size],
        "fused": bool(m.attn_block.fused_attn),
    },
)
