"""LeViT attention read exactly (issue 24): ``Attention`` and ``AttentionDownsample`` (queries on
the subsampled grid, keys on the full one), linear and conv variants, proven by a hand
computation with the attention bias and by rebuilding each module's output from the capture."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # maps 8, 4, 2 by stage


def _levit(name: str):
    torch.manual_seed(9)
    model = timm.create_model(name, pretrained=False, img_size=128, num_classes=3).eval()
    with torch.no_grad():  # attention biases that matter (timm starts them at zero)
        for m in model.modules():
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_(0, 1.0)
    return model


def _by_hand(mod, x):
    """(weights (B, heads, Nq, Nk), values (B, heads, Nk, d)): the module's own projections,
    then q k^T * scale + the bias gathered by offset, softmax over keys (LeViT sec. 4.3)."""
    h, kd, vd = mod.num_heads, mod.key_dim, mod.val_dim
    conv = x.dim() == 4
    b = x.shape[0]

    def heads(t):  # (B, heads, N, d) from a conv (B, C, H, W) or linear (B, N, C) projection
        return (
            t.view(b, h, -1, t.shape[-2] * t.shape[-1]).transpose(-2, -1)
            if conv
            else (t.view(b, t.shape[1], h, -1).transpose(1, 2))
        )

    if hasattr(mod, "qkv"):
        q, k, v = heads(mod.qkv(x)).split([kd, kd, vd], dim=-1)
    else:
        k, v = heads(mod.kv(x)).split([kd, vd], dim=-1)
        q = heads(mod.q(x))
    bias = mod.attention_biases[:, mod.attention_bias_idxs]
    return ((q @ k.transpose(-2, -1)) * mod.scale + bias).softmax(-1), v


@pytest.mark.parametrize("name", ["levit_128s", "levit_conv_128s"])
def test_levit_attention_and_downsample_equal_a_hand_computation(name):
    model = _levit(name)
    assert unread_modules(model) == {}
    kinds = ("Attention", "AttentionDownsample")
    mods = {n: m for n, m in model.named_modules() if type(m).__name__ in kinds}
    seen, hooks = {}, []
    for n, m in mods.items():
        hooks.append(
            m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, (i[0], o.clone())))
        )
    try:
        with torch.no_grad():
            plain = model(X)
            with attnviz.capture(model) as cache:
                out = model(X)
            with attnviz.capture(model, sites=list(mods)[:3], queries=[(0, 0), (1, 3)]) as rows:
                model(X)
            expected = {n: _by_hand(m, seen[n][0]) for n, m in mods.items()}
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, plain)
    down = "stages.1.downsample.attn_downsample"
    assert cache.meta[down]["query_grid"] == (4, 4) and cache.meta[down]["key_grid"] == (8, 8)
    assert cache.meta["stages.0.blocks.0.attn"]["query_grid"] == (8, 8)
    for n, mod in mods.items():
        weights, v = expected[n]
        torch.testing.assert_close(cache[n], weights, rtol=0, atol=1e-5)
        grid = cache.meta[n]["query_grid"]
        assert cache[n].shape[-2:] == (grid[0] * grid[1], cache.meta[n]["key_grid"][0] ** 2)
        if n in list(mods)[:3]:
            idx = [0, 1 * grid[1] + 3]
            torch.testing.assert_close(rows[n], cache[n][:, :, idx], rtol=0, atol=0)
        # the output rebuilt from the captured weights
        y = seen[n][1]
        x = (cache[n] @ v).transpose(1, 2).reshape(2, cache[n].shape[2], -1)
        if y.dim() == 4:  # conv variant: (B, C, H, W)
            x = x.transpose(1, 2).reshape(y.shape[0], -1, *y.shape[2:])
        rebuilt = mod.proj(x)
        torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-4)


def test_levit_writes_its_softmax():
    model = _levit("levit_128s")
    name = "stages.0.blocks.0.attn"
    mod = model.get_submodule(name)
    seen = {}
    hook = mod.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o.clone()))
    try:
        with torch.no_grad(), attnviz.intervene(model, {name: "uniform"}):
            model(X)
    finally:
        hook.remove()
    _, v = _by_hand(mod, seen["x"])
    mean = v.mean(2, keepdim=True).expand_as(v).transpose(1, 2).reshape(2, 64, -1)
    torch.testing.assert_close(seen["y"], mod.proj(mean), rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"token"}
