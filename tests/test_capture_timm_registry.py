"""Every type of timm's attention registry (``timm.layers.get_attn``) is read, and
the captured tensor is the one the module used: its output is rebuilt from the captured
attention and the module's own input (recorded in the same forward with ``io=True``).

The pretrained hybrid families run end to end with random weights at their own input size.
"""

from __future__ import annotations

import warnings

import pytest
import timm
import torch
from timm.layers.create_attn import get_attn
from torch import nn

import attnviz
from attnviz.capture import adapter_for, get_kind, unread_modules, window_to_grid
from attnviz.capture.core import TIMM_REGISTRY

ATOL = 1e-5


def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine terms, so no term of the rebuilt output vanishes."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _capture(model: nn.Module, x: torch.Tensor, **kw):
    model = _perturb(model)
    with attnviz.capture(model, io=True, **kw) as cache, torch.no_grad():
        model(x)
    return cache


def _resnet(attn_layer) -> nn.Module:
    return timm.create_model("resnet18", pretrained=False, block_args=dict(attn_layer=attn_layer))


def _sites(cache, kind: str) -> list:
    sites = [s for s in cache.sites if s.kind == kind]
    assert sites, f"no {kind} site"
    return sites


# -- the registry is covered -------------------------------------------------------------------


@pytest.mark.parametrize("name", TIMM_REGISTRY)
def test_every_registry_type_has_an_adapter(name):
    cls = get_attn(name)
    cls = getattr(cls, "func", cls)
    if name in ("cbam", "lcbam"):  # a container of two sites: channel and spatial gate
        sites = attnviz.find_sites(cls(64))
        assert [s.kind for s in sites] == ["cbam_channel", "cbam_spatial"]
        return
    module = cls.__new__(cls)  # an adapter is found by type; no need to build it
    nn.Module.__init__(module)
    if name in ("gc", "gca"):
        module.conv_attn = nn.Identity()  # GC variants without attention pooling are no sites
    assert adapter_for(module) is not None, name


def test_registry_list_matches_timm():
    src = get_attn.__code__.co_consts
    names = {c for c in src if isinstance(c, str) and c.isidentifier() and c.islower()}
    assert set(TIMM_REGISTRY) <= names


# -- channel gates: ecam, ge (extent 0) --------------------------------------------------------


def _assert_channel_gate(cache, kind: str) -> None:
    assert get_kind(kind).role == "channel"
    for site in _sites(cache, kind):
        a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        assert a.shape == x.shape[:2]
        assert torch.allclose(x * a[:, :, None, None], out, atol=1e-6), site.name


def test_ecam_gate_rebuilds_output():
    _assert_channel_gate(_capture(_resnet("ecam"), torch.randn(2, 3, 64, 64)), "eca")


def test_ge_extent0_gate_rebuilds_output():
    from timm.layers.gather_excite import GatherExcite

    # timm 1.0.31 cannot build GatherExcite with use_mlp=True (ConvMlp gets act_layer twice) nor
    # with extra_params=True (create_conv2d gets kernel_size twice): only use_mlp=False builds.
    model = nn.Sequential(GatherExcite(32, use_mlp=False))
    cache = _capture(model, torch.randn(2, 32, 8, 8))
    assert cache.sites[0].kind == "ge"
    _assert_channel_gate(cache, "ge")


@pytest.mark.parametrize("extent, maxpool", [(2, False), (4, False), (2, True)])
def test_ge_extent_map_rebuilds_output(extent, maxpool):
    from timm.layers.gather_excite import GatherExcite

    model = nn.Sequential(GatherExcite(32, extent=extent, use_mlp=False, add_maxpool=maxpool))
    cache = _capture(model, torch.randn(2, 32, 12, 8))
    (site,) = cache.sites
    assert site.kind == "ge_map" and site.info["extent"] == extent
    a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
    assert a.shape == x.shape
    assert torch.allclose(x * a, out, atol=1e-6)


# -- splat (ResNeSt) -----------------------------------------------------------------------------


