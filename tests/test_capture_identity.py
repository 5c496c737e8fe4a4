"""Proof of identity: the captured tensor is the one each module used.

For every adapter the module's output is rebuilt from the captured attention and the module's
own input (recorded in the same forward with ``io=True``) and compared with what it returned.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import attnviz
from attnviz.capture import registered_adapters

ATOL = 1e-6


def _run(model: nn.Module, size: int = 64, **kw):
    model.eval()
    x = torch.randn(2, 3, size, size)
    with attnviz.capture(model, io=True, **kw) as cache, torch.no_grad():
        model(x)
    return cache


def _timm(name: str, **kw) -> nn.Module:
    return timm.create_model(name, pretrained=False, **kw)


def _assert_gate(cache, kind: str) -> int:
    """se / eca / cbam_channel: output = x * a (per channel)."""
    n = 0
    for site in cache.sites:
        if site.kind != kind:
            continue
        a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        assert a.shape == x.shape[:2]
        assert torch.allclose(x * a[:, :, None, None], out, atol=ATOL), site.name
        n += 1
    assert n > 0
    return n


@pytest.mark.parametrize(
    "factory, kind",
    [
        (lambda: _timm("seresnet50"), "se"),
        (lambda: _timm("legacy_seresnet18"), "se"),
        (lambda: _timm("efficientnet_b0"), "se"),  # timm SqueezeExcite
        (lambda: _timm("mobilenetv3_small_050"), "se"),  # hard-sigmoid SqueezeExcite
        (lambda: _timm("ese_vovnet19b_dw"), "se"),  # EffectiveSEModule
        (lambda: _timm("ecaresnet26t"), "eca"),
        (lambda: _timm("resnet18", block_args=dict(attn_layer="ceca")), "eca"),
        (lambda: _timm("resnet18", block_args=dict(attn_layer="cbam")), "cbam_channel"),
        (lambda: _timm("resnet18", block_args=dict(attn_layer="lcbam")), "cbam_channel"),
        (lambda: torchvision.models.mobilenet_v3_small(), "se"),
        (lambda: torchvision.models.efficientnet_b0(), "se"),
    ],
    ids=[
        "timm-seresnet50",
        "timm-legacy_seresnet18",
        "timm-efficientnet_b0",
        "timm-mobilenetv3",
        "timm-ese_vovnet",
        "timm-ecaresnet26t",
        "timm-ceca",
        "timm-cbam-channel",
        "timm-lcbam-channel",
        "tv-mobilenet_v3_small",
        "tv-efficientnet_b0",
    ],
)
def test_channel_gates_rebuild_output(factory, kind):
    cache = _run(factory())
    _assert_gate(cache, kind)


def test_squeeze_excite_channels_last_rebuilds_output():
    from timm.layers.squeeze_excite import SqueezeExciteCl

    model = nn.Sequential(SqueezeExciteCl(16)).eval()
    x = torch.randn(2, 5, 7, 16)  # (B, H, W, C)
    with attnviz.capture(model, io=True) as cache, torch.no_grad():
        model(x)
    a = cache["0"]
    assert a.shape == (2, 16)
    assert torch.allclose(x * a[:, None, None, :], cache.outputs("0"), atol=ATOL)


@pytest.mark.parametrize("attn_layer", ["cbam", "lcbam"])
def test_cbam_spatial_rebuilds_output(attn_layer):
    cache = _run(_timm("resnet18", block_args=dict(attn_layer=attn_layer)))
    spatial = [s for s in cache.sites if s.kind == "cbam_spatial"]
    assert len(spatial) == 8
    for site in spatial:
        a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        assert a.shape == (x.shape[0], *x.shape[2:])
        assert torch.allclose(x * a[:, None], out, atol=ATOL)


@pytest.mark.parametrize("name", ["skresnet18", "skresnext50_32x4d"])
def test_sk_branch_weights_rebuild_output(name):
    model = _timm(name)
    cache = _run(model)
    sites = [s for s in cache.sites if s.kind == "sk"]
    assert sites
    for site in sites:
        module = model.get_submodule(site.name)
        a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        assert a.shape[1] == 2 and site.dims == ("batch", "branch", "channel")
        assert torch.allclose(a.sum(dim=1), torch.ones_like(a[:, 0]), atol=ATOL)  # a + b = 1
        with torch.no_grad():
            if module.split_input:
                parts = torch.split(x, module.in_channels // module.num_paths, 1)
                u = [op(parts[i]) for i, op in enumerate(module.paths)]
            else:
                u = [op(x) for op in module.paths]
        v = a[:, 0, :, None, None] * u[0] + a[:, 1, :, None, None] * u[1]  # V = a*U3 + b*U5
        assert torch.allclose(v, out, atol=1e-5), site.name
        assert site.info["branch_receptive_field"] == [3, 5]


@pytest.mark.parametrize(
    "factory, fusion",
    [
        (lambda: _timm("gcresnet33ts"), "add"),  # attn_layer='gca'
        (lambda: _timm("resnet18", block_args=dict(attn_layer="gc")), "scale"),
    ],
    ids=["gcresnet33ts-add", "resnet18-gc-scale"],
)
def test_gc_context_map_rebuilds_output(factory, fusion):
    model = factory()
    cache = _run(model)
    sites = [s for s in cache.sites if s.kind == "gc"]
    assert sites
    for site in sites:
        m = model.get_submodule(site.name)
        a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        assert torch.allclose(a.flatten(1).sum(1), torch.ones(a.shape[0]), atol=ATOL)
        context = (x * a[:, None]).sum(dim=(2, 3), keepdim=True)
        with torch.no_grad():
            if fusion == "scale":
                rebuilt = x * m.gate(m.mlp_scale(context))
            else:
                rebuilt = x + m.mlp_add(context)
        assert site.info["fusion"] == [fusion]
        assert torch.allclose(rebuilt, out, atol=1e-5), site.name


def test_nonlocal_rows_rebuild_output():
    model = _timm("resnet18", block_args=dict(attn_layer="nl"))
    cache = _run(model, size=64)
    sites = [s for s in cache.sites if s.kind == "nl"]
    assert len(sites) == 8
    for site in sites:
        m = model.get_submodule(site.name)
        att, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        b, c, h, w = x.shape
        assert att.shape == (b, h * w, h * w)
        assert cache.meta[site.name]["query_grid"] == (h, w)
        assert torch.allclose(att.sum(-1), torch.ones(b, h * w), atol=ATOL)
        with torch.no_grad():
            g = m.g(x)
            y = torch.bmm(att, g.flatten(2).transpose(1, 2))  # (B, N, C')
            y = y.transpose(1, 2).reshape(b, -1, h, w)
            rebuilt = m.norm(m.z(y)) + x
        assert torch.allclose(rebuilt, out, atol=1e-5), site.name


def test_nonlocal_query_rows_equal_full_map_rows():
    model = _timm("resnet18", block_args=dict(attn_layer="nl")).eval()
    x = torch.randn(2, 3, 64, 64)
    with attnviz.capture(model, kinds="nl") as full, torch.no_grad():
        model(x)
    queries = [(0, 0), (3, 5), (15, 15)]
    with attnviz.capture(model, kinds="nl", sites=["NL_2_1"], queries=queries) as sel:
        with torch.no_grad():
            model(x)
    name = sel.site("NL_2_1").name
    w = full.meta[name]["query_grid"][1]
    rows = [y * w + xx for y, xx in queries]
    assert sel[name].shape == (2, 3, 256)
    assert torch.allclose(sel[name], full[name][:, rows], atol=ATOL)
    assert sel.meta[name]["query_index"].tolist() == rows


def test_every_builtin_adapter_names_an_importable_class():
    import importlib

    for qualname, adapter in registered_adapters().items():
        if adapter.family == "user":
            continue
        module_name, cls_name = qualname.rsplit(".", 1)
        cls = getattr(importlib.import_module(module_name), cls_name)
        assert isinstance(cls, type) and issubclass(cls, nn.Module), qualname
