"""Content controls of the native scale sweep and the crop protocol's clipping split (issue 21,
item 3): every control view, share and group statistic checked against a computation that
does not go through the code under test (pixel counts, flood fills, NumPy moments, a forward
per view with capture, boxes compared with the centre crop by hand)."""

from __future__ import annotations

from collections import deque

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.container import BarContainer

import attnviz
from attnviz.analysis.scale_sweep import ScaleSweepResult, scale_sweep
from attnviz.data import ShapesDataset, write_image_folder
from attnviz.data.scene_controls import CONTENT_CONTROLS, render_controls
from attnviz.data.shapes import ShapeScenes, render_scales, split_strip
from attnviz.models import load_model
from attnviz.plot.sweep import plot_class_delta, plot_delta_bars

ALL = tuple(CONTENT_CONTROLS)


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected components of a boolean mask (breadth-first flood fill)."""
    seen = np.zeros_like(mask, dtype=bool)
    h, w = mask.shape
    count = 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        count += 1
        queue = deque([(y0, x0)])
        seen[y0, x0] = True
        while queue:
            y, x = queue.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    queue.append((yy, xx))
    return count


@pytest.fixture(scope="module")
def scenes():
    return ShapeScenes(6, seed=20_000, controls=ALL)


@pytest.fixture(scope="module")
def rendered(scenes):
    """Per scene: (views at 1.0/1.5/2.0x, their masks, the control views, the 1.0x mask of
    the dataset itself)."""
    out = []
    for k in range(len(scenes)):
        i = scenes.indices[k]
        views, masks, _ = render_scales(scenes.source, i, scenes.scales)
        out.append((views, masks, scenes.control_views(k), scenes.source.mask(i)))
    return out


def test_copies_hold_k_objects_with_k_times_the_area(rendered):
    for _views, masks, controls, mask_1 in rendered:
        area_1 = (mask_1 > 0.5).sum()  # pixel count of the dataset's own 1.0x object
        for name, k in (("copies", 4), ("copies_perimeter", 2)):
            c = controls[ALL.index(name)]
            assert c.info["objects"] == k
            assert _components(c.mask > 0.5) == k
            np.testing.assert_allclose((c.mask > 0.5).sum(), k * area_1, rtol=0.12)
        # 4 copies have about the area of the 2.0x object, 2 copies about half of it
        big = (masks[-1] > 0.5).sum()
        np.testing.assert_allclose((controls[0].mask > 0.5).sum(), big, rtol=0.15)


def test_constant_area_keeps_the_area_and_takes_the_large_outline(rendered, scenes):
    for k, (_views, _masks, controls, mask_1) in enumerate(rendered):
        c = controls[ALL.index("constant_area")]
        np.testing.assert_allclose(c.mask.sum(), mask_1.sum(), rtol=0.04)
        assert 0.0 < c.info["hollow"] < 1.0
        ys, xs = np.nonzero(c.mask > 0.5)
        x0, y0, x1, y1 = scenes.record(k).boxes[-1]  # the 2.0x object's box
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5


def test_pixels_no_object_covers_equal_the_native_views(rendered):
    for views, masks, controls, _ in rendered:
        for name in ("copies", "copies_perimeter", "constant_area"):
            c = controls[ALL.index(name)]
            free = (masks[0] == 0) & (c.mask == 0)
            np.testing.assert_array_equal(c.image[free], views[0][free])


def test_contrast_matched_view_has_the_large_views_moments_and_the_small_object(rendered):
    for views, masks, controls, _ in rendered:
        c = controls[ALL.index("contrast_matched")]
        target = views[-1].astype(np.float64)
        got = c.image.astype(np.float64)
        assert abs(got.mean() - target.mean()) < 0.5
        assert abs(got.std() - target.std()) < 0.01 * target.std() + 0.5
        np.testing.assert_array_equal(c.mask, masks[0])  # no size change
        # an increasing map of the 1.0x values: sorted by them, the result never falls
        order = np.argsort(views[0].astype(np.float64).ravel(), kind="stable")
        assert (np.diff(got.ravel()[order]) >= 0).all()


def test_background_swap_keeps_the_object_and_changes_the_background(rendered):
    for views, masks, controls, _ in rendered:
        c = controls[ALL.index("background_swap")]
        np.testing.assert_array_equal(c.mask, masks[0])
        outside = masks[0] == 0
        diff = np.abs(c.image.astype(float) - views[0].astype(float))[outside].mean()
        assert diff > 5.0


def test_strip_holds_scales_then_controls_and_bad_names_are_refused(scenes, rendered):
    strip, label = scenes[1]
    parts = split_strip(strip, len(scenes.scales) + len(ALL))
    views, _, controls, _ = rendered[1]
    for got, want in zip(parts, [*views, *(c.image for c in controls)]):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert label == scenes.record(1).label
    with pytest.raises(ValueError, match="content controls must be distinct names"):
        ShapeScenes(2, controls=("copies", "bigger"))
    with pytest.raises(ValueError, match="unknown content control"):
        render_controls(scenes.source, 0, ["nope"], 2.0)


# --------------------------------------------------------------------------- the sweep
@pytest.fixture(scope="module")
def model():
    return load_model("sk_tiny")


@pytest.fixture(scope="module")
def swept(model, scenes):
    m, config = model
    return scale_sweep(m, scenes, preprocess=config, per_image=True, progress=False)


def test_control_views_give_the_d_of_a_forward_by_hand(model, scenes, swept):
    m, config = model
    transform = attnviz.data.preprocess_for(config)
    sites = [s for s in attnviz.find_sites(m) if s.kind == "sk"]
    assert swept.control_views() == [(c, 2.0) for c in ALL]
    for k in (0, 3):
        for c, view in zip(ALL, scenes.control_views(k)):
            from PIL import Image

            x = transform.tensor(Image.fromarray(view.image))[None]
            with attnviz.capture(m, kinds="sk") as cache, torch.no_grad():
                m(x)
            v = swept.view_index(2.0, c)
            for s in sites:
                att = cache[s.name][0].double()
                d = float(att[-1].mean() - att[0].mean())
                assert swept.image_view_d[s.alias][k, v] == pytest.approx(d, abs=1e-6)


def test_control_table_shares_and_excess_follow_from_per_image_d(swept):
    table = swept.control_table()
    ref = swept.view_index(1.0)
    zoom = swept.view_index(2.0)
    for r in table.itertuples():
        d = swept.image_view_d[r.site]
        v = swept.view_index(r.scale, r.condition)
        dd = d[:, v] - d[:, ref]
        zd = d[:, zoom] - d[:, ref]
        assert r.control_dD == pytest.approx(dd.mean(), abs=1e-10)
        assert r.control_se == pytest.approx(dd.std(ddof=1) / np.sqrt(len(dd)), abs=1e-10)
        assert r.zoom_dD == pytest.approx(zd.mean(), abs=1e-10)
        z = zd.mean() / (zd.std(ddof=1) / np.sqrt(len(zd)))
        if abs(z) >= 3:
            assert r.share == pytest.approx(dd.mean() / zd.mean(), rel=1e-9)
        else:
            assert np.isnan(r.share)
        ex = d[:, zoom] - d[:, v]
        assert r.zoom_minus_control == pytest.approx(ex.mean(), abs=1e-10)
    text = swept.summary()
    for c in ALL:
        assert f"content control {c!r}" in text
    assert "4 copies of the 1.0x object" in text and "2 copies" in text


def test_result_with_controls_survives_save_and_load(tmp_path, swept):
    back = ScaleSweepResult.load(swept.save(tmp_path / "r"))
    assert back.summary() == swept.summary()
    assert (tmp_path / "r" / "controls.csv").exists()
    assert back.view_conditions == swept.view_conditions


def test_figures_draw_every_control_and_say_its_share(swept):
    swept.meta["model"] = "sk_tiny"
    fig = plot_delta_bars(swept)
    containers = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    order = [("zoom", 1.5), ("zoom", 2.0), *[(c, 2.0) for c in ALL]]
    assert len(containers) == len(order)
    sites = swept.stage_last_sites()
    for cont, (cond, s) in zip(containers, order):
        v = swept.view_index(s, cond)
        heights = [p.get_height() for p in cont.patches]
        np.testing.assert_allclose(heights, [swept.delta_mean[a][v] for a in sites], atol=1e-12)
    assert "object scale" not in fig.axes[0].get_title()  # no causal wording
    plt.close(fig)
    fig = plot_class_delta(swept)
    table = swept.control_table()
    for ax, a in zip(fig.axes, sites):
        title = ax.get_title(loc="left").replace("\n", " ")
        for r in table[table["site"] == a].itertuples():
            share = f"{r.share:.0%}" if np.isfinite(r.share) else "n.s."
            assert f"{r.condition.replace('_', ' ')} {share}" in title
    plt.close(fig)


# --------------------------------------------------------------------------- crop protocol
@pytest.fixture(scope="module")
def crop_folder(tmp_path_factory):
    ds = ShapesDataset(1, seed=20_000)
    return ds, write_image_folder(ds, tmp_path_factory.mktemp("crop") / "images")


def test_clipping_flags_match_the_centre_crop_by_hand(model, crop_folder):
    m, config = model
    ds, folder = crop_folder
    res = scale_sweep(m, ds, preprocess=config, per_image=True, progress=False)
    n = ds.size
    for i, rec in enumerate(ds.records):
        x0, y0, x1, y1 = rec.box
        for j, s in enumerate(res.scales):
            half = n / (2 * s)  # the s-times crop: the central n/s of the 64 px view
            lo, hi = n / 2 - half, n / 2 + half
            clipped = x0 < lo or y0 < lo or x1 > hi or y1 > hi
            assert res.image_clipped[i, j] == float(clipped)
    # inside / clipped statistics: the per-image dD of each group
    ref, zoom = res.view_index(1.0), res.view_index(2.0)
    flag = res.image_clipped[:, res.scale_index(2.0)]
    assert res.group_count[:, zoom].tolist() == [int((flag == 0).sum()), int((flag == 1).sum())]
    for a in res.site_aliases:
        dd = res.image_view_d[a][:, zoom] - res.image_view_d[a][:, ref]
        for g, sel in enumerate((flag == 0, flag == 1)):
            assert res.group_delta_mean[a][g, zoom] == pytest.approx(dd[sel].mean(), abs=1e-10)
        ctrl = res.view_index(2.0, "resolution_control")
        ex = res.image_view_d[a][:, zoom] - res.image_view_d[a][:, ctrl]
        assert res.group_excess_mean[a][1, ctrl] == pytest.approx(ex[flag == 1].mean(), abs=1e-10)
    assert "crop protocol split by the object box" in res.summary()
    # the same flags from the folder's records.csv (ids = relative paths)
    from_folder = scale_sweep(m, folder, preprocess=config, per_image=True, progress=False)
    by_id = dict(zip(from_folder.image_ids, from_folder.image_clipped.tolist()))
    rows = {f"{r.class_name}/{r.index:06d}.png": i for i, r in enumerate(ds.records)}
    for ident, flags in by_id.items():
        np.testing.assert_array_equal(flags, res.image_clipped[rows[ident]])
    # without boxes there is no split
    none = scale_sweep(m, ds, preprocess=config, boxes=None, progress=False)
    assert none.group_table().empty and "crop protocol split" not in none.summary()


def test_cli_adds_the_named_content_controls(tmp_path, capsys):
    from attnviz.cli import main

    base = ["sweep", "--model", "sk_tiny", "--no-progress", "--no-figures", "--batch-size", "3"]
    out = tmp_path / "scenes"
    code = main(base + ["--shapes", "3", "--content-controls", "copies", "contrast_matched",
                        "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    res = ScaleSweepResult.load(out / "result")
    assert res.view_conditions == ["zoom"] * 3 + ["copies", "contrast_matched"]
    assert res.meta["scenes"]["controls"] == ["copies", "contrast_matched"]
    assert "content control 'copies'" in (out / "summary.txt").read_text()
    capsys.readouterr()
    for extra in (["--shapes", "2", "--content-controls", "bigger"],
                  ["--images", str(tmp_path), "--content-controls"]):  # fmt: skip
        assert main(base + extra + ["--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "content-control" in err.replace(" ", "-"), err


def test_bad_boxes_get_a_one_line_error(model):
    m, config = model
    with pytest.raises(ValueError, match=r"the box of 0 must be \(x0, y0, x1, y1\)"):
        scale_sweep(m, ShapesDataset(1), preprocess=config, boxes={0: (5, 5, 2)}, progress=False)


def test_contrast_matching_that_clipping_makes_diverge_keeps_its_nearest_step():
    """A dark view matched to a bright, low-contrast one: under clipping the refinement
    oscillates and its last step was all 255 (mean 255 for a target of 231.85). The result is
    now no farther from the target than the first step, computed here by hand."""
    from attnviz.data.scene_controls import _contrast_matched

    view_1 = np.zeros((6, 9, 3), np.uint8)
    view_1[0, 0] = 255
    view_1[1, :4] = 40
    view_s = np.full((6, 9, 3), 230, np.uint8)
    view_s[2:, 5:] = 250
    view_s[0, :2] = 120
    a, b = view_1.astype(float), view_s.astype(float)
    first = np.clip(np.rint((a - a.mean()) / a.std() * b.std() + b.mean()), 0, 255)

    def error(v):
        return abs(v.mean() - b.mean()) + abs(v.std() - b.std())

    out = _contrast_matched(view_1, view_s).astype(float)
    assert out.std() > 0 and out.max() == 255 and out.min() < 255
    assert error(out) <= error(first) + 1e-9
    assert error(out) < 19.0  # the last step's error was |255 - 231.85| + 23.73 = 46.9
