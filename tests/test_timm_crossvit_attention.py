"""CrossViT cross-attention read exactly (issue 24): ``CrossAttention`` (one branch's class token
queries the other branch's class token and patches; kind ``class_token``), proven against timm's
own weights (the input of ``attn_drop``) and by rebuilding the module's output; writing works."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch

import attnviz
from attnviz.capture.core import unread_modules

X = torch.randn(2, 3, 240, 240, generator=torch.Generator().manual_seed(0))


def test_crossvit_cross_attention_equals_timm_weights_rebuilt_and_written():
    torch.manual_seed(21)
    model = timm.create_model("crossvit_tiny_240", pretrained=False, num_classes=3).eval()
    assert unread_modules(model) == {}
    names = [n for n, m in model.named_modules() if type(m).__name__ == "CrossAttention"]
    assert len(names) == 6
    got, hooks = {}, []
    for n in names:
        m = model.get_submodule(n)
        hooks.append(
            m.attn_drop.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, i[0]))
        )
        hooks.append(
            m.register_forward_hook(
                lambda m, i, o, n=n: got.setdefault(n + "<>", []).append((i[0], o.clone()))
            )
        )
    first = names[0]
    try:
        with torch.no_grad():
            plain = model(X)
            with attnviz.capture(model, sites=names) as cache:
                out = model(X)
            with attnviz.intervene(model, {first: "uniform"}):
                model(X)
    finally:
        for h in hooks:
            h.remove()
    assert torch.equal(out, plain)
    grids = {names[0]: (14, 14), names[1]: (20, 20)}  # branch 0's class token reads branch 1
    with torch.no_grad():
        for n in names:
            ref = got[n]  # (B, heads, 1, N) after the last forward; recompute from the first
            m = model.get_submodule(n)
            x, y = got[n + "<>"][0]
            b, t, c = x.shape
            q = m.wq(x[:, :1]).view(b, 1, m.num_heads, -1).transpose(1, 2)
            k = m.wk(x).view(b, t, m.num_heads, -1).transpose(1, 2)
            v = m.wv(x).view(b, t, m.num_heads, -1).transpose(1, 2)
            expected = ((q @ k.transpose(-2, -1)) * m.scale).softmax(-1)[:, :, 0]
            assert cache[n].shape == (b, m.num_heads, t) == ref[:, :, 0].shape
            torch.testing.assert_close(cache[n], expected, rtol=0, atol=1e-6)
            meta = cache.meta[n]
            assert meta["prefix_tokens"] == 1 and meta["key_grid"][0] ** 2 == t - 1
            if n in grids:
                assert meta["key_grid"] == grids[n]
            rebuilt = m.proj((cache[n][:, :, None] @ v).transpose(1, 2).reshape(b, 1, c))
            torch.testing.assert_close(rebuilt, y, rtol=0, atol=1e-5)
        m = model.get_submodule(first)  # uniform: the class token reads the mean value vector
        x, y = got[first + "<>"][-1]
        torch.testing.assert_close(y, m.proj(m.wv(x).mean(1, keepdim=True)), rtol=0, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "class_token" in {s.kind for s in attnviz.find_sites(model)}


@pytest.mark.parametrize("size", [(240, 240), (240, 120)], ids=["square", "non_square"])
def test_crossvit_branch_attention_has_its_class_token_and_patch_grid(size):
    """Each branch's ViT self-attention (``blocks.i.blocks.d.j.attn``) reads its own class token
    and the patch grid of its own ``patch_embed[d]`` (12-px patches of the image, 16-px patches
    of the image scaled by 224 / 240); the cross-attention of ``fusion[i]`` reads branch i + 1's
    patch grid. Checked against the token counts the patch embeddings make."""
    torch.manual_seed(22)
    model = timm.create_model(
        "crossvit_tiny_240", pretrained=False, num_classes=3, img_size=size
    ).eval()
    tokens, hooks = {}, []
    for d, embed in enumerate(model.patch_embed):
        hooks.append(embed.register_forward_hook(lambda m, i, o, d=d: tokens.__setitem__(d, o)))
    branch = {  # site -> the branch whose tokens it attends over
        n: int(n.split(".")[3]) if type(m).__name__ == "Attention" else 1 - int(n.split(".")[3])
        for n, m in model.named_modules()
        if type(m).__name__ in ("Attention", "CrossAttention") and n.startswith("blocks.")
    }
    selfs = [n for n in branch if ".fusion." not in n]
    assert {branch[n] for n in selfs} == {0, 1} and len(branch) > len(selfs)
    cell = (2, 5)
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            with attnviz.capture(model, sites=list(branch)) as cache:
                model(x)
            with attnviz.capture(model, sites=selfs, queries=[cell]) as picked:
                model(x)
    finally:
        for h in hooks:
            h.remove()
    grids = {}
    for d, embed in enumerate(model.patch_embed):
        side = tuple(s // p for s, p in zip(embed.img_size, embed.patch_size))
        assert side[0] * side[1] == tokens[d].shape[1]  # what the branch's patch_embed made
        grids[d] = side
    assert grids[0] != grids[1] and (grids[0][0] == grids[0][1]) == (size[0] == size[1])
    for name, d in branch.items():
        meta = cache.meta[name]
        assert meta["prefix_tokens"] == 1 and meta["key_grid"] == grids[d]
        n = 1 + grids[d][0] * grids[d][1]
        assert cache[name].shape[-1] == n
        if name not in selfs:
            continue
        assert meta["prefix_names"] == ["class"] and meta["query_grid"] == grids[d]
        assert cache[name].shape[-2] == n
        row = 1 + cell[0] * grids[d][1] + cell[1]  # the class token first, then raster order
        torch.testing.assert_close(picked[name][:, :, 0], cache[name][:, :, row], rtol=0, atol=1e-6)
