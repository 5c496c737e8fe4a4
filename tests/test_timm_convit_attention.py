"""ConViT attention read exactly (issue 24): gated positional self-attention ``GPSA`` (patches
only) and ``MHSA`` (class token + patches), kind ``token``, proven by a hand computation of
GPSA's gated mix, timm's own ``MHSA`` weights, and each module's output rebuilt."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # 4 x 4 patches


@pytest.fixture(scope="module")
def convit():
    torch.manual_seed(16)
    kw = dict(img_size=32, patch_size=8, depth=3, local_up_to_layer=2, num_classes=3)
    model = timm.create_model("convit_tiny", pretrained=False, **kw).eval()
    with torch.no_grad():  # gates away from their init so both attentions matter
        for m in model.modules():
            if hasattr(m, "gating_param"):
                m.gating_param.copy_(torch.randn_like(m.gating_param))
    return model


def _io(model, names):
    seen, hooks = {}, []
    for n in names:
        hooks.append(
            model.get_submodule(n).register_forward_hook(
                lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o.clone()))
            )
        )
    return seen, hooks


def test_convit_gpsa_and_mhsa_by_hand_and_rebuilt(convit):
    assert unread_modules(convit) == {}
    names = ["blocks.0.attn", "blocks.1.attn", "blocks.2.attn"]
    assert [type(convit.get_submodule(n)).__name__ for n in names] == ["GPSA", "GPSA", "MHSA"]
    seen, hooks = _io(convit, names)
    try:
        with torch.no_grad():
            plain = convit(X)
            with attnviz.capture(convit) as cache:
                out = convit(X)
            with attnviz.capture(convit, queries=[(0, 0), (3, 1)]) as rows:
                convit(X)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, plain)
    with torch.no_grad():
        for n in names:
            m = convit.get_submodule(n)
            x, y = seen[n]
            b, t, c = x.shape
            prefix = 0 if n != "blocks.2.attn" else 1
            assert t == 16 + prefix
            meta = cache.meta[n]
            assert meta["prefix_tokens"] == prefix and meta["query_grid"] == (4, 4)
            if prefix == 0:  # GPSA: ((1 - g) softmax(q k^T s) + g softmax(pos)) / row sum
                q, k = m.qk(x).view(b, t, 2, m.num_heads, -1).permute(2, 0, 3, 1, 4)
                content = ((q @ k.transpose(-2, -1)) * m.scale).softmax(-1)
                pos = m.pos_proj(m.rel_indices.expand(b, -1, -1, -1)).permute(0, 3, 1, 2)
                g = torch.sigmoid(m.gating_param).view(1, -1, 1, 1)
                mix = (1 - g) * content + g * pos.softmax(-1)
                torch.testing.assert_close(
                    cache[n], mix / mix.sum(-1, keepdim=True), atol=1e-6, rtol=0
                )
                v = m.v(x).view(b, t, m.num_heads, -1).transpose(1, 2)
            else:  # MHSA: the module's own softmax
                q, k, v = m.qkv(x).view(b, t, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
                expected = ((q @ k.transpose(-2, -1)) * m.scale).softmax(-1)
                torch.testing.assert_close(cache[n], expected, rtol=0, atol=1e-6)
            rebuilt = m.proj((cache[n] @ v).transpose(1, 2).reshape(b, t, c))
            torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)
            torch.testing.assert_close(
                rows[n], cache[n][:, :, [prefix + 0, prefix + 13]], rtol=0, atol=0
            )


def test_convit_writes_both_attentions(convit):
    names = ["blocks.0.attn", "blocks.2.attn"]
    seen, hooks = _io(convit, names)
    try:
        with torch.no_grad(), attnviz.intervene(convit, {n: "uniform" for n in names}):
            convit(X)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        for n in names:  # uniform: every token reads the mean value vector
            m = convit.get_submodule(n)
            x, y = seen[n]
            b, t, c = x.shape
            v = m.v(x) if n == "blocks.0.attn" else m.qkv(x).view(b, t, 3, c)[:, :, 2]
            torch.testing.assert_close(
                y, m.proj(v.mean(1, keepdim=True).expand(b, t, c)), atol=1e-5, rtol=0
            )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(convit)} == {"token"}
