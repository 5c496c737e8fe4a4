"""TinyViT window attention read exactly (issue 24): ``TinyVitBlock`` / ``Attention`` (kind
``window``, padded windows, attention bias), fused and not, proven against a hand computation
from the module's own q, k and attention bias, placed on the image by the block's own padding
and window split."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))  # maps 20, 10, 5


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(24)
    model = timm.create_model("tiny_vit_5m_224", pretrained=False, num_classes=3)
    with torch.no_grad():  # a bias that matters; set before the first eval forward (timm
        for m in model.modules():  # caches the gathered bias in eval mode)
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_(0, 1.0)
    return model.eval()


def _oracle(model):
    """Full (B, heads, HW, HW) maps from a hand computation on each window the block makes."""
    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ == "TinyVitBlock"}
    seen, hooks = {}, []
    for n, blk in blocks.items():
        hooks.append(
            blk.attn.register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n, i[0]))
        )
        hooks.append(
            blk.register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n + "@", i[0].shape))
        )
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, blk in blocks.items():
        a = blk.attn
        b, h, w, _ = seen[n + "@"]
        ws = blk.window_size
        with torch.no_grad():
            x = a.norm(seen[n])  # (B * windows, K, C)
            q, k, _ = (
                a.qkv(x)
                .view(x.shape[0], x.shape[1], a.num_heads, -1)
                .split([a.key_dim, a.key_dim, a.val_dim], dim=3)
            )
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            bias = a.attention_biases[:, a.attention_bias_idxs]
            weights = ((q @ k.transpose(-2, -1)) * a.scale + bias).softmax(-1)
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        pos = F.pad(pos, (0, 0, 0, -w % ws, 0, -h % ws), value=-1)
        nh, nw = pos.shape[1] // ws, pos.shape[2] // ws
        slots = pos.view(1, nh, ws, nw, ws).transpose(2, 3).reshape(nh * nw, ws * ws).long()
        idx = torch.where(slots >= 0, slots, h * w)
        wts = weights.view(b, nh * nw, *weights.shape[1:])
        full = torch.zeros(b, wts.shape[2], h * w + 1, h * w + 1)
        full[:, :, idx[:, :, None], idx[:, None, :]] = wts.permute(0, 2, 1, 3, 4)
        out[n] = (full[:, :, : h * w, : h * w], (int(h), int(w)))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_tiny_vit_windows_equal_a_hand_computation_on_the_image(tiny_vit, fused):
    assert unread_modules(tiny_vit) == {}
    oracle = _oracle(tiny_vit)
    assert {g for _, g in oracle.values()} == {(20, 20), (10, 10), (5, 5)}  # all padded
    for m in tiny_vit.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    first = next(iter(oracle))
    cells = [(0, 0), (6, 13), (19, 19)]
    with torch.no_grad():
        plain = tiny_vit(X)
        with attnviz.capture(tiny_vit) as cache:
            out = tiny_vit(X)
        with attnviz.capture(tiny_vit, sites=first, queries=cells) as rows:
            tiny_vit(X)
    assert torch.equal(out, plain)
    for n, (full, grid) in oracle.items():
        meta = cache.meta[n]
        assert meta["query_grid"] == grid and meta["path"] == ("fused" if fused else "softmax")
        on_image = window_to_grid(cache[n], meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-5)
    full, grid = oracle[first]
    idx = torch.tensor([y * 20 + x for y, x in cells])
    sel = window_to_grid(rows[first], rows.meta[first]["key_index"][idx], grid).flatten(-2)
    torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-5)
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(tiny_vit, {first: "uniform"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(tiny_vit)} == {"window"}
