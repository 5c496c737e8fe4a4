"""SENet role of excitation: the profile against hand computations, its plots, its I/O."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import timm
import torch
import torchvision

import attnviz
from attnviz.analysis.excitation import (
    ExcitationProfile,
    ExcitationProfileResult,
    SiteExcitation,
    evenly_spaced_channels,
    excitation_profile,
)
from attnviz.analysis.runner import RunInfo, State
from attnviz.data.sources import Batch, Record
from attnviz.errors import NoAttentionSitesError
from attnviz.models.tiny import create_tiny
from attnviz.plot.excitation import (
    plot_excitation_by_class,
    plot_excitation_std,
    plot_specificity,
)


@pytest.fixture(scope="module")
def se_tiny():
    torch.manual_seed(0)
    return create_tiny("se_tiny", num_classes=4, zero_init_residual=False)


@pytest.fixture(scope="module")
def images():
    # values k / 255: the same inputs whether given as a tensor of prepared inputs or as
    # images (a dataset's tensors become PIL images, then to_tensor gives them back exactly)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (12, 3, 32, 32), generator=g).float() / 255
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 3, 3]
    return x, labels


class FakeCache(dict):
    """An AttentionCache stand-in: gates by site name, and the site modules' inputs."""

    def __init__(self, gates, inputs):
        super().__init__(gates)
        self._inputs = inputs

    def inputs(self, name):
        return self._inputs[name]


def to_tensor(image):
    """An independent preprocessing: PIL -> [0, 1] float tensor (torchvision), no geometry."""
    return torchvision.transforms.functional.to_tensor(image)


@pytest.fixture(scope="module")
def profile(se_tiny, images):
    x, labels = images
    return excitation_profile(
        se_tiny, x, labels=labels, sites="all", batch_size=12, channels=10, progress=False
    )


def test_profile_equals_hand_computation_from_capture(se_tiny, images, profile):
    x, labels = images
    se_tiny.eval()
    with torch.no_grad(), attnviz.capture(se_tiny, kinds="se") as cache:
        se_tiny(x)
    y = np.asarray(labels)
    assert profile.aliases == [s.alias for s in attnviz.find_sites(se_tiny)]
    assert profile.classes == [0, 1, 2, 3]
    assert profile.counts.tolist() == [4, 3, 3, 2]
    for s in profile.sites:
        s_all = cache[s.name].numpy().astype(np.float64)
        np.testing.assert_allclose(s.mean, s_all.mean(axis=0), atol=1e-12)
        np.testing.assert_allclose(s.std, s_all.std(axis=0), atol=1e-9)
        for k, label in enumerate(profile.classes):
            rows = s_all[y == label]
            np.testing.assert_allclose(s.class_mean[k], rows.mean(axis=0), atol=1e-12)
            np.testing.assert_allclose(s.class_std[k], rows.std(axis=0), atol=1e-9)
        # the class-specificity by its definition, with explicit loops
        spread = np.mean(
            [np.std([rows_mean[c] for rows_mean in s.class_mean]) for c in range(s.n_channels)]
        )
        assert s.class_spread == pytest.approx(spread, rel=1e-12)
        assert s.specificity == pytest.approx(spread / s_all.std(axis=0).mean(), rel=1e-9)


