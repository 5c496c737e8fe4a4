"""timm SHViT (``timm.models.shvit.SHSA``): single-head self-attention on part of the channels.

SHSA (Yun and Ro 2024, eq. 2-3) splits the (B, C, H, W) map's channels, normalises the first
``pdim`` and computes one head ``softmax(q^T k / sqrt(d_qk))`` over the H x W positions (the
other channels pass through). The module calls ``softmax`` itself (no fused path, no dropout):
its (B, N, N) output is read as it is, with a head axis of 1.

Kind ``token``, (B, 1, H * W, H * W); ``cache.meta[name]``: ``prefix_tokens`` 0,
``query_grid`` = ``key_grid`` = the input's (H, W). Writing replaces the softmax output.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..registry import Intercepted, Reading, Written, register_adapter
from ._sdpa import SOFTMAX


def _grid(m: nn.Module, inputs: tuple) -> tuple[int, int]:
    return int(inputs[0].shape[2]), int(inputs[0].shape[3])


def _attention(
    m: nn.Module, taps: Mapping[str, tuple], inputs: tuple, output: object, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"SHSA called softmax {len(calls)} times; expected once")
    grid = _grid(m, inputs)
    meta = {"prefix_tokens": 0, "prefix_names": [], "query_grid": grid, "key_grid": grid}
    return Reading(calls[0].unsqueeze(1), meta)  # one head


register_adapter(
    "timm.models.shvit.SHSA",
    kind="token",
    read=Intercepted(functions=("softmax",), compute=_attention),
    family="timm",
    write=Written(SOFTMAX, view=lambda m, raw, inputs: raw.unsqueeze(1)),
    query_grid=_grid,
    describe=lambda m: {"heads": 1, "channels": int(m.pdim), "qk_dim": int(m.qk_dim)},
)
