"""Correct nulls (issue 21 item 4): Holm, exact chance IoU, permutation null of Spearman on
few cells, bootstrap intervals, and gate_gain's bootstrap; each against a computation by hand
or by enumeration that does not share code with attnviz.analysis.stats."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from attnviz.analysis.attribution import iou_chance, spearman_rank_correlation, top_k_iou
from attnviz.analysis.excitation import gain_bootstrap, specificity_of
from attnviz.analysis.stats import (
    bootstrap_ci,
    holm,
    permutation_null,
    permutation_p,
    top_k_cells,
    top_k_iou_chance,
    two_sided_p,
)


# ----------------------------------------------------------------------------- Holm
def test_holm_by_hand():
    # sorted: .005 x4 = .02, .01 x3 = .03, .03 x2 = .06, .04 x1 = .04 -> running max .06
    got = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02])
    # NaN is no test: it stays NaN and m = 2
    got = holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(got, [0.02, np.nan, 0.04])
    assert holm([0.6, 0.7]).tolist() == [1.0, 1.0]  # capped at 1
    assert np.isnan(holm([np.nan])).all() and holm([]).size == 0


def test_two_sided_p():
    assert two_sided_p(1.959963985) == pytest.approx(0.05, abs=1e-9)
    assert two_sided_p(-1.959963985) == pytest.approx(0.05, abs=1e-9)
    assert two_sided_p(0.0) == 1.0 and two_sided_p(math.inf) == 0.0
    assert math.isnan(two_sided_p(math.nan))


# ----------------------------------------------------------------------------- chance IoU
def _enumerated_chance(n_cells: int, n: int) -> float:
    """Mean IoU over every pair of n-cell regions of an n_cells grid (no shared code)."""
    subsets = [set(c) for c in itertools.combinations(range(n_cells), n)]
    total = sum(len(a & b) / len(a | b) for a in subsets for b in subsets)
    return total / len(subsets) ** 2


def test_chance_iou_exact_against_enumeration():
    # 3x3, k = 0.3: n = ceil(2.7) = 3 of 9 cells; 84^2 pairs of regions
    assert top_k_cells(9, 0.3) == 3
    assert top_k_iou_chance((3, 3), 0.3) == pytest.approx(_enumerated_chance(9, 3), abs=1e-10)
    # 2x3, k = 0.5: n = 3 of 6
    assert top_k_iou_chance((2, 3), 0.5) == pytest.approx(_enumerated_chance(6, 3), abs=1e-10)


def test_chance_iou_4x4_is_the_issues_value_not_k_over_2_minus_k():
    chance = top_k_iou_chance((4, 4), 0.2)
    assert chance == pytest.approx((880 / 7 + 132 + 28.8 + 1) / 1820)  # by hand, n = 4 of 16
    assert chance == pytest.approx(0.158, abs=5e-4) and chance > 0.2 / 1.8 + 0.04
    assert top_k_iou_chance(10**6, 0.2) == pytest.approx(0.2 / 1.8, abs=1e-4)  # the limit
    assert iou_chance(0.2, (4, 4)) == chance  # the attribution table's chance level


def test_chance_iou_matches_the_tools_own_iou_on_random_maps():
    """Simulated with attribution.top_k_iou (the tool's tie rule) on continuous maps."""
    rng = np.random.default_rng(0)
    values = [top_k_iou(rng.random((4, 4)), rng.random((4, 4)), 0.2) for _ in range(20000)]
    se = np.std(values) / math.sqrt(len(values))
    assert abs(np.mean(values) - top_k_iou_chance((4, 4), 0.2)) < 4 * se


def test_permutation_null_keeps_ties_of_the_tools_rule():
    """3 positive cells and 13 zeros: the top-20 % threshold is 0, so the region is all 16
    cells and the IoU with any 4-cell region is 4/16, whatever the order (by hand)."""
    a = np.zeros((4, 4))
    a[0, :3] = [3.0, 2.0, 1.0]
    b = np.random.default_rng(1).random((4, 4))
    null = permutation_null(lambda x, y: top_k_iou(x, y, 0.2), a, b, draws=50, seed=0)
    np.testing.assert_allclose(null, 0.25)
    assert null.mean() > top_k_iou_chance((4, 4), 0.2)  # the tie-free level is too low here


# ----------------------------------------------------------------------------- Spearman null
def test_spearman_permutation_exact_on_four_cells():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([10.0, 20.0, 30.0, 40.0])
    null = permutation_null(spearman_rank_correlation, a, b)
    assert null.size == 24  # every order of 4 cells
    # |rho| = 1 only for the identity and the reversal: p = 2/24 (by hand)
    assert permutation_p(spearman_rank_correlation(a, b), null) == pytest.approx(2 / 24)
    assert permutation_p(1.0, null, "greater") == pytest.approx(1 / 24)
    # rho over all orders of 4 ranks: 1 - 6 sum d^2 / 60; its values by enumeration
    hand = [
        1 - 6 * sum((i - p) ** 2 for i, p in enumerate(o)) / 60
        for o in itertools.permutations(range(4))
    ]
    np.testing.assert_allclose(np.sort(null), np.sort(hand))


def test_spearman_permutation_sampled_above_exact_max():
    rng = np.random.default_rng(2)
    a, b = rng.random(16), rng.random(16)
    one = permutation_null(spearman_rank_correlation, a, b, draws=300, seed=5)
    two = permutation_null(spearman_rank_correlation, a, b, draws=300, seed=5)
    assert one.size == 300 and np.array_equal(one, two)
    assert abs(one.mean()) < 4 * one.std() / math.sqrt(300)  # centred on 0
    with pytest.raises(ValueError, match="differ"):
        permutation_null(spearman_rank_correlation, a, b[:4])


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_of_a_mean_matches_the_normal_interval():
    x = np.random.default_rng(3).normal(1.0, 2.0, 400)
    lo, hi, se = bootstrap_ci(len(x), lambda i: x[i].mean(), draws=2000, seed=0)
    hand_se = x.std(ddof=1) / math.sqrt(x.size)
    assert se == pytest.approx(hand_se, rel=0.1)
    assert lo == pytest.approx(x.mean() - 1.96 * hand_se, abs=0.3 * hand_se)
    assert hi == pytest.approx(x.mean() + 1.96 * hand_se, abs=0.3 * hand_se)
    assert bootstrap_ci(len(x), lambda i: x[i].mean(), draws=50, seed=1) == bootstrap_ci(
        len(x), lambda i: x[i].mean(), draws=50, seed=1
    )
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(3, lambda i: 0.0, level=1.0)


def test_gain_bootstrap_zero_gain_and_a_clear_gain():
    rng = np.random.default_rng(4)
    y = np.repeat(np.arange(4), 30)
    squeeze = rng.normal(size=(120, 8))
    lo, hi, se = gain_bootstrap(squeeze, squeeze, y, range(4), draws=100)
    assert lo == hi == se == 0.0  # gate = squeeze: the gain is 0 in every resample
    gate = squeeze * 0.1 + y[:, None]  # class-specific gate on a class-blind input
    lo, hi, se = gain_bootstrap(gate, squeeze, y, range(4), draws=200)
    means = np.stack([gate[y == k].mean(0) for k in range(4)])
    sq = np.stack([squeeze[y == k].mean(0) for k in range(4)])
    gain = specificity_of(means, gate.std(0)) - specificity_of(sq, squeeze.std(0))
    assert lo < gain < hi and lo > 0.5 and se > 0


def test_per_class_d_bootstrap_interval_of_the_sweep():
    from attnviz.analysis.scale_sweep import scale_sweep
    from attnviz.data.shapes import ShapeScenes
    from attnviz.models import load_model

    model, cfg = load_model("sk_tiny")
    r = scale_sweep(model, ShapeScenes(20, seed=3, scales=(1.0, 2.0)), per_image=True,
                    preprocess=cfg, progress=False)  # fmt: skip
    ci = r.class_delta_ci(draws=300)
    row = ci[ci["n"] >= 3].iloc[0]
    labels = np.asarray(r.image_labels)
    k = r.class_names.index(row["class"])
    d = r.image_d[row["site"]][labels == k]
    delta = d[:, 1] - d[:, 0]
    assert row["delta_D"] == pytest.approx(delta.mean())
    assert row["ci_low"] <= delta.mean() <= row["ci_high"]
    # the bootstrap s.e. of a mean ~ the plug-in s.e. std(ddof=0) / sqrt(n)
    assert row["boot_se"] == pytest.approx(delta.std() / math.sqrt(delta.size), rel=0.35)
    with pytest.raises(ValueError, match="per_image"):
        scale_sweep(model, ShapeScenes(2, seed=3, scales=(1.0, 2.0)), preprocess=cfg,
                    progress=False).class_delta_ci()  # fmt: skip
