"""Mutation survivors of ``attnviz.plot`` (issue 26, item 2) killed by their artists: bar
widths and dodging, tick rotation, axis limits and sharing, legend entries, placement and
size, colour-bar limits and labels, title sizes, and drawing into the caller's figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.font_manager import FontProperties

from attnviz import plot
from attnviz.analysis.attribution import attention_vs_attribution, gradcam_comparison
from attnviz.analysis.excitation import excitation_profile
from attnviz.analysis.scale_sweep import scale_sweep
from attnviz.data import ShapesDataset
from attnviz.data.shapes import ShapeScenes
from attnviz.models import load_model
from attnviz.models.tiny import create_tiny
from attnviz.plot.ablation import plot_ablation_bars


def _points(size: str) -> float:
    return FontProperties(size=size).get_size_in_points()


# ----------------------------------------------------------------------------- ablation
class _Ablation:
    """The duck type the ablation figures take: a ``to_frame()`` table and ``meta``."""

    def __init__(self, groups, policies, meta):
        rows = [
            dict(
                group=g,
                scope="site",
                policy=p,
                measure="p_true",
                n=4,
                mean=0.1 * (i + 1),
                ci_low=0.0,
                ci_high=0.2 * (i + 1),
                p_holm=0.5,
            )  # fmt: skip
            for i, g in enumerate(groups)
            for p in policies
        ]
        self.frame, self.meta = pd.DataFrame(rows), meta

    def to_frame(self) -> pd.DataFrame:
        return self.frame


@pytest.mark.parametrize("n_policies", [1, 2, 3])
def test_dodged_bars_split_the_group_slot_without_overlap(n_policies):
    groups = ["SE_1", "SE_2", "SE_3"]
    policies = ["uniform", "mean", "shuffle"][:n_policies]
    fig = plot_ablation_bars(_Ablation(groups, policies, {}))
    ax = fig.axes[0]
    bars = sorted(ax.patches, key=lambda p: p.get_x())
    assert len(bars) == len(groups) * n_policies
    for b in bars:
        assert b.get_width() == pytest.approx(0.8 / n_policies)
        centre = b.get_x() + b.get_width() / 2
        g = round(centre)
        assert abs(centre - g) <= 0.4 + 1e-9  # inside its group's slot
    for a, b in zip(bars, bars[1:]):
        assert a.get_x() + a.get_width() <= b.get_x() + 1e-9  # no overlap


@pytest.mark.parametrize("n_groups", [4, 5])
def test_group_labels_rotate_only_past_four_groups(n_groups):
    groups = [f"SE_{k}" for k in range(n_groups)]
    fig = plot_ablation_bars(_Ablation(groups, ["uniform"], {}))
    ticks = fig.axes[0].get_xticklabels()
    assert [t.get_text() for t in ticks] == groups
    rotated = n_groups > 4
    assert {t.get_rotation() for t in ticks} == {30.0 if rotated else 0.0}
    assert {t.get_ha() for t in ticks} == {"right" if rotated else "center"}


def test_policy_order_follows_a_dict_meta_and_ignores_any_other_meta():
    groups, policies = ["SE_1"], ["uniform", "mean"]
    listed = plot_ablation_bars(_Ablation(groups, policies, {"policies": ["mean", "uniform"]}))
    legend = [t.get_text() for t in listed.axes[0].get_legend().get_texts()]
    assert legend == ["mean", "uniform"]
    for meta in (["mean", "uniform"], SimpleNamespace(policies=["mean", "uniform"])):
        fig = plot_ablation_bars(_Ablation(groups, policies, meta))  # not a dict: table order
        assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == policies


# ----------------------------------------------------------------------------- attribution
@pytest.fixture(scope="module")
def images():
    return ShapesDataset(1, size=64, seed=30_000)  # 10 images with object masks


@pytest.fixture(scope="module")
def comparison(images):
    loaded = {n: load_model(n) for n in ("cbam_tiny", "se_tiny")}
    config = loaded["cbam_tiny"][1]
    models = {n: m for n, (m, _) in loaded.items()}
    return gradcam_comparison(models, images, preprocess=config, keep_maps=2, progress=False)


def test_agreement_rho_axis_spans_the_whole_correlation_range(images):
    model, config = load_model("cbam_tiny")
    r = attention_vs_attribution(model, images, preprocess=config, keep_maps=2, progress=False)
    fig = plot.plot_agreement(r)
    ax_r, ax_i = fig.axes[:2]
    assert ax_r.get_ylim() == pytest.approx((-1.05, 1.05))  # rho lies in [-1, 1]
    assert ax_i.get_ylim() == pytest.approx((0.0, 1.05))  # IoU lies in [0, 1]


def test_localisation_panels_share_rows_and_name_the_object_area_line(comparison):
    fig = plot.plot_localisation(comparison)
    share, pointing = fig.axes[:2]
    assert share.get_shared_y_axes().joined(share, pointing)  # one row per map in both
    area = float(comparison.localisation_summary()["object_area"].iloc[0])
    legend = pointing.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["mean object area"]
    (line,) = [ln for ln in pointing.get_lines() if ln.get_label() == "mean object area"]
    assert line.get_xdata()[0] == pytest.approx(area)


def test_target_probability_bars_are_translucent_behind_the_dots(comparison):
    fig = plot.plot_target_probability(comparison)
    left = fig.axes[0]
    np.testing.assert_allclose(
        [p.get_height() for p in left.patches], np.nanmean(comparison.probability, axis=0)
    )
    assert {p.get_alpha() for p in left.patches} == {0.5}


# ----------------------------------------------------------------------------- excitation
@pytest.fixture(scope="module")
def profile(images):
    torch.manual_seed(0)
    model = create_tiny("se_tiny").eval()
    return excitation_profile(model, images, channels=6, permutations=20, progress=False)


def test_class_legend_wraps_into_rows_of_at_most_six(profile):
    assert len(profile.class_names) == 10
    fig = plot.plot_excitation_by_class(profile, list(range(10)))
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 11  # ten classes and "all classes"
    assert legend._ncols == 6
    few = plot.plot_excitation_by_class(profile, [0, 1, 2])
    assert few.legends[0]._ncols == 4  # every entry in one row


def test_gate_stage_bars_draw_into_the_callers_figure_with_translucent_bars(profile):
    sub = plt.figure()
    fig = plot.plot_gate_stage_bars(profile, fig=sub)
    assert fig is sub and len(sub.axes) == 2
    assert {p.get_alpha() for p in sub.axes[0].patches} == {0.8}


def test_specificity_figure_size_legend_place_and_size(profile):
    fig = plot.plot_specificity(profile)
    n = len(profile.specificity())
    assert fig.get_size_inches()[0] == pytest.approx(max(5.5, 0.9 * n + 3.5))
    legend = fig.axes[0].get_legend()
    assert legend._loc == 2  # "upper left" corner at the anchor right of the axes
    assert {t.get_fontsize() for t in legend.get_texts()} == {_points("small")}


# ----------------------------------------------------------------------------- queries
def _query_result(d: np.ndarray, cells, *, is_distribution: bool = True):
    """The attributes the query figures read, for given distances / query cells."""
    n_q, heads, grid = len(cells), ["0", "1", "mean"], (2, 3)
    rng = np.random.default_rng(0)
    return SimpleNamespace(
        pairwise_distances=lambda metric: d,
        query_cells=np.asarray(cells, dtype=int).reshape(-1, 2),
        query_pixels=np.asarray(cells, dtype=float).reshape(-1, 2) * 8 + 4,
        meta={"model": "fake"},
        site={"alias": "NL_1", "kind": "vit"},
        head_maps=rng.random((n_q, len(heads), *grid)),
        n_queries=n_q,
        heads=heads,
        prefix_names=[],
        prefix_maps=np.zeros((0, len(heads), *grid)),
        image=rng.integers(0, 256, (16, 24, 3), dtype=np.uint8),
        is_distribution=is_distribution,
        grid_maps=np.zeros((n_q, *grid)),
        prefix_key_weights=np.zeros((n_q, len(heads), 0)),
    )


def test_distance_colour_scale_starts_at_zero_and_stays_positive_for_zero_distances():
    d = np.array([[0.0, 0.3], [0.3, 0.0]])
    fig = plot.plot_query_distances(_query_result(d, [(0, 0), (1, 2)]))
    assert fig.axes[0].images[0].get_clim() == (0.0, 0.3)
    one = plot.plot_query_distances(_query_result(np.zeros((1, 1)), [(1, 1)]))
    assert one.axes[0].images[0].get_clim() == (0.0, 1.0)  # a single query: no span


@pytest.mark.parametrize("dist, unit", [(True, "attention weight"), (False, "attention")])
def test_head_colour_bar_says_whether_maps_are_weights(dist, unit):
    fig = plot.plot_query_heads(_query_result(None, [(0, 1)], is_distribution=dist))
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert [b.get_ylabel() or b.get_xlabel() for b in bars] == [unit]


# ----------------------------------------------------------------------------- sweep
@pytest.fixture(scope="module")
def sweep():
    torch.manual_seed(0)
    model = create_tiny("sk_tiny").eval()
    scenes = ShapeScenes(6, seed=5)
    return scenes, scale_sweep(model, scenes, per_image=True, batch_size=6, progress=False)


def test_class_delta_markers_stay_on_their_class(sweep):
    _, r = sweep
    fig = plot.plot_class_delta(r)
    k = len(r.class_names)
    for ax in fig.axes:
        offsets = []
        for bars in ax.containers:  # one errorbar per larger scale: (data line, caps, bars)
            xs = np.asarray(bars.lines[0].get_xdata(), dtype=float)
            assert xs.size == k
            off = xs - np.arange(k)
            assert np.allclose(off, off[0]) and 0 < abs(off[0]) < 0.25  # dodged, same class
            offsets.append(off[0])
        assert offsets and len(set(np.round(offsets, 9))) == len(offsets)


def test_image_view_titles_are_medium_in_their_scale_colour(sweep):
    scenes, r = sweep
    fig = plot.plot_image_views(r, scenes.views(0), 0)
    titled = [ax for ax in fig.axes if ax.images]
    assert len(titled) == len(r.scales)
    for ax in titled:
        assert ax.title.get_fontsize() == _points("medium")
