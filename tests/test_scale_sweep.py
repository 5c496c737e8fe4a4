"""The SKNet scale sweep: streaming sums against hand computations, inputs, results, plots."""

from __future__ import annotations

import dataclasses
import json
import math

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

import attnviz
from attnviz.analysis.scale_sweep import (
    ScaleSweepResult,
    SweepSite,
    scale_sweep,
    stage_last_sites,
)
from attnviz.blocks import SKConv
from attnviz.data import ShapesDataset, write_image_folder
from attnviz.data.preprocess import PreprocessError
from attnviz.errors import BadImageError, NoAttentionSitesError
from attnviz.models.tiny import create_tiny
from attnviz.plot.sweep import (
    plot_channel_attention,
    plot_class_d,
    plot_d_heatmap,
    plot_stage_bars,
    run_means,
)
from attnviz.results import ResultFormatError

matplotlib.use("Agg")

CFG = dict(
    input_size=(3, 64, 64),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
    crop_pct=1.0,
)
SCALES = (1.0, 1.5, 2.0)


def _view_by_hand(img: Image.Image, scale: float) -> torch.Tensor:
    """The s-times view of a 64 px image under CFG (crop_pct 1: the 1.0x view is the image),
    built with PIL and numpy only: the central 64 / s pixels of the ORIGINAL image (a float
    box), resized once to 64 with PIL's bilinear filter, normalised."""
    assert img.size == (64, 64)
    if scale != 1.0:
        half = 32 / scale
        box = (32 - half, 32 - half, 32 + half, 32 + half)
        img = img.resize((64, 64), Image.Resampling.BILINEAR, box=box)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(CFG["mean"], np.float32)) / np.asarray(CFG["std"], np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())[None]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_tiny("sk_tiny").eval()


@pytest.fixture(scope="module")
def shapes():
    return ShapesDataset(2, size=64, seed=7)  # 20 images, 10 classes


@pytest.fixture(scope="module")
def result(model, shapes):
    return scale_sweep(model, shapes, preprocess=CFG, batch_size=8, per_image=True, progress=False)


def _equal(a: ScaleSweepResult, b: ScaleSweepResult, atol: float = 1e-6) -> None:
    assert a.site_aliases == b.site_aliases and a.n_images == b.n_images
    order = [b.class_names.index(c) for c in a.class_names]  # folders sort classes by name
    for u in a.site_aliases:
        np.testing.assert_allclose(a.d_mean[u], b.d_mean[u], atol=atol, rtol=0)
        np.testing.assert_allclose(a.d_sem[u], b.d_sem[u], atol=atol, rtol=0)
        np.testing.assert_allclose(a.branch_mean[u], b.branch_mean[u], atol=atol, rtol=0)
        np.testing.assert_allclose(a.branch_std[u], b.branch_std[u], atol=atol, rtol=0)
        np.testing.assert_allclose(
            a.class_d_mean[u], b.class_d_mean[u][:, order], atol=atol, rtol=0
        )


