"""Localisation on the object mask (issue 21, item 5): the mass share and the pointing game
against loops over pixels, the margin against a forward by hand, the spatial attention of
every model against capture, paired differences by hand, figures and the smoothing note."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnviz
from attnviz.analysis.attribution import GradCamComparisonResult, gradcam_comparison
from attnviz.analysis.localisation import mask_share, pointing_hit
from attnviz.data import ShapesDataset, preprocess_for
from attnviz.models import load_model
from attnviz.plot.attribution import plot_localisation, plot_target_probability


def _share_loop(m: np.ndarray, c: np.ndarray) -> float:
    total = inside = 0.0
    low = min(0.0, float(m.min()))
    for y in range(m.shape[0]):
        for x in range(m.shape[1]):
            v = float(m[y, x]) - low
            total += v
            inside += v * float(c[y, x])
    return inside / total if total > 0 else math.nan


def _hit_loop(m: np.ndarray, c: np.ndarray) -> float:
    best, where = -math.inf, (0, 0)
    for y in range(m.shape[0]):
        for x in range(m.shape[1]):
            if m[y, x] > best:
                best, where = float(m[y, x]), (y, x)
    if float(m.max()) == float(m.min()):
        return math.nan
    return 1.0 if c[where] >= 0.5 else 0.0


def test_share_and_pointing_match_pixel_loops():
    rng = np.random.default_rng(3)
    c = np.clip(rng.uniform(-0.5, 1.5, (9, 7)), 0, 1)
    maps = rng.uniform(0, 1, (4, 9, 7))
    maps[1] -= 0.7  # negative values: shifted to a minimum of 0
    maps[2] = 0.25  # constant: share = mean coverage, no maximum to point with
    maps[3] = 0.0  # all zero: no mass
    share, hit = mask_share(maps, c), pointing_hit(maps, c)
    for i in range(2):
        assert share[i] == pytest.approx(_share_loop(maps[i], c), rel=1e-12)
        assert hit[i] == _hit_loop(maps[i], c)
    assert share[2] == pytest.approx(c.mean()) and np.isnan(hit[2])
    assert np.isnan(share[3]) and np.isnan(hit[3])
    with pytest.raises(ValueError, match="differs from the mask"):
        mask_share(maps, c[:-1])


@pytest.fixture(scope="module")
def setup():
    images = ShapesDataset(1, seed=30_000)  # 10 images, one per class
    names = ("plain_tiny", "cbam_tiny", "gc_tiny")
    loaded = {n: load_model(n) for n in names}
    config = loaded["cbam_tiny"][1]
    models = {n: m for n, (m, _) in loaded.items()}
    result = gradcam_comparison(models, images, preprocess=config, keep_maps=10, progress=False)
    return images, models, config, result


def test_gradcam_share_and_pointing_use_the_object_mask(setup):
    images, models, config, r = setup
    assert r.gradcam.shape[1] == len(images)  # every map kept
    for i in range(len(images)):
        mask = images.mask(i)  # 64 px images, identity view
        assert r.object_area[i] == pytest.approx(mask.mean(), rel=1e-6)
        for m in range(len(r.models)):
            cam = r.gradcam[m, i].astype(np.float64)
            assert r.gradcam_share[i, m] == pytest.approx(_share_loop(cam, mask), rel=1e-5)
            assert r.gradcam_pointing[i, m] == _hit_loop(cam, mask)


def test_margin_and_attention_sites_match_a_forward_by_hand(setup):
    images, models, config, r = setup
    transform = preprocess_for(config)
    x = torch.stack([transform(im) for im, _ in images])
    labels = torch.tensor([lab for _, lab in images])
    for m, name in enumerate(r.models):
        with torch.no_grad():
            logits = models[name](x).double()
        for i in range(len(images)):
            others = [float(v) for k, v in enumerate(logits[i]) if k != int(labels[i])]
            assert r.margin[i, m] == pytest.approx(float(logits[i, labels[i]]) - max(others),
                                                   abs=1e-4)  # fmt: skip
    aliases = [(s["model"], s["alias"]) for s in r.attention_sites]
    assert ("cbam_tiny", "CBAMS_5_2") in aliases and ("gc_tiny", "GC_3_1") in aliases
    assert all(s["model"] != "plain_tiny" for s in r.attention_sites)
    for model_name, alias in (("cbam_tiny", "CBAMS_5_2"), ("gc_tiny", "GC_2_1")):
        j = aliases.index((model_name, alias))
        with attnviz.capture(models[model_name]) as cache, torch.no_grad():
            models[model_name](x)
        a = cache[r.attention_sites[j]["name"]]
        up = F.interpolate(a[:, None].float(), (64, 64), mode="bilinear")[:, 0].numpy()
        for i in range(len(images)):
            want = _share_loop(up[i].astype(np.float64), images.mask(i))
            assert r.attention_share[i, j] == pytest.approx(want, rel=1e-4)


def test_paired_differences_summary_and_smoothing_note(setup, tmp_path):
    _, _, _, r = setup
    table = r.paired_differences(measure="margin")
    for row in table.itertuples():
        d = r.margin[:, r.model_index(row.model)] - r.margin[:, 0]
        assert row.mean_difference == pytest.approx(d.mean())
        assert row.paired_se == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)))
    eps = 0.1  # the zoo's recipe (assets/models/manifest.json)
    assert r.meta["label_smoothing"] == {n: eps for n in r.models}
    best = 1 - eps + eps / 10
    text = r.summary()
    assert f"label smoothing 0.1 (loss-optimal P(target) {best:.2f})" in text
    assert "gradcam_share" in text and "CBAMS_5_2" in text and "margin" in text
    loc = r.localisation_summary()
    first = loc.iloc[0]
    assert first["share_mean"] == pytest.approx(np.nanmean(r.gradcam_share[:, 0]))
    back = GradCamComparisonResult.load(r.save(tmp_path / "r"))
    assert back.summary() == text and back.attention_sites == r.attention_sites
    with pytest.raises(ValueError, match="unknown measure"):
        r.paired_differences(measure="accuracy")


def test_figures_show_paired_differences_and_localisation(setup):
    _, _, _, r = setup
    fig = plot_target_probability(r)
    left, right = fig.axes[:2]
    np.testing.assert_allclose([p.get_height() for p in left.patches], r.probability.mean(0))
    assert left.get_ylabel() == "P(target class)" and left.get_xlabel() == "model"
    assert "plain_tiny" in right.get_ylabel()
    table = r.paired_differences()
    means = right.containers[0].lines[0].get_ydata()
    np.testing.assert_allclose(means, table["mean_difference"])
    optimum = [ln for ln in left.get_lines() if ln.get_linestyle() == "--"]
    assert optimum and optimum[0].get_ydata()[0] == pytest.approx(0.91)
    assert "label smoothing 0.1" in fig.get_suptitle()
    plt.close(fig)
    fig = plot_localisation(r)
    widths = [p.get_width() for p in fig.axes[0].patches]
    np.testing.assert_allclose(widths, r.localisation_summary()["share_mean"].fillna(0))
    plt.close(fig)
