"""More timm attention read exactly (issue 24): HGNet's effective-SE channel gate ``EseModule``.

Each test compares the capture with an independent recomputation from the module's own weights
and rebuilds the module's output from the captured tensor.
"""

from __future__ import annotations

import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X64 = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_hgnet_ese_gate_is_read_exactly_and_rebuilds_the_output():
    """EseModule: gate = sigmoid(conv1x1(mean_hw(x))), output = x * gate (CenterMask eq. 2)."""
    torch.manual_seed(7)
    model = timm.create_model("hgnet_tiny", pretrained=False, num_classes=3).eval()
    eses = {n: m for n, m in model.named_modules() if type(m).__name__ == "EseModule"}
    assert len(eses) >= 4 and unread_modules(model) == {}
    seen, hooks = {}, []
    for name, mod in eses.items():
        hooks.append(
            mod.register_forward_hook(
                lambda m, i, o, name=name: seen.__setitem__(name, (i[0].clone(), o.clone()))
            )
        )
    try:
        with torch.no_grad():
            plain = model(X64)
            with attnviz.capture(model) as cache:
                out = model(X64)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, plain)
    assert set(eses) <= set(cache)
    assert {s.kind for s in attnviz.find_sites(model) if s.name in eses} == {"se"}
    for name, mod in eses.items():
        x, y = seen[name]
        conv = mod.conv
        logits = torch.einsum("oi,bi->bo", conv.weight[:, :, 0, 0], x.mean((2, 3))) + conv.bias
        gate = torch.sigmoid(logits)  # by hand, from the module's own weights
        assert cache[name].shape == (2, x.shape[1])
        torch.testing.assert_close(cache[name], gate, rtol=0, atol=1e-6)
        torch.testing.assert_close(x * cache[name][:, :, None, None], y, rtol=0, atol=1e-6)
        assert cache[name].std() > 0  # not a constant gate


def _attn_drop_inputs(model, fused: bool, x=None):
    """Each attention module's ``attn_drop`` input (timm's own weights on the non-fused path)
    and the model output, with ``fused_attn`` set to ``fused`` on every module (restored)."""
    mods = {n: m for n, m in model.named_modules() if hasattr(m, "fused_attn")}
    before = {n: m.fused_attn for n, m in mods.items()}
    got, hooks = {}, []
    for name, mod in mods.items():
        mod.fused_attn = fused
        hooks.append(
            mod.attn_drop.register_forward_hook(
                lambda m, i, o, name=name: got.__setitem__(name, i[0].clone())
            )
        )
    try:
        with torch.no_grad():
            out = model(X64[:, :, :56, :56] if x is None else x)
    finally:
        for h in hooks:
            h.remove()
        for n, m in mods.items():
            m.fused_attn = before[n]
    return got, out


def _set_fused(model, fused: bool) -> None:
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


@torch.no_grad()
def test_eva02_attention_equals_timm_non_fused_weights_with_rope():
    """EvaAttention (EVA-02: RoPE on q, k): fused and non-fused reads equal timm's own weights."""
    torch.manual_seed(8)
    kw = dict(img_size=56, depth=2, num_classes=3)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, **kw).eval()
    assert unread_modules(model) == {}
    x = X64[:, :, :56, :56]
    oracle, _ = _attn_drop_inputs(model, fused=False)
    assert set(oracle) == {"blocks.0.attn", "blocks.1.attn"}
    for fused in (True, False):
        _set_fused(model, fused)
        plain = model(x)
        with attnviz.capture(model) as cache:
            out = model(x)
        with attnviz.capture(model, queries=[(3, 1)]) as rows:
            model(x)
        assert torch.equal(out, plain)
        for name, ref in oracle.items():
            assert ref.shape == (2, 3, 17, 17)  # class token + 4 x 4 patches
            torch.testing.assert_close(cache[name], ref, rtol=0, atol=1e-6)
            torch.testing.assert_close(rows[name], ref[:, :, [1 + 13]], rtol=0, atol=1e-6)
            meta = cache.meta[name]
            assert meta["path"] == ("fused" if fused else "softmax")
            assert meta["prefix_tokens"] == 1 and meta["query_grid"] == (4, 4)


