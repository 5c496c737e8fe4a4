"""Tests for the survivors of the third held-out round of the sampled mutation run (TESTING.md,
"Whole package by sampling"): each pins a behaviour no test read (an option a figure ignored, a
clamp at the last column, a validation joined by ``or``, a fallback on a constant image)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from test_plot_digest import _query
from torch import nn

from attnviz.capture.core import unread_message
from attnviz.data import ShapesDataset
from attnviz.data.scene_controls import _contrast_matched, render_controls
from attnviz.models import create_tiny
from attnviz.plot.overlay import normalise
from attnviz.plot.queries import plot_query_heads
from attnviz.viewer import viewer_maps
from attnviz.widgets import QueryInspector


def test_normalise_uses_the_limits_it_is_given():
    h = np.array([[0.0, 1.0], [2.0, 4.0]])
    np.testing.assert_allclose(normalise(h, vmax=2.0), [[0, 0.5], [1, 1]])
    np.testing.assert_allclose(normalise(h, vmin=1.0), [[0, 0], [1 / 3, 1]])
    np.testing.assert_allclose(normalise(h), h / 4)


def test_query_heads_draw_in_the_colormap_asked_for():
    fig = plot_query_heads(_query(dist=False), colormap="magma")
    try:
        cmaps = {im.get_cmap().name for ax in fig.axes for im in ax.get_images()}
        assert "magma" in cmaps and "viridis" not in cmaps
    finally:
        plt.close(fig)


def test_inspector_click_on_the_last_column_and_row_picks_the_last_cell():
    from timm.layers import NonLocalAttn

    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), NonLocalAttn(8, rd_channels=4)).eval()
    insp = QueryInspector(model, torch.randn(3, 6, 10))  # one query cell per pixel
    h, w = insp.size
    gh, gw = insp.query_grid
    assert (h, w) == (gh, gw) == (6, 10)
    assert insp.click_cell(h - 0.6, w - 0.6) == (gh - 1, gw - 1)
    assert insp.click_cell(h + 5.0, w + 5.0) == (gh - 1, gw - 1)  # clamped, not past the grid
    assert insp.click_cell(-3.0, -3.0) == (0, 0)


class _TwoNonLocal(nn.Module):
    """Two Non-local sites on different grids: 8 x 12, then 4 x 6."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import NonLocalAttn

        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.nl1 = NonLocalAttn(8, rd_channels=4)
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.nl2 = NonLocalAttn(8, rd_channels=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nl2(self.down(self.nl1(self.stem(x))))


def test_viewer_maps_reads_the_site_asked_for():
    torch.manual_seed(0)
    model = _TwoNonLocal().eval()
    image = torch.randn(3, 16, 24)
    second = viewer_maps(model, image, site="nl2")
    assert second.grid_maps.shape[-2:] == (4, 6)
    assert viewer_maps(model, image, site="nl1").grid_maps.shape[-2:] == (8, 12)


def test_unknown_tiny_model_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown tiny model 'nope'; valid names: \['"):
        create_tiny("nope")


def test_unread_message_elides_past_four_names():
    names = [f"m.{i}" for i in range(5)]
    text = unread_message({"HaloAttn": names})
    assert text.startswith("5 HaloAttn modules are not read (no adapter): m.0, m.1, m.2, m.3, ...;")
    assert "m.4" not in text
    assert "m.3;" in unread_message({"HaloAttn": names[:4]})


@pytest.mark.parametrize("scale", [math.inf, math.nan, 0.5])
def test_control_scale_must_be_finite_and_at_least_one(scale):
    with pytest.raises(ValueError, match="finite number >= 1"):
        render_controls(ShapesDataset(1, seed=3), 0, ["copies"], scale)


def test_contrast_matching_a_constant_view_gives_the_target_mean():
    """A constant view has no contrast to match: it becomes the target's mean, even white."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    out = _contrast_matched(np.full((16, 24, 3), 255, np.uint8), target)
    assert out.dtype == np.uint8 and out.shape == target.shape
    assert np.unique(out).size == 1
    assert abs(float(out.mean()) - float(target.mean())) <= 0.5


def test_per_class_count_text_names_one_count_when_classes_are_equal():
    from types import SimpleNamespace

    from attnviz.plot.excitation import _per_class

    result = SimpleNamespace(counts=np.array([3, 3, 2]))
    assert _per_class(result, [0, 1]) == "3 per class"
    assert _per_class(result, [0, 2]) == "2-3 per class"
    assert _per_class(result, []) == ""
