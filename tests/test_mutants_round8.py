"""Tests for the survivors of the eighth held-out round of the sampled mutation run (TESTING.md,
"Whole package by sampling"; capture, commands and models only). The classes they catch:
clean-up paths no forward reaches (an interception left entered, an intervention left without
a forward), a user adapter registered by its dotted name (the built-in ones register before any
mutant acts), refusals read whole (a policy's argument, a kind that is no distribution, an
input or output not recorded, an unknown baseline) and an interrupt's message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import attnviz
from attnviz.cli import main


# ----------------------------------------------------------------------------- capture
def test_removing_a_listener_leaves_an_interception_its_forward_left_entered():
    """Normally the post-hook leaves the mode; a listener removed while its mode is still
    entered (the forward never reached the hook) leaves it too, and the point goes away."""
    from attnviz.capture.core import CallListener, _InterceptionPoint

    module = nn.Linear(2, 2)
    listener = CallListener(("softmax",), lambda name, out: out, order=1)
    depth = torch._C._len_torch_function_stack()
    _InterceptionPoint.add(module, listener)
    point = _InterceptionPoint._points[id(module)]
    point._enter(module, ())
    assert torch._C._len_torch_function_stack() == depth + 1
    _InterceptionPoint.remove(module, listener)
    assert torch._C._len_torch_function_stack() == depth
    assert id(module) not in _InterceptionPoint._points
    assert module._forward_pre_hooks == {} and module._forward_hooks == {}


def test_an_intervention_on_an_intercepted_softmax_without_a_forward_exits_cleanly():
    from timm.models.vision_transformer import Attention

    from attnviz.capture.core import _WRITTEN

    model = nn.Sequential(Attention(8, num_heads=2)).eval()
    model[0].fused_attn = False
    with attnviz.intervene(model, {"all": "uniform"}):
        pass
    with torch.no_grad(), attnviz.intervene(model, {"all": "uniform"}):
        model(torch.randn(1, 5, 8))
    assert not any(key[1] == id(model[0]) for key in _WRITTEN)


def test_a_user_adapter_registered_by_its_dotted_name_reads_its_module():
    """``register_adapter("package.module.Class", ...)``: the key is the string itself."""
    from attnviz.capture.registry import registered_adapters, unregister_adapter

    class Gate(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return x * torch.sigmoid(self.fc(x))

    key = f"{Gate.__module__}.{Gate.__qualname__}"
    from attnviz.capture.registry import Reading

    read = attnviz.Computed(("fc",), lambda m, taps, inputs, output, rows: Reading(
        torch.sigmoid(taps["fc"])
    ))  # fmt: skip
    attnviz.register_adapter(key, kind="se", read=read)
    try:
        assert key in registered_adapters()
        model = nn.Sequential(Gate()).eval()
        x = torch.randn(3, 4)
        with torch.no_grad(), attnviz.capture(model) as cache:
            model(x)
            expected = torch.sigmoid(model[0].fc(x))
        torch.testing.assert_close(cache["0"], expected)
    finally:
        unregister_adapter(key)
    assert key not in registered_adapters()


def test_uniform_refuses_a_kind_that_is_neither_a_distribution_nor_a_map_whole():
    from attnviz.capture.policies import PolicyError, get_policy
    from attnviz.capture.site import Site

    site = Site(name="m.gate", kind="ela", alias="ELA_2_1", dims=("batch", "channel", "height"),
                module_type="x.ELA", family="timm")  # fmt: skip
    with pytest.raises(PolicyError) as err:
        get_policy("uniform").check(site)
    assert str(err.value) == (
        "policy 'uniform' cannot apply to site ELA_2_1 of kind 'ela': its attention is not a "
        "distribution or a spatial map; use constant or mean"
    )


def test_a_policy_without_arguments_refuses_one_whole():
    from attnviz.capture.policies import PolicyError, get_policy

    with pytest.raises(PolicyError) as err:
        get_policy("uniform:3")
    assert str(err.value) == "policy 'uniform' takes no argument, got 'uniform:3'"


def test_inputs_not_recorded_are_one_key_error_naming_the_option():
    model = nn.Sequential(attnviz.blocks.SEBlock(8)).eval()
    with torch.no_grad(), attnviz.capture(model) as cache:
        model(torch.randn(1, 8, 3, 5))
    for method, which in ((cache.inputs, "input"), (cache.outputs, "output")):
        with pytest.raises(KeyError) as err:
            method("0")
        assert err.value.args == (f"no {which} recorded for '0': use capture(..., io=True)",)


# ----------------------------------------------------------------------------- commands, models
def test_an_interrupted_command_says_so_and_exits_130(monkeypatch, capsys):
    import attnviz.commands.sites as sites

    def interrupt(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sites, "run", interrupt)
    assert main(["sites", "se_tiny"]) == 130
    assert capsys.readouterr().err == "attnviz sites: interrupted\n"


def test_an_unknown_baseline_names_the_known_ones():
    from attnviz.models.baselines import BaselineError, baseline_models

    with pytest.raises(BaselineError) as err:
        baseline_models(nn.Linear(2, 2), "shuffled", 1)
    assert str(err.value) == "unknown baseline 'shuffled'; use permuted or untrained"


def test_the_query_viewer_shows_the_site_the_analysis_mapped_not_the_first(tmp_path):
    """With two Non-local sites and the maps taken at the second, the viewer's maps are the
    second's (``viewer_maps`` alone would take the first)."""
    from types import SimpleNamespace

    from PIL import Image

    from attnviz.blocks import NonLocalBlock
    from attnviz.commands.queries import viewer_result

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), NonLocalBlock(8), NonLocalBlock(8)).eval()
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (24, 16), (90, 20, 200)).save(images / "a.png")
    result = SimpleNamespace(map_site={"name": "2", "kind": "nl"}, ids=["a.png"], model="two_nl")
    preprocess = {"input_size": (3, 16, 24), "crop_pct": 1.0, "interpolation": "bilinear"}
    maps = viewer_result(model, str(images), result, preprocess)
    assert maps.site["name"] == "2" and maps.meta["model"] == "two_nl"
    assert maps.grid_maps.shape[-2:] == (4, 6)


