"""CoaT's factorized attention read exactly (issue 24): the key channels' softmax over the
tokens against a hand computation of Eq. 2 from each module's own input and weights, on a
non-square image (16 x 24 tokens in the first stage); the output unchanged; nothing unread in
CoaT-Lite or CoaT (parallel blocks)."""

from __future__ import annotations

import pytest
import timm
import torch

import attnviz
from attnviz.capture import NotWritableError
from attnviz.capture.core import unread_modules


@pytest.fixture(scope="module")
def coat():
    torch.manual_seed(0)
    return timm.create_model("coat_lite_tiny", pretrained=False, img_size=(64, 96)).eval()


def test_key_channel_weights_equal_eq2_on_a_non_square_image(coat):
    x = torch.randn(2, 3, 64, 96)
    inputs, handles = {}, []
    for name, m in coat.named_modules():
        if type(m).__name__ == "FactorAttnConvRelPosEnc":
            hook = (lambda key: lambda _m, args: inputs.__setitem__(key, args))(name)
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            plain = coat(x)
            with attnviz.capture(coat) as cache:
                assert torch.equal(coat(x), plain)
    finally:
        for h in handles:
            h.remove()
    assert len(cache.sites) == len(inputs) == 8
    grids = set()
    for site in cache.sites:
        m = coat.get_submodule(site.name)
        tokens, size = inputs[site.name]
        b, n, c = tokens.shape
        with torch.no_grad():
            k = m.qkv(tokens).reshape(b, n, 3, m.num_heads, c // m.num_heads)[:, :, 1]
        by_hand = torch.softmax(k.permute(0, 2, 3, 1), dim=-1)  # (B, heads, Ch, N) over N
        got = cache[site.name]
        assert site.kind == "factor" and got.shape == by_hand.shape
        torch.testing.assert_close(got, by_hand, rtol=0, atol=1e-6)
        torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]), rtol=0, atol=1e-5)
        meta = cache.meta[site.name]
        assert meta["prefix_tokens"] == 1 and meta["prefix_names"] == ["class"]
        assert meta["key_grid"] == tuple(size) and n == 1 + size[0] * size[1]
        grids.add(meta["key_grid"])
    assert grids == {(16, 24), (8, 12), (4, 6), (2, 3)}  # H x W per stage, height first


def test_factor_weights_are_not_writable_and_coat_has_nothing_unread(coat):
    with pytest.raises(NotWritableError, match="transpose"):
        attnviz.intervene(coat, {"factor": "uniform"})
    for name in ("coat_lite_tiny", "coat_tiny"):
        model = timm.create_model(name, pretrained=False, device="meta")
        assert unread_modules(model) == {}, name


def test_parallel_blocks_take_the_grid_of_their_stage():
    """CoaT's parallel blocks pass ``size`` by keyword: the grid comes from the stage's patch
    embedding (stages 2-4), on a non-square image."""
    torch.manual_seed(0)
    model = timm.create_model("coat_tiny", pretrained=False, img_size=(64, 96)).eval()
    with torch.no_grad(), attnviz.capture(model) as cache:
        model(torch.randn(1, 3, 64, 96))
    stages = {f"factoratt_crpe{i}": tuple(getattr(model, f"patch_embed{i}").grid_size)
              for i in (2, 3, 4)}  # fmt: skip
    parallel = [n for n in cache if n.startswith("parallel_blocks")]
    assert parallel and len(cache) == 26
    for name in cache:
        grid, n_tokens = cache.meta[name]["key_grid"], cache[name].shape[-1]
        assert n_tokens == 1 + grid[0] * grid[1], name
        if name in parallel:
            assert grid == stages[name.rsplit(".", 1)[1]], name
    assert {cache.meta[n]["key_grid"] for n in parallel} == {(8, 12), (4, 6), (2, 3)}
