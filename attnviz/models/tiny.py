"""Tiny ResNets with a pluggable attention block, trained on the generated shapes dataset.

Layout (64 px input): stem 3x3 conv (stride 2) -> 32x32; four residual
stages ``layer1``..``layer4`` of basic blocks at 32, 16, 8, 4 px. Module names follow
torchvision's ResNet (``layer2.1.attn``), so capture's aliases apply: ``layerX.Y`` is paper
stage X + 1, block Y + 1 (``SK_2_1`` .. ``SK_5_2``). A Non-local block after block 1 of stage 3
(``layer2.0``) sees 16 x 16 = 256 positions.

Attention placement (``attn``):

* ``"sk"``: the first 3x3 conv of every block is an :class:`~attnviz.blocks.SKConv` (M=2), as
  in timm's ``skresnet18`` (``layerX.Y.conv1``);
* ``"se"``, ``"cbam"``, ``"gc"``: the block ``layerX.Y.attn`` after the last conv (and BN)
  of every block, before the residual addition;
* ``"nl"``: one :class:`~attnviz.blocks.NonLocalBlock` ``layer2.1`` inserted after block 1 of
  stage 3 (``layer2.0``); ``attn_kwargs`` (e.g. ``mode="dot_product"``) go to the block.

``plain_tiny`` (also registered as ``resnet_tiny``) is the same network without any attention:
the baseline the attention models are compared against.

Adding a model is one entry in ``TINY_MODELS``. The models of :mod:`attnviz.models.tiny_more`
(``sa_tiny``, ``danet_tiny``, ``mix_tiny``) are added to this same dict by
:mod:`attnviz.models.zoo`, which :mod:`attnviz.models` imports, so ``TINY_MODELS`` holds every
model however it is imported.

``IMAGE_SIZE``, ``MEAN`` and ``STD`` are the input convention of every tiny model (64 px RGB,
ImageNet mean/std on [0, 1] pixel values).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import Tensor, nn

from ..blocks import SKConv, create_attn

IMAGE_SIZE = 64
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

DEFAULT_WIDTHS = (16, 32, 64, 128)
DEFAULT_DEPTHS = (2, 2, 2, 2)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """ResNet basic block: conv1 -> BN -> ReLU -> conv2 -> BN [-> attn] + shortcut -> ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        attn: str | None = None,
        attn_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        kw = dict(attn_kwargs or {})
        if attn == "sk":
            self.conv1: nn.Module = SKConv(cin, cout, stride=stride, **kw)  # BN + ReLU inside
        else:
            self.conv1 = nn.Sequential(*_conv_bn(cin, cout, stride), nn.ReLU(inplace=True))
        self.conv2 = _conv_bn(cout, cout)
        self.attn: nn.Module = (
            create_attn(attn, cout, **kw) if attn not in (None, "sk") else nn.Identity()
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.attn(self.conv2(self.conv1(x)))
        return self.act(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """A small four-stage ResNet with a pluggable attention (see the module docstring).

    ``attn`` is ``None``, ``"sk"``, a block name of :data:`attnviz.blocks.ATTN_BLOCKS` used in
    every block (``"se"``, ``"cbam"``, ``"gc"``), or ``"nl"`` (one Non-local block in stage 3).
    """

    # timm-style data config (read by attnviz.preprocess_for): 64 px, shorter side resized
    # and centre-cropped, ImageNet mean / std, as in training
    pretrained_cfg: dict = {
        "input_size": (3, IMAGE_SIZE, IMAGE_SIZE),
        "interpolation": "bilinear",
        "mean": MEAN,
        "std": STD,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }

    def __init__(
        self,
        attn: str | None,
        num_classes: int = 10,
        widths: Sequence[int] = DEFAULT_WIDTHS,
        depths: Sequence[int] = DEFAULT_DEPTHS,
        attn_kwargs: dict | None = None,
        stem_width: int = 16,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError("TinyResNet has four stages: give four widths and four depths")
        self.num_classes = num_classes
        self.config = {
            "attn": attn,
            "num_classes": num_classes,
            "widths": list(widths),
            "depths": list(depths),
            "attn_kwargs": dict(attn_kwargs) if attn_kwargs else None,
            "stem_width": stem_width,
            "zero_init_residual": zero_init_residual,
        }
        self.stem = nn.Sequential(*_conv_bn(3, stem_width, stride=2), nn.ReLU(inplace=True))
        block_attn = None if attn == "nl" else attn
        cin = stem_width
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks: list[nn.Module] = []
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, width, stride, block_attn, attn_kwargs))
                cin = width
                if attn == "nl" and i == 1 and j == 0:
                    blocks.append(create_attn("nl", width, **(attn_kwargs or {})))
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.abs().sum() > 0:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:  # each residual branch starts at zero: faster early training
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.conv2[1].weight)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.forward_features(x)).flatten(1))


def _tiny(attn: str | None, **attn_kwargs) -> Callable[..., TinyResNet]:
    return partial(TinyResNet, attn, attn_kwargs=attn_kwargs or None)


TINY_MODELS: dict[str, Callable[..., nn.Module]] = {
    "plain_tiny": _tiny(None),
    "resnet_tiny": _tiny(None),  # the older name of plain_tiny
    "sk_tiny": _tiny("sk"),
    "se_tiny": _tiny("se"),
    "cbam_tiny": _tiny("cbam"),
    "gc_tiny": _tiny("gc"),
    "nl_tiny": _tiny("nl", mode="embedded_gaussian"),
    "nl_tiny_gaussian": _tiny("nl", mode="gaussian"),
    "nl_tiny_dot": _tiny("nl", mode="dot_product"),
    "nl_tiny_concat": _tiny("nl", mode="concatenation"),
}


def create_tiny(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build the tiny model registered as ``name`` (randomly initialised)."""
    try:
        factory = TINY_MODELS[name]
    except KeyError:
        raise ValueError(
            f"unknown tiny model {name!r}; valid names: {sorted(TINY_MODELS)}"
        ) from None
    return factory(num_classes=num_classes, **kwargs)
