"""Golden capture manifest: every built-in adapter, on a model with every parameter randomised
and (wherever the model allows) an H != W input, pinned site by site (issue 26, the class
"adapter meta keys and grid fallbacks").

The per-family tests prove the captured tensor is the one the module used; they check the
numbers they compare and leave the rest free. This manifest pins the rest as a class: for each
site its kind, dims, module type, family, stage and block, the adapter's ``describe`` facts
(``Site.info``), every key and value of the capture's ``meta`` (grids, prefix tokens, parts,
query rows), and the captured tensor's shape and digest (sum, min, max and a position-weighted
sum, so a transposed or shifted layout changes it). Each case is captured twice: all rows, and
at per-query sites only the rows of two corner cells, so a wrong query grid changes the digest.

Every float parameter is moved off its initial value (zero-initialised biases such as
torchvision's ``in_proj_bias`` or timm's relative-position tables would otherwise hide a read
that ignores them) and batch-norm statistics are random. ``test_every_adapter_has_a_case``
fails when an adapter is added without a case. After a deliberate change, review the diff,
then regenerate:

    ATTNVIZ_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_capture_manifest.py
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torchvision
from golden_testing import UPDATE, read_golden
from test_plot_digest import _arr, _diff, _num
from test_timm_maxxvit_attention import _coatnet, _maxvit
from timm.layers import get_attn
from timm.models import maxxvit as mx
from torch import nn

import attnviz
from attnviz import blocks
from attnviz.capture import get_kind, registry
from attnviz.capture.core import TIMM_REGISTRY

GOLDEN = Path(__file__).parent / "golden" / "capture_manifest.json"
C = 32  # channels of the standalone conv-attention modules


class _ChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1)


def _after_stem(module: nn.Module, channels_last: bool = False) -> nn.Module:
    """A conv stem (3 -> C channels) then the attention module."""
    stem = [nn.Conv2d(3, C, 3, padding=1), nn.BatchNorm2d(C), nn.ReLU()]
    return nn.Sequential(*stem, *([_ChannelsLast()] if channels_last else []), module)


def _timm(name: str, **kw: Any) -> Callable[[], nn.Module]:
    return lambda: timm.create_model(name, pretrained=False, **kw)


def _registry_layer(name: str) -> nn.Module:
    extra = {
        "bottleneck": dict(feat_size=(12, 20)),
        "halo": dict(block_size=4, halo_size=1),
        "sk": dict(out_channels=C),
        "splat": dict(radix=2),
        "bat": dict(block_size=4, groups=2),
        "ge": dict(use_mlp=False),  # timm 1.0.31 cannot build its ConvMlp (act_layer twice)
    }.get(name, {})
    return _after_stem(get_attn(name)(C, **extra))


class _Tokens(nn.Module):
    """8 x 8 patches as tokens (with a class token first when ``cls``), then ``attn``, outside
    any model that knows the patch grid (the adapters' fallback layouts)."""

    def __init__(self, attn: nn.Module, dim: int = 16, cls: bool = True) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls else None
        self.attn = attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2)
        if self.cls is not None:
            t = torch.cat([self.cls.expand(len(t), -1, -1), t], 1)
        return self.attn(t)


def _parallel_maxvit() -> nn.Module:
    tcfg = mx.MaxxVitTransformerCfg(dim_head=8, window_size=(4, 4))
    cfg = mx.MaxxVitCfg(
        embed_dim=(32, 32), depths=(1, 1), block_type=("PM", "PM"), stem_width=(8, 16)
    )
    return mx.MaxxVit(mx.MaxxVitCfg(**{**cfg.__dict__, "transformer_cfg": tcfg}), img_size=(64, 96))


def _tv_swin(v2: bool) -> nn.Module:
    from torchvision.models import swin_transformer as st

    kw = dict(patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[5, 5])
    if v2:
        kw.update(block=st.SwinTransformerBlockV2, downsample_layer=st.PatchMergingV2)
    return st.SwinTransformer(**kw, num_classes=3)


def _tv_maxvit() -> nn.Module:
    return torchvision.models.MaxVit(
        input_size=(96, 96), stem_channels=16, partition_size=4, block_channels=[16, 32],
        block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=3,
    )  # fmt: skip


