"""Query statistics at full size (sampled JSD with its error) and the degeneracy of rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnviz.analysis.query_independence import (
    EXACT_ROWS,
    JSD_PAIRS,
    MAX_FIGURE_QUERIES,
    QueryIndependenceResult,
    query_independence,
)
from attnviz.analysis.stats import attention_statistics, avg_jsd, row_degeneracy, sampled_jsd
from attnviz.models.tiny import create_tiny


def hand_jsd(p: np.ndarray, q: np.ndarray) -> float:
    def h(v):
        return -sum(float(x) * math.log(x) for x in v if x > 0)

    return h((p + q) / 2) - (h(p) + h(q)) / 2


def test_sampled_jsd_lies_within_its_error_of_the_exact_value():
    g = torch.Generator().manual_seed(0)
    # rows of different sharpness, so that pair JSDs vary
    logits = torch.randn(400, 300, generator=g) * torch.linspace(0.2, 4.0, 400)[:, None]
    p = torch.softmax(logits, dim=1)
    exact = avg_jsd(p)
    est, se = sampled_jsd(p, pairs=4000, seed=1)
    assert 0 < se < 0.01 * exact
    assert abs(est - exact) <= 3 * se
    # the error is what it says: over many seeds ~68% of estimates lie within one se
    inside = [abs(sampled_jsd(p, pairs=400, seed=s)[0] - exact) for s in range(40)]
    se400 = sampled_jsd(p, pairs=400, seed=0)[1]
    assert 0.45 <= np.mean(np.asarray(inside) <= se400) <= 0.9
    # pairs i != j only: the estimate targets the off-diagonal mean
    off = avg_jsd(p, include_diagonal=False)
    est, se = sampled_jsd(p, pairs=4000, seed=2, include_diagonal=False)
    assert abs(est - off) <= 3 * se
    # seeded, and each sampled pair is the hand JSD
    assert sampled_jsd(p, pairs=50, seed=(3, 7)) == sampled_jsd(p, pairs=50, seed=(3, 7))
    rng = np.random.default_rng(9)
    i, j = rng.integers(0, 400, 5), rng.integers(0, 400, 5)
    pn = p.double().numpy()
    values = [hand_jsd(pn[a], pn[b]) for a, b in zip(i, j)]
    est, _ = sampled_jsd(p, pairs=5, seed=9, dtype=torch.float64, control=False)
    assert est == pytest.approx(np.mean(values), abs=1e-12)
    # the default estimator adds the Hellinger control variate: its hand form, with the mean
    # squared Hellinger distance over all ordered pairs computed by brute force
    rt = np.sqrt(pn)
    hel_all = 2 - 2 * rt @ rt.T
    for diag, n_pairs in ((True, 400 * 400), (False, 400 * 399)):
        rng = np.random.default_rng(11)
        i = rng.integers(0, 400, 64)
        j = rng.integers(0, 400, 64) if diag else (i + rng.integers(1, 400, 64)) % 400
        jv = np.array([hand_jsd(pn[a], pn[b]) for a, b in zip(i, j)])
        hv = np.array([2 - 2 * rt[a] @ rt[b] for a, b in zip(i, j)])  # rows sum to 1
        e_hel = (hel_all.sum() - (0 if diag else np.trace(hel_all))) / n_pairs
        beta = np.cov(jv, hv)[0, 1] / np.var(hv, ddof=1)
        adjusted = jv - beta * (hv - e_hel)
        got = sampled_jsd(p, pairs=64, seed=11, dtype=torch.float64, include_diagonal=diag)
        assert got == pytest.approx((adjusted.mean(), adjusted.std(ddof=1) / 8), rel=1e-9)
    # ... and earns its keep: several times less error at the same pairs, still calibrated
    plain_se = sampled_jsd(p, pairs=4000, seed=1, control=False)[1]
    assert se < plain_se / 3
    # the one-pass form the analysis uses gives the same figures
    one = attention_statistics(p, exact_rows=100, pairs=500, seed=4)
    assert (one["jsd_att"], one["jsd_att_se"]) == pytest.approx(sampled_jsd(p, pairs=500, seed=4))
    exact_one = attention_statistics(p, exact_rows=None)
    assert exact_one["jsd_att"] == pytest.approx(exact) and exact_one["jsd_att_se"] == 0.0
    for key, value in row_degeneracy(p).items():
        assert one[key] == pytest.approx(value, rel=1e-6)


def test_degeneracy_on_one_hot_and_uniform_rows():
    n, k = 12, 20
    one_hot = torch.zeros(n, k)
    keys = [0, 0, 3, 3, 3, 7, 7, 7, 7, 19, 19, 0]
    one_hot[torch.arange(n), torch.tensor(keys)] = 1.0
    d = row_degeneracy(one_hot)
    assert d["row_entropy"] == 0.0 and d["eff_keys"] == 1.0 and d["max_weight"] == 1.0
    assert d["argmax_keys"] == 4  # keys 0, 3, 7, 19
    uniform = torch.full((n, k), 1.0 / k)
    d = row_degeneracy(uniform)
    assert d["row_entropy"] == pytest.approx(math.log(k))
    assert d["eff_keys"] == pytest.approx(k) and d["max_weight"] == pytest.approx(1 / k)
    assert d["argmax_keys"] == 1  # every row's first maximum is key 0
    # rows spread evenly over 2 keys: entropy ln 2, two effective keys
    half = torch.zeros(n, k)
    half[:, :2] = 0.5
    assert row_degeneracy(half)["eff_keys"] == pytest.approx(2.0)
    # not distributions: no entropy, argmax keys still counted
    d = row_degeneracy(torch.randn(n, k))
    assert math.isnan(d["eff_keys"]) and 1 <= d["argmax_keys"] <= n


@pytest.fixture(scope="module")
def nl_model():
    torch.manual_seed(0)
    return create_tiny("nl_tiny", num_classes=3, zero_init_residual=False)


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


def test_sampled_in_the_analysis_and_exact_on_request(nl_model, x):
    exact = query_independence(nl_model, x, exact=True, progress=False)
    n_rows = exact.sites[0]["query_grid"][0] * exact.sites[0]["query_grid"][1]
    sampled = query_independence(
        nl_model, x, exact_rows=n_rows - 1, jsd_pairs=3000, batch_size=2, progress=False
    )
    assert (exact.jsd_se == 0).all() and (sampled.jsd_se > 0).all()
    for i in range(3):
        for s in range(len(exact.sites)):
            est, se = sampled.values["jsd_att"][i, s], sampled.jsd_se[i, s]
            assert abs(est - exact.values["jsd_att"][i, s]) <= 4 * se
    frame = sampled.to_frame()
    se = sampled.jsd_se[:, 0]
    assert frame["jsd_att_se"].iloc[0] == pytest.approx(np.sqrt((se**2).sum()) / 3)
    assert frame["jsd_att_sampled"].all() and not exact.to_frame()["jsd_att_sampled"].any()
    assert "jsd_att sampled at" in sampled.summary() and "jsd_att sampled" not in exact.summary()
    # per-image seeds: the batch size does not change the estimate
    again = query_independence(
        nl_model, x, exact_rows=n_rows - 1, jsd_pairs=3000, batch_size=3, progress=False
    )
    # (same pairs; the float32 forward may differ in the last bits between batch sizes)
    np.testing.assert_allclose(again.values["jsd_att"], sampled.values["jsd_att"], rtol=1e-6)
    # the degeneracy figures are those of the captured rows
    import attnviz

    with torch.no_grad(), attnviz.capture(nl_model.eval(), kinds="nl") as cache:
        nl_model(x)
    att = cache[exact.sites[0]["name"]]
    for i in range(3):
        d = row_degeneracy(att[i])
        for m in ("row_entropy", "eff_keys", "max_weight", "argmax_keys"):
            assert exact.values[m][i, 0] == pytest.approx(d[m], rel=1e-6)


def test_at_or_below_exact_rows_an_image_is_sampled_only_within_the_target_error(nl_model, x):
    """Up to exact_rows rows, an image's JSD is sampled only where its se <= jsd_se * sqrt(n)
    (so the mean's se <= jsd_se); otherwise, and for a single image at a tight target, exact."""
    import attnviz

    exact = query_independence(nl_model, x, exact=True, progress=False)
    n = x.shape[0]
    with torch.no_grad(), attnviz.capture(nl_model.eval(), kinds="nl") as cache:
        nl_model(x)
    att = cache[exact.sites[0]["name"]]
    for target in (1e-3, 1e-4, 1e-9):
        got = query_independence(nl_model, x, jsd_se=target, progress=False)
        se = got.jsd_se[:, 0]
        sampled = se > 0
        assert (se[sampled] <= target * math.sqrt(n)).all()
        # the exact images are the exact values, the sampled ones lie within their error
        e, g = exact.values["jsd_att"][:, 0], got.values["jsd_att"][:, 0]
        np.testing.assert_allclose(g[~sampled], e[~sampled], rtol=1e-6)
        assert (np.abs(g - e)[sampled] <= 4 * se[sampled]).all()
        frame = got.to_frame().iloc[0]
        assert frame["jsd_att_sampled"] == sampled.sum()
        assert frame["jsd_att_se"] <= target
        # the same decision by hand: each image's pairs seeded by (seed, index, site)
        for i in range(n):
            est, se_i = sampled_jsd(att[i], pairs=JSD_PAIRS, seed=(0, i, 0))
            want = (est, se_i) if se_i <= target * math.sqrt(n) else (avg_jsd(att[i]), 0.0)
            assert (g[i], se[i]) == pytest.approx(want, rel=1e-5)
        if target == 1e-9:
            assert not sampled.any()
    loose = query_independence(nl_model, x, jsd_se=1e-3, progress=False)
    assert (loose.jsd_se[:, 0] > 0).all()  # the control-variate sample is this precise here
    with pytest.raises(ValueError, match="jsd_se >= 0"):
        query_independence(nl_model, x, jsd_se=-1.0, progress=False)


def test_near_one_hot_rows_are_flagged():
    site = {"alias": "NL_1", "name": "nl", "kind": "nl", "instantiation": "eg", "n_keys": 16}
    values = {
        m: np.full((2, 1), v)
        for m, v in {
            "cos_att": 0.4,
            "jsd_att": 0.6,
            "row_entropy": 0.01,
            "eff_keys": 1.01,
            "max_weight": 0.999,
            "argmax_keys": 4.0,
        }.items()
    }
    res = QueryIndependenceResult(
        model="m", sites=[site], metrics=list(values), values=values, jsd_se=np.zeros((2, 1))
    )
    assert res.near_one_hot() == ["NL_1"]
    text = res.summary()
    assert "NL_1: NEAR ONE-HOT rows: effective number of keys 1.01" in text
    assert "4.0 distinct argmax keys of 16" in text
    from attnviz.commands.queries import markdown_table
    from attnviz.plot.queries import statistics_table

    md = markdown_table(statistics_table(res, paper=False))
    assert "0.01 / 1.01 / 4 near one-hot" in md
    values["eff_keys"][:] = 5.0
    assert (
        QueryIndependenceResult(
            model="m", sites=[site], metrics=list(values), values=values
        ).near_one_hot()
        == []
    )


def test_too_many_query_points_are_refused(nl_model, x):
    with pytest.raises(ValueError, match="at most 16 query points"):
        query_independence(nl_model, x, n_queries=100000, map_images=1, progress=False)
    # the site's grid: nl_tiny's Non-local site is 2x2 at 8 px and 4x4 at 16 px
    small = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="has a 2x2 query grid, at most 4 query points"):
        query_independence(nl_model, small, n_queries=5, map_images=1, progress=False)
    # evenly spread points that would repeat on the grid are refused with the limit too
    small = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with pytest.raises(ValueError, match="4x4 query grid holds at most 4 distinct"):
        query_independence(nl_model, small, n_queries=5, map_images=1, progress=False)
    assert query_independence(nl_model, small, n_queries=4, map_images=1, progress=False)
    from attnviz.commands import queries as cmd

    assert (cmd.MAX_FIGURE_QUERIES, cmd.EXACT_ROWS, cmd.JSD_PAIRS) == (
        MAX_FIGURE_QUERIES,
        EXACT_ROWS,
        JSD_PAIRS,
    )
