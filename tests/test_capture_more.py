"""Capture of SAGAN, DANet, scSE, BAM, residual-attention and STN blocks: the captured tensor
is the one the module used (its output rebuilt from the capture and its input, atol 1e-6),
rows of distribution kinds sum to 1, query selection, and hooks removed afterwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnviz
from attnviz.blocks import (
    BAM,
    SCSE,
    ChannelAttention,
    DualAttention,
    PositionAttention,
    ResidualAttention,
    SelfAttention2d,
    SpatialTransformer,
)
from attnviz.capture import KINDS, get_kind, is_query_kind, registered_adapters
from attnviz.models.tiny import create_tiny

ATOL = 1e-6
NEW_KINDS = (
    "sa",
    "pam",
    "cam",
    "cse",
    "sse",
    "bam_channel",
    "bam_spatial",
    "bam",
    "ram",
    "stn_theta",
    "stn_grid",
)


def _perturb(module: nn.Module) -> nn.Module:
    """Non-zero residual scales and random BN statistics, so no term vanishes."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.split(".")[-1] in ("gamma", "alpha", "beta"):
                p.fill_(0.75)
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
    return module.eval()


def _run(module: nn.Module, x: torch.Tensor, **kw):
    with attnviz.capture(module, io=True, **kw) as cache, torch.no_grad():
        module(x)
    return cache


def _hook_count(module: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_all_new_kinds_registered():
    assert len(registered_adapters()) > 0  # kinds register with the built-in adapters (lazily)
    for k in NEW_KINDS:
        assert k in KINDS
    assert is_query_kind("sa") and is_query_kind("pam")
    assert not is_query_kind("cam")
    dist = {k for k in NEW_KINDS if get_kind(k).is_distribution}
    assert dist == {"sa", "pam", "cam"}


@pytest.mark.parametrize("cls", [SelfAttention2d, PositionAttention])
def test_query_attention_identity(cls):
    """out = s * v(x) beta^T + x with beta the captured (B, N, N) map (rows = queries)."""
    m = _perturb(cls(16))
    x = torch.randn(2, 16, 5, 6)
    cache = _run(m, x)
    (site,) = cache.sites
    att = cache[site.name]
    assert att.shape == (2, 30, 30) and site.dims == ("batch", "query", "key")
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 30), atol=ATOL, rtol=0)
    assert cache.meta[site.name]["query_grid"] == (5, 6)
    inp, out = cache.inputs(site.name), cache.outputs(site.name)
    v = m.value(inp).flatten(2)  # (B, C, N)
    scale = m.gamma if cls is SelfAttention2d else m.alpha
    o = torch.bmm(v, att.transpose(1, 2)).reshape(2, 16, 5, 6)
    torch.testing.assert_close(out, scale * o + inp, atol=ATOL, rtol=0)
    # io gives o_i = out - in = scale * o (the paper's o up to the learned scale)
    torch.testing.assert_close(out - inp, scale.detach() * m.attend(inp), atol=ATOL, rtol=0)
    # a wrong map (transposed: rows = keys) does not rebuild the output
    wrong = torch.bmm(v, att).reshape(2, 16, 5, 6)
    assert not torch.allclose(out, scale * wrong + inp, atol=1e-3)


@pytest.mark.parametrize("cls", [SelfAttention2d, PositionAttention])
def test_query_selection(cls):
    m = _perturb(cls(8))
    x = torch.randn(1, 8, 4, 4)
    full = _run(m, x)
    with attnviz.capture(m, queries=[(0, 0), (2, 3)]) as cache, torch.no_grad():
        m(x)
    name = cache.sites[0].name
    torch.testing.assert_close(cache[name], full[name][:, [0, 11]])
    assert cache.meta[name]["query_index"].tolist() == [0, 11]
    with pytest.raises(ValueError, match="outside"), attnviz.capture(m, queries=[(4, 0)]):
        m(x)


