"""Spatial attention vs Grad-CAM: captum parity, agreement scores, plots, I/O."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import timm
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam

import attnviz
from attnviz.analysis.attribution import (
    AttentionVsAttributionResult,
    attention_vs_attribution,
    comparison_grid,
    default_gradcam_layer,
    iou_chance,
    pool_to,
    pooled_agreement,
    rank_average,
    spearman_rank_correlation,
    top_k_iou,
    top_k_region,
)
from attnviz.errors import NoAttentionSitesError
from attnviz.models.tiny import create_tiny
from attnviz.plot.attribution import plot_agreement, plot_attention_vs_gradcam
from attnviz.plot.overlay import upsample


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
    # exact at a 4x4 grid (n = 4 of 16 cells, hypergeometric overlap), by hand:
    # P(x) = C(4,x) C(12,4-x) / 1820 -> E[x / (8 - x)] = (880/7 + 396/3 + 48*3/5 + 1) / 1820
    assert iou_chance(0.2, (4, 4)) == pytest.approx((880 / 7 + 132 + 28.8 + 1) / 1820)
    assert iou_chance(0.2, (4, 4)) == pytest.approx(0.158, abs=5e-4)
    assert iou_chance(0.2, (1000, 1000)) == pytest.approx(0.2 / 1.8, abs=1e-3)  # large grid


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


def block_mean(a: np.ndarray, grid) -> np.ndarray:
    """Average of a (H, W) map over equal blocks to ``grid`` (H, W multiples), by loops."""
    h, w = a.shape
    fh, fw = h // grid[0], w // grid[1]
    out = np.zeros(grid)
    for y in range(grid[0]):
        for x in range(grid[1]):
            out[y, x] = a[y * fh : (y + 1) * fh, x * fw : (x + 1) * fw].mean()
    return out


def test_attention_side_equals_captured_maps_compared_at_the_coarser_grid(
    cbam_model, batch, comparison
):
    x, labels = batch
    cbam_model.eval()
    with torch.no_grad(), attnviz.capture(cbam_model, kinds="cbam_spatial") as cache:
        cbam_model(x)
    assert comparison.aliases == [
        s.alias for s in attnviz.find_sites(cbam_model) if s.kind == "cbam_spatial"
    ]
    cam = (
        LayerGradCam(cbam_model, cbam_model.layer4)
        .attribute(x, target=torch.tensor(labels), relu_attributions=True)[:, 0]
        .detach()
        .numpy()
    )
    assert comparison.meta["gradcam_grid"] == [2, 2] and comparison.compare_at == "coarser"
    for j, site in enumerate(comparison.sites):
        raw = cache[site["name"]]
        assert site["grid"] == list(raw.shape[-2:])
        assert site["compare_grid"] == [min(raw.shape[-2], 2), min(raw.shape[-1], 2)]
        # figures still show the map upsampled to the input
        up = F.interpolate(raw[:, None], (64, 64), mode="bilinear")[:, 0].numpy()
        np.testing.assert_allclose(comparison.attention[j], up, atol=1e-6)
        for i in range(len(x)):
            a = block_mean(raw[i].double().numpy(), site["compare_grid"])
            g = block_mean(cam[i].astype(np.float64), site["compare_grid"])
            assert comparison.spearman[i, j] == pytest.approx(
                spearman_rank_correlation(a, g), nan_ok=True, abs=1e-6
            )
            assert comparison.iou[i, j] == pytest.approx(
                top_k_iou(a, g, 0.2), nan_ok=True, abs=1e-6
            )
    table = comparison.site_summary()
    assert np.isfinite(comparison.spearman).any()
    np.testing.assert_allclose(
        table["spearman_mean"], np.nanmean(comparison.spearman, axis=0), equal_nan=True
    )
    np.testing.assert_allclose(table["iou_mean"], np.nanmean(comparison.iou, axis=0))
    assert table["site"].tolist() == comparison.aliases
    assert table["gradcam_grid"].tolist() == ["2x2"] * len(table)
    assert table["attention_grid"].tolist() == [
        "x".join(map(str, s["grid"])) for s in comparison.sites
    ]
    # summary() is text: the layer, the target, the grids and a row per site with its mean rho
    text = comparison.summary()
    assert isinstance(text, str)
    assert text.startswith("5 images, Grad-CAM at layer4 for the label class; top-20% IoU")
    assert "attnviz's own comparison" in text and "coarser grid of the two" in text
    for alias, rho in zip(comparison.aliases, table["spearman_mean"]):
        assert alias in text and f"{rho:.3f}" in text
    # the pixel-level reading is still available
    pixel = attention_vs_attribution(
        cbam_model, x, labels=labels, sites="all", compare_at="input", progress=False
    )
    for j in range(len(pixel.sites)):
        for i in range(len(x)):
            assert pixel.spearman[i, j] == pytest.approx(
                spearman_rank_correlation(pixel.attention[j, i], pixel.gradcam[i]),
                nan_ok=True,
                abs=1e-6,
            )


def test_pooled_agreement_on_constructed_maps():
    rng = np.random.default_rng(0)
    coarse = rng.permutation(16).reshape(4, 4).astype(np.float64)  # distinct values
    # a 16x16 attention map: the coarse map in 4x4 blocks plus a pattern that averages to 0
    # within every block (a checkerboard of +-5, larger than the steps between blocks)
    check = 5.0 * (np.indices((16, 16)).sum(0) % 2 * 2 - 1)
    fine = np.kron(coarse, np.ones((4, 4))) + check
    rho, iou, grid = pooled_agreement(fine, coarse, 0.25)
    assert grid == (4, 4)
    assert rho == pytest.approx(1.0) and iou == pytest.approx(1.0)  # agreement is exact
    rho, iou, grid = pooled_agreement(coarse, fine, 0.25)  # either side may be the finer
    assert grid == (4, 4) and rho == pytest.approx(1.0)
    rho, iou, _ = pooled_agreement(fine, -coarse, 0.25)  # reversed ordering
    assert rho == pytest.approx(-1.0) and iou == 0.0
    # at the pixel level the same pair disagrees by construction (the checkerboard)
    up = F.interpolate(torch.tensor(coarse)[None, None], (16, 16), mode="bilinear")[0, 0]
    assert spearman_rank_correlation(fine, up.numpy()) < 0.8
    # grids that are not multiples: adaptive average pooling, per axis the coarser
    assert comparison_grid((7, 32), (4, 4)) == (4, 4)
    assert comparison_grid((2, 9), (4, 4)) == (2, 4)
    pooled = pool_to(torch.arange(36.0).reshape(1, 6, 6), (3, 3))[0]
    assert pooled[0, 0] == pytest.approx(np.mean([0, 1, 6, 7]))


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
        assert result.targets.dtype == np.int64  # class indices, not floats
        assert result.gradcam.shape == (2, 64, 64) and result.attention.shape == (1, 2, 64, 64)
        assert result.spearman.shape == (5, 1)


def test_errors(batch):
    x, _ = batch
    with pytest.raises(NoAttentionSitesError, match="spatial attention"):
        attention_vs_attribution(create_tiny("se_tiny"), x, progress=False)
    with pytest.raises(ValueError, match="unknown spatial attention site 'GC_9'; valid: "):
        attention_vs_attribution(create_tiny("cbam_tiny"), x, sites=["GC_9"], progress=False)
    with pytest.raises(ValueError, match="no submodule"):
        attention_vs_attribution(create_tiny("cbam_tiny"), x, layer="layer9", progress=False)


def test_save_load_round_trip(comparison, tmp_path):
    comparison.save(tmp_path / "r")
    back = AttentionVsAttributionResult.load(tmp_path / "r")
    np.testing.assert_array_equal(back.gradcam, comparison.gradcam)
    np.testing.assert_array_equal(back.spearman, comparison.spearman)
    assert back.sites == comparison.sites and back.ids == comparison.ids
    frame = comparison.to_frame()
    assert len(frame) == 5 * len(comparison.sites)
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "agreement.csv",
        "attention_vs_attribution.npz",
        "manifest.json",
        "summary.csv",
    ]
    np.testing.assert_allclose(
        pd.read_csv(tmp_path / "r" / "summary.csv")["iou_mean"],
        comparison.site_summary()["iou_mean"],
    )


def test_overlay_figure_shows_the_maps(comparison):
    fig = plot_attention_vs_gradcam(comparison, [1, 3])
    n = 2 + len(comparison.sites)
    grid = np.array(fig.axes[: 2 * n]).reshape(2, n)  # then the two colour bars
    for r, i in enumerate([1, 3]):
        img = comparison.images[i]
        np.testing.assert_array_equal(grid[r, 0].images[0].get_array(), img)
        top = comparison.gradcam[i].max()
        cam = comparison.gradcam[i] / top if top > 0 else np.zeros_like(comparison.gradcam[i])
        np.testing.assert_allclose(
            grid[r, 1].images[1].get_array(), upsample(cam, img.shape[:2]), atol=1e-6
        )
        np.testing.assert_allclose(
            grid[r, 3].images[1].get_array(),
            upsample(comparison.attention[1, i], img.shape[:2]),
            atol=1e-6,
        )
        assert f"ρ={comparison.spearman[i, 1]:.2f}" in grid[r, 3].get_xlabel()
    assert comparison.sites[1]["alias"] == grid[0, 3].get_title()
    # every attention panel on one norm, Grad-CAM on [0, 1]
    norms = {id(ax.images[1].norm) for ax in grid[:, 2:].ravel()}
    assert len(norms) == 1 and grid[0, 1].images[1].norm.vmax == 1.0
    plt.close(fig)


def test_agreement_figure_bars_are_the_summary(comparison):
    fig = plot_agreement(comparison)
    ax_r, ax_i = fig.axes
    summary = comparison.site_summary()
    heights = [p.get_height() for p in ax_r.patches]
    np.testing.assert_allclose(heights, summary["spearman_mean"], equal_nan=True)
    np.testing.assert_allclose([p.get_height() for p in ax_i.patches], summary["iou_mean"])
    grid = comparison.sites[0]["compare_grid"]
    assert ax_i.get_lines()[-1].get_ydata()[0] == pytest.approx(iou_chance(0.2, grid))
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


def _count_forwards(model):
    """A forward hook on the model root: the batch size of every forward of the model."""
    calls: list[int] = []
    handle = model.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
    return calls, handle


def test_one_forward_per_batch_and_gradcam_of_that_forward(cbam_model, batch):
    x, labels = batch
    calls, handle = _count_forwards(cbam_model)
    try:
        result = attention_vs_attribution(
            cbam_model, x, target="prediction", batch_size=2, keep_maps=5, progress=False
        )
    finally:
        handle.remove()
    assert calls == [2, 2, 1]  # 5 images in batches of 2: captum's forward is the only one
    cbam_model.eval()
    with torch.no_grad():
        pred = cbam_model(x).argmax(1)
    assert result.targets.tolist() == pred.tolist() and result.target_source == "prediction"
    # Grad-CAM of that one forward = captum's LayerGradCam run directly on the model
    cam = LayerGradCam(cbam_model, cbam_model.layer4).attribute(
        x, target=pred, relu_attributions=True
    )
    expected = LayerAttribution.interpolate(cam, (64, 64), "bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(result.gradcam, expected, rtol=1e-4, atol=1e-6)
    # and the attention compared is that of the same forward (= a separate no_grad capture)
    with torch.no_grad(), attnviz.capture(cbam_model, sites=result.aliases) as cache:
        cbam_model(x)
    for j, site in enumerate(result.sites):
        up = F.interpolate(cache[site["name"]][:, None], (64, 64), mode="bilinear")[:, 0]
        np.testing.assert_allclose(result.attention[j], up.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "workers",
    [
        0,
        1,
    ],
)
def test_figure_images_are_the_view_the_model_saw(tmp_path, workers):
    from PIL import Image

    from attnviz.models import load_model

    model, config = load_model("cbam_tiny")  # input 64 x 64, crop_pct 1
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(tmp_path / f"{i}.png")
    result = attention_vs_attribution(
        model, tmp_path, preprocess=config, keep_maps=3, workers=workers, progress=False
    )
    assert result.ids == ["0.png", "1.png", "2.png"]
    # shorter side already 64: no resize, then the centre 64 x 64 crop of the 80 columns
    np.testing.assert_array_equal(result.images, np.stack([a[:, 8:72] for a in arrays]))
