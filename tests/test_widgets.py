"""QueryInspector: the update callback against the full attention, and the static fallback."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import attnviz
from attnviz.plot.overlay import overlay, upsample
from attnviz.widgets import QueryInspector


def _nl_model() -> nn.Module:
    from timm.layers import NonLocalAttn

    nl = NonLocalAttn(8, rd_channels=4)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nl).eval()


def _full(model, x):
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x[None])
    return next(iter(cache.values()))[0].double().numpy()


def test_update_callback_matches_the_attention_rows():
    pytest.importorskip("ipywidgets")
    model = _nl_model()
    x = torch.randn(3, 16, 16)
    full = _full(model, x)  # (64, 64), 8x8 grids
    insp = QueryInspector(model, x, top_k=3)
    assert insp.widget is not None and insp.query_grid == (8, 8)
    st = insp.update(2, 5)
    row = full[2 * 8 + 5]
    np.testing.assert_allclose(st.grid_map.reshape(-1), row, atol=1e-7)
    order = np.argsort(-row)[:3]
    assert [k for k, _ in st.top_keys] == [(int(k // 8), int(k % 8)) for k in order]
    assert [v for _, v in st.top_keys] == pytest.approx(row[order].tolist())
    mean = full.mean(axis=0)
    cos = row @ mean / (np.linalg.norm(row) * np.linalg.norm(mean))
    assert st.cos_to_mean == pytest.approx((1 - cos) / 2, abs=1e-9)
    m = (row + mean) / 2
    kl = lambda p, q: float(np.sum(p * np.log(p / q)))  # noqa: E731
    assert st.jsd_to_mean == pytest.approx(0.5 * kl(row, m) + 0.5 * kl(mean, m), abs=1e-9)
    # the redrawn panel is the overlay of this map, with the query marked at the cell centre
    ax = insp._ax_map
    np.testing.assert_array_equal(
        np.asarray(ax.images[0].get_array()),
        overlay(insp.image, upsample(row.reshape(8, 8), (16, 16))),
    )
    assert (ax.lines[0].get_ydata()[0], ax.lines[0].get_xdata()[0]) == (4.5, 10.5)
    assert "(2, 5)" in insp.info.value and f"{st.cos_to_mean:.4f}" in insp.info.value


def test_sliders_and_clicks_choose_the_query():
    pytest.importorskip("ipywidgets")
    model = _nl_model()
    insp = QueryInspector(model, torch.randn(3, 16, 16))
    insp.slider_y.value = 7
    assert insp.state.cell == (7, 4)
    insp.slider_x.value = 0
    assert insp.state.cell == (7, 0)
    # a click at pixel (y=3.2, x=12.9) lies in cell (1, 6) of the 8x8 grid over 16x16 pixels
    insp.on_click(SimpleNamespace(inaxes=insp._ax_map, xdata=12.9, ydata=3.2))
    assert insp.state.cell == (1, 6)
    assert (insp.slider_y.value, insp.slider_x.value) == (1, 6)
    insp.on_click(SimpleNamespace(inaxes=insp._ax_mean, xdata=0.0, ydata=0.0))  # other panel
    assert insp.state.cell == (1, 6)
    with pytest.raises(ValueError, match="outside"):
        insp.update(8, 0)


def test_non_distribution_rows_have_no_jsd():
    pytest.importorskip("ipywidgets")
    from attnviz.blocks import NonLocalBlock

    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), NonLocalBlock(4, mode="dot_product")
    )
    assert attnviz.find_sites(model), "NonLocalBlock must be a capture site"
    insp = QueryInspector(model.eval(), torch.randn(3, 8, 8))
    assert not insp.is_distribution and math.isnan(insp.state.jsd_to_mean)
    assert "n/a" in insp.info.value


def test_without_ipywidgets_falls_back_to_a_static_grid(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    model = _nl_model()
    x = torch.randn(3, 16, 16)
    full = _full(model, x)
    insp = QueryInspector(model, x)
    assert insp.widget is None
    res = insp.static_result
    assert len(insp.figure.axes) == res.n_queries == 4
    for ax, (cy, cx), m in zip(insp.figure.axes, res.query_cells, res.maps):
        np.testing.assert_allclose(
            upsample(full[cy * 8 + cx].reshape(8, 8), (16, 16)), m, atol=1e-6
        )
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), overlay(insp.image, m))
    assert insp.update(3, 3).cell == (3, 3)  # the callback still works
