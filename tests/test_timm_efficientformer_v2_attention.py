"""EfficientFormerV2 attention read exactly (issue 24): ``Attention2d`` (talking heads: the
weights after the post-softmax head mix, kind ``talking_heads``) and ``Attention2dDownsample``
(queries on the halved map, kind ``token``), proven by a hand computation with the attention
bias, the module output rebuilt from the capture, rows and writing."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def effv2():
    torch.manual_seed(26)
    model = timm.create_model("efficientformerv2_s0", pretrained=False, num_classes=3)
    with torch.no_grad():  # biases that matter; set before the first eval forward (cached)
        for m in model.modules():
            if hasattr(m, "attention_biases"):
                m.attention_biases.normal_(0, 1.0)
    return model.eval()


def _by_hand(m, x):
    """(weights, v (B, heads, Nk, d), v_local) from the module's own projections."""
    b = x.shape[0]
    if getattr(m, "stride_conv", None) is not None:
        x = m.stride_conv(x)
    nq = m.N2 if hasattr(m, "N2") else m.N
    q = m.q(x).reshape(b, m.num_heads, -1, nq).transpose(-2, -1)
    k = m.k(x).reshape(b, m.num_heads, -1, m.N)
    v = m.v(x)
    v_local = m.v_local(v)
    v = v.reshape(b, m.num_heads, -1, m.N).transpose(-2, -1)
    logits = (q @ k) * m.scale + m.attention_biases[:, m.attention_bias_idxs]
    if hasattr(m, "talking_head1"):  # mix heads, softmax, mix heads again
        return m.talking_head2(m.talking_head1(logits).softmax(-1)), v, v_local
    return logits.softmax(-1), v, v_local


def test_efficientformer_v2_attention_by_hand_rebuilt_and_written(effv2):
    assert unread_modules(effv2) == {}
    kinds = ("Attention2d", "Attention2dDownsample")
    mods = {n: m for n, m in effv2.named_modules() if type(m).__name__ in kinds}
    assert {type(m).__name__ for m in mods.values()} == set(kinds)
    seen, hooks = {}, []
    for n, m in mods.items():
        hooks.append(
            m.register_forward_hook(lambda m, i, o, n=n: seen.setdefault(n, []).append((i[0], o)))
        )
    talk = next(n for n, m in mods.items() if type(m).__name__ == "Attention2d")
    down = next(n for n, m in mods.items() if type(m).__name__ == "Attention2dDownsample")
    try:
        with torch.no_grad():
            plain = effv2(X)
            with attnviz.capture(effv2) as cache:
                out = effv2(X)
            with attnviz.capture(effv2, sites=[talk, down], queries=[(0, 0), (3, 5)]) as rows:
                effv2(X)
            with attnviz.intervene(effv2, {down: "uniform", talk: "constant:0.5"}):
                effv2(X)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, plain)
    assert cache.meta[down]["query_grid"] == (7, 7) and cache.meta[down]["key_grid"] == (14, 14)
    assert (cache[talk].sum(-1) - 1).abs().max() > 0.1  # mixed after the softmax
    with torch.no_grad():
        for n, m in mods.items():
            x, y = seen[n][0]
            weights, v, v_local = _by_hand(m, x)
            torch.testing.assert_close(cache[n], weights, rtol=0, atol=1e-5)
            grid = cache.meta[n]["query_grid"]
            attended = (cache[n] @ v).transpose(2, 3).reshape(x.shape[0], -1, *grid) + v_local
            if getattr(m, "upsample", None) is not None:
                attended = m.upsample(attended)
            torch.testing.assert_close(m.proj(m.act(attended)), y, rtol=0, atol=1e-4)
            if n in (talk, down):
                torch.testing.assert_close(rows[n], cache[n][:, :, [0, 26]], rtol=0, atol=0)
        m = mods[talk]  # every weight 0.5: each query reads half the sum of the values
        x, y = seen[talk][3]
        _, v, v_local = _by_hand(m, x)
        half = 0.5 * v.sum(2, keepdim=True).expand(-1, -1, m.N, -1)
        attended = half.transpose(2, 3).reshape(x.shape[0], -1, *m.resolution) + v_local
        if m.upsample is not None:
            attended = m.upsample(attended)
        torch.testing.assert_close(y, m.proj(m.act(attended)), rtol=0, atol=1e-3)
        m = mods[down]  # uniform: each query reads the mean value vector (+ the local branch)
        x, y = seen[down][3]
        _, v, v_local = _by_hand(m, x)
        mean = v.mean(2, keepdim=True).expand(-1, -1, m.N2, -1)
        expected = m.proj(m.act(mean.transpose(2, 3).reshape(x.shape[0], -1, 7, 7) + v_local))
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(effv2)} == {"talking_heads", "token"}
