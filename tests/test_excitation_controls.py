"""Excitation controls: squeeze-input specificity and the label-permutation null, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnviz.analysis.excitation import (
    ExcitationProfile,
    excitation_profile,
    null_summary,
    permutation_specificity,
)
from attnviz.analysis.runner import RunInfo, State
from attnviz.blocks.se import SEBlock
from attnviz.data.sources import Batch, Record
from attnviz.models.tiny import create_tiny


def hand_specificity(values: np.ndarray, y: np.ndarray, classes) -> float:
    """mean_c std_k(m_kc) / mean_c sigma_c with explicit loops (ddof 0)."""
    n, c = values.shape
    sigma = []
    for ch in range(c):
        col = [float(values[i, ch]) for i in range(n)]
        mu = sum(col) / n
        sigma.append((sum((v - mu) ** 2 for v in col) / n) ** 0.5)
    spreads = []
    for ch in range(c):
        means = []
        for k in classes:
            members = [float(values[i, ch]) for i in range(n) if y[i] == k]
            if members:
                means.append(sum(members) / len(members))
        mu = sum(means) / len(means)
        spreads.append((sum((m - mu) ** 2 for m in means) / len(means)) ** 0.5)
    return (sum(spreads) / c) / (sum(sigma) / c)


class FakeCache(dict):
    def __init__(self, gates, inputs):
        super().__init__(gates)
        self._inputs = inputs

    def inputs(self, name):
        return self._inputs[name]


@pytest.fixture(scope="module")
def constructed():
    """Unequal classes (3, 7, 12 images and 4 of an unrecorded class 9): the gate depends on
    the class a little, the squeeze input strongly; both computed through step/finalise."""
    rng = np.random.default_rng(5)
    y = np.asarray([0] * 3 + [1] * 7 + [2] * 12 + [9] * 4)
    rng.shuffle(y)
    n, c = len(y), 6
    z_class = rng.normal(size=(10, c)) * 2.0
    xin = (z_class[y][:, :, None, None] + rng.normal(size=(n, c, 3, 3))).astype(np.float32)
    gate = (0.5 + 0.05 * z_class[y] + rng.normal(scale=0.2, size=(n, c))).astype(np.float32)
    model = create_tiny("se_tiny", num_classes=10)
    analysis = ExcitationProfile(sites="all", classes=[0, 1, 2], channels=3, permutations=57)
    sites = analysis.sites(model)
    site = sites[0]
    analysis._sites = [site]
    state = State()
    for start in range(0, n, 5):  # several batches, as the runner feeds them
        stop = min(start + 5, n)
        records = [Record(i, f"#{i}", int(y[i])) for i in range(start, stop)]
        batch = Batch(torch.zeros(stop - start, 3, 1, 1), records, stop - start)
        cache = FakeCache(
            {site.name: torch.from_numpy(gate[start:stop])},
            {site.name: torch.from_numpy(xin[start:stop])},
        )
        analysis.step(state, batch, cache, None)
    result = analysis.finalise(state, RunInfo(n, n, [], [], 1.0, [site], "m"))
    return result, y, gate.astype(np.float64), xin.astype(np.float64)


def test_squeeze_specificity_matches_loops(constructed):
    result, y, gate, xin = constructed
    s = result.sites[0]
    z = np.zeros(gate.shape)
    for i in range(xin.shape[0]):  # GAP by hand
        for ch in range(xin.shape[1]):
            z[i, ch] = sum(float(v) for v in xin[i, ch].ravel()) / xin[i, ch].size
    assert s.squeeze_specificity == pytest.approx(hand_specificity(z, y, [0, 1, 2]), rel=1e-9)
    assert s.specificity == pytest.approx(hand_specificity(gate, y, [0, 1, 2]), rel=1e-9)
    row = result.specificity().iloc[0]
    assert row["gate_gain"] == pytest.approx(s.specificity - s.squeeze_specificity)
    assert row["squeeze_specificity"] > row["specificity"]  # built so: the gate adds nothing


def test_permutation_null_matches_loops(constructed):
    result, y, gate, xin = constructed
    s = result.sites[0]
    z = xin.mean(axis=(2, 3))
    rng = np.random.default_rng(0)  # the documented draws: r-th rng.permutation(N), seed 0
    null, squeeze_null = [], []
    for _ in range(57):
        perm = rng.permutation(len(y))
        shuffled = [y[perm[i]] for i in range(len(y))]
        null.append(hand_specificity(gate, shuffled, [0, 1, 2]))
        squeeze_null.append(hand_specificity(z, shuffled, [0, 1, 2]))
    # the analysis keeps the per-image vectors in float32
    np.testing.assert_allclose(s.null, null, rtol=1e-5)
    np.testing.assert_allclose(s.squeeze_null, squeeze_null, rtol=1e-5)
    row = result.specificity().iloc[0]
    assert row["null_mean"] == pytest.approx(np.mean(null), rel=1e-5)
    assert row["null_p95"] == pytest.approx(np.percentile(null, 95), rel=1e-5)
    above = sum(1 for v in null if v >= s.specificity)
    assert row["p_value"] == pytest.approx((1 + above) / 58)
    above = sum(1 for v in squeeze_null if v >= s.squeeze_specificity)
    assert row["squeeze_p_value"] == pytest.approx((1 + above) / 58)
    assert row["squeeze_p_value"] == pytest.approx(1 / 58)  # the squeeze is class-driven


def test_null_summary_and_seed():
    assert null_summary(0.5, np.asarray([0.1, 0.5, 0.9, 0.2]))["p_value"] == pytest.approx(3 / 5)
    assert np.isnan(null_summary(0.5, np.zeros(0))["p_value"])
    rng = np.random.default_rng(1)
    v, y = rng.normal(size=(20, 4)), np.repeat([0, 1], 10)
    a = permutation_specificity(v, y, [0, 1], 30, seed=3)
    np.testing.assert_array_equal(a, permutation_specificity(v, y, [0, 1], 30, seed=3))
    assert not np.array_equal(a, permutation_specificity(v, y, [0, 1], 30, seed=4))
    # blocks of draws give the same values as one block
    small = permutation_specificity(v, y, [0, 1], 30, seed=3, max_elements=50)
    np.testing.assert_allclose(a, small, rtol=1e-12)


def test_squeeze_input_is_the_gap_of_the_se_block_input():
    """End to end on a model: z is GAP of what enters each SEBlock (read with our own hook)."""
    torch.manual_seed(0)
    model = create_tiny("se_tiny", num_classes=3, zero_init_residual=False).eval()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(10, 3, 32, 32, generator=g)
    labels = [0, 1, 2, 0, 1, 2, 0, 0, 1, 1]
    result = excitation_profile(
        model, x, labels=labels, sites="all", permutations=5, batch_size=4, progress=False
    )
    name = result.sites[-1].name
    block = model.get_submodule(name)
    assert isinstance(block, SEBlock)
    seen = []
    handle = block.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        model(x)
    handle.remove()
    z = seen[0].double().mean(dim=(2, 3)).numpy()
    expect = hand_specificity(z, np.asarray(labels), [0, 1, 2])
    assert result.sites[-1].squeeze_specificity == pytest.approx(expect, rel=1e-5)
    assert result.sites[-1].null.shape == (5,)
    # permutations=0 keeps no per-image rows and reports no null
    none = excitation_profile(model, x, labels=labels, sites="all", permutations=0, progress=False)
    assert np.isnan(none.specificity()["p_value"]).all()
    assert none.sites[-1].squeeze_specificity == pytest.approx(expect, rel=1e-5)
