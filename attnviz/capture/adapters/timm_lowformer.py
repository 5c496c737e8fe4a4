"""timm LowFormer conv attention (``timm.models.lowformer.ConvAttention``: lowformer_b0 ... e3).

LowFormer (Nottebaum et al. 2025) reduces the H x W map by a strided depthwise conv
(``conv_proj``, stride ``att_stride``), projects q, k, v with a 1x1 conv, runs multi-head
attention ``softmax(q k^T / sqrt(d))`` (Vaswani et al. 2017, eq. 1) over the h x w reduced
positions and upsamples the result back (a transposed conv). Fused
(``scaled_dot_product_attention``, its weights recomputed from the call's own q and k) or not
(the module's own ``softmax``): read by ``timm_vit``'s reader.

Kind ``token``, (B, heads, h * w, h * w); ``cache.meta[name]``: ``prefix_tokens`` 0,
``query_grid`` = ``key_grid`` = (h, w), the reduced map; ``queries=`` picks cells of that grid.
Writing replaces the softmax (``module.fused_attn = False``).
"""

from __future__ import annotations

from torch import nn

from ._conv_grid import conv_grid
from .timm_vit import _register

Grid = tuple[int, int]


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, Grid, Grid, list[str]]:
    grid = conv_grid(m.conv_proj, (int(inputs[0].shape[-2]), int(inputs[0].shape[-1])))
    return 0, grid, grid, []


_register("timm.models.lowformer.ConvAttention", _layout)