def test_streaming_is_independent_of_batch_size(se_tiny, images, profile):
    x, labels = images
    other = excitation_profile(
        se_tiny, x, labels=labels, sites="all", batch_size=5, channels=10, progress=False
    )
    for a, b in zip(profile.sites, other.sites):
        # the model's float32 forward may differ in the last bits between batch sizes
        np.testing.assert_allclose(a.class_mean, b.class_mean, atol=1e-6)
        np.testing.assert_allclose(a.class_std, b.class_std, atol=1e-5)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-6)
    # the accumulation itself (the analysis's step into a State) is exact up to float64
    # rounding, whatever the chunking: feed the same excitations in one batch and in chunks
    rng = np.random.default_rng(0)
    s = rng.uniform(size=(37, 9)).astype(np.float32)
    y = rng.integers(0, 3, size=37)
    analysis = ExcitationProfile(sites=[profile.sites[0].alias], channels=4)
    (site,) = analysis.sites(se_tiny)

    xin = rng.normal(size=(37, 9, 2, 3)).astype(np.float32)  # the gate module's inputs

    def feed(state, start, stop):
        records = [Record(i, f"#{i}", int(y[i])) for i in range(start, stop)]
        batch = Batch(torch.zeros(stop - start, 3, 1, 1), records, stop - start)
        cache = FakeCache(
            {site.name: torch.from_numpy(s[start:stop])},
            {site.name: torch.from_numpy(xin[start:stop])},
        )
        analysis.step(state, batch, cache, None)

    one, many = State(), State()
    feed(one, 0, 37)
    for start in range(0, 37, 4):
        feed(many, start, min(start + 4, 37))
    assert one.sums.keys() == many.sums.keys()
    for k in one.sums:
        np.testing.assert_allclose(one.sums[k], many.sums[k], rtol=1e-13)
    info = RunInfo(37, 37, [], [], 1.0, [site], "m")
    a, b = analysis.finalise(one, info), analysis.finalise(many, info)
    assert a.counts.tolist() == b.counts.tolist() == [int((y == k).sum()) for k in range(3)]
    s64 = s.astype(np.float64)
    for k in range(3):
        np.testing.assert_allclose(a.sites[0].class_mean[k], s64[y == k].mean(0), rtol=1e-12)
        np.testing.assert_allclose(b.sites[0].class_mean[k], s64[y == k].mean(0), rtol=1e-12)
        np.testing.assert_allclose(b.sites[0].class_std[k], s64[y == k].std(0), atol=1e-9)
        z = xin.astype(np.float64)[y == k].mean(axis=(2, 3))  # the squeeze GAP(x) by hand
        np.testing.assert_allclose(b.sites[0].squeeze_class_mean[k], z.mean(0), rtol=1e-9)
    # two halves merged (as two ranks are) give the same sums as one pass
    half, other = State(), State()
    feed(half, 0, 20)
    feed(other, 20, 37)
    half.merge(other)
    for k in one.sums:
        np.testing.assert_allclose(one.sums[k], half.sums[k], rtol=1e-13)


def test_one_forward_per_batch(se_tiny, images):
    x, labels = images
    calls = []
    handle = se_tiny.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    try:
        result = excitation_profile(
            se_tiny, x, labels=labels, sites="all", batch_size=5, progress=False
        )
    finally:
        handle.remove()
    assert calls == [5, 5, 2]  # 12 images in batches of 5: one forward each
    assert result.n_images == 12


def test_default_sites_follow_the_senet_rule():
    chosen = [s.alias for s in ExcitationProfile().sites(timm.create_model("seresnet50"))]
    assert chosen == ["SE_2_3", "SE_3_4", "SE_4_6", "SE_5_1", "SE_5_2", "SE_5_3"]


