"""Swin V2 and Swin V2-CR window attention read exactly (issue 24): scaled cosine attention with
a learned logit scale and a continuous relative-position bias, proven against timm's own weights
(the input of ``attn_drop``) placed on the image by timm's own roll, pad and window partition,
and against a hand computation of one window."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from timm.models.swin_transformer_v2 import SwinTransformerV2, window_partition
from timm.models.swin_transformer_v2_cr import SwinTransformerV2Cr

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X24 = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))
BLOCKS = ("SwinTransformerV2Block", "SwinTransformerV2CrBlock")


def _swin_v2():
    """12 x 12 token map in 5 x 5 windows: padded windows, shift 2 in odd blocks."""
    torch.manual_seed(2)
    kw = dict(img_size=24, patch_size=2, window_size=5, embed_dim=16, depths=(2, 2))
    model = SwinTransformerV2(num_heads=(2, 2), num_classes=3, **kw).eval()
    with torch.no_grad():  # logit scales that differ per head (timm starts them at log 10)
        for m in model.modules():
            if hasattr(m, "logit_scale"):
                m.logit_scale.copy_(torch.randn_like(m.logit_scale) + 2.0)
    return model


def _swin_v2_cr():
    torch.manual_seed(5)
    kw = dict(img_size=(24, 24), patch_size=2, window_size=5, embed_dim=16, depths=(2, 2))
    model = SwinTransformerV2Cr(num_heads=(2, 2), num_classes=3, **kw).eval()
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "logit_scale"):
                m.logit_scale.copy_(torch.randn_like(m.logit_scale) + 2.0)
    return model


def _oracle(model):
    """Full (B, heads, HW, HW) maps: each window slot at the image position timm's roll, pad
    and partition put there, from timm's own weights (input of attn_drop)."""
    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ in BLOCKS}
    got, shapes, handles = {}, {}, []
    for name, blk in blocks.items():
        handles.append(
            blk.attn.attn_drop.register_forward_hook(
                lambda m, i, o, name=name: got.__setitem__(name, i[0].clone())
            )
        )
        handles.append(
            blk.register_forward_pre_hook(lambda m, i, n=name: shapes.__setitem__(n, i[0].shape))
        )
    try:
        with torch.no_grad():
            model(X24)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, blk in blocks.items():
        b, h, w, _ = shapes[name]
        ws, s = blk.window_size, blk.shift_size
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        pos = torch.roll(pos, shifts=(-s[0], -s[1]), dims=(1, 2))
        pos = F.pad(pos, (0, 0, 0, -w % ws[1], 0, -h % ws[0]), value=-1)
        slots = window_partition(pos, ws).reshape(-1, ws[0] * ws[1]).long()  # (windows, N)
        a = got[name].view(b, slots.shape[0], *got[name].shape[1:])
        full = torch.zeros(b, a.shape[2], h * w + 1, h * w + 1)  # last index: padding
        idx = torch.where(slots >= 0, slots, h * w)
        full[:, :, idx[:, :, None], idx[:, None, :]] = a.permute(0, 2, 1, 3, 4)
        out[name] = (full[:, :, : h * w, : h * w], (h, w), tuple(s), got[name])
    return out


@pytest.mark.parametrize("make", [_swin_v2, _swin_v2_cr])
def test_swin_v2_windows_equal_timm_weights_on_the_image(make):
    model = make()
    assert unread_modules(model) == {}
    oracle = _oracle(model)
    assert len(oracle) == 4 and any(any(s) for _, _, s, _ in oracle.values())
    cells = [(0, 0), (5, 11), (11, 4)]
    first = [n for n, (_, grid, _, _) in oracle.items() if grid == (12, 12)]  # stage 0
    assert len(first) == 2
    with torch.no_grad():
        plain = model(X24)
        with attnviz.capture(model) as cache:
            out = model(X24)
        with attnviz.capture(model, sites=first, queries=cells) as rows:
            model(X24)
    assert torch.equal(out, plain)
    for name, (full, grid, shift, _) in oracle.items():
        meta = cache.meta[name]
        assert meta["query_grid"] == grid and meta["shift"] == shift
        att = cache[name]
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), rtol=0, atol=1e-5)
        on_image = window_to_grid(att, meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-6)
        if name not in first:
            continue
        idx = torch.tensor([y * grid[1] + x for y, x in cells])
        sel = window_to_grid(rows[name], meta["key_index"][idx], grid).flatten(-2)
        torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-6)
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(model, {next(iter(oracle)): "uniform"})


def test_swin_v2_window_is_cosine_attention_with_scale_and_continuous_bias():
    """Hand computation of the first window of the first (unshifted, 12 x 12 -> window 0 holds
    rows 0-4, columns 0-4) block from its input and weights (Liu et al. 2022, eq. 2)."""
    model = _swin_v2()
    blk = model.layers[0].blocks[0]
    assert blk.shift_size == (0, 0)
    seen = {}
    hook = blk.register_forward_pre_hook(lambda m, i: seen.update(x=i[0].clone()))
    try:
        with torch.no_grad(), attnviz.capture(model, sites="layers.0.blocks.0") as cache:
            model(X24)
    finally:
        hook.remove()
    a = blk.attn
    with torch.no_grad():
        x = seen["x"][:, :5, :5].reshape(2, 25, -1)
        bias = torch.cat((a.q_bias, torch.zeros_like(a.v_bias), a.v_bias))
        q, k, _ = F.linear(x, a.qkv.weight, bias).view(2, 25, 3, 2, -1).permute(2, 0, 3, 1, 4)
        cos = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scale = a.logit_scale.clamp(max=torch.log(torch.tensor(100.0))).exp()
        table = a.cpb_mlp(a.relative_coords_table).view(-1, 2)
        rel = table[a.relative_position_index.view(-1)].view(25, 25, 2).permute(2, 0, 1)
        expected = (cos * scale + 16 * torch.sigmoid(rel)).softmax(-1)  # (B, heads, 25, 25)
    rows = torch.tensor([y * 12 + x for y in range(5) for x in range(5)])
    torch.testing.assert_close(cache["layers.0.blocks.0"][:, :, rows], expected, atol=1e-5, rtol=0)


def test_swin_v2_sites_are_listed_without_unread_modules():
    for model in (_swin_v2(), _swin_v2_cr()):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sites = attnviz.find_sites(model)
        assert {s.kind for s in sites} == {"window"} and len(sites) == 4
