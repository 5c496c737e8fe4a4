"""Tests for the survivors of the fifth held-out round of the sampled mutation run (TESTING.md,
"Whole package by sampling"). The classes they catch: a label or message changed where no test
read it whole (XCiT's fused path, the site-resolution errors, the checkpoint fallback, the
replicates head line and meta keys, the report's defaults), an argument dropped on a path only
a rerun, an empty table or an interactive canvas takes, and the hidden width of every block
with a reduction at the small-channel edge."""

from __future__ import annotations

import argparse
import json
import re
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_mutants_analysis_commands import _Effects
from test_plot_digest import _query
from torch import nn

import attnviz
from attnviz import blocks as B
from attnviz.plot import queries as P


# ----------------------------------------------------------------------------- capture
def test_xca_reads_the_same_map_on_the_fused_and_the_softmax_path_and_names_the_path():
    """XCiT's cross-covariance attention: meta["path"] names the path that ran; both paths
    give the softmax of the (normalised q) . (normalised k) channel affinity times the
    temperature, computed here by hand."""
    from timm.models.xcit import XCA

    torch.manual_seed(0)
    x = torch.randn(2, 7, 12)  # 7 tokens, 12 channels, 2 heads of 6 channels
    got = {}
    for fused in (True, False):
        m = nn.Sequential(XCA(12, num_heads=2)).eval()
        m[0].load_state_dict(_xca_state)
        m[0].fused_attn = fused
        with torch.no_grad(), attnviz.capture(m) as cache:
            m(x)
        assert cache.meta["0"] == {
            "head_channels": 6,
            "tokens": 7,
            "path": "fused" if fused else "softmax",
        }
        got[fused] = cache["0"]
    xca = nn.Sequential(XCA(12, num_heads=2))[0]
    xca.load_state_dict(_xca_state)
    with torch.no_grad():
        qkv = xca.qkv(x).reshape(2, 7, 3, 2, 6).permute(2, 0, 3, 4, 1)  # (3, B, h, c, N)
        q = nn.functional.normalize(qkv[0], dim=-1)
        k = nn.functional.normalize(qkv[1], dim=-1)
        want = ((q @ k.transpose(-2, -1)) * xca.temperature).softmax(-1)
    for fused in (True, False):
        torch.testing.assert_close(got[fused], want, rtol=1e-4, atol=1e-6)


def _xca_init() -> dict:
    from timm.models.xcit import XCA

    torch.manual_seed(1)
    m = XCA(12, num_heads=2)
    with torch.no_grad():
        m.temperature.copy_(torch.tensor([0.7, 1.9]).reshape(2, 1, 1))
    return m.state_dict()


_xca_state = _xca_init()


def test_every_site_resolution_message_is_pinned_whole():
    """The refusals of site selection list the valid sites and every group, in order."""
    model, _ = attnviz.load_model("cbam_tiny")
    valid = ", ".join(
        f"{s.alias} ({s.name})" for s in attnviz.find_sites(model)
    )  # every site, alias then module name
    groups = "all, stage:2, stage:3, stage:4, stage:5, cbam_channel, cbam_spatial"
    with pytest.raises(ValueError) as err:
        attnviz.capture(model, sites="CBAMS_9_9").__enter__()
    assert str(err.value) == (
        f"unknown site 'CBAMS_9_9'; valid sites: {valid}; or a group: {groups}"
    )
    assert valid.startswith("CBAMC_2_1 (layer1.0.attn.channel), CBAMS_2_1 (layer1.0.attn.spatial)")
    # a kind filter first: only the spatial sites remain, and only their kind is listed
    with pytest.raises(ValueError) as err:
        attnviz.capture(model, kinds="cbam_spatial", sites="stage:9").__enter__()
    spatial = ", ".join(
        f"{s.alias} ({s.name})" for s in attnviz.find_sites(model) if s.kind == "cbam_spatial"
    )
    assert str(err.value) == (
        f"unknown site 'stage:9'; valid sites: {spatial}; or a group: "
        "all, stage:2, stage:3, stage:4, stage:5, cbam_spatial"
    )
    # the groups themselves resolve
    from attnviz.capture.core import select_sites

    assert len(select_sites(model, sites="all")) == 16
    assert [s.alias for s, _, _ in select_sites(model, sites="stage:3")] == [
        "CBAMC_3_1", "CBAMS_3_1", "CBAMC_3_2", "CBAMS_3_2"
    ]  # fmt: skip
    assert len(select_sites(model, sites="cbam_channel")) == 8


