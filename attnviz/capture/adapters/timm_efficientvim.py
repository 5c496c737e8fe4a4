"""timm EfficientViM (``timm.models.efficientvim.HSMSSD``: efficientvim_m1 ... m4).

The hidden-state mixer SSD (Lee et al. 2025, sec. 3.2, eq. 5-7) turns the H x W map into S
hidden states: ``a = softmax(dt + A)`` over all H*W positions for every state s (the module's
own functional ``softmax``), ``h = x (a * b)^T`` (each state a sum of the tokens weighted by
a_s times the unnormalised b_s), mixes the states, and reads them back per position by ``c``:
``y = h' c`` (no softmax). So a is a distribution over positions per state, like the keys of a
lambda layer; no per-query map exists. The adapter records the softmax output as the module
makes it (``Intercepted``).

Kind ``ssd``, (B, S, H, W); writing replaces the softmax output (uniform: every state pools
b / (H*W)).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..registry import Intercepted, Reading, register_adapter
from ._sdpa import SOFTMAX


def _states(
    m: nn.Module, taps: Mapping[str, Any], inputs: tuple, output: Any, rows: Tensor | None
) -> Reading:
    calls = taps[SOFTMAX]
    if len(calls) != 1:
        raise RuntimeError(f"HSMSSD called softmax {len(calls)} times; expected once")
    b, _, h, w = inputs[0].shape
    return Reading(calls[0].reshape(b, -1, h, w))  # (B, S, H * W) -> (B, S, H, W)


register_adapter(
    "timm.models.efficientvim.HSMSSD",
    kind="ssd",
    read=Intercepted(functions=("softmax",), compute=_states),
    family="timm",
    describe=lambda m: {"states": int(m.state_dim)},
)
