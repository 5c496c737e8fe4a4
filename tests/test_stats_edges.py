"""The pair statistics at their edges (one vector, one key, integer input, near-distributions),
against NumPy. Written to kill the mutants that survived the first mutation run (see
TESTING.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnviz.analysis.stats import (
    avg_jsd,
    entropy_stats,
    is_distribution,
    mean_pairwise_cosine,
    pair_jsd,
)


def _jsd(p, q):
    m = (p + q) / 2

    def h(x):
        x = x[x > 0]
        return -(x * np.log(x)).sum()

    return h(m) - (h(p) + h(q)) / 2


def test_mean_pairwise_cosine_inputs():
    v = torch.tensor([[1, 0], [1, 1], [0, 2]])  # integers are taken as float64
    u = v.double().numpy() / np.linalg.norm(v.double().numpy(), axis=1, keepdims=True)
    assert mean_pairwise_cosine(v) == pytest.approx((u @ u.T).mean(), rel=1e-12)
    off = ((u @ u.T).sum() - 3) / 6
    assert mean_pairwise_cosine(v, include_diagonal=False) == pytest.approx(off, rel=1e-12)
    one = torch.tensor([[3.0, 4.0]])
    assert mean_pairwise_cosine(one) == pytest.approx(1.0)
    assert math.isnan(mean_pairwise_cosine(one, include_diagonal=False))
    assert mean_pairwise_cosine(torch.ones(3, 1)) == pytest.approx(1.0)  # one feature
    for bad in (torch.ones(3), torch.ones(0, 2), torch.ones(2, 2, 2)):
        with pytest.raises(ValueError, match=r"expected a \(N, K\) matrix of N >= 1 vectors, got"):
            mean_pairwise_cosine(bad)


def test_is_distribution_and_entropy_stats():
    p = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    assert is_distribution(p)
    assert not is_distribution(torch.tensor([[0.5, 0.6], [0.2, 0.8]]))  # non-negative, sums off
    assert not is_distribution(torch.tensor([[1.5, -0.5], [0.2, 0.8]]))  # sums to 1, negative
    assert is_distribution(torch.tensor([[0.5, 0.50005], [0.2, 0.8]]))  # within atol 1e-4
    h, hn = entropy_stats(p)
    ref = -(p * p.log()).sum(1)
    np.testing.assert_allclose(h.numpy(), ref.numpy(), rtol=1e-6)
    np.testing.assert_allclose(hn.numpy(), ref.numpy() / math.log(2), rtol=1e-6)
    assert is_distribution(torch.ones(3, 1))  # one key: every row is the distribution [1]
    h1, hn1 = entropy_stats(torch.ones(3, 1))  # one key: entropy 0, normalised 0
    assert h1.tolist() == [0.0, 0.0, 0.0] and hn1.tolist() == [0.0, 0.0, 0.0]


def test_avg_jsd_small_and_pair_jsd():
    rng = np.random.default_rng(0)
    p = rng.random((4, 5))
    p /= p.sum(1, keepdims=True)
    t = torch.from_numpy(p)
    pairs = [(i, j) for i in range(4) for j in range(4)]
    assert avg_jsd(t) == pytest.approx(np.mean([_jsd(p[i], p[j]) for i, j in pairs]), rel=1e-5)
    # the entropies are evaluated in float32 by default, whatever the input's precision
    assert avg_jsd(t) == avg_jsd(t.float())
    assert avg_jsd(t, dtype=torch.float64) != avg_jsd(t)
    one = t[:1]
    assert avg_jsd(one) == 0.0 and math.isnan(avg_jsd(one, include_diagonal=False))
    with pytest.raises(ValueError, match="^avg_jsd needs rows that are probability distributions$"):
        avg_jsd(torch.ones(2, 3))
    i, j = torch.tensor([0, 1, 2]), torch.tensor([3, 1, 0])
    got = pair_jsd(t, i, j)
    np.testing.assert_allclose(got.numpy(), [_jsd(p[a], p[b]) for a, b in zip(i, j)], rtol=1e-10)
    h = -(t * t.log()).sum(1)
    np.testing.assert_allclose(pair_jsd(t, i, j, h).numpy(), got.numpy(), rtol=1e-12)
    assert torch.equal(t, torch.from_numpy(p))  # the input is left unchanged
    f32 = pair_jsd(t.float(), i, j)
    assert f32.dtype == torch.float64  # returned in float64 (computed in float32)
    np.testing.assert_allclose(f32.numpy(), got.numpy(), atol=1e-6)


def test_row_degeneracy_of_rows_that_are_not_distributions():
    from attnviz.analysis.stats import row_degeneracy

    p = torch.tensor([[0.2, 0.9, 0.1], [0.7, 0.1, 0.3], [0.1, 0.8, 0.0]])
    d = row_degeneracy(p)
    assert sorted(d) == ["argmax_keys", "eff_keys", "max_weight", "row_entropy"]
    assert d["argmax_keys"] == 2
    assert all(math.isnan(d[k]) for k in ("row_entropy", "eff_keys", "max_weight"))
    q = p / p.sum(1, keepdim=True)
    d = row_degeneracy(q)
    h = float(-torch.special.xlogy(q, q).sum(1).mean())
    assert d["row_entropy"] == pytest.approx(h, rel=1e-6)
    assert d["eff_keys"] == pytest.approx(math.exp(h), rel=1e-6)
    assert d["max_weight"] == pytest.approx(float(q.max(1).values.median()))