@torch.no_grad()
def test_beit_attention_includes_its_relative_position_bias():
    """BEiT adds a learned relative-position bias before the softmax: it is in what is read."""
    torch.manual_seed(9)
    kw = dict(img_size=32, patch_size=8, depth=2, num_classes=3)
    model = timm.create_model("beit_base_patch16_224", pretrained=False, **kw).eval()
    for blk in model.blocks:  # timm starts the table at zero: give it a bias that matters
        blk.attn.relative_position_bias_table.normal_(0, 1.0)
    assert unread_modules(model) == {}
    x = X64[:, :, :32, :32]
    oracle, _ = _attn_drop_inputs(model, fused=False, x=x)
    for fused in (True, False):
        _set_fused(model, fused)
        plain = model(x)
        with attnviz.capture(model) as cache:
            out = model(x)
        with attnviz.capture(model, queries=[(0, 3), (2, 2)]) as rows:
            model(x)
        assert torch.equal(out, plain)
        for name, ref in oracle.items():
            assert ref.shape == (2, 12, 17, 17)
            torch.testing.assert_close(cache[name], ref, rtol=0, atol=1e-5)
            torch.testing.assert_close(rows[name], ref[:, :, [1 + 3, 1 + 10]], rtol=0, atol=1e-5)
            assert cache.meta[name]["prefix_names"] == ["class"]
    # the bias is in what is read: with the table zeroed, the fused read changes
    _set_fused(model, True)
    table = model.blocks[0].attn.relative_position_bias_table
    kept = table.clone()
    table.zero_()
    with attnviz.capture(model, sites="blocks.0.attn") as no_bias:
        model(x)
    table.copy_(kept)
    assert (no_bias["blocks.0.attn"] - oracle["blocks.0.attn"]).abs().max() > 1e-2


@torch.no_grad()
def test_pvt_v2_keys_on_the_reduced_grid_equal_timm_weights():
    """PVT-v2 spatial-reduction attention: queries on the H x W map, keys on the map reduced by
    a stride-R conv (R = 8, 4, 2, 1 by stage): key_grid is (H / R, W / R)."""
    torch.manual_seed(10)
    model = timm.create_model("pvt_v2_b0", pretrained=False, num_classes=3).eval()
    assert unread_modules(model) == {}
    x = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    oracle, _ = _attn_drop_inputs(model, fused=False, x=x)
    first = "stages.0.blocks.0.attn"
    expected = {first: ((32, 32), (4, 4)), "stages.1.blocks.0.attn": ((16, 16), (4, 4))}
    expected["stages.2.blocks.0.attn"] = ((8, 8), (4, 4))
    expected["stages.3.blocks.0.attn"] = ((4, 4), (4, 4))
    for fused in (True, False):
        _set_fused(model, fused)
        plain = model(x)
        with attnviz.capture(model) as cache:
            out = model(x)
        with attnviz.capture(model, sites=[first], queries=[(0, 0), (13, 5)]) as rows:
            model(x)
        assert torch.equal(out, plain)
        assert set(cache) == set(oracle)
        for name, ref in oracle.items():
            torch.testing.assert_close(cache[name], ref, rtol=0, atol=1e-5)
        for name, (grid, key_grid) in expected.items():
            meta = cache.meta[name]
            assert (meta["query_grid"], meta["key_grid"]) == (grid, key_grid)
            assert cache[name].shape[-2:] == (grid[0] * grid[1], key_grid[0] * key_grid[1])
        ref = oracle[first][:, :, [0, 13 * 32 + 5]]
        torch.testing.assert_close(rows[first], ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_twins_global_subsampled_attention_equals_timm_weights():
    """Twins-SVT global sub-sampled attention: keys on the map reduced by the stride-R conv."""
    torch.manual_seed(11)
    kw = dict(img_size=64, depths=(2, 2, 2, 2), num_classes=3)
    model = timm.create_model("twins_svt_small", pretrained=False, **kw).eval()
    unread = unread_modules(model)
    assert unread == {}  # the windowed half (LocallyGroupedAttn) is read too: timm_twins
    x = X64
    oracle, _ = _attn_drop_inputs(model, fused=False, x=x)
    names = [n for n, m in model.named_modules() if type(m).__name__ == "GlobalSubSampleAttn"]
    assert len(names) >= 3
    for fused in (True, False):
        _set_fused(model, fused)
        plain = model(x)
        with attnviz.capture(model, sites=names) as cache:
            out = model(x)
        assert torch.equal(out, plain)
        for name in names:
            torch.testing.assert_close(cache[name], oracle[name], rtol=0, atol=1e-5)
        meta = cache.meta[names[0]]
        assert meta["query_grid"] == (16, 16) and meta["key_grid"] == (2, 2)  # R = 8
