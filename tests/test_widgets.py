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
from attnviz.plot.overlay import upsample
from attnviz.widgets import QueryInspector

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])  # timm's default for a config without mean
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


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
    # the redrawn panel is this map over the image, with the query marked at the cell centre,
    # on the one colour scale of the whole attention (shared with the mean map, one bar)
    ax = insp._ax_map
    np.testing.assert_allclose(
        np.asarray(ax.images[1].get_array()), upsample(row.reshape(8, 8), (16, 16))
    )
    assert ax.images[1].norm is insp._ax_mean.images[1].norm
    assert (ax.images[1].norm.vmin, ax.images[1].norm.vmax) == (full.min(), full.max())
    assert len(insp.figure.axes) == 3  # map, mean map, one colour bar
    assert (ax.lines[0].get_ydata()[0], ax.lines[0].get_xdata()[0]) == (4.5, 10.5)
    assert "(2, 5)" in insp.info.value and f"{st.cos_to_mean:.4f}" in insp.info.value


def test_the_overlay_takes_the_given_opacity_and_colour_map():
    """``alpha`` and ``colormap`` reach both overlays (the query's and the mean map) and the
    colour bar; the defaults are the house style of every other overlay."""
    from matplotlib.collections import QuadMesh

    from attnviz.plot._style import OVERLAY_ALPHA, SEQUENTIAL

    model = _nl_model()
    x = torch.randn(3, 16, 16)
    plain = QueryInspector(model, x)
    styled = QueryInspector(model, x, alpha=0.3, colormap="magma")
    for insp, (alpha, cmap) in ((plain, (OVERLAY_ALPHA, SEQUENTIAL)), (styled, (0.3, "magma"))):
        for ax in (insp._ax_map, insp._ax_mean):
            assert ax.images[1].get_alpha() == alpha
            assert ax.images[1].get_cmap().name == cmap
        bar = insp.figure.axes[-1]  # the one colour bar: its mesh is drawn with the map's cmap
        (mesh,) = [c for c in bar.collections if isinstance(c, QuadMesh)]
        assert bar.get_ylabel() == "attention" and mesh.get_cmap().name == cmap


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


def test_update_from_code_moves_the_sliders():
    """After ``update(3, 6)`` the sliders show (3, 6); moving x then keeps y = 3."""
    pytest.importorskip("ipywidgets")
    insp = QueryInspector(_nl_model(), torch.randn(3, 16, 16))
    insp.update(3, 6)
    assert (insp.slider_y.value, insp.slider_x.value) == (3, 6)
    insp.slider_x.value = 2
    assert insp.state.cell == (3, 2)
    assert "query (3, 2)" in insp._ax_map.get_title()


def test_showing_the_inspector_twice_adds_one_canvas(monkeypatch):
    pytest.importorskip("ipywidgets")
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    insp = QueryInspector(_nl_model(), torch.randn(3, 16, 16))
    insp._interactive = True  # as under ipympl: the canvas goes into the output
    insp._ipython_display_()
    insp._ipython_display_()
    canvases = [o for o in shown if o is insp.figure.canvas]
    assert len(canvases) == 1 and shown.count(insp.widget) == 2


def test_the_inspector_gives_a_kernel_free_viewer():
    model = _nl_model()
    insp = QueryInspector(model, torch.randn(3, 16, 16))
    view = insp.viewer()
    assert view.n_cells == 64 and not view.subsampled
    assert 'class="attnviz-query-viewer"' in view._repr_html_()


def test_a_click_picks_the_cell_query_maps_gives_that_pixel():
    """One pixel -> cell rule: a click and a pixel query of ``query_maps`` agree, also where
    the grid does not divide the image (15 pixels over 8 cells)."""
    pytest.importorskip("ipywidgets")
    from attnviz.analysis.query_maps import query_maps

    model = _nl_model()
    x = torch.randn(3, 15, 15)
    insp = QueryInspector(model, x)
    assert insp.query_grid == (8, 8) and insp.size == (15, 15)
    # imshow draws pixel p over [p - 0.5, p + 0.5), as pixel_to_cell counts: a click and a
    # pixel query at the same point agree; clicks just outside an edge keep the edge cell
    clicks = [(-0.4, 0.3), (2.4, 12.6), (12.5, 7.49), (14.45, 14.2), (-0.6, 15.2)]
    pixels = [(-0.4, 0.3), (2.4, 12.6), (12.5, 7.49), (14.45, 14.2), (-0.5, 14.4)]
    for (ydata, xdata), pixel in zip(clicks, pixels):
        insp.on_click(SimpleNamespace(inaxes=insp._ax_map, xdata=xdata, ydata=ydata))
        res = query_maps(model, x, queries=[pixel], query_space="pixel")
        assert insp.state.cell == tuple(int(v) for v in res.query_cells[0]), pixel
        np.testing.assert_allclose(insp.state.grid_map, res.grid_maps[0], atol=1e-6)
    assert insp.state.cell == (0, 7)
    insp.on_click(SimpleNamespace(inaxes=insp._ax_map, xdata=7.0, ydata=13.0))
    assert insp.state.cell == (7, 4)  # floor(13.5 * 8 / 15) = 7, floor(7.5 * 8 / 15) = 4


def test_pil_image_is_shown_as_the_model_sees_it():
    pytest.importorskip("ipywidgets")
    from PIL import Image

    arr = np.random.default_rng(2).integers(0, 255, (24, 16, 3), dtype=np.uint8)
    config = {"input_size": (3, 16, 16), "crop_pct": 1.0}
    model = _nl_model()
    insp = QueryInspector(model, Image.fromarray(arr), preprocess=config)
    np.testing.assert_array_equal(insp.image, arr[4:20])  # the centre crop, not squashed
    x = torch.from_numpy((arr[4:20] / 255.0 - IMAGENET_MEAN) / IMAGENET_STD)
    np.testing.assert_allclose(insp.attention, _full(model, x.permute(2, 0, 1).float()), atol=1e-6)


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


def test_without_ipywidgets_falls_back_to_a_figure_that_update_redraws(monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import ipywidgets -> ImportError
    model = _nl_model()
    x = torch.randn(3, 16, 16)
    full = _full(model, x)
    insp = QueryInspector(model, x, top_k=2)
    assert insp.widget is None
    st = insp.update(3, 1)
    assert st.cell == (3, 1) and len(st.top_keys) == 2
    ax = insp._ax_map
    np.testing.assert_allclose(
        np.asarray(ax.images[1].get_array()), upsample(full[3 * 8 + 1].reshape(8, 8), (16, 16))
    )
    assert "(3, 1)" in ax.get_title()
    text = " ".join(t.get_text() for t in insp.figure.texts)
    (ky, kx), _ = st.top_keys[1]
    assert "top-2 keys" in text and f"({ky},{kx})" in text