# ----------------------------------------------------------------------------- analyses
def test_checkpoint_position_reads_the_position_or_says_question_mark(tmp_path):
    from attnviz.analysis.runner import _checkpoint_position

    good = tmp_path / "good.npz"
    np.savez(good, checkpoint=np.array(json.dumps({"position": 7})))
    assert _checkpoint_position(good) == 7
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert _checkpoint_position(bad) == "?"
    assert _checkpoint_position(tmp_path / "missing.npz") == "?"


class _TwiceSE(nn.Module):
    """One SE block called twice per forward: two excitations per image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.se = B.SEBlock(16, reduction=4)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.se(self.se(self.conv(x))).mean((2, 3)))


def test_excitation_refuses_a_site_that_fires_twice_per_image_with_its_whole_message():
    from attnviz.analysis import excitation_profile

    model = _TwiceSE().eval()
    x = torch.randn(3, 3, 12, 16)
    with pytest.raises(RuntimeError) as err:
        excitation_profile(model, x, labels=[0, 1, 2], permutations=0, progress=False)
    alias = attnviz.find_sites(model)[0].alias
    assert str(err.value) == (
        f"site {alias} fired 2 times per image; the excitation profile needs one excitation "
        "per image and site"
    )


class _OnceSE(_TwiceSE):
    def forward(self, x):
        return self.head(self.se(self.conv(x)).mean((2, 3)))


def test_excitation_class_means_of_the_gate_and_of_the_squeeze_by_hand():
    """Unequal classes (2, 2, 1 images); the gate s = sigmoid(W2 relu(W1 GAP(u))) and the
    squeeze GAP(u) computed here from the model's own layers, averaged per class."""
    from attnviz.analysis import excitation_profile

    torch.manual_seed(0)
    model = _OnceSE().eval()
    x = torch.randn(5, 3, 12, 16)
    labels = np.array([0, 1, 2, 0, 1])
    res = excitation_profile(model, x, labels=list(labels), permutations=0, progress=False)
    with torch.no_grad():
        z = model.conv(x).double().mean((2, 3))
        se = model.se
        s = torch.sigmoid(se.fc2(torch.relu(se.fc1(z.float()[:, :, None, None])))).double()[
            :, :, 0, 0
        ]
    site = res.sites[0]
    for c in range(3):
        np.testing.assert_allclose(site.class_mean[c], s[labels == c].mean(0), rtol=1e-5)
        np.testing.assert_allclose(
            site.squeeze_class_mean[c], z[labels == c].mean(0), rtol=1e-5, atol=1e-7
        )
    assert res.counts.tolist() == [2, 2, 1]


def test_attribution_site_without_comparison_info_reports_a_zero_grid(monkeypatch):
    """A site whose comparison grid was never recorded (no image reached it on this rank)
    reports [0, 0], like its attention grid; the others keep theirs."""
    import timm

    from attnviz.analysis import attention_vs_attribution
    from attnviz.analysis.attribution import AttentionVsAttribution

    real = AttentionVsAttribution.finalise

    def finalise(self, state, run):
        last = self._sites[-1].name
        state.info.pop("compare::" + last)
        state.info.pop("grid::" + last)
        return real(self, state, run)

    monkeypatch.setattr(AttentionVsAttribution, "finalise", finalise)
    torch.manual_seed(0)
    model = timm.create_model(
        "resnet18", num_classes=3, block_args=dict(attn_layer="cbam"), zero_init_last=False
    )
    x = torch.randn(2, 3, 48, 80)
    res = attention_vs_attribution(model, x, labels=[0, 2], sites="all", progress=False)
    assert res.sites[-1]["compare_grid"] == [0, 0] and res.sites[-1]["grid"] == [0, 0]
    assert res.target_source == "label"
    n = len(res.sites)  # every field of the result, against the model and the input
    with torch.no_grad():
        pred = model.eval()(x).argmax(1)
    assert res.layer == "layer4" and res.compare_at == "coarser" and res.top_k == 0.2
    assert res.predictions.dtype == res.labels.dtype == res.targets.dtype == np.int64
    assert res.predictions.tolist() == pred.tolist()
    assert res.labels.tolist() == res.targets.tolist() == [0, 2]
    assert res.gradcam.shape == (2, 48, 80) and res.gradcam.dtype == np.float32
    assert res.attention.shape == (n, 2, 48, 80) and res.images.shape == (2, 48, 80, 3)
    assert res.spearman.shape == res.iou.shape == (2, n) and len(res.ids) == 2
    assert res.meta["interpolate_mode"] == "bilinear" and res.meta["gradcam_grid"] == [2, 3]
    first = res.sites[0]
    assert first["grid"] == [12, 20] and first["compare_grid"] == [2, 3]  # layer4 of 48x80
    predicted = attention_vs_attribution(model, x[:1], sites="CBAMS_5_2", progress=False)
    assert predicted.target_source == "prediction" and predicted.labels.tolist() == [-1]


