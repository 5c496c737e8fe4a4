"""Capture pitfalls (issue 10, point 7) and the facts a kind carries (point 8).

Threads each see only their own forwards; a ``torch.compile``d model is never silently empty;
full per-query maps above the size threshold warn; query cells must be whole grid cells and
``queries=`` needs a per-query site; kinds carry role and per-query facts themselves.
"""

from __future__ import annotations

import threading

import pytest
import timm
import torch
from torch import nn

import attnviz
from attnviz.capture import (
    KINDS,
    CompiledModelError,
    Kind,
    get_kind,
    is_query_kind,
    kinds_with_role,
    query_kinds,
    register_kind,
)
from attnviz.capture import core as capture_core
from attnviz.errors import NoAttentionSitesError


def _se_model() -> nn.Module:
    from timm.layers.squeeze_excite import SEModule

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SEModule(16)).eval()


def _nl_model() -> nn.Module:
    return timm.create_model("resnet18", pretrained=False, block_args=dict(attn_layer="nl")).eval()


# -- threads ------------------------------------------------------------------------------------


def _bot_model() -> nn.Module:
    from timm.layers.bottleneck_attn import BottleneckAttn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 1), BottleneckAttn(16, feat_size=(8, 8), num_heads=2))


@pytest.mark.parametrize("factory", [_se_model, _bot_model], ids=["se-gate", "bottleneck-softmax"])
def test_each_thread_records_only_its_own_forwards(factory):
    model = factory().eval()
    inputs = [torch.randn(2, 3, 8, 8) for _ in range(2)]
    expected = []
    for x in inputs:
        with attnviz.capture(model) as cache, torch.no_grad():
            model(x)
        expected.append(cache["1"])
    n_forwards = 30
    barrier = threading.Barrier(2)
    caches: list = [None, None]
    errors: list = []

    def work(i: int) -> None:
        try:
            with attnviz.capture(model) as cache, torch.no_grad():
                barrier.wait()  # both contexts are active before either runs a forward
                for _ in range(n_forwards):
                    model(inputs[i])
                barrier.wait()  # and stay active until both are done
            caches[i] = cache
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i in range(2):
        got = caches[i]["1"]
        assert got.shape == (2 * n_forwards, *expected[i].shape[1:])
        reps = (n_forwards,) + (1,) * (got.dim() - 1)
        assert torch.equal(got, expected[i].repeat(*reps)), f"thread {i} mixed"
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0


def test_forwards_of_another_thread_are_ignored():
    model = _se_model()
    with attnviz.capture(model) as cache, torch.no_grad():
        t = threading.Thread(target=lambda: model(torch.randn(1, 3, 8, 8)))
        t.start()
        t.join()
        assert len(cache) == 0
        model(torch.randn(3, 3, 8, 8))
    assert cache["1"].shape == (3, 16)


# -- torch.compile -------------------------------------------------------------------------------


def test_compiled_model_is_refused_with_a_clear_error_never_empty():
    model = _se_model()
    compiled = torch.compile(model)  # wrapping only; nothing is compiled until it is called
    with pytest.warns(UserWarning, match="_orig_mod"):
        sites = attnviz.find_sites(compiled)
    assert [s.name for s in sites] == ["1"]  # names relative to the original module
    with pytest.raises(CompiledModelError, match=r"capture\(model\._orig_mod\)"):
        attnviz.capture(compiled)
    # the suggested way works
    with attnviz.capture(compiled._orig_mod) as cache, torch.no_grad():
        compiled._orig_mod(torch.randn(1, 3, 8, 8))
    assert cache["1"].shape == (1, 16)


# -- size of full per-query maps ------------------------------------------------------------------


