"""EfficientFormer attention read exactly (issue 24): the last stage's ``Attention`` (kind
``token`` on the square 7 x 7 map), proven by a hand computation with its attention bias and by
rebuilding the module's output from the capture; writing replaces its softmax."""

from __future__ import annotations

import warnings

import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))  # last map 7 x 7


def _model():
    torch.manual_seed(14)
    model = timm.create_model("efficientformer_l1", pretrained=False, num_classes=3).eval()
    with torch.no_grad():  # a bias that matters (timm starts it at zero); set before the first
        for m in model.modules():  # eval forward: timm caches the gathered bias in eval mode
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_(0, 1.0)
    return model


def _by_hand(m, x):
    """softmax(q k^T * scale + B) from the module's own projection and bias table."""
    b, n, _ = x.shape
    q, k, v = (
        m.qkv(x)
        .view(b, n, m.num_heads, -1)
        .transpose(1, 2)
        .split([m.key_dim, m.key_dim, m.val_dim], dim=-1)
    )
    bias = m.attention_biases[:, m.attention_bias_idxs]
    return ((q @ k.transpose(-2, -1)) * m.scale + bias).softmax(-1), v


def test_efficientformer_attention_by_hand_rebuilt_and_written():
    model = _model()
    assert unread_modules(model) == {}
    name = "stages.3.blocks.4.token_mixer"
    m = model.get_submodule(name)
    seen = []  # (input, output) of each forward: plain, capture, queries, written
    hook = m.register_forward_hook(lambda mod, i, o: seen.append((i[0], o.clone())))
    try:
        with torch.no_grad():
            plain = model(X)
            with attnviz.capture(model) as cache:
                out = model(X)
            with attnviz.capture(model, queries=[(0, 0), (3, 5)]) as rows:
                model(X)
            weights, v = _by_hand(m, seen[0][0])
            with attnviz.intervene(model, {name: "uniform"}):
                model(X)
    finally:
        hook.remove()
    assert torch.equal(out, plain)
    assert cache[name].shape == (2, 8, 49, 49)
    meta = cache.meta[name]
    assert meta["query_grid"] == meta["key_grid"] == (7, 7) and meta["prefix_tokens"] == 0
    torch.testing.assert_close(cache[name], weights, rtol=0, atol=1e-5)
    torch.testing.assert_close(rows[name], cache[name][:, :, [0, 26]], rtol=0, atol=0)
    with torch.no_grad():
        rebuilt = m.proj((cache[name] @ v).transpose(1, 2).reshape(2, 49, -1))
        torch.testing.assert_close(rebuilt, seen[0][1], rtol=0, atol=1e-5)
        # written uniform: every token reads the mean value vector
        mean = v.mean(2, keepdim=True).expand_as(v).transpose(1, 2).reshape(2, 49, -1)
        torch.testing.assert_close(seen[3][1], m.proj(mean), rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"token"}
