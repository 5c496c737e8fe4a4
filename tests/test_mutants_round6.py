"""Tests for the survivors of the sixth held-out round of the sampled mutation run (TESTING.md,
"Whole package by sampling"). The classes they catch: a path only a module used outside its
model takes (CoaT's factor attention given its size, a TNT attention in a plain container, a
TNT without ``num_prefix_tokens``), a second forward through one intervention, a reduction on a
window site, a loader's message or record on a path the offline tests only reach in a
subprocess, a paper citation no test read, an option a block stores but no test varied
(``align_corners``), and code that runs at import time, where a mutant is never active."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from torch import nn

import attnviz
from attnviz.cli import main


# ----------------------------------------------------------------------------- capture
def test_coat_factor_attention_alone_takes_its_key_grid_from_the_size_it_is_given():
    """A ``FactorAttnConvRelPosEnc`` outside a CoaT model has no stage grid in its context: the
    key grid is the ``size`` argument (2 x 3 here, one class token in front)."""
    from timm.models.coat import ConvRelPosEnc, FactorAttnConvRelPosEnc

    torch.manual_seed(0)
    crpe = ConvRelPosEnc(head_chs=4, num_heads=2, window={3: 2})
    m = nn.ModuleDict({"attn": FactorAttnConvRelPosEnc(8, num_heads=2, shared_crpe=crpe)}).eval()
    x = torch.randn(2, 1 + 6, 8)
    with torch.no_grad(), attnviz.capture(m) as cache:
        m["attn"](x, (2, 3))
    assert cache.meta["attn"] == {"prefix_tokens": 1, "prefix_names": ["class"], "key_grid": (2, 3)}
    qkv = m["attn"].qkv(x).reshape(2, 7, 3, 2, 4).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(cache["attn"], qkv[1].softmax(dim=2).transpose(-1, -2))


def _tnt(**kw):
    import timm

    torch.manual_seed(5)
    model = timm.create_model(
        "tnt_s_patch16_224", pretrained=False, img_size=(32, 48), depth=1, num_classes=3, **kw
    )
    return model.eval()


def test_tnt_without_num_prefix_tokens_reads_one_class_token():
    """An older TNT has no ``num_prefix_tokens``: the outer attention has the class token."""
    model = _tnt()
    del model.num_prefix_tokens
    with torch.no_grad(), attnviz.capture(model) as cache:
        model(torch.randn(1, 3, 32, 48))
    outer = [n for n in cache if n.endswith("attn_out")]
    assert outer and cache.meta[outer[0]]["prefix_tokens"] == 1
    assert cache.meta[outer[0]]["prefix_names"] == ["class"]


def test_a_tnt_attention_in_a_plain_container_is_one_clear_error():
    block = _tnt().blocks[0]
    alone = nn.Sequential(block.attn_out).eval()
    with pytest.raises(RuntimeError, match="^a TNT Attention outside a TNT model"):
        with torch.no_grad(), attnviz.capture(alone):
            alone(torch.randn(1, 7, block.attn_out.qk.in_features))


def test_an_intervention_context_is_not_entered_twice():
    model = nn.Sequential(attnviz.blocks.SEBlock(8))
    iv = attnviz.intervene(model, {"all": "remove"})
    with iv:
        with pytest.raises(RuntimeError, match="^this intervene context is already active$"):
            iv.__enter__()


def test_two_forwards_through_one_intervention_on_an_intercepted_softmax_both_write():
    """The call count of an intercepted site is per forward: the second forward in the same
    ``with`` block is written like the first (uniform attention: the output of every query is
    the mean of the values)."""
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    model = nn.Sequential(Attention(8, num_heads=2)).eval()
    model[0].fused_attn = False
    x = torch.randn(2, 5, 8)
    qkv = model[0].qkv(x).reshape(2, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
    v_mean = qkv[2].mean(dim=2, keepdim=True).expand(-1, -1, 5, -1)
    expected = model[0].proj(v_mean.transpose(1, 2).reshape(2, 5, 8))
    with torch.no_grad(), attnviz.intervene(model, {"all": "uniform"}):
        first = model(x)
        second = model(x)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def test_spatial_mean_on_a_window_site_averages_over_the_window_keys():
    import timm

    torch.manual_seed(0)
    kw = {"depths": (1,), "embed_dim": 12, "num_heads": (2,), "img_size": (28, 56)}
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, **kw)
    model.eval()
    x = torch.randn(1, 3, 28, 56)
    with torch.no_grad(), attnviz.capture(model) as full:
        model(x)
    with torch.no_grad(), attnviz.capture(model, reduce="spatial_mean") as reduced:
        model(x)
    (name,) = list(full)
    assert full.site(name).dims[-1] == "window_key"
    torch.testing.assert_close(reduced[name], full[name].mean(dim=-1))


# ----------------------------------------------------------------------------- analysis
def test_the_attribution_results_cite_their_paper_in_the_saved_manifest(tmp_path):
    """Each result's manifest names the paper it reproduces, whole."""
    from attnviz.analysis.attribution import gradcam_comparison
    from attnviz.models.tiny import create_tiny

    torch.manual_seed(0)
    models = {n: create_tiny(n, num_classes=3) for n in ("se_tiny", "plain_tiny")}
    x = torch.randn(2, 3, 64, 64)
    result = gradcam_comparison(models, x, labels=[0, 2], progress=False)
    manifest = json.loads((result.save(tmp_path / "g") / "manifest.json").read_text())
    assert manifest["paper"] == (
        "Woo et al., CBAM, ECCV 2018, Sec. 4.3 / Fig. 4 (Grad-CAM across models)"
    )


