"""Hand computation shared by the CPUBone and LowFormer conv-attention tests (the two
``ConvAttention`` classes run the same attention on the map reduced by ``conv_proj``)."""

from __future__ import annotations

import torch
from timm_testing import set_fused

import attnviz


def sites(model) -> dict:
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "ConvAttention"}


def by_hand(model, x) -> dict:
    """{site: (module input, weights (B, heads, h * w, h * w), v, (h, w))}: softmax(q k^T * d^-1/2)
    from the module's own ``pwise`` output (the q, k, v projection of the reduced map)."""
    seen, hooks = {}, []
    for n, m in sites(model).items():
        hooks.append(m.register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n, [i[0]])))
        hooks.append(m.pwise.register_forward_hook(lambda m, i, o, n=n: seen[n].append(o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, m in sites(model).items():
        inp, proj = seen[n]
        b, _, h, w = proj.shape
        qkv = proj.reshape(b, m.num_heads, 3 * m.head_dim, h * w).permute(0, 1, 3, 2)
        q, k, v = qkv.chunk(3, dim=3)
        weights = (q @ k.transpose(-2, -1) * m.head_dim**-0.5).softmax(-1)
        out[n] = (inp, weights, v, (h, w))
    return out


def check_reads(model, x, fused: bool) -> dict:
    """Capture (all rows and two query cells) and compare with :func:`by_hand`; returns the
    reduced grids by site."""
    expected = by_hand(model, x)
    assert expected
    with torch.no_grad(), set_fused(model, fused):
        plain = model(x)
        with attnviz.capture(model, kinds="token") as cache:
            out = model(x)
        with attnviz.capture(model, kinds="token", queries=[(0, 0), (2, 4)]) as rows:
            model(x)
    assert torch.equal(out, plain)
    grids = {}
    for n, (_, weights, _, (h, w)) in expected.items():
        meta = cache.meta[n]
        assert meta["query_grid"] == (h, w) == meta["key_grid"] and meta["prefix_tokens"] == 0
        assert meta["path"] == ("fused" if fused else "softmax")
        atol = 1e-5 if fused else 1e-6
        torch.testing.assert_close(cache[n], weights, rtol=0, atol=atol)
        torch.testing.assert_close(rows[n], weights[:, :, [0, 2 * w + 4]], rtol=0, atol=atol)
        torch.testing.assert_close(cache[n].sum(-1), torch.ones(weights.shape[:-1]))
        grids[n] = (h, w)
    return grids


def check_uniform_write(model, x, name: str) -> None:
    """Uniform weights: every reduced position gets the mean of v per head, then the module's
    own output projection and upsampling, cropped to the input size."""
    mod = model.get_submodule(name)
    expected = by_hand(model, x)
    inp, _, v, (h, w) = expected[name]
    seen = {}
    hook = mod.register_forward_hook(lambda m, i, o: seen.update(y=o.clone()))
    try:
        with torch.no_grad(), set_fused(model, False):
            plain = model(x)
            with attnviz.intervene(model, {name: "uniform"}):
                changed = model(x)
    finally:
        hook.remove()
    b = v.shape[0]
    values = v.mean(2, keepdim=True).expand_as(v)  # (B, heads, h * w, d)
    with torch.no_grad():
        o = mod.o_proj(values.permute(0, 1, 3, 2).reshape(b, mod.o_proj_inpdim, h, w))
        y = mod.upsampling(o)[..., : inp.shape[-2], : inp.shape[-1]]
    torch.testing.assert_close(seen["y"], y, rtol=0, atol=1e-5)
    assert not torch.allclose(changed, plain)
