"""Spatial attention vs Grad-CAM: captum parity, agreement scores, plots, I/O."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam

import attnviz
from attnviz.analysis.attribution import (
    AttributionComparison,
    attention_vs_attribution,
    default_gradcam_layer,
    iou_chance,
    rank_average,
    spearman_rank_correlation,
    top_k_iou,
    top_k_region,
)
from attnviz.errors import NoAttentionSitesError
from attnviz.models.tiny import create_tiny
from attnviz.plot.attribution import plot_agreement, plot_attention_vs_gradcam
from attnviz.plot.overlay import overlay


# ----------------------------------------------------------------------------- agreement
def test_spearman_identical_reversed_and_naive_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 8))
    assert spearman_rank_correlation(a, a) == pytest.approx(1.0)
    assert spearman_rank_correlation(a, -a) == pytest.approx(-1.0)
    assert spearman_rank_correlation(a, np.exp(a)) == pytest.approx(1.0)  # monotone map
    b = rng.normal(size=(8, 8))
    # no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1)) with plain ranks
    ra = np.argsort(np.argsort(a.ravel()))
    rb = np.argsort(np.argsort(b.ravel()))
    n = a.size
    naive = 1 - 6 * ((ra - rb) ** 2).sum() / (n * (n * n - 1))
    assert spearman_rank_correlation(a, b) == pytest.approx(naive, abs=1e-12)
    assert np.isnan(spearman_rank_correlation(np.ones(5), np.arange(5)))


def test_ties_share_their_average_rank():
    assert rank_average(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_top_k_iou_identical_disjoint_and_partial():
    a = np.arange(100, dtype=float).reshape(10, 10)
    assert top_k_region(a, 0.2).sum() == 20
    assert top_k_iou(a, a, 0.2) == 1.0
    assert top_k_iou(a, -a, 0.2) == 0.0  # top 20 of a are the bottom 20 of -a
    b = np.roll(a.ravel(), 10).reshape(10, 10)  # top 20 of b: values 80..89 and 90..99 moved
    ra, rb = set(np.argsort(a.ravel())[-20:]), set(np.argsort(b.ravel())[-20:])
    assert top_k_iou(a, b, 0.2) == pytest.approx(len(ra & rb) / len(ra | rb))
    assert np.isnan(top_k_iou(np.zeros((4, 4)), a[:4, :4]))
    with pytest.raises(ValueError, match="top_k"):
        top_k_iou(a, a, 0.0)
    assert iou_chance(0.2) == pytest.approx(0.2 / 1.8)


# ----------------------------------------------------------------------------- the analysis
@pytest.fixture(scope="module")
def cbam_model():
    torch.manual_seed(0)
    # zero_init_last=False: timm zero-initialises the last BN of each block, which would make
    # every attention map of a random model constant
    return timm.create_model(
        "resnet18", num_classes=5, block_args=dict(attn_layer="cbam"), zero_init_last=False
    )


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(5, 3, 64, 64, generator=g), [0, 4, 2, 2, 1]


@pytest.fixture(scope="module")
def comparison(cbam_model, batch):
    x, labels = batch
    return attention_vs_attribution(
        cbam_model, x, labels=labels, sites="all", batch_size=3, progress=False
    )


def test_gradcam_side_equals_captum(cbam_model, batch, comparison):
    x, labels = batch
    cbam_model.eval()
    assert comparison.layer == "layer4" == default_gradcam_layer(cbam_model)
    cam = LayerGradCam(cbam_model, cbam_model.layer4).attribute(
        x, target=torch.tensor(labels), relu_attributions=True
    )
    expected = LayerAttribution.interpolate(cam, (64, 64), "bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(comparison.gradcam, expected, rtol=1e-4, atol=1e-6)
    assert comparison.targets.tolist() == labels
    assert comparison.target_source == "label"


def test_attention_side_equals_captured_maps_upsampled(cbam_model, batch, comparison):
    x, _ = batch
    cbam_model.eval()
    with torch.no_grad(), attnviz.capture(cbam_model, kinds="cbam_spatial") as cache:
        cbam_model(x)
    assert comparison.aliases == [
        s.alias for s in attnviz.find_sites(cbam_model) if s.kind == "cbam_spatial"
    ]
    for j, site in enumerate(comparison.sites):
        raw = cache[site["name"]]
        assert site["grid"] == list(raw.shape[-2:])
        up = F.interpolate(raw[:, None], (64, 64), mode="bilinear")[:, 0].numpy()
        np.testing.assert_allclose(comparison.attention[j], up, atol=1e-6)
        for i in range(len(x)):
            assert comparison.spearman[i, j] == pytest.approx(
                spearman_rank_correlation(up[i], comparison.gradcam[i]), nan_ok=True, abs=1e-6
            )
            assert comparison.iou[i, j] == pytest.approx(
                top_k_iou(up[i], comparison.gradcam[i], 0.2), nan_ok=True, abs=1e-6
            )
    summary = comparison.summary()
    assert np.isfinite(comparison.spearman).any()
    np.testing.assert_allclose(
        summary["spearman_mean"], np.nanmean(comparison.spearman, axis=0), equal_nan=True
    )


def test_default_site_and_prediction_target_on_tiny_models(batch):
    x, _ = batch
    for name, kind in (("cbam_tiny", "cbam_spatial"), ("gc_tiny", "gc")):
        torch.manual_seed(0)
        model = create_tiny(name, num_classes=5, zero_init_residual=False)
        model.train()
        result = attention_vs_attribution(model, x, progress=False, keep_maps=2)
        assert model.training
        last = [s for s in attnviz.find_sites(model) if s.kind == kind][-1]
        assert result.aliases == [last.alias]
        model.eval()
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        assert result.target_source == "prediction"
        np.testing.assert_array_equal(result.targets, pred)
        assert result.gradcam.shape == (2, 64, 64) and result.attention.shape == (1, 2, 64, 64)
        assert result.spearman.shape == (5, 1)


def test_errors(batch):
    x, _ = batch
    with pytest.raises(NoAttentionSitesError, match="spatial attention"):
        attention_vs_attribution(create_tiny("se_tiny"), x, progress=False)
    with pytest.raises(ValueError, match="valid sites"):
        attention_vs_attribution(create_tiny("cbam_tiny"), x, sites=["GC_9"], progress=False)
    with pytest.raises(ValueError, match="no submodule"):
        attention_vs_attribution(create_tiny("cbam_tiny"), x, layer="layer9", progress=False)


def test_save_load_round_trip(comparison, tmp_path):
    comparison.save(tmp_path / "r")
    back = AttributionComparison.load(tmp_path / "r")
    np.testing.assert_array_equal(back.gradcam, comparison.gradcam)
    np.testing.assert_array_equal(back.spearman, comparison.spearman)
    assert back.sites == comparison.sites and back.ids == comparison.ids
    frame = comparison.to_frame()
    assert len(frame) == 5 * len(comparison.sites)
    assert (tmp_path / "r" / "summary.csv").exists() and (tmp_path / "r" / "agreement.csv").exists()


def test_overlay_figure_shows_the_maps(comparison):
    fig = plot_attention_vs_gradcam(comparison, [1, 3])
    grid = np.array(fig.axes).reshape(2, 2 + len(comparison.sites))
    for r, i in enumerate([1, 3]):
        img = comparison.images[i]
        np.testing.assert_array_equal(grid[r, 0].images[0].get_array(), img)
        np.testing.assert_array_equal(
            grid[r, 1].images[0].get_array(), overlay(img, comparison.gradcam[i])
        )
        np.testing.assert_array_equal(
            grid[r, 3].images[0].get_array(), overlay(img, comparison.attention[1, i])
        )
        assert comparison.sites[1]["alias"] in grid[r, 3].get_title()
    plt.close(fig)


def test_agreement_figure_bars_are_the_summary(comparison):
    fig = plot_agreement(comparison)
    ax_r, ax_i = fig.axes
    summary = comparison.summary()
    heights = [p.get_height() for p in ax_r.patches]
    np.testing.assert_allclose(heights, summary["spearman_mean"], equal_nan=True)
    np.testing.assert_allclose([p.get_height() for p in ax_i.patches], summary["iou_mean"])
    assert ax_i.get_lines()[-1].get_ydata()[0] == pytest.approx(iou_chance(0.2))
    plt.close(fig)


def test_explicit_targets(cbam_model, batch):
    x, labels = batch
    fixed = attention_vs_attribution(cbam_model, x, labels=labels, target=3, progress=False)
    assert fixed.targets.tolist() == [3] * 5 and fixed.target_source == "fixed"
    cbam_model.eval()  # the analysis restored the fixture's flag; captum runs as it is
    cam = LayerGradCam(cbam_model, cbam_model.layer4).attribute(x, 3, relu_attributions=True)
    expected = LayerAttribution.interpolate(cam, (64, 64), "bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(fixed.gradcam, expected, rtol=1e-4, atol=1e-6)
    per_image = attention_vs_attribution(
        cbam_model, x, target=[4, 3, 2, 1, 0], batch_size=2, progress=False
    )
    assert per_image.targets.tolist() == [4, 3, 2, 1, 0]
    with pytest.raises(ValueError, match="fewer than the images"):
        attention_vs_attribution(cbam_model, x, target=[1, 2], progress=False)
