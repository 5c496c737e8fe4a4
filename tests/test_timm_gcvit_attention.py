"""GC ViT window attention read exactly (issue 24): local and global blocks
(``GlobalContextVitBlock`` / ``WindowAttentionGlobal``, kind ``window``), proven against timm's
own weights (the input of ``attn_drop``) placed on the image by timm's own window partition, and
a hand computation of a global block's window (the shared global query tokens as queries)."""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.models.gcvit import GlobalContextVit, window_partition

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # maps 16 and 8


@pytest.fixture(scope="module")
def gcvit():
    torch.manual_seed(13)
    kw = dict(depths=(2, 2), num_heads=(2, 4), embed_dim=32, window_ratio=(16, 16))
    model = GlobalContextVit(img_size=64, num_classes=3, **kw).eval()
    with torch.no_grad():  # a bias that matters (timm starts the table near zero)
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
    return model


def _oracle(model):
    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ == "GlobalContextVitBlock"}
    got, handles = {}, []
    for n, blk in blocks.items():
        handles.append(
            blk.attn.attn_drop.register_forward_hook(
                lambda m, i, o, n=n: got.__setitem__(n, i[0].clone())
            )
        )
        handles.append(
            blk.attn.register_forward_hook(
                lambda m, i, o, n=n: got.__setitem__(n + "<", (i[0], i[1] if len(i) > 1 else None))
            )
        )
        handles.append(
            blk.register_forward_pre_hook(lambda m, i, n=n: got.__setitem__(n + "@", i[0].shape))
        )
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for n, blk in blocks.items():
        b, h, w, _ = got[n + "@"]
        ws = blk.window_size
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        slots = window_partition(pos, ws).reshape(-1, ws[0] * ws[1]).long()
        a = got[n].view(b, slots.shape[0], *got[n].shape[1:])
        full = torch.zeros(b, a.shape[2], h * w, h * w)
        full[:, :, slots[:, :, None], slots[:, None, :]] = a.permute(0, 2, 1, 3, 4)
        out[n] = (full, (h, w), blk, got[n + "<"])
    return out


def test_gcvit_local_and_global_windows_equal_timm_weights_on_the_image(gcvit):
    assert unread_modules(gcvit) == {}
    oracle = _oracle(gcvit)
    cells = [(0, 0), (5, 9), (15, 15)]
    first = ["stages.0.blocks.0", "stages.0.blocks.1"]
    with torch.no_grad():
        plain = gcvit(X)
        with attnviz.capture(gcvit) as cache:
            out = gcvit(X)
        with attnviz.capture(gcvit, sites=first, queries=cells) as rows:
            gcvit(X)
    assert torch.equal(out, plain)
    assert {cache.meta[n]["query"] for n in oracle} == {"local", "global"}
    for name, (full, grid, blk, _) in oracle.items():
        meta = cache.meta[name]
        assert meta["query"] == ("global" if blk.attn.use_global else "local")
        assert meta["query_grid"] == grid and meta["window"] == (4, 4)
        on_image = window_to_grid(cache[name], meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-6)
        if name in first:
            idx = torch.tensor([y * grid[1] + x for y, x in cells])
            sel = window_to_grid(rows[name], meta["key_index"][idx], grid).flatten(-2)
            torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-6)
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(gcvit, {first[0]: "uniform"})


def test_gcvit_global_rows_are_the_shared_global_queries(gcvit):
    """Global block, window 0 (rows 0-3, columns 0-3 of 16 x 16): row (y, x) is global query
    token y * 4 + x over the window's keys: softmax(q_g k^T / sqrt(d) + B)."""
    name = "stages.0.blocks.1"
    oracle = _oracle(gcvit)
    _, _, blk, (x_win, q_global) = oracle[name]
    assert blk.attn.use_global and q_global is not None
    with torch.no_grad(), attnviz.capture(gcvit, sites=name) as cache:
        gcvit(X)
    a = blk.attn
    with torch.no_grad():
        k = a.qkv(x_win[0::16]).view(2, 16, 2, 2, -1)[:, :, 0].transpose(1, 2)  # window 0
        q = q_global.reshape(2, 16, 2, -1).transpose(1, 2)  # (B, heads, 16, d)
        logits = (q * a.scale) @ k.transpose(-2, -1)
        expected = a.rel_pos(logits).softmax(-1)
    rows = torch.tensor([y * 16 + x for y in range(4) for x in range(4)])
    torch.testing.assert_close(cache[name][:, :, rows], expected, rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "window" in {s.kind for s in attnviz.find_sites(gcvit)}
