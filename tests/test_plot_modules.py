"""Figures of attnviz.plot.modules, checked by their data (lines, images, labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from attnviz.plot.modules import (
    display_images,
    grid_to_pixels,
    plot_channel_affinity,
    plot_residual_masks,
    plot_stn_sampling,
)
from attnviz.plot.overlay import upsample


def test_grid_to_pixels_inverts_grid_sample_convention():
    """A grid point at the centre of pixel (row 2, col 5) samples exactly that pixel."""
    h, w = 6, 8
    x = torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w)
    gx, gy = (2 * 5 + 1) / w - 1, (2 * 2 + 1) / h - 1
    grid = torch.tensor([[[[gx, gy]]]])
    assert float(F.grid_sample(x, grid, align_corners=False)) == float(x[0, 0, 2, 5])
    u, v = grid_to_pixels(grid[0], (h, w))
    assert u[0, 0] == pytest.approx(5.0) and v[0, 0] == pytest.approx(2.0)
    u, v = grid_to_pixels(np.array([[[1.0, -1.0]]]), (h, w), align_corners=True)
    assert (u[0, 0], v[0, 0]) == (w - 1, 0)
    with pytest.raises(ValueError, match="grid"):
        grid_to_pixels(np.zeros((3, 3)), (h, w))


def test_plot_stn_sampling_draws_the_grid():
    theta = torch.tensor([[[0.5, 0.0, 0.25], [0.0, 0.5, -0.25]]]).repeat(2, 1, 1)
    x = torch.rand(2, 3, 16, 16)
    grid = F.affine_grid(theta, [2, 3, 9, 9], align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False)
    fig = plot_stn_sampling(x, grid, out, step=4)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 4
    lines = axes[0].get_lines()
    assert len(lines) == 3 + 3  # rows 0, 4, 8 and columns 0, 4, 8
    u, v = grid_to_pixels(grid[0], (16, 16))
    np.testing.assert_allclose(lines[0].get_xdata(), u[0, :])
    np.testing.assert_allclose(lines[0].get_ydata(), v[0, :])
    np.testing.assert_allclose(lines[5].get_xdata(), u[:, 8])
    # the grid is the middle half of the image shifted right and up: u in [3.75, 11.25]
    assert min(l.get_xdata().min() for l in lines) == pytest.approx(
        ((0.25 - 0.5 * 8 / 9 + 1) * 16 - 1) / 2
    )
    assert axes[1].images[0].get_array().shape == (9, 9, 3)
    np.testing.assert_array_equal(axes[1].images[0].get_array(), display_images(out)[0])
    assert axes[0].get_title() == "input + sampling grid"
    with pytest.raises(ValueError, match="step"):
        plot_stn_sampling(x, grid, out, step=0)


def test_display_images_feature_maps_and_pil():
    feats = torch.randn(1, 8, 4, 4)
    (img,) = display_images(feats)
    assert img.shape == (4, 4, 3) and img.dtype == np.uint8
    mean = feats[0].mean(0).numpy()
    want = np.round((mean - mean.min()) / (mean.max() - mean.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(img[:, :, 0], want)
    from PIL import Image

    batch = np.random.default_rng(1).integers(0, 255, (2, 5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(display_images(batch)[1], batch[1])
    np.testing.assert_array_equal(
        display_images(torch.from_numpy(batch).permute(0, 3, 1, 2))[0], batch[0]
    )
    pil = Image.new("RGB", (5, 3), (10, 20, 30))
    assert display_images([pil])[0][0, 0].tolist() == [10, 20, 30]


def test_plot_residual_masks_overlays():
    images = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    masks = torch.rand(3, 4, 8, 8)
    fig = plot_residual_masks(list(images), masks, channels=[2], max_images=2)
    axes = np.array(fig.axes[:6]).reshape(2, 3)  # then one colour bar
    assert len(fig.axes) == 7
    np.testing.assert_array_equal(axes[0, 0].images[0].get_array(), images[0])
    want_mean = upsample(masks[1].mean(0).numpy().astype(np.float64), (32, 32))
    np.testing.assert_allclose(axes[1, 1].images[1].get_array(), want_mean, atol=1e-6)
    want_c2 = upsample(masks[0, 2].numpy().astype(np.float64), (32, 32))
    np.testing.assert_allclose(axes[0, 2].images[1].get_array(), want_c2, atol=1e-6)
    assert axes[0, 2].get_title() == "channel 2"
    norm = axes[0, 1].images[1].norm  # one colour scale: the joint range of all panels
    assert all(ax.images[1].norm is norm for ax in axes[:, 1:].ravel())
    assert norm.vmax == pytest.approx(max(masks[0, 2].max(), masks[1, 2].max()).item())
    # a (B, H, W) summary (reduce="channel_mean") gives the same mean panel
    fig2 = plot_residual_masks(list(images), masks.mean(1), max_images=2)
    np.testing.assert_allclose(
        np.array(fig2.axes[:4]).reshape(2, 2)[1, 1].images[1].get_array(), want_mean, atol=1e-6
    )
    with pytest.raises(ValueError, match="out of range"):
        plot_residual_masks(list(images), masks, channels=[4])
    with pytest.raises(ValueError, match="summary"):
        plot_residual_masks(list(images), masks.mean(1), channels=[0])


def test_plot_channel_affinity_heatmap():
    a = torch.softmax(torch.randn(3, 6, 6), dim=-1)
    fig = plot_channel_affinity(a)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), a.mean(0).numpy(), rtol=1e-6)
    assert ax.get_xlabel() == "source channel i" and ax.get_ylabel() == "output channel j"
    assert "mean over 3 image(s)" in ax.get_title()
    assert len(fig.axes) == 2  # heatmap + colorbar
    fig1 = plot_channel_affinity(a, image=1)
    np.testing.assert_allclose(fig1.axes[0].images[0].get_array(), a[1].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="channel affinity"):
        plot_channel_affinity(torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="out of range"):
        plot_channel_affinity(a, image=5)
