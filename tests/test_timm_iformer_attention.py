"""iFormer single-head modulation attention read exactly (issue 24): ``SHMA`` (kind ``token``;
kind ``window`` when built with ``window_size``), fused and not, proven against timm's own
weights (the input of ``attn_drop``), a windowed hand computation, and the output rebuilt."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.iformer import SHMA
from timm_testing import set_fused

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def iformer():
    torch.manual_seed(18)
    return timm.create_model("iformer_t", pretrained=False, num_classes=3).eval()


@pytest.mark.parametrize("fused", [True, False])
def test_iformer_shma_equals_timm_weights_and_rebuilds(iformer, fused):
    assert unread_modules(iformer) == {}
    names = [n for n, m in iformer.named_modules() if type(m).__name__ == "SHMA"]
    got, hooks = {}, []
    for n in names:
        m = iformer.get_submodule(n)
        hooks.append(
            m.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0]))
        )
        hooks.append(
            m.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n + "<>", (i[0], o)))
        )
    try:
        with torch.no_grad(), set_fused(iformer, False):
            iformer(X)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad(), set_fused(iformer, fused):
        plain = iformer(X)
        with attnviz.capture(iformer, sites=names) as cache:
            out = iformer(X)
        with attnviz.capture(iformer, sites=names[0], queries=[(0, 0), (7, 2)]) as rows:
            iformer(X)
    assert torch.equal(out, plain)
    for n in names:
        ref = got[n].unsqueeze(1)  # (B, N, N): one head
        torch.testing.assert_close(cache[n], ref, rtol=0, atol=1e-5)
        x, y = got[n + "<>"]
        h, w = x.shape[-2:]
        assert cache.meta[n]["query_grid"] == (h, w)
        m = iformer.get_submodule(n)
        with torch.no_grad():
            v, gate = m.gate_act(m.v_gate(x)).chunk(2, dim=1)
            att = (v.flatten(2) @ cache[n][:, 0].transpose(-2, -1)).view_as(v)
            torch.testing.assert_close(m.proj(att * gate), y, rtol=0, atol=1e-4)
    h, w = got[names[0] + "<>"][0].shape[-2:]
    idx = [0, 7 * w + 2]
    torch.testing.assert_close(rows[names[0]], cache[names[0]][:, :, idx], rtol=0, atol=1e-5)
    with set_fused(iformer, True), pytest.raises(NotWritableError, match="fused_attn = False"):
        attnviz.intervene(iformer, {names[0]: "uniform"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "token" in {s.kind for s in attnviz.find_sites(iformer)}


@pytest.mark.parametrize("fused", [True, False])
def test_windowed_shma_places_each_window_on_the_image(fused):
    """SHMA(window_size=4) on a 6 x 10 map: padded to 8 x 12, six 4 x 4 windows."""
    torch.manual_seed(19)
    model = torch.nn.Sequential(SHMA(16, window_size=4)).eval()
    model[0].fused_attn = fused
    x = torch.randn(2, 16, 6, 10)
    with torch.no_grad(), attnviz.capture(model) as cache:
        model(x)
    meta = cache.meta["0"]
    assert cache["0"].shape == (2, 1, 60, 16) and meta["window"] == (4, 4)
    m = model[0]
    with torch.no_grad():  # by hand: each padded window's single-head softmax
        xp = F.pad(x, (0, 2, 0, 2))
        q, k = m.q(xp), m.k(xp)
        full = torch.zeros(2, 60, 60)
        for wy in range(2):
            for wx in range(3):
                sl = (
                    slice(None),
                    slice(None),
                    slice(4 * wy, 4 * wy + 4),
                    slice(4 * wx, 4 * wx + 4),
                )
                a = ((q[sl].flatten(2) * m.scale).transpose(-2, -1) @ k[sl].flatten(2)).softmax(-1)
                ys, xs = torch.meshgrid(
                    torch.arange(4) + 4 * wy, torch.arange(4) + 4 * wx, indexing="ij"
                )
                pos = (ys * 10 + xs).flatten()
                keep = ((ys < 6) & (xs < 10)).flatten()
                full[:, pos[keep][:, None], pos[keep][None, :]] = a[:, keep][:, :, keep]
    on_image = window_to_grid(cache["0"], meta["key_index"], (6, 10)).flatten(-2)
    torch.testing.assert_close(on_image[:, 0], full, rtol=0, atol=1e-5)
