"""NesT block attention read exactly (issue 24): ``Attention`` within image blocks (kind
``window``), fused and not, proven against timm's own weights (the input of ``attn_drop``)
placed on the image by timm's own ``blockify``."""

from __future__ import annotations

import warnings

import pytest
import torch
from timm.models.nest import Nest, blockify

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def nest():
    torch.manual_seed(25)
    kw = dict(embed_dims=(32, 64, 96), num_heads=(2, 4, 6), depths=(1, 1, 1))
    return Nest(img_size=64, patch_size=4, num_classes=3, **kw).eval()


def _oracle(model):
    names = [n for n, m in model.named_modules() if type(m).__name__ == "Attention"]
    got, hooks = {}, []
    for n in names:
        m = model.get_submodule(n)
        hooks.append(
            m.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0]))
        )
        hooks.append(
            m.register_forward_pre_hook(lambda m, i, n=n: got.__setitem__(n + "@", i[0].shape))
        )
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    try:
        for m in fused:
            m.fused_attn = False
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
        for m, f in fused.items():
            m.fused_attn = f
    out = {}
    for n in names:
        b, t, k, _ = got[n + "@"]
        side = int(round((t * k) ** 0.5))
        pos = torch.arange(side * side, dtype=torch.float).view(1, side, side, 1)
        slots = blockify(pos, int(round(k**0.5)))[0, :, :, 0].long()  # (T, N)
        a = got[n]  # (B, heads, T, N, N)
        full = torch.zeros(b, a.shape[1], side * side, side * side)
        full[:, :, slots[:, :, None], slots[:, None, :]] = a
        out[n] = (full, (side, side))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_nest_blocks_equal_timm_weights_on_the_image(nest, fused):
    assert unread_modules(nest) == {}
    oracle = _oracle(nest)
    grids = {g for _, g in oracle.values()}
    assert grids == {(16, 16), (8, 8), (4, 4)}
    for m in nest.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    first = next(iter(oracle))
    cells = [(0, 0), (6, 13), (15, 15)]
    with torch.no_grad():
        plain = nest(X)
        with attnviz.capture(nest) as cache:
            out = nest(X)
        with attnviz.capture(nest, sites=first, queries=cells) as rows:
            nest(X)
    assert torch.equal(out, plain)
    for n, (full, grid) in oracle.items():
        meta = cache.meta[n]
        assert meta["query_grid"] == grid and meta["path"] == ("fused" if fused else "softmax")
        on_image = window_to_grid(cache[n], meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-5)
    full, grid = oracle[first]
    idx = torch.tensor([y * 16 + x for y, x in cells])
    sel = window_to_grid(rows[first], rows.meta[first]["key_index"][idx], grid).flatten(-2)
    torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-5)
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(nest, {first: "uniform"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(nest)} == {"window"}
