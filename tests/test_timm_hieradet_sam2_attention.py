"""HieraDet (SAM 2 image encoder) attention read exactly (issue 24): ``MultiScaleAttention`` read
at its ``MultiScaleBlock`` (kind ``window`` with pooled queries and padded windows, kind
``token`` in the global blocks), fused and not, against a hand computation from the attention
module's own input placed on the image by the block's own padding and window split, on a
non-square map; rows, rows summing to 1, and writing."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.hieradet_sam2 import window_partition
from timm_testing import set_fused

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # 16 x 24 map


@pytest.fixture(scope="module")
def sam2():
    torch.manual_seed(51)
    return timm.create_model("sam2_hiera_tiny", pretrained=False, num_classes=3).eval()


def _names(model):
    return [n for n, m in model.named_modules() if type(m).__name__ == "MultiScaleBlock"]


def _hand(attn, x):
    """softmax((q * scale) k^T) of MultiScaleAttention on its (B', h, w, C) input, q pooled."""
    b, h, w, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(b, h * w, 3, attn.num_heads, -1).unbind(2)
    if attn.q_pool is not None:
        q = attn.q_pool(q.reshape(b, h, w, -1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        q = q.reshape(b, -1, attn.num_heads, k.shape[-1])
    return ((q.transpose(1, 2) * attn.scale) @ k.transpose(1, 2).transpose(-2, -1)).softmax(-1)


def _positions(h, w, window):
    """(windows, window * window) flat positions of each window's cells, -1 for padding."""
    pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
    pos = F.pad(pos, (0, 0, 0, -w % window, 0, -h % window), value=-1)
    return window_partition(pos, (window, window)).reshape(-1, window * window).long()


def _oracle(model):
    """{block: (dense (B, heads, Nq, Nk) weights on the image, query grid, key grid)}."""
    got, hooks = {}, []
    for n in _names(model):
        blk = model.get_submodule(n)
        hooks.append(blk.attn.register_forward_pre_hook(lambda m, i, n=n: got.update({n: i[0]})))
        hooks.append(blk.register_forward_pre_hook(lambda m, i, n=n: got.update({n + "@": i[0]})))
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n in _names(model):
        blk = model.get_submodule(n)
        b, h, w, _ = got[n + "@"].shape
        s = blk.q_stride[0] if blk.q_stride else 1
        hq, wq = h // s, w // s
        with torch.no_grad():
            a = _hand(blk.attn, got[n])  # (B * windows, heads, Tq, Tk)
        if not blk.is_windowed:
            out[n] = (a, (hq, wq), (h, w))
            continue
        ws = blk.window_size[0]
        kpos, qpos = _positions(h, w, ws), _positions(hq, wq, ws // s)
        a = a.reshape(b, -1, *a.shape[1:])  # (B, windows, heads, Tq, Tk)
        dense = torch.zeros(b, a.shape[2], hq * wq + 1, h * w + 1)
        qi = torch.where(qpos >= 0, qpos, hq * wq)
        ki = torch.where(kpos >= 0, kpos, h * w)
        dense[:, :, qi[:, :, None], ki[:, None, :]] = a.permute(0, 2, 1, 3, 4)
        out[n] = (dense[:, :, : hq * wq, : h * w], (hq, wq), (h, w))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_hieradet_weights_equal_hand_computation_on_the_image(sam2, fused):
    assert unread_modules(sam2) == {}
    oracle = _oracle(sam2)
    names = _names(sam2)
    with set_fused(sam2, fused), torch.no_grad():
        plain = sam2(X)
        with attnviz.capture(sam2, sites=names) as cache:
            out = sam2(X)
    assert torch.equal(out, plain)
    kinds, padded, pooled = set(), False, 0
    for n in names:
        meta, att = cache.meta[n], cache[n]
        dense, qg, kg = oracle[n]
        assert meta["query_grid"] == qg and meta["key_grid"] == kg
        assert meta["path"] == ("fused" if fused else "softmax")
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), rtol=0, atol=1e-5)
        if "key_index" in meta:
            kinds.add("window")
            padded |= bool((meta["key_index"] < 0).any())
            att = window_to_grid(att, meta["key_index"], kg).flatten(-2)
        else:
            kinds.add("token")
        pooled += qg != kg
        torch.testing.assert_close(att, dense, rtol=0, atol=1e-5)
    assert kinds == {"window", "token"} and padded and pooled == 3


def test_hieradet_queries_keep_rows(sam2):
    name = "blocks.1"  # windowed, queries pooled 16 x 24 -> 8 x 12
    cells = [(0, 0), (7, 11), (3, 5)]
    with torch.no_grad():
        with attnviz.capture(sam2, sites=name) as full:
            sam2(X)
        with attnviz.capture(sam2, sites=name, queries=cells) as rows:
            sam2(X)
    assert full.meta[name]["query_grid"] == (8, 12) and full.meta[name]["key_grid"] == (16, 24)
    idx = [y * 12 + x for y, x in cells]
    torch.testing.assert_close(rows[name], full[name][:, :, idx], rtol=0, atol=0)
    assert torch.equal(rows.meta[name]["key_index"], full.meta[name]["key_index"])


def test_hieradet_global_block_writes_uniform(sam2):
    name = "blocks.5"  # global attention
    blk = sam2.get_submodule(name)
    assert not blk.is_windowed
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(sam2, {"blocks.4": "uniform"})
    with pytest.raises(NotWritableError, match="attn.fused_attn = False"):
        with set_fused(sam2, True):
            attnviz.intervene(sam2, {name: "uniform"})
    seen = {}
    hook = blk.attn.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    try:
        with set_fused(sam2, False), torch.no_grad(), attnviz.intervene(sam2, {name: "uniform"}):
            sam2(X)
    finally:
        hook.remove()
    with torch.no_grad():  # every query reads the mean value vector
        b, h, w, _ = seen["x"].shape
        v = blk.attn.qkv(seen["x"]).reshape(b, h * w, 3, -1)[:, :, 2]
        expected = blk.attn.proj(v.mean(1, keepdim=True)).expand(b, h * w, -1)
    torch.testing.assert_close(seen["y"].reshape(b, h * w, -1), expected, rtol=0, atol=1e-5)
