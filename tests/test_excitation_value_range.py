"""Channel-gate figures on kinds whose values are not gates in [0, 1] (issue 24: per-stage bars
for the newer channel kinds). BAM's ``bam_channel`` is read before its sigmoid (logits of both
signs): the figures used to clip it to [0, 1]. A gate kind whose values leave [0, 1] (a module
with another gate function) is drawn the same way; gates in [0, 1] keep the [0, 1] axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from attnviz.analysis.excitation import ExcitationProfileResult, SiteExcitation
from attnviz.capture.kinds import get_kind, kinds_with_role
from attnviz.plot import (
    plot_excitation_by_class,
    plot_excitation_heatmap,
    plot_excitation_std,
    plot_gate_stage_bars,
)


def _site(alias: str, kind: str, stage: int, class_mean: np.ndarray) -> SiteExcitation:
    k, c = class_mean.shape
    return SiteExcitation(
        alias=alias, name=alias.lower(), kind=kind, stage=stage, block=1,
        class_mean=class_mean, class_std=np.full((k, c), 0.1), mean=class_mean.mean(0),
        std=np.full(c, 0.1), channels=np.arange(c),
    )  # fmt: skip


def _result(*sites: SiteExcitation) -> ExcitationProfileResult:
    k = sites[0].class_mean.shape[0]
    return ExcitationProfileResult(
        sites=list(sites), classes=list(range(k)), class_names=[f"c{i}" for i in range(k)],
        counts=np.array([3, 5, 2][:k]), n_images=10, label_source="given",
    )  # fmt: skip


GATE = np.array([[0.2, 0.9, 0.5, 0.4], [0.1, 0.7, 0.6, 0.3], [0.3, 0.8, 0.2, 0.5]])
LOGITS = np.array([[-2.5, 0.4, 1.0], [0.3, -0.2, 0.1], [1.8, -1.1, 0.0]])  # min -2.5, max 1.8


def _panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.get_visible()]


def test_the_sigmoid_channel_kinds_say_they_are_in_the_unit_interval():
    bounded = {k for k in kinds_with_role("channel") if get_kind(k).value_range == (0.0, 1.0)}
    assert bounded == {"se", "eca", "cbam_channel", "cse", "splat_gate", "ge"}
    assert get_kind("bam_channel").value_range is None  # logits


def test_heatmap_gives_logits_their_own_diverging_scale_of_both_signs():
    fig = plot_excitation_heatmap(
        _result(_site("SE_2_1", "se", 2, GATE[:, :3]), _site("BAMC_3_3", "bam_channel", 3, LOGITS))
    )
    try:
        se, bam = _panels(fig)
        assert (se.images[0].norm.vmin, se.images[0].norm.vmax) == (0.0, 1.0)
        norm = bam.images[0].norm
        assert (norm.vmin, norm.vmax) == (-2.5, 2.5)  # the largest magnitude is negative
        assert bam.images[0].get_cmap().name == "RdBu_r"
        np.testing.assert_allclose(bam.images[0].get_array()[:3], LOGITS)  # not clipped
        bars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert bars == ["mean excitation", "mean value, not a gate in [0, 1] (logit)"]
        assert "two colour scales" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_heatmap_of_gates_only_keeps_one_unit_scale():
    fig = plot_excitation_heatmap(_result(_site("SE_2_1", "se", 2, GATE)))
    try:
        bars = [ax.get_ylabel() for ax in fig.axes if ax.get_label() == "<colorbar>"]
        assert bars == ["mean excitation"]
        assert "one colour scale for all panels" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


@pytest.mark.parametrize("plot", [plot_excitation_by_class, plot_excitation_std])
def test_line_panels_show_logits_whole_and_gates_on_the_unit_axis(plot):
    result = _result(
        _site("SE_2_1", "se", 2, GATE[:, :3]), _site("BAMC_3_3", "bam_channel", 3, LOGITS)
    )
    fig = plot(result) if plot is plot_excitation_by_class else plot(result, 0)
    try:
        se, bam = _panels(fig)
        assert se.get_ylim() == (-0.02, 1.02)
        lo, hi = bam.get_ylim()
        shown = LOGITS[0] if plot is plot_excitation_std else LOGITS
        assert lo < shown.min() - (0.1 if plot is plot_excitation_std else 0) and hi > shown.max()
        assert "BAMC_3_3" in se.get_ylabel()  # the label names what is not a gate
    finally:
        plt.close(fig)


def test_stage_bars_show_negative_logits_and_name_the_site():
    fig = plot_gate_stage_bars(
        _result(_site("SE_2_1", "se", 2, GATE[:, :3]), _site("BAMC_3_3", "bam_channel", 3, LOGITS))
    )
    try:
        ax, dots = _panels(fig)
        lows = [float(line.get_ydata().min()) for line in dots.lines if len(line.get_ydata())]
        assert ax.get_ylim()[0] < 0 and dots.get_ylim()[0] <= min(lows)
        assert min(lows) == pytest.approx(LOGITS[0].mean() - 0.1)  # class 0 at BAMC_3_3
        assert "not in [0, 1] at BAMC_3_3" in ax.get_ylabel()
    finally:
        plt.close(fig)


def test_a_gate_kind_whose_values_leave_the_unit_interval_is_not_clipped():
    fig = plot_gate_stage_bars(_result(_site("SE_2_1", "se", 2, GATE + 1.0)))
    try:
        ax = _panels(fig)[0]
        assert ax.get_ylim()[1] >= GATE.mean() + 1.0 + 0.1  # the bar and its error bar
        assert "SE_2_1" in ax.get_ylabel()
    finally:
        plt.close(fig)
    fig = plot_gate_stage_bars(_result(_site("SE_2_1", "se", 2, GATE)))
    try:
        ax = _panels(fig)[0]
        assert ax.get_ylim() == (0.0, 1.05) and ax.get_ylabel() == "gate value (mean over channels)"
    finally:
        plt.close(fig)


def test_heatmap_of_two_logit_sites_of_different_widths_shares_one_scale():
    wide = np.array(
        [[0.5, -4.0, 1.0, 2.0, 0.0], [0.1, 0.2, 0.3, 0.4, 0.5], [0.0, 0.0, 0.0, 0.0, 1.0]]
    )
    fig = plot_excitation_heatmap(
        _result(
            _site("BAMC_3_3", "bam_channel", 3, LOGITS), _site("BAMC_4_2", "bam_channel", 4, wide)
        )
    )
    try:
        norms = {(im.norm.vmin, im.norm.vmax) for ax in _panels(fig) for im in ax.images}
        assert norms == {(-4.0, 4.0)}  # the 3- and 5-channel panels on one symmetric scale
    finally:
        plt.close(fig)
