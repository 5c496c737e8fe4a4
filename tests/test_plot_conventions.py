"""Every figure of ``attnviz.plot`` follows the conventions (``attnviz/plot/_style.py``),
checked on the figure's artists: a pyplot figure (shows with ``plt.show()``), a colour bar
for every map, one norm for all panels, perceptually uniform colour maps, no two texts
overlapping at the default size, and a title that names the model, the images and the
error bars."""

from __future__ import annotations

import itertools
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.container import BarContainer
from matplotlib.image import AxesImage

from attnviz import plot
from attnviz.report import load_result

ALLOWED_CMAPS = {"viridis", "RdBu_r", "gray"}


# -- the checks ----------------------------------------------------------------------------------
def _texts(fig) -> list:
    """Visible, non-empty text artists a reader sees: titles, labels, tick labels, legends,
    suptitle (cell annotations of a heatmap excluded: they sit inside their own cells)."""
    out = []
    if fig._suptitle is not None:
        out.append(fig._suptitle)
    for leg in fig.legends:
        out += list(leg.get_texts())
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        out += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        for axis in (ax.xaxis, ax.yaxis):  # the ticks drawn (inside the view), as drawn
            out += [t.label1 for t in axis._update_ticks()] + [
                t.label2 for t in axis._update_ticks()
            ]
        if ax.get_legend() is not None:
            out += list(ax.get_legend().get_texts())
    return [t for t in out if t.get_visible() and t.get_text().strip()]


def overlapping_texts(fig) -> list[tuple[str, str]]:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer).expanded(0.98, 0.9)) for t in _texts(fig)]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def all_text(fig) -> str:
    parts = [t.get_text() for t in _texts(fig)]
    for ax in fig.axes:
        parts += [t.get_text() for t in ax.texts]
    parts += [t.get_text() for t in fig.texts]
    return "\n".join(parts)


def map_images(fig) -> list[AxesImage]:
    """Images that show data through a colour map (not RGB pictures, not the grey base)."""
    out = []
    for ax in fig.axes:
        for im in ax.images:
            if np.asarray(im.get_array()).ndim == 2 and im.get_cmap().name != "gray":
                out.append(im)
    return out


def colorbars(fig) -> list:
    return [ax for ax in fig.axes if hasattr(ax, "_colorbar")]


def check(fig, model: str, *, maps: bool = False, shared: bool = True) -> None:
    """Assert the conventions on ``fig`` (see the module docstring)."""
    assert fig in [plt.figure(n) for n in plt.get_fignums()], "not a pyplot figure"
    text = all_text(fig)
    head = fig._suptitle.get_text() if fig._suptitle is not None else ""
    head += " ".join(ax.get_title() for ax in fig.axes)
    assert model in head, f"the title does not name the model {model!r}: {head!r}"
    assert re.search(r"error bars|band|no error", text), "what the error bars are is not said"
    assert re.search(r"\d+ images?|one image", text), "the number of images is not said"
    assert "-0.000" not in text
    assert overlapping_texts(fig) == []
    images = map_images(fig)
    if maps:
        assert images, "no colour-mapped image"
        assert colorbars(fig), "a map without a colour bar"
        for im in images:
            assert im.get_cmap().name in ALLOWED_CMAPS, im.get_cmap().name
        if shared:
            limits = {(im.norm.vmin, im.norm.vmax) for im in images}
            assert len(limits) == 1, f"panels on different colour scales: {limits}"


# -- the results (written by the CLI, tests/conftest.py) --------------------------------------
@pytest.fixture(scope="module")
def results(analysis_folders):
    return {n: load_result(f / "result") for n, f in analysis_folders.all().items()}


def test_sweep_figures(results):
    r = results["sweep"]
    check(plot.plot_stage_bars(r), "sk_tiny")
    check(plot.plot_channel_attention(r), "sk_tiny")
    check(plot.plot_class_d(r), "sk_tiny")
    check(plot.plot_d_heatmap(r), "sk_tiny", maps=True)
    check(plot.plot_delta_bars(r), "sk_tiny")
    check(plot.plot_class_delta(r), "sk_tiny")