def _replicates_summary(meta: dict) -> str:
    from attnviz.analysis.replicates import ReplicatesResult

    nan = float("nan")
    rep = ReplicatesResult(
        _Effects({"A": 0.5, "B": -0.2, "C": 0.3}),
        {"seed1": _Effects({"A": 0.4, "B": 0.1, "C": 0.35})},
        {
            "untrained:0": _Effects({"A": 0.01, "B": 0.02, "C": nan}),
            "untrained:1": _Effects({"A": 0.6, "B": 0.0, "C": nan}),
        },
        meta=meta,
    )
    return rep.summary()


def test_replicates_summary_is_pinned_whole_with_and_without_the_model_name():
    """Checked by hand: seed mean/sd of (0.5, 0.4) = 0.45 / 0.071; effect / s.e. = 5, 2, 3
    give two-sided p 5.7e-7, 0.046, 0.0027, Holm x3, x1, x2; A lies inside [0.01, 0.6],
    B's seeds disagree, C's baseline is NaN."""
    body = (
        "trained = effect ± image-sampling s.e.; p_holm: Holm over the 3 tests of this table; "
        "a reading is stated only where the sign holds across seeds, the effect is beyond "
        "every baseline range and p_holm < 0.05\n"
        "site        trained  p_holm      seeds mean ± sd [min, max] same sign  untrained range "
        "beyond                         reading\n"
        "   A +0.500 ± 0.100 1.7e-06 +0.450 ± 0.071 [+0.400, +0.500]       2/2 [+0.010, +0.600]"
        "     no none: inside the baseline range\n"
        "   B -0.200 ± 0.100   0.046 -0.050 ± 0.212 [-0.200, +0.100]       1/2 [+0.000, +0.020]"
        "    yes  none: sign varies across seeds\n"
        "   C +0.300 ± 0.100  0.0054 +0.325 ± 0.035 [+0.300, +0.350]       2/2     [+nan, +nan]"
        "    n/a none: a baseline gives no value\n"
        "0 of 3 effects survive"
    )
    head = (
        "test_effects_mutants replicates of {}: seeds seed0 (trained), seed1; baselines "
        "untrained x2. "
    )
    assert _replicates_summary({}) == head.format("the model") + body
    assert _replicates_summary({"model": "se_tiny"}) == head.format("se_tiny") + body


# ----------------------------------------------------------------------------- plots, widgets
def test_query_heads_refuse_more_heads_than_a_figure_shows_with_the_count():
    from dataclasses import replace

    base = _query(dist=False)

    def with_heads(n: int):
        heads = np.random.default_rng(0).random((2, n + 1, 3, 5))
        heads[:, -1] = heads[:, :-1].mean(1)
        return replace(base, head_maps=heads, prefix_maps=np.zeros((1, n + 1, 3, 5)))

    with pytest.raises(ValueError) as err:
        P.plot_query_heads(with_heads(17))
    assert str(err.value) == "17 heads: a figure shows at most 16"
    fig = P.plot_query_heads(with_heads(16), prefix=False)
    one = P.plot_query_heads(with_heads(3), queries=[1], prefix=False)
    try:
        assert len(fig.axes) >= 2 * 17  # two queries, the mean and 16 heads each
        maps = [ax for ax in one.axes if ax.get_images()]
        assert len(maps) == 4  # one query: the mean and 3 heads
    finally:
        plt.close(fig)


def test_inspector_on_an_interactive_canvas_answers_a_real_click(monkeypatch):
    """With an interactive backend the inspector connects ``on_click`` to
    ``button_press_event``: a real MouseEvent on the map picks the clicked query cell."""
    from matplotlib.backend_bases import MouseEvent
    from timm.layers import NonLocalAttn

    from attnviz.widgets import QueryInspector

    monkeypatch.setattr(matplotlib, "get_backend", lambda: "module://ipympl.backend_nbagg")
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), NonLocalAttn(8, rd_channels=4)).eval()
    insp = QueryInspector(model, torch.randn(3, 6, 10))
    try:
        assert insp._interactive and insp._cid is not None
        assert insp.state.cell == (3, 5)
        fig = insp.figure
        fig.canvas.draw()
        px, py = insp._ax_map.transData.transform((8.0, 1.0))  # x = 8, y = 1
        event = MouseEvent("button_press_event", fig.canvas, px, py, button=1)
        fig.canvas.callbacks.process("button_press_event", event)
        assert insp.state.cell == (1, 8)
    finally:
        plt.close(insp.figure)