def test_channel_attention_identity():
    m = _perturb(ChannelAttention(8))
    x = torch.randn(2, 8, 4, 4)
    cache = _run(m, x)
    att, inp, out = cache[""], cache.inputs(""), cache.outputs("")
    assert att.shape == (2, 8, 8)
    torch.testing.assert_close(att.sum(-1), torch.ones(2, 8), atol=ATOL, rtol=0)
    rebuilt = m.beta * torch.bmm(att, inp.flatten(2)).reshape_as(inp) + inp
    torch.testing.assert_close(out, rebuilt, atol=ATOL, rtol=0)


def test_dual_attention_sites_and_identity():
    m = _perturb(DualAttention(16))
    x = torch.randn(2, 16, 4, 4)
    cache = _run(m, x)
    assert [(s.kind, s.name) for s in cache.sites] == [
        ("pam", "position"),
        ("cam", "channel"),
    ]
    p, c = cache["position"], cache["channel"]
    v = m.position.value(x).flatten(2)
    pos_term = m.position.alpha * torch.bmm(v, p.transpose(1, 2)).reshape_as(x)
    chan_term = m.channel.beta * torch.bmm(c, x.flatten(2)).reshape_as(x)
    with torch.no_grad():
        torch.testing.assert_close(m(x), x + pos_term + chan_term, atol=ATOL, rtol=0)


@pytest.mark.parametrize("fusion", ["add", "max"])
def test_scse_identity(fusion):
    m = _perturb(SCSE(8, fusion=fusion))
    x = torch.randn(2, 8, 5, 5)
    cache = _run(m, x)
    gc, gs = cache["cse"], cache["sse"]
    assert gc.shape == (2, 8) and gs.shape == (2, 5, 5)
    torch.testing.assert_close(cache.outputs("cse"), x * gc[:, :, None, None], atol=ATOL, rtol=0)
    torch.testing.assert_close(cache.outputs("sse"), x * gs[:, None], atol=ATOL, rtol=0)
    xc, xs = x * gc[:, :, None, None], x * gs[:, None]
    want = xc + xs if fusion == "add" else torch.maximum(xc, xs)
    with torch.no_grad():
        torch.testing.assert_close(m(x), want, atol=ATOL, rtol=0)


def test_bam_identity():
    m = _perturb(BAM(16, reduction=4))
    x = torch.randn(2, 16, 6, 6)
    cache = _run(m, x)
    kinds = {s.name: s.kind for s in cache.sites}
    assert kinds == {"": "bam", "channel": "bam_channel", "spatial": "bam_spatial"}
    mask, mc, ms = cache[""], cache["channel"], cache["spatial"]
    assert mask.shape == (2, 16, 6, 6) and mc.shape == (2, 16) and ms.shape == (2, 6, 6)
    torch.testing.assert_close(cache.outputs(""), x + x * mask, atol=ATOL, rtol=0)
    # the branch captures are the pre-sigmoid logits that make up the combined map
    torch.testing.assert_close(
        mask, torch.sigmoid(mc[:, :, None, None] + ms[:, None]), atol=ATOL, rtol=0
    )
    assert float(mc.min()) < 0 or float(ms.min()) < 0  # logits, not gates


def test_residual_mask_identity_and_summary():
    m = _perturb(ResidualAttention(6, depth=2))
    x = torch.randn(2, 6, 8, 8)
    cache = _run(m, x)
    (site,) = cache.sites
    assert site.kind == "ram" and site.dims == ("batch", "channel", "height", "width")
    mask = cache[""]
    assert mask.shape == (2, 6, 8, 8) and float(mask.min()) > 0 and float(mask.max()) < 1
    with torch.no_grad():
        trunk = m.trunk(cache.inputs(""))
    torch.testing.assert_close(cache.outputs(""), (1 + mask) * trunk, atol=ATOL, rtol=0)
    # per-position summary: the channel mean, reduced inside the hook
    with attnviz.capture(m, reduce="channel_mean") as small, torch.no_grad():
        m(x)
    assert small[""].shape == (2, 8, 8)
    torch.testing.assert_close(small[""], mask.mean(dim=1), atol=ATOL, rtol=0)


