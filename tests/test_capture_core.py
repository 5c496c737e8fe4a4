"""Behaviour of the capture core: selection, aliases, accumulation, reductions, safety, errors."""

from __future__ import annotations

import copy
import gc
import weakref

import psutil
import pytest
import timm
import torch
import torchvision
from torch import nn

import attnviz
from attnviz.capture import REDUCTIONS, Site, stage_block, unregister_adapter


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        for m in model.modules()
    )


class TinySE(nn.Module):
    """A user's own SE module (not known to attnviz until registered)."""

    def __init__(self, c: int):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def _se_net() -> nn.Module:
    return timm.create_model("seresnet18", pretrained=False).eval()


# -- sites and aliases -------------------------------------------------------------------------


def test_find_sites_needs_no_forward_and_names_paper_aliases():
    model = timm.create_model("skresnext50_32x4d", pretrained=False)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    sites = attnviz.find_sites(model)
    assert not calls
    aliases = [s.alias for s in sites]
    assert {"SK_2_3", "SK_3_4", "SK_4_6", "SK_5_3"} <= set(aliases)  # SKNet-50 Fig. 3 units
    assert len(sites) == 3 + 4 + 6 + 3
    s = sites[aliases.index("SK_3_4")]
    assert s.name == "layer2.3.conv2" and s.kind == "sk" and (s.stage, s.block) == (3, 4)
    assert s.dims == ("batch", "branch", "channel")
    assert s.module_type == "timm.layers.selective_kernel.SelectiveKernel"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("layer2.3.conv1", (3, 4)),
        ("module.layer1.0.se", (2, 1)),
        ("stages.0.1.attn", (2, 2)),
        ("stages.2.blocks.0.attn", (4, 1)),
        ("blocks.1.0.se", (3, 1)),
        ("features.2.1.block.2", (3, 2)),
        ("trunk_output.block2.block2-1.f.se", (3, 2)),
        ("features.4.block.2", None),
    ],
)
def test_stage_block_rules(name, expected):
    assert stage_block(name) == expected


def test_aliases_of_other_layouts():
    gc = attnviz.find_sites(timm.create_model("gcresnet33ts", pretrained=False))
    assert [s.alias for s in gc][:3] == ["GC_2_1", "GC_2_2", "GC_3_1"]
    eff = attnviz.find_sites(timm.create_model("efficientnet_b0", pretrained=False))
    assert eff[0].alias == "SE_2_1" and eff[1].alias == "SE_3_1"
    mbv3 = attnviz.find_sites(torchvision.models.mobilenet_v3_small())
    assert [s.alias for s in mbv3][:3] == ["SE_1", "SE_2", "SE_3"]
    cbam = attnviz.find_sites(timm.create_model("resnet18", block_args=dict(attn_layer="cbam")))
    assert [s.alias for s in cbam][:2] == ["CBAMC_2_1", "CBAMS_2_1"]


def test_blocks_without_se_are_not_sites():
    # mobilenetv3 blocks without SE hold nn.Identity under the name `se`
    model = timm.create_model("mobilenetv3_small_050", pretrained=False)
    named_se = [n for n, m in model.named_modules() if n.endswith(".se")]
    sites = attnviz.find_sites(model)
    assert 0 < len(sites) < len(named_se)
    assert all(isinstance(model.get_submodule(s.name), nn.Module) for s in sites)


# -- the cache ---------------------------------------------------------------------------------


