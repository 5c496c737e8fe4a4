"""Every per-query path on a non-square grid and input (12x20 query grid, 24x40 image).

A y/x swap anywhere (the pixel -> cell rule, ``cell_centre``, unpacking the key grid, the
inspector's click) gives a different cell or a different map shape here, which a square grid
hides. References are written from the definitions, not with the library's helpers: the cell
of a point is found by scanning the cells' pixel spans, and the attention is rebuilt from the
Non-local block's own weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import attnviz
from attnviz.analysis.query_independence import query_independence
from attnviz.analysis.query_maps import cell_centre, pixel_to_cell, query_maps
from attnviz.blocks import NonLocalBlock

GRID = (12, 20)  # query grid of a 23x40 input after the stride-2 stem (ceil(23 / 2) = 12)
SIZE = (23, 40)  # 23 / 12 pixels per cell down, 40 / 20 = 2 across: a y/x swap changes cells


def _span_cell(p: float, cells: int, pixels: int) -> int:
    """The cell r whose span [r * P / g - 0.5, (r + 1) * P / g - 0.5) holds p (by scanning)."""
    for r in range(cells):
        if r * pixels / cells - 0.5 <= p < (r + 1) * pixels / cells - 0.5:
            return r
    raise AssertionError(f"{p} lies in no cell")


def _hand_cell(point, grid, size):
    return _span_cell(point[0], grid[0], size[0]), _span_cell(point[1], grid[1], size[1])


def _span_centre(cell, grid, size):
    """Midpoint of the cell's span on each axis."""
    return tuple(
        ((c * s / g - 0.5) + ((c + 1) * s / g - 0.5)) / 2 for c, g, s in zip(cell, grid, size)
    )


def _model(sub_sample: bool = True) -> nn.Module:
    torch.manual_seed(3)
    block = NonLocalBlock(8, mode="embedded_gaussian", sub_sample=sub_sample)
    for conv in (block.theta, block.phi):
        nn.init.normal_(conv.weight, 0.0, 0.7)  # peaked rows: maps differ clearly per query
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), block).eval()


