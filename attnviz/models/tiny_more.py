"""Tiny ResNets with one SAGAN self-attention or DANet dual-attention block in stage 3, and
``mix_tiny`` with the gate-style blocks (STN, scSE, BAM, residual attention) in one network.

The block sits where ``nl_tiny`` has its Non-local block: ``layer2.1``, after block 1 of paper
stage 3 (``layer2.0``), on the 16 x 16 = 256-position map of a 64 px input, so the sites are
``SA_3_2`` (``sa_tiny``) and ``PAM_3_2`` / ``CAM_3_2`` (``danet_tiny``), side by side with
``NL_3_2``. This module lists its factories in :data:`MORE_MODELS`; :mod:`attnviz.models.zoo`
adds them to :data:`attnviz.models.tiny.TINY_MODELS` (this module does not import the zoo, and
``tiny`` does not import this module: no import loop).

``mix_tiny`` (:class:`MixTinyResNet`, 64 px input) places each block where its paper does:

* ``stn``: a :class:`~attnviz.blocks.SpatialTransformer` on the input image, theta initialised
  to the identity (Jaderberg et al. 2015, Sec. 4) -> sites ``STN_1`` (theta), ``STNG_1`` (grid);
* ``layer1.Y.attn``: scSE after the last conv of both stage-2 blocks (32 x 32), as Roy et al.
  put it after every encoder block -> ``CSE_2_1`` .. ``SSE_2_2``;
* ``layer2.1``: a :class:`~attnviz.blocks.ResidualAttention` attention module (trunk t = 2
  units, mask depth 1) replaces stage 3's second basic block, after the downsampling block
  ``layer2.0`` (the paper's p = 1 pre-unit), on the 16 x 16 map -> ``RAM_3_2``;
* ``layer2.2``: BAM at the stage 3 -> 4 bottleneck, before the downsampling of ``layer3``
  (Park et al. 2018, Fig. 1; r = 16, d = 4) -> ``BAMC_3_3``, ``BAMS_3_3``, ``BAM_3_3``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..blocks import BAM, SCSE, ResidualAttention, SpatialTransformer, create_attn
from .tiny import TinyResNet

STAGE3_BLOCKS: dict[str, tuple[str, dict]] = {
    "sa_tiny": ("sa", {}),
    "danet_tiny": ("danet", {}),
    "ion_tiny": ("ion", {}),
}


def tiny_with_stage3_block(block: str, **block_kwargs) -> Callable[..., TinyResNet]:
    """A factory of :class:`TinyResNet` (no per-block attention) with ``create_attn(block)``
    inserted as ``layer2.1``; its convs get the zoo's Kaiming (fan-out) initialisation."""

    def factory(num_classes: int = 10, **kwargs) -> TinyResNet:
        model = TinyResNet(None, num_classes=num_classes, **kwargs)
        first = model.layer2[0]
        width = first.conv2[0].out_channels
        attn = create_attn(block, width, **block_kwargs)
        for m in attn.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        model.layer2 = nn.Sequential(first, attn, *list(model.layer2)[1:])
        return model

    return factory


def _kaiming_convs(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class MixTinyResNet(TinyResNet):
    """:class:`TinyResNet` with an input spatial transformer, scSE in stage 2, a residual
    attention module in stage 3 and BAM at the stage 3 -> 4 bottleneck (module docstring)."""

    def __init__(self, num_classes: int = 10, **kwargs) -> None:
        super().__init__(None, num_classes=num_classes, **kwargs)
        self.config["attn"] = "mix"
        self.stn = SpatialTransformer(3)  # theta: zero weights, identity bias (AffineTheta)
        for block in self.layer1:
            block.attn = SCSE(block.conv2[0].out_channels)
        first = self.layer2[0]
        width = first.conv2[0].out_channels
        self.layer2 = nn.Sequential(first, ResidualAttention(width), BAM(width))
        self._modules = {"stn": self._modules.pop("stn"), **self._modules}  # it runs first
        for new in (self.stn, *self.layer1, self.layer2[1], self.layer2[2]):
            _kaiming_convs(new)

    def forward_features(self, x: Tensor) -> Tensor:
        return super().forward_features(self.stn(x))


MORE_MODELS: dict[str, Callable[..., nn.Module]] = {
    **{name: tiny_with_stage3_block(block, **kw) for name, (block, kw) in STAGE3_BLOCKS.items()},
    "mix_tiny": MixTinyResNet,
}