def test_ablation_figures_draw_the_heatmap_in_accuracy_when_the_images_have_labels():
    """With labels the heatmap is in accuracy; without, in the true class's probability."""
    from attnviz.analysis.ablation import ablation
    from attnviz.commands.ablate import ablation_figures
    from attnviz.models.tiny import create_tiny

    torch.manual_seed(0)
    model = create_tiny("se_tiny", num_classes=3).eval()
    x = torch.randn(4, 3, 64, 64)
    labelled = ablation(model, x, labels=[0, 1, 2, 0], policies=["remove"], scopes=("all",),
                        progress=False)  # fmt: skip

    def texts(fig) -> str:
        labels = [t for ax in fig.axes for t in (ax.title, ax.xaxis.label, ax.yaxis.label)]
        title = fig._suptitle.get_text() if fig._suptitle else ""
        return " ".join(t.get_text() for t in labels) + title

    assert "accuracy" in texts(ablation_figures(labelled)["ablation_heatmap"])
    unlabelled = ablation(model, x, policies=["remove"], scopes=("all",), progress=False)
    assert "accuracy" not in texts(ablation_figures(unlabelled)["ablation_heatmap"])


# ----------------------------------------------------------------------------- commands
def not_attention_model() -> nn.Module:
    """For ``python:test_mutants_round6:not_attention_model``: an SE site and a NextViT
    ``ConvAttention`` (declared to hold no attention weights)."""
    from timm.models.nextvit import ConvAttention

    from attnviz.blocks import SEBlock

    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), SEBlock(8), ConvAttention(8, head_dim=4))