def _splat_input(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return m.act0(m.drop(m.bn0(m.conv(x))))


@pytest.mark.parametrize("groups", [1, 2])
def test_splat_radix2_rebuilds_output(groups):
    from timm.layers.split_attn import SplitAttn

    model = nn.Sequential(SplitAttn(32, 32, radix=2, groups=groups, norm_layer=nn.BatchNorm2d))
    cache = _capture(model, torch.randn(2, 32, 8, 8))
    (site,) = cache.sites
    assert site.kind == "splat" and site.dims == ("batch", "branch", "channel")
    assert site.info["radix"] == 2 and site.info["cardinality"] == groups
    a, x, out = cache["0"], cache.inputs("0"), cache.outputs("0")
    assert a.shape == (2, 2, 32)
    assert torch.allclose(a.sum(1), torch.ones(2, 32), atol=1e-6)  # softmax over the radix
    u = _splat_input(model[0], x).reshape(2, 2, 32, 8, 8)
    assert torch.allclose((u * a[..., None, None]).sum(1), out, atol=ATOL)


def test_splat_radix1_is_a_channel_gate():
    from timm.layers.split_attn import SplitAttn

    model = nn.Sequential(SplitAttn(32, 32, radix=1, norm_layer=nn.BatchNorm2d))
    cache = _capture(model, torch.randn(2, 32, 8, 8))
    (site,) = cache.sites
    assert site.kind == "splat_gate" and get_kind("splat_gate").role == "channel"
    a, x, out = cache["0"], cache.inputs("0"), cache.outputs("0")
    assert a.shape == (2, 32)
    assert torch.allclose(_splat_input(model[0], x) * a[:, :, None, None], out, atol=ATOL)


def test_splat_in_resnest14d_rebuilds_output():
    model = timm.create_model("resnest14d", pretrained=False)
    cache = _capture(model, torch.randn(1, 3, 64, 64))
    sites = _sites(cache, "splat")
    assert [s.alias for s in sites] == ["SPLAT_2_1", "SPLAT_3_1", "SPLAT_4_1", "SPLAT_5_1"]
    for site in sites:
        m = model.get_submodule(site.name)
        a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        u = _splat_input(m, x)
        b, rc, h, w = u.shape
        u = u.reshape(b, m.radix, rc // m.radix, h, w)
        assert torch.allclose((u * a[..., None, None]).sum(1), out, atol=ATOL), site.name


# -- bottleneck (BoTNet) -------------------------------------------------------------------------


def _bottleneck(**kw) -> nn.Module:
    from timm.layers.bottleneck_attn import BottleneckAttn

    return nn.Sequential(BottleneckAttn(32, feat_size=(6, 8), num_heads=4, **kw))


@pytest.mark.parametrize("kw", [{}, {"scale_pos_embed": True}, {"stride": 2}])
def test_bottleneck_rebuilds_output(kw):
    model = _bottleneck(**kw)
    cache = _capture(model, torch.randn(2, 32, 6, 8))
    (site,) = cache.sites
    m = model[0]
    att, x, out = cache["0"], cache.inputs("0"), cache.outputs("0")
    assert site.kind == "bottleneck" and site.dims == ("batch", "head", "query", "key")
    assert att.shape == (2, 4, 48, 48)
    assert cache.meta["0"]["query_grid"] == (6, 8) and cache.meta["0"]["key_grid"] == (6, 8)
    assert torch.allclose(att.sum(-1), torch.ones(2, 4, 48), atol=1e-6)
    with torch.no_grad():
        v = m.qkv(x)[:, 2 * m.dim_out_qk :].reshape(2 * 4, m.dim_head_v, -1).transpose(-1, -2)
        rebuilt = (att.reshape(8, 48, 48) @ v).transpose(-1, -2).reshape(2, m.dim_out_v, 6, 8)
        rebuilt = m.pool(rebuilt)
    assert torch.allclose(rebuilt, out, atol=ATOL)


@pytest.mark.parametrize("kw", [{}, {"scale_pos_embed": True}])
def test_bottleneck_query_rows_equal_full_map_rows(kw):
    model = _perturb(_bottleneck(**kw))
    x = torch.randn(2, 32, 6, 8)
    with attnviz.capture(model) as full, torch.no_grad():
        model(x)
    queries = [(0, 0), (2, 5), (5, 7), (3, 0)]
    with attnviz.capture(model, queries=queries) as sel, torch.no_grad():
        model(x)
    rows = [y * 8 + xx for y, xx in queries]
    assert sel["0"].shape == (2, 4, 4, 48)
    assert torch.allclose(sel["0"], full["0"][:, :, rows], atol=1e-6)
    assert sel.meta["0"]["query_index"].tolist() == rows


# -- halo (HaloNet) ------------------------------------------------------------------------------


def _halo(**kw) -> nn.Module:
    from timm.layers.halo_attn import HaloAttn

    return nn.Sequential(HaloAttn(32, num_heads=4, block_size=4, halo_size=1, **kw))


def _rebuild_halo(m: nn.Module, att: torch.Tensor, x: torch.Tensor, meta: dict) -> torch.Tensor:
    """out[q] = sum over the window slots of att[q, j] * v[key_index[q, j]] (0 for padding)."""
    b, heads, nq, k = att.shape
    hk, wk = meta["key_grid"]
    with torch.no_grad():
        kv = m.kv(x).reshape(b * heads, m.dim_head_qk + m.dim_head_v, hk * wk)
        v = kv[:, m.dim_head_qk :].transpose(1, 2)  # (B * heads, HW, dv), timm's head split
        v = torch.cat([v, v.new_zeros(b * heads, 1, m.dim_head_v)], dim=1)  # slot -1 -> zeros
        idx = meta["key_index"].clone()
        idx[idx < 0] = hk * wk
        gathered = v[:, idx]  # (B * heads, Nq, K, dv)
        out = torch.einsum("bqk,bqkd->bqd", att.reshape(b * heads, nq, k), gathered)
        hq, wq = meta["query_grid"]
        out = out.reshape(b, heads, hq, wq, m.dim_head_v).permute(0, 1, 4, 2, 3)
        return m.pool(out.reshape(b, heads * m.dim_head_v, hq, wq))


@pytest.mark.parametrize(
    "kw, size",
    [({}, (8, 12)), ({"scale_pos_embed": True}, (8, 8)), ({"stride": 2}, (8, 12))],
    ids=["plain", "scale_pos_embed", "query-stride-2"],
)
def test_halo_rebuilds_output(kw, size):
    model = _halo(**kw)
    cache = _capture(model, torch.randn(2, 32, *size))
    (site,) = cache.sites
    m = model[0]
    att, x, out = cache["0"], cache.inputs("0"), cache.outputs("0")
    meta = cache.meta["0"]
    s = m.block_stride
    nq = (size[0] // s) * (size[1] // s)
    assert site.kind == "halo" and site.dims == ("batch", "head", "query", "window_key")
    assert att.shape == (2, 4, nq, 36)  # window 4 + 2 * 1 = 6, 6 * 6 slots
    assert meta["query_grid"] == (size[0] // s, size[1] // s) and meta["key_grid"] == size
    assert meta["key_index"].shape == (nq, 36) and meta["query_stride"] == s
    assert torch.allclose(att.sum(-1), torch.ones(2, 4, nq), atol=1e-6)
    assert torch.allclose(_rebuild_halo(m, att, x, meta), out, atol=ATOL)


def test_halo_key_index_is_the_window_around_the_block():
    model = _halo()
    cache = _capture(model, torch.randn(1, 32, 8, 8))
    idx = cache.meta["0"]["key_index"]
    w = 8
    # query (5, 6) is in block (1, 1): its window covers rows 3..8 and columns 3..8 (8 = pad)
    q = 5 * w + 6
    slots = idx[q].view(6, 6)
    assert slots[0, 0] == 3 * w + 3 and slots[4, 4] == 7 * w + 7
    assert (slots[5] == -1).all() and (slots[:, 5] == -1).all()
    # a query's map on the key grid: mass only inside its window, padding slots dropped
    grid = window_to_grid(cache["0"][0, 0], idx, (8, 8))  # (Nq, 8, 8)
    assert grid.shape == (64, 8, 8)
    assert grid[q, :3].sum() == 0 and grid[q, :, :3].sum() == 0
    assert torch.allclose(grid[q].sum(), cache["0"][0, 0, q][idx[q] >= 0].sum())


def test_halo_query_rows_equal_full_map_rows():
    model = _perturb(_halo(stride=2))
    x = torch.randn(1, 32, 8, 12)
    with attnviz.capture(model) as full, torch.no_grad():
        model(x)
    queries = [(0, 0), (3, 5), (2, 1)]
    with attnviz.capture(model, queries=queries) as sel, torch.no_grad():
        model(x)
    rows = [y * 6 + xx for y, xx in queries]  # query grid 4 x 6 (stride 2)
    assert sel["0"].shape == (1, 4, 3, 36)
    assert torch.equal(sel["0"], full["0"][:, :, rows])
    assert sel.meta["0"]["query_index"].tolist() == rows
    with pytest.raises(ValueError, match="4x6 query grid"):
        with attnviz.capture(model, queries=[(4, 0)]), torch.no_grad():
            model(x)


# -- lambda --------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [9, None], ids=["conv-lambda", "relative-position"])
def test_lambda_keys_rebuild_output(r):
    from timm.layers.lambda_layer import LambdaLayer

    model = nn.Sequential(LambdaLayer(32, feat_size=(6, 8), num_heads=4, dim_head=8, r=r))
    cache = _capture(model, torch.randn(2, 32, 6, 8))
    (site,) = cache.sites
    m = model[0]
    kmap, x, out = cache["0"], cache.inputs("0"), cache.outputs("0")
    assert site.kind == "lambda" and not get_kind("lambda").per_query
    assert kmap.shape == (2, 8, 6, 8)
    assert torch.allclose(kmap.flatten(2).sum(-1), torch.ones(2, 8), atol=1e-6)
    b, c, h, w = x.shape
    with torch.no_grad():
        q, _, v = torch.split(m.qkv(x), [m.num_heads * m.dim_qk, m.dim_qk, m.dim_v], dim=1)
        q = m.norm_q(q).reshape(b, m.num_heads, m.dim_qk, h * w).transpose(-1, -2)
        v = m.norm_v(v).reshape(b, m.dim_v, h * w).transpose(-1, -2)
        content = q @ (kmap.reshape(b, m.dim_qk, h * w) @ v).unsqueeze(1)
        if m.pos_emb is None:
            lam = m.conv_lambda(v.reshape(b, 1, h, w, m.dim_v))
            lam = lam.reshape(b, 1, m.dim_qk, h * w, m.dim_v).transpose(2, 3)
        else:
            pe = m.pos_emb[m.rel_pos_indices[0], m.rel_pos_indices[1]].expand(b, -1, -1, -1)
            lam = (pe.transpose(-1, -2) @ v.unsqueeze(1)).unsqueeze(1)
        position = (q.unsqueeze(-2) @ lam).squeeze(-2)
        rebuilt = m.pool((content + position).transpose(-1, -2).reshape(b, c, h, w))
    assert torch.allclose(rebuilt, out, atol=ATOL)


def test_queries_on_a_lambda_model_are_refused():
    model = timm.create_model("resnet18", pretrained=False, block_args=dict(attn_layer="lambda"))
    with pytest.raises(ValueError, match="none of the selected sites is per-query"):
        attnviz.capture(model, queries=[(0, 0)])


# -- coordinate attention family -----------------------------------------------------------------


@pytest.mark.parametrize("attn_layer", ["coord", "ela"])
def test_coord_and_ela_two_gates_rebuild_output(attn_layer):
    cache = _capture(_resnet(attn_layer), torch.randn(2, 3, 64, 48))
    sites = _sites(cache, attn_layer)
    assert len(sites) == 8 and get_kind(attn_layer).parts == ("height", "width")
    for site in sites:
        x, out = cache.inputs(site.name), cache.outputs(site.name)
        parts = cache.parts(site.name)
        a_h, a_w = parts["height"], parts["width"]
        b, c, h, w = x.shape
        assert a_h.shape == (b, c, h) and a_w.shape == (b, c, w)
        assert cache[site.name].shape == (b, c, h + w)
        assert cache.meta[site.name]["parts"] == {"height": h, "width": w}
        assert torch.allclose(x * a_w[:, :, None, :] * a_h[..., None], out, atol=1e-6)


@pytest.mark.parametrize("attn_layer", ["scoord", "strip"])
def test_scoord_and_strip_gates_rebuild_output(attn_layer):
    cache = _capture(_resnet(attn_layer), torch.randn(2, 3, 64, 48))
    for site in _sites(cache, attn_layer):
        a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
        assert a.shape == x.shape
        assert torch.allclose(x * a, out, atol=1e-6)


# -- bat -----------------------------------------------------------------------------------------


def test_bat_bilinear_attention_rebuilds_output():
    from timm.layers.non_local_attn import BatNonLocalAttn

    model = nn.Sequential(BatNonLocalAttn(64, block_size=4, groups=2))
    cache = _capture(model, torch.randn(2, 64, 8, 12))
    (site,) = cache.sites
    m = model[0]
    a, x, out = cache["0"], cache.inputs("0"), cache.outputs("0")
    assert site.kind == "bat" and a.shape == (2, 2, 2, 4, 4)
    assert torch.allclose(a.sum(-1), torch.ones(2, 2, 2, 4), atol=1e-6)
    ba = m.ba
    with torch.no_grad():
        xl = m.conv1(x)
        b, c, h, w = xl.shape
        p, q = a[:, 0], a[:, 1].transpose(-1, -2)

        def expand(t: torch.Tensor, size: int) -> torch.Tensor:
            t = t[:, :, None].expand(b, 2, c // 2, 4, 4).reshape(b, c, 4, 4)
            return ba.resize_mat(t, size // 4)

        y = expand(p, h) @ xl @ expand(q, w)
        rebuilt = m.conv2(ba.conv2(y)) + x
    assert torch.allclose(rebuilt, out, atol=ATOL)


# -- the pretrained families, end to end with random weights -------------------------------------

FAMILIES = {
    "resnest14d": {"splat": 4},
    "resnest26d": {"splat": 8},
    "botnet26t_256": {"bottleneck": 3},
    "sebotnet33ts_256": {"se": 6, "bottleneck": 4},
    "eca_botnext26ts_256": {"eca": 5, "bottleneck": 3},
    "halonet26t": {"halo": 3},
    "sehalonet33ts": {"se": 6, "halo": 4},
    "eca_halonext26ts": {"eca": 5, "halo": 3},
    "lambda_resnet26t": {"lambda": 3},
    "lambda_resnet26rpt_256": {"lambda": 3},
    "halo2botnet50ts_256": {"halo": 5, "bottleneck": 1},
    "lamhalobotnet50ts_256": {"lambda": 2, "halo": 3, "bottleneck": 1},
    "bat_resnext26ts": {"bat": 8},
    "haloregnetz_b": {"se": 17, "halo": 5},
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pretrained_family_runs_end_to_end(name):
    model = timm.create_model(name, pretrained=False).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no attention-like module is left unread
        sites = attnviz.find_sites(model)
    counts: dict[str, int] = {}
    for s in sites:
        counts[s.kind] = counts.get(s.kind, 0) + 1
        assert s.stage is not None and s.alias.endswith(f"_{s.stage}_{s.block}"), s
    assert counts == FAMILIES[name]
    size = model.pretrained_cfg["input_size"]
    with attnviz.capture(model) as cache, torch.no_grad():
        model(torch.randn(1, *size))
    assert set(cache) == {s.name for s in sites}
    for s in sites:
        t = cache[s.name]
        assert t.shape[0] == 1 and torch.isfinite(t).all(), s.name
        if get_kind(s.kind).is_distribution and s.kind != "lambda":
            assert torch.allclose(t.sum(-1), torch.ones(()), atol=1e-5), s.name
        if s.kind == "halo":
            meta = cache.meta[s.name]
            assert t.shape[-2] == meta["query_grid"][0] * meta["query_grid"][1]


def test_hybrid_transformer_attention_is_named_not_silently_skipped():
    # every attention class of timm is read now (tests/test_timm_walk.py): take one adapter
    # away, as a new timm release would add a class attnviz does not know yet
    from attnviz.capture import registry

    key = "timm.models.swiftformer.EfficientAdditiveAttention"
    model = timm.create_model("swiftformer_xs", pretrained=False)
    assert len(attnviz.find_sites(model)) == 4
    adapter = registry._ADAPTERS.pop(key)
    registry.REGISTRY_CHANGES[0] += 1
    try:
        match = r"4 EfficientAdditiveAttention modules are not read \(no adapter\)"
        with pytest.warns(UserWarning, match=match):
            sites = attnviz.find_sites(model)
        assert sites == []
        unread = unread_modules(model)
        assert list(unread) == ["EfficientAdditiveAttention"]
        assert len(unread["EfficientAdditiveAttention"]) == 4
    finally:
        registry._ADAPTERS[key] = adapter
        registry.REGISTRY_CHANGES[0] += 1
    assert unread_modules(model) == {}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("regnety_002", {"s1.b1.se": "SE_2_1", "s3.b4.se": "SE_4_4", "s4.b1.se": "SE_5_1"}),
        ("rexnet_100", {"features.3.se": "SE_3_1", "features.5.se": "SE_4_1"}),
        ("haloregnetz_b", {"stages.2.3.self_attn": "HALO_4_4", "stages.0.0.attn": "SE_2_1"}),
    ],
)
def test_stage_block_aliases_for_regnet_rexnet_byobnet(name, expected):
    sites = {s.name: s.alias for s in attnviz.find_sites(timm.create_model(name))}
    for site_name, alias in expected.items():
        assert sites[site_name] == alias
    assert not any(a.count("_") == 1 for a in sites.values())  # no running numbers
