"""Built-in adapters, one file per implementation family. Importing registers them."""

from . import (
    attnviz_blocks,
    attnviz_blocks_more,
    timm_cbam,
    timm_eca,
    timm_gc,
    timm_nonlocal,
    timm_se,
    timm_sk,
    torchvision_se,
)

__all__ = [
    "attnviz_blocks",
    "attnviz_blocks_more",
    "timm_cbam",
    "timm_eca",
    "timm_gc",
    "timm_nonlocal",
    "timm_se",
    "timm_sk",
    "torchvision_se",
]
