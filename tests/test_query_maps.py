"""Per-query maps, the opencv overlay, and the query figures (checked by their data)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import attnviz
from attnviz.analysis.query_independence import query_independence
from attnviz.analysis.query_maps import (
    QueryMapsResult,
    cell_centre,
    grid_queries,
    pick_site,
    pixel_to_cell,
    query_maps,
)
from attnviz.plot.overlay import overlay
from attnviz.plot.queries import (
    plot_query_distances,
    plot_query_grid,
    plot_statistics_table,
    statistics_table,
)


def _nl_model() -> nn.Module:
    from timm.layers import NonLocalAttn

    nl = NonLocalAttn(8, rd_channels=4)
    nn.init.normal_(nl.norm.weight, 0.0, 1.0)
    # stride 2: a 16x16 image gives an 8x8 query grid
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nl).eval()


def _full_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with attnviz.capture(model) as cache, torch.no_grad():
        model(x[None])
    return next(iter(cache.values()))[0]


# -- overlay --------------------------------------------------------------------------------------
def test_overlay_hand_computation():
    black = np.zeros((4, 6, 3), np.uint8)
    heat = np.array([[0.0, 1.0], [2.0, 3.0]])
    out = overlay(black, heat, alpha=1.0, colormap="jet")
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    # min-max normalisation: the smallest value is jet(0) = dark blue (RGB 0, 0, 128), the
    # largest jet(255) = dark red (RGB 128, 0, 0); corners keep the corner values of the map
    up = cv2.resize(heat.astype(np.float32), (6, 4), interpolation=cv2.INTER_LINEAR)
    assert up[0, 0] == up.min() and up[-1, -1] == up.max()
    np.testing.assert_array_equal(out[0, 0], [0, 0, 128])
    np.testing.assert_array_equal(out[-1, -1], [128, 0, 0])
    # alpha blends linearly with the image; a constant map is all jet(0)
    white = np.full((2, 2, 3), 255, np.uint8)
    half = overlay(white, np.ones((2, 2)), alpha=0.5, colormap="jet")
    np.testing.assert_array_equal(half[0, 0], [128, 128, 192])  # round(127.5, 127.5, 191.5)
    with pytest.raises(ValueError, match="colormap"):
        overlay(white, np.ones((2, 2)), colormap="nope")


# -- query_maps -----------------------------------------------------------------------------------
def test_query_maps_keep_the_selected_rows_and_upsample():
    model = _nl_model()
    x = torch.randn(3, 16, 16)
    full = _full_attention(model, x)  # (64, 64)
    cells = [(0, 0), (3, 5), (7, 2)]
    res = query_maps(model, x, queries=cells, query_space="cell")
    assert res.grid_maps.shape == (3, 8, 8) and res.maps.shape == (3, 16, 16)
    for q, (cy, cx) in enumerate(cells):
        np.testing.assert_allclose(res.grid_maps[q].reshape(-1), full[cy * 8 + cx], atol=1e-6)
        expected = cv2.resize(res.grid_maps[q], (16, 16), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(res.maps[q], expected, atol=1e-7)
        assert tuple(res.query_pixels[q]) == pytest.approx((2 * cy + 0.5, 2 * cx + 0.5))
    assert res.is_distribution
    assert res.image.shape == (16, 16, 3) and res.image.dtype == np.uint8


def test_pixel_queries_map_to_the_containing_cell():
    model = _nl_model()
    x = torch.randn(3, 16, 16)
    res = query_maps(model, x, queries=[(0, 0), (15, 15), (5, 9.5)], query_space="pixel")
    # pixel centres at integers: 9.5 is the edge between pixels 9 and 10, i.e. cells 4 and 5
    np.testing.assert_array_equal(res.query_cells, [[0, 0], [7, 7], [2, 5]])
    np.testing.assert_array_equal(res.query_pixels, [[0, 0], [15, 15], [5, 9.5]])
    full = _full_attention(model, x)
    np.testing.assert_allclose(res.grid_maps.reshape(3, -1), full[[0, 63, 21]], atol=1e-6)
    forwards = []
    model.register_forward_pre_hook(lambda *a: forwards.append(1))
    query_maps(model, x, queries=[(5, 9.5)], query_space="pixel")
    assert len(forwards) == 1  # the pixel -> cell choice needs no extra forward
    with pytest.raises(ValueError, match="outside"):
        query_maps(model, x, queries=[(16, 0)])
    with pytest.raises(ValueError, match="outside"):
        query_maps(model, x, queries=[(0, 8)], query_space="cell")


def test_gc_site_gives_the_single_context_map():
    from timm.layers import GlobalContext

    gc = GlobalContext(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), gc).eval()
    x = torch.randn(3, 12, 12)
    res = query_maps(model, x, queries=[(1, 1), (2, 2)])
    with torch.no_grad():
        logits = gc.conv_attn(model[0](x[None])).reshape(-1)
    np.testing.assert_allclose(res.grid_maps[0].reshape(-1), torch.softmax(logits, 0), atol=1e-6)
    assert res.n_queries == 1 and len(res.query_pixels) == 0


def test_pil_input_and_save_load(tmp_path):
    from PIL import Image

    model = _nl_model()
    arr = np.random.default_rng(0).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    config = {"input_size": (3, 16, 16), "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5),
              "std": (0.25, 0.25, 0.25)}  # fmt: skip
    res = query_maps(model, img, queries=[(4, 4), (12, 3)], preprocess=config)
    # crop_pct 1: the shorter side already has the input size, so the view is the centre
    # 16x16 crop (never a squashed 16x24), and the model input is that crop normalised
    crop = arr[:, 4:20]
    np.testing.assert_array_equal(res.image, crop)
    x = torch.from_numpy((crop / 255.0 - 0.5) / 0.25).permute(2, 0, 1).float()
    direct = query_maps(model, x, queries=[(4, 4), (12, 3)])
    np.testing.assert_allclose(res.grid_maps, direct.grid_maps, atol=1e-6)
    np.testing.assert_array_equal(res.query_cells, [[2, 2], [6, 1]])
    back = QueryMapsResult.load(res.save(tmp_path / "maps"))
    np.testing.assert_array_equal(back.maps, res.maps)
    np.testing.assert_array_equal(back.query_cells, res.query_cells)
    assert back.site == res.site and back.is_distribution == res.is_distribution
    assert back.meta["query_space"] == "pixel" and back.meta["input_size"] == [16, 16]
    assert len(res.to_frame()) == 2
    assert {p.name for p in (tmp_path / "maps").iterdir()} == {
        "query_maps.npz", "queries.csv", "manifest.json"
    }  # fmt: skip


def test_pixel_to_cell_takes_the_cell_of_the_pixel_centre():
    # 15 pixels over a grid of 8, pixel centres at integers: the image spans [-0.5, 14.5) and
    # cell r spans [r * 15 / 8 - 0.5, (r + 1) * 15 / 8 - 0.5)
    for p in range(15):
        expected = max(r for r in range(8) if r * 15 / 8 - 0.5 <= p)
        assert pixel_to_cell((p, p), (8, 8), (15, 15)) == (expected, expected)
    assert pixel_to_cell((13, 13), (8, 8), (15, 15)) == (7, 7)  # floor(13 * 8 / 15) would be 6
    assert pixel_to_cell((0, 14), (2, 7), (16, 15)) == (0, 6)  # non-square grid and image
    assert pixel_to_cell((15.4, -0.5), (8, 8), (16, 16)) == (7, 0)
    for cy in range(5):  # round trip with cell_centre on a non-square, non-dividing layout
        for cx in range(3):
            centre = cell_centre((cy, cx), (5, 3), (12, 20))
            assert pixel_to_cell(centre, (5, 3), (12, 20)) == (cy, cx)
    for bad in ((-1, 0), (0, 15.5), (15.5, 0)):
        with pytest.raises(ValueError, match="outside"):
            pixel_to_cell(bad, (8, 8), (16, 16))


def test_pick_site_returns_a_site():
    from attnviz.capture import Site
    from attnviz.errors import NoAttentionSitesError

    model = _nl_model()
    site = pick_site(model, None)
    assert isinstance(site, Site) and site.kind == "nl" and site.name == "1"
    assert pick_site(model, site.alias).name == site.name
    assert pick_site(model, "1").alias == site.alias
    with pytest.raises(ValueError, match="nope"):
        pick_site(model, "nope")
    with pytest.raises(NoAttentionSitesError):
        pick_site(nn.Sequential(nn.Conv2d(3, 4, 1)), None)


def test_grid_queries_are_inside_and_distinct():
    cells = grid_queries((8, 8), 4)
    assert len(set(cells)) == 4 and all(0 <= y < 8 and 0 <= x < 8 for y, x in cells)
    assert cell_centre((0, 0), (8, 8), (64, 64)) == (3.5, 3.5)


# -- figures --------------------------------------------------------------------------------------
def test_query_grid_figure_data():
    model = _nl_model()
    xs = [torch.randn(3, 16, 16) for _ in range(2)]
    results = [
        query_maps(model, x, queries=[(1, 2), (6, 6), (3, 7)], query_space="cell") for x in xs
    ]
    fig = plot_query_grid(results, alpha=0.4)
    axes = fig.axes
    assert len(axes) == 2 * 3 + 1  # and one colour bar
    for r, res in enumerate(results):
        for q in range(3):
            ax = axes[r * 3 + q]
            np.testing.assert_allclose(np.asarray(ax.images[1].get_array()), res.maps[q])
            assert ax.images[1].get_alpha() == 0.4
            assert ax.images[1].norm is axes[0].images[1].norm  # one colour scale
            (line,) = ax.lines
            px, py = line.get_xdata()[0], line.get_ydata()[0]
            assert (py, px) == pytest.approx(tuple(res.query_pixels[q]))
            cy, cx = (int(v) for v in res.query_cells[q])
            # the same queries in every row: titled once, above the first row
            assert ax.get_title() == (f"query ({cy}, {cx})" if r == 0 else "")


def test_distance_heatmap_equals_naive_distances():
    model = _nl_model()
    res = query_maps(
        model, torch.randn(3, 16, 16), queries=[(0, 0), (4, 4), (7, 1), (2, 6)], query_space="cell"
    )
    g = res.grid_maps.reshape(4, -1).astype(np.float64)
    naive = np.zeros((4, 4))
    for i in range(4):
        for j in range(4):
            cos = g[i] @ g[j] / (np.linalg.norm(g[i]) * np.linalg.norm(g[j]))
            naive[i, j] = (1 - cos) / 2
    fig = plot_query_distances(res)
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), naive, atol=1e-9)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["(0,0)", "(4,4)", "(7,1)", "(2,6)"]
    jsd = res.pairwise_distances("jsd")
    m = (g[0] + g[1]) / 2
    kl = lambda p, q: float(np.sum(p * np.log(p / q)))  # noqa: E731
    assert jsd[0, 1] == pytest.approx(0.5 * kl(g[0], m) + 0.5 * kl(g[1], m), abs=1e-9)


def test_statistics_table_and_figure():
    model = _nl_model()
    res = query_independence(model, torch.randn(3, 3, 12, 12), progress=False, model_name="toy")
    table = statistics_table(res)
    assert list(table["model"]) == ["toy", "GCNet paper"]
    assert table.loc[0, "cos_input"] == pytest.approx(res.values["cos_input"][:, 0].mean())
    assert table.loc[0, "jsd_att_std"] == pytest.approx(res.values["jsd_att"][:, 0].std())
    assert table.loc[1, "cos_input"] == 0.402 and table.loc[1, "jsd_att"] == 0.011
    two = statistics_table([res, res], paper=False)
    assert len(two) == 2
    fig = plot_statistics_table(res)
    cells = fig.axes[0].tables[0].get_celld()
    assert cells[(0, 3)].get_text().get_text() == "cos input"
    mean, std = res.values["cos_att"][:, 0].mean(), res.values["cos_att"][:, 0].std()
    assert cells[(1, 5)].get_text().get_text() == f"{mean:.3f} ± {std:.3f}"
    assert cells[(2, 6)].get_text().get_text() == "0.011"
    assert not math.isnan(mean)


def test_subsampled_keys_give_maps_on_the_key_grid():
    from attnviz.blocks import NonLocalBlock

    block = NonLocalBlock(6, mode="embedded_gaussian", sub_sample=True)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), block).eval()
    x = torch.randn(3, 16, 16)
    full = _full_attention(model, x)  # (64 queries, 16 keys)
    assert full.shape == (64, 16)
    res = query_maps(model, x, queries=[(1, 6), (7, 7)], query_space="cell")
    assert res.grid_maps.shape == (2, 4, 4) and res.maps.shape == (2, 16, 16)
    np.testing.assert_allclose(res.grid_maps[0].reshape(-1), full[1 * 8 + 6], atol=1e-6)
    np.testing.assert_allclose(res.grid_maps[1].reshape(-1), full[63], atol=1e-6)