def test_rollout_keeps_as_many_display_images_as_it_draws(cli, tmp_path):
    """``--figure-images 1`` of 4 images: the result keeps the display image of one (the
    analysis's own default is 3)."""
    from attnviz.analysis.rollout import RolloutResult

    images = tmp_path / "images"
    assert cli("data", "make-shapes", images, "--n-per-class", "1", "--size", "64").code == 0
    out = tmp_path / "out"
    r = cli(
        "rollout", "--model", "vit_tiny_patch16_224", "--input-size", "32", "48", "--images",
        images, "--out", out, "--limit", "4", "--figure-images", "1", "--no-progress",
    )  # fmt: skip
    assert r.code == 0, r.err
    result = RolloutResult.load(out / "result")
    assert len(result.ids) == 4 and result.images.shape[0] == 1  # the analysis default: 3


def test_a_compiled_model_lists_its_sites_with_the_whole_warning():
    model = nn.Sequential(attnviz.blocks.SEBlock(8))
    compiled = torch.compile(model)  # lazy: nothing is compiled until it is called
    with pytest.warns(UserWarning) as record:
        sites = attnviz.find_sites(compiled)
    assert [s.name for s in sites] == ["0"]
    assert str(record[0].message) == (
        "this is a torch.compile'd model: its sites are listed from the original module "
        "model._orig_mod (names are relative to it); capture needs the original module, "
        "run eagerly: `with capture(model._orig_mod) as cache: model._orig_mod(x)`"
    )


def test_the_output_lock_names_its_holder_from_the_first_byte(tmp_path):
    """The lock file holds "pid N: attnviz COMMAND" from offset 0, which a second writer's
    refusal quotes."""
    import os
    import sys

    from attnviz.commands._common import output_folder
    from attnviz.errors import OutputError

    with output_folder(tmp_path / "out"):
        holder = f"pid {os.getpid()}: attnviz {' '.join(sys.argv[1:2])}\n"
        assert (tmp_path / "out" / ".attnviz.lock").read_bytes() == holder.encode()
        with pytest.raises(OutputError) as err, output_folder(tmp_path / "out"):
            pass
        assert f"({holder.strip()})" in str(err.value)
