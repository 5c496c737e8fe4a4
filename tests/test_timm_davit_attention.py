"""DaViT attention read exactly (issue 24): spatial window attention (``SpatialBlock``, kind
``window``: padded 7 x 7 windows placed on the image by timm's own partition) and channel group
attention (``ChannelAttention`` / ``ChannelAttentionV2``, kind ``xca``), each proven against
timm's own softmax output or a hand computation, and the module output rebuilt from it."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.davit import window_partition
from timm_testing import set_fused

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))  # maps 20, 10, 5, 2


def _davit(name: str):
    torch.manual_seed(12)
    kw = dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), num_heads=(2, 4, 6, 8))
    return timm.create_model(name, pretrained=False, num_classes=3, **kw).eval()


def _spatial_oracle(model):
    """Full (B, heads, HW, HW) maps from timm's own ``WindowAttention.softmax`` output."""
    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ == "SpatialBlock"}
    got, shapes, handles = {}, {}, []
    for n, blk in blocks.items():
        handles.append(
            blk.attn.softmax.register_forward_hook(
                lambda m, i, o, n=n: got.__setitem__(n, o.clone())
            )
        )
        handles.append(
            blk.register_forward_pre_hook(lambda m, i, n=n: shapes.__setitem__(n, i[0].shape))
        )
    try:
        with torch.no_grad(), set_fused(model, False):
            model(X)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, blk in blocks.items():
        b, _, h, w = shapes[n]
        ws = blk.window_size
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        pos = F.pad(pos, (0, 0, 0, -w % ws[1], 0, -h % ws[0]), value=-1)
        slots = window_partition(pos, ws).reshape(-1, ws[0] * ws[1]).long()
        idx = torch.where(slots >= 0, slots, h * w)  # padding slots go to a spare index
        a = got[n].view(b, slots.shape[0], *got[n].shape[1:])
        full = torch.zeros(b, a.shape[2], h * w + 1, h * w + 1)
        full[:, :, idx[:, :, None], idx[:, None, :]] = a.permute(0, 2, 1, 3, 4)
        out[n] = (full[:, :, : h * w, : h * w], (h, w))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_davit_spatial_windows_equal_timm_weights_on_the_image(fused):
    model = _davit("davit_tiny")
    assert unread_modules(model) == {}
    oracle = _spatial_oracle(model)
    assert oracle["stages.0.blocks.0.0"][1] == (20, 20)  # 20 x 20 in 7 x 7 windows: padded
    cells = [(0, 0), (6, 7), (19, 13)]
    with torch.no_grad(), set_fused(model, fused):
        plain = model(X)
        with attnviz.capture(model) as cache:
            out = model(X)
        with attnviz.capture(model, sites="stages.0.blocks.0.0", queries=cells) as rows:
            model(X)
    assert torch.equal(out, plain)
    for name, (full, grid) in oracle.items():
        meta = cache.meta[name]
        assert meta["query_grid"] == grid and meta["path"] == ("fused" if fused else "softmax")
        on_image = window_to_grid(cache[name], meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-6)
    full, grid = oracle["stages.0.blocks.0.0"]
    assert (cache.meta["stages.0.blocks.0.0"]["key_index"] < 0).any()
    idx = torch.tensor([y * 20 + x for y, x in cells])
    key_index = rows.meta["stages.0.blocks.0.0"]["key_index"][idx]
    sel = window_to_grid(rows["stages.0.blocks.0.0"], key_index, grid).flatten(-2)
    torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-6)
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(model, {"stages.0.blocks.0.0": "uniform"})


@pytest.mark.parametrize(("name", "v2"), [("davit_tiny", False), ("davit_base_fl", True)])
def test_davit_channel_attention_by_hand_and_rebuilt(name, v2):
    model = _davit(name)
    assert unread_modules(model) == {}
    kind = "ChannelAttentionV2" if v2 else "ChannelAttention"
    mods = {n: m for n, m in model.named_modules() if type(m).__name__ == kind}
    assert len(mods) == 4
    seen, hooks = {}, []
    for n, m in mods.items():
        hooks.append(
            m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o.clone())))
        )
    try:
        with torch.no_grad():
            plain = model(X)
            with attnviz.capture(model, sites=list(mods)) as cache:
                out = model(X)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, plain)
    for n, m in mods.items():
        x, y = seen[n]
        b, t, c = x.shape
        g = m.groups if v2 else m.num_heads
        q, k, v = m.qkv(x).view(b, t, 3, g, c // g).permute(2, 0, 3, 1, 4)  # (B, g, N, d)
        if v2:  # softmax((q s)^T k), s = N^-1/2 (dynamic scale), mixes v's channels
            expected = ((q * t**-0.5).transpose(-1, -2) @ k).softmax(-1)
            mixed = v
        else:  # softmax((k s)^T v), s = d^-1/2, mixes q's channels
            expected = ((k * m.scale).transpose(-1, -2) @ v).softmax(-1)
            mixed = q
        att = cache[n]
        assert att.shape == (b, g, c // g, c // g)
        assert cache.meta[n]["mixes"] == ("v" if v2 else "q")
        torch.testing.assert_close(att, expected, rtol=0, atol=1e-5)
        rebuilt = m.proj((att @ mixed.transpose(-1, -2)).permute(0, 3, 1, 2).reshape(b, t, c))
        torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-4)


def test_davit_channel_attention_writes_its_softmax():
    model = _davit("davit_tiny")
    name = "stages.0.blocks.0.1.attn"
    m = model.get_submodule(name)
    seen = {}
    hook = m.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o.clone()))
    try:
        with torch.no_grad(), attnviz.intervene(model, {name: "uniform"}):
            model(X)
    finally:
        hook.remove()
    x = seen["x"]
    b, t, c = x.shape
    q = m.qkv(x).view(b, t, 3, m.num_heads, -1)[:, :, 0]  # uniform: each channel = mean of q's
    torch.testing.assert_close(
        seen["y"], m.proj(q.mean(-1, keepdim=True).expand_as(q).reshape(b, t, c)), atol=1e-5, rtol=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"window", "xca"}
