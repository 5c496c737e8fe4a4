"""The generated multi-scale shapes dataset."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
from PIL import Image

from attnviz.commands.data import register_cli
from attnviz.data import ShapesDataset, write_image_folder


def test_classes_labels_and_items() -> None:
    ds = ShapesDataset(2, size=72, seed=3)
    assert len(ds.classes) >= 10 and len(set(ds.classes)) == len(ds.classes)
    assert len(ds) == 2 * len(ds.classes)
    img, label = ds[5]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (72, 72)
    assert label == 5 % len(ds.classes) == ds.records[5].label
    assert ds.records[5].class_name == ds.classes[label]
    arr, _ = ShapesDataset(1, transform=np.asarray)[0]
    assert arr.shape == (64, 64, 3) and arr.dtype == np.uint8
    with pytest.raises(IndexError):
        ds.render(len(ds))
    with pytest.raises(ValueError, match="64..96"):
        ShapesDataset(1, size=32)


def test_deterministic_random_access_and_prefix() -> None:
    a, b = ShapesDataset(3, seed=7), ShapesDataset(5, seed=7)
    for i in (0, 13, 29):
        np.testing.assert_array_equal(a.render(i), b.render(i))  # n=3 is a prefix of n=5
        assert a.record(i) == b.records[i]
    np.testing.assert_array_equal(a.render(29), ShapesDataset(3, seed=7).render(29))
    assert not np.array_equal(a.render(4), ShapesDataset(3, seed=8).render(4))
    assert not np.array_equal(a.render(4), a.render(14))  # same class, another sample


def test_scales_span_at_least_4x_and_boxes_match_pixels() -> None:
    ds = ShapesDataset(10, seed=0)
    lo, hi = ds.scale_range
    assert hi / lo >= 4
    scales = np.array([r.scale for r in ds.records])
    assert scales.min() >= lo and scales.max() <= hi
    assert scales.max() / scales.min() >= 4
    n = ds.size
    for i in range(0, len(ds), 7):
        rec, img = ds.records[i], ds.render(i).astype(np.float32)
        x0, y0, x1, y1 = rec.box
        assert 0 <= x0 < x1 <= n and 0 <= y0 < y1 <= n
        side = rec.scale * n
        assert 0.5 * side <= max(x1 - x0, y1 - y0) <= side + 2
        # the object's pixels stand out from the background outside the box
        m = ds.mask(i) > 0.5
        outside = np.ones((n, n), bool)
        outside[y0:y1, x0:x1] = False
        assert m[y0:y1, x0:x1].sum() == m.sum()  # every object pixel lies in the box
        contrast = np.abs(img[m].mean(0) - img[outside].mean(0)).max()
        assert contrast > 25, (i, rec, contrast)


def test_write_image_folder_and_cli(tmp_path) -> None:
    ds = ShapesDataset(1, seed=2)
    root = write_image_folder(ds, tmp_path / "shapes")
    files = sorted(root.glob("*/*.png"))
    assert len(files) == len(ds)
    assert {f.parent.name for f in files} == set(ds.classes)
    with Image.open(files[0]) as im:
        im.load()
        assert im.mode == "RGB" and im.size == (64, 64)
    with open(root / "records.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(ds)
    row = rows[3]
    assert (root / row["path"]).is_file() and row["class_name"] == ds.classes[3]
    assert tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1")) == ds.records[3].box
    np.testing.assert_array_equal(np.asarray(Image.open(root / row["path"])), ds.render(3))

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["data", "make-shapes", str(tmp_path / "cli"), "--n-per-class", "1", "--size", "80"]
    )
    assert args.func(args) == 0
    written = sorted((tmp_path / "cli").glob("*/*.png"))
    assert len(written) == len(ds)
    with Image.open(written[0]) as im:
        assert im.size == (80, 80)
