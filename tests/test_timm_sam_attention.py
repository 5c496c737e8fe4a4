"""SAM image-encoder ViT attention read exactly (issue 24): ``Block`` with windowed attention
(kind ``window``, padded windows) and with global attention (kind ``token``), decomposed
relative-position bias included, fused and not, proven against timm's own weights (the input of
``attn_drop``) placed on the image by timm's own ``window_partition``."""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.models.vision_transformer_sam import VisionTransformerSAM, window_partition

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(0))  # 10 x 10 tokens


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(27)
    kw = dict(embed_dim=32, depth=2, num_heads=2, window_size=4, global_attn_indexes=(1,))
    model = VisionTransformerSAM(
        img_size=80, patch_size=8, use_rel_pos=True, neck_chans=16, num_classes=3, **kw
    ).eval()
    with torch.no_grad():  # a bias that matters (timm starts the tables at zero)
        for n, p in model.named_parameters():
            if "rel_pos" in n:
                p.normal_(0, 1.0)
    return model


def _set_fused(model, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


def _oracle(model):
    got, hooks = {}, []
    for i, blk in enumerate(model.blocks):
        n = f"blocks.{i}"
        hooks.append(
            blk.attn.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0]))
        )
    try:
        _set_fused(model, False)
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    pos = torch.arange(100, dtype=torch.float).view(1, 10, 10, 1)
    padded, _ = window_partition(pos + 1, 4)  # padding slots become 0, positions 1..100
    slots = padded.reshape(-1, 16).long() - 1  # (windows, K), -1 = padding
    idx = torch.where(slots >= 0, slots, 100)
    a = got["blocks.0"].view(2, slots.shape[0], 2, 16, 16)
    full = torch.zeros(2, 2, 101, 101)
    full[:, :, idx[:, :, None], idx[:, None, :]] = a.permute(0, 2, 1, 3, 4)
    return full[:, :, :100, :100], got["blocks.1"].view(2, 2, 100, 100)


@pytest.mark.parametrize("fused", [True, False])
def test_sam_windowed_and_global_blocks_equal_timm_weights(sam, fused):
    assert unread_modules(sam) == {}
    windowed, global_ = _oracle(sam)
    _set_fused(sam, fused)
    cells = [(0, 0), (5, 9), (9, 9)]
    with torch.no_grad():
        plain = sam(X)
        with attnviz.capture(sam) as cache:
            out = sam(X)
        with attnviz.capture(sam, queries=cells) as rows:
            sam(X)
    assert torch.equal(out, plain)
    idx = torch.tensor([y * 10 + x for y, x in cells])
    meta = cache.meta["blocks.0"]
    assert meta["window"] == (4, 4) and (meta["key_index"] < 0).any()  # 10 x 10 in 4 x 4
    on_image = window_to_grid(cache["blocks.0"], meta["key_index"], (10, 10)).flatten(-2)
    torch.testing.assert_close(on_image, windowed, rtol=0, atol=1e-5)
    sel = window_to_grid(rows["blocks.0"], meta["key_index"][idx], (10, 10)).flatten(-2)
    torch.testing.assert_close(sel, windowed[:, :, idx], rtol=0, atol=1e-5)
    assert cache.meta["blocks.1"]["query_grid"] == (10, 10)
    torch.testing.assert_close(cache["blocks.1"], global_, rtol=0, atol=1e-5)
    torch.testing.assert_close(rows["blocks.1"], global_[:, :, idx], rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [s.kind for s in attnviz.find_sites(sam)] == ["window", "token"]


def test_sam_writes_global_blocks_only(sam):
    _set_fused(sam, False)
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(sam, {"blocks.0": "uniform"})
    attn = sam.blocks[1].attn
    seen = {}
    hook = attn.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    try:
        with torch.no_grad(), attnviz.intervene(sam, {"blocks.1": "uniform"}):
            sam(X)
    finally:
        hook.remove()
    x = seen["x"]  # uniform: every position reads the mean value vector
    with torch.no_grad():
        v = attn.qkv(x.reshape(2, 100, -1)).view(2, 100, 3, -1)[:, :, 2]
        expected = attn.proj(v.mean(1, keepdim=True).expand(2, 100, -1)).view(2, 10, 10, -1)
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
    _set_fused(sam, True)
    with pytest.raises(NotWritableError, match="fused_attn = False"):
        attnviz.intervene(sam, {"blocks.1": "uniform"})
