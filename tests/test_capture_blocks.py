"""Proof of identity for the adapters of attnviz's reference blocks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnviz
from attnviz.blocks import CBAM, NL_MODES, GCBlock, NonLocalBlock, SEBlock, SKConv

ATOL = 1e-6


def _randomise(module: nn.Module) -> nn.Module:
    """Random weights everywhere (zero-initialised layers would make rebuilds trivial)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return module.eval()


def _capture(model: nn.Module, x: torch.Tensor):
    with attnviz.capture(model, io=True) as cache, torch.no_grad():
        model(x)
    return cache


def test_se_block():
    model = nn.Sequential(_randomise(SEBlock(16, reduction=4)))
    x = torch.randn(2, 16, 6, 6)
    cache = _capture(model, x)
    a = cache["0"]
    assert a.shape == (2, 16) and cache.sites[0].family == "attnviz"
    assert torch.allclose(x * a[:, :, None, None], cache.outputs("0"), atol=ATOL)


@pytest.mark.parametrize("num_paths", [2, 3])
def test_sk_conv(num_paths):
    model = nn.Sequential(_randomise(SKConv(8, 8, num_paths=num_paths, groups=2, min_dim=4)))
    x = torch.randn(2, 8, 9, 9)
    cache = _capture(model, x)
    a = cache["0"]
    assert a.shape == (2, num_paths, 8)
    assert torch.allclose(a.sum(1), torch.ones(2, 8), atol=ATOL)
    assert cache.sites[0].info["branch_receptive_field"] == [3, 5, 7][:num_paths]
    with torch.no_grad():
        u = [p(x) for p in model[0].paths]
    v = sum(a[:, m, :, None, None] * u[m] for m in range(num_paths))
    assert torch.allclose(v, cache.outputs("0"), atol=1e-5)


def test_cbam_gates():
    model = nn.Sequential(_randomise(CBAM(16, reduction=4)))
    x = torch.randn(2, 16, 7, 7)
    cache = _capture(model, x)
    ch, sp = cache.by_alias("CBAMC_1"), cache.by_alias("CBAMS_1")
    assert ch.shape == (2, 16) and sp.shape == (2, 7, 7)
    rebuilt = x * ch[:, :, None, None]
    assert torch.allclose(rebuilt, cache.inputs("0.spatial"), atol=ATOL)
    assert torch.allclose(rebuilt * sp[:, None], cache.outputs("0.spatial"), atol=1e-5)


def test_gc_block():
    model = nn.Sequential(_randomise(GCBlock(16)))
    x = torch.randn(2, 16, 5, 6)
    cache = _capture(model, x)
    a = cache["0"]
    assert a.shape == (2, 5, 6)
    assert torch.allclose(a.flatten(1).sum(1), torch.ones(2), atol=ATOL)
    with torch.no_grad():
        rebuilt = x + model[0].channel_add((x * a[:, None]).sum((2, 3), keepdim=True))
    assert torch.allclose(rebuilt, cache.outputs("0"), atol=1e-5)


@pytest.mark.parametrize("sub_sample", [False, True])
@pytest.mark.parametrize("mode", NL_MODES)
def test_nonlocal_block(mode, sub_sample):
    block = _randomise(NonLocalBlock(8, mode=mode, sub_sample=sub_sample))
    model = nn.Sequential(block)
    x = torch.randn(2, 8, 6, 8)
    cache = _capture(model, x)
    att = cache["0"]
    hk, wk = (3, 4) if sub_sample else (6, 8)
    assert att.shape == (2, 48, hk * wk)
    assert cache.meta["0"]["query_grid"] == (6, 8) and cache.meta["0"]["key_grid"] == (hk, wk)
    assert cache.sites[0].info["instantiation"] == mode
    if mode in ("embedded_gaussian", "gaussian"):
        assert torch.allclose(att.sum(-1), torch.ones(2, 48), atol=ATOL)  # rows sum to 1
    with torch.no_grad():
        g = block.pool(block.g(x)).flatten(2).transpose(1, 2)
        y = torch.bmm(att, g).transpose(1, 2).reshape(2, -1, 6, 8)
        rebuilt = block.W_z(y) + x
    assert torch.allclose(rebuilt, cache.outputs("0"), atol=1e-5)
    # query selection keeps exactly those rows
    with attnviz.capture(model, queries=[(0, 0), (5, 7)]) as sel, torch.no_grad():
        model(x)
    assert torch.allclose(sel["0"], att[:, [0, 47]], atol=ATOL)