def test_d_equals_hand_computation_from_capture(model, shapes, result):
    """Per image, scale and site: D from naive loops over channels of captured attention,
    one forward per image and scale on views built by hand (the sweep uses one forward for
    all views of a batch)."""
    sites = [s for s in attnviz.find_sites(model) if s.kind == "sk"]
    assert result.site_aliases == [s.alias for s in sites]
    n = 5
    hand = {s.alias: np.zeros((n, len(SCALES))) for s in sites}
    b_sum = {s.alias: None for s in sites}
    for i in range(n):
        img, _ = shapes[i]
        for si, scale in enumerate(SCALES):
            x = _view_by_hand(img, scale)
            with attnviz.capture(model, kinds="sk") as cache, torch.no_grad():
                model(x)
            for s in sites:
                att = cache[s.name][0].double()  # (M, C)
                c = att.shape[1]
                mean_b = sum(float(att[-1, k]) for k in range(c)) / c
                mean_a = sum(float(att[0, k]) for k in range(c)) / c
                hand[s.alias][i, si] = mean_b - mean_a
    for s in sites:
        np.testing.assert_allclose(result.image_d[s.alias][:n], hand[s.alias], atol=1e-6)
    # the whole-set mean, spread and class means follow from the per-image values
    for s in sites:
        d = result.image_d[s.alias]
        np.testing.assert_allclose(result.d_mean[s.alias], d.mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(
            result.d_sem[s.alias], d.std(axis=0, ddof=1) / math.sqrt(len(d)), atol=1e-9
        )
        labels = np.asarray(result.image_labels)
        for k in range(len(result.class_names)):
            np.testing.assert_allclose(
                result.class_d_mean[s.alias][:, k], d[labels == k].mean(axis=0), atol=1e-9
            )
        att = result.image_attention[s.alias].astype(np.float64)  # (N, S, M, C)
        np.testing.assert_allclose(result.branch_mean[s.alias], att.mean(axis=0), atol=1e-9)
        np.testing.assert_allclose(result.branch_std[s.alias], att.std(axis=0), atol=1e-7)
    del b_sum
    assert result.n_images == 20 and result.class_count.tolist() == [2] * 10
    assert result.class_names == shapes.classes
    assert result.image_ids == [f"#{i}" for i in range(20)]
    # the run's record: images, time and throughput, the preprocessing used
    run = result.meta["run"]
    assert run["n_images"] == 20 and run["n_skipped"] == 0 and run["seconds"] > 0
    assert run["images_per_s"] == pytest.approx(20 / run["seconds"], rel=0.01)
    assert run["preprocess"]["input_size"] == [3, 64, 64]
    assert result.meta["params"] == {
        "scales": [1.0, 1.5, 2.0],
        "per_image": True,
        "controls": True,
        "native": False,
        "boxes": 20,  # a ShapesDataset's object boxes: the crop protocol's inside/clipped split
    }


@pytest.mark.parametrize("batch_size", [1, 7, 32])
def test_batch_size_does_not_change_results(model, shapes, result, batch_size):
    other = scale_sweep(model, shapes, preprocess=CFG, batch_size=batch_size, progress=False)
    _equal(result, other)
    assert other.image_d is None and other.image_attention is None  # only with per_image


def test_model_mode_and_weights_are_restored(shapes):
    torch.manual_seed(1)
    m = create_tiny("sk_tiny")
    m.train()
    m.layer2.eval()  # a mixed state must come back exactly
    before = {k: v.clone() for k, v in m.state_dict().items()}
    flags = {name: mod.training for name, mod in m.named_modules()}
    scale_sweep(m, [shapes[i][0] for i in range(3)], preprocess=CFG, progress=False)
    assert {name: mod.training for name, mod in m.named_modules()} == flags
    for k, v in m.state_dict().items():  # BN running stats untouched (eval inside)
        assert torch.equal(v, before[k]), k


def test_folder_paths_and_dataloader_give_the_same_result(tmp_path, model, shapes, result):
    root = write_image_folder(shapes, tmp_path / "imgs")
    (root / "disc" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    (root / "ring" / "zz_empty.jpg").write_bytes(b"")
    from_dir = scale_sweep(model, root, preprocess=CFG, batch_size=6, progress=False)
    _equal(result, from_dir, atol=2e-6)
    assert from_dir.class_names == sorted(shapes.classes)  # folder classes sorted by name
    assert sorted(r for _, r in from_dir.skipped) == ["empty file", "not an image"]
    assert {f for f, _ in from_dir.skipped} == {"disc/zz_broken.png", "ring/zz_empty.jpg"}

    paths = sorted(root.rglob("0*.png"))
    from_paths = scale_sweep(model, paths, preprocess=CFG, progress=False)
    np.testing.assert_allclose(from_paths.d_mean["SK_2_1"], result.d_mean["SK_2_1"], atol=2e-6)
    assert from_paths.class_names == []
    per = scale_sweep(model, paths, preprocess=CFG, per_image=True, progress=False)
    assert per.image_ids == [str(p) for p in paths]

    loader = DataLoader(shapes, batch_size=5, shuffle=False)
    from_loader = scale_sweep(model, loader, preprocess=CFG, progress=False)
    _equal(result, from_loader)

    with pytest.raises(BadImageError, match="zz_broken.png: not an image"):
        scale_sweep(model, root, preprocess=CFG, strict=True, progress=False)

    # workers decode the same images: the same result
    with_workers = scale_sweep(model, root, preprocess=CFG, batch_size=6, workers=2,
                               progress=False)  # fmt: skip
    _equal(from_dir, with_workers, atol=0)
    assert with_workers.skipped == from_dir.skipped


def test_sites_selection_and_errors(model, shapes, result):
    sub = scale_sweep(
        model, [shapes[i][0] for i in range(4)], sites=["SK_3_2", "layer4.1.conv1"],
        preprocess=CFG, progress=False,
    )  # fmt: skip
    assert sub.site_aliases == ["SK_3_2", "SK_5_2"]
    assert sub.site("layer4.1.conv1").alias == "SK_5_2"
    np.testing.assert_allclose(sub.d_mean["SK_3_2"], scale_sweep(
        model, [shapes[i][0] for i in range(4)], preprocess=CFG, progress=False
    ).d_mean["SK_3_2"], atol=1e-9)  # fmt: skip
    assert result.stage_last_sites() == ["SK_2_2", "SK_3_2", "SK_4_2", "SK_5_2"]
    with pytest.raises(KeyError, match="unknown site 'SK_9_9'"):
        result.site("SK_9_9")
    with pytest.raises(ValueError, match="unknown SK .* site 'SK_9_9'"):
        scale_sweep(model, [shapes[0][0]], sites=["SK_9_9"], preprocess=CFG, progress=False)
    with pytest.raises(TypeError):
        scale_sweep(model, [shapes[0][0]], units=["SK_3_2"], preprocess=CFG, progress=False)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1))
    with pytest.raises(NoAttentionSitesError):
        scale_sweep(plain, [shapes[0][0]], preprocess=CFG, progress=False)
    for bad in ((0.5, 1.0), (1.0, float("inf")), (float("nan"),)):
        with pytest.raises(ValueError, match=">= 1.0"):
            scale_sweep(model, [shapes[0][0]], scales=bad, preprocess=CFG, progress=False)
    with pytest.raises(PreprocessError, match="preprocess="):
        scale_sweep(_ThreeBranch(), [shapes[0][0]], progress=False)
    # the bundled name gives that model's own preprocessing (64 px, crop_pct 1)
    own = scale_sweep(model, [shapes[i][0] for i in range(2)], preprocess="sk_tiny",
                      progress=False)  # fmt: skip
    assert own.meta["run"]["preprocess"]["input_size"] == [3, 64, 64]
    assert own.meta["run"]["preprocess"]["crop_pct"] == 1.0
    # prepared tensors cannot be swept: the sweep makes its own views of images
    with pytest.raises((ValueError, BadImageError), match="prepares its own inputs from images"):
        scale_sweep(model, torch.zeros(2, 3, 64, 64), preprocess=CFG, progress=False)
    for bad in ({"batch_size": 0}, {"limit": -1}, {"workers": -1}):
        with pytest.raises(ValueError, match="must be a whole number"):
            scale_sweep(model, [shapes[0][0]], preprocess=CFG, progress=False, **bad)
    limited = scale_sweep(model, shapes, preprocess=CFG, limit=3, progress=False)
    assert limited.n_images == 3