def test_stn_theta_and_grid_identity():
    m = _perturb(SpatialTransformer(3, out_size=(5, 7)))
    with torch.no_grad():
        m.theta.fc.weight.normal_(0, 0.05)
    x = torch.randn(2, 3, 12, 12)
    cache = _run(m, x)
    assert {s.kind for s in cache.sites} == {"stn_theta", "stn_grid"}
    theta, grid = cache[""], cache["grid"]
    assert theta.shape == (2, 2, 3) and grid.shape == (2, 5, 7, 2)
    assert not torch.allclose(theta[0], theta[1])  # theta depends on the input
    out = cache.outputs("")
    torch.testing.assert_close(
        out, F.grid_sample(x, F.affine_grid(theta, [2, 3, 5, 7], align_corners=False),
                           align_corners=False), atol=ATOL, rtol=0
    )  # fmt: skip
    torch.testing.assert_close(out, F.grid_sample(x, grid, align_corners=False), atol=ATOL, rtol=0)
    torch.testing.assert_close(cache.inputs("grid"), theta)


def test_hooks_removed_also_on_error():
    m = nn.Sequential(DualAttention(8), SCSE(8), BAM(8, reduction=2), ResidualAttention(8),
                      SpatialTransformer(8)).eval()  # fmt: skip
    before = _hook_count(m)
    with attnviz.capture(m) as cache, torch.no_grad():
        m(torch.randn(2, 8, 8, 8))
    assert len(cache) == 10 and {s.kind for s in cache.sites} == set(NEW_KINDS) - {"sa"}
    assert _hook_count(m) == before
    with pytest.raises(RuntimeError), attnviz.capture(m), torch.no_grad():
        m(torch.randn(2, 5, 8, 8))  # wrong channel count
    assert _hook_count(m) == before


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("sa_tiny", [("SA_3_2", "sa", "layer2.1")]),
        (
            "danet_tiny",
            [
                ("PAM_3_2", "pam", "layer2.1.position"),
                ("CAM_3_2", "cam", "layer2.1.channel"),
            ],
        ),
    ],
)
def test_tiny_models_sites(arch, expected):
    model = create_tiny(arch).eval()
    sites = attnviz.find_sites(model)
    assert [(s.alias, s.kind, s.name) for s in sites] == expected
    x = torch.randn(1, 3, 64, 64)
    with attnviz.capture(model, io=True) as cache, torch.no_grad():
        model(x)
    first = sites[0]
    n = 16 * 16 if first.kind != "cam" else 64
    assert cache[first.name].shape == (1, n, n)
    assert cache.meta[first.name]["query_grid"] == (16, 16)


@pytest.mark.parametrize(
    "arch, kinds, scale",
    [
        ("sa_tiny", ["sa"], "gamma"),
        ("danet_tiny", ["pam", "cam"], "alpha"),
    ],
)
def test_bundled_models_list_new_kinds(arch, kinds, scale):
    """``attnviz sites`` on the bundled checkpoints: the new kinds, their shapes, and a residual
    scale the training moved away from its initial 0."""
    from attnviz.commands.sites import site_table
    from attnviz.models import load_model

    model, pre = load_model(arch)
    rows = site_table(model, tuple(pre.input_size))
    assert [r["kind"] for r in rows] == kinds
    assert rows[0]["shape"] == [1, 256, 256]
    if arch == "danet_tiny":
        c = model.layer2[1].channel.channels
        assert rows[1]["shape"] == [1, c, c]
    assert abs(attnviz.find_sites(model)[0].info[scale]) > 1e-3