def test_viewer_payload_is_compact_json():
    """The viewer's data block is the compact JSON of ``data()`` (no spaces after "," or
    ":"): the page carries every query's map, so the separators matter for its size."""
    from timm.layers import NonLocalAttn

    from attnviz.widgets import QueryInspector

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), NonLocalAttn(8, rd_channels=4)).eval()
    viewer = QueryInspector(model, torch.randn(3, 4, 6)).viewer()
    page = viewer.to_html()
    compact = json.dumps(viewer.data(), separators=(",", ":")).replace("<", "\\u003c")
    assert compact in page
    assert json.dumps(viewer.data()) not in page


def test_svg_sanitiser_keeps_the_tail_of_a_removed_first_child_as_text():
    from attnviz.sanitise import sanitise_svg

    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg"><text><script>alert(1)</script>after</text></svg>'
    )
    out = sanitise_svg(svg, "p")
    assert "script" not in out and "alert" not in out
    assert re.search(r"<text[^>]*>after</text>", out), out


def test_svg_sanitiser_keeps_the_text_around_removed_elements_in_reading_order():
    """The tail of a removed element that is not the first child follows the kept sibling
    before it (it was appended to the parent's text: "ac" then "b")."""
    from attnviz.sanitise import sanitise_svg

    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg"><text>a<tspan>b</tspan><script>x</script>c'
        "<script>y</script>d</text><g><script>z</script>e</g></svg>"
    )
    out = sanitise_svg(svg, "p")
    assert "script" not in out and not re.search(r"[xyz]<", out), out
    assert re.search(r"<text[^>]*>a<tspan[^>]*>b</tspan>cd</text>", out), out
    assert re.search(r"<g[^>]*>e</g>", out), out


# ----------------------------------------------------------------------------- report
def test_report_default_title_and_empty_tables(tmp_path):
    from test_plot_digest import _rollout

    from attnviz.report import _STYLE, ablation_table_html, build_report, summary_table_html

    _rollout().save(tmp_path / "run" / "result")
    assert build_report([tmp_path]) == (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta '
        'http-equiv="Content-Security-Policy" content="default-src \'none\'; script-src '
        "'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action "
        f"'none'\"><title>attnviz report</title><style>{_STYLE}</style></head><body>"
        '<h1>attnviz report</h1><ul><li><a href="#a0">run</a></li></ul><section '
        'class="analysis" id="a0">\n<h2>run: attention rollout (vit_tiny)</h2>\n</section>\n'
        "</body></html>\n"
    )
    assert "<title>a &lt;b&gt;</title>" in build_report([tmp_path], title="a <b>")

    class _EmptyAblation:
        kind = "ablation"

        def to_frame(self):
            return pd.DataFrame(
                columns=["group", "policy", "measure", "n", "mean", "ci_low", "ci_high", "p_holm"]
            )

    class _Ablation(_EmptyAblation):
        def to_frame(self):
            row = dict(group="stage:2", policy="remove", n=5, p_holm=0.01)
            return pd.DataFrame([
                {**row, "measure": "accuracy", "mean": -0.25, "ci_low": -0.5, "ci_high": 0.1},
                {**row, "measure": "kl", "mean": 0.125, "ci_low": 0.05, "ci_high": 0.2,
                 "p_holm": 0.2},
                dict(group="all", policy="constant:0 <b>", n=4, measure="kl", mean=0.5,
                     ci_low=0.25, ci_high=0.75, p_holm=0.04),
            ])  # fmt: skip

    note = (
        "<p>mean change intervened &minus; original over paired images (kl: mean "
        "KL(original || intervened); agreement: share of unchanged top-1), bootstrap 95% CI in "
        "brackets; *: Holm-adjusted sign-flip p &lt; 0.05.</p>"
    )
    assert ablation_table_html(_Ablation()) == note + (
        '<table class="attnviz-table"><thead><tr><th>group</th><th>policy</th><th>images</th>'
        "<th>accuracy</th><th>kl</th></tr></thead><tbody><tr><td>stage:2</td><td>remove</td>"
        "<td>5</td><td>-0.250 [-0.500, +0.100]*</td><td>0.125 [0.050, 0.200]</td></tr><tr>"
        "<td>all</td><td>constant:0 &lt;b&gt;</td><td>4</td><td></td>"
        "<td>0.500 [0.250, 0.750]*</td></tr></tbody></table>"
    )
    table = ablation_table_html(_EmptyAblation())
    assert table.startswith(note)
    assert "<th>group</th><th>policy</th><th>images</th>" in table
    assert summary_table_html(_EmptyAblation()) == table
    assert summary_table_html(object()) == ""  # no kind: no table


