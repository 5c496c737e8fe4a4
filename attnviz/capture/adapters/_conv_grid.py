"""The grid a stack of convolutions makes of an H x W map, from the layers' own settings.

For attention whose queries or keys sit on a map reduced by strided convolutions (MobileNet
V4/V5 multi-query attention, CPUBone / LowFormer conv attention): ``zero pads``, then for a
``Conv2d`` ``floor((H + 2p - dilation * (k - 1) - 1) / stride) + 1`` (PyTorch's formula), and
for timm's TF-"same" ``Conv2dSame`` (padded at run time) ``ceil(H / stride)``. Other layers
(norms, activations) keep the size.
"""

from __future__ import annotations

from torch import nn

Grid = tuple[int, int]


def _conv(layer: nn.Conv2d, size: Grid) -> Grid:
    if type(layer).__name__.startswith("Conv2dSame"):  # timm's dynamic TF "same" padding
        return tuple(-(-n // s) for n, s in zip(size, layer.stride))
    if isinstance(layer.padding, str):  # PyTorch "same" (stride 1) or "valid"
        if layer.padding == "same":
            return size
        pad = (0, 0)
    else:
        pad = layer.padding
    return tuple(
        (n + 2 * p - d * (k - 1) - 1) // s + 1
        for n, p, d, k, s in zip(size, pad, layer.dilation, layer.kernel_size, layer.stride)
    )


def conv_grid(module: nn.Module, size: Grid) -> Grid:
    """(H', W') of ``module``'s output for an (H, W) input, its layers applied in order."""
    h, w = size
    for layer in module.modules():
        if isinstance(layer, nn.ZeroPad2d):
            left, right, top, bottom = layer.padding
            h, w = h + top + bottom, w + left + right
        elif isinstance(layer, nn.Conv2d):
            h, w = _conv(layer, (h, w))
    return int(h), int(w)
