"""Token and window attention (issue 24, items 1-2): timm ``Attention`` (ViT/DeiT), timm Swin
blocks and torchvision's ViT, each read exactly: proven against the module's own non-fused
weights (the input of ``attn_drop``) or torch's own ``need_weights=True`` path, with the
model's output unchanged by capture, ``queries=`` rows, writing, and no unread modules."""

from __future__ import annotations

import contextlib
import importlib
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformer, window_partition
from timm_testing import module_io
from torchvision.models.vision_transformer import VisionTransformer

import attnviz
from attnviz.capture import NotWritableError, window_to_grid
from attnviz.capture.adapters._sdpa import sdpa_weights
from attnviz.capture.registry import Call

unread_modules = importlib.import_module("attnviz.capture.core").unread_modules


# ----------------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def vit():
    """ViT with a class token and two register tokens: 3 prefix tokens, a 4 x 4 patch grid."""
    torch.manual_seed(1)
    kw = dict(img_size=32, patch_size=8, depth=2, num_classes=5, reg_tokens=2)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **kw).eval()


@pytest.fixture(scope="module")
def swin():
    """Swin on a 12 x 12 token map with 5 x 5 windows: padded windows, shift 2 in odd blocks."""
    torch.manual_seed(2)
    m = SwinTransformer(
        img_size=24, patch_size=2, window_size=5, embed_dim=16, depths=(2, 2), num_heads=(2, 2)
    ).eval()
    with torch.no_grad():  # a bias that matters (timm initialises it with std 0.02)
        for blk in _swin_blocks(m):
            blk.attn.relative_position_bias_table.normal_(0, 1.0)
    return m


@pytest.fixture(scope="module")
def tv_vit():
    torch.manual_seed(3)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32
    ).eval()


def _swin_blocks(m):
    return [mod for mod in m.modules() if type(mod).__name__ == "SwinTransformerBlock"]


@contextlib.contextmanager
def _fused(model, fused: bool):
    """Set ``fused_attn`` on every attention module, restored on exit."""
    mods = [m for m in model.modules() if hasattr(m, "fused_attn")]
    before = [m.fused_attn for m in mods]
    for m in mods:
        m.fused_attn = fused
    try:
        yield
    finally:
        for m, b in zip(mods, before):
            m.fused_attn = b


def _attn_drop_inputs(model, fused_off_modules):
    """The oracle: timm's own weights, the input of each attention's ``attn_drop``."""
    got, handles = {}, []
    for name, mod in fused_off_modules:
        handles.append(
            mod.attn_drop.register_forward_hook(
                lambda m, i, o, name=name: got.__setitem__(name, i[0].clone())
            )
        )
    return got, handles


X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
X24 = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- timm ViT
def _vit_oracle(vit):
    attns = [(f"blocks.{i}.attn", b.attn) for i, b in enumerate(vit.blocks)]
    got, handles = _attn_drop_inputs(vit, attns)
    try:
        with torch.no_grad(), _fused(vit, False):
            vit(X)
    finally:
        for h in handles:
            h.remove()
    return got


@pytest.mark.parametrize("fused", [True, False])
def test_vit_capture_equals_timm_non_fused_weights_and_leaves_output(vit, fused):
    oracle = _vit_oracle(vit)
    with torch.no_grad(), _fused(vit, fused):
        plain = vit(X)
        with attnviz.capture(vit) as cache:
            out = vit(X)
    assert torch.equal(out, plain)
    assert set(cache) == set(oracle)
    for name, ref in oracle.items():
        assert ref.shape == (2, 3, 19, 19)  # 3 prefix tokens + 16 patches
        if fused:  # recomputed from the fused call's own q, k
            torch.testing.assert_close(cache[name], ref, rtol=0, atol=1e-6)
        else:  # the module's own tensor
            assert torch.equal(cache[name], ref)
        meta = cache.meta[name]
        assert meta["path"] == ("fused" if fused else "softmax")
        assert meta["prefix_tokens"] == 3
        assert meta["prefix_names"] == ["class", "register", "register"]
        assert meta["query_grid"] == meta["key_grid"] == (4, 4)


@pytest.mark.parametrize("fused", [True, False])
def test_vit_queries_keep_patch_rows_after_prefix_tokens(vit, fused):
    oracle = _vit_oracle(vit)
    cells = [(0, 0), (3, 2), (1, 3)]
    with torch.no_grad(), _fused(vit, fused), attnviz.capture(vit, queries=cells) as cache:
        vit(X)
    token_rows = [3 + y * 4 + x for y, x in cells]
    for name, ref in oracle.items():
        assert cache[name].shape == (2, 3, 3, 19)
        torch.testing.assert_close(cache[name], ref[:, :, token_rows], rtol=0, atol=1e-6)
        assert cache.meta[name]["query_index"].tolist() == [y * 4 + x for y, x in cells]


