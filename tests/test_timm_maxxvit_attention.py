"""MaxViT and CoAtNet attention read exactly (issue 24): ``timm.models.maxxvit``'s block and grid
partition attention (``PartitionAttentionCl`` / ``PartitionAttention2d``, kind ``window``) and
CoAtNet's ``TransformerBlock2d`` (kind ``token``), each proven against timm's own non-fused
weights (the input of ``attn_drop``), placed on the image by timm's own partition functions."""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.models import maxxvit as mx
from timm_testing import module_io, set_fused
from torch import Tensor

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # maps 16 x 24, 8 x 12


def _maxvit(nchw: bool, rel_pos: str) -> mx.MaxxVit:
    """A two-stage MaxViT with 4 x 4 windows and a 4 x 4 grid on a non-square map."""
    torch.manual_seed(3)
    tcfg = mx.MaxxVitTransformerCfg(
        dim_head=8, window_size=(4, 4), rel_pos_type=rel_pos, use_nchw_attn=nchw
    )
    cfg = mx.MaxxVitCfg(
        embed_dim=(16, 32), depths=(1, 1), block_type=("M", "M"), stem_width=(8, 16)
    )
    cfg = mx.MaxxVitCfg(**{**cfg.__dict__, "transformer_cfg": tcfg})
    model = mx.MaxxVit(cfg, img_size=(64, 96), num_classes=3).eval()
    with torch.no_grad():  # a bias that matters (timm starts the tables near zero)
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
    return model


def _coatnet() -> mx.MaxxVit:
    """A CoAtNet: one conv stage, then a transformer stage whose first block pools by 2."""
    torch.manual_seed(4)
    tcfg = mx.MaxxVitTransformerCfg(dim_head=8, rel_pos_type="bias")
    cfg = mx.MaxxVitCfg(
        embed_dim=(16, 32),
        depths=(1, 2),
        block_type=("C", "T"),
        stem_width=(8, 16),
        transformer_cfg=tcfg,
    )
    model = mx.MaxxVit(cfg, img_size=(64, 96), num_classes=3).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name:
                p.normal_(0, 1.0)
    return model


def _oracle(model, blocks: dict):
    """timm's own weights (input of attn_drop) and each block's input, non-fused path."""
    got, handles = {}, []
    for name, blk in blocks.items():
        handles.append(
            blk.attn.attn_drop.register_forward_hook(
                lambda m, i, o, name=name: got.__setitem__(name, i[0].clone())
            )
        )
        handles.append(
            blk.register_forward_pre_hook(lambda m, i, name=name: got.__setitem__(name + "<", i[0]))
        )
    try:
        with torch.no_grad(), set_fused(model, False):
            model(X)
    finally:
        for h in handles:
            h.remove()
    return got


