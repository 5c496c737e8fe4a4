"""The sweep's streaming statistics at small counts (0, 1, 2 images) against NumPy, and the
manifest fields a round trip of a zoom sweep leaves at their defaults. Written to kill the
mutants that survived the first mutation run (see TESTING.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnviz.analysis.scale_sweep import ScaleSweepResult, SweepSite, _mean_se, _sample_std


@pytest.mark.parametrize("values", [[0.3], [0.3, -0.1], [0.3, -0.1, 0.25, 0.9, -0.4]])
def test_sample_std_and_standard_error_from_sums(values):
    x = np.asarray(values)
    n = len(x)
    mean = x.mean()
    std = _sample_std(np.array([(x * x).sum()]), np.array([mean]), n)[0]
    m, se = _mean_se(np.array([x.sum()]), np.array([(x * x).sum()]), np.array([n]))
    assert m[0] == pytest.approx(mean, abs=1e-15)
    if n == 1:
        assert std == 0.0 and math.isnan(se[0])
    else:
        assert std == pytest.approx(x.std(ddof=1), rel=1e-12)
        assert se[0] == pytest.approx(x.std(ddof=1) / math.sqrt(n), rel=1e-12)


def test_mean_and_standard_error_of_no_images_are_nan():
    m, se = _mean_se(np.array([0.0, 1.0]), np.array([0.0, 1.0]), np.array([0, 1]))
    assert math.isnan(m[0]) and math.isnan(se[0])
    assert m[1] == 1.0 and math.isnan(se[1])  # one image: a mean, no spread


def _sweep(native: bool) -> ScaleSweepResult:
    a = "SK_2_1"
    one = np.array([0.1, 0.2])
    return ScaleSweepResult(
        sites=[SweepSite(a, "layer1.0.conv1", 2, 1, 2, 3)],
        scales=(1.0, 2.0),
        n_images=3,
        branch_mean={a: np.zeros((2, 2, 3))},
        branch_std={a: np.zeros((2, 2, 3))},
        d_mean={a: one},
        d_std={a: one},
        d_sem={a: one},
        view_conditions=["zoom", "zoom"],
        view_scales=[1.0, 2.0],
        views_native=native,
        view_count=np.array([3, 3]),
        class_view_count=np.zeros((2, 0), np.int64),
        **{k: {a: np.zeros(2)} for k in ("view_d_mean", "view_d_sem", "delta_mean", "delta_se",
                                         "zoom_delta", "excess_mean", "excess_se")},
        **{k: {a: np.zeros((2, 0))} for k in ("class_d_mean", "class_d_sem", "class_delta_mean",
                                              "class_delta_se")},
    )  # fmt: skip


def test_views_native_survives_a_round_trip(tmp_path):
    for native in (True, False):
        folder = _sweep(native).save(tmp_path / str(native))
        assert json.loads((folder / "manifest.json").read_text())["views_native"] is native
        assert ScaleSweepResult.load(folder).views_native is native
