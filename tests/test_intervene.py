"""attnviz.intervene: each policy proven against an independent oracle, on modules no other test
tunes (timm, torchvision and the reference blocks at random weights), plus composition with
capture, the model left exactly as before, thread scoping and one-line refusals."""

from __future__ import annotations

import copy
import threading

import pytest
import timm
import torch
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.cbam import CbamModule, LightCbamModule
from timm.layers.global_context import GlobalContext
from timm.layers.halo_attn import HaloAttn
from timm.layers.non_local_attn import NonLocalAttn
from timm.layers.selective_kernel import SelectiveKernel
from timm.layers.split_attn import SplitAttn
from torch import nn

import attnviz
from attnviz.capture import NotWritableError, PolicyError, get_kind, get_policy
from attnviz.capture.policies import Shuffle


@pytest.fixture(autouse=True)
def _no_grad():
    """Forwards without autograd here, and only here (a module-level
    ``torch.set_grad_enabled(False)`` would leak into the worker's later tests)."""
    with torch.no_grad():
        yield


def _randomise(m: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere (timm zero-initialises NL's norm and GC's last conv)."""
    g = torch.Generator().manual_seed(seed)
    for p in m.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    for b in m.buffers():
        if b.dtype.is_floating_point and b.dim() == 1:  # BN running stats
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return m.eval()


def _wrap(module: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Identity(), module).eval()


def _hooks_empty(model: nn.Module) -> bool:
    return (
        all(not (m._forward_hooks or m._forward_pre_hooks) for m in model.modules())
        and torch._C._len_torch_function_stack() == 0
    )


# ----------------------------------------------------------------------------- oracles
def test_timm_se_constant_one_equals_se_removed():
    model = _randomise(timm.create_model("seresnet18", num_classes=7))
    oracle = copy.deepcopy(model)
    for name, m in list(oracle.named_modules()):
        if type(m).__name__ == "SEModule":
            parent, _, child = name.rpartition(".")
            setattr(oracle.get_submodule(parent), child, nn.Identity())
    x = torch.randn(2, 3, 64, 72)
    with attnviz.intervene(model, {"se": "constant:1"}) as iv:
        y = model(x)
    assert len(iv.sites) == 8
    assert torch.equal(y, oracle(x))
    assert not torch.allclose(model(x), y)  # the SE gates did matter
    assert _hooks_empty(model)


def test_torchvision_se_constant_one_equals_se_removed():
    import torchvision

    model = _randomise(torchvision.models.mobilenet_v3_small(num_classes=5), seed=1)
    oracle = copy.deepcopy(model)
    for name, m in list(oracle.named_modules()):
        if type(m).__name__ == "SqueezeExcitation":
            parent, _, child = name.rpartition(".")
            setattr(oracle.get_submodule(parent), child, nn.Identity())
    x = torch.randn(2, 3, 48, 40)
    with attnviz.intervene(model, {"all": "constant:1"}):
        y = model(x)
    assert torch.equal(y, oracle(x))


def test_sk_branch_k_equals_that_branch_and_uniform_their_mean():
    sk = _randomise(SelectiveKernel(16, 16), seed=2)
    model = _wrap(sk)
    x = torch.randn(3, 16, 9, 11)
    parts = x.split(8, dim=1) if sk.split_input else (x, x)  # what each branch sees
    paths = [sk.paths[k](parts[k]) for k in (0, 1)]
    for k in (0, 1):
        with attnviz.intervene(model, {"sk": f"branch:{k}"}):
            y = model(x)
        torch.testing.assert_close(y, paths[k], rtol=0, atol=0)
    with attnviz.intervene(model, {"sk": "uniform"}):
        y = model(x)
    torch.testing.assert_close(y, 0.5 * paths[0] + 0.5 * paths[1])


def test_timm_nonlocal_query_mean_equals_hand_computation():
    nl = _randomise(NonLocalAttn(12), seed=3)
    model = _wrap(nl)
    x = torch.randn(2, 12, 5, 7)
    with attnviz.intervene(model, {"nl": "query_mean"}):
        y = model(x)
    b, c, h, w = x.shape
    t = nl.t(x).flatten(2).transpose(1, 2)
    p = nl.p(x).flatten(2)
    g = nl.g(x).flatten(2).transpose(1, 2)
    att = torch.softmax(t @ p * nl.scale, dim=2)
    att = att.mean(dim=1, keepdim=True).expand_as(att)  # every row = the mean row
    z = (att @ g).transpose(1, 2).reshape(b, -1, h, w)
    expected = nl.norm(nl.z(z)) + x
    torch.testing.assert_close(y, expected)
    # rows identical -> the block adds the same vector at every position
    delta = (y - x).flatten(2)
    torch.testing.assert_close(delta, delta[..., :1].expand_as(delta))


def test_timm_gc_uniform_is_average_pooling_context():
    gc = _randomise(GlobalContext(16, fuse_add=True, fuse_scale=True), seed=4)
    model = _wrap(gc)
    x = torch.randn(2, 16, 6, 9)
    with attnviz.intervene(model, {"gc": "uniform"}):
        y = model(x)
    context = x.mean(dim=(2, 3), keepdim=True)  # softmax replaced by 1/HW: mean pooling
    expected = x * gc.gate(gc.mlp_scale(context)) + gc.mlp_add(context)
    torch.testing.assert_close(y, expected)


def test_timm_cbam_and_light_cbam_gates_one_are_identity():
    for cls in (CbamModule, LightCbamModule):
        model = _wrap(_randomise(cls(16), seed=5))
        x = torch.randn(2, 16, 7, 5)
        with attnviz.intervene(model, {"all": "constant:1"}) as iv:
            y = model(x)
        assert {s.kind for s in iv.sites} == {"cbam_channel", "cbam_spatial"}
        assert torch.equal(y, x)
        assert not torch.allclose(model(x), x)


def test_splat_branch_selects_one_split():
    sa = _randomise(SplitAttn(8, 8, radix=2), seed=6)
    model = _wrap(sa)
    x = torch.randn(2, 8, 6, 6)
    feats = {}
    handle = sa.act0.register_forward_hook(lambda m, i, o: feats.__setitem__("x", o))
    with attnviz.intervene(model, {"splat": "branch:1"}):
        y = model(x)
    handle.remove()
    splits = feats["x"].reshape(2, 2, 8, 6, 6)
    torch.testing.assert_close(y, splits[:, 1], rtol=0, atol=0)


def test_bottleneck_query_mean_makes_the_output_position_independent():
    bot = _randomise(BottleneckAttn(16, 16, feat_size=(6, 6), num_heads=2), seed=7)
    model = _wrap(bot)
    x = torch.randn(2, 16, 6, 6)
    with attnviz.capture(model) as plain:
        model(x)
    with attnviz.intervene(model, {"bottleneck": "query_mean"}), attnviz.capture(model) as c:
        y = model(x)
    att = c["1"]
    torch.testing.assert_close(att, plain["1"].mean(2, keepdim=True).expand_as(att))
    flat = y.flatten(2)  # attn @ v with identical rows: the same vector at every position
    torch.testing.assert_close(flat, flat[..., :1].expand_as(flat))


def test_reference_blocks_every_policy_matches_a_hand_replacement():
    """On the bundled models (reference blocks): the capture inside the intervention reads
    exactly the policy applied by hand to the plain capture."""
    model, _ = attnviz.load_model("mix_tiny")
    x = torch.randn(3, 3, 64, 64)
    with attnviz.capture(model) as plain:
        model(x)
    for site in plain.sites:
        kind = get_kind(site.kind)
        a = plain[site.name]
        cases = {"constant:0.5": torch.full_like(a, 0.5), "shuffle:3": a[Shuffle(3).partners(3)]}
        if kind.role == "query":
            cases["query_mean"] = a.mean(1, keepdim=True).expand_as(a)
        if kind.role == "branch":
            cases["branch:1"] = torch.zeros_like(a).index_fill_(1, torch.tensor([1]), 1.0)
        for policy, expected in cases.items():
            with (
                attnviz.intervene(model, {site.alias: policy}),
                attnviz.capture(model, sites=site.name) as c,
            ):
                model(x)
            torch.testing.assert_close(c[site.name], expected, msg=f"{site.alias} {policy}")


def test_patch_with_own_attention_is_exact_and_interchange_reads_the_source():
    for name in ("sk_tiny", "nl_tiny", "gc_tiny", "cbam_tiny"):
        model, _ = attnviz.load_model(name)
        x, x2 = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
        with attnviz.capture(model) as src:
            y = model(x)
        with attnviz.intervene(model, {"all": "patch"}, source=src):
            assert torch.equal(model(x), y), name
        with attnviz.capture(model) as src2:
            model(x2)
        site = src.sites[-1]
        with (
            attnviz.intervene(model, {site.alias: "patch"}, source=src2),
            attnviz.capture(model) as c,
        ):
            model(x)
        torch.testing.assert_close(c[site.name], src2[site.name])


def test_capture_reads_the_written_attention_whichever_context_comes_first():
    nl = _randomise(NonLocalAttn(8), seed=8)  # read by recomputation from t and p
    gc = _randomise(GlobalContext(8), seed=9)  # written at the functional softmax
    model = nn.Sequential(nl, gc).eval()
    x = torch.randn(2, 8, 4, 5)
    with attnviz.intervene(model, {"all": "uniform"}), attnviz.capture(model) as inner:
        model(x)
    with attnviz.capture(model) as outer, attnviz.intervene(model, {"all": "uniform"}):
        model(x)
    for cache in (inner, outer):
        torch.testing.assert_close(cache["0"], torch.full((2, 20, 20), 1 / 20))
        torch.testing.assert_close(cache["1"], torch.full((2, 4, 5), 1 / 20))
    with (
        attnviz.intervene(model, {"all": "uniform"}),
        attnviz.capture(model, queries=[(1, 2)]) as rows,
    ):
        model(x)
    assert rows["0"].shape == (2, 1, 20)


def test_model_left_exactly_as_before_also_after_an_error():
    model, _ = attnviz.load_model("gc_tiny")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    with pytest.raises(RuntimeError), attnviz.intervene(model, {"all": "uniform"}):
        model(torch.randn(2, 5, 64, 64))  # wrong channels: the forward raises inside
    assert _hooks_empty(model)
    with attnviz.intervene(model, {"all": "uniform"}):
        model(x)
    assert _hooks_empty(model)
    assert torch.equal(model(x), y)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model.training


def test_other_threads_are_not_intervened():
    model, _ = attnviz.load_model("se_tiny")
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    out = {}
    with attnviz.intervene(model, {"all": "constant:0"}):
        t = threading.Thread(target=lambda: out.setdefault("y", model(x)))
        t.start()
        t.join()
        assert not torch.allclose(model(x), y)
    assert torch.equal(out["y"], y)


# ----------------------------------------------------------------------------- refusals
def test_bad_policies_sites_and_kinds_are_refused_in_one_line():
    model, _ = attnviz.load_model("se_tiny")
    valid = "unknown policy 'zero'; valid policies: constant:V, remove"
    with pytest.raises(PolicyError, match=valid):
        attnviz.intervene(model, {"all": "zero"})
    with pytest.raises(ValueError, match="unknown site 'SE_9_9'; valid sites: SE_2_1"):
        attnviz.intervene(model, {"SE_9_9": "constant:1"})
    with pytest.raises(PolicyError, match=r"cannot apply to site SE_2_1 .* \(role channel\)"):
        attnviz.intervene(model, {"all": "branch:0"})
    with pytest.raises(PolicyError, match="needs a value"):
        attnviz.intervene(model, {"all": "constant"})
    with pytest.raises(PolicyError, match="needs reference"):
        attnviz.intervene(model, {"all": "mean"})
    with pytest.raises(PolicyError, match="needs source"):
        attnviz.intervene(model, {"all": "patch"})
    with pytest.raises(PolicyError, match="'x' is not a whole number"):
        get_policy("branch:x")
    sk, _ = attnviz.load_model("sk_tiny")
    with pytest.raises(PolicyError, match="has 2 branches"):
        attnviz.intervene(sk, {"sk": "branch:2"})
    with pytest.raises(PolicyError, match="batch of at least 2"):
        with attnviz.intervene(model, {"all": "shuffle"}):
            model(torch.randn(1, 3, 64, 64))
    assert _hooks_empty(model)


def test_patch_source_of_another_shape_is_a_clear_error():
    model, _ = attnviz.load_model("nl_tiny")
    with attnviz.capture(model) as src:
        model(torch.randn(2, 3, 48, 48))
    with pytest.raises(PolicyError, match=r"patch source of NL_\w+ has shape .* same batch size"):
        with attnviz.intervene(model, {"nl": "patch"}, source=src):
            model(torch.randn(2, 3, 64, 64))
    assert _hooks_empty(model)


def test_unwritable_sites_are_refused_before_any_forward():
    halo = _wrap(HaloAttn(16, 16, feat_size=(8, 8), block_size=4, halo_size=1, num_heads=2))
    with pytest.raises(NotWritableError, match="cannot intervene on .* windows are reordered"):
        attnviz.intervene(halo, {"all": "uniform"})
    assert _hooks_empty(halo)


def test_mean_policy_uses_the_reference_per_channel():
    model, _ = attnviz.load_model("se_tiny")
    x = torch.randn(4, 3, 64, 64)
    with attnviz.capture(model) as plain:
        model(x)
    reference = {s.name: plain[s.name].mean(0) for s in plain.sites}
    with (
        attnviz.intervene(model, {"all": "mean"}, reference=reference),
        attnviz.capture(model) as c,
    ):
        model(x)
    site = plain.sites[0]
    torch.testing.assert_close(c[site.name], reference[site.name].expand(4, -1))


def test_shuffle_partners_are_a_seeded_derangement():
    for n in (2, 3, 7, 16):
        p = Shuffle(5).partners(n)
        assert sorted(p.tolist()) == list(range(n))
        assert all(p[i] != i for i in range(n))
        assert torch.equal(p, Shuffle(5).partners(n))
    assert not torch.equal(Shuffle(1).partners(16), Shuffle(2).partners(16))


def test_a_user_policy_joins_the_registry_and_the_context_is_an_intervention():
    from attnviz.capture import POLICIES, Intervention, Policy, register_policy

    @register_policy
    class Half(Policy):
        """Every gate at half its value."""

        name = "half"
        roles = ("channel",)

        @classmethod
        def parse(cls, arg, spec):
            return cls()

        def apply(self, att, ctx):
            return att * 0.5

    try:
        model, _ = attnviz.load_model("se_tiny")
        x = torch.randn(2, 3, 64, 64)
        with attnviz.capture(model, sites="SE_3_1") as plain:
            model(x)
        ctx = attnviz.intervene(model, {"SE_3_1": "half"})
        assert isinstance(ctx, Intervention) and ctx.policies == {"layer2.0.attn": Half()}
        with ctx, attnviz.capture(model, sites="SE_3_1") as c:
            model(x)
        torch.testing.assert_close(c["SE_3_1"], plain["SE_3_1"] * 0.5)
        sk, _ = attnviz.load_model("sk_tiny")
        with pytest.raises(PolicyError, match="'half' cannot apply to site SK_2_1"):
            attnviz.intervene(sk, {"all": "half"})
    finally:
        POLICIES.pop("half")
