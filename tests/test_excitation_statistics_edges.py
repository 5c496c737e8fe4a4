"""Edge cases of the excitation statistics (few classes, empty or zero spreads, ties with the
null), each against a value worked out by hand or with plain NumPy loops. Written to kill the
mutants that survived the first mutation run (see TESTING.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from attnviz.analysis.excitation import (
    ExcitationProfileResult,
    SiteExcitation,
    null_summary,
    permutation_specificity,
    specificity_of,
)


def test_specificity_of_edge_cases():
    means = np.array([[0.2, 0.4], [0.6, 0.4]])
    std = np.array([0.1, 0.3])
    # spread per channel: std([0.2, 0.6]) = 0.2, std([0.4, 0.4]) = 0 -> mean 0.1; / mean std 0.2
    assert specificity_of(means, std) == pytest.approx(0.5, rel=1e-12)
    # one channel, two classes: still defined
    assert specificity_of(np.array([[0.1], [0.3]]), np.array([0.2])) == pytest.approx(0.5)
    # a NaN row (a class without images) is left out; one class left -> NaN
    assert math.isnan(specificity_of(np.array([[0.1, 0.2], [np.nan, np.nan]]), std))
    assert math.isnan(specificity_of(np.array([[0.1, 0.2]]), std))
    # no spread at all, an infinite spread, no channels: NaN, never an error
    assert math.isnan(specificity_of(means, np.zeros(2)))
    assert math.isnan(specificity_of(means, np.array([np.inf, 1.0])))
    assert math.isnan(specificity_of(np.zeros((2, 0)), np.zeros(0)))


def _null_by_loops(v, labels, classes, permutations, seed):
    rng = np.random.default_rng(seed)
    present = [k for k in classes if k in set(labels.tolist())]
    total = v.std(axis=0).mean()
    out = []
    for _ in range(permutations):
        y = labels[rng.permutation(len(labels))]
        means = np.array([[v[y == k, c].mean() for c in range(v.shape[1])] for k in present])
        out.append(means.std(axis=0).mean() / total)
    return np.array(out)


def test_permutation_specificity_edge_cases():
    rng = np.random.default_rng(1)
    v = rng.random((5, 3)).astype(np.float32)  # float32 rows, as the analysis keeps them
    labels = np.array([0, 0, 1, 1, 1])
    ref = _null_by_loops(v.astype(np.float64), labels, [0, 1, 2], 4, 0)
    got = permutation_specificity(v, labels, [0, 1, 2], 4)  # class 2 has no image; seed 0
    np.testing.assert_allclose(got, ref, rtol=1e-12)  # computed in float64
    np.testing.assert_allclose(permutation_specificity(v, labels, [0, 1], 4, seed=0), ref)
    # one draw; two images of two classes
    assert np.isfinite(permutation_specificity(v, labels, [0, 1], 1)).all()
    two = permutation_specificity(v[1:3], labels[1:3], [0, 1], 3)
    np.testing.assert_allclose(two, _null_by_loops(v[1:3].astype(float), labels[1:3], [0, 1], 3, 0))
    # no draws; one class; no spread: nothing to compute
    assert permutation_specificity(v, labels, [0, 1], 0).shape == (0,)
    assert np.isnan(permutation_specificity(v, np.zeros(5, int), [0], 3)).all()
    assert np.isnan(permutation_specificity(np.ones((5, 3)), labels, [0, 1], 3)).all()


def test_null_summary_counts_ties_as_at_or_above():
    s = null_summary(0.5, np.array([0.5, 0.4, 0.7, np.nan]))
    assert s["p_value"] == pytest.approx((1 + 2) / (1 + 3))
    assert s["null_mean"] == pytest.approx(1.6 / 3)
    assert s["null_p95"] == pytest.approx(np.percentile([0.5, 0.4, 0.7], 95))
    assert all(math.isnan(x) for x in null_summary(0.5, np.array([np.nan])).values())
    assert all(math.isnan(x) for x in null_summary(float("nan"), np.array([0.1])).values())


def test_controls_report_the_squeeze_null():
    site = SiteExcitation(
        alias="SE_1", name="se", kind="se", stage=None, block=None,
        class_mean=np.array([[0.2, 0.4], [0.6, 0.4]]), class_std=np.zeros((2, 2)),
        mean=np.array([0.4, 0.4]), std=np.array([0.1, 0.3]), channels=np.arange(2),
        squeeze_class_mean=np.array([[1.0, 2.0], [1.0, 2.0]]), squeeze_std=np.array([1.0, 1.0]),
        null=np.array([0.1, 0.6]), squeeze_null=np.array([0.0, 0.2, 0.4]),
    )  # fmt: skip
    c = site.controls()
    assert c["specificity"] == pytest.approx(0.5) and c["squeeze_specificity"] == 0.0
    assert c["gate_gain"] == pytest.approx(0.5)
    assert c["p_value"] == pytest.approx(2 / 3)
    assert c["squeeze_null_p95"] == pytest.approx(np.percentile([0.0, 0.2, 0.4], 95))
    assert c["squeeze_p_value"] == pytest.approx(1.0)  # every draw is >= 0


def _result(counts) -> ExcitationProfileResult:
    k = len(counts)
    return ExcitationProfileResult(
        sites=[], classes=list(range(k)), class_names=[str(i) for i in range(k)],
        counts=np.asarray(counts), n_images=int(sum(counts)), label_source="given",
    )  # fmt: skip


def test_specificity_chance_with_empty_and_few_classes():
    # classes without images are left out: K = 2 with sizes 5 and 3
    assert _result([5, 0, 3]).specificity_chance() == pytest.approx(
        math.sqrt(1 / 2 * (1 / 5 + 1 / 3) / 2)
    )
    assert _result([2, 4]).specificity_chance() == pytest.approx(math.sqrt(0.5 * 0.375))
    assert math.isnan(_result([4]).specificity_chance())
    assert math.isnan(_result([4, 0]).specificity_chance())


def test_excitation_manifest_fields_and_defaults(tmp_path):
    res = _result([2, 1])
    res.permutations, res.seed = 5, 7
    folder = res.save(tmp_path / "r")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["paper"] == "Hu et al., Squeeze-and-Excitation Networks, TPAMI 2019, Fig. 6/7"
    assert manifest["seed"] == 7 and manifest["permutations"] == 5
    back = ExcitationProfileResult.load(folder)
    assert (back.seed, back.permutations) == (7, 5)
    for key in ("seed", "permutations", "meta"):
        del manifest[key]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    old = ExcitationProfileResult.load(folder)
    assert (old.seed, old.permutations, old.meta) == (0, 0, {})


def test_a_requested_class_without_images_has_nan_statistics():
    import torch

    from attnviz.analysis.excitation import excitation_profile
    from attnviz.models.tiny import create_tiny

    torch.manual_seed(0)
    model = create_tiny("se_tiny", num_classes=4, zero_init_residual=False).eval()
    x = torch.rand(5, 3, 32, 32)
    res = excitation_profile(
        model, x, labels=[0, 0, 1, 1, 1], classes=[0, 1, 3], permutations=0, progress=False
    )
    assert res.classes == [0, 1, 3] and res.counts.tolist() == [2, 3, 0]
    for s in res.sites:
        assert np.isnan(s.class_mean[2]).all() and np.isnan(s.class_std[2]).all()
        assert np.isfinite(s.class_mean[:2]).all() and np.isfinite(s.class_std[:2]).all()
        assert s.class_mean.shape == s.class_std.shape == (3, s.n_channels)
