"""MetaFormer (CAFormer) attention read exactly (issue 24): the ``Attention`` token mixer of the
attention stages (kind ``token`` over the flattened map), fused and not, proven against timm's
own weights (the input of ``attn_drop``) with the output unchanged, rows and writing."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm_testing import set_fused

import attnviz
from attnviz.capture import NotWritableError
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # maps 4 x 4, 2 x 2


@pytest.fixture(scope="module")
def caformer():
    torch.manual_seed(15)
    return timm.create_model("caformer_s18", pretrained=False, num_classes=3).eval()


def _oracle(model):
    names = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    got, handles = {}, []
    for n in names:
        mod = model.get_submodule(n)
        handles.append(
            mod.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0]))
        )
    try:
        with torch.no_grad(), set_fused(model, False):
            model(X)
    finally:
        for h in handles:
            h.remove()
    return got


@pytest.mark.parametrize("fused", [True, False])
def test_caformer_attention_equals_timm_weights(caformer, fused):
    assert unread_modules(caformer) == {}
    oracle = _oracle(caformer)
    assert len(oracle) == 12  # stages 2 and 3 of caformer_s18: 9 + 3 blocks
    with torch.no_grad(), set_fused(caformer, fused):
        plain = caformer(X)
        with attnviz.capture(caformer) as cache:
            out = caformer(X)
        first = list(oracle)[0]
        with attnviz.capture(caformer, sites=first, queries=[(0, 0), (2, 3)]) as rows:
            caformer(X)
    assert torch.equal(out, plain)
    for name, ref in oracle.items():
        torch.testing.assert_close(cache[name], ref, rtol=0, atol=1e-5)
        meta = cache.meta[name]
        assert meta["prefix_tokens"] == 0 and meta["path"] == ("fused" if fused else "softmax")
        side = {16: 4, 4: 2}[ref.shape[-1]]
        assert meta["query_grid"] == meta["key_grid"] == (side, side)
    torch.testing.assert_close(rows[first], oracle[first][:, :, [0, 11]], rtol=0, atol=1e-5)


def test_caformer_write_needs_the_softmax_path(caformer):
    name = next(iter(_oracle(caformer)))
    with set_fused(caformer, True), pytest.raises(NotWritableError, match="fused_attn = False"):
        attnviz.intervene(caformer, {name: "uniform"})
    mod = caformer.get_submodule(name)
    seen = {}
    hook = mod.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o.clone()))
    try:
        with (
            torch.no_grad(),
            set_fused(caformer, False),
            attnviz.intervene(caformer, {name: "uniform"}),
        ):
            caformer(X)
    finally:
        hook.remove()
    x = seen["x"]
    b, n, _ = x.shape
    v = mod.qkv(x).view(b, n, 3, mod.num_heads, -1)[:, :, 2]  # (B, N, heads, d)
    mean = v.mean(1, keepdim=True).expand_as(v).reshape(b, n, -1)
    torch.testing.assert_close(seen["y"], mod.proj(mean), rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "token" in {s.kind for s in attnviz.find_sites(caformer)}