def test_sites_json_lists_the_modules_without_attention_weights_with_reason_and_names(capsys):
    from attnviz.capture.registry import not_attention_reason

    spec = "python:test_mutants_round6:not_attention_model"
    assert main(["sites", spec, "--input-size", "16", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    reason = not_attention_reason(not_attention_model()[2])
    assert reason and out["not_attention"] == {
        "ConvAttention": {"reason": reason, "modules": ["2"]}
    }
    assert [r["alias"] for r in out["sites"]] == ["SE_1"] and out["unread"] == {}


# ----------------------------------------------------------------------------- models
def test_torchvision_pretrained_offline_without_a_cached_file_names_the_spec(monkeypatch, tmp_path):
    """In-process (the subprocess tests of the offline paths run no mutant): HF_HUB_OFFLINE
    set and nothing in the torch hub cache is one line naming the model."""
    from attnviz.models.loading import PretrainedUnavailableError, load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(PretrainedUnavailableError) as err:
        load_model("torchvision:resnet18", pretrained=True)
    assert str(err.value).startswith(
        "could not fetch pretrained weights for 'torchvision:resnet18' (no hub access: "
        "RuntimeError: HF_HUB_OFFLINE is set). Pass a local file instead"
    )


def test_a_pretrained_failure_with_an_empty_message_says_only_the_exception_type():
    from attnviz.models.loading import _pretrained_failure

    text = str(_pretrained_failure("timm:x", ConnectionError()))
    assert text.startswith("could not fetch pretrained weights for 'timm:x' (no hub access: "
                           "ConnectionError: ). Pass a local file")  # fmt: skip


def test_torchvision_with_local_weights_records_the_file_and_its_digest(tmp_path):
    from safetensors.torch import save_file

    from attnviz.models.loading import load_model, sha256_file

    torch.manual_seed(0)
    built, _ = load_model("torchvision:squeezenet1_1", num_classes=3)
    path = tmp_path / "sq.safetensors"
    save_file({k: v.contiguous() for k, v in built.state_dict().items()}, str(path))
    model, cfg = load_model("torchvision:squeezenet1_1", weights=path, num_classes=3)
    assert cfg.source == {
        "spec": "torchvision:squeezenet1_1",
        "weights": str(path),
        "weights_sha256": sha256_file(path),
    }
    for k, v in built.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


@pytest.mark.parametrize("key", ["state_dict_ema", "model_ema", "state_dict", "model", "module"])
def test_every_wrapping_key_of_a_checkpoint_is_unwrapped(tmp_path, key):
    from attnviz.models.loading import load_weights_file

    state = {"module.a": torch.ones(2), "b": torch.zeros(1, dtype=torch.int64)}
    path = tmp_path / "w.pth"
    torch.save({key: state, "epoch": 3}, path)
    got = load_weights_file(path)
    assert list(got) == ["a", "b"] and torch.equal(got["a"], torch.ones(2))


def test_augment_flips_and_transposes_each_image_by_its_own_draws():
    from attnviz.models.train import augment

    x = torch.arange(6 * 2 * 4 * 4, dtype=torch.float32).view(6, 2, 4, 4)
    got = augment(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    flip_h, flip_v, rot = (torch.rand(6, generator=g) < 0.5 for _ in range(3))
    assert rot.any() and not rot.all()
    for i in range(6):
        want = x[i]
        want = want.flip(2) if flip_h[i] else want
        want = want.flip(1) if flip_v[i] else want
        want = want.transpose(1, 2) if rot[i] else want
        assert torch.equal(got[i], want), i


@pytest.mark.parametrize("block", ["sa", "danet"])
def test_the_stage3_block_factory_gives_the_block_convs_kaiming_fan_out(block):
    """Called here, not at import (a factory built at import runs before any mutant is
    active): every conv of the inserted block has std sqrt(2 / fan_out)."""
    from attnviz.models.tiny_more import tiny_with_stage3_block

    torch.manual_seed(0)
    model = tiny_with_stage3_block(block)(num_classes=3)
    convs = [m for m in model.layer2[1].modules() if isinstance(m, nn.Conv2d)]
    large = [c for c in convs if c.weight.numel() >= 256]  # enough weights for a std
    assert large
    for conv in large:
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        std = float(conv.weight.detach().std())
        assert abs(std / (2 / fan_out) ** 0.5 - 1) < 0.2, (conv, std)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


# ----------------------------------------------------------------------------- blocks
def test_the_spatial_transformer_samples_with_the_align_corners_it_was_given():
    import torch.nn.functional as F

    from attnviz.blocks import SpatialTransformer
    from attnviz.blocks.stn import GridSampler

    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 7)
    grid = torch.rand(2, 4, 6, 2) * 2 - 1
    for corners in (True, False):
        torch.testing.assert_close(
            GridSampler(corners)(x, grid), F.grid_sample(x, grid, align_corners=corners)
        )
        stn = SpatialTransformer(3, out_size=(4, 6), align_corners=corners).eval()
        with torch.no_grad():
            theta = stn.theta(stn.localization(x))
            out = stn(x)
        affine = F.affine_grid(theta, [2, 3, 4, 6], align_corners=corners)
        torch.testing.assert_close(out, F.grid_sample(x, affine, align_corners=corners))


def test_a_new_gc_block_is_the_identity():
    """The last 1x1 conv of the transform starts at zero (Cao et al. 2019, Sec. 4): output = x."""
    from attnviz.blocks import GCBlock

    torch.manual_seed(0)
    block = GCBlock(16).eval()
    x = torch.randn(2, 16, 5, 7)
    with torch.no_grad():
        assert torch.equal(block(x), x)
    assert block.channel_add[1].weight.abs().sum() > 0  # the LayerNorm keeps its ones


def test_a_query_maps_site_record_keeps_the_head_count():
    from types import SimpleNamespace

    from attnviz.analysis.query_maps import site_record

    info = {"heads": 3, "mode": "x"}
    site = SimpleNamespace(
        name="blocks.1.attn", alias="TOK_1", kind="token", module_type="timm.Attention", info=info
    )
    assert site_record(site) == {
        "name": "blocks.1.attn", "alias": "TOK_1", "kind": "token",
        "module_type": "timm.Attention", "instantiation": "x", "heads": 3,
    }  # fmt: skip
    site.info = {"instantiation": "embedded"}
    assert "heads" not in site_record(site) and site_record(site)["instantiation"] == "embedded"


# ----------------------------------------------------------------------------- plot
def test_a_grad_cam_map_is_scaled_to_its_max_in_float64():
    from attnviz.plot.attribution import _unit

    cam = np.array([[0.1, 0.3], [0.7, 0.9]], np.float32)
    got = _unit(cam)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, cam.astype(np.float64) / np.float64(cam.max()))
    np.testing.assert_array_equal(_unit(-cam), np.zeros((2, 2)))


def test_the_excitation_std_figure_of_one_panel_has_its_legend():
    from test_excitation_value_range import GATE, _result, _site

    from attnviz.plot import plot_excitation_std

    fig = plot_excitation_std(_result(_site("SE_2_1", "se", 2, GATE)), 1)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 1
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["class mean", "± 1 std"]


def test_the_image_views_title_names_the_file_of_a_windows_path():
    from test_plot_digest import _sweep, _views

    from attnviz.plot.sweep import plot_image_views

    r = _sweep()
    r.image_ids = [f"C:\\data\\shapes\\{i}.png" for i in range(r.n_images)]
    fig = plot_image_views(r, _views(), 2)
    assert fig._suptitle.get_text().startswith("sk_tiny: image 2.png of the 6 swept, per-")


# ----------------------------------------------------------------------------- runner
@pytest.mark.parametrize("local_rank", [None, "1"])
def test_a_cuda_rank_takes_the_gpu_of_its_local_rank_and_gpu_0_without_one(monkeypatch, local_rank):
    """On CUDA each torchrun rank selects its LOCAL_RANK's device (0 when unset) before the
    NCCL group starts; on CPU, gloo and no device call (the calls are recorded, not made)."""
    import torch.distributed as dist

    from attnviz import distributed

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("device", d)))
    monkeypatch.setattr(
        dist, "init_process_group", lambda backend: calls.append(("group", backend))
    )
    assert distributed.init_from_env("cuda") is True
    assert calls == [("device", int(local_rank or 0)), ("group", "nccl")]
    calls.clear()
    assert distributed.init_from_env("cpu") is True
    assert calls == [("group", "gloo")]


