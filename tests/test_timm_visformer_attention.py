"""Visformer attention read exactly (issue 24): ``Attention`` on the (B, C, H, W) map (kind
``token``), fused and not, proven against timm's own weights (the input of ``attn_drop``) with
the output unchanged, rows, the output rebuilt and writing."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import attnviz
from attnviz.capture import NotWritableError
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # maps 8, 4


@pytest.fixture(scope="module")
def visformer():
    torch.manual_seed(23)
    return timm.create_model("visformer_tiny", pretrained=False, img_size=128, num_classes=3).eval()


def _set_fused(model, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def _oracle(model):
    names = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    got, hooks = {}, []
    for n in names:
        m = model.get_submodule(n)
        hooks.append(
            m.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0]))
        )
        hooks.append(
            m.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n + "<>", (i[0], o)))
        )
    try:
        _set_fused(model, False)
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    return names, got


def _max_logit(m, x) -> float:
    """The largest |q k^T * scale| of Visformer attention ``m`` on its input ``x``."""
    b = x.shape[0]
    with torch.no_grad():
        q, k = m.qkv(x).reshape(b, 3, m.num_heads, m.head_dim, -1)[:, :2].unbind(1)
        return float((q.transpose(-2, -1) @ k * m.scale).abs().max())


@pytest.mark.parametrize("fused", [True, False])
def test_visformer_attention_equals_timm_weights_and_rebuilds(visformer, fused):
    assert unread_modules(visformer) == {}
    names, oracle = _oracle(visformer)
    assert len(names) == 8
    _set_fused(visformer, fused)
    with torch.no_grad():
        plain = visformer(X)
        with attnviz.capture(visformer, sites=names) as cache:
            out = visformer(X)
        with attnviz.capture(visformer, sites=names[0], queries=[(0, 0), (5, 6)]) as rows:
            visformer(X)
    assert torch.equal(out, plain)
    for n in names:
        ref = oracle[n]
        if fused:  # recomputed from the call's q, k: scaled before the product, timm after
            # float32 rounding of a logit is eps * |logit|, and with random weights the last
            # stage's logits reach ~1e4 (saturated rows): the bound follows the logits (the
            # kernels' summation order, hence the error, depends on the thread count)
            bound = torch.finfo(torch.float32).eps * _max_logit(
                visformer.get_submodule(n), oracle[n + "<>"][0]
            )
            torch.testing.assert_close(cache[n], ref, rtol=0, atol=max(2e-4, 4 * bound))
        else:  # the module's own tensor
            assert torch.equal(cache[n], ref)
        x, y = oracle[n + "<>"]
        b, c, h, w = x.shape
        assert cache.meta[n]["query_grid"] == (h, w) and cache.meta[n]["prefix_tokens"] == 0
        m = visformer.get_submodule(n)
        if fused:  # the rebuild below uses the softmax path's exact weights
            continue
        with torch.no_grad():
            v = m.qkv(x).reshape(b, 3, m.num_heads, m.head_dim, -1)[:, 2].transpose(-2, -1)
            att = (cache[n] @ v).permute(0, 1, 3, 2).reshape(b, -1, h, w)
            torch.testing.assert_close(m.proj(att), y, rtol=0, atol=1e-4)
    w0 = cache.meta[names[0]]["query_grid"][1]
    ref = oracle[names[0]][:, :, [0, 5 * w0 + 6]]
    torch.testing.assert_close(rows[names[0]], ref, rtol=0, atol=2e-4)
    if fused:
        with pytest.raises(NotWritableError, match="fused_attn = False"):
            attnviz.intervene(visformer, {names[0]: "uniform"})
    else:
        with torch.no_grad(), attnviz.intervene(visformer, {names[0]: "uniform"}):
            changed = visformer(X)
        assert not torch.allclose(changed, plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(visformer)} == {"token"}
