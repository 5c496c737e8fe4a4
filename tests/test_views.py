"""The SKNet scale views, checked geometrically on generated images of known object size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attnviz.data import ShapesDataset
from attnviz.data.views import base_view, scale_views, scale_views_pil, view_spec, zoom_view

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
    # 96 px image, model of 64 px with crop_pct 0.875: shorter side -> round(64/0.875) = 73
    cfg = dict(CFG64, crop_pct=0.875)
    assert view_spec(cfg).resize_shorter == 73
    mask = np.zeros((96, 96), dtype=np.float32)
    mask[38:58, 28:68] = 1.0  # 40 x 20 block, centred at (47.5, 47.5)
    v1, v2 = _mask_views(mask, cfg, (1.0, 2.0))
    assert v1.shape == (64, 64) and v2.shape == (64, 64)
    w1, h1, cx1, cy1 = _extent(v1)
    assert abs(w1 - 40 * 73 / 96) <= 1.5 and abs(h1 - 20 * 73 / 96) <= 1.5
    assert abs(cx1 - 31.5) <= 1.0 and abs(cy1 - 31.5) <= 1.0
    w2, h2, _, _ = _extent(v2)
    assert abs(w2 - 2 * w1) <= 2.0 and abs(h2 - 2 * h1) <= 2.0


def test_non_square_image_resizes_shorter_side_then_centre_crops():
    img = Image.new("RGB", (128, 64), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 32, 64))  # white left quarter falls outside the crop
    view = base_view(img, CFG64)
    assert view.size == (64, 64)
    arr = np.asarray(view)
    assert arr.max() == 0  # the crop is columns 32..96 of the original: all black


def test_zoom_view_crops_round_size_over_scale():
    # channel 0 = column index, channel 1 = row index; nearest shows which pixels were kept
    cols, rows = np.meshgrid(np.arange(64), np.arange(64))
    base = Image.fromarray(np.stack([cols, rows, cols], -1).astype(np.uint8), mode="RGB")
    cfg = dict(CFG64, interpolation="nearest")
    z = np.asarray(zoom_view(base, 1.5, cfg))
    crop = round(64 / 1.5)  # 43
    left = round((64 - crop) / 2)  # 10
    assert z.shape == (64, 64, 3)
    assert sorted(np.unique(z[..., 0])) == list(range(left, left + crop))
    assert sorted(np.unique(z[..., 1])) == list(range(left, left + crop))
    assert zoom_view(base, 1.0, cfg) is base
    with pytest.raises(ValueError, match=">= 1.0"):
        zoom_view(base, 0.5, cfg)


def test_scale_views_normalise_with_mean_and_std():
    img = Image.new("RGB", (80, 70), (51, 102, 204))
    x = scale_views(img, CFG64, (1.0, 2.0))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    for c, v in enumerate((51, 102, 204)):
        expected = (v / 255.0 - CFG64["mean"][c]) / CFG64["std"][c]
        assert torch.allclose(x[:, c], torch.full((2, 64, 64), expected), atol=1e-5)


def test_view_spec_accepts_objects_and_validates():
    class Cfg:
        input_size = (3, 32, 48)
        mean = (0.5, 0.5, 0.5)
        std = (0.25, 0.25, 0.25)
        interpolation = "BICUBIC"
        crop_pct = 0.9

    spec = view_spec(Cfg())
    assert spec.size == (32, 48) and spec.interpolation == "bicubic" and spec.crop_pct == 0.9
    assert scale_views(Image.new("RGB", (100, 100)), Cfg(), (1.0, 1.5)).shape == (2, 3, 32, 48)
    with pytest.raises(ValueError, match="interpolation"):
        view_spec(dict(CFG64, interpolation="cubic-spline"))
    with pytest.raises(ValueError, match="crop_pct"):
        view_spec(dict(CFG64, crop_pct=1.5))
