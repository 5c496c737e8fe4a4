"""SHViT single-head attention read exactly (issue 24): ``SHSA`` (kind ``token``, one head over
the H x W positions of part of the channels), proven by a hand computation and the module's
output rebuilt from the capture; writing replaces its softmax."""

from __future__ import annotations

import warnings

import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))  # maps 8, 4, 2


def test_shvit_single_head_attention_by_hand_rebuilt_and_written():
    torch.manual_seed(17)
    model = timm.create_model("shvit_s1", pretrained=False, num_classes=3).eval()
    assert unread_modules(model) == {}
    names = [n for n, m in model.named_modules() if type(m).__name__ == "SHSA"]
    assert len(names) >= 3
    seen, hooks = {}, []
    for n in names:
        hooks.append(
            model.get_submodule(n).register_forward_hook(
                lambda m, i, o, n=n: seen.setdefault(n, []).append((i[0], o.clone()))
            )
        )
    first = names[0]
    try:
        with torch.no_grad():
            plain = model(X)
            with attnviz.capture(model) as cache:
                out = model(X)
            with attnviz.capture(model, sites=first, queries=[(0, 0), (1, 3)]) as rows:
                model(X)
            with attnviz.intervene(model, {first: "uniform"}):
                model(X)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, plain)
    with torch.no_grad():
        for n in names:
            m = model.get_submodule(n)
            x, y = seen[n][0]
            b, _, h, w = x.shape
            x1, x2 = torch.split(x, [m.pdim, m.dim - m.pdim], dim=1)
            q, k, v = torch.split(m.qkv(m.pre_norm(x1)), [m.qk_dim, m.qk_dim, m.pdim], dim=1)
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
            expected = ((q.transpose(-2, -1) @ k) * m.scale).softmax(-1)  # (B, N, N)
            assert cache[n].shape == (b, 1, h * w, h * w)
            assert cache.meta[n]["query_grid"] == (h, w) and cache.meta[n]["prefix_tokens"] == 0
            torch.testing.assert_close(cache[n][:, 0], expected, rtol=0, atol=1e-5)
            attended = (v @ cache[n][:, 0].transpose(-2, -1)).reshape(b, m.pdim, h, w)
            torch.testing.assert_close(m.proj(torch.cat([attended, x2], 1)), y, rtol=0, atol=1e-5)
        w0 = cache.meta[first]["query_grid"][1]
        torch.testing.assert_close(rows[first], cache[first][:, :, [0, w0 + 3]], rtol=0, atol=0)
        m = model.get_submodule(first)  # written uniform: each position reads the mean value
        x, y = seen[first][3]
        x1, x2 = torch.split(x, [m.pdim, m.dim - m.pdim], dim=1)
        v = m.qkv(m.pre_norm(x1))[:, 2 * m.qk_dim :]
        mean = v.mean((2, 3), keepdim=True).expand_as(v)
        torch.testing.assert_close(y, m.proj(torch.cat([mean, x2], 1)), rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "token" in {s.kind for s in attnviz.find_sites(model)}
