"""timm ``AttentionRope`` read exactly (issue 24): DeepSeek ViT (no prefix token) and the
Perception Encoder EVA (a class token; grouped-query heads), fused and not, on a non-square
4 x 6 patch grid, proven against timm's own weights (the input of ``attn_drop``) with the
output unchanged, and written (uniform weights) against a hand computation."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm_testing import module_io, set_fused

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # 4 x 6 patches of 16
SMALL = dict(depth=2, img_size=(64, 96), num_classes=3, patch_size=16)

MODELS = {  # name: (timm model, extra arguments, prefix tokens)
    "deepseek": ("deepseek_vit_412m", dict(embed_dim=64, num_heads=4), 0),
    "pe": ("vit_pe_core_tiny_patch16_384", {}, 1),
    "pe_gqa": (
        "vit_pe_core_tiny_patch16_384",
        dict(embed_dim=64, num_heads=4, num_kv_heads=2, qkv_fused=False),
        1,
    ),
}


def _model(key: str):
    name, kw, _ = MODELS[key]
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = timm.create_model(name, pretrained=False, **SMALL, **kw).eval()
    with torch.no_grad():  # sharper attention than timm's small init (rows far from uniform)
        for n, p in model.named_parameters():
            if n.endswith(("qkv.weight", "q_proj.weight", "k_proj.weight")):
                p.normal_(0, 0.3)
    return model


def _attention_modules(model) -> dict:
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "AttentionRope"}


def _oracle(model) -> dict:
    """timm's own non-fused weights: the input of each ``attn_drop``."""
    got, hooks = {}, []
    for n, m in _attention_modules(model).items():
        hooks.append(
            m.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0].clone()))
        )
    try:
        with torch.no_grad(), set_fused(model, False):
            model(X)
    finally:
        for h in hooks:
            h.remove()
    return got


@pytest.mark.parametrize("key", list(MODELS))
@pytest.mark.parametrize("fused", [True, False])
def test_rope_attention_equals_timm_weights(key, fused):
    model = _model(key)
    prefix = MODELS[key][2]
    assert unread_modules(model).keys() <= {"AttentionPoolLatent"}  # PE's pool is not AttentionRope
    oracle = _oracle(model)
    assert len(oracle) == 2
    with torch.no_grad(), set_fused(model, fused):
        plain = model(X)
        with attnviz.capture(model) as cache:
            out = model(X)
        with attnviz.capture(model, queries=[(0, 0), (3, 5), (1, 4)]) as rows:
            model(X)
    assert torch.equal(out, plain)
    heads = next(iter(_attention_modules(model).values())).num_heads
    for n, ref in oracle.items():
        assert ref.shape == (2, heads, prefix + 24, prefix + 24)
        # the softmax path is the very tensor; the fused path is recomputed from the call (and
        # earlier fused blocks feed this one slightly different inputs than the oracle's)
        atol = 1e-5 if fused else 0.0
        torch.testing.assert_close(cache[n], ref, rtol=0, atol=atol)
        idx = [prefix + 0, prefix + 3 * 6 + 5, prefix + 1 * 6 + 4]  # raster order on a 4 x 6 grid
        torch.testing.assert_close(rows[n], ref[:, :, idx], rtol=0, atol=atol)
        torch.testing.assert_close(rows[n], cache[n][:, :, idx], rtol=0, atol=atol)
        torch.testing.assert_close(cache[n].sum(-1), torch.ones(2, heads, prefix + 24))
        meta = cache.meta[n]
        assert meta["query_grid"] == (4, 6) and meta["key_grid"] == (4, 6)
        assert meta["prefix_tokens"] == prefix
        assert meta["prefix_names"] == ["class"] * prefix
        assert meta["path"] == ("fused" if fused else "softmax")
    # the rows are far from uniform, so a wrong layout or a missing RoPE could not pass
    assert max(float(r.max()) for r in oracle.values()) > 0.3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sites = attnviz.find_sites(model)
    assert {s.name for s in sites if s.kind == "token"} >= oracle.keys()
    assert not [w for w in caught if "AttentionRope" in str(w.message)]


def test_rope_attention_writes_its_softmax():
    """Uniform weights: the module's output is proj(mean over tokens of v) (norm and gate are
    identities in DeepSeek's blocks)."""
    model = _model("deepseek")
    name = "encoder.blocks.1.attn"
    mod = model.get_submodule(name)
    with module_io(mod) as seen:
        with torch.no_grad(), set_fused(model, False):
            plain = model(X)
            with attnviz.intervene(model, {name: "uniform"}):
                changed = model(X)
    b, n, _ = seen["x"].shape
    v = mod.qkv(seen["x"]).reshape(b, n, 3, mod.num_heads, mod.head_dim)[:, :, 2]  # (B, N, h, d)
    mean = v.mean(1, keepdim=True).expand(b, n, mod.num_heads, mod.head_dim).reshape(b, n, -1)
    torch.testing.assert_close(seen["y"], mod.proj(mean), rtol=0, atol=1e-5)
    assert not torch.allclose(changed, plain)
    with pytest.raises(Exception, match="fused"):  # the fused call never forms the weights
        with attnviz.intervene(model, {name: "uniform"}):
            model(X)
