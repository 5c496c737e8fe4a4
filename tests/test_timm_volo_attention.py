"""VOLO attention read exactly (issue 24): ``Attention`` (kind ``token`` on the (B, H, W, C)
map, fused and not) and the post-network ``ClassAttention`` (kind ``class_token``), proven
against timm's own weights (the input of ``attn_drop``) with the output unchanged, rows, the
class attention's output rebuilt and writing."""

from __future__ import annotations

import pytest
import timm
import torch

import attnviz
from attnviz.capture import NotWritableError
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # 4 x 4 tokens


@pytest.fixture(scope="module")
def volo():
    torch.manual_seed(28)
    return timm.create_model("volo_d1_224", pretrained=False, img_size=64, num_classes=3).eval()


def _set_fused(model, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def _oracle(model):
    kinds = ("Attention", "ClassAttention")
    names = [n for n, m in model.named_modules() if type(m).__name__ in kinds]
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


@pytest.mark.parametrize("fused", [True, False])
def test_volo_attention_and_class_attention_equal_timm_weights(volo, fused):
    # OutlookAttention (the first stage's local aggregation) is not read: named as unread
    assert set(unread_modules(volo)) == {"OutlookAttention"}
    names, oracle = _oracle(volo)
    cls_names = [n for n in names if n.startswith("post_network")]
    tok_names = [n for n in names if n not in cls_names]
    assert len(cls_names) == 2 and len(tok_names) >= 4
    _set_fused(volo, fused)
    with torch.no_grad():
        plain = volo(X)
        with attnviz.capture(volo, sites=names) as cache:
            out = volo(X)
        with attnviz.capture(volo, sites=tok_names[0], queries=[(0, 0), (2, 3)]) as rows:
            volo(X)
    assert torch.equal(out, plain)
    for n in tok_names:
        torch.testing.assert_close(cache[n], oracle[n], rtol=0, atol=1e-5)
        assert cache.meta[n]["query_grid"] == (4, 4) and cache.meta[n]["prefix_tokens"] == 0
    torch.testing.assert_close(
        rows[tok_names[0]], oracle[tok_names[0]][:, :, [0, 11]], atol=1e-5, rtol=0
    )
    for n in cls_names:
        ref = oracle[n][:, :, 0]  # (B, heads, 1, N) -> the class token's row
        torch.testing.assert_close(cache[n], ref, rtol=0, atol=1e-6)
        assert cache.meta[n]["prefix_tokens"] == 1 and cache.meta[n]["key_grid"] == (4, 4)
        m = volo.get_submodule(n)
        x, y = oracle[n + "<>"]
        with torch.no_grad():
            v = m.kv(x).view(2, 17, 2, m.num_heads, -1)[:, :, 1].transpose(1, 2)
            rebuilt = m.proj((cache[n][:, :, None] @ v).transpose(1, 2).reshape(2, 1, -1))
        torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)
    if fused:
        with pytest.raises(NotWritableError, match="fused_attn = False"):
            attnviz.intervene(volo, {tok_names[0]: "uniform"})


def test_volo_class_attention_writes(volo):
    _set_fused(volo, False)
    name = "post_network.0.attn"
    m = volo.get_submodule(name)
    seen = {}
    hook = m.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], y=o))
    try:
        with torch.no_grad(), attnviz.intervene(volo, {name: "uniform"}):
            volo(X)
    finally:
        hook.remove()
    with torch.no_grad():  # uniform: the class token reads the mean value vector
        v = m.kv(seen["x"]).view(2, 17, 2, -1)[:, :, 1]
        expected = m.proj(v.mean(1, keepdim=True))
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