def _on_image(blk, weights: Tensor, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """(B, heads, HW, HW): each partition's (slot, slot) weights at the image positions that
    timm's own partition function puts in those slots."""
    nchw = type(blk).__name__ == "PartitionAttention2d"
    b, h, w = (x.shape[0], *x.shape[-2:]) if nchw else x.shape[:3]
    size = blk.partition_size
    if nchw:
        pos = torch.arange(h * w, dtype=torch.float).view(1, 1, h, w)
        cut = mx.window_partition_nchw if blk.partition_block else mx.grid_partition_nchw
    else:
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        cut = mx.window_partition if blk.partition_block else mx.grid_partition
    slots = cut(pos, size).reshape(-1, size[0] * size[1]).long()  # (partitions, K)
    a = weights.view(b, slots.shape[0], *weights.shape[1:])  # (B, partitions, heads, K, K)
    full = torch.zeros(b, a.shape[2], h * w, h * w)
    full[:, :, slots[:, :, None], slots[:, None, :]] = a.permute(0, 2, 1, 3, 4)
    return full, (h, w)


def _partition_blocks(model):
    kinds = ("PartitionAttentionCl", "PartitionAttention2d")
    return {n: m for n, m in model.named_modules() if type(m).__name__ in kinds}


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(("nchw", "rel_pos"), [(False, "bias"), (True, "bias_tf"), (False, "mlp")])
def test_maxvit_block_and_grid_partitions_equal_timm_weights_on_the_image(nchw, rel_pos, fused):
    model = _maxvit(nchw, rel_pos)
    assert unread_modules(model) == {}
    blocks = _partition_blocks(model)
    assert len(blocks) == 4 and {b.partition_block for b in blocks.values()} == {True, False}
    oracle = _oracle(model, blocks)
    cells = [(0, 0), (5, 17), (15, 23)]
    with torch.no_grad(), set_fused(model, fused):
        plain = model(X)
        with attnviz.capture(model) as cache:
            out = model(X)
        first = list(blocks)[:2]  # stage 0 (16 x 24): the block and the grid partition
        with attnviz.capture(model, sites=first, queries=cells) as rows:
            model(X)
    assert torch.equal(out, plain)
    for name, blk in blocks.items():
        full, grid = _on_image(blk, oracle[name], oracle[name + "<"])
        meta = cache.meta[name]
        assert meta["partition"] == ("block" if blk.partition_block else "grid")
        assert meta["query_grid"] == meta["key_grid"] == grid
        assert meta["path"] == ("fused" if fused else "softmax")
        att = cache[name]
        assert att.shape == (2, full.shape[1], grid[0] * grid[1], 16)
        on_image = window_to_grid(att, meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-5)
        if name in first:
            idx = torch.tensor([y * grid[1] + x for y, x in cells])
            key_index = rows.meta[name]["key_index"][idx]
            sel = window_to_grid(rows[name], key_index, grid).flatten(-2)
            torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-5)


def test_maxvit_grid_partition_keys_are_spread_over_the_map():
    """A grid partition's keys of position (y, x) are (y mod 4 + 4a, x mod 6 + 6b) on 16 x 24."""
    model = _maxvit(False, "bias")
    with torch.no_grad(), attnviz.capture(model, sites="stages.0.blocks.0.attn_grid") as cache:
        model(X)
    keys = cache.meta["stages.0.blocks.0.attn_grid"]["key_index"][5 * 24 + 17]
    expected = [(5 % 4 + 4 * a) * 24 + 17 % 6 + 6 * b for a in range(4) for b in range(4)]
    assert keys.tolist() == expected


def test_maxvit_relative_position_bias_is_in_what_is_read():
    model = _maxvit(False, "bias")
    name = "stages.0.blocks.0.attn_block"
    with torch.no_grad(), attnviz.capture(model, sites=name) as with_bias:
        model(X)
    table = model.get_submodule(name).attn.rel_pos.relative_position_bias_table
    with torch.no_grad(), attnviz.capture(model, sites=name) as no_bias:
        table.zero_()
        model(X)
    assert (with_bias[name] - no_bias[name]).abs().max() > 1e-2
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(model, {name: "uniform"})


@pytest.mark.parametrize("fused", [True, False])
def test_coatnet_transformer_block_equals_timm_weights(fused):
    model = _coatnet()
    assert unread_modules(model) == {}
    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ == "TransformerBlock2d"}
    assert len(blocks) == 2
    oracle = _oracle(model, blocks)
    with torch.no_grad(), set_fused(model, fused):
        plain = model(X)
        with attnviz.capture(model) as cache:
            out = model(X)
        with attnviz.capture(model, queries=[(0, 0), (3, 11), (7, 5)]) as rows:
            model(X)
    assert torch.equal(out, plain)
    for name in blocks:
        ref = oracle[name]
        assert ref.shape == (2, 4, 96, 96)  # 32 channels / 8 = 4 heads on the pooled 8 x 12 map
        meta = cache.meta[name]
        assert meta["query_grid"] == meta["key_grid"] == (8, 12) and meta["prefix_tokens"] == 0
        torch.testing.assert_close(cache[name], ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            rows[name], ref[:, :, [0, 3 * 12 + 11, 7 * 12 + 5]], atol=1e-5, rtol=0
        )
    # the first block pools 16 x 24 -> 8 x 12: the site's grid is the pooled one
    assert oracle["stages.1.blocks.0<"].shape[-2:] == (16, 24)


