"""Issue 12: native generated scales, zoom crops from the original pixels, the resolution
control, the paired statistics and the figures that show them."""

from __future__ import annotations

import math
import re

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from PIL import Image

from attnviz.analysis.scale_sweep import ScaleSweep, scale_sweep
from attnviz.data import ShapesDataset
from attnviz.data.preprocess import preprocess_for
from attnviz.data.shapes import ShapeScenes, render_scales, split_strip
from attnviz.data.views import resolution_control, zoom_views
from attnviz.models.tiny import create_tiny
from attnviz.plot.sweep import plot_class_delta, plot_delta_bars, plot_image_views

matplotlib.use("Agg")

CFG = dict(
    input_size=(3, 64, 64),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
    crop_pct=1.0,
)
SCALES = (1.0, 1.5, 2.0)
BILINEAR = Image.Resampling.BILINEAR


def _smooth_image(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """A photograph-like test image: smooth colour blobs plus fine texture."""
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), float)
    yy, xx = np.mgrid[0:h, 0:w]
    texture = 40 * np.sin(xx / 3.0)[..., None] * np.cos(yy / 5.0)[..., None]
    return Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8))


def _tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(CFG["mean"], np.float32)) / np.asarray(CFG["std"], np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_tiny("sk_tiny").eval()


@pytest.fixture(scope="module")
def scenes():
    return ShapeScenes(10, seed=5)


@pytest.fixture(scope="module")
def mixed():
    """12 labelled images: 6 at 64 px (zoom views upsampled: controls), 6 at 256 px (sharp)."""
    rng = np.random.default_rng(3)
    images = [_smooth_image(rng, 64, 64) for _ in range(6)]
    images += [_smooth_image(rng, 256, 256) for _ in range(6)]
    labels = [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    return [(im, lab) for im, lab in zip(images, labels)]


@pytest.fixture(scope="module")
def mixed_result(model, mixed):
    return scale_sweep(model, mixed, preprocess=CFG, per_image=True, batch_size=5, progress=False)


# --------------------------------------------------------------------------- native scenes
def test_native_views_box_scales_and_nothing_is_resampled(scenes):
    lo, hi = scenes.object_range
    for k, rec in enumerate(scenes.records):
        (x0, y0, x1, y1), b15, (u0, v0, u1, v1) = rec.boxes
        assert lo <= rec.size and rec.size * max(scenes.scales) <= hi  # training size range
        # the 2.0x box is twice the 1.0x box (and centred on the same point), within 1 px
        assert abs((u1 - u0) - 2 * (x1 - x0)) <= 1 and abs((v1 - v0) - 2 * (y1 - y0)) <= 1
        cx, cy = rec.centre  # the object is scaled about its centre: each edge moves 2x
        for got, edge, c in ((u0, x0, cx), (v0, y0, cy), (u1, x1, cx), (v1, y1, cy)):
            assert abs(got - (c + 2 * (edge - c))) <= 1
        assert abs((b15[2] - b15[0]) - 1.5 * (x1 - x0)) <= 1
        # the largest view lies inside the frame
        assert u0 > 0 and v0 > 0 and u1 < scenes.size and v1 < scenes.size
        views, masks, _ = scenes.render(k)
        # the box is that of the drawn object (coverage > 0.5), within 1 px
        ys, xs = np.nonzero(masks[2] > 0.5)
        assert abs(xs.min() - u0) <= 1 and abs(xs.max() + 1 - u1) <= 1
        # 1.0x is the training generator's own sample, bit for bit
        ref = ShapesDataset(10**6, size=scenes.size, seed=scenes.seed,
                            scale_range=scenes.source.scale_range).render(rec.index)  # fmt: skip
        np.testing.assert_array_equal(views[0], ref)
        # no view is resampled: where no view has the object, every view has the same pixels
        outside = np.ones(masks[0].shape, dtype=bool)
        outside[max(0, int(v0) - 1) : int(math.ceil(v1)) + 1,
                max(0, int(u0) - 1) : int(math.ceil(u1)) + 1] = False  # fmt: skip
        assert outside.sum() > 0.3 * outside.size
        for v in views[1:]:
            np.testing.assert_array_equal(v[outside], views[0][outside])
        # and a zoom of the 1.0x view would not be: the 2.0x render is no resampled crop
        zoomed = np.asarray(Image.fromarray(views[0]).resize((64, 64), BILINEAR,
                                                              box=(16, 16, 48, 48)))  # fmt: skip
        assert not np.array_equal(zoomed[outside], views[2][outside])


def test_render_scales_keeps_the_dataset_bit_identical():
    ds = ShapesDataset(2, seed=123)
    before = [ds.render(i).copy() for i in range(len(ds))]
    for i in range(len(ds)):
        views, _, _ = render_scales(ds, i, (1.0, 2.0))
        np.testing.assert_array_equal(views[0], before[i])
        np.testing.assert_array_equal(ds.render(i), before[i])


def test_native_sweep_feeds_the_renders_themselves(model, scenes):
    t = preprocess_for(CFG)
    sweep = ScaleSweep(SCALES, native=True)
    strip, label = scenes[3]
    assert label == scenes.records[3].label
    x = sweep.prepare(strip, t)
    expected = torch.stack([_tensor(Image.fromarray(v)) for v in scenes.render(3)[0]])
    torch.testing.assert_close(x, expected, rtol=0, atol=0)
    assert [np.asarray(v).shape for v in split_strip(strip, 3)] == [(64, 64, 3)] * 3
    result = scale_sweep(model, scenes.select([0, 1, 2]), preprocess=CFG, progress=False)
    assert result.views_native and result.view_conditions == ["zoom"] * 3
    assert [r["scale"] for r in result.view_records[:3]] == list(SCALES)
    assert result.view_records[2]["x1"] == scenes.records[0].boxes[2][2]
    with pytest.raises(ValueError, match="rendered at"):
        scale_sweep(model, scenes, scales=(1.0, 3.0), preprocess=CFG, progress=False)


# --------------------------------------------------------------------------- real images
def test_zoom_view_from_4x_original_equals_hand_crop():
    rng = np.random.default_rng(0)
    big = _smooth_image(rng, 256, 256)
    views, geos = zoom_views(big, CFG, SCALES)
    # by hand: the 1.0x view is the whole 256 px image; s x = its central 256 / s pixels
    for s, view, g in zip(SCALES, views, geos):
        half = 128 / s
        box = (128 - half, 128 - half, 128 + half, 128 + half)
        np.testing.assert_allclose(g.box, box, atol=1e-9)
        assert g.upsampling == pytest.approx(64 / (256 / s))  # < 1: sharp, no upsampling
        hand = big.resize((64, 64), BILINEAR, box=box)
        if s == 1.0:
            hand = big.resize((64, 64), BILINEAR)  # torchvision Resize + CenterCrop(64)
        np.testing.assert_array_equal(np.asarray(view), np.asarray(hand))
    # 2.0x: the crop of the original's central 128 px, resized once (interior pixels; at the
    # border PIL's filter may read original pixels just outside the box)
    crop = np.asarray(big.crop((64, 64, 192, 192)).resize((64, 64), BILINEAR), dtype=int)
    inner = np.s_[1:-1, 1:-1]
    assert np.abs(np.asarray(views[2], dtype=int)[inner] - crop[inner]).max() <= 1
    # far sharper than the paper's protocol (crop of the 64 px view, upsampled)
    paper = views[0].crop((16, 16, 48, 48)).resize((64, 64), BILINEAR)
    assert np.abs(np.asarray(paper, dtype=int) - crop).mean() > 3


def test_zoom_box_of_non_square_original_follows_resize_and_centre_crop():
    rng = np.random.default_rng(1)
    img = _smooth_image(rng, 400, 300)
    cfg = dict(CFG, crop_pct=0.875)
    # by hand: shorter side to floor(64 / 0.875) = 73 -> 97 x 73; centre crop 64 at
    # left round(16.5) = 16, top round(4.5) = 4 (torchvision's CenterCrop offsets)
    sx, sy = 400 / 97, 300 / 73
    x0, y0, w, h = 16 * sx, 4 * sy, 64 * sx, 64 * sy
    cx, cy = x0 + w / 2, y0 + h / 2
    views, geos = zoom_views(img, cfg, (1.0, 2.0))
    box = (cx - w / 4, cy - h / 4, cx + w / 4, cy + h / 4)
    np.testing.assert_allclose(geos[1].box, box, atol=1e-9)
    hand = img.resize((64, 64), BILINEAR, box=box)
    np.testing.assert_array_equal(np.asarray(views[1]), np.asarray(hand))
    assert geos[1].upsampling == pytest.approx(max(64 / (w / 2), 64 / (h / 2)))


def test_resolution_control_matches_hand_degraded_view(model):
    rng = np.random.default_rng(2)
    small = _smooth_image(rng, 64, 64)
    t = preprocess_for(CFG)
    sweep = ScaleSweep(SCALES)
    assert sweep.views == [("zoom", 1.0), ("zoom", 1.5), ("zoom", 2.0),
                           ("resolution_control", 1.5), ("resolution_control", 2.0)]  # fmt: skip
    x = sweep.prepare(small, t)
    assert x.shape == (5, 3, 64, 64)
    # by hand: the 1.0x view (the 64 px image) down to round(64 / u) and back up, no zoom
    for row, u in ((3, 1.5), (4, 2.0)):
        side = round(64 / u)
        hand = small.resize((side, side), BILINEAR).resize((64, 64), BILINEAR)
        torch.testing.assert_close(x[row], _tensor(hand), rtol=0, atol=1e-6)
        assert resolution_control(small, u, t).tobytes() == hand.tobytes()
    assert resolution_control(small, 0.5, t) is small  # a sharp zoom view needs no control
    # the zoom rows are the zoom views
    torch.testing.assert_close(x[2], _tensor(small.resize((64, 64), BILINEAR,
                                                          box=(16, 16, 48, 48))))  # fmt: skip


def test_controls_count_only_upsampled_views_and_records_hold_the_factors(mixed_result):
    r = mixed_result
    assert r.view_count.tolist() == [12, 12, 12, 6, 6]  # controls: the six 64 px images
    np.testing.assert_allclose(r.image_upsampling[:6], [[1.0, 1.5, 2.0]] * 6)
    np.testing.assert_allclose(r.image_upsampling[6:], [[0.25, 0.375, 0.5]] * 6)
    assert {(row["image"], row["scale"]): row["upsampling"] for row in r.view_records}[
        ("#1", 2.0)
    ] == pytest.approx(2.0)
    frame = r.to_frame()
    assert set(frame.condition) == {"zoom", "resolution_control"}
    ctrl = frame[(frame.condition == "resolution_control") & (frame["class"] == "all")]
    assert sorted(ctrl.scale.unique()) == [1.5, 2.0] and (ctrl.n_images == 6).all()
    assert "resolution control" in r.summary() and "share" in r.summary()


# --------------------------------------------------------------------------- paired statistics
def _hand(values: np.ndarray) -> tuple[float, float, float]:
    m = values.mean()
    se = values.std(ddof=1) / np.sqrt(len(values))
    return m, se, m / se


def test_paired_statistics_equal_numpy_hand_computation(mixed_result, mixed):
    r = mixed_result
    labels = np.asarray([lab for _, lab in mixed])
    frame = r.to_frame()
    for a in r.site_aliases:
        d = r.image_view_d[a]  # (N, V); NaN where a control was not needed
        np.testing.assert_allclose(d[:, :3], r.image_d[a], atol=1e-12)
        for v, (cond, s) in enumerate(r.views()):
            keep = ~np.isnan(d[:, v])
            delta = d[keep, v] - d[keep, 0]
            if s == 1.0:
                assert r.delta_mean[a][v] == pytest.approx(0.0, abs=1e-12)
                continue
            m, se, z = _hand(delta)
            assert r.delta_mean[a][v] == pytest.approx(m, abs=1e-10)
            assert r.delta_se[a][v] == pytest.approx(se, abs=1e-10)
            row = frame[(frame.site == a) & (frame.condition == cond) & (frame.scale == s)
                        & (frame["class"] == "all")].iloc[0]  # fmt: skip
            assert row.delta_D == pytest.approx(m, abs=1e-10)
            assert row.delta_D_se == pytest.approx(se, abs=1e-10)
            assert row.delta_D_z == pytest.approx(z, rel=1e-6)
            assert r.delta(a, s, cond) == pytest.approx((m, se, z), rel=1e-6, abs=1e-10)
            for k in range(3):  # per class
                sel = keep & (labels == k)
                dk = d[sel, v] - d[sel, 0]
                mk, sek, _ = _hand(dk)
                assert r.class_delta_mean[a][v, k] == pytest.approx(mk, abs=1e-10)
                assert r.class_delta_se[a][v, k] == pytest.approx(sek, abs=1e-10)
                crow = frame[(frame.site == a) & (frame.condition == cond) & (frame.scale == s)
                             & (frame["class"] == str(k))].iloc[0]  # fmt: skip
                assert crow.delta_D == pytest.approx(mk, abs=1e-10)
            if cond == "resolution_control":  # zoom minus control on the same images
                zi = r.view_index(s)
                ex = d[keep, zi] - d[keep, v]
                me, see, _ = _hand(ex)
                assert r.excess_mean[a][v] == pytest.approx(me, abs=1e-10)
                assert r.excess_se[a][v] == pytest.approx(see, abs=1e-10)
                zoom_same = (d[keep, zi] - d[keep, 0]).mean()
                assert r.zoom_delta[a][v] == pytest.approx(zoom_same, abs=1e-10)
    # the summary's dD table marks |z| >= 3 and only those, and prints Holm's p over the table
    lines = r.summary().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("site") and "dD @ 1.5x" in ln)
    zs = [r.delta(a, s)[2] for a in r.site_aliases for s in (1.5, 2.0)]
    p = sorted((math.erfc(abs(z) / math.sqrt(2)), i) for i, z in enumerate(zs))
    m, running, expected = len(p), 0.0, [0.0] * len(p)
    for rank, (pi, i) in enumerate(p):  # Holm by hand: running max of (m - rank) p_(rank)
        running = max(running, min(1.0, (m - rank) * pi))
        expected[i] = running
    printed = []
    for ln in lines[start + 2 : start + 2 + len(r.site_aliases)]:
        a = ln.split()[0]
        cells = re.findall(r"\(z [+-][\d.]+, p_holm ([\d.e+-]+)\)( !)?", ln)
        assert [bool(f) for _, f in cells] == [abs(r.delta(a, s)[2]) >= 3 for s in (1.5, 2.0)]
        printed += [float(v) for v, _ in cells]
    assert printed == pytest.approx([float(f"{e:.2g}") for e in expected], rel=1e-9, abs=1e-300)


def test_paired_sums_do_not_depend_on_batches(model, mixed, mixed_result):
    other = scale_sweep(model, mixed, preprocess=CFG, batch_size=12, progress=False)
    for a in other.site_aliases:
        np.testing.assert_allclose(other.delta_mean[a], mixed_result.delta_mean[a], atol=1e-6)
        np.testing.assert_allclose(other.delta_se[a], mixed_result.delta_se[a], atol=1e-6)
        np.testing.assert_allclose(other.excess_se[a], mixed_result.excess_se[a], atol=1e-6)


def test_summary_prints_kernel_and_dilation_of_each_branch(mixed_result):
    text = mixed_result.summary()
    assert "SK_2_1: 3x3 d1 | 3x3 d2" in text
    assert mixed_result.sites[0].kernels == ((3, 1), (3, 2))


def test_result_round_trip_keeps_paired_statistics(tmp_path, mixed_result):
    mixed_result.save(tmp_path / "r")
    back = type(mixed_result).load(tmp_path / "r")
    assert back.views() == mixed_result.views()
    assert back.summary() == mixed_result.summary()
    for a in back.site_aliases:
        np.testing.assert_array_equal(back.class_delta_se[a], mixed_result.class_delta_se[a])
    assert (tmp_path / "r" / "views.csv").is_file()


# --------------------------------------------------------------------------- figures
def test_delta_bars_show_paired_changes_and_controls(mixed_result):
    r = mixed_result
    r.meta["model"] = "my_sk_model"
    fig = plot_delta_bars(r)
    ax = fig.axes[0]
    sites = r.stage_last_sites()
    order = [("zoom", 1.5), ("resolution_control", 1.5), ("zoom", 2.0),
             ("resolution_control", 2.0)]  # fmt: skip
    from matplotlib.container import BarContainer

    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(containers) == len(order)
    for container, (cond, s) in zip(containers, order):
        v = r.view_index(s, cond)
        heights = [p.get_height() for p in container.patches]
        np.testing.assert_allclose(heights, [r.delta_mean[a][v] for a in sites], atol=1e-12)
        segs = container.errorbar.lines[2][0].get_segments()
        extents = [abs(seg[1][1] - seg[0][1]) / 2 for seg in segs]
        np.testing.assert_allclose(extents, [r.delta_se[a][v] for a in sites], atol=1e-12)
        assert (container.patches[0].get_hatch() == "//") == (cond != "zoom")
    title = ax.get_title()
    assert "my_sk_model" in title and "12 images" in title and "paired s.e." in title


def test_fig4_lines_are_class_means_with_paired_errors(mixed_result):
    r = mixed_result
    r.meta["model"] = "my_sk_model"
    fig = plot_class_delta(r)
    sites = r.stage_last_sites()
    assert len(fig.axes) == len(sites)
    for ax, a in zip(fig.axes, sites):
        assert ax.get_title(loc="left").splitlines()[0] == a  # then the controls' shares
        lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 3]
        ys = [np.asarray(ln.get_ydata()) for ln in lines]
        for si in range(3):
            assert any(np.allclose(y, r.class_d_mean[a][si]) for y in ys)
        bars = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(bars) == 2  # 1.5x and 2.0x
        for coll, s in zip(bars, (1.5, 2.0)):
            v = r.view_index(s)
            extents = [abs(seg[1][1] - seg[0][1]) / 2 for seg in coll.get_segments()]
            np.testing.assert_allclose(extents, r.class_delta_se[a][v], atol=1e-12)
    title = fig.get_suptitle()
    assert "my_sk_model" in title and "12 images" in title and "paired s.e." in title


def test_fig3_shows_the_views_and_per_channel_differences(mixed_result, mixed):
    r = mixed_result
    r.meta["model"] = "my_sk_model"
    views, _ = zoom_views(mixed[7][0], CFG, SCALES)
    fig = plot_image_views(r, views, 7, sites=["SK_2_2", "SK_3_2"])
    shown = [ax.images[0].get_array() for ax in fig.axes if ax.images]
    assert len(shown) == 3
    for arr, view in zip(shown, views):
        np.testing.assert_array_equal(np.asarray(arr), np.asarray(view))
    line_axes = [ax for ax in fig.axes if not ax.images]
    for ax, a in zip(line_axes, ["SK_2_2", "SK_3_2"]):
        att = r.image_attention[a][7].astype(np.float64)
        lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) > 2]
        assert len(lines) == 3
        for si, ln in enumerate(lines):
            np.testing.assert_allclose(ln.get_ydata(), att[si, -1] - att[si, 0], atol=1e-12)
        assert "3x3 d2" in ax.get_title(loc="left")
    assert "my_sk_model" in fig.get_suptitle() and "12 swept" in fig.get_suptitle()
    with pytest.raises(ValueError, match="one view per scale"):
        plot_image_views(r, views[:2], 0)