def test_tiny_models_default_to_their_own_preprocessing(model, shapes):
    own = scale_sweep(model, [shapes[i][0] for i in range(2)], progress=False)
    assert own.meta["run"]["preprocess"]["input_size"] == [3, 64, 64]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = SKConv(16, 32, num_paths=3, min_dim=8)

    def forward(self, x):
        return self.conv1(x)


class _ThreeBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.layer1 = nn.Sequential(_Block())

    def forward(self, x):
        return self.layer1(self.stem(x)).mean(dim=(2, 3))


def test_three_branches_keep_per_branch_means_and_d_is_largest_minus_smallest(shapes):
    torch.manual_seed(0)
    m = _ThreeBranch().eval()
    imgs = [shapes[i][0] for i in range(4)]
    res = scale_sweep(m, imgs, preprocess=CFG, per_image=True, progress=False)
    (alias,) = res.site_aliases
    assert res.site(alias).branches == 3 and res.site(alias).receptive_fields == (3, 5, 7)
    assert res.branch_mean[alias].shape == (3, 3, 32)
    # the three branches are a softmax: their means sum to 1 per channel
    np.testing.assert_allclose(res.branch_mean[alias].sum(axis=1), 1.0, atol=1e-6)
    x = _view_by_hand(imgs[2], 1.5)
    with attnviz.capture(m, kinds="sk") as cache, torch.no_grad():
        m(x)
    att = cache[alias][0].double()
    assert res.image_d[alias][2, 1] == pytest.approx(float(att[2].mean() - att[0].mean()), abs=1e-6)


