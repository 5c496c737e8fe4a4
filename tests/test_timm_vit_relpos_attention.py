"""ViT with relative-position bias read exactly (issue 24): ``RelPosAttention`` (per-block
``rel_pos`` or the model's shared bias, with or without a class token), fused and not, proven
against timm's own weights (the input of ``attn_drop``) with the output unchanged."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm_testing import set_fused

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # 4 x 4 patches


def _model(name: str):
    torch.manual_seed(20)
    kw = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2, num_classes=3)
    model = timm.create_model(name, pretrained=False, **kw).eval()
    with torch.no_grad():  # a bias that matters (timm starts the tables / MLP small)
        for n, p in model.named_parameters():
            if "rel_pos" in n:
                p.normal_(0, 1.0)
    return model


def _oracle(model):
    names = [n for n, m in model.named_modules() if type(m).__name__ == "RelPosAttention"]
    got, hooks = {}, []
    for n in names:
        hooks.append(
            model.get_submodule(n).attn_drop.register_forward_hook(
                lambda m, i, o, n=n: got.__setitem__(n, i[0].clone())
            )
        )
    try:
        with torch.no_grad(), set_fused(model, False):
            model(X)
    finally:
        for h in hooks:
            h.remove()
    return got


@pytest.mark.parametrize(
    ("name", "prefix"),
    [("vit_relpos_base_patch16_clsgap_224", 1), ("vit_srelpos_small_patch16_224", 0)],
)
@pytest.mark.parametrize("fused", [True, False])
def test_relpos_attention_equals_timm_weights(name, prefix, fused):
    model = _model(name)
    assert unread_modules(model) == {}
    oracle = _oracle(model)
    assert len(oracle) == 2
    with torch.no_grad(), set_fused(model, fused):
        plain = model(X)
        with attnviz.capture(model) as cache:
            out = model(X)
        with attnviz.capture(model, queries=[(0, 0), (2, 3)]) as rows:
            model(X)
    assert torch.equal(out, plain)
    for n, ref in oracle.items():
        assert ref.shape == (2, 2, prefix + 16, prefix + 16)
        torch.testing.assert_close(cache[n], ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(rows[n], ref[:, :, [prefix, prefix + 11]], rtol=0, atol=1e-5)
        meta = cache.meta[n]
        assert meta["prefix_tokens"] == prefix and meta["query_grid"] == (4, 4)
        assert meta["path"] == ("fused" if fused else "softmax")
    # the bias is in what is read: without it the weights differ
    no_bias = {}
    with torch.no_grad(), set_fused(model, False):
        for n, p in model.named_parameters():
            if "rel_pos" in n:
                p.zero_()
        no_bias = _oracle(model)
    assert max((no_bias[n] - cache[n]).abs().max() for n in oracle) > 1e-2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"token"}