def _pvt_pooled_to(size: tuple[int, int]) -> nn.Module:
    """PVT-v2 with linear attention whose pools give a non-square ``size`` (the reduced-layout
    read of a tuple ``output_size``; timm's own models use an int)."""
    model = timm.create_model("pvt_v2_b0", linear=True, num_classes=3)
    for m in model.modules():
        if getattr(m, "pool", None) is not None:
            m.pool = nn.AdaptiveAvgPool2d(size)
    return model


def _tv_encoder_block() -> nn.Module:
    from torchvision.models.vision_transformer import EncoderBlock

    return EncoderBlock(2, 16, 32, dropout=0.0, attention_dropout=0.0)


def _tv_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    )


SMALL_VIT = dict(depth=1, num_classes=3)
#: 12 x 16 tokens in 5 x 5 windows: padded windows, shift 2 in odd blocks
SMALL_SWIN = dict(
    img_size=(24, 32),
    patch_size=2,
    window_size=5,
    embed_dim=16,
    depths=(2, 2),
    num_heads=(2, 2),
    num_classes=3,
)

#: case -> (model builder, (H, W) of the input). Square inputs only where the model needs them.
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, int]]] = {
    **{f"timm_registry_{n}": (lambda n=n: _registry_layer(n), (12, 20)) for n in TIMM_REGISTRY},
    "timm_gather_excite_map": (
        lambda: _after_stem(get_attn("ge")(C, extent=2, use_mlp=False, add_maxpool=True)),
        (12, 20),
    ),
    "timm_se_channels_last": (
        lambda: _after_stem(timm.layers.squeeze_excite.SqueezeExciteCl(C), channels_last=True),
        (12, 20),
    ),
    "timm_multi_query_2d": (
        lambda: _after_stem(
            timm.layers.attention2d.MultiQueryAttention2d(
                C,
                num_heads=4,
                key_dim=8,
                value_dim=8,
                query_strides=2,
                kv_stride=2,
                padding="same",
            )
        ),
        (12, 20),
    ),
    "timm_mobilenetv3_se": (_timm("mobilenetv3_small_050", num_classes=3), (64, 96)),
    "timm_legacy_senet": (_timm("legacy_seresnet18", num_classes=3), (64, 96)),
    "timm_hgnet_ese": (_timm("hgnet_tiny", num_classes=3), (64, 96)),
    "timm_vit_registers": (
        _timm("vit_tiny_patch16_224", img_size=(24, 40), patch_size=8, reg_tokens=2, **SMALL_VIT),
        (24, 40),
    ),
    "timm_vit_no_class_token": (
        _timm(
            "vit_tiny_patch16_224",
            img_size=(24, 40),
            patch_size=8,
            class_token=False,
            global_pool="avg",
            **SMALL_VIT,
        ),
        (24, 40),
    ),
    "timm_vit_rope": (
        _timm(
            "vit_pe_core_tiny_patch16_384",
            img_size=(64, 96),
            patch_size=16,
            depth=1,
            num_classes=3,
        ),
        (64, 96),
    ),
    "timm_eva02": (_timm("eva02_tiny_patch14_224", img_size=(28, 42), **SMALL_VIT), (28, 42)),
    "timm_beit": (
        _timm(
            "beit_base_patch16_224",
            img_size=(32, 48),
            patch_size=8,
            embed_dim=32,
            num_heads=2,
            **SMALL_VIT,
        ),
        (32, 48),
    ),
    "timm_cait": (
        _timm(
            "cait_xxs24_224",
            img_size=(24, 32),
            patch_size=8,
            depth=1,
            depth_token_only=1,
            num_classes=3,
        ),
        (24, 32),
    ),
    "timm_cait_class_alone": (lambda: _Tokens(timm.models.cait.ClassAttn(16, 2)), (32, 32)),
    "timm_cait_talking_alone": (
        lambda: _Tokens(timm.models.cait.TalkingHeadAttn(16, 2), cls=False),
        (32, 32),
    ),
    "timm_cait_talking_alone_cls": (
        lambda: _Tokens(timm.models.cait.TalkingHeadAttn(16, 2)),
        (24, 40),
    ),
    "timm_xcit": (
        _timm("xcit_nano_12_p8_224", img_size=(32, 48), depth=1, cls_attn_layers=1, num_classes=3),
        (32, 48),
    ),
    "timm_coat_lite": (_timm("coat_lite_tiny", img_size=(64, 96), num_classes=3), (64, 96)),
    "timm_coat_parallel": (_timm("coat_tiny", img_size=(64, 96), num_classes=3), (64, 96)),
    "timm_convit": (
        _timm(
            "convit_tiny", img_size=32, patch_size=8, depth=3, local_up_to_layer=2, num_classes=3
        ),
        (32, 32),
    ),
    "timm_cpubone": (_timm("cpubone_nano", num_classes=3), (112, 176)),
    # the 2 x 2 reduced variant at stride 4 on 15 x 22: H and W padded by 1 and 2 to 16 x 24
    # (at timm's stride 2 a pad of -H % 2 equals H % 2, so only stride >= 3 shows its sign)
    "timm_cpubone_small_kernels_stride4": (
        lambda: _after_stem(
            timm.models.cpubone.ConvAttention(
                C, att_stride=4, small_kernels=True, upsample_mode="nearest"
            )
        ),
        (15, 22),
    ),
    "timm_crossvit": (_timm("crossvit_tiny_240", num_classes=3), (240, 240)),
    "timm_davit": (
        _timm(
            "davit_tiny",
            depths=(1, 1, 1, 1),
            embed_dims=(32, 64, 96, 128),
            num_heads=(2, 4, 6, 8),
            num_classes=3,
        ),
        (80, 112),
    ),
    "timm_davit_v2": (
        _timm(
            "davit_base_fl",
            depths=(1, 1, 1, 1),
            embed_dims=(32, 64, 96, 128),
            num_heads=(2, 4, 6, 8),
            num_classes=3,
        ),
        (80, 112),
    ),
    "timm_edgenext": (_timm("edgenext_xx_small", num_classes=3), (64, 96)),
    "timm_efficientformer": (_timm("efficientformer_l1", num_classes=3), (224, 224)),
    "timm_efficientformer_v2": (_timm("efficientformerv2_s0", num_classes=3), (224, 224)),
    "timm_efficientvim": (_timm("efficientvim_m1", num_classes=3), (128, 192)),
    "timm_efficientvit_msra": (_timm("efficientvit_m0", num_classes=3), (160, 224)),
    "timm_gcvit": (
        lambda: timm.models.gcvit.GlobalContextVit(
            depths=(2, 2),
            num_heads=(2, 4),
            embed_dim=32,
            window_ratio=(16, 16),
            img_size=64,
            num_classes=3,
        ),
        (64, 64),
    ),
    "timm_gemma4_vit": (
        _timm(
            "gemma4_vit_167m",
            depth=1,
            embed_dim=64,
            num_heads=4,
            head_dim=16,
            intermediate_size=128,
            num_classes=3,
        ),
        (64, 96),
    ),
    "timm_hiera": (_timm("hiera_tiny_224", img_size=(64, 96), num_classes=3), (64, 96)),
    "timm_sam2_hiera": (_timm("sam2_hiera_tiny", num_classes=3), (64, 96)),
    "timm_iformer": (_timm("iformer_t", num_classes=3), (128, 192)),
    "timm_levit": (_timm("levit_128s", img_size=128, num_classes=3), (128, 128)),
    "timm_lowformer": (_timm("lowformer_b0", num_classes=3), (112, 176)),
    "timm_maxvit_nchw": (lambda: _maxvit(True, "bias"), (64, 96)),
    "timm_maxvit_cl": (lambda: _maxvit(False, "mlp"), (64, 96)),
    "timm_maxvit_parallel": (_parallel_maxvit, (64, 96)),
    "timm_coatnet": (_coatnet, (64, 96)),
    "timm_caformer": (_timm("caformer_s18", num_classes=3), (64, 96)),
    "timm_mvitv2": (_timm("mvitv2_tiny", img_size=96, num_classes=3), (64, 96)),
    "timm_nest": (
        lambda: timm.models.nest.Nest(
            img_size=64,
            patch_size=4,
            embed_dims=(32, 64, 96),
            num_heads=(2, 4, 6),
            depths=(1, 1, 1),
            num_classes=3,
        ),
        (64, 64),
    ),
    "timm_nextvit": (_timm("nextvit_small", depths=(1, 2, 5, 1), num_classes=3), (128, 192)),
    "timm_pvt_v2": (_timm("pvt_v2_b0", num_classes=3), (64, 96)),
    "timm_pvt_v2_linear": (_timm("pvt_v2_b0", linear=True, num_classes=3), (64, 96)),
    "timm_pvt_v2_linear_pool_3x5": (lambda: _pvt_pooled_to((3, 5)), (64, 96)),
    "timm_sam_vit": (
        _timm(
            "samvit_base_patch16",
            img_size=80,
            embed_dim=32,
            depth=2,
            num_heads=2,
            window_size=4,
            global_attn_indexes=(1,),
            num_classes=3,
        ),
        (80, 80),
    ),
    "timm_shvit": (_timm("shvit_s1", num_classes=3), (128, 192)),
    "timm_swiftformer": (_timm("swiftformer_xs", num_classes=3), (64, 96)),
    "timm_swin": (_timm("swin_tiny_patch4_window7_224", **SMALL_SWIN), (24, 32)),
    "timm_swin_v2": (_timm("swinv2_tiny_window8_256", **SMALL_SWIN), (24, 32)),
    "timm_swin_v2_cr": (_timm("swinv2_cr_tiny_224", **SMALL_SWIN), (24, 32)),
    "timm_tiny_vit": (_timm("tiny_vit_5m_224", num_classes=3), (160, 224)),
    "timm_tnt": (_timm("tnt_s_patch16_224", img_size=(32, 48), depth=2, num_classes=3), (32, 48)),
    "timm_twins": (
        _timm("twins_svt_small", img_size=96, depths=(2, 2, 2, 2), num_classes=3),
        (96, 128),
    ),
    # one block per stage: deeper, the randomised features grow until every attention row is
    # one-hot, and a near-tie of two logits then falls either way on another CPU's kernels
    "timm_visformer": (
        _timm("visformer_tiny", img_size=128, depth=(1, 1, 1), num_classes=3),
        (128, 128),
    ),
    "timm_vit_relpos": (
        _timm("vit_relpos_small_patch16_224", img_size=(24, 40), patch_size=8, **SMALL_VIT),
        (24, 40),
    ),
    "timm_volo": (_timm("volo_d1_224", img_size=64, num_classes=3), (64, 64)),
    "timm_volo_outlook": (
        lambda: timm.models.volo.VOLO(
            layers=(1, 1, 1, 1),
            img_size=(64, 96),
            embed_dims=(32, 64, 64, 64),
            num_heads=(1, 2, 2, 2),
            num_classes=3,
        ),
        (64, 96),
    ),
    "torchvision_mobilenet_se": (
        lambda: torchvision.models.mobilenet_v3_small(weights=None, num_classes=3),
        (64, 96),
    ),
    "torchvision_swin": (lambda: _tv_swin(False), (40, 56)),
    "torchvision_swin_v2": (lambda: _tv_swin(True), (40, 56)),
    "torchvision_maxvit": (_tv_maxvit, (96, 96)),  # its grid partition needs H = W
    "torchvision_vit": (_tv_vit, (32, 32)),
    # outside a VisionTransformer: the grid fallbacks (4 x 4 + class token; 3 x 5 + class token)
    "torchvision_vit_block_alone_square": (lambda: _Tokens(_tv_encoder_block()), (32, 32)),
    "torchvision_vit_block_alone_3x5": (lambda: _Tokens(_tv_encoder_block()), (24, 40)),
    "attnviz_se": (lambda: _after_stem(blocks.SEBlock(C)), (12, 20)),
    "attnviz_sk": (lambda: _after_stem(blocks.SKConv(C, C)), (12, 20)),
    "attnviz_cbam": (lambda: _after_stem(blocks.CBAM(C)), (12, 20)),
    "attnviz_bam": (lambda: _after_stem(blocks.BAM(C)), (12, 20)),
    "attnviz_scse": (lambda: _after_stem(blocks.SCSE(C)), (12, 20)),
    "attnviz_gc": (lambda: _after_stem(blocks.GCBlock(C)), (12, 20)),
    "attnviz_non_local": (lambda: _after_stem(blocks.NonLocalBlock(C)), (12, 20)),
    "attnviz_self_attention": (lambda: _after_stem(blocks.SelfAttention2d(C)), (12, 20)),
    "attnviz_danet": (lambda: _after_stem(blocks.DualAttention(C)), (12, 20)),
    "attnviz_residual_attention": (lambda: _after_stem(blocks.ResidualAttention(C)), (12, 20)),
    "attnviz_ion": (lambda: _after_stem(blocks.IONContext(C)), (12, 20)),
    "attnviz_stn": (lambda: _after_stem(blocks.SpatialTransformer(C)), (12, 20)),
}