def test_excitation_figures(results):
    r = results["excitation"]
    check(plot.plot_excitation_by_class(r, r.class_names[:3]), "se_tiny")
    check(plot.plot_excitation_heatmap(r), "se_tiny", maps=True)
    check(plot.plot_excitation_std(r, r.class_names[0]), "se_tiny")
    check(plot.plot_gate_stage_bars(r), "se_tiny")
    check(plot.plot_specificity(r), "se_tiny")


def test_gate_stage_bars_are_the_mean_gate_and_its_spread(results):
    r = results["excitation"]
    fig = plot.plot_gate_stage_bars(r)
    ax, per_class = fig.axes[:2]
    last = {}
    for s in r.sites:
        last[s.stage] = s
    chosen = list(last.values())
    np.testing.assert_allclose(
        [p.get_height() for p in ax.patches], [s.mean.mean() for s in chosen]
    )
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    segs = bars.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose(
        [(g[1, 1] - g[0, 1]) / 2 for g in segs], [s.std.mean() for s in chosen]
    )
    dots = per_class.containers[0].lines[0]
    ydata = np.asarray(dots.get_ydata(), dtype=float)
    np.testing.assert_allclose(ydata, [s.class_mean[0].mean() for s in chosen])
    assert dots.get_linestyle() == "None"  # classes are unordered: dots, not lines
    assert "std over images" in fig._suptitle.get_text()


def test_query_figures(results):
    r = results["queries"]
    maps = r.query_maps()
    check(plot.plot_query_grid(maps, model=r.model), "nl_tiny", maps=True)
    check(plot.plot_query_distances(maps[0], model=r.model), "nl_tiny", maps=True)


def test_query_table_is_html(results):
    from attnviz.analysis.query_independence import PAPER_TABLE1

    html = plot.statistics_table_html(results["queries"])
    assert html.startswith('<table class="attnviz-table">')
    assert html.count("<tr>") == 1 + 1 + len(PAPER_TABLE1)  # header, nl_tiny, the paper
    assert "<th>cos att</th>" in html and "GCNet paper" in html


def test_attribution_figures(results):
    r = results["attribution"]
    # two colour scales, each said in the caption: attention panels and Grad-CAM panels
    fig = plot.plot_attention_vs_gradcam(r)
    check(fig, "cbam_tiny", maps=True, shared=False)
    assert len(colorbars(fig)) == 2
    att = [ax.images[1] for ax in fig.axes if ax.images and ax.get_title() != "Grad-CAM"
           and len(ax.images) > 1 and ax.get_subplotspec().colspan.start >= 2]  # fmt: skip
    assert len({(im.norm.vmin, im.norm.vmax) for im in att}) == 1
    assert "share one colour scale" in fig._suptitle.get_text()
    check(plot.plot_agreement(r), "cbam_tiny")
    g = results["gradcam"]
    check(plot.plot_gradcam_comparison(g), "cbam_tiny, se_tiny", maps=True)
    check(plot.plot_target_probability(g), "cbam_tiny, se_tiny")


def test_ablation_figures(shapes_folder, tmp_path):
    """Issue 22: the figures of a result written by ``attnviz ablate``."""
    from attnviz.cli import main

    out = tmp_path / "ablation"
    argv = ["ablate", "--model", "se_tiny", "--images", shapes_folder, "--out", out,
            "--scopes", "site", "stage", "--limit", "8", "--no-progress"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    r = load_result(out / "result")
    check(plot.plot_ablation_bars(r), "se_tiny")
    check(plot.plot_ablation_bars(r, "kl", scope="stage"), "se_tiny")
    check(plot.plot_ablation_heatmap(r), "se_tiny", maps=True)
    check(plot.plot_ablation_heatmap(r, "agreement"), "se_tiny", maps=True)


def test_ax_and_fig_arguments_draw_into_the_callers_figure(results):
    fig, (a, b) = plt.subplots(1, 2)
    assert plot.plot_stage_bars(results["sweep"], ax=a) is fig
    assert plot.plot_specificity(results["excitation"], ax=b) is fig and len(fig.axes) == 2
    sub = plt.figure()
    assert plot.plot_excitation_by_class(results["excitation"], fig=sub) is sub


def test_the_overlap_check_sees_overlapping_text():
    """The layout check can fail: two labels drawn on top of each other are caught."""
    fig, ax = plt.subplots()
    ax.set_xticks([0, 0.01], ["a long tick label", "another long label"])
    assert overlapping_texts(fig)
