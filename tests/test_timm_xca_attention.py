"""Cross-covariance (channel-by-channel) attention read exactly (issue 24): XCiT's ``XCA`` and
EdgeNeXt's ``CrossCovarianceAttn``, kind ``xca`` (B, heads, d, d), proven against timm's own
weights (the input of ``attn_drop``), a hand computation, and the module output rebuilt."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from timm_testing import module_io

import attnviz
from attnviz.capture import NotWritableError
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
XCA_TYPES = ("XCA", "CrossCovarianceAttn")


def _models():
    torch.manual_seed(8)
    xcit = timm.create_model(
        "xcit_nano_12_p8_224", pretrained=False, img_size=32, depth=2, num_classes=3
    ).eval()
    edge = timm.create_model("edgenext_xx_small", pretrained=False, num_classes=3).eval()
    for model in (xcit, edge):
        with torch.no_grad():  # temperatures that differ per head (timm starts them at 1)
            for m in model.modules():
                if type(m).__name__ in XCA_TYPES:
                    m.temperature.copy_(torch.rand_like(m.temperature) * 3 + 0.5)
    return {"xcit": xcit, "edgenext": edge}


def _oracle(model):
    names = [n for n, m in model.named_modules() if type(m).__name__ in XCA_TYPES]
    got, handles = {}, []
    for name in names:
        mod = model.get_submodule(name)
        handles.append(
            mod.attn_drop.register_forward_hook(
                lambda m, i, o, name=name: got.__setitem__(name, i[0].clone())
            )
        )
        handles.append(
            mod.register_forward_hook(
                lambda m, i, o, name=name: got.__setitem__(name + "<>", (i[0], o.clone()))
            )
        )
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    try:
        for m in fused:
            m.fused_attn = False
        with torch.no_grad():
            model(X)
    finally:
        for h in handles:
            h.remove()
        for m, f in fused.items():
            m.fused_attn = f
    return names, got


@pytest.mark.parametrize("family", ["xcit", "edgenext"])
def test_xca_equals_timm_weights_by_hand_and_rebuilds_the_output(family):
    model = _models()[family]
    assert unread_modules(model) == {}
    names, oracle = _oracle(model)
    assert len(names) >= 2
    paths = (True, False) if family == "xcit" else (False,)  # only XCiT has a fused path
    for fused in paths:
        for m in model.modules():
            if type(m).__name__ == "XCA":
                m.fused_attn = fused
        with torch.no_grad():
            plain = model(X)
            with attnviz.capture(model, sites=names) as cache:
                out = model(X)
        assert torch.equal(out, plain)
        for name in names:
            mod = model.get_submodule(name)
            heads = mod.num_heads
            x, y = oracle[name + "<>"]
            b, n, c = x.shape
            assert cache[name].shape == (b, heads, c // heads, c // heads)
            assert cache.meta[name]["head_channels"] == c // heads
            assert cache.meta[name]["tokens"] == n
            torch.testing.assert_close(cache[name], oracle[name], rtol=0, atol=1e-5)
            # by hand: channels of q and k normalised over the tokens, times the temperature
            q, k, v = mod.qkv(x).view(b, n, 3, heads, -1).permute(2, 0, 3, 4, 1)
            qk = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            torch.testing.assert_close(
                cache[name], (qk * mod.temperature).softmax(-1), rtol=0, atol=1e-5
            )
            rebuilt = mod.proj((cache[name] @ v).permute(0, 3, 1, 2).reshape(b, n, c))
            torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-4)


def test_xca_writes_on_the_softmax_path_only():
    model = _models()["xcit"]
    name = "blocks.0.attn"
    mod = model.get_submodule(name)
    mod.fused_attn = True
    with pytest.raises(NotWritableError, match="fused_attn = False"):
        attnviz.intervene(model, {name: "uniform"})
    mod.fused_attn = False
    with module_io(mod) as seen:
        with torch.no_grad(), attnviz.intervene(model, {name: "uniform"}):
            model(X)
    x = seen["x"]  # uniform over source channels: each channel of a head is the heads' mean
    b, n, c = x.shape
    v = mod.qkv(x).view(b, n, 3, mod.num_heads, -1)[:, :, 2]  # (B, N, heads, d)
    mixed = v.mean(-1, keepdim=True).expand_as(v).reshape(b, n, c)
    torch.testing.assert_close(seen["y"], mod.proj(mixed), rtol=0, atol=1e-5)


def test_xca_sites_are_listed_without_unread_modules():
    for model in _models().values():
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            sites = attnviz.find_sites(model)
        assert "xca" in {s.kind for s in sites}