# ----------------------------------------------------------------------------- the manifest
def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every float parameter moved off its initial value; random batch-norm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def _plain(v: Any) -> Any:
    """A JSON-able, rounded form of a meta or info value."""
    if isinstance(v, torch.Tensor):
        if v.is_floating_point():
            return _arr(v.detach().double().numpy())
        if v.numel() <= 40:
            return v.tolist()
        flat = v.flatten().long()
        weights = torch.arange(flat.numel()) % 997 + 1  # exact: an index moved changes it
        return {"shape": list(v.shape), "sum": int(flat.sum()), "min": int(flat.min()),
                "max": int(flat.max()), "wsum": int((flat * weights).sum())}  # fmt: skip
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return v
    if isinstance(v, float):
        return _num(v)
    return repr(v)


def _adapter_key(module: nn.Module) -> str:
    adapter = registry.adapter_for(module)
    return next(k for k, a in registry.registered_adapters().items() if a is adapter)


def _digest(model: nn.Module, x: torch.Tensor, queries: bool) -> dict:
    """{site: its facts, meta and tensor digest} of one captured forward."""
    opts: dict[str, Any] = {}
    if queries:
        opts["queries"] = lambda grid: [(0, grid[1] - 1), (grid[0] - 1, 0)]
        with attnviz.capture(model) as cache:
            pass
        opts["sites"] = [s.name for s in cache.sites if get_kind(s.kind).per_query]
        if not opts["sites"]:
            return {}
    with attnviz.capture(model, **opts) as cache, torch.no_grad():
        model(x)
    out = {}
    for site in cache.sites:
        entry = {
            "adapter": _adapter_key(model.get_submodule(site.name)),
            "kind": site.kind, "alias": site.alias, "dims": list(site.dims),
            "module_type": site.module_type, "family": site.family,
            "stage": site.stage, "block": site.block, "info": _plain(site.info),
            "meta": _plain(cache.meta.get(site.name, {})),
        }  # fmt: skip
        if site.name in cache:
            tensor = cache[site.name].double()
            assert tensor.isfinite().any(), (
                f"{site.name}: no finite value (the digest would hide it)"
            )
            entry["tensor"] = _arr(tensor.numpy())
        out[site.name] = entry
    return out