def test_timm_skresnet18_is_swept(shapes):
    timm = pytest.importorskip("timm")
    m = timm.create_model("skresnet18", num_classes=4).eval()
    res = scale_sweep(m, [shapes[i][0] for i in range(2)], preprocess=CFG, progress=False)
    assert res.site_aliases[0] == "SK_2_1" and len(res.site_aliases) == 8
    assert res.stage_last_sites() == ["SK_2_2", "SK_3_2", "SK_4_2", "SK_5_2"]
    assert res.site("SK_2_1").receptive_fields == (3, 5)
    assert np.isfinite(res.d_table().to_numpy()).all()


def test_save_load_roundtrip_and_frames(tmp_path, result):
    out = result.save(tmp_path / "res")
    assert sorted(p.name for p in out.iterdir()) == [
        "D.csv", "channels.csv", "controls.csv", "groups.csv", "images.csv", "manifest.json",
        "scale_sweep.npz", "views.csv",
    ]  # fmt: skip
    back = ScaleSweepResult.load(out)
    assert back.view_records == result.view_records
    _equal(result, back, atol=0)
    assert back.image_ids == result.image_ids and back.class_names == result.class_names
    np.testing.assert_array_equal(back.image_attention["SK_4_1"], result.image_attention["SK_4_1"])
    frame = result.to_frame()
    row = frame[(frame.site == "SK_3_2") & (frame.scale == 1.5) & (frame["class"] == "all")
                & (frame.condition == "zoom")]  # fmt: skip
    assert len(row) == 1 and row.D.item() == pytest.approx(result.d_mean["SK_3_2"][1])
    assert row.name.item() == result.site("SK_3_2").name
    assert "unit" not in frame.columns
    ch = result.to_frame("channels")
    assert len(ch) == sum(3 * u.branches * u.channels for u in result.sites)
    im = result.to_frame("images")
    assert len(im) == 20 * 8 * 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "scale_sweep" and manifest["format_version"] == 3
    assert sorted(manifest["files"]) == sorted(p.name for p in out.iterdir())
    # saving again writes only its own files: a user's file stays, no temp files are left,
    # and of its own earlier files only those it no longer writes go
    (out / "notes.txt").write_text("mine")
    result.save(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]
    assert (out / "notes.txt").read_text() == "mine"
    no_images = dataclasses.replace(
        result, image_d=None, image_attention=None, image_ids=None, image_labels=None,
        image_view_d=None, image_upsampling=None, view_records=[],
    )  # fmt: skip
    no_images.save(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "D.csv", "channels.csv", "controls.csv", "groups.csv", "manifest.json", "notes.txt",
        "scale_sweep.npz",
    ]  # fmt: skip
    assert ScaleSweepResult.load(out).image_d is None
    # load checks the kind and refuses a newer format, naming the folder
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ResultFormatError, match=f"{out}.*format 99.*newer"):
        ScaleSweepResult.load(out)
    (out / "manifest.json").write_text(json.dumps({**manifest, "kind": "excitation_profile"}))
    with pytest.raises(
        ResultFormatError, match="kind 'excitation_profile', not of kind 'scale_sweep'"
    ):
        ScaleSweepResult.load(out)
    with pytest.raises(ResultFormatError, match="no attnviz result"):
        ScaleSweepResult.load(tmp_path / "nothing")
    summary = result.summary()
    assert isinstance(summary, str) and "SK_3_2 *" in summary


def test_stage_last_sites_picks_highest_block():
    sites = [
        SweepSite(f"SK_{s}_{b}", f"l{s}.{b}", s, b, 2, 8)
        for s, n in ((2, 3), (3, 4), (4, 6), (5, 3))
        for b in range(1, n + 1)
    ]
    assert stage_last_sites(sites) == ["SK_2_3", "SK_3_4", "SK_4_6", "SK_5_3"]


