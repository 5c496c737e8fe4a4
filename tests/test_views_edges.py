"""Scale views with geometries other than the square resize + crop: tuple sizes, max_size,
single steps, identity steps, crops that would pad, tiny crops, non-RGB images. Boxes are
worked out by hand; views are made with torchvision directly. Written to kill the mutants that
survived the first mutation run (see TESTING.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from attnviz.data.preprocess import EvalTransform, preprocess_for
from attnviz.data.views import ZoomGeometry, scale_views, view_box, zoom_view


def _transform(geometry, size, interpolation="bilinear"):
    cfg = {"input_size": (3, *size), "interpolation": interpolation}
    return EvalTransform(geometry, T.ToTensor(), cfg)


PADS = "^the centre crop pads the image$"


class _identity:  # the name preprocess_for gives its no-op geometric step
    def __call__(self, image):
        return image


def test_view_box_of_tuple_resize_and_rectangular_crop():
    t = _transform(T.Compose([T.Resize((30, 40)), T.CenterCrop((20, 30)), _identity()]), (20, 30))
    # resize 100x60 (W x H) to 40x30: 2.5 px across, 2 down per pixel; crop offsets (5, 5)
    assert view_box((100, 60), t) == pytest.approx((12.5, 10.0, 87.5, 50.0))


def test_view_box_with_max_size_and_a_single_step():
    t = _transform(T.Compose([T.Resize(30, max_size=45), T.CenterCrop(20)]), (20, 20))
    # 100x60 -> shorter side 30 would make 50 > 45 wide: 45x27; crop offsets round(12.5) = 12,
    # round(3.5) = 4
    sx, sy = 100 / 45, 60 / 27
    assert view_box((100, 60), t) == pytest.approx(
        (12 * sx, 4 * sy, 12 * sx + 20 * sx, 4 * sy + 20 * sy)
    )
    single = _transform(T.Resize((30, 50)), (30, 50))
    assert view_box((100, 60), single) == pytest.approx((0.0, 0.0, 100.0, 60.0))


@pytest.mark.parametrize(
    "geometry, message",
    [
        (T.Compose([T.Resize((30, 40)), T.CenterCrop((35, 20))]), PADS),
        (T.Compose([T.Resize((30, 40)), T.CenterCrop((20, 45))]), PADS),
        (T.Compose([T.Resize(30), T.RandomCrop(20)]), "unknown geometric step RandomCrop"),
        (None, "^the preprocessing has no known geometric view$"),
    ],
)  # fmt: skip
def test_view_box_refuses_what_it_cannot_follow(geometry, message):
    with pytest.raises(ValueError, match=message):
        view_box((100, 60), _transform(geometry, (20, 20)))


def test_zoom_geometry_as_dict():
    g = ZoomGeometry(1.5, (1.0, 2.0, 3.0, 4.0), 2.5)
    assert g.as_dict() == {"scale": 1.5, "box": [1.0, 2.0, 3.0, 4.0], "upsampling": 2.5}


@pytest.mark.parametrize("interpolation", ["nearest", "bicubic"])
def test_zoom_view_of_a_rectangular_view_with_torchvision(interpolation):
    rng = np.random.default_rng(0)
    view = Image.fromarray(rng.integers(0, 256, (12, 20, 3), dtype=np.uint8))
    t = _transform(lambda im: im, (12, 20), interpolation)
    got = zoom_view(view, 1.5, t)
    crop = TF.center_crop(view, [8, 13])  # round(12 / 1.5), round(20 / 1.5)
    want = TF.resize(crop, [12, 20], interpolation=InterpolationMode(interpolation), antialias=True)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    # a crop of less than two pixels keeps one
    tiny = zoom_view(view, 12.0, t)
    one = TF.center_crop(view, [1, 2])
    want = TF.resize(one, [12, 20], interpolation=InterpolationMode(interpolation), antialias=True)
    assert np.array_equal(np.asarray(tiny), np.asarray(want))
    tall = zoom_view(view, 19.0, t)  # round(12 / 19) = 1, round(20 / 19) = 1
    want = TF.resize(
        TF.center_crop(view, [1, 1]), [12, 20], interpolation=InterpolationMode(interpolation),
        antialias=True,
    )  # fmt: skip
    assert np.array_equal(np.asarray(tall), np.asarray(want))
    for bad in (0.5, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite and >= 1.0"):
            zoom_view(view, bad, t)


def test_zoom_view_antialiases_a_downscale():
    rng = np.random.default_rng(1)
    view = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    t = _transform(lambda im: im, (6, 8))
    big = view.resize((40, 30))
    got = zoom_view(big, 1.0, _transform(lambda im: im, (30, 40)))
    assert got is big
    # the view is upsampled here; antialias only matters when shrinking: compare with False
    t2 = _transform(lambda im: im, (3, 4))
    shrunk = zoom_view(big, 1.25, t2)
    crop = TF.center_crop(big, [2, 3])
    want = TF.resize(crop, [3, 4], interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert np.array_equal(np.asarray(shrunk), np.asarray(want))
    del t


def test_scale_views_convert_non_rgb_images():
    rng = np.random.default_rng(2)
    gray = Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8), mode="L")
    cfg = {"input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear"}
    x = scale_views(gray, cfg, (1.0, 2.0))
    ref = scale_views(gray.convert("RGB"), cfg, (1.0, 2.0))
    assert x.shape == (2, 3, 32, 32) and torch.equal(x, ref)
    t = preprocess_for(cfg)
    assert torch.equal(x[0], t(gray.convert("RGB")))


class _Shrink:  # a geometric step view_box does not know: zoom views fall back to crops
    def __call__(self, image):
        return image.resize((32, 32), Image.Resampling.BILINEAR)


def test_zoom_views_fall_back_to_crops_of_the_view_for_unknown_geometry():
    from attnviz.data.views import zoom_views

    rng = np.random.default_rng(3)
    gray = Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8), mode="L")
    t = _transform(T.Compose([_Shrink()]), (32, 32))
    views, geos = zoom_views(gray, t, (1.0, 2.0))
    base = gray.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR)
    crop = TF.center_crop(base, [16, 16])
    want = TF.resize(crop, [32, 32], interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert views[0].mode == "RGB" and np.array_equal(np.asarray(views[0]), np.asarray(base))
    assert np.array_equal(np.asarray(views[1]), np.asarray(want))
    assert [g.scale for g in geos] == [1.0, 2.0] and [g.upsampling for g in geos] == [1.0, 2.0]
    assert all(len(g.box) == 4 and all(np.isnan(g.box)) for g in geos)
    assert all(isinstance(g.scale, float) and isinstance(g.upsampling, float) for g in geos)


def test_zoom_views_of_a_gray_image_are_those_of_its_rgb_version():
    from attnviz.data.views import zoom_views

    rng = np.random.default_rng(4)
    gray = Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8), mode="L")
    cfg = {"input_size": (3, 32, 32), "crop_pct": 1.0, "interpolation": "bilinear"}
    a, ga = zoom_views(gray, cfg, (1.0, 1.5))
    b, gb = zoom_views(gray.convert("RGB"), cfg, (1.0, 1.5))
    assert all(v.mode == "RGB" for v in a) and ga == gb
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))


def test_zoom_geometry_of_a_box_wider_than_the_input_ratio():
    from attnviz.data.views import zoom_geometry

    # 60x100 (W x H) resized to 30x40, cropped to 30 wide x 20 high: the box is 60 x 50 px
    t = _transform(T.Compose([_identity(), T.Resize((40, 30)), T.CenterCrop((20, 30))]), (20, 30))
    assert view_box((60, 100), t) == pytest.approx((0.0, 25.0, 60.0, 75.0))
    g1, g2 = zoom_geometry((60, 100), t, (1.0, 2.0))
    assert g2.box == pytest.approx((15.0, 37.5, 45.0, 62.5))
    assert g1.upsampling == pytest.approx(max(30 / 60, 20 / 50))
    assert g2.upsampling == pytest.approx(max(30 / 30, 20 / 25))  # the width decides
    for bad in (float("inf"), 0.9):
        with pytest.raises(ValueError, match=f"^view scales must be finite and >= 1.0, got {bad}$"):
            zoom_geometry((60, 100), t, (1.0, bad))


def test_resolution_control_of_tiny_views_and_no_upsampling():
    from attnviz.data.views import resolution_control

    rng = np.random.default_rng(5)
    view = Image.fromarray(rng.integers(0, 256, (3, 5, 3), dtype=np.uint8))
    t = _transform(lambda im: im, (3, 5))
    assert resolution_control(view, 1.0, t) is view
    assert resolution_control(view, float("nan"), t) is view
    got = resolution_control(view, 4.0, t)  # round(5 / 4) = 1, round(3 / 4) = 1
    f = Image.Resampling.BILINEAR
    assert np.array_equal(np.asarray(got), np.asarray(view.resize((1, 1), f).resize((5, 3), f)))
    tall = Image.fromarray(rng.integers(0, 256, (8, 3, 3), dtype=np.uint8))
    got = resolution_control(tall, 4.0, _transform(lambda im: im, (8, 3)))  # 1 x 2
    assert np.array_equal(np.asarray(got), np.asarray(tall.resize((1, 2), f).resize((3, 8), f)))
