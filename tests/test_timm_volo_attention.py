"""VOLO attention read exactly (issue 24): ``Attention`` (kind ``token`` on the (B, H, W, C)
map, fused and not), the post-network ``ClassAttention`` (kind ``class_token``) and the first
stage's ``OutlookAttention`` (kind ``outlook``), proven against timm's own weights (the input of
``attn_drop``) with the output unchanged, rows, the outputs rebuilt from the captured weights
(outlook: placed by ``key_index`` on a non-square map) and writing."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.volo import VOLO

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
    assert unread_modules(volo) == {}
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


XO = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))  # 8 x 12 map


@pytest.fixture(scope="module")
def volo_small():
    torch.manual_seed(29)
    kw = dict(
        embed_dims=(192, 384, 384, 384), num_heads=(6, 12, 12, 12)
    )  # volo_d1, 1 block a stage
    return VOLO(layers=(1, 1, 1, 1), img_size=(64, 96), num_classes=3, **kw).eval()


def _outlook_oracle(model, x):
    names = [n for n, m in model.named_modules() if type(m).__name__ == "OutlookAttention"]
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
        with torch.no_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return names, got, out


def _gathered(att, key_index, v):
    """Outlook output before ``proj``, by hand: window w's slot i receives sum_j A[w, i, j] v at
    slot j's position; slots are placed on the map by ``key_index`` (padding: zero values)."""
    b, heads, n_win, kk, _ = att.shape
    hw, c = v.shape[1], v.shape[2]
    vh = torch.cat([v, v.new_zeros(b, 1, c)], 1).view(b, hw + 1, heads, c // heads)
    idx = torch.where(key_index >= 0, key_index, hw)  # (windows, K*K)
    vals = vh[:, idx]  # (B, windows, K*K, heads, d)
    mixed = torch.einsum("bnwij,bwjnd->bwind", att, vals)  # (B, windows, K*K, heads, d)
    out = v.new_zeros(b, hw + 1, heads, c // heads)
    out.index_add_(1, idx.reshape(-1), mixed.reshape(b, n_win * kk, heads, -1))
    return out[:, :hw].reshape(b, hw, c)


def test_volo_outlook_weights_equal_timm_weights_and_rebuild_the_output(volo_small):
    names, oracle, plain = _outlook_oracle(volo_small, XO)
    assert len(names) == 1 and unread_modules(volo_small) == {}
    with torch.no_grad(), attnviz.capture(volo_small, sites=names) as cache:
        out = volo_small(XO)
    assert torch.equal(out, plain)
    (n,) = names
    m = volo_small.get_submodule(n)
    meta = cache.meta[n]
    assert cache[n].shape == (2, m.num_heads, 4 * 6, 9, 9)
    assert meta["window_grid"] == (4, 6) and meta["key_grid"] == (8, 12)
    assert meta["window"] == (3, 3) and meta["stride"] == 2
    torch.testing.assert_close(cache[n], oracle[n], rtol=0, atol=0)
    torch.testing.assert_close(cache[n].sum(-1), torch.ones(cache[n].shape[:-1]))
    key_index = meta["key_index"]
    assert key_index[0].tolist() == [-1, -1, -1, -1, 0, 1, -1, 12, 13]  # top-left, padded
    assert key_index[7].tolist() == [13, 14, 15, 25, 26, 27, 37, 38, 39]  # centre (2, 2)
    x, y = oracle[n + "<>"]
    with torch.no_grad():
        v = m.v(x).reshape(2, 8 * 12, -1)
        rebuilt = m.proj(_gathered(cache[n], key_index, v)).view_as(y)
    torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)


def test_volo_outlook_uniform_writes_window_means(volo_small):
    name = "network.0.0.attn"
    m = volo_small.get_submodule(name)
    seen = {}
    hook = m.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], y=o))
    try:
        with torch.no_grad(), attnviz.intervene(volo_small, {name: "uniform"}):
            volo_small(XO)
    finally:
        hook.remove()
    with torch.no_grad():  # every output slot gets the mean of its window's 9 slots (zeros pad)
        v = m.v(seen["x"]).permute(0, 3, 1, 2)  # (B, C, H, W)
        mean = torch.nn.functional.unfold(v, 3, padding=1, stride=2).view(2, -1, 9, 24).mean(2)
        folded = torch.nn.functional.fold(
            mean[:, :, None].expand(-1, -1, 9, -1).reshape(2, -1, 24),
            (8, 12),
            3,
            padding=1,
            stride=2,
        )
        expected = m.proj(folded.permute(0, 2, 3, 1))
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