def _hand_attention(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """softmax_j(theta_i . phi_j) (Wang et al. Eq. 2) from the block's weights: (N, kh, kw)."""
    stem, block = model[0], model[1]
    with torch.no_grad():
        f = F.conv2d(x[None].double(), stem.weight.double(), stem.bias.double(), 2, 1)
        th = F.conv2d(f, block.theta.weight.double(), block.theta.bias.double())[0]
        ph = F.conv2d(f, block.phi.weight.double(), block.phi.bias.double())
        ph = F.max_pool2d(ph, 2)[0] if block.sub_sample else ph[0]
    th, ph = th.numpy(), ph.numpy()
    c, h, w = th.shape
    kh, kw = ph.shape[1:]
    out = np.zeros((h * w, kh, kw))
    for i in range(h):
        for j in range(w):
            logits = np.einsum("c,cyx->yx", th[:, i, j], ph)
            e = np.exp(logits - logits.max())
            out[i * w + j] = e / e.sum()
    return out


# -- the rule --------------------------------------------------------------------------------
def test_pixel_to_cell_and_cell_centre_on_a_non_square_grid():
    points = [(-0.5, -0.5), (0.49, 39.49), (9.6, 9.6), (11.5, 1.49), (22.49, 20.0), (3.2, 38.7)]
    points += [(y, x) for y in np.linspace(-0.5, 22.49, 17) for x in np.linspace(-0.5, 39.49, 23)]
    for p in points:
        assert pixel_to_cell(p, GRID, SIZE) == _hand_cell(p, GRID, SIZE), p
    # x = 9.6 on 40 pixels / 20 cells: the span of cell 5 is [9.5, 11.5)
    assert pixel_to_cell((0.0, 9.6), GRID, SIZE) == (0, 5)
    # y = 9.6 on 23 pixels / 12 cells: the span of cell 5 is [9.08, 11.0)
    assert pixel_to_cell((9.6, 0.0), GRID, SIZE) == (5, 0)
    assert pixel_to_cell((8.9, 0.0), GRID, SIZE) == (4, 0)
    for cy in range(GRID[0]):
        for cx in range(GRID[1]):
            yc, xc = cell_centre((cy, cx), GRID, SIZE)
            assert (yc, xc) == pytest.approx(_span_centre((cy, cx), GRID, SIZE))
            assert pixel_to_cell((yc, xc), GRID, SIZE) == (cy, cx)
    # a grid that does not divide the image, both axes different
    for p in [(0.0, 0.0), (6.9, 30.2), (14.4, 44.4), (10.1, 3.3)]:
        assert pixel_to_cell(p, (4, 7), (15, 45)) == _hand_cell(p, (4, 7), (15, 45)), p
    message = r"outside the 23x40 image \(y in \[-0.5, 22.5\), x in \[-0.5, 39.5\)\)"
    for bad in [(22.5, 0.0), (0.0, 39.5), (-0.6, 0.0), (0.0, -0.6)]:
        with pytest.raises(ValueError, match=message):
            pixel_to_cell(bad, GRID, SIZE)


# -- query_maps ------------------------------------------------------------------------------
def test_query_maps_pixel_queries_on_a_non_square_input():
    model = _model()
    x = torch.randn(3, *SIZE)
    ref = _hand_attention(model, x)  # (240, 6, 10)
    pixels = [(1.2, 37.9), (20.3, 2.4), (8.9, 9.6), (22.0, 39.0)]
    res = query_maps(model, x, queries=pixels, query_space="pixel")
    cells = [_hand_cell(p, GRID, SIZE) for p in pixels]
    assert [tuple(c) for c in res.query_cells.tolist()] == cells
    assert cells[2] == (4, 5)  # 8.9 on 23 px / 12 cells: row 4; 9.6 on 40 px / 20: column 5
    assert res.grid_maps.shape == (4, 6, 10)
    for q, (cy, cx) in enumerate(cells):
        np.testing.assert_allclose(res.grid_maps[q], ref[cy * GRID[1] + cx], atol=1e-5)
    np.testing.assert_allclose(res.query_pixels, pixels)
    assert res.maps.shape == (4, *SIZE) and res.image.shape == (*SIZE, 3)


def test_query_maps_cell_queries_on_a_non_square_input():
    model = _model()
    x = torch.randn(3, *SIZE)
    ref = _hand_attention(model, x)
    cells = [(0, 19), (11, 0), (3, 17)]
    res = query_maps(model, x, queries=cells, query_space="cell")
    assert [tuple(c) for c in res.query_cells.tolist()] == cells
    np.testing.assert_allclose(res.query_pixels, [_span_centre(c, GRID, SIZE) for c in cells])
    for q, (cy, cx) in enumerate(cells):
        np.testing.assert_allclose(res.grid_maps[q], ref[cy * GRID[1] + cx], atol=1e-5)
    # callable queries get the (height, width) grid
    seen = []
    res2 = query_maps(
        model, x, queries=lambda g: seen.append(tuple(g)) or [(g[0] - 1, 0)], query_space="cell"
    )
    assert seen == [GRID] and res2.query_cells.tolist() == [[11, 0]]


def test_query_maps_without_subsampling_keeps_the_key_grid_orientation():
    model = _model(sub_sample=False)
    x = torch.randn(3, *SIZE)
    ref = _hand_attention(model, x)  # (240, 12, 20)
    res = query_maps(model, x, queries=[(2, 15)], query_space="cell")
    assert res.grid_maps.shape == (1, *GRID)
    np.testing.assert_allclose(res.grid_maps[0], ref[2 * 20 + 15], atol=1e-5)


# -- query_independence maps -----------------------------------------------------------------
def test_query_independence_maps_on_a_non_square_input():
    model = _model()
    x = torch.randn(2, 3, *SIZE)
    res = query_independence(model, x, map_images=2, n_queries=4, progress=False)
    assert res.map_site["query_grid"] == list(GRID)
    site = res.sites[0]
    assert site["query_grid"] == list(GRID) and site["key_grid"] == [6, 10]
    cells = [tuple(c) for c in res.map_cells.tolist()]
    # grid_queries spreads 2x2 points over the 12x20 grid: rows round(11/3), round(22/3)...
    assert cells == [(4, 6), (4, 13), (7, 6), (7, 13)]
    for i in range(2):
        ref = _hand_attention(model, x[i])
        for q, (cy, cx) in enumerate(cells):
            np.testing.assert_allclose(res.map_grid_maps[i, q], ref[cy * GRID[1] + cx], atol=1e-5)
    (qm, _) = res.query_maps()
    np.testing.assert_allclose(qm.query_pixels, [_span_centre(c, GRID, SIZE) for c in cells])


# -- the inspector: one rule for clicks and pixel queries --------------------------------------
def test_inspector_click_uses_the_analysis_rule_on_a_non_square_grid():
    pytest.importorskip("ipywidgets")
    from attnviz.widgets import QueryInspector

    model = _model()
    x = torch.randn(3, *SIZE)
    insp = QueryInspector(model, x)
    assert insp.query_grid == GRID and tuple(insp.size) == SIZE
    ref = _hand_attention(model, x)
    clicks = [(9.6, 9.6), (8.9, 9.6), (1.2, 37.9), (20.3, 2.4), (0.0, 9.6), (22.3, 39.4)]
    for ydata, xdata in clicks:
        insp.on_click(SimpleNamespace(inaxes=insp._ax_map, xdata=xdata, ydata=ydata))
        cell = _hand_cell((ydata, xdata), GRID, SIZE)
        assert insp.state.cell == cell, (ydata, xdata)
        res = query_maps(model, x, queries=[(ydata, xdata)], query_space="pixel")
        assert tuple(res.query_cells[0]) == cell
        np.testing.assert_allclose(insp.state.grid_map, ref[cell[0] * 20 + cell[1]], atol=1e-5)
    insp.update(11, 19)
    assert insp.state.cell == (11, 19)
    with pytest.raises(ValueError, match="outside"):
        insp.update(12, 0)
    insp.update(0, 19)  # x up to 19 on the 20-wide grid, y only up to 11
    assert insp.state.grid_map.shape == (6, 10)


def test_capture_queries_pick_rows_on_a_non_square_grid():
    model = _model()
    x = torch.randn(3, *SIZE)
    with attnviz.capture(model, queries=[(11, 3), (0, 19)]) as cache, torch.no_grad():
        model(x[None])
    att = next(iter(cache.values()))[0].numpy()
    ref = _hand_attention(model, x).reshape(240, -1)
    np.testing.assert_allclose(att, ref[[11 * 20 + 3, 19]], atol=1e-5)
    with pytest.raises(ValueError, match="outside the 12x20 query grid"):
        with attnviz.capture(model, queries=[(12, 0)]), torch.no_grad():
            model(x[None])
