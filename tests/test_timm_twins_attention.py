"""Twins-SVT locally-grouped attention read exactly (issue 24): ``LocallyGroupedAttn`` (kind
``window``, padded windows), fused and not, proven against timm's own weights (the input of
``attn_drop``) placed on the image by the module's own padding and window split."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))  # maps 24, 12, 6, 3


@pytest.fixture(scope="module")
def twins():
    torch.manual_seed(22)
    kw = dict(depths=(2, 2, 2, 2), num_classes=3, img_size=96)
    return timm.create_model("twins_svt_small", pretrained=False, **kw).eval()


def _oracle(model):
    names = [n for n, m in model.named_modules() if type(m).__name__ == "LocallyGroupedAttn"]
    got, hooks = {}, []
    for n in names:
        m = model.get_submodule(n)
        hooks.append(
            m.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0]))
        )
        hooks.append(m.register_forward_pre_hook(lambda m, i, n=n: got.__setitem__(n + "@", i[1])))
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
        (h, w), ws = got[n + "@"], model.get_submodule(n).ws
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        pos = F.pad(pos, (0, 0, 0, -w % ws, 0, -h % ws), value=-1)
        _h, _w = pos.shape[1] // ws, pos.shape[2] // ws
        slots = pos.reshape(1, _h, ws, _w, ws).transpose(2, 3).reshape(_h * _w, ws * ws).long()
        idx = torch.where(slots >= 0, slots, h * w)
        a = got[n]  # (B, windows, heads, K, K)
        full = torch.zeros(a.shape[0], a.shape[2], h * w + 1, h * w + 1)
        full[:, :, idx[:, :, None], idx[:, None, :]] = a.permute(0, 2, 1, 3, 4)
        out[n] = (full[:, :, : h * w, : h * w], (int(h), int(w)))
    return out


@pytest.mark.parametrize("fused", [True, False])
def test_twins_local_windows_equal_timm_weights_on_the_image(twins, fused):
    assert unread_modules(twins) == {}
    oracle = _oracle(twins)
    assert len(oracle) == 4 and next(iter(oracle.values()))[1] == (24, 24)  # 7 x 7: padded
    first = next(iter(oracle))
    cells = [(0, 0), (6, 13), (23, 23)]
    for m in twins.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    with torch.no_grad():
        plain = twins(X)
        with attnviz.capture(twins, sites=list(oracle)) as cache:
            out = twins(X)
        with attnviz.capture(twins, sites=first, queries=cells) as rows:
            twins(X)
    assert torch.equal(out, plain)
    for n, (full, grid) in oracle.items():
        meta = cache.meta[n]
        assert meta["query_grid"] == grid and meta["path"] == ("fused" if fused else "softmax")
        on_image = window_to_grid(cache[n], meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-6)
    full, grid = oracle[first]
    assert (cache.meta[first]["key_index"] < 0).any()
    idx = torch.tensor([y * 24 + x for y, x in cells])
    sel = window_to_grid(rows[first], rows.meta[first]["key_index"][idx], grid).flatten(-2)
    torch.testing.assert_close(sel, full[:, :, idx], rtol=0, atol=1e-6)
    with pytest.raises(NotWritableError, match="reordered per image position"):
        attnviz.intervene(twins, {first: "uniform"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(twins)} == {"window", "token"}