def test_bundled_mix_tiny_lists_every_gate_kind():
    """``mix_tiny`` (STN, scSE, residual attention, BAM): all eight kinds found on the bundled
    checkpoint, and one forward fills every site with its documented shape; each tensor is the
    one its module used (STN grid = theta [x, y, 1] at pixel centres, Eq. 1; cSE/sSE outputs =
    input * gate; RAM output = (1 + M) * T; BAM gate = sigmoid(M_c + M_s), F' = F + F * M)."""
    from attnviz.data import ShapesDataset
    from attnviz.models import load_model
    from attnviz.models.train import dataset_tensors, normalize

    model, pre = load_model("mix_tiny")
    assert tuple(pre.input_size) == (3, 64, 64)
    kinds = {"stn_theta", "stn_grid", "cse", "sse", "ram", "bam", "bam_channel",
             "bam_spatial"}  # fmt: skip
    sites = attnviz.find_sites(model)
    assert {s.kind for s in sites} == kinds
    assert [s.alias for s in sites] == [
        "STN_1", "STNG_1", "CSE_2_1", "SSE_2_1", "CSE_2_2", "SSE_2_2",
        "RAM_3_2", "BAM_3_3", "BAMC_3_3", "BAMS_3_3",
    ]  # fmt: skip
    x_uint8, _, _ = dataset_tensors(ShapesDataset(1, size=64, seed=123))
    x = normalize(x_uint8[:4])
    b = len(x)
    cache = _run(model, x)
    shapes = {
        "stn_theta": (b, 2, 3),
        "stn_grid": (b, 64, 64, 2),
        "cse": (b, 16),
        "sse": (b, 32, 32),
        "ram": (b, 32, 16, 16),
        "bam": (b, 32, 16, 16),
        "bam_channel": (b, 32),
        "bam_spatial": (b, 16, 16),
    }
    assert set(cache) == {s.name for s in sites}
    for s in sites:
        t = cache[s.name]
        assert t.shape == shapes[s.kind], s.alias
        assert t.dim() == len(get_kind(s.kind).dims), s.alias
        assert torch.isfinite(t).all(), s.alias

    theta, grid = cache["stn"], cache["stn.grid"]
    centres = (2 * torch.arange(64, dtype=torch.float32) + 1) / 64 - 1  # align_corners=False
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    hom = torch.stack([xx, yy, torch.ones_like(xx)], -1)  # (64, 64, 3)
    expected = torch.einsum("brk,hwk->bhwr", theta, hom)
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        cache.outputs("stn"), F.grid_sample(x, grid, align_corners=False), atol=1e-5, rtol=0
    )
    for y in (1, 2):
        name = f"layer1.{y - 1}.attn"
        cse, sse = cache[f"{name}.cse"], cache[f"{name}.sse"]
        assert ((cse >= 0) & (cse <= 1)).all() and (
            (sse >= 0) & (sse <= 1)
        ).all()  # float32 sigmoid
        inp = cache.inputs(f"{name}.cse")
        torch.testing.assert_close(
            cache.outputs(f"{name}.cse"), inp * cse[:, :, None, None], atol=ATOL, rtol=0
        )
        torch.testing.assert_close(
            cache.outputs(f"{name}.sse"), inp * sse[:, None], atol=ATOL, rtol=0
        )
    mask = cache["layer2.1"]
    assert ((mask >= 0) & (mask <= 1)).all()
    with torch.no_grad():
        trunk = model.layer2[1].trunk(cache.inputs("layer2.1"))
    torch.testing.assert_close(cache.outputs("layer2.1"), (1 + mask) * trunk, atol=1e-5, rtol=0)
    gate = torch.sigmoid(
        cache["layer2.2.channel"][:, :, None, None] + cache["layer2.2.spatial"][:, None]
    )
    torch.testing.assert_close(cache["layer2.2"], gate, atol=ATOL, rtol=0)
    f_in = cache.inputs("layer2.2")
    torch.testing.assert_close(cache.outputs("layer2.2"), f_in + f_in * gate, atol=1e-5, rtol=0)
