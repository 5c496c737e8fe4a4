"""timm ``MultiQueryAttention2d`` read exactly (issue 24): MobileNetV4-hybrid blocks (keys on the
map halved by a strided depthwise conv, one key head shared by all query heads), fused and not,
on a non-square input with odd maps, and a standalone module with query strides, TF-"same"
padding and the einsum layout; proven against timm's own weights (the input of ``attn_drop``)
with the output unchanged, and written (uniform weights) against a hand computation."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm.layers.attention2d import MultiQueryAttention2d
from timm_testing import module_io, set_fused

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 80, 112, generator=torch.Generator().manual_seed(0))  # MQA maps 5x7, 3x4


def _hybrid():
    """Random weights; BatchNorm statistics set from X itself (eps 1e-12), so the attention
    inputs have unit scale (with timm's init they are ~1e-11 and every row is uniform)."""
    torch.manual_seed(17)
    model = timm.create_model("mobilenetv4_hybrid_medium_075", pretrained=False, num_classes=3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum, m.eps = None, 1e-12  # running statistics = those of one batch
            m.reset_running_stats()
    with torch.no_grad():
        model.train()(X)
    return model.eval()


def _standalone(einsum: bool = False):
    """Queries average-pooled by 2, keys by a stride-2 TF-"same" conv (timm's Conv2dSame)."""
    torch.manual_seed(19)
    mqa = MultiQueryAttention2d(
        16, num_heads=4, key_dim=8, value_dim=8, query_strides=2, kv_stride=2, padding="same"
    )
    mqa.einsum = einsum
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), mqa).eval()


def _oracle(model, x, einsum: bool = False) -> dict:
    """timm's own non-fused weights, (B, heads, Nq, Nk): the input of each ``attn_drop``."""
    got, hooks = {}, []
    for n, m in model.named_modules():
        if isinstance(m, MultiQueryAttention2d):
            hooks.append(
                m.attn_drop.register_forward_hook(
                    lambda m, i, o, n=n: got.__setitem__(
                        n, (i[0].transpose(1, 2) if einsum else i[0]).clone()
                    )
                )
            )
    try:
        with torch.no_grad(), set_fused(model, False):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


def _check(model, x, oracle, fused: bool, grids: dict) -> None:
    with torch.no_grad(), set_fused(model, fused):
        plain = model(x)
        with attnviz.capture(model, kinds="token") as cache:
            out = model(x)
        with attnviz.capture(model, kinds="token", queries=[(0, 0), (1, 2)]) as rows:
            model(x)
    assert torch.equal(out, plain)
    assert set(cache.keys()) == set(oracle) and oracle
    atol = 1e-5 if fused else 0.0
    for n, ref in oracle.items():
        meta = cache.meta[n]
        (qh, qw), key = grids[n]
        assert (meta["query_grid"], meta["key_grid"]) == ((qh, qw), key)
        assert ref.shape[-2:] == (qh * qw, key[0] * key[1])
        torch.testing.assert_close(cache[n], ref, rtol=0, atol=atol)
        torch.testing.assert_close(rows[n], ref[:, :, [0, 1 * qw + 2]], rtol=0, atol=atol)
        torch.testing.assert_close(cache[n].sum(-1), torch.ones(ref.shape[:-1]))
        assert meta["path"] == ("fused" if fused else "softmax") and meta["prefix_tokens"] == 0


@pytest.mark.parametrize("fused", [True, False])
def test_mobilenetv4_hybrid_mqa_equals_timm_weights(fused):
    model = _hybrid()
    assert unread_modules(model) == {}
    oracle = _oracle(model, X)
    assert len(oracle) == 8
    assert min(float(r.max()) for r in oracle.values()) > 0.3  # rows far from uniform (1/12)
    # stage 4: 5 x 7 queries, keys 3 x 4 (3x3 stride 2 pad 1); stage 5: 3 x 4, keys 3 x 4
    grids = {n: ((5, 7), (3, 4)) if n.startswith("blocks.2.") else ((3, 4), (3, 4)) for n in oracle}
    _check(model, X, oracle, fused, grids)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"token"}


@pytest.mark.parametrize("einsum", [False, True])
def test_strided_queries_same_padding_and_einsum_layout(einsum):
    model = _standalone(einsum)
    x = torch.randn(2, 3, 10, 14, generator=torch.Generator().manual_seed(1))
    assert type(model[1].key.down_conv).__name__ == "Conv2dSame"
    oracle = _oracle(model, x, einsum)
    # queries pooled 10 x 14 -> 5 x 7; keys ceil(10 / 2) x ceil(14 / 2) = 5 x 7 ("same")
    grids = {"1": ((5, 7), (5, 7))}
    for fused in (False,) if einsum else (True, False):
        _check(model, x, oracle, fused, grids)
    x = torch.randn(2, 3, 10, 18, generator=torch.Generator().manual_seed(2))
    oracle = _oracle(model, x, einsum)
    _check(model, x, oracle, False, {"1": ((5, 9), (5, 9))})


def test_mqa_writes_its_softmax():
    """Uniform weights: every query of every head gets the mean over keys of the one value head;
    the module's output is its ``output`` (1x1 projection) of that map."""
    model = _hybrid()
    name = "blocks.2.4.attn"
    mod = model.get_submodule(name)
    with module_io(mod) as seen:
        with torch.no_grad(), set_fused(model, False):
            model(X)
            plain = seen["y"]
            with attnviz.intervene(model, {name: "uniform"}):
                model(X)
    x = seen["x"]
    with torch.no_grad():
        v = mod.value(x).flatten(2).mean(-1)  # (B, value_dim): the mean over the keys
        o = v.repeat(1, mod.num_heads)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        expected = mod.output(o)
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(seen["y"], plain)  # the module's own output did change
    with pytest.raises(Exception, match="fused"):
        with torch.no_grad(), attnviz.intervene(model, {name: "uniform"}):
            model(X)
