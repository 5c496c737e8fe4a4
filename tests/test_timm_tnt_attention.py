"""TNT attention read exactly (issue 24): the inner attention (pixels within each patch, kind
``window`` on the pixel grid) and the outer one (class token + patches, kind ``token``), on a
non-square 2 x 3 patch grid, proven against timm's own weights (the input of ``attn_drop``)
with the token layout checked position by position, and the outer one written by hand."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm_testing import module_io

import attnviz
from attnviz.capture import window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))  # 2 x 3 patches of 16
GH, GW, P = 2, 3, 4  # patch grid, pixels per patch side (16 / stride 4)


def _model(legacy: bool = False):
    torch.manual_seed(5)
    name = "tnt_s_legacy_patch16_224" if legacy else "tnt_s_patch16_224"
    model = timm.create_model(name, pretrained=False, img_size=(32, 48), depth=2, num_classes=3)
    with torch.no_grad():  # sharper attention than timm's small init
        for n, p in model.named_parameters():
            if n.endswith("qk.weight"):
                p.normal_(0, 0.3)
    return model.eval()


def _oracle(model) -> dict:
    """timm's own weights: the input of each Attention's ``attn_drop``."""
    got, hooks = {}, []
    for n, m in model.named_modules():
        if type(m).__name__ == "Attention":
            hooks.append(
                m.attn_drop.register_forward_hook(
                    lambda m, i, o, n=n: got.__setitem__(n, i[0].clone())
                )
            )
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    return got


@pytest.mark.parametrize("legacy", [False, True])
def test_tnt_inner_and_outer_attention_equal_timm_weights(legacy):
    model = _model(legacy)
    assert unread_modules(model) == {}
    oracle = _oracle(model)
    assert len(oracle) == 4
    queries = [(0, 0), (5, 9), (7, 11), (1, 2)]
    with torch.no_grad():
        plain = model(X)
        with attnviz.capture(model) as cache:
            out = model(X)
        with attnviz.capture(model, kinds="window", queries=queries) as rows:
            model(X)
        with attnviz.capture(model, kinds="token", queries=[(1, 2), (0, 1)]) as outer_rows:
            model(X)
    assert torch.equal(out, plain)
    kinds = {s.name: s.kind for s in attnviz.find_sites(model)}
    assert kinds == {
        "blocks.0.attn_in": "window",
        "blocks.0.attn_out": "token",
        "blocks.1.attn_in": "window",
        "blocks.1.attn_out": "token",
    }
    h, w = GH * P, GW * P
    for n, ref in oracle.items():
        meta = cache.meta[n]
        att = cache[n]
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]))
        if kinds[n] == "token":  # class token, then the 2 x 3 patches in raster order
            assert ref.shape == (2, 6, 7, 7) and torch.equal(att, ref)
            assert meta["query_grid"] == (GH, GW) and meta["prefix_tokens"] == 1
            assert meta["prefix_names"] == ["class"]
            assert torch.equal(outer_rows[n], ref[:, :, [1 + 1 * GW + 2, 1 + 0 * GW + 1]])
            continue
        # inner: (B * 6 patches, heads, 16, 16) -> (B, heads, 8 * 12 pixels, 16 slots)
        assert ref.shape == (2 * GH * GW, 4, P * P, P * P) and att.shape == (2, 4, h * w, P * P)
        assert meta["query_grid"] == (h, w) and meta["window"] == (P, P)
        key_index = meta["key_index"]
        for y in range(h):
            for x in range(w):
                patch, slot = (y // P) * GW + x // P, (y % P) * P + x % P
                for b in range(2):
                    assert torch.equal(att[b, :, y * w + x], ref[b * GH * GW + patch, :, slot])
                ky = (y // P) * P + torch.arange(P * P) // P
                kx = (x // P) * P + torch.arange(P * P) % P
                assert torch.equal(key_index[y * w + x], ky * w + kx)
        idx = [y * w + x for y, x in queries]
        assert torch.equal(rows[n], att[:, :, idx])
        # on the pixel grid, each row's mass lies in its own patch
        grid = window_to_grid(att, key_index, (h, w))  # (B, heads, Nq, h, w)
        y, x = 5, 9
        inside = grid[:, :, y * w + x, 4:8, 8:12].sum((-2, -1))
        torch.testing.assert_close(inside, torch.ones_like(inside))
    assert max(float(r.max()) for r in oracle.values()) > 0.3  # rows far from uniform


def test_tnt_writes_its_outer_softmax_not_the_inner():
    model = _model()
    name = "blocks.1.attn_out"
    mod = model.get_submodule(name)
    with module_io(mod) as seen:
        with torch.no_grad():
            plain = model(X)
            with attnviz.intervene(model, {name: "uniform"}):
                changed = model(X)
    v = mod.v(seen["x"])  # (B, N, C): uniform weights give every token the mean of v
    torch.testing.assert_close(
        seen["y"], mod.proj(v.mean(1, keepdim=True).expand_as(v)), atol=1e-5, rtol=0
    )
    assert not torch.allclose(changed, plain)
    with pytest.raises(Exception, match="pixel grid"):
        with attnviz.intervene(model, {"blocks.1.attn_in": "uniform"}):
            model(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attnviz.find_sites(model)
