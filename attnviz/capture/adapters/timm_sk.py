"""timm selective kernel (skresnet18/34, skresnext50_32x4d).

``SelectiveKernel.attn`` (a ``SelectiveKernelAttn``) returns the branch weights
(B, M, C, 1, 1), softmax over M. timm builds the paths in order of kernel size with
``keep_3x3``: path 0 is 3x3 dilation 1, path 1 is 3x3 dilation 2 (the paper's "5x5").
"""

from __future__ import annotations

from torch import nn

from ..registry import register_adapter


def describe_paths(module: nn.Module) -> dict:
    """Receptive field of each branch, checked to grow with the branch index."""
    fields = []
    for path in module.paths:
        conv = next(m for m in path.modules() if isinstance(m, nn.Conv2d))
        k, d = conv.kernel_size[0], conv.dilation[0]
        fields.append(d * (k - 1) + 1)
    if fields != sorted(fields):
        raise ValueError(f"SK branches are not ordered by receptive field: {fields}")
    return {"branch_receptive_field": fields}


register_adapter(
    "timm.layers.selective_kernel.SelectiveKernel",
    kind="sk",
    read="attn",
    family="timm",
    describe=describe_paths,
)