def test_coatnet_write_needs_the_softmax_path_and_then_replaces_it():
    model = _coatnet()
    name = "stages.1.blocks.1"
    with set_fused(model, True), pytest.raises(NotWritableError, match="fused_attn = False"):
        attnviz.intervene(model, {name: "uniform"})
    attn = model.get_submodule(name).attn
    with module_io(attn) as seen:
        with torch.no_grad(), set_fused(model, False), attnviz.intervene(model, {name: "uniform"}):
            model(X)
    # uniform weights: every position reads the mean value vector (hand computation)
    x = seen["x"]
    b, c, h, w = x.shape
    v = attn.qkv(x).view(b, attn.num_heads, attn.dim_head * 3, -1).chunk(3, dim=2)[2]
    mean = v.mean(-1, keepdim=True).expand(-1, -1, -1, h * w).reshape(b, -1, h, w)
    torch.testing.assert_close(seen["y"], attn.proj(mean), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_maxvit_parallel_block_and_grid_heads_equal_timm_weights(fused):
    """ParallelPartitionAttention: block heads then grid heads, each on its own slots."""
    torch.manual_seed(5)
    tcfg = mx.MaxxVitTransformerCfg(dim_head=8, window_size=(4, 4))
    cfg = mx.MaxxVitCfg(
        embed_dim=(32, 32), depths=(1, 1), block_type=("PM", "PM"), stem_width=(8, 16)
    )
    model = mx.MaxxVit(
        mx.MaxxVitCfg(**{**cfg.__dict__, "transformer_cfg": tcfg}), img_size=(64, 96)
    ).eval()
    assert unread_modules(model) == {}
    name = "stages.0.blocks.0.attn"
    blk = model.get_submodule(name)
    assert type(blk).__name__ == "ParallelPartitionAttention"
    got, hooks = {}, []
    for part in ("attn_block", "attn_grid"):
        hooks.append(
            getattr(blk, part).attn_drop.register_forward_hook(
                lambda m, i, o, part=part: got.__setitem__(part, i[0].clone())
            )
        )
    hooks.append(blk.register_forward_pre_hook(lambda m, i: got.__setitem__("x", i[0])))
    try:
        with torch.no_grad(), set_fused(model, False):
            model(X)
    finally:
        for h in hooks:
            h.remove()
    cells = [(0, 0), (5, 17)]
    with torch.no_grad(), set_fused(model, fused):
        plain = model(X)
        with attnviz.capture(model, sites=name) as cache:
            out = model(X)
        with attnviz.capture(model, sites=name, queries=cells) as rows:
            model(X)
    assert torch.equal(out, plain)
    meta = cache.meta[name]
    block, grid = blk.attn_block, blk.attn_grid
    assert meta["head_partition"] == ["block"] * 4 + ["grid"] * 4
    blk.partition_block = True  # the oracle's partition function: block, then grid
    full_block, hw = _on_image(blk, got["attn_block"], got["x"])
    blk.partition_block = False
    full_grid, _ = _on_image(blk, got["attn_grid"], got["x"])
    del blk.partition_block
    assert (block.num_heads, grid.num_heads) == (4, 4)
    full = torch.cat([full_block, full_grid], 1)
    on_image = window_to_grid(cache[name], meta["key_index"], hw).flatten(-2)
    torch.testing.assert_close(on_image, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache[name].sum(-1), torch.ones(2, 8, 16 * 24), rtol=0, atol=1e-5)
    idx = torch.tensor([y * 24 + x for y, x in cells])
    sel = window_to_grid(rows[name], meta["key_index"][idx], hw).flatten(-2)
    torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-5)


def test_maxxvit_sites_are_listed_without_unread_modules():
    for model, kind in ((_maxvit(True, "mlp"), "window"), (_coatnet(), "token")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sites = attnviz.find_sites(model)
        assert kind in {s.kind for s in sites}