def test_forwards_accumulate_along_batch_in_call_order():
    model = _se_net()
    x1, x2 = torch.randn(2, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with attnviz.capture(model, sites=["SE_3_2"]) as both, torch.no_grad():
        model(x1)
        model(x2)
    with attnviz.capture(model, sites=["SE_3_2"]) as one, torch.no_grad():
        model(x2)
    t = both.by_alias("SE_3_2")
    assert t.shape[0] == 5 and t.dtype == torch.float32 and t.device.type == "cpu"
    assert torch.equal(t[2:], one.by_alias("SE_3_2"))
    assert list(both) == ["layer2.1.se"] and len(both) == 1
    both.clear()
    assert len(both) == 0


def test_cache_helpers_and_selection():
    model = timm.create_model("resnet18", block_args=dict(attn_layer="cbam")).eval()
    with attnviz.capture(model, kinds=["cbam_spatial"]) as cache, torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert {s.kind for s in cache.sites} == {"cbam_spatial"}
    assert set(cache.by_kind("cbam_spatial")) == set(cache)
    assert cache.by_kind("cbam_channel") == {}
    assert set(cache.aliases()) == {s.alias for s in cache.sites}
    assert torch.equal(cache["CBAMS_2_1"], cache.by_alias("CBAMS_2_1"))  # alias lookup too


def test_captured_tensors_do_not_share_memory_with_the_model():
    # the SE module's gate output would be overwritten if the cache held a view of it
    model = _se_net()
    with attnviz.capture(model, sites=["SE_2_1"], io=True) as cache, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    site = cache.site("SE_2_1")
    # timm's block adds the shortcut in place to the SE output: the recorded output is a clone
    a, x, out = cache[site.name], cache.inputs(site.name), cache.outputs(site.name)
    assert torch.allclose(x * a[:, :, None, None], out, atol=1e-6)


# -- reductions --------------------------------------------------------------------------------


REDUCTION_CASES = {
    "mean": ("resnet18", "cbam"),
    "max": ("resnet18", "cbam"),
    "channel_mean": ("skresnet18", None),
    "spatial_mean": ("resnet18", "cbam"),
    "entropy": ("resnet18", "gc"),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_named_reductions_equal_reducing_the_full_tensor(name):
    arch, attn = REDUCTION_CASES[name]
    kw = dict(block_args=dict(attn_layer=attn)) if attn else {}
    model = timm.create_model(arch, pretrained=False, **kw).eval()
    kinds = "cbam_spatial" if name == "spatial_mean" else None
    x = torch.randn(2, 3, 64, 64)
    with attnviz.capture(model, kinds=kinds) as full, torch.no_grad():
        model(x)
    with attnviz.capture(model, kinds=kinds, reduce=name) as red, torch.no_grad():
        model(x)
    for site in full.sites:
        expected = REDUCTIONS[name](full[site.name], site)
        assert red[site.name].shape[0] == 2
        assert torch.allclose(red[site.name], expected, atol=1e-6)
    site = full.sites[0]
    t = full[site.name]
    by_hand = {
        "mean": lambda: t.flatten(1).mean(1),
        "max": lambda: t.flatten(1).amax(1),
        "channel_mean": lambda: t.mean(2),  # sk (B, M, C) -> per-branch mean (B, M)
        "spatial_mean": lambda: t.mean((1, 2)),
        "entropy": lambda: -(t.flatten(1) * t.flatten(1).log()).sum(1),
    }[name]()
    assert torch.allclose(red[site.name], by_hand, atol=1e-5)


def test_callable_reduction_can_keep_nothing():
    model = _se_net()
    seen: list[tuple[str, tuple]] = []

    def reduce(t: torch.Tensor, site: Site):
        seen.append((site.alias, tuple(t.shape)))
        return None

    with attnviz.capture(model, reduce=reduce) as cache, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(cache) == 0 and cache.nbytes() == 0
    assert len(seen) == 8 and seen[0] == ("SE_2_1", (2, 64))


# -- safety ------------------------------------------------------------------------------------


def test_hooks_removed_on_exit_and_when_forward_raises():
    model = _se_net()
    before = _hook_count(model)
    with attnviz.capture(model) as cache, torch.no_grad():
        assert _hook_count(model) > before
        model(torch.randn(1, 3, 32, 32))
    assert _hook_count(model) == before
    assert len(cache) == 8
    with pytest.raises(RuntimeError), attnviz.capture(model), torch.no_grad():
        model(torch.randn(1, 5, 32, 32))  # wrong channel count raises inside the forward
    assert _hook_count(model) == before
    with (
        pytest.raises(ValueError, match="query"),
        attnviz.capture(
            timm.create_model("resnet18", block_args=dict(attn_layer="nl")).eval(),
            queries=[(99, 0)],
        ) as _,
    ):
        raise ValueError("query")  # body raising also removes the hooks


def test_model_is_left_exactly_as_it_was():
    model = timm.create_model("skresnet18", pretrained=False)
    model.train()
    model.layer2.eval()  # mixed training flags must survive
    twin = copy.deepcopy(model)
    flags = {n: m.training for n, m in model.named_modules()}
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    with attnviz.capture(model):
        y = model(x)
    torch.manual_seed(1)
    y_twin = twin(x)
    assert torch.equal(y, y_twin)  # capture changes nothing in the computation
    assert {n: m.training for n, m in model.named_modules()} == flags
    for (k, v), (k2, v2) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


@pytest.mark.parametrize("ctx", [torch.no_grad, torch.inference_mode, torch.enable_grad])
def test_works_under_grad_modes(ctx):
    model = _se_net()
    x = torch.randn(2, 3, 32, 32)
    with attnviz.capture(model) as cache, ctx():
        model(x)
    assert len(cache) == 8
    assert not any(t.requires_grad for t in cache.values())


def test_no_fx_proxy_lands_in_the_cache():
    model = _se_net()
    with attnviz.capture(model) as cache:
        graph_module = torch.fx.symbolic_trace(model)
    assert len(cache) == 0
    with attnviz.capture(model) as cache, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert all(isinstance(t, torch.Tensor) for t in cache.values())
    assert graph_module is not None


def test_thousand_captures_do_not_grow_memory():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), TinySE(8), TinySE(8)).eval()
    attnviz.register_adapter(TinySE, kind="se", read="sigmoid")
    try:
        x = torch.randn(2, 3, 16, 16)
        proc = psutil.Process()
        refs = []

        def loop(n: int) -> None:
            for _ in range(n):
                with attnviz.capture(model) as cache, torch.no_grad():
                    model(x)
                assert cache["1"].shape == (2, 8)
                refs.append(weakref.ref(cache))

        loop(200)
        gc.collect()
        rss0 = proc.memory_info().rss
        loop(1000)
        gc.collect()
        growth = proc.memory_info().rss - rss0
        assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 1,000 captures"
        assert sum(r() is not None for r in refs) == 0  # no cache outlives its use
        assert _hook_count(model) == 0
    finally:
        unregister_adapter(TinySE)


