"""EfficientViT (MSRA) cascaded group attention read exactly (issue 24): one softmax per head
inside padded ws x ws windows, read at ``LocalWindowAttention`` on a non-square input, proven
against a hand computation from each head's own q (after its depthwise conv) and k with the
learned bias, position by position."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(0))  # maps 10x14, 5x7, 3x4


def _model():
    torch.manual_seed(7)
    model = timm.create_model("efficientvit_m0", pretrained=False, num_classes=3).eval()
    with torch.no_grad():  # a bias that matters (timm starts it at zero)
        for n, p in model.named_parameters():
            if n.endswith("attention_biases"):
                p.normal_(0, 1.0)
    return model


def _sites(model) -> dict:
    return {n: m for n, m in model.named_modules() if type(m).__name__ == "LocalWindowAttention"}


def _by_hand(model) -> dict:
    """{site: (input (B, C, H, W), [per head (B * windows, K, K)])}: softmax(q^T k * scale + B_j)
    from the outputs of each head's ``qkvs[j]`` (k) and ``dws[j]`` (q)."""
    seen, hooks = {}, []
    for n, m in _sites(model).items():
        hooks.append(m.register_forward_pre_hook(lambda m, i, n=n: seen.__setitem__(n, [i[0]])))
        for j in range(len(m.attn.qkvs)):
            for part, mod in (("kv", m.attn.qkvs[j]), ("q", m.attn.dws[j])):
                hooks.append(
                    mod.register_forward_hook(
                        lambda m, i, o, n=n, key=(part, j): seen[n].append((key, o.clone()))
                    )
                )
    try:
        with torch.no_grad():
            model(X)
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, m in _sites(model).items():
        att, x, parts = m.attn, seen[n][0], dict(seen[n][1:])
        bias = att.attention_biases[:, att.attention_bias_idxs]
        per_head = []
        for j in range(len(att.qkvs)):
            k = parts[("kv", j)][:, att.key_dim : 2 * att.key_dim].flatten(2)
            q = parts[("q", j)].flatten(2) * att.scale
            per_head.append((q.transpose(-2, -1) @ k + bias[j]).softmax(-1))
        out[n] = (x, per_head)
    return out


def test_cascaded_group_attention_equals_a_hand_computation():
    model = _model()
    assert unread_modules(model) == {}
    expected = _by_hand(model)
    with torch.no_grad():
        plain = model(X)
        with attnviz.capture(model, kinds="window") as cache:
            out = model(X)
        with attnviz.capture(model, kinds="window", queries=[(0, 0), (2, 3), (1, 2)]) as rows:
            model(X)
    assert torch.equal(out, plain)
    assert set(cache.keys()) == set(expected) and len(expected) == 6
    grids = set()
    for n, (x, per_head) in expected.items():
        att, meta = cache[n], cache.meta[n]
        b, _, h, w = x.shape
        ws = meta["window"][0]
        n_w = -(-w // ws)
        n_win = -(-h // ws) * n_w
        grids.add((h, w, ws))
        assert meta["query_grid"] == (h, w) and att.shape == (b, len(per_head), h * w, ws * ws)
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]))
        for y in range(h):
            for xx in range(w):
                window, slot = (y // ws) * n_w + xx // ws, (y % ws) * ws + xx % ws
                for bi in range(b):
                    ref = torch.stack([p[bi * n_win + window, slot] for p in per_head])
                    torch.testing.assert_close(att[bi, :, y * w + xx], ref, rtol=0, atol=1e-6)
                ky = (y // ws) * ws + torch.arange(ws * ws) // ws
                kx = (xx // ws) * ws + torch.arange(ws * ws) % ws
                want = torch.where((ky < h) & (kx < w), ky * w + kx, -1)
                assert torch.equal(meta["key_index"][y * w + xx], want)
        idx = [0, 2 * w + 3, 1 * w + 2]
        assert torch.equal(rows[n], att[:, :, idx])
    # padded windows on every stage: 10x14 and 5x7 in 7x7 windows, 3x4 in a 4x4 window
    assert grids == {(10, 14, 7), (5, 7, 7), (3, 4, 4)}
    # the bias is in what is read: without it the weights differ
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("attention_biases"):
                p.zero_()
        for m in _sites(model).values():
            m.attn.attention_bias_cache = {}
        with attnviz.capture(model, kinds="window") as no_bias:
            model(X)
    assert max((no_bias[n] - cache[n]).abs().max() for n in expected) > 1e-2


def test_cascaded_group_attention_is_not_written():
    model = _model()
    with pytest.raises(Exception, match="cascaded"):
        with attnviz.intervene(model, {"stages.0.blocks.0.mixer.m": "uniform"}):
            model(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"window", "se"}
