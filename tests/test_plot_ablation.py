"""The ablation figures (issue 22) show the numbers of the result's table: bar heights are the
paired means, whiskers the bootstrap CI, heatmap cells the means, stars the Holm-adjusted
p < 0.05; checked on the figures' artists against the frame, and on the house conventions."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from test_plot_conventions import check, colorbars

from attnviz import plot
from attnviz.plot.ablation import patch_label

MEASURES = ("accuracy", "p_true", "logit_true", "kl", "agreement")


class FakeAblation:
    """A stand-in for AblationResult: the columns of its ``to_frame()`` and its meta."""

    kind = "ablation"

    def __init__(self, frame: pd.DataFrame, meta: dict):
        self.frame, self.meta = frame, meta

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()


def fake_result(policies, groups, model="se_tiny", n=40, seed=0) -> FakeAblation:
    rng = np.random.default_rng(seed)
    rows = []
    for group, scope in groups:
        for policy in policies:
            for measure in MEASURES:
                if measure == "kl":
                    mean = rng.uniform(0.0, 0.5)
                elif measure == "agreement":
                    mean = rng.uniform(0.5, 1.0)
                else:
                    mean = rng.normal(-0.1, 0.1)
                se = rng.uniform(0.01, 0.04)
                rows.append(
                    dict(
                        group=group,
                        scope=scope,
                        policy=policy,
                        measure=measure,
                        n=n,
                        mean=mean,
                        se=se,
                        ci_low=mean - 2.1 * se,
                        ci_high=mean + 1.7 * se,
                        p=0.01,
                        p_holm=float(rng.choice([0.001, 0.2])),
                    )
                )
    meta = {"model": model, "policies": list(policies), "groups": [g for g, _ in groups]}
    return FakeAblation(pd.DataFrame(rows), meta)


SE_GROUPS = [("SE_2_1", "site"), ("SE_3_1", "site"), ("SE_4_1", "site")]
SE_GROUPS += [("stage:2", "stage"), ("stage:3", "stage"), ("stage:4", "stage"), ("all", "all")]
SE_POLICIES = ("constant:1", "mean", "shuffle")


@pytest.fixture()
def se_result() -> FakeAblation:
    return fake_result(SE_POLICIES, SE_GROUPS)


@pytest.fixture()
def patch_result() -> FakeAblation:
    groups = [("SK_2_1", "site"), ("SK_3_1", "site"), ("SK_4_1", "site"), ("all", "all")]
    policies = ("patch:other>2.0x", "patch:1.0x>2.0x", "patch:2.0x>1.0x", "patch:other>1.0x")
    return fake_result(policies, groups, model="sk_tiny", n=30)


def _bars(ax) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def _whiskers(bars: BarContainer) -> np.ndarray:
    """(n, 2) low and high ends of the error bars of a bar container."""
    segs = bars.errorbar.lines[2][0].get_segments()
    return np.array([[s[:, 1].min(), s[:, 1].max()] for s in segs])


def _expected(result, measure, groups, policy, column):
    f = result.frame
    f = f[(f.measure == measure) & (f.policy == policy)].set_index("group")
    return f.loc[groups, column].to_numpy(dtype=float)


@pytest.mark.parametrize("measure", ["p_true", "kl", "accuracy"])
def test_bars_are_the_paired_means_and_whiskers_the_ci(se_result, measure):
    fig = plot.plot_ablation_bars(se_result, measure)
    ax = fig.axes[0]
    sites = ["SE_2_1", "SE_3_1", "SE_4_1"]
    assert [t.get_text() for t in ax.get_xticklabels()] == sites
    containers = _bars(ax)
    assert [c.get_label() for c in containers] == list(SE_POLICIES)  # one colour per policy
    assert len({tuple(c.patches[0].get_facecolor()) for c in containers}) == 3
    for policy, bars in zip(SE_POLICIES, containers):
        heights = [p.get_height() for p in bars.patches]
        np.testing.assert_allclose(heights, _expected(se_result, measure, sites, policy, "mean"))
        want = np.stack(
            [_expected(se_result, measure, sites, policy, c) for c in ("ci_low", "ci_high")], 1
        )
        np.testing.assert_allclose(_whiskers(bars), want)
    assert any(line.get_ydata()[0] == 0 for line in ax.get_lines())  # the zero line
    stars = sum(t.get_text() == "*" for t in ax.texts)
    frame = se_result.frame
    chosen = frame[(frame.measure == measure) & (frame.scope == "site")]
    assert stars == int((chosen.p_holm < 0.05).sum())
    check(fig, "se_tiny")
    assert "40 images" in ax.get_title() and "bootstrap 95% CI" in ax.get_title()


def test_bars_of_stages_and_a_subset_of_policies(se_result):
    fig = plot.plot_ablation_bars(se_result, "logit_true", scope="stage", policies=["mean"])
    ax = fig.axes[0]
    (bars,) = _bars(ax)
    stages = ["stage:2", "stage:3", "stage:4"]
    assert [t.get_text() for t in ax.get_xticklabels()] == stages
    np.testing.assert_allclose(
        [p.get_height() for p in bars.patches],
        _expected(se_result, "logit_true", stages, "mean", "mean"),
    )


def test_heatmap_cells_colour_bar_and_diverging_scale(se_result):
    fig = plot.plot_ablation_heatmap(se_result, "p_true")
    ax = fig.axes[0]
    (im,) = ax.images
    groups = ["stage:2", "stage:3", "stage:4", "all"]
    assert [t.get_text() for t in ax.get_yticklabels()] == groups
    assert [t.get_text() for t in ax.get_xticklabels()] == list(SE_POLICIES)
    values = np.asarray(im.get_array())
    for j, policy in enumerate(SE_POLICIES):
        np.testing.assert_allclose(
            values[:, j], _expected(se_result, "p_true", groups, policy, "mean")
        )
    assert im.get_cmap().name == "RdBu_r" and im.norm.vmin == -im.norm.vmax
    assert im.norm.vmax == pytest.approx(np.abs(values).max())
    frame = se_result.frame.set_index(["measure", "group", "policy"])
    for text in ax.texts:  # the value written in each cell, starred where Holm p < 0.05
        r, c = (round(v) for v in (text.get_position()[1], text.get_position()[0]))
        row = frame.loc[("p_true", groups[r], SE_POLICIES[c])]
        assert float(text.get_text().rstrip("*")) == pytest.approx(row["mean"], abs=5e-4)
        assert text.get_text().endswith("*") == (row["p_holm"] < 0.05)
    assert len(ax.texts) == values.size
    assert len(colorbars(fig)) == 1
    check(fig, "se_tiny", maps=True)


def test_heatmap_of_non_differences_is_sequential(se_result):
    fig = plot.plot_ablation_heatmap(se_result, "agreement")
    (im,) = fig.axes[0].images
    assert im.get_cmap().name == "viridis" and (im.norm.vmin, im.norm.vmax) == (0.0, 1.0)
    kl = plot.plot_ablation_heatmap(se_result, "kl", scope="site").axes[0].images[0]
    assert kl.get_cmap().name == "viridis" and kl.norm.vmin == 0.0
    assert np.asarray(kl.get_array()).shape == (3, 3)


def test_heatmap_marks_a_policy_that_did_not_apply():
    groups = [("stage:2", "stage"), ("stage:3", "stage")]
    r = fake_result(("constant:1", "branch:0"), groups, model="sk_tiny")
    r.frame = r.frame[~((r.frame.group == "stage:3") & (r.frame.policy == "branch:0"))]
    fig = plot.plot_ablation_heatmap(r, "kl")
    values = np.asarray(fig.axes[0].images[0].get_array())
    assert np.isnan(values[1, 1]) and np.isfinite(values[0]).all()
    assert "n/a" in [t.get_text() for t in fig.axes[0].texts]


def test_patching_bars_put_the_scale_patch_first(patch_result):
    fig = plot.plot_patching(patch_result)  # into 2.0x: the same scene's 1.0x, then the control
    ax = fig.axes[0]
    containers = _bars(ax)
    assert [c.get_label() for c in containers] == [
        "from the 1.0x rendering of the same scene",
        "from another scene at 2.0x",
    ]
    sites = ["SK_2_1", "SK_3_1", "SK_4_1", "all"]  # each site and all together
    assert [t.get_text() for t in ax.get_xticklabels()] == sites
    for policy, bars in zip(("patch:1.0x>2.0x", "patch:other>2.0x"), containers):
        np.testing.assert_allclose(
            [p.get_height() for p in bars.patches],
            _expected(patch_result, "p_true", sites, policy, "mean"),
        )
        want = np.stack(
            [_expected(patch_result, "p_true", sites, policy, c) for c in ("ci_low", "ci_high")], 1
        )
        np.testing.assert_allclose(_whiskers(bars), want)
    check(fig, "sk_tiny")
    assert "into the 2.0x rendering" in ax.get_title() and "30 images" in ax.get_title()
    assert "SK_2_1, SK_3_1 and SK_4_1; all together" in ax.get_title()  # "all" is no site
    back = plot.plot_patching(patch_result, "kl", target="1.0x", scope="site")
    labels = [c.get_label() for c in _bars(back.axes[0])]
    assert labels == ["from the 2.0x rendering of the same scene", "from another scene at 1.0x"]
    (bars, _) = _bars(back.axes[0])
    np.testing.assert_allclose(
        [p.get_height() for p in bars.patches],
        _expected(patch_result, "kl", sites[:3], "patch:2.0x>1.0x", "mean"),
    )
    only = plot.plot_patching(patch_result, policies=["patch:other>1.0x"], target="1.0x")
    assert len(_bars(only.axes[0])) == 1
    assert patch_label("patch:other") == "from another scene"


def test_bad_input_is_one_line(se_result):
    with pytest.raises(ValueError, match=r"unknown measure 'top5'.*'p_true'"):
        plot.plot_ablation_bars(se_result, "top5")
    with pytest.raises(ValueError, match=r"unknown policy 'uniform'.*'shuffle'"):
        plot.plot_ablation_bars(se_result, policies=["uniform"])
    with pytest.raises(ValueError, match="unknown scope 'stages'"):
        plot.plot_ablation_heatmap(se_result, scope="stages")
    with pytest.raises(ValueError, match=r"no patch policies into 2.0x.*constant:1"):
        plot.plot_patching(se_result)
    broken = FakeAblation(se_result.frame.drop(columns=["ci_low"]), se_result.meta)
    with pytest.raises(ValueError, match=r"columns \['ci_low'\] are missing"):
        plot.plot_ablation_bars(broken)


def test_ax_argument_draws_into_the_callers_figure(se_result, patch_result):
    fig, (a, b, c) = plt.subplots(1, 3)
    assert plot.plot_ablation_bars(se_result, ax=a) is fig
    assert plot.plot_ablation_heatmap(se_result, ax=b) is fig
    assert plot.plot_patching(patch_result, ax=c) is fig


def hand_ablation():
    """A real AblationResult from per-image changes given by hand (no model): 2 sites and
    their stage, policies constant:1 and mean, 6 images."""
    from attnviz.analysis.ablation import AblationResult

    rng = np.random.default_rng(3)
    groups = {"SE_2_1": ["SE_2_1"], "SE_2_2": ["SE_2_2"], "all": ["SE_2_1", "SE_2_2"]}
    scopes = {"SE_2_1": "site", "SE_2_2": "site", "all": "all"}
    changes = {}
    for g in groups:
        for p in ("constant:1", "mean"):
            changes[f"{g}|{p}|p_true"] = rng.normal(-0.1, 0.05, 6)
            changes[f"{g}|{p}|logit_true"] = rng.normal(-0.5, 0.2, 6)
            changes[f"{g}|{p}|kl"] = rng.uniform(0, 0.3, 6)
            changes[f"{g}|{p}|agreement"] = rng.integers(0, 2, 6).astype(float)
            changes[f"{g}|{p}|accuracy"] = np.zeros(0)  # no labels
    original = {"p_true": rng.uniform(0.5, 1, 6), "accuracy": np.zeros(0)}
    result = AblationResult(
        changes,
        scopes,
        groups,
        original,
        n_images=6,
        meta={"model": "se_tiny", "policies": ["constant:1", "mean"]},
    )
    return result, changes


def test_bars_of_a_real_result_are_the_hand_means():
    result, changes = hand_ablation()
    fig = plot.plot_ablation_bars(result, "logit_true")
    ax = fig.axes[0]
    for policy, bars in zip(("constant:1", "mean"), _bars(ax)):
        want = [changes[f"{g}|{policy}|logit_true"].mean() for g in ("SE_2_1", "SE_2_2")]
        np.testing.assert_allclose([p.get_height() for p in bars.patches], want, rtol=1e-12)
    check(fig, "se_tiny")
    with pytest.raises(ValueError, match="unknown measure 'accuracy'"):
        plot.plot_ablation_bars(result, "accuracy")  # no labels: no accuracy rows
    heat = plot.plot_ablation_heatmap(result, "kl")  # no stage rows: the "all" row
    values = np.asarray(heat.axes[0].images[0].get_array())
    np.testing.assert_allclose(
        values, [[changes[f"all|{p}|kl"].mean() for p in ("constant:1", "mean")]]
    )


def test_axis_names_the_groups_shown():
    stages = [("stage:2", "stage"), ("stage:3", "stage"), ("all", "all")]
    r = fake_result(("remove",), stages)
    fig = plot.plot_ablation_bars(r)  # no site rows: every group, named as such
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stage:2", "stage:3", "all"]
    assert ax.get_xlabel() == "site group"
    assert plot.plot_ablation_bars(r, scope="stage").axes[0].get_xlabel() == "stage"
    assert plot.plot_ablation_heatmap(r, scope="stage").axes[0].get_ylabel() == "stage"


def test_a_policy_that_did_not_apply_draws_no_bar():
    sites = [("SK_2_1", "site"), ("SE_2_1", "site")]
    r = fake_result(("remove", "branch:0"), sites, model="mixed")
    r.frame = r.frame[~((r.frame.group == "SE_2_1") & (r.frame.policy == "branch:0"))]
    fig = plot.plot_ablation_bars(r, "p_true")
    fig.canvas.draw()
    _, branch = _bars(fig.axes[0])
    heights = [p.get_height() for p in branch.patches]
    assert np.isfinite(heights[0]) and np.isnan(heights[1])  # not a bar of height 0
    segments = branch.errorbar.lines[2][0].get_segments()
    drawn = [s for s in segments if len(s) and np.isfinite(s).all()]
    assert len(drawn) == 1  # one whisker: the group the policy applied to