def test_vit_fused_call_is_not_recomputed_for_the_output(vit):
    """The fused call's output is the module's: capture returns it unchanged (bit for bit)."""
    attn = vit.blocks[0].attn
    seen = {}
    hook = attn.register_forward_hook(lambda m, i, o: seen.setdefault(len(seen), o.clone()))
    try:
        with torch.no_grad(), _fused(vit, True):
            vit(X)
            with attnviz.capture(vit, queries=[(1, 1)]):
                vit(X)
    finally:
        hook.remove()
    assert torch.equal(seen[0], seen[1])


def test_vit_write_needs_the_softmax_path_and_then_replaces_it(vit):
    with _fused(vit, True), pytest.raises(NotWritableError, match="fused_attn = False"):
        attnviz.intervene(vit, {"blocks.0.attn": "uniform"})
    attn = vit.blocks[0].attn
    with module_io(attn) as seen:
        with torch.no_grad(), _fused(vit, False):
            with attnviz.intervene(vit, {"blocks.0.attn": "uniform"}):
                vit(X)
    # uniform weights: every token reads the mean value vector (hand computation)
    b, n, c = seen["x"].shape
    v = attn.qkv(seen["x"]).reshape(b, n, 3, 3, c // 3)[:, :, 2]  # (B, N, heads, d)
    expected = attn.proj(v.mean(1, keepdim=True).reshape(b, 1, c).expand(b, n, c))
    torch.testing.assert_close(seen["y"], expected, rtol=0, atol=1e-5)


def test_vit_patched_weights_are_what_a_capture_reads_at_the_right_rows(vit):
    x2 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    cells = [(2, 1), (0, 3)]
    with torch.no_grad(), _fused(vit, False):
        with attnviz.capture(vit, sites="blocks.1.attn") as src:
            vit(x2)
        with (
            attnviz.intervene(vit, {"blocks.1.attn": "patch"}, source=src),
            attnviz.capture(vit, sites="blocks.1.attn", queries=cells) as cache,
        ):
            vit(X)
    rows = [3 + y * 4 + x for y, x in cells]
    assert cache.meta["blocks.1.attn"]["intervened"]
    assert torch.equal(cache["blocks.1.attn"], src["blocks.1.attn"][:, :, rows])


def test_sdpa_weights_times_v_is_the_fused_output():
    """softmax(q k^T * scale + bias) @ v equals torch's fused kernel, for each mask form."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, generator=g) for _ in range(3))
    float_mask = torch.randn(6, 6, generator=g)
    bool_mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
    bool_mask[..., 0] = True  # every row keeps a key
    cases = [
        ((q, k, v), {}),
        ((q, k, v), {"attn_mask": float_mask, "scale": 0.7}),
        ((q, k, v, bool_mask), {}),
        ((q, k, v), {"is_causal": True}),
    ]
    for args, kwargs in cases:
        fused = F.scaled_dot_product_attention(*args, **kwargs)
        weights = sdpa_weights(Call(args, kwargs, fused))
        torch.testing.assert_close(weights @ v, fused, rtol=0, atol=1e-6)
        rows = torch.tensor([4, 1])
        torch.testing.assert_close(
            sdpa_weights(Call(args, kwargs, fused), rows), weights[:, :, rows]
        )


# ----------------------------------------------------------------------------- timm Swin
def _swin_oracle(swin):
    """Full (B, heads, HW, HW) maps on the image: timm's own weights (input of attn_drop),
    each window slot placed at the image position the block's roll and partition put there."""
    blocks = {n: m for n, m in swin.named_modules() if type(m).__name__ == "SwinTransformerBlock"}
    got, handles = _attn_drop_inputs(swin, [(n, b.attn) for n, b in blocks.items()])
    shapes = {}
    handles += [
        b.register_forward_pre_hook(lambda m, i, n=n: shapes.__setitem__(n, i[0].shape))
        for n, b in blocks.items()
    ]
    try:
        with torch.no_grad(), _fused(swin, False):
            swin(X24)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, blk in blocks.items():
        b, h, w, _ = shapes[name]
        ws, s = blk.window_size, blk.shift_size
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        pos = torch.roll(pos, shifts=(-s[0], -s[1]), dims=(1, 2))
        pos = F.pad(pos, (0, 0, 0, -w % ws[1], 0, -h % ws[0]), value=-1)
        slots = window_partition(pos, ws).reshape(-1, ws[0] * ws[1]).long()  # (windows, N)
        a = got[name].view(b, -1, *got[name].shape[1:])  # (B, windows, heads, N, N)
        full = torch.zeros(b, a.shape[2], h * w, h * w)
        for wi, wslots in enumerate(slots):
            for qs, p in enumerate(wslots.tolist()):
                if p >= 0:
                    keep = wslots >= 0
                    full[:, :, p, wslots[keep]] = a[:, wi, :, qs][..., keep]
        out[name] = (full, (h, w), tuple(s))
    return out


@pytest.mark.parametrize("fused", [False, True])
def test_swin_capture_equals_timm_weights_on_the_image_and_leaves_output(swin, fused):
    oracle = _swin_oracle(swin)
    assert any(any(s) for _, _, s in oracle.values())  # shifted windows are covered
    with torch.no_grad(), _fused(swin, fused):
        plain = swin(X24)
        with attnviz.capture(swin) as cache:
            out = swin(X24)
    assert torch.equal(out, plain)
    for name, (full, grid, shift) in oracle.items():
        meta = cache.meta[name]
        assert meta["query_grid"] == grid and meta["shift"] == shift
        assert (meta["key_index"] < 0).any()  # 12 x 12 in 5 x 5 windows: padding slots
        att = cache[name]
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:-1]), rtol=0, atol=1e-5)
        on_image = window_to_grid(att, meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_swin_queries_keep_rows(swin, fused):
    oracle = _swin_oracle(swin)
    names = ["layers.0.blocks.0", "layers.0.blocks.1"]  # unshifted (bias only) and shifted
    cells = [(0, 0), (5, 11), (11, 4)]
    with torch.no_grad(), _fused(swin, fused):
        with attnviz.capture(swin, sites=names, queries=cells) as cache:
            swin(X24)
    for name in names:
        full, (h, w), _ = oracle[name]
        att = cache[name]
        assert att.shape == (2, 2, 3, 25)
        rows = torch.tensor([y * w + x for y, x in cells])
        key_index = cache.meta[name]["key_index"][rows]
        on_image = window_to_grid(att, key_index, (h, w)).flatten(-2)
        torch.testing.assert_close(on_image, full[:, :, rows], rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- torchvision
def test_torchvision_vit_equals_need_weights_path_and_leaves_output(tv_vit):
    blk = tv_vit.encoder.layers[1]
    seen = {}
    hook = blk.ln_1.register_forward_hook(lambda m, i, o: seen.update(x=o.clone()))
    try:
        with torch.no_grad():
            plain = tv_vit(X)
            with attnviz.capture(tv_vit) as cache:
                out = tv_vit(X)
            with attnviz.capture(tv_vit, queries=[(3, 0), (0, 2)]) as rows:
                tv_vit(X)
            x = seen["x"]
            _, ref = blk.self_attention(x, x, x, need_weights=True, average_attn_weights=False)
    finally:
        hook.remove()
    assert torch.equal(out, plain)
    name = "encoder.layers.encoder_layer_1"
    assert ref.shape == cache[name].shape == (2, 2, 17, 17)
    torch.testing.assert_close(cache[name], ref, rtol=0, atol=1e-6)
    assert cache.meta[name]["prefix_tokens"] == 1 and cache.meta[name]["query_grid"] == (4, 4)
    torch.testing.assert_close(rows[name], ref[:, :, [1 + 12, 1 + 2]], rtol=0, atol=1e-6)
    with pytest.raises(NotWritableError, match="need_weights=False"):
        attnviz.intervene(tv_vit, {name: "uniform"})


# ----------------------------------------------------------------------------- discovery
def test_no_unread_attention_modules_in_these_models(vit, swin, tv_vit):
    expected = {vit: "token", swin: "window", tv_vit: "token"}
    for model, kind in expected.items():
        assert unread_modules(model) == {}
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # find_sites warns about unread modules
            sites = attnviz.find_sites(model)
        assert sites and {s.kind for s in sites} == {kind}


def test_distilled_deit_names_its_two_prefix_tokens():
    torch.manual_seed(4)
    kw = dict(img_size=32, patch_size=8, depth=1, num_classes=3)
    deit = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, **kw).eval()
    with torch.no_grad(), attnviz.capture(deit, queries=[(3, 3)]) as cache:
        deit(X)
    meta = cache.meta["blocks.0.attn"]
    assert meta["prefix_names"] == ["class", "distillation"] and meta["query_grid"] == (4, 4)
    assert cache["blocks.0.attn"].shape == (2, 3, 1, 18)
    oracle = _vit_oracle(deit)["blocks.0.attn"]
    torch.testing.assert_close(cache["blocks.0.attn"], oracle[:, :, [2 + 15]], rtol=0, atol=1e-6)