@pytest.mark.parametrize("files", ["ab", None, {"a": 1}])
def test_a_manifest_whose_file_list_is_not_a_list_removes_nothing_on_save(tmp_path, files):
    """An earlier manifest of the same kind whose ``files`` is not a list (hand-edited or
    truncated) lists nothing: no file of the folder is removed as an earlier save's."""
    from test_excitation_value_range import GATE, _result, _site

    result = _result(_site("SE_2_1", "se", 2, GATE))
    out = tmp_path / "r"
    out.mkdir()
    manifest = {"kind": result.kind}
    if files is not None:
        manifest["files"] = files
    (out / "manifest.json").write_text(json.dumps(manifest))
    for name in ("a", "b"):
        (out / name).write_text("the user's")
    result.save(out)
    assert (out / "a").read_text() == "the user's" and (out / "b").read_text() == "the user's"
    assert type(result).load(out).sites[0].alias == "SE_2_1"


def test_the_timm_registry_types_include_the_partial_entries_unwrapped(monkeypatch):
    """Computed afresh (the memo is set once per process, before any mutant could act): the
    functools.partial entries of timm's registry (ecam, gca) count as their classes."""
    import timm.layers.create_attn  # noqa: F401

    from attnviz.capture import core

    monkeypatch.setattr(core, "_REGISTRY_TYPES", None)
    types = core._registry_types()
    assert {"timm.layers.eca.EcaModule", "timm.layers.global_context.GlobalContext"} <= types
    assert "timm.layers.squeeze_excite.SEModule" in types and all("partial" not in t for t in types)