# ----------------------------------------------------------------------------- commands
def test_data_command_refuses_a_file_and_a_full_folder_but_fills_an_empty_one(cli, tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("x")
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"")
    for target in (full, a_file):
        r = cli("data", "make-shapes", str(target), "--n-per-class", "1", "--size", "64")
        assert r.code == 2
        assert f"{target} exists and is not an empty folder; choose a new folder" in r.err
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("data", "make-shapes", str(empty), "--n-per-class", "1", "--size", "64")
    assert r.code == 0, r.err
    assert (empty / "records.csv").is_file()


def test_own_input_size_reads_only_a_dict_config():
    from types import SimpleNamespace

    from attnviz.commands.sites import own_input_size

    def model(cfg):
        m = nn.Identity()
        m.pretrained_cfg = cfg
        return m

    assert own_input_size(nn.Identity()) == (None, False)
    assert own_input_size(model(SimpleNamespace(input_size=(3, 9, 9)))) == (None, False)
    assert own_input_size(model([("fixed_input_size", True)])) == (None, False)
    assert own_input_size(model({"input_size": [3, 40, 56]})) == ((3, 40, 56), False)
    assert own_input_size(model({"input_size": (3, 8, 8), "fixed_input_size": 1})) == (
        (3, 8, 8),
        True,
    )


def test_save_figures_rerun_removes_only_its_stale_figures_and_names_its_listing(tmp_path):
    from attnviz.commands._common import FIGURES_LIST, OutputFolder

    def fig():
        f = plt.figure(figsize=(2.0, 1.0))
        f.add_subplot().plot([0, 1, 3], [2, 0, 1])
        return f

    def figs(*names):
        return {n: fig() for n in names}

    with OutputFolder(tmp_path / "out") as out:
        out.save_figures(figs("a", "b"), formats=("png",))
        folder = out.root / "figures"
        (folder / "mine.png").write_bytes(b"")  # not listed: never removed
        listing = folder / FIGURES_LIST
        listing.write_text(json.dumps(["a.png", "b.png", "../up.png"]))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out.save_figures(figs("a"), formats=("png",))
    assert sorted(p.name for p in folder.iterdir()) == sorted([FIGURES_LIST, "a.png", "mine.png"])
    # the PNGs are written at 150 dpi (the figure's own dpi is 100)
    sizes = {}
    for dpi in (150, 100):
        ref = fig()
        ref.savefig(tmp_path / f"ref{dpi}.png", dpi=dpi, bbox_inches="tight")
        plt.close(ref)
        sizes[dpi] = Image.open(tmp_path / f"ref{dpi}.png").size
    assert Image.open(folder / "a.png").size == sizes[150] != sizes[100]
    assert json.loads(listing.read_text()) == ["a.png"]
    assert [str(w.message) for w in caught] == [
        f"ignored '../up.png' in {listing}: not a plain file name inside the folder"
    ]


def test_replicates_cli_records_every_meta_key(tmp_path, capsys):
    from attnviz.commands._common import OutputFolder, run_replicates_cli

    args = argparse.Namespace(
        model="se_tiny", seeds=None, baseline=[("untrained", 1)], device="cpu", weights=None,
        input_size=None,
    )  # fmt: skip
    calls = []

    def analyse(models):
        calls.append(sorted(models))
        return _Effects({"A": 0.1 * len(calls)})

    with OutputFolder(tmp_path / "out") as out:
        rep = run_replicates_cli(args, out, _Effects({"A": 0.5}), analyse)
    assert rep.meta == {"model": "se_tiny", "specs": ["se_tiny"]}
    assert calls == [["se_tiny"]]
    manifest = json.loads((tmp_path / "out" / "replicates" / "manifest.json").read_text())
    assert manifest["meta"] == {"model": "se_tiny", "specs": ["se_tiny"]}
    assert "replicates of se_tiny" in capsys.readouterr().out


