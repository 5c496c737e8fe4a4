"""MViTv2 pooling attention read exactly (issue 24): ``MultiScaleAttention`` (kind ``token``,
pooled queries and keys on their own grids, decomposed relative-position bias, class token),
checked against a hand computation of MViTv2 eq. 1-4 from the module's input, its output
rebuilt from the captured weights, on a non-square input, rows and writing."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models.mvitv2 import MultiScaleVit, MultiScaleVitCfg

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # 16 x 24 patches
XC = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(31)
    return timm.create_model("mvitv2_tiny", pretrained=False, img_size=96, num_classes=3).eval()


@pytest.fixture(scope="module")
def with_cls():
    torch.manual_seed(32)
    cfg = MultiScaleVitCfg(depths=(1, 1, 1, 1), use_cls_token=True)
    return MultiScaleVit(cfg=cfg, img_size=64, num_classes=3).eval()


def _pool(m, t, pool, norm, grid):
    """Pool the patch tokens of (B, heads, N, d) on ``grid``; the class token passes."""
    b, h, _, d = t.shape
    cls_tok, t = (t[:, :, :1], t[:, :, 1:]) if m.has_cls_token else (None, t)
    size = grid
    if pool is not None:
        t = pool(t.reshape(b * h, *grid, d).permute(0, 3, 1, 2))
        size = tuple(t.shape[-2:])
        t = t.flatten(2).transpose(1, 2).reshape(b, h, -1, d)
    if cls_tok is not None:
        t = torch.cat([cls_tok, t], dim=2)
    return (norm(t) if norm is not None else t), size


def _qkv(m, x, grid):
    b, n, _ = x.shape
    q, k, v = m.qkv(x).reshape(b, n, 3, m.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, qg = _pool(m, q, m.pool_q, m.norm_q, grid)
    k, kg = _pool(m, k, m.pool_k, m.norm_k, grid)
    v, _ = _pool(m, v, m.pool_v, m.norm_v, grid)
    return q, k, v, qg, kg


def _hand(m, x, grid):
    """softmax(q k^T / sqrt(d) + E_rel): MViTv2 eq. 4, E_rel(i, j) = q_i . (R_h[dh] + R_w[dw])
    between patch tokens, dh = i_h * max(kh / qh, 1) - j_h * max(qh / kh, 1) + (kh - 1) *
    max(qh / kh, 1) (the same along w)."""
    q, k, _, qg, kg = _qkv(m, x, grid)
    logits = (q * m.scale) @ k.transpose(-2, -1)
    p = int(m.has_cls_token)
    offsets = []
    for a in range(2):
        qr, kr = max(kg[a] / qg[a], 1.0), max(qg[a] / kg[a], 1.0)
        offsets.append(
            [[int(i * qr - j * kr + (kg[a] - 1) * kr) for j in range(kg[a])] for i in range(qg[a])]
        )
    rh, rw = m.rel_pos_h[torch.tensor(offsets[0])], m.rel_pos_w[torch.tensor(offsets[1])]
    qp = q[:, :, p:].reshape(*q.shape[:2], *qg, -1)
    bias = (
        torch.einsum("bnyxc,ykc->bnyxk", qp, rh)[..., None]
        + torch.einsum("bnyxc,xlc->bnyxl", qp, rw)[..., None, :]
    )
    logits = logits.clone()
    logits[:, :, p:, p:] += bias.reshape(*q.shape[:2], qg[0] * qg[1], kg[0] * kg[1])
    return logits.softmax(-1), qg, kg


def _record(model, x):
    names = [n for n, m in model.named_modules() if type(m).__name__ == "MultiScaleAttention"]
    seen, hooks = {}, []
    for n in names:
        hooks.append(
            model.get_submodule(n).register_forward_hook(
                lambda m, i, o, n=n: seen.__setitem__(n, (i[0], tuple(i[1]), o[0]))
            )
        )
    try:
        with torch.no_grad():
            with attnviz.capture(model, sites=names) as cache:
                out = model(x)
    finally:
        for h in hooks:
            h.remove()
    return names, cache, seen, out


@pytest.mark.parametrize("which", ["tiny", "with_cls"])
def test_mvitv2_weights_equal_hand_computation_and_rebuild_the_output(which, request):
    model = request.getfixturevalue(which)
    x = X if which == "tiny" else XC
    assert unread_modules(model) == {}
    with torch.no_grad():
        plain = model(x)
    names, cache, seen, out = _record(model, x)
    assert torch.equal(out, plain)
    grids = set()
    for n in names:
        m = model.get_submodule(n)
        xin, grid, y = seen[n]
        with torch.no_grad():
            ref, qg, kg = _hand(m, xin, grid)
            _, _, v, _, _ = _qkv(m, xin, grid)
            q = _qkv(m, xin, grid)[0]
            rebuilt = cache[n] @ v + q  # residual pooling
            rebuilt = m.proj(rebuilt.transpose(1, 2).reshape(xin.shape[0], -1, m.dim_out))
        meta = cache.meta[n]
        p = int(which == "with_cls")
        assert meta["query_grid"] == qg and meta["key_grid"] == kg and meta["prefix_tokens"] == p
        assert cache[n].shape == (2, m.num_heads, p + qg[0] * qg[1], p + kg[0] * kg[1])
        torch.testing.assert_close(cache[n], ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)
        torch.testing.assert_close(cache[n].sum(-1), torch.ones(cache[n].shape[:-1]))
        grids.add((qg, kg))
    if which == "tiny":  # non-square, queries and keys pooled differently
        assert ((16, 24), (4, 6)) in grids and ((8, 12), (4, 6)) in grids
        assert ((4, 6), (4, 6)) in grids


def test_mvitv2_queries_keep_rows_of_the_full_map(with_cls):
    name = "stages.1.blocks.0.attn"
    cells = [(0, 0), (3, 1), (7, 6)]
    with torch.no_grad():
        with attnviz.capture(with_cls, sites=name) as full:
            with_cls(XC)
        with attnviz.capture(with_cls, sites=name, queries=cells) as rows:
            with_cls(XC)
    qg = full.meta[name]["query_grid"]
    assert qg == (8, 8) and rows.meta[name]["queries"] == cells
    idx = [1 + y * qg[1] + x for y, x in cells]  # the class token is row 0
    torch.testing.assert_close(rows[name], full[name][:, :, idx], rtol=0, atol=0)


def test_mvitv2_uniform_writes_the_mean_pooled_value(tiny):
    name = "stages.1.blocks.0.attn"
    m = tiny.get_submodule(name)
    seen = {}
    hook = m.register_forward_hook(lambda mod, i, o: seen.update(x=i[0], grid=tuple(i[1]), y=o[0]))
    try:
        with torch.no_grad(), attnviz.intervene(tiny, {name: "uniform"}):
            tiny(X)
    finally:
        hook.remove()
    with torch.no_grad():  # every query reads the mean of the pooled values, plus its own q
        q, _, v, _, _ = _qkv(m, seen["x"], seen["grid"])
        mixed = v.mean(-2, keepdim=True) + q
        expected = m.proj(mixed.transpose(1, 2).reshape(2, -1, m.dim_out))
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