def test_feature_stages_skip_nested_modules_of_a_flat_model():
    """A ``feature_info`` entry deeper inside a block (``features.3.conv.1``) does not bound a
    stage; the blocks of the flat container do."""
    from types import SimpleNamespace

    from attnviz.capture.site import feature_stages

    info = [
        {"module": "stem", "reduction": 2},
        {"module": "features.1", "reduction": 2},
        {"module": "features.3.conv.1", "reduction": 4},
        {"module": "features.6", "reduction": 8},
        {"module": "features.9", "reduction": 32},
    ]
    assert feature_stages(SimpleNamespace(feature_info=info)) == (
        "features",
        [(1, 1), (6, 3), (9, 5)],
    )


# ----------------------------------------------------------------------------- gap hunt
# (this session's 120 mutants of positions 1-130, drawn outside the held-out rounds)
@pytest.mark.parametrize("code", [0, None, 1, 3])
def test_main_returns_the_commands_own_exit_code(monkeypatch, code):
    import attnviz.commands.sites as sites

    monkeypatch.setattr(sites, "run", lambda args: code)
    assert main(["sites", "se_tiny"]) == (code or 0)


def test_an_untrained_baseline_of_a_sized_timm_model_is_built_for_the_input_size(cli, tmp_path):
    """``--input-size`` reaches the untrained replicates too: a ViT built for 32 x 48 has 2 x 3
    patches, and its fresh copies must have them as well (built at 224 they would not run)."""
    images = tmp_path / "images"
    assert cli("data", "make-shapes", images, "--n-per-class", "1", "--size", "64").code == 0
    r = cli(
        "rollout", "--model", "vit_tiny_patch16_224", "--input-size", "32", "48", "--images",
        images, "--out", tmp_path / "out", "--limit", "2", "--figure-images", "1",
        "--no-progress", "--baseline", "untrained:1",
    )  # fmt: skip
    assert r.code == 0, r.err
    meta = json.loads((tmp_path / "out" / "result" / "manifest.json").read_text())
    assert meta["meta"]["run"]["preprocess"]["input_size"] == [3, 32, 48]
    assert (tmp_path / "out" / "replicates").is_dir()


def test_a_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    """Its storages say ``cuda:0``: read with ``map_location="cpu"`` on a machine without
    CUDA (here: the location tag written as a GPU run would write it)."""
    import torch.serialization as ser

    from attnviz.models.loading import load_weights_file

    path = tmp_path / "gpu.pth"
    with monkeypatch.context() as m:
        m.setattr(ser, "location_tag", lambda storage: "cuda:0")
        torch.save({"w": torch.arange(3.0)}, path)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # the file is what a GPU run writes
    got = load_weights_file(path)
    assert got["w"].device.type == "cpu" and torch.equal(got["w"], torch.arange(3.0))
