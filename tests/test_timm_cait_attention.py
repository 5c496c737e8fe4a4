"""CaiT attention read exactly (issue 24): ``ClassAttn`` (the class token's one row, also in
XCiT) and ``TalkingHeadAttn`` (the weights after the post-softmax head mix, what multiplies v),
proven against timm's own weights (the input of ``attn_drop``) and by rebuilding each module's
output from the captured tensor."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm_testing import set_fused

import attnviz
from attnviz.capture import NotWritableError
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # 4 x 4 patches


@pytest.fixture(scope="module")
def cait():
    torch.manual_seed(6)
    kw = dict(img_size=32, patch_size=8, depth=2, depth_token_only=2, num_classes=3)
    model = timm.create_model("cait_xxs24_224", pretrained=False, **kw).eval()
    with torch.no_grad():  # head mixes far from identity (timm starts them small)
        for blk in model.blocks:
            blk.attn.proj_w.weight.normal_(0, 1.0)
            blk.attn.proj_w.bias.normal_(0, 0.1)
    return model


def _oracle(model, names):
    """Each attention's input, output and ``attn_drop`` input (timm's own weights)."""
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
    try:
        with torch.no_grad(), set_fused(model, False):
            model(X)
    finally:
        for h in handles:
            h.remove()
    return got


CLASS = ["blocks_token_only.0.attn", "blocks_token_only.1.attn"]
TALK = ["blocks.0.attn", "blocks.1.attn"]


@pytest.mark.parametrize("fused", [True, False])
def test_cait_class_attention_is_the_class_row_and_rebuilds_the_output(cait, fused):
    oracle = _oracle(cait, CLASS)
    with torch.no_grad(), set_fused(cait, fused):
        plain = cait(X)
        with attnviz.capture(cait, sites=CLASS) as cache:
            out = cait(X)
    assert torch.equal(out, plain)
    for name in CLASS:
        ref = oracle[name]
        assert ref.shape == (2, 4, 1, 17)  # one query: the class token; keys: class + 16
        att = cache[name]
        assert att.shape == (2, 4, 17)
        torch.testing.assert_close(att, ref[:, :, 0], rtol=0, atol=1e-6)
        meta = cache.meta[name]
        assert meta["prefix_tokens"] == 1 and meta["prefix_names"] == ["class"]
        assert meta["key_grid"] == (4, 4) and meta["path"] == ("fused" if fused else "softmax")
        mod = cait.get_submodule(name)
        x, y = oracle[name + "<>"]
        v = mod.v(x).view(2, 17, 4, -1).transpose(1, 2)  # (B, heads, N, d)
        rebuilt = mod.proj((att.unsqueeze(-2) @ v).transpose(1, 2).reshape(2, 1, -1))
        torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)


def test_cait_talking_heads_reads_what_multiplies_v(cait):
    oracle = _oracle(cait, TALK)
    cells = [(0, 0), (2, 3)]
    with torch.no_grad():
        plain = cait(X)
        with attnviz.capture(cait, sites=TALK) as cache:
            out = cait(X)
        with attnviz.capture(cait, sites=TALK, queries=cells) as rows:
            cait(X)
    assert torch.equal(out, plain)
    for name in TALK:
        ref = oracle[name]
        assert ref.shape == (2, 4, 16, 16)  # the self-attention stage holds patches only
        assert torch.equal(cache[name], ref)
        assert cache.meta[name]["prefix_tokens"] == 0 and cache.meta[name]["query_grid"] == (4, 4)
        assert (cache[name].sum(-1) - 1).abs().max() > 0.1  # mixed after the softmax
        torch.testing.assert_close(rows[name], ref[:, :, [0, 11]], rtol=0, atol=0)
        # by hand: logits -> proj_l -> softmax -> proj_w, and the output rebuilt from it
        mod = cait.get_submodule(name)
        x, y = oracle[name + "<>"]
        q, k, v = mod.qkv(x).view(2, 16, 3, 4, -1).permute(2, 0, 3, 1, 4)
        logits = (q * mod.scale) @ k.transpose(-2, -1)
        mixed = mod.proj_l(logits.permute(0, 2, 3, 1)).softmax(-2)  # softmax over keys
        expected = mod.proj_w(mixed).permute(0, 3, 1, 2)
        torch.testing.assert_close(cache[name], expected, rtol=0, atol=1e-5)
        rebuilt = mod.proj((cache[name] @ v).transpose(1, 2).reshape(2, 16, -1))
        torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)


def test_cait_writes_class_attention_and_talking_heads(cait):
    with set_fused(cait, True), pytest.raises(NotWritableError, match="fused_attn = False"):
        attnviz.intervene(cait, {CLASS[0]: "uniform"})
    names = [CLASS[0], TALK[1]]
    oracle = _oracle(cait, names)
    seen = {}
    hooks = [
        cait.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: seen.__setitem__(n, (i[0].clone(), o.clone()))
        )
        for n in names
    ]
    try:
        with torch.no_grad(), set_fused(cait, False):
            with attnviz.intervene(cait, {CLASS[0]: "uniform", TALK[1]: "constant:0.5"}):
                cait(X)
    finally:
        for h in hooks:
            h.remove()
    cls_mod, talk_mod = (cait.get_submodule(n) for n in names)
    x, y = seen[CLASS[0]]  # uniform: the class token reads the mean value vector
    v = cls_mod.v(x).view(2, 17, 4, -1)
    torch.testing.assert_close(y, cls_mod.proj(v.mean(1).reshape(2, 1, -1)), rtol=0, atol=1e-5)
    x, y = seen[TALK[1]]  # every weight 0.5: each token reads half the sum of the values
    v = talk_mod.qkv(x).view(2, 16, 3, -1)[:, :, 2]
    expected = talk_mod.proj(0.5 * v.sum(1, keepdim=True).expand(2, 16, -1))
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-4)
    assert not torch.allclose(oracle[TALK[1] + "<>"][1], y)


def test_xcit_class_attention_is_read_too():
    torch.manual_seed(7)
    kw = dict(img_size=32, depth=1, cls_attn_layers=1, num_classes=3)
    model = timm.create_model("xcit_nano_12_p8_224", pretrained=False, **kw).eval()
    name = "cls_attn_blocks.0.attn"
    oracle = _oracle(model, [name])
    with torch.no_grad(), set_fused(model, True), attnviz.capture(model, sites=name) as cache:
        model(X)
    assert cache[name].shape == (2, 4, 17)
    torch.testing.assert_close(cache[name], oracle[name][:, :, 0], rtol=0, atol=1e-6)
    assert cache.meta[name]["prefix_tokens"] == 1 and cache.meta[name]["key_grid"] == (4, 4)


def test_cait_sites_are_listed_without_unread_modules(cait):
    assert unread_modules(cait) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sites = attnviz.find_sites(cait)
    assert [s.kind for s in sites] == ["talking_heads"] * 2 + ["class_token"] * 2