@pytest.mark.parametrize(
    "make",
    [
        lambda: timm.create_model("seresnet50", num_classes=3),
        lambda: timm.create_model("legacy_seresnet18", num_classes=3),
        lambda: timm.create_model("ecaresnet26t", num_classes=3),
        lambda: timm.create_model("resnet18", num_classes=3, block_args=dict(attn_layer="cbam")),
        lambda: torchvision.models.efficientnet_b0(num_classes=3),
        lambda: torchvision.models.mobilenet_v3_small(num_classes=3),
        lambda: create_tiny("cbam_tiny", num_classes=3, zero_init_residual=False),
    ],
    ids=[
        "seresnet50",
        "legacy_seresnet18",
        "ecaresnet26t",
        "timm_cbam",
        "efficientnet_b0",
        "mobilenet_v3_small",
        "cbam_tiny",
    ],
)
def test_works_on_timm_torchvision_and_tiny_models(make):
    torch.manual_seed(0)
    model = make()
    model.train()
    x = torch.randn(3, 3, 32, 32)
    result = excitation_profile(model, x, labels=[0, 1, 1], channels=5, progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert result.sites, "no site selected"
    kinds = {s.kind for s in attnviz.find_sites(model)}
    for s in result.sites:
        assert s.kind in kinds & {"se", "eca", "cbam_channel"}
        assert s.class_mean.shape == (2, s.n_channels)
        assert np.all((s.mean >= 0) & (s.mean <= 1))
        assert len(s.channels) == min(5, s.n_channels)
        # the all-image mean is the count-weighted mean of the class means
        np.testing.assert_allclose(s.mean, (s.class_mean * [[1], [2]]).sum(0) / 3, atol=1e-12)


def test_without_labels_uses_predictions(se_tiny, images):
    x, _ = images
    se_tiny.eval()
    with torch.no_grad():
        pred = se_tiny(x).argmax(1).numpy()
    with pytest.warns(UserWarning, match="model's own predictions"):
        result = excitation_profile(se_tiny, x, channels=4, progress=False)
    assert result.label_source == "prediction"
    assert "classes from: the model's predictions" in result.summary()
    assert "WARNING: classes come from the model's own predictions" in result.summary()
    assert result.classes == sorted(set(pred.tolist()))
    assert result.counts.tolist() == [int((pred == k).sum()) for k in result.classes]


def test_chosen_classes_by_name_and_errors(se_tiny, images):
    x, labels = images
    ds = torch.utils.data.TensorDataset(x, torch.tensor(labels))
    ds.classes = ["cat", "dog", "fish", "bird"]
    result = excitation_profile(
        se_tiny, ds, classes=["fish", "cat"], preprocess=to_tensor, progress=False
    )
    assert result.classes == [2, 0]
    assert result.class_names == ["fish", "cat"]
    assert result.counts.tolist() == [3, 4]
    assert result.n_images == 12  # unrecorded classes still count in the all-image mean
    with pytest.raises(ValueError, match="unknown class 'cow'"):
        excitation_profile(se_tiny, ds, classes=["cow"], preprocess=to_tensor, progress=False)
    with pytest.raises(ValueError, match="unknown channel-attention site 'SE_9_9'; valid: "):
        excitation_profile(se_tiny, x, sites=["SE_9_9"], progress=False)
    with pytest.raises(NoAttentionSitesError, match="channel-attention"):
        excitation_profile(create_tiny("gc_tiny"), x, progress=False)


def test_evenly_spaced_channels():
    assert evenly_spaced_channels(10, 3).tolist() == [0, 4, 9]  # round(4.5) = 4 (banker's)
    assert evenly_spaced_channels(4, 50).tolist() == [0, 1, 2, 3]
    ch = evenly_spaced_channels(2048, 50)
    assert len(ch) == 50 and ch[0] == 0 and ch[-1] == 2047


def test_specificity_on_constructed_means():
    c = 6
    same = SiteExcitation(
        "A",
        "a",
        "se",
        2,
        1,
        np.full((3, c), 0.5),
        np.full((3, c), 0.1),
        np.full(c, 0.5),
        np.full(c, 0.1),
        np.arange(c),
    )
    assert same.specificity == 0.0
    means = np.array([[0.2] * c, [0.8] * c])
    apart = SiteExcitation(
        "B",
        "b",
        "se",
        5,
        1,
        means,
        np.zeros((2, c)),
        np.full(c, 0.5),
        np.full(c, 0.3),
        np.arange(c),
    )
    # classes at 0.2 and 0.8 with no spread inside: between-class std 0.3 = total std
    assert apart.specificity == pytest.approx(1.0)
    result = ExcitationProfileResult(
        [same, apart], [0, 1, 2], ["x", "y", "z"], np.array([4, 4, 4]), 12, "given"
    )
    assert result.specificity_chance() == pytest.approx(np.sqrt(2 / 3 * 0.25))


def test_save_load_round_trip(profile, tmp_path):
    profile.save(tmp_path / "r")
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "excitation.csv",
        "excitation_profile.npz",
        "manifest.json",
        "specificity.csv",
    ]
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["kind"] == "excitation_profile"
    assert manifest["format_version"] == ExcitationProfileResult.format_version
    back = ExcitationProfileResult.load(tmp_path / "r")
    assert back.aliases == profile.aliases and back.classes == profile.classes
    for a, b in zip(profile.sites, back.sites):
        np.testing.assert_array_equal(a.class_mean, b.class_mean)
        np.testing.assert_array_equal(a.channels, b.channels)
    frame = profile.to_frame()
    s0 = profile.sites[0]
    row = frame[(frame.site == s0.alias) & (frame.class_name == "2") & (frame.channel == 3)]
    assert float(row["mean"].iloc[0]) == pytest.approx(s0.class_mean[2, 3])
    assert len(frame) == sum(s.n_channels * 5 for s in profile.sites)
    # the summary is text: the counts, then one row per site with its specificity
    text = profile.summary()
    assert isinstance(text, str)
    assert text.startswith("12 images, 4 classes (classes from: labels); null: 300 label")
    assert "WARNING" not in text
    table = profile.specificity()
    for _, row in table.iterrows():
        for col in ("specificity", "squeeze_specificity", "gate_gain", "null_p95", "p_value"):
            assert f"{row[col]:.4f}" in text
        assert row["site"] in text
    # the controls survive a round trip
    for a, b in zip(profile.sites, back.sites):
        np.testing.assert_array_equal(a.null, b.null)
        np.testing.assert_array_equal(a.squeeze_class_mean, b.squeeze_class_mean)
    assert back.permutations == 300 and back.specificity().equals(table)