# --------------------------------------------------------------------------- plots
def test_stage_bars_heights_are_d_with_standard_errors(result):
    fig = plot_stage_bars(result)
    ax = fig.axes[0]
    sites = result.stage_last_sites()
    assert [t.get_text() for t in ax.get_xticklabels()] == sites
    assert ax.get_xlabel() == "SK site (last of each stage)"
    assert ax.get_ylabel() == "D = attention on largest − smallest kernel"
    assert "error bars: s.e. of the mean" in ax.get_title()
    bars = ax.patches
    assert len(bars) == len(sites) * len(result.scales)
    for si in range(len(result.scales)):
        heights = [bars[si * len(sites) + j].get_height() for j in range(len(sites))]
        np.testing.assert_allclose(heights, [result.d_mean[u][si] for u in sites], atol=1e-12)
    # error bars: one LineCollection per scale with segments of +- s.e.
    bar_sets = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bar_sets) == len(result.scales)
    segs = bar_sets[0].errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose(
        [s[1, 1] - s[0, 1] for s in segs], [2 * result.d_sem[u][0] for u in sites], atol=1e-12
    )
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["1x", "1.5x", "2x"]
    one = plot_stage_bars(result, image=3).axes[0]
    assert one.patches[0].get_height() == pytest.approx(result.image_d[sites[0]][3, 0])


def test_channel_attention_lines_are_b_means_over_runs(result):
    fig = plot_channel_attention(result, "SK_4_1", run=16)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert len(lines) == 3 and ax.get_xlabel() == "channel index (runs of 16)"
    assert ax.get_ylabel() == "attention on b (largest kernel)"
    b = result.branch_mean["SK_4_1"][:, -1]  # (S, C)
    for si, line in enumerate(lines):
        expected = [b[si, k : k + 16].mean() for k in range(0, b.shape[1], 16)]
        np.testing.assert_allclose(line.get_ydata(), expected, atol=1e-12)
        np.testing.assert_array_equal(line.get_xdata(), np.arange(0, b.shape[1], 16))
    fig = plot_channel_attention(result, "SK_2_1", image=2, run=None, branch=0)
    line = fig.axes[0].get_lines()[1]
    np.testing.assert_allclose(line.get_ydata(), result.image_attention["SK_2_1"][2, 1, 0])
    assert fig.axes[0].get_ylabel() == "attention on a (smallest kernel)"
    c = result.site("SK_4_1").channels
    assert c < 256
    auto = plot_channel_attention(result, "SK_4_1").axes[0]  # < 256 channels: no runs
    assert len(auto.get_lines()[0].get_xdata()) == c and auto.get_xlabel() == "channel index"
    x, y = run_means(np.arange(20.0), 8)
    assert x.tolist() == [0, 8, 16] and y.tolist() == [3.5, 11.5, 17.5]


def test_class_d_panels_and_heatmap(result):
    fig = plot_class_d(result)
    axes = fig.axes
    assert [ax.get_title(loc="left") for ax in axes] == ["SK_2_2", "SK_3_2", "SK_5_2"]
    for ax in axes:
        assert len(ax.containers) == 2  # 1.0x and 1.5x: dots with error bars, no lines
        dots = ax.containers[1].lines[0]
        assert dots.get_linestyle() == "None"
        np.testing.assert_allclose(dots.get_ydata(), result.class_d_mean[ax.get_title("left")][1])
    assert [t.get_text() for t in axes[-1].get_xticklabels()] == result.class_names

    fig = plot_d_heatmap(result)
    ax = fig.axes[0]
    np.testing.assert_allclose(
        np.asarray(ax.images[0].get_array()), result.d_table().to_numpy(), atol=1e-12
    )
    assert ax.images[0].norm.vmin == -ax.images[0].norm.vmax  # diverging, centred on 0
    assert not any(t.get_text().startswith("-0.000") for t in ax.texts)
    assert [t.get_text() for t in ax.get_yticklabels()] == result.site_aliases
    assert ax.get_ylabel() == "SK site"
    assert ax.get_xlabel() == "object scale"
    texts = [t.get_text() for t in ax.texts]
    assert texts[0] == f"{result.d_mean['SK_2_1'][0]:+.3f}"


def test_image_input_types(model):
    arr = np.zeros((64, 64, 3), dtype=np.uint8)
    gray = Image.new("L", (64, 64), 128)
    ds = [(arr, 0), (torch.zeros(3, 64, 64), 1), (gray, 1)]

    class Wrapped(torch.utils.data.Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds[i]

    res = scale_sweep(model, Wrapped(), preprocess=CFG, per_image=True, progress=False)
    assert res.n_images == 3 and res.class_count.tolist() == [1, 2]
    # identical black images give identical D
    np.testing.assert_allclose(res.image_d["SK_2_1"][0], res.image_d["SK_2_1"][1], atol=1e-7)