def test_rollout_hands_its_own_arguments_to_the_replicates(cli, tmp_path, monkeypatch):
    import attnviz.commands.rollout as ro
    from attnviz.commands._common import OutputFolder

    seen = []
    monkeypatch.setattr(ro, "run_replicates_cli", lambda *a, **k: seen.append(a))
    monkeypatch.setattr(ro, "rollout_figures", lambda result: {})
    images = tmp_path / "images"
    r = cli("data", "make-shapes", images, "--n-per-class", "1", "--size", "64")
    assert r.code == 0, r.err
    r = cli(
        "rollout", "--model", "vit_tiny_patch16_224", "--images", images, "--out",
        tmp_path / "out", "--limit", "1", "--figure-images", "1", "--no-progress",
        "--baseline", "untrained:1",
    )  # fmt: skip
    assert r.code == 0, r.err
    assert len(seen) == 1
    args, out, result, analyse = seen[0]
    assert isinstance(args, argparse.Namespace)
    assert args.model == "vit_tiny_patch16_224" and args.baseline == [("untrained", 1)]
    assert isinstance(out, OutputFolder) and out.path == tmp_path / "out"
    assert type(result).__name__ == "RolloutResult" and len(result.ids) == 1
    assert (images / result.ids[0]).is_file()
    assert callable(analyse)


# ----------------------------------------------------------------------------- blocks
def _width(module: nn.Module) -> int:
    """The hidden width: the output channels of the first reducing layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            return m.weight.shape[0]
    raise AssertionError("no layer")


@pytest.mark.parametrize(
    ("make", "floor", "r"),
    [
        (lambda c, r: B.SEBlock(c, r), 8, 16),  # SE: max(C / r, 8)
        (lambda c, r: B.CBAM(c, r).channel, 8, 16),  # CBAM's channel MLP is the SE block's
        (lambda c, r: B.BAMChannel(c, r), 1, 16),  # BAM: C / r, at least one unit
        (lambda c, r: B.BAMSpatial(c, r), 1, 16),
        (lambda c, r: B.ChannelSE(c, r), 1, 2),  # scSE: C / 2
        (lambda c, r: B.SKConv(c, c, reduction=r).fc_reduce, 32, 16),  # SK: max(C / r, L = 32)
    ],
)
def test_hidden_width_at_the_small_channel_edge(make, floor, r):
    for c in (1, 2, r - 1, r, 2 * r - 1, 2 * r, 3 * r, 40 * r):
        assert _width(make(c, r)) == max(c // r, floor), c


def test_hidden_widths_of_the_blocks_without_a_reduction_argument():
    assert B.GCBlock(3).channel_add[0].out_channels == 1  # max(int(C / 4), 1)
    assert B.GCBlock(9).channel_add[0].out_channels == 2
    assert B.SelfAttention2d(7).query.out_channels == 1  # max(C / 8, 1)
    assert B.SelfAttention2d(17).query.out_channels == 2
    assert B.NonLocalBlock(1).inter_channels == 1  # max(C / 2, 1)
    assert B.NonLocalBlock(5).inter_channels == 2
    bam = B.BAMChannel(20, 16)
    assert bam.fc1.out_features == bam.bn_hidden.num_features == bam.fc2.in_features == 1


def test_a_rollout_of_no_images_has_empty_figures_not_a_key_error():
    """``effects()`` of a result with zero images raised ``KeyError: 'token'`` (the per-image
    frame had no columns); now every token has n = 0 and NaN figures, and the tables keep
    their columns."""
    from attnviz.analysis.rollout import RolloutResult

    result = RolloutResult(
        model="vit", sites=[{"alias": "TOK_1"}], tokens=["class", "reg0"],
        maps=np.zeros((0, 2, 2, 3), np.float32), prefix_mass=np.zeros((0, 2), np.float32),
        query_grid=[2, 3],
    )  # fmt: skip
    frame = result.per_image()
    assert frame.empty and list(frame.columns) == [
        "image", "id", "token", "prefix_mass", "patch_mass", "entropy_norm", "max_share",
        "argmax_y", "argmax_x",
    ]  # fmt: skip
    effects = result.effects()
    assert list(effects["site"]) == ["class"] * 3 + ["reg0"] * 3
    assert (effects["n"] == 0).all() and effects[["effect", "se"]].isna().all().all()
    table = result.to_frame()
    assert list(table["token"]) == ["class", "reg0"] and (table["n_images"] == 0).all()
    assert "0 images (0 skipped)" in result.summary()