def test_fig6_plots_the_class_means_over_the_shown_channels(profile):
    fig = plot_excitation_by_class(profile, [0, 2])
    axes = [ax for ax in fig.axes if ax.get_title(loc="left")]
    assert [ax.get_title(loc="left") for ax in axes] == profile.aliases
    (legend,) = fig.legends  # one legend for all panels
    assert [t.get_text() for t in legend.get_texts()] == ["0", "2", "all classes"]
    for ax, s in zip(axes, profile.sites):
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == ["0", "2", "all classes"]
        assert lines[2].get_linestyle() == "--" and lines[2].get_color() == "black"
        np.testing.assert_array_equal(lines[0].get_xdata(), s.channels)
        np.testing.assert_allclose(lines[1].get_ydata(), s.class_mean[2, s.channels])
        np.testing.assert_allclose(lines[2].get_ydata(), s.mean[s.channels])
        assert ax.get_xlabel() == "channel index"
    plt.close(fig)


def test_fig7_band_is_mean_plus_minus_std(profile):
    fig = plot_excitation_std(profile, 1)
    ax = fig.axes[0]
    s = profile.sites[0]
    mean, std = s.class_mean[1, s.channels], s.class_std[1, s.channels]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), mean)
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].max() == pytest.approx((mean + std).max())
    assert band[:, 1].min() == pytest.approx((mean - std).min())
    plt.close(fig)


def test_specificity_plot_matches_the_table(profile):
    fig = plot_specificity(profile)
    ax = fig.axes[0]
    table = profile.specificity()
    lines = ax.get_lines()
    np.testing.assert_allclose(lines[0].get_ydata(), table["specificity"])
    np.testing.assert_allclose(lines[1].get_ydata(), table["squeeze_specificity"])
    np.testing.assert_allclose(lines[2].get_ydata(), table["null_mean"])
    assert [t.get_text() for t in ax.get_xticklabels()] == table["site"].tolist()
    # the null band spans the 5th to the 95th percentile of each site's null
    band = ax.collections[0].get_paths()[0].vertices
    top = max(band[:, 1])
    assert top == pytest.approx(max(table["null_p95"]))
    plt.close(fig)


def test_dataloader_and_paths_give_the_same_profile(se_tiny, images, profile, tmp_path):
    x, labels = images
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, torch.tensor(labels)), batch_size=12
    )
    from_loader = excitation_profile(
        se_tiny, loader, sites="all", channels=10, preprocess=to_tensor, progress=False
    )
    assert from_loader.classes == profile.classes
    for a, b in zip(profile.sites, from_loader.sites):
        np.testing.assert_allclose(a.class_mean, b.class_mean, atol=1e-12)
    # files: decoded, preprocessed with the config; the missing one is skipped with a reason
    from PIL import Image

    paths = []
    for i in range(3):
        arr = np.random.default_rng(i).integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    paths.append(tmp_path / "missing.png")
    config = dict(input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3, crop_pct=1.0)
    result = excitation_profile(
        se_tiny, paths, labels=[1, 1, 0, 0], preprocess=config, progress=False
    )
    assert result.n_images == 3 and result.counts.tolist() == [1, 2]
    assert result.skipped == [(str(tmp_path / "missing.png"), "missing file")]
    # a tiny model carries its own preprocessing (64 px, as trained); a bare module does not
    own = excitation_profile(se_tiny, paths[:1], labels=[0], progress=False)
    assert own.meta["run"]["preprocess"]["input_size"] == [3, 64, 64]
    bare = torch.nn.Sequential(se_tiny)
    with pytest.raises(ValueError, match="preprocess="):
        excitation_profile(bare, paths[:1], progress=False)


def test_classes_given_as_label_text_are_drawn(se_tiny, images):
    from attnviz.commands.excitation import excitation_figures

    x, labels = images
    ds = torch.utils.data.TensorDataset(x, torch.tensor(labels))
    ds.classes = ["cat", "dog", "fish", "bird"]
    # the CLI passes --classes as text; labels as text are accepted by the analysis
    result = excitation_profile(
        se_tiny, ds, classes=["2", "0"], channels=4, preprocess=to_tensor, progress=False
    )
    assert result.classes == [2, 0] and result.class_names == ["fish", "cat"]
    figures = excitation_figures(result, ["2", "0"])
    fig6 = figures["fig6_excitation_by_class"]
    (legend,) = fig6.legends
    assert [t.get_text() for t in legend.get_texts()] == ["fish", "cat", "all classes"]
    for fig in figures.values():
        plt.close(fig)
