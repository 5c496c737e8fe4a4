"""Tests for survivors of the fourteenth held-out round of the sampled mutation run (runner and
results, analysis; TESTING.md, "Whole package by sampling"): an image array given to
``query_maps``, the number of figure maps query independence keeps, the columns of the sweep's
per-class bootstrap table and its count of upsampled zoom views."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

import attnviz


def test_query_maps_of_an_image_array_equal_those_of_the_pil_image():
    from attnviz.analysis.query_maps import query_maps

    model, cfg = attnviz.load_model("nl_tiny")
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = query_maps(model, arr, queries=[(10, 20)], preprocess=cfg)
    b = query_maps(model, Image.fromarray(arr), queries=[(10, 20)], preprocess=cfg)
    np.testing.assert_array_equal(a.maps, b.maps)
    np.testing.assert_array_equal(a.image, arr)


def test_query_independence_keeps_the_maps_of_as_many_images_as_asked():
    from attnviz.analysis.query_independence import query_independence

    model, _ = attnviz.load_model("nl_tiny")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    result = query_independence(model, x, map_images=2, batch_size=1, progress=False)
    assert result.map_images.shape[0] == 2 and result.map_grid_maps.shape[0] == 2


def _sweep_of_a_folder(tmp_path):
    from attnviz.analysis.scale_sweep import scale_sweep
    from attnviz.data import ShapesDataset, write_image_folder

    images = write_image_folder(ShapesDataset(1, size=64, seed=2), tmp_path / "img")
    model, cfg = attnviz.load_model("sk_tiny")  # 64-px input: a 2x zoom crop is upsampled
    return scale_sweep(
        model, images, preprocess=cfg, scales=(1.0, 2.0), per_image=True, progress=False
    )


def test_the_sweep_counts_the_upsampled_zoom_views_and_its_class_table_names_its_columns(
    tmp_path,
):
    result = _sweep_of_a_folder(tmp_path)
    n = result.n_images
    assert n == 10
    # row 0: the mean upsampling factor, row 1: how many images needed it, per zoom scale
    assert result.upsampling.shape == (2, 2)
    assert result.upsampling[1].tolist() == [0.0, float(n)]
    assert result.upsampling[0, 1] > 1.0
    table = result.class_delta_ci(draws=50)
    assert list(table.columns) == [
        "site", "scale", "class", "n", "delta_D", "ci_low", "ci_high", "boot_se",
    ]  # fmt: skip
    assert set(table["scale"]) == {2.0} and table["n"].sum() == n * len(result.sites)


def test_a_run_checkpoints_every_checkpoint_every_batches(tmp_path, monkeypatch):
    """Six batches, ``checkpoint_every=2``: saved after batches 2, 4 and 6 (a SIGKILL loses at
    most two batches), not only when interrupted."""
    from attnviz.analysis import runner
    from attnviz.analysis.excitation import excitation_profile

    saved = []
    real = runner._save_checkpoint
    monkeypatch.setattr(
        runner, "_save_checkpoint",
        lambda path, meta, state: saved.append(meta["position"]) or real(path, meta, state),
    )  # fmt: skip
    model, _ = attnviz.load_model("se_tiny")
    excitation_profile(
        model, torch.randn(12, 3, 32, 32), labels=[0] * 12, batch_size=2, progress=False,
        checkpoint=tmp_path, checkpoint_every=2,
    )  # fmt: skip
    assert saved == [4, 8, 12]
