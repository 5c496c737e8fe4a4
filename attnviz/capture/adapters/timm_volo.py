"""timm VOLO (``timm.models.volo``): the ``Attention`` of its transformer stages and the
``ClassAttention`` of its post-network class blocks. (Its ``OutlookAttention`` is not read here.)

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

from torch import nn

from ..registry import register_adapter
from ._sdpa import softmax_or_sdpa
from .timm_cait import class_attention, class_write, patch_context
from .timm_vit import _register


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, tuple[int, int], tuple[int, int], list]:
    """No prefix tokens; queries and keys on the (B, H, W, C) input's H x W grid."""
    grid = (int(inputs[0].shape[1]), int(inputs[0].shape[2]))
    return 0, grid, grid, []


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
