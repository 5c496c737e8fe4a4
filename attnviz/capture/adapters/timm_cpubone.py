"""timm CPUBone conv attention (``timm.models.cpubone.ConvAttention``: cpubone_nano ... b3).

The module reduces the H x W map by a strided depthwise conv (``conv_proj``, stride
``att_stride``; the reduced 2 x 2 variant first pads H and W to a multiple of the stride),
projects q, k, v with a 1x1 conv, runs multi-head attention ``softmax(q k^T / sqrt(d))``
(Vaswani et al. 2017, eq. 1) over the h x w reduced positions, and upsamples the result back.
Fused (``scaled_dot_product_attention``, whose weights are recomputed from the call's own q and
k, its output returned unchanged) or not (the module's own ``softmax``): read by ``timm_vit``'s
reader.

Kind ``token``, (B, heads, h * w, h * w); ``cache.meta[name]``: ``prefix_tokens`` 0,
``query_grid`` = ``key_grid`` = (h, w), the reduced map (a cell covers ``att_stride`` input
pixels per side); ``queries=`` picks cells of that grid. Writing replaces the softmax
(``module.fused_attn = False``).
"""

from __future__ import annotations

from torch import nn

from ._conv_grid import conv_grid
from .timm_vit import _register

Grid = tuple[int, int]


def _layout(m: nn.Module, inputs: tuple) -> tuple[int, Grid, Grid, list[str]]:
    h, w = (int(s) for s in inputs[0].shape[-2:])
    if getattr(m, "small_kernels", False) and m.att_stride > 1:  # padded to whole strides
        h, w = h + (-h) % m.att_stride, w + (-w) % m.att_stride
    grid = conv_grid(m.conv_proj, (h, w))
    return 0, grid, grid, []


_register("timm.models.cpubone.ConvAttention", _layout)
