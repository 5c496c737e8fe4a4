"""The SKNet scale views, checked geometrically on generated images of known object size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from attnviz.data import ShapesDataset
from attnviz.data.preprocess import PreprocessError, preprocess_for
from attnviz.data.views import scale_views, scale_views_pil, zoom_view

CFG64 = dict(
    input_size=(3, 64, 64),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    interpolation="bilinear",
    crop_pct=1.0,
)


def _extent(mask: np.ndarray, thr: float = 0.5) -> tuple[float, float, float, float]:
    """(width, height, centre x, centre y) of the pixels above thr, from coverage sums.

    Width = covered area along each row's maximum, robust to anti-aliasing: use the second
    moments-free measure "number of columns with coverage > thr".
    """
    on = mask > thr
    cols = np.nonzero(on.any(axis=0))[0]
    rows = np.nonzero(on.any(axis=1))[0]
    return (
        float(cols.max() - cols.min() + 1),
        float(rows.max() - rows.min() + 1),
        float(cols.mean()),
        float(rows.mean()),
    )


def _mask_views(mask: np.ndarray, cfg: dict, scales) -> list[np.ndarray]:
    img = Image.fromarray((mask * 255).round().astype(np.uint8), mode="L").convert("RGB")
    return [
        np.asarray(v, dtype=np.float32)[..., 0] / 255.0 for v in scale_views_pil(img, cfg, scales)
    ]


def _moments(mask: np.ndarray) -> tuple[float, float, float, float, float]:
    """(area, centre x, centre y, spread x, spread y) of a coverage map (anti-aliasing safe)."""
    ys, xs = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]].astype(np.float64)
    area = float(mask.sum())
    cx, cy = float((mask * xs).sum() / area), float((mask * ys).sum() / area)
    sx = float(np.sqrt((mask * (xs - cx) ** 2).sum() / area))
    sy = float(np.sqrt((mask * (ys - cy) ** 2).sum() / area))
    return area, cx, cy, sx, sy


def test_two_x_view_doubles_object_size_on_shapes():
    ds = ShapesDataset(3, size=64, seed=3, scale_range=(0.15, 0.22))
    checked = 0
    for i in range(len(ds)):
        rec = ds.record(i)
        x0, y0, x1, y1 = rec.box
        if not (x0 > 17 and x1 < 47 and y0 > 17 and y1 < 47):  # object inside the 2x crop
            continue
        mask = ds.mask(i)
        v1, v15, v2 = _mask_views(mask, CFG64, (1.0, 1.5, 2.0))
        # 1.0x view of a 64 px image with crop_pct 1 is the image itself: the record's box
        w1, h1, _, _ = _extent(v1)
        assert w1 == x1 - x0 and h1 == y1 - y0
        a1, cx1, cy1, sx1, sy1 = _moments(v1)
        a2, cx2, cy2, sx2, sy2 = _moments(v2)
        a15, _, _, sx15, sy15 = _moments(v15)
        # object side in pixels x2 (area x4) at 2.0x, x1.5 at 1.5x
        assert sx2 / sx1 == pytest.approx(2.0, rel=0.04) and sy2 / sy1 == pytest.approx(
            2.0, rel=0.04
        )
        assert a2 / a1 == pytest.approx(4.0, rel=0.05)
        assert sx15 / sx1 == pytest.approx(1.5, rel=0.04) and a15 / a1 == pytest.approx(
            2.25, rel=0.05
        )
        # thresholded box: twice as wide within the 1-pixel anti-aliasing of each edge
        w2, h2, _, _ = _extent(v2)
        assert abs(w2 - 2 * w1) <= 4.0 and abs(h2 - 2 * h1) <= 4.0
        # the zoom is about the image centre (31.5): the object centre moves out by 2x
        assert cx2 - 31.5 == pytest.approx(2 * (cx1 - 31.5), abs=0.6)
        assert cy2 - 31.5 == pytest.approx(2 * (cy1 - 31.5), abs=0.6)
        # the record's scale is the object's side over the image side
        assert max(w1, h1) <= rec.scale * 64 + 1.5
        checked += 1
    assert checked >= 5


def test_crop_pct_and_resize_follow_the_model_config():
    # 96 px image, model of 64 px with crop_pct 0.875: shorter side -> floor(64/0.875) = 73
    cfg = dict(CFG64, crop_pct=0.875)
    mask = np.zeros((96, 96), dtype=np.float32)
    mask[38:58, 28:68] = 1.0  # 40 x 20 block, centred at (47.5, 47.5)
    img = Image.fromarray((mask * 255).astype(np.uint8), mode="L").convert("RGB")
    # the 1.0x view is torchvision's Resize(73) + CenterCrop(64), built here independently
    reference = T.CenterCrop(64)(T.Resize(73, T.InterpolationMode.BILINEAR, antialias=True)(img))
    np.testing.assert_array_equal(np.asarray(preprocess_for(cfg).view(img)), np.asarray(reference))
    v1, v2 = _mask_views(mask, cfg, (1.0, 2.0))
    assert v1.shape == (64, 64) and v2.shape == (64, 64)
    w1, h1, cx1, cy1 = _extent(v1)
    assert abs(w1 - 40 * 73 / 96) <= 1.5 and abs(h1 - 20 * 73 / 96) <= 1.5
    assert abs(cx1 - 31.5) <= 1.0 and abs(cy1 - 31.5) <= 1.0
    w2, h2, _, _ = _extent(v2)
    assert abs(w2 - 2 * w1) <= 2.0 and abs(h2 - 2 * h1) <= 2.0


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (64, 64)])
def test_resize_floors_size_over_crop_pct_as_timm_does(size):
    # seresnet50-like config: 224 / 0.95 = 235.8 -> 235 (timm floors; round would give 236)
    cfg = dict(CFG64, input_size=(3, 224, 224), crop_pct=0.95, interpolation="bicubic")
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    view = preprocess_for(cfg).view(img)
    assert view.size == (224, 224)
    # independent reference: the shorter side to 235, the longer one truncated as torchvision
    # does (500 * 235 / 375 = 313.3 -> 313), then the centre 224 x 224
    short, long_ = min(size), max(size)
    resized_long = int(235 * long_ / short)
    new = (235, resized_long) if size[0] <= size[1] else (resized_long, 235)
    resized = img.resize(new, Image.Resampling.BICUBIC)
    left = int(round((new[0] - 224) / 2.0))
    top = int(round((new[1] - 224) / 2.0))
    if min(size) >= 235:  # downscale: the resized image is cropped
        np.testing.assert_array_equal(
            np.asarray(view), np.asarray(resized.crop((left, top, left + 224, top + 224)))
        )
    else:  # 64 px upscaled to 235 then cropped: same geometry, torchvision's own steps
        ref = T.CenterCrop(224)(T.Resize(235, T.InterpolationMode.BICUBIC, antialias=True)(img))
        np.testing.assert_array_equal(np.asarray(view), np.asarray(ref))


def test_non_square_image_resizes_shorter_side_then_centre_crops():
    img = Image.new("RGB", (128, 64), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 32, 64))  # white left quarter falls outside the crop
    view = preprocess_for(CFG64).view(img)
    assert view.size == (64, 64)
    arr = np.asarray(view)
    assert arr.max() == 0  # the crop is columns 32..96 of the original: all black
    # never squashed: a 128 x 64 image with crop_pct 1 keeps its aspect ratio
    img.paste((255, 255, 255), (96, 0, 128, 64))  # the right quarter too: still all black
    assert np.asarray(preprocess_for(CFG64).view(img)).max() == 0


def test_zoom_view_crops_round_size_over_scale():
    # channel 0 = column index, channel 1 = row index; nearest shows which pixels were kept
    cols, rows = np.meshgrid(np.arange(64), np.arange(64))
    base = Image.fromarray(np.stack([cols, rows, cols], -1).astype(np.uint8), mode="RGB")
    transform = preprocess_for(dict(CFG64, interpolation="nearest"))
    z = np.asarray(zoom_view(base, 1.5, transform))
    crop = round(64 / 1.5)  # 43
    left = round((64 - crop) / 2)  # 10
    assert z.shape == (64, 64, 3)
    assert sorted(np.unique(z[..., 0])) == list(range(left, left + crop))
    assert sorted(np.unique(z[..., 1])) == list(range(left, left + crop))
    assert zoom_view(base, 1.0, transform) is base
    with pytest.raises(ValueError, match=">= 1.0"):
        zoom_view(base, 0.5, transform)
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match="finite"):
            zoom_view(base, bad, transform)


def test_scale_views_normalise_with_mean_and_std():
    img = Image.new("RGB", (80, 70), (51, 102, 204))
    x = scale_views(img, CFG64, (1.0, 2.0))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    for c, v in enumerate((51, 102, 204)):
        expected = (v / 255.0 - CFG64["mean"][c]) / CFG64["std"][c]
        assert torch.allclose(x[:, c], torch.full((2, 64, 64), expected), atol=1e-5)
    # the 1.0x view is exactly the model's own evaluation input
    np.testing.assert_array_equal(x[0].numpy(), preprocess_for(CFG64)(img).numpy())


def test_preprocess_accepts_config_objects():
    class Cfg:
        input_size = (3, 32, 48)
        mean = (0.5, 0.5, 0.5)
        std = (0.25, 0.25, 0.25)
        interpolation = "bicubic"
        crop_pct = 0.9

    transform = preprocess_for(Cfg())
    assert transform.input_size == (32, 48) and transform.interpolation == "bicubic"
    assert transform.config["crop_pct"] == 0.9
    assert scale_views(Image.new("RGB", (100, 100)), Cfg(), (1.0, 1.5)).shape == (2, 3, 32, 48)
    with pytest.raises(PreprocessError, match="input_size"):
        preprocess_for(dict(CFG64, input_size=(3, 0, 0)))
    with pytest.raises(PreprocessError, match="preprocess="):
        preprocess_for(None)
    with pytest.raises(PreprocessError, match="geometric view is unknown"):
        preprocess_for(lambda img: torch.zeros(3, 8, 8)).view(Image.new("RGB", (8, 8)))


def test_preprocess_validates_config():
    class Cfg:
        input_size = (3, 32, 48)
        mean = (0.5, 0.5, 0.5)
        std = (0.25, 0.25, 0.25)
        interpolation = "BICUBIC"  # the case of the mode name does not matter
        crop_pct = 0.9

    assert preprocess_for(Cfg()).interpolation == "bicubic"
    with pytest.raises(PreprocessError, match="interpolation"):
        preprocess_for(dict(CFG64, interpolation="cubic-spline"))
    with pytest.raises(PreprocessError, match="crop_pct"):
        preprocess_for(dict(CFG64, crop_pct=1.5))
    with pytest.raises(PreprocessError, match="crop_pct"):
        preprocess_for(dict(CFG64, crop_pct=0.0))
