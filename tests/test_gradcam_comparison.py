"""The CBAM paper's comparison: Grad-CAM of several models on the same images, with P(target)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from captum.attr import LayerAttribution, LayerGradCam

from attnviz.analysis.attribution import GradCamComparisonResult, gradcam_comparison
from attnviz.models.tiny import create_tiny
from attnviz.plot.attribution import plot_gradcam_comparison, plot_target_probability

NAMES = ("plain_tiny", "se_tiny", "cbam_tiny")


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {n: create_tiny(n, num_classes=5, zero_init_residual=False) for n in NAMES}


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(4)
    return torch.randn(5, 3, 64, 64, generator=g), [0, 4, 2, 2, 1]


@pytest.fixture(scope="module")
def result(models, batch):
    x, labels = batch
    return gradcam_comparison(models, x, labels=labels, batch_size=2, keep_maps=3, progress=False)


def test_each_model_matches_captum_and_its_softmax(models, batch, result):
    x, labels = batch
    assert result.models == list(NAMES) and result.layers == ["layer4"] * 3
    assert result.targets.tolist() == labels and result.target_source == "label"
    assert result.gradcam.shape == (3, 3, 64, 64) and result.images.shape == (3, 64, 64, 3)
    for m, name in enumerate(NAMES):
        model = models[name].eval()
        assert not model.training
        with torch.no_grad():
            logits = model(x)
        p = torch.softmax(logits, 1)[torch.arange(5), torch.tensor(labels)].numpy()
        np.testing.assert_allclose(result.probability[:, m], p, rtol=1e-5)
        assert result.predictions[:, m].tolist() == logits.argmax(1).tolist()
        cam = LayerGradCam(model, model.layer4).attribute(
            x, target=torch.tensor(labels), relu_attributions=True
        )
        up = LayerAttribution.interpolate(cam, (64, 64), "bilinear")[:, 0].detach().numpy()
        np.testing.assert_allclose(result.gradcam[m], up[:3], rtol=1e-4, atol=1e-6)
        assert result.gradcam_grids[m] == list(cam.shape[-2:])
    table = result.model_summary()
    np.testing.assert_allclose(table["probability_mean"], result.probability.mean(0))
    acc = (result.predictions == np.asarray(labels)[:, None]).mean(0)
    np.testing.assert_allclose(table["accuracy"], acc)
    text = result.summary()
    assert text.startswith("5 images, 3 models, Grad-CAM for the label class")
    for name, pm in zip(NAMES, table["probability_mean"]):
        assert name in text and f"{pm:.3f}" in text


def test_one_forward_per_model_and_batch_and_prediction_targets(models, batch):
    x, _ = batch
    calls = {n: [] for n in NAMES}
    handles = [
        models[n].register_forward_hook(lambda m, a, o, n=n: calls[n].append(len(a[0])))
        for n in NAMES
    ]
    try:
        # without labels every model explains the first model's predicted class
        res = gradcam_comparison(
            [(n, models[n]) for n in NAMES], x, batch_size=2, keep_maps=0, progress=False
        )
    finally:
        for h in handles:
            h.remove()
    assert all(c == [2, 2, 1] for c in calls.values())
    with torch.no_grad():
        first = models["plain_tiny"].eval()(x).argmax(1)
    assert res.targets.tolist() == first.tolist()
    assert res.target_source == "first model's predicted"
    assert res.gradcam.shape[1] == 0
    # a baseline without any attention site runs on its own
    alone = gradcam_comparison({"plain": models["plain_tiny"]}, x, progress=False)
    assert alone.models == ["plain"] and alone.probability.shape == (5, 1)


def test_round_trip_and_figures(result, tmp_path):
    result.save(tmp_path / "r")
    back = GradCamComparisonResult.load(tmp_path / "r")
    assert back.models == result.models and back.ids == result.ids
    np.testing.assert_array_equal(back.probability, result.probability)
    np.testing.assert_array_equal(back.gradcam, result.gradcam)
    fig = plot_gradcam_comparison(result, max_images=2)
    ncols = 1 + len(result.models)
    grid = [fig.axes[r * ncols : (r + 1) * ncols] for r in range(2)]
    assert grid[0][2].get_title() == "se_tiny"
    assert grid[1][2].get_xlabel() == f"P = {result.probability[1, 1]:.3f}"
    plt.close(fig)
    fig = plot_target_probability(result)
    heights = [p.get_height() for p in fig.axes[0].patches]
    np.testing.assert_allclose(heights, result.probability.mean(0))
    plt.close(fig)