# -- user adapters and errors --------------------------------------------------------------------


def test_register_adapter_supports_a_users_module():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), TinySE(4))
    with pytest.raises(attnviz.NoAttentionSitesError) as err:
        attnviz.find_sites(model) or attnviz.capture(model)
    msg = str(err.value)
    assert "Sequential" in msg and "register_adapter" in msg and "SEModule" in msg
    attnviz.register_adapter(TinySE, kind="se", read="sigmoid")
    try:
        model.eval()
        x = torch.randn(2, 3, 8, 8)
        with attnviz.capture(model, io=True) as cache, torch.no_grad():
            model(x)
        (site,) = cache.sites
        assert site.alias == "SE_1" and site.family == "user"
        a = cache["1"]
        assert torch.allclose(cache.inputs("1") * a[:, :, None, None], cache.outputs("1"))
    finally:
        unregister_adapter(TinySE)


def test_plain_model_raises_no_attention_sites_error():
    model = torchvision.models.resnet18()
    assert attnviz.find_sites(model) == []
    with pytest.raises(attnviz.NoAttentionSitesError, match="ResNet.*register_adapter"):
        attnviz.capture(model)


def test_unknown_kind_or_site_lists_the_valid_ones():
    model = _se_net()
    with pytest.raises(ValueError, match="valid kinds: .*'sk'"):
        attnviz.capture(model, kinds=["squeeze"])
    with pytest.raises(ValueError, match="valid sites: SE_2_1 \\(layer1.0.se\\)"):
        attnviz.capture(model, sites=["SE_9_9"])
    with pytest.raises(attnviz.NoAttentionSitesError, match="of kind \\['sk'\\].*\\['se'\\]"):
        attnviz.capture(model, kinds="sk")
    with pytest.raises(ValueError, match="unknown reduction"):
        attnviz.capture(model, reduce="median")


def test_out_of_range_queries_name_the_grid():
    model = timm.create_model("resnet18", block_args=dict(attn_layer="nl")).eval()
    with pytest.raises(ValueError, match="outside the 16x16 query grid of site NL_2_1"):
        with attnviz.capture(model, queries=[(16, 0)]), torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
    assert _hook_count(model) == 0


def test_callable_queries_choose_cells_from_the_grid():
    model = timm.create_model("resnet18", block_args=dict(attn_layer="nl")).eval()
    x = torch.randn(1, 3, 64, 64)
    grids = []

    def centre(grid):
        grids.append(grid)
        return [(grid[0] // 2, grid[1] // 2)]

    with attnviz.capture(model, sites=["NL_2_1", "NL_3_1"], queries=centre) as sel:
        with torch.no_grad():
            model(x)
    with attnviz.capture(model, sites=["NL_2_1", "NL_3_1"]) as full, torch.no_grad():
        model(x)
    assert grids == [(16, 16), (8, 8)]  # called once per site, with that site's grid
    for alias, (h, w) in (("NL_2_1", (16, 16)), ("NL_3_1", (8, 8))):
        name = sel.site(alias).name
        row = (h // 2) * w + w // 2
        assert sel.meta[name]["queries"] == [(h // 2, w // 2)]
        assert torch.allclose(sel[name], full[name][:, [row]], atol=1e-6)


@pytest.mark.parametrize("arch", ["resnet18", "botnet26t_256"])
def test_intercepted_sites_capture_under_inference_mode(arch):
    """Sites read through an intercepted function (timm's functional Non-local softmax, the
    BoTNet softmax) once raised "Inference tensors do not track version counter" under
    torch.inference_mode(); the maps must equal those of a no_grad forward, whichever context
    is entered first."""
    kw = {"block_args": {"attn_layer": "nl"}} if arch == "resnet18" else {"img_size": 64}
    model = timm.create_model(arch, pretrained=False, **kw).eval()
    x = torch.randn(2, 3, 64, 64)
    with attnviz.capture(model) as ref, torch.no_grad():
        y_ref = model(x)
    with attnviz.capture(model) as inner, torch.inference_mode():
        y_inner = model(x)
    with torch.inference_mode(), attnviz.capture(model) as outer:
        model(x)
    assert list(ref) and list(inner) == list(ref) == list(outer)
    torch.testing.assert_close(y_inner, y_ref)
    for key in ref:
        torch.testing.assert_close(inner[key], ref[key], rtol=0, atol=0)
        torch.testing.assert_close(outer[key], ref[key], rtol=0, atol=0)