def test_full_query_maps_above_the_threshold_warn(monkeypatch):
    model = _nl_model()
    x = torch.randn(1, 3, 64, 64)  # NL maps of 256^2, 64^2, 16^2, 4^2 floats, two of each: 0.6 MiB
    monkeypatch.setattr(capture_core, "FULL_MAP_WARN_BYTES", 2**19)  # 0.5 MiB instead of 1 GiB
    with pytest.warns(ResourceWarning, match=r"GiB.*queries=.*reduce="):
        with attnviz.capture(model), torch.no_grad():
            model(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with attnviz.capture(model, queries=[(0, 0)]), torch.no_grad():
            model(x)
        with attnviz.capture(model, reduce="entropy"), torch.no_grad():
            model(x)


def test_threshold_is_one_gib():
    assert capture_core.FULL_MAP_WARN_BYTES == 2**30


# -- query cells ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", [(2.5, 3), (1, 0.5), ("1", 2), (1, 2, 3), (float("nan"), 1)])
def test_bad_query_cells_raise(cell):
    with pytest.raises(ValueError, match="query|queries"):
        attnviz.capture(_nl_model(), queries=[cell])


def test_whole_float_and_tensor_cells_are_accepted():
    model = _nl_model()
    x = torch.randn(1, 3, 64, 64)
    with attnviz.capture(model, sites=["NL_2_1"], queries=[(2.0, 3), (torch.tensor(1), 4)]) as c:
        with torch.no_grad():
            model(x)
    name = c.site("NL_2_1").name
    assert c.meta[name]["queries"] == [(2, 3), (1, 4)]


def test_callable_queries_with_fractional_cells_raise_at_the_forward():
    model = _nl_model()
    with pytest.raises(ValueError, match="whole grid cells"):
        with attnviz.capture(model, queries=lambda grid: [(grid[0] / 3, 0)]), torch.no_grad():
            model(torch.randn(1, 3, 64, 64))


def test_queries_without_a_per_query_site_raise():
    with pytest.raises(ValueError, match="none of the selected sites is per-query"):
        attnviz.capture(_se_model(), queries=[(0, 0)])
    with pytest.raises(ValueError, match="per-query"):
        attnviz.capture(timm.create_model("gcresnet33ts"), queries=[(0, 0)])
    with pytest.raises(ValueError, match="per-query"):  # a selection without per-query sites
        attnviz.capture(_nl_model(), kinds="nl", sites=[], queries=[(0, 0)])
    attnviz.capture(_nl_model(), queries=[(0, 0)])  # fine: NL sites are per-query


# -- kind facts ----------------------------------------------------------------------------------


def test_kinds_carry_role_and_per_query():
    assert set(kinds_with_role("query")) >= {"nl", "sa", "pam", "bottleneck", "halo"}
    assert query_kinds() == kinds_with_role("query")
    assert set(kinds_with_role("channel")) >= {"se", "eca", "cbam_channel", "cse", "bam_channel"}
    assert set(kinds_with_role("channel")) >= {"splat_gate", "ge"}
    assert set(kinds_with_role("branch")) == {"sk", "splat"}
    assert set(kinds_with_role("spatial")) == {"cbam_spatial", "gc", "sse", "bam_spatial"}
    for name, kind in KINDS.items():
        assert kind.per_query == (kind.role == "query") == is_query_kind(name)
    assert get_kind("bottleneck").query_axis == 2 and get_kind("nl").query_axis == 1
    import sys

    assert not hasattr(sys.modules["attnviz.capture"], "register_query_kind")
    assert not hasattr(capture_core, "_QUERY_KINDS")
    with pytest.raises(ValueError, match="unknown role"):
        kinds_with_role("queries")


def test_a_registered_kind_brings_its_own_facts():
    kind = Kind("my_q", "MYQ", ("batch", "query", "key"), lambda t: t, "test", role="query")
    try:
        register_kind(kind)
        assert is_query_kind("my_q") and "my_q" in query_kinds()
    finally:
        KINDS.pop("my_q", None)
    with pytest.raises(ValueError, match="role"):
        Kind("bad", "BAD", ("batch",), lambda t: t, "test", role="pixel")
    with pytest.raises(ValueError, match="query"):
        Kind("bad", "BAD", ("batch", "row"), lambda t: t, "test", role="query")


# -- unread attention-like modules ----------------------------------------------------------------


class PixelAttention(nn.Module):
    """A made-up attention no adapter reads: a softmax over positions, applied as a gate."""

    def __init__(self, channels: int):
        super().__init__()
        self.logits = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        return x * self.logits(x).flatten(1).softmax(-1).view(b, 1, h, w)


def test_no_sites_error_names_unread_modules_and_lists_types_once():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), PixelAttention(8))  # no adapter reads it
    with pytest.raises(NoAttentionSitesError) as info:
        attnviz.capture(model)
    msg = str(info.value)
    assert "1 PixelAttention module is not read (no adapter): 1" in msg
    assert "register_adapter(PixelAttention" in msg
    types = msg.split("Supported module types: ")[1].split(".")[0].split(", ")
    assert len(types) == len(set(types)) and "SEModule" in types and "HaloAttn" in types


def test_a_user_adapter_makes_a_module_read():
    from attnviz.capture import register_adapter, unread_modules, unregister_adapter

    model = nn.Sequential(PixelAttention(8))
    assert unread_modules(model) == {"PixelAttention": ["0"]}
    register_adapter(PixelAttention, kind="se", read="logits")
    try:
        assert unread_modules(model) == {}
        assert [s.kind for s in attnviz.find_sites(model)] == ["se"]
    finally:
        unregister_adapter(PixelAttention)


def test_a_class_declared_without_attention_weights_is_neither_site_nor_unread():
    from attnviz.capture.core import not_attention_modules, unread_modules
    from attnviz.capture.registry import _NOT_ATTENTION, declare_not_attention

    model = nn.Sequential(PixelAttention(8), PixelAttention(8))
    declare_not_attention(PixelAttention, "a made-up reason")
    try:
        assert unread_modules(model) == {} and attnviz.find_sites(model) == []
        assert not_attention_modules(model) == {"PixelAttention": ("a made-up reason", ["0", "1"])}
    finally:
        _NOT_ATTENTION.pop(f"{PixelAttention.__module__}.{PixelAttention.__qualname__}")
    assert unread_modules(model) == {"PixelAttention": ["0", "1"]}


# -- intercepted functional softmax: nothing left behind -----------------------------------------


def test_intercepting_mode_is_removed_when_the_forward_raises():
    from timm.layers.bottleneck_attn import BottleneckAttn

    model = nn.Sequential(BottleneckAttn(16, feat_size=(4, 4), num_heads=2)).eval()
    assert torch._C._len_torch_function_stack() == 0
    with pytest.raises(AssertionError):
        with attnviz.capture(model), torch.no_grad():
            model(torch.randn(1, 16, 5, 5))  # not its size: raises inside the module
    assert torch._C._len_torch_function_stack() == 0
    with attnviz.capture(model) as cache, torch.no_grad():
        model(torch.randn(2, 16, 4, 4))
    assert cache["0"].shape == (2, 2, 16, 16)
    assert torch._C._len_torch_function_stack() == 0
