"""Gemma 4 ViT attention read exactly (issue 24): RMS-normed q/k with 2-D RoPE and scale 1,
fused and not, on non-square patch grids read back from the module's own RoPE tables (4 x 6
and 6 x 4), and on a NaFlex input with padding (the -inf key mask included, one-row grid);
proven against timm's own weights (the input of ``attn_drop``) with the output unchanged, and
written (uniform weights) against a hand computation."""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm_testing import module_io, set_fused

import attnviz
from attnviz.capture.core import unread_modules

X = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))  # 4 x 6 patches of 16
SMALL = dict(depth=2, embed_dim=64, num_heads=4, head_dim=16, intermediate_size=128)


def _model():
    torch.manual_seed(23)
    model = timm.create_model("gemma4_vit_167m", pretrained=False, num_classes=3, **SMALL)
    return model.eval()


def _oracle(model, x) -> dict:
    """timm's own non-fused weights: the input of each ``attn_drop``."""
    got, hooks = {}, []
    for n, m in model.named_modules():
        if type(m).__name__ == "Gemma4Attention":
            hooks.append(
                m.attn_drop.register_forward_hook(
                    lambda m, i, o, n=n: got.__setitem__(n, i[0].clone())
                )
            )
    try:
        with torch.no_grad(), set_fused(model, False):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return got


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("size", [(64, 96), (96, 64)])
def test_gemma4_attention_equals_timm_weights(fused, size):
    model = _model()
    assert unread_modules(model) == {}
    x = torch.nn.functional.interpolate(X, size=size)
    grid = (size[0] // 16, size[1] // 16)
    oracle = _oracle(model, x)
    assert len(oracle) == 2
    with torch.no_grad(), set_fused(model, fused):
        plain = model(x)
        with attnviz.capture(model) as cache:
            out = model(x)
        with attnviz.capture(model, queries=[(0, 0), (3, 1), (2, 3)]) as rows:
            model(x)
    assert torch.equal(out, plain)
    atol = 1e-5 if fused else 0.0
    for n, ref in oracle.items():
        assert ref.shape == (2, 4, 24, 24)
        torch.testing.assert_close(cache[n], ref, rtol=0, atol=atol)
        idx = [0, 3 * grid[1] + 1, 2 * grid[1] + 3]
        torch.testing.assert_close(rows[n], ref[:, :, idx], rtol=0, atol=atol)
        torch.testing.assert_close(cache[n].sum(-1), torch.ones(2, 4, 24))
        meta = cache.meta[n]
        assert meta["query_grid"] == grid == meta["key_grid"] and meta["prefix_tokens"] == 0
        assert meta["path"] == ("fused" if fused else "softmax")
    assert max(float(r.max()) for r in oracle.values()) > 0.3  # rows far from uniform
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert {s.kind for s in attnviz.find_sites(model)} == {"token"}


def test_rope_positions_read_back_the_patch_coordinates():
    model = _model()
    attnviz.find_sites(model)  # the adapters load through the registry (never import one first)
    from attnviz.capture.adapters.timm_gemma4_vit import rope_positions

    enc = model.encoder
    coord = torch.stack(torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij"), -1)
    coord = coord.reshape(1, -1, 2)[
        :, torch.randperm(35, generator=torch.Generator().manual_seed(3))
    ]
    cos, sin = enc.rotary_emb(torch.zeros(1, 35, 64), coord.flip(-1))  # internal (x, y) order
    assert torch.equal(rope_positions(cos[0], sin[0], enc.rotary_emb.rope_theta), coord[0])
    assert rope_positions(cos[0], sin[0], 10.0) is None  # another base does not decode


def test_gemma4_naflex_padding_mask_is_read():
    """Pre-patchified NaFlex input, the last 5 of 24 tokens padding: the -inf mask is in the
    weights (padding keys get 0) and the tokens are no full raster grid (one row)."""
    model = _model()
    patches = torch.rand(2, 24, 16 * 16 * 3, generator=torch.Generator().manual_seed(4))
    coord = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(6), indexing="ij"), -1)
    coord = coord.reshape(1, 24, 2).repeat(2, 1, 1)
    valid = torch.ones(2, 24, dtype=torch.bool)
    valid[:, 19:] = False
    coord[~valid] = -1
    x = {"patches": patches, "patch_coord": coord, "patch_valid": valid}
    oracle = _oracle(model, x)
    for fused in (True, False):
        with torch.no_grad(), set_fused(model, fused), attnviz.capture(model) as cache:
            model(x)
        for n, ref in oracle.items():
            torch.testing.assert_close(cache[n], ref, rtol=0, atol=1e-5 if fused else 0.0)
            assert cache[n][..., 19:].abs().max() == 0
            assert cache.meta[n]["query_grid"] == (1, 24)


def test_gemma4_attention_writes_its_softmax():
    """Uniform weights: every token gets the mean over tokens of the (RMS-normed) values."""
    model = _model()
    name = "encoder.blocks.1.attn"
    mod = model.get_submodule(name)
    with module_io(mod) as seen:
        with torch.no_grad(), set_fused(model, False):
            model(X)
            plain = seen["y"]
            with attnviz.intervene(model, {name: "uniform"}):
                model(X)
    b, n, _ = seen["x"].shape
    with torch.no_grad():
        v = mod.v_norm(mod.v_proj(seen["x"]).view(b, n, mod.num_heads, mod.head_dim))
        expected = mod.o_proj(v.mean(1, keepdim=True).expand_as(v).reshape(b, n, -1))
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(seen["y"], plain)
    with pytest.raises(Exception, match="fused"):
        with torch.no_grad(), attnviz.intervene(model, {name: "uniform"}):
            model(X)
