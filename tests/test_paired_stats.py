"""Paired statistics of the Grad-CAM comparison, against references that share no code."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from attnviz.analysis.attribution import GradCamComparisonResult
from attnviz.analysis.stats import paired_difference, sign_test_p


def _sign_test_by_enumeration(higher: int, lower: int) -> float:
    """Two-sided p by listing every +/- pattern of n fair coins."""
    n = higher + lower
    observed = abs(higher - lower)
    extreme = sum(
        1 for signs in itertools.product((1, -1), repeat=n) if abs(sum(signs)) >= observed
    )
    return extreme / 2**n


@pytest.mark.parametrize("higher,lower", [(0, 5), (1, 7), (3, 3), (9, 2), (6, 0), (0, 0)])
def test_sign_test_matches_enumeration(higher, lower):
    expected = _sign_test_by_enumeration(higher, lower) if higher + lower else 1.0
    assert sign_test_p(higher, lower) == pytest.approx(expected, rel=1e-12)


def test_paired_difference_against_loops():
    rng = np.random.default_rng(3)
    a, b = rng.random(23), rng.random(23)
    b[[2, 5]] = a[[2, 5]]  # ties are left out of the sign test
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    var = sum((v - mean) ** 2 for v in d) / (len(d) - 1)
    got = paired_difference(a, b)
    assert got["n"] == 23
    assert got["mean_difference"] == pytest.approx(mean)
    assert got["paired_se"] == pytest.approx(math.sqrt(var / len(d)))
    assert got["z"] == pytest.approx(mean / math.sqrt(var / len(d)))
    higher, lower = sum(v > 0 for v in d), sum(v < 0 for v in d)
    assert got["higher_share"] == pytest.approx(higher / 23)
    assert got["sign_test_p"] == pytest.approx(_sign_test_by_enumeration(higher, lower))


def test_gradcam_comparison_reports_paired_differences_against_the_first_model():
    p = np.array([[0.9, 0.8, 0.5], [0.7, 0.75, 0.2], [0.6, 0.5, 0.1], [0.8, 0.6, 0.7]])
    n = len(p)
    result = GradCamComparisonResult(
        models=["plain", "se", "cbam"],
        layers=["layer4"] * 3,
        gradcam_grids=[[4, 4]] * 3,
        ids=[f"im{i}" for i in range(n)],
        target_source="label",
        labels=np.zeros(n, int),
        targets=np.zeros(n, int),
        predictions=np.zeros((n, 3), int),
        probability=p,
        gradcam=np.zeros((n, 3, 4, 4), np.float32),
        images=np.zeros((n, 8, 8, 3), np.uint8),
    )
    frame = result.paired_differences()
    assert list(frame["model"]) == ["se", "cbam"]
    assert set(frame["baseline"]) == {"plain"}
    assert frame["mean_difference"].tolist() == pytest.approx([-0.0875, -0.375])
    assert frame["higher_share"].tolist() == pytest.approx([0.25, 0.0])
    against_se = result.paired_differences("se").set_index("model")
    assert against_se.loc["plain", "mean_difference"] == pytest.approx(0.0875)
    assert "paired on the same images" in result.summary()
