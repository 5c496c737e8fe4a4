"""Hiera mask-unit attention read exactly (issue 24): ``MaskUnitAttention`` (kind ``window`` in the
mask-unit stages, kind ``token`` in the global ones; queries pooled at stage starts), fused and
not, against a hand computation from the module's own input, placed on the image by timm's own
``Reroll`` (independent of the adapter, which follows ``Unroll``), on a non-square map; rows,
rows summing to 1, and writing where the token order is raster order."""

from __future__ import annotations

import pytest
import timm
import torch
from timm_testing import set_fused

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # 16 x 24 tokens


@pytest.fixture(scope="module")
def hiera():
    torch.manual_seed(61)
    kw = dict(img_size=(64, 96), num_classes=3)
    return timm.create_model("hiera_tiny_224", pretrained=False, **kw).eval()


def _hand(m, x):
    """The module's non-fused weights from its input: (B, heads, units, Tq, Tk) for mask-unit
    attention (token n = slot n // U of unit n % U), (B, heads, Nq, Nk) for global attention."""
    b, n, _ = x.shape
    qkv = m.qkv(x)
    if m.use_mask_unit_attn:
        units = n // (m.q_stride * m.window_size)
        q, k, _ = qkv.reshape(b, -1, units, 3, m.heads, m.head_dim).permute(3, 0, 4, 2, 1, 5)
        q = q.reshape(b, m.heads, units, m.q_stride, -1, m.head_dim).amax(3)
    else:
        q, k, _ = qkv.reshape(b, n, 3, m.heads, m.head_dim).permute(2, 0, 3, 1, 4)
        q = q.reshape(b, m.heads, m.q_stride, -1, m.head_dim).amax(2)
    return ((q * m.scale) @ k.transpose(-1, -2)).softmax(-1)


def _raster(model, block, n):
    """Token index at each raster cell of block ``block``'s output grid, by timm's Reroll."""
    tokens = torch.arange(n, dtype=torch.float).view(1, n, 1)
    grid = model.reroll(tokens, block)[0, ..., 0]
    return grid.flatten().round().long(), tuple(grid.shape)


def _oracle(model):
    names = [f"blocks.{i}.attn" for i in range(len(model.blocks))]
    got, hooks = {}, []
    for n in names:
        hooks.append(
            model.get_submodule(n).register_forward_pre_hook(
                lambda m, i, n=n: got.__setitem__(n, i[0])
            )
        )
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for i, n in enumerate(names):
        m, x = model.get_submodule(n), got[n]
        with torch.no_grad():
            a = _hand(m, x)
        key_tokens, kg = _raster(model, max(i - 1, 0), x.shape[1])
        query_tokens, qg = _raster(model, i, x.shape[1] // m.q_stride)
        if m.use_mask_unit_attn:  # token form (B, heads, Nq, Nk), zero across units
            b, heads, units, tq, tk = a.shape
            dense = torch.zeros(b, heads, units * tq, units * tk)
            for u in range(units):
                qi = torch.arange(tq) * units + u
                dense[:, :, qi[:, None], (torch.arange(tk) * units + u)[None, :]] = a[:, :, u]
            a = dense
        out[n] = (a[:, :, query_tokens][..., key_tokens], qg, kg)
    return names, out


@pytest.mark.parametrize("fused", [True, False])
def test_hiera_weights_equal_hand_computation_on_the_image(hiera, fused):
    assert unread_modules(hiera) == {}
    names, oracle = _oracle(hiera)
    with set_fused(hiera, fused), torch.no_grad():
        plain = hiera(X)
        with attnviz.capture(hiera, sites=names) as cache:
            out = hiera(X)
    assert torch.equal(out, plain)
    kinds, pooled = set(), 0
    for n in names:
        meta, att = cache.meta[n], cache[n]
        ref, qg, kg = oracle[n]
        assert meta["query_grid"] == qg and meta["key_grid"] == kg
        assert meta["path"] == ("fused" if fused else "softmax")
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), rtol=0, atol=1e-5)
        if "key_index" in meta:
            kinds.add("window")
            att = window_to_grid(att, meta["key_index"], kg).flatten(-2)
        else:
            kinds.add("token")
        pooled += qg != kg
        torch.testing.assert_close(att, ref, rtol=0, atol=1e-5)
    assert kinds == {"window", "token"} and pooled == 3
    assert cache.meta["blocks.0.attn"]["window"] == (8, 8)  # the first stage's mask unit
    assert (
        cache.meta["blocks.1.attn"]["window"] == (8, 8) and cache["blocks.1.attn"].shape[-1] == 64
    )


def test_hiera_queries_keep_rows(hiera):
    cells = [(0, 0), (3, 5), (1, 2)]  # cells of both the 8 x 12 and the 4 x 6 query grids
    names = ["blocks.1.attn", "blocks.4.attn"]  # mask-unit (pooled queries), global
    with torch.no_grad():
        with attnviz.capture(hiera, sites=names) as full:
            hiera(X)
        with attnviz.capture(hiera, sites=names, queries=cells) as rows:
            hiera(X)
    for n in names:
        gw = full.meta[n]["query_grid"][1]
        idx = [y * gw + x for y, x in cells]
        torch.testing.assert_close(rows[n], full[n][:, :, idx], rtol=0, atol=0)


def test_hiera_writes_where_tokens_are_raster(hiera):
    with pytest.raises(NotWritableError, match="unrolled order"):
        attnviz.intervene(hiera, {"blocks.4.attn": "uniform"})
    name = "blocks.11.attn"  # the last stage: every unroll consumed, raster order
    m = hiera.get_submodule(name)
    seen = {}
    hook = m.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], y=o))
    try:
        with set_fused(hiera, False), torch.no_grad(), attnviz.intervene(hiera, {name: "uniform"}):
            hiera(X)
    finally:
        hook.remove()
    with torch.no_grad():  # every query reads the mean value vector
        b, n, _ = seen["x"].shape
        v = m.qkv(seen["x"]).reshape(b, n, 3, -1)[:, :, 2]
        expected = m.proj(v.mean(1, keepdim=True)).expand(b, n, -1)
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