def manifest(case: str) -> dict:
    build, (h, w) = CASES[case]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _randomise(build())
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
    return json.loads(
        json.dumps({"all rows": _digest(model, x, False), "queries": _digest(model, x, True)})
    )


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("case", sorted(CASES))
def test_capture_matches_its_reviewed_manifest(case, golden_updates):
    got = manifest(case)
    assert got["all rows"], f"{case}: no site captured"
    if UPDATE:
        golden_updates[case] = got
        return
    golden = read_golden(GOLDEN)
    assert case in golden, f"{case}: no golden manifest (regenerate: see the docstring)"
    diffs: list[str] = []
    _diff(golden[case], got, case, diffs)
    if diffs:
        pytest.fail(f"{len(diffs)} differences (review, then regenerate: see the docstring):\n"
                    + "\n".join(diffs[:30]))  # fmt: skip


def test_every_adapter_has_a_case():
    """The golden manifest reads every built-in adapter at least once."""
    if UPDATE:
        pytest.skip("the golden is being regenerated; run again to check")
    registry._ensure_builtin_adapters()
    builtin = {k for k, a in registry.registered_adapters().items() if a.family != "user"}
    seen = {
        site["adapter"]
        for case in read_golden(GOLDEN).values()
        for site in case["all rows"].values()
    }
    assert builtin - seen == set(), "adapters without a manifest case"
    assert set(read_golden(GOLDEN)) == set(CASES)
