"""The weights a fused ``F.scaled_dot_product_attention`` call uses without forming them.

``scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)``
computes ``softmax(q k^T * scale + bias) @ v`` (Vaswani et al. 2017, eq. 1) in one kernel;
the weights never exist as a tensor. :func:`sdpa_weights` recomputes them from the call's own
arguments, in the order timm's non-fused path uses (``(q * scale) @ k^T``, add the bias,
softmax over keys), for all query rows or only some. Dropout is not applied: the weights are
those before ``dropout_p`` (the input of timm's ``attn_drop``; dropout is off in eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Call, ComputeFn, Intercepted, Written

#: tap keys of the two calls a timm attention module makes, by its ``fused_attn`` switch
SOFTMAX, FUSED = "softmax()", "scaled_dot_product_attention()"

_NAMES = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_arguments(call: Call) -> dict[str, Any]:
    """The call's arguments by name (positional and keyword), with SDPA's defaults."""
    out: dict[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False}
    out.update({"scale": None, "enable_gqa": False})
    out.update(zip(_NAMES, call.args))
    out.update(call.kwargs)
    return out


def _rows_of(t: Tensor, rows: Tensor | None, n_query: int) -> Tensor:
    """Keep query rows (axis -2) of a bias that spans all queries (broadcast axes stay)."""
    if rows is None or t.dim() < 2 or t.shape[-2] != n_query:
        return t
    return t.index_select(-2, rows.to(t.device))


def sdpa_weights(call: Call | Mapping[str, Any], rows: Tensor | None = None) -> Tensor:
    """softmax(q k^T * scale + bias) of one SDPA call, (..., Nq, Nk) or (..., len(rows), Nk).

    ``bias`` is the float ``attn_mask`` as given, a boolean mask as 0 / -inf, or the causal
    mask when ``is_causal``; ``scale`` defaults to 1 / sqrt(head_dim) as in SDPA.
    """
    a = sdpa_arguments(call) if isinstance(call, Call) else dict(call)
    q, k, mask = a["query"], a["key"], a["attn_mask"]
    n_query, n_key = q.shape[-2], k.shape[-2]
    if a["enable_gqa"] and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = a["scale"] if a["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    if rows is not None:
        q = q.index_select(-2, rows.to(q.device))
    attn = (q * scale) @ k.transpose(-2, -1)
    if a["is_causal"]:
        allowed = torch.ones(n_query, n_key, dtype=torch.bool, device=q.device).tril()
        mask = _rows_of(allowed, rows, n_query)
    elif mask is not None:
        mask = _rows_of(mask, rows, n_query)
    if mask is not None and mask.dtype == torch.bool:
        attn = attn.masked_fill(~mask, float("-inf"))
    elif mask is not None:
        attn = attn + mask
    return attn.softmax(dim=-1)


def softmax_or_sdpa(compute: ComputeFn) -> Intercepted:
    """The read of a module that calls either its own ``softmax`` or the fused
    ``scaled_dot_product_attention`` (timm's ``fused_attn``): ``compute`` gets the one that ran,
    as :class:`Call` records (``taps[SOFTMAX]`` or ``taps[FUSED]``)."""
    return Intercepted(
        functions=("softmax", "scaled_dot_product_attention"),
        compute=compute,
        with_args=True,
        any_of=True,
    )


def write_softmax(module: nn.Module, view=None, inner: str = "") -> Written | str:
    """Where to write a module that calls ``softmax`` or fused ``scaled_dot_product_attention``:
    its softmax, or the one-line reason why not (the fused call never forms the weights).
    ``inner``: the path of the attention submodule whose ``fused_attn`` decides, when the site
    is its block (``"attn"``)."""
    attention = module.get_submodule(inner) if inner else module
    if getattr(attention, "fused_attn", False):
        owner = (
            f"this block's {type(attention).__name__}" if inner else f"this {type(module).__name__}"
        )
        flag = f"module.{inner}.fused_attn" if inner else "module.fused_attn"
        return (
            f"{owner} runs fused scaled_dot_product_attention, which never forms the weights; "
            f"set {flag} = False to write them (timm's softmax path)"
        )
    return Written(SOFTMAX, view=view)
