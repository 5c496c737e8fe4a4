"""Next-ViT E-MHSA read exactly (issue 24): ``EfficientAttention`` read at its
``NextTransformerBlock`` (kind ``token``, keys averaged over runs of r^2 raster tokens), fused
and not, against timm's own weights (the input of ``attn_drop``), on a non-square input; the key
members against the module's own pooling; rows and writing."""

from __future__ import annotations

import pytest
import timm
import torch
from timm_testing import set_fused

import attnviz
from attnviz.capture import NotWritableError

X = torch.randn(2, 3, 128, 192, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def nextvit():
    torch.manual_seed(41)
    kw = dict(depths=(1, 2, 5, 1), num_classes=3)
    return timm.create_model("nextvit_small", pretrained=False, **kw).eval()


def _names(model):
    return [n for n, m in model.named_modules() if type(m).__name__ == "NextTransformerBlock"]


def _oracle(model):
    got, hooks = {}, []
    for n in _names(model):
        drop = model.get_submodule(n).e_mhsa.attn_drop
        hooks.append(drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0])))
    try:
        with set_fused(model, False), torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    return got


@pytest.mark.parametrize("fused", [True, False])
def test_nextvit_weights_equal_timm_weights(nextvit, fused):
    oracle = _oracle(nextvit)
    names = _names(nextvit)
    assert len(oracle) == 3
    with set_fused(nextvit, fused), torch.no_grad():
        plain = nextvit(X)
        with attnviz.capture(nextvit, sites=names) as cache:
            out = nextvit(X)
    assert torch.equal(out, plain)
    grids = {}
    for n in names:
        meta = cache.meta[n]
        assert meta["path"] == ("fused" if fused else "softmax") and meta["prefix_tokens"] == 0
        torch.testing.assert_close(cache[n], oracle[n], rtol=0, atol=1e-6)
        torch.testing.assert_close(cache[n].sum(-1), torch.ones(cache[n].shape[:-1]))
        qh, qw = meta["query_grid"]
        kh, kw = meta["key_grid"]
        assert cache[n].shape[-2:] == (qh * qw, kh * kw)
        grids[n] = (meta["query_grid"], meta["key_grid"])
    # 128 x 192 input: maps 16 x 24 (r = 4: runs of 16 straddle rows), 8 x 12 (r = 2: 4 | 12),
    # 4 x 6 after the last block's stride-2 patch embedding (r = 1)
    assert list(grids.values()) == [((16, 24), (1, 24)), ((8, 12), (8, 3)), ((4, 6), (4, 6))]


def test_nextvit_key_members_are_what_the_module_averages(nextvit):
    name = _names(nextvit)[0]
    attn = nextvit.get_submodule(name).e_mhsa
    with torch.no_grad(), attnviz.capture(nextvit, sites=name) as cache:
        nextvit(X)
    members = cache.meta[name]["key_members"]
    assert members.shape == (24, 16)
    position = torch.arange(16 * 24, dtype=torch.float).view(1, 1, -1)
    torch.testing.assert_close(attn.sr(position)[0, 0], members.float().mean(-1))
    # the same layout on a 64 x 64 map: r^2 = 16 covers whole rows of a 16 x 16 map
    from attnviz.capture.adapters.timm_nextvit import _key_grid

    assert _key_grid((16, 16), 16) == (16, 1) and _key_grid((8, 12), 4) == (8, 3)


def test_nextvit_queries_keep_rows(nextvit):
    name = _names(nextvit)[1]
    cells = [(0, 0), (7, 11), (3, 5)]
    with torch.no_grad():
        with attnviz.capture(nextvit, sites=name) as full:
            nextvit(X)
        with attnviz.capture(nextvit, sites=name, queries=cells) as rows:
            nextvit(X)
    idx = [y * 12 + x for y, x in cells]
    torch.testing.assert_close(rows[name], full[name][:, :, idx], rtol=0, atol=1e-6)


def test_nextvit_uniform_writes_the_mean_value(nextvit):
    name = _names(nextvit)[1]
    attn = nextvit.get_submodule(name).e_mhsa
    with pytest.raises(NotWritableError, match="e_mhsa.fused_attn = False"):
        with set_fused(nextvit, True):
            attnviz.intervene(nextvit, {name: "uniform"})
    seen = {}
    hooks = [
        attn.v.register_forward_hook(lambda m, i, o: seen.update(v=o)),
        attn.register_forward_hook(lambda m, i, o: seen.update(y=o)),
    ]
    try:
        with set_fused(nextvit, False), torch.no_grad():
            with attnviz.intervene(nextvit, {name: "uniform"}):
                nextvit(X)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():  # every query reads the mean of the (pooled) values
        expected = attn.proj(seen["v"].mean(1, keepdim=True)).expand_as(seen["y"])
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
