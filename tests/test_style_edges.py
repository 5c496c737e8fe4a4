"""The plot conventions of ``attnviz.plot._style`` pinned by their artists (issue 26: mutation
testing found them untested): the overlay's grey image and heatmap layers, the opaque colour
bar of a translucent overlay, and zero printed without a minus sign."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import Normalize

from attnviz.plot._style import colorbar, draw_overlay, no_minus_zero


def _image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)  # H 6, W 10


def test_overlay_draws_the_luma_grey_image_then_the_upsampled_heatmap():
    img = _image()
    heat = np.arange(15, dtype=np.float32).reshape(3, 5)  # 3 x 5 grid, float32 on purpose
    norm = Normalize(0.0, 14.0)
    fig, ax = plt.subplots()
    try:
        im = draw_overlay(ax, img, heat, norm, cmap="magma", alpha=0.4)
        grey, top = ax.images
        assert top is im
        expected_grey = (
            0.299 * img[..., 0].astype(np.float64) + 0.587 * img[..., 1] + 0.114 * img[..., 2]
        )
        np.testing.assert_allclose(grey.get_array(), expected_grey, rtol=0, atol=1e-9)
        assert grey.get_cmap().name == "gray" and grey.get_clim() == (0, 255)
        assert grey.get_interpolation() == "nearest"
        up = F.interpolate(torch.tensor(heat)[None, None].double(), size=(6, 10), mode="bilinear",
                           align_corners=False)[0, 0].numpy()  # fmt: skip
        assert top.get_array().shape == (6, 10)
        np.testing.assert_allclose(top.get_array(), up, rtol=0, atol=1e-5)
        assert top.get_cmap().name == "magma" and top.norm is norm
        assert top.get_alpha() == 0.4 and top.get_interpolation() == "nearest"
        assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0
    finally:
        plt.close(fig)


def _bar_of(fig, mappable, **kw):
    ax = fig.axes[0]
    return colorbar(fig, mappable, ax, label="share", **kw)


def _reference_height(shrink: float) -> float:
    """The bar height matplotlib itself gives ``shrink`` on the same axes and image."""
    fig, ax = plt.subplots()
    try:
        bar = fig.colorbar(ax.imshow(np.zeros((2, 3))), ax=ax, shrink=shrink)
        fig.canvas.draw()
        return bar.ax.get_position().height
    finally:
        plt.close(fig)


def test_a_translucent_overlay_gets_an_opaque_bar_with_its_norm_and_colours():
    fig, ax = plt.subplots()
    try:
        norm = Normalize(-2.0, 3.0)
        im = ax.imshow(np.zeros((2, 3)), cmap="magma", norm=norm, alpha=0.5)  # not the default
        bar = _bar_of(fig, im)
        assert bar.mappable is not im and bar.mappable.get_alpha() in (None, 1)  # opaque
        assert bar.mappable.norm is norm and bar.mappable.get_cmap().name == "magma"
        assert bar.ax.get_ylabel() == "share"
        fig.canvas.draw()
        assert bar.ax.get_position().height == pytest.approx(_reference_height(0.85))
    finally:
        plt.close(fig)


@pytest.mark.parametrize("alpha", [None, 1.0])
def test_an_opaque_mappable_is_its_own_bar(alpha):
    fig, ax = plt.subplots()
    try:
        im = ax.imshow(np.zeros((2, 3)), alpha=alpha)
        bar = _bar_of(fig, im, shrink=0.5)
        assert bar.mappable is im
        fig.canvas.draw()
        assert bar.ax.get_position().height == pytest.approx(_reference_height(0.5))
    finally:
        plt.close(fig)


def test_zero_prints_without_a_minus_sign_and_other_values_keep_theirs():
    assert no_minus_zero(-0.0001, "+.3f") == "0.000"
    assert no_minus_zero(-0.0, ".2f") == "0.00"
    assert no_minus_zero(1.0, "+.1f") == "+1.0"
    assert no_minus_zero(-1.0, ".1f") == "-1.0"
    assert no_minus_zero(0.0004, "+.3f") == "0.000"


def test_dodge_spreads_series_symmetrically_and_keeps_one_centred():
    from attnviz.plot._style import dodge

    np.testing.assert_array_equal(dodge(0), [0.0])
    np.testing.assert_array_equal(dodge(1), [0.0])
    np.testing.assert_allclose(dodge(2), [-0.3, 0.3])
    np.testing.assert_allclose(dodge(3), [-0.3, 0.0, 0.3])
    np.testing.assert_allclose(dodge(5, width=1.0), [-0.5, -0.25, 0.0, 0.25, 0.5])


def test_site_lists_read_as_prose_and_shorten_past_the_limit():
    from attnviz.plot._style import site_list

    assert site_list([]) == "" and site_list(["SE_2_1"]) == "SE_2_1"
    assert site_list(["A", "B"]) == "A and B"
    assert site_list(["A", "B", "C"], limit=3) == "A, B and C"
    assert site_list(["A", "B", "C", "D"], limit=3) == "A ... D (4 sites)"


def test_diverging_norm_defaults_to_plus_minus_one_without_values():
    from attnviz.plot._style import diverging_norm

    for values in (np.zeros(3), [], [np.array([np.nan, 0.0])]):
        norm = diverging_norm(values)
        assert (norm.vmin, norm.vmax) == (-1.0, 1.0)
    norm = diverging_norm([np.array([1, -3]), np.array([2])])  # integers, a list of arrays
    assert (norm.vmin, norm.vmax) == (-3.0, 3.0)


def test_class_colours_are_tab10_up_to_ten_classes_then_tab20():
    from matplotlib import colormaps

    from attnviz.plot._style import class_colours

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    assert class_colours(10) == [tab10(i) for i in range(10)]
    assert class_colours(11) == [tab20(i) for i in range(11)]
    assert class_colours(25)[20:] == [tab20(i) for i in range(5)]  # cycles, never blends


def test_caption_and_new_axes_keep_their_sizes():
    from attnviz.plot._style import caption, new_axes

    fig, ax = new_axes(None, (3.0, 2.0))
    try:
        assert tuple(fig.get_size_inches()) == (3.0, 2.0) and ax.figure is fig
        caption(fig, "m", "what", "detail", "no error bars")
        title = fig._suptitle
        assert title.get_text() == "m: what\ndetail; no error bars"
        assert (
            title.get_fontsize() == matplotlib.font_manager.FontProperties(size="medium").get_size()
        )
    finally:
        plt.close(fig)


def test_model_name_reads_meta_then_the_result_then_the_run_record():
    from types import SimpleNamespace

    from attnviz.plot._style import model_name

    assert model_name(SimpleNamespace(model="se_tiny")) == "se_tiny"  # no meta at all
    assert model_name(SimpleNamespace(meta=["not", "a", "dict"], model="se_tiny")) == "se_tiny"
    assert model_name(SimpleNamespace(meta={}, model="timm.models.resnet.ResNet")) == "ResNet"
    assert model_name(SimpleNamespace(meta={"model": "sk_tiny"}, model="other")) == "sk_tiny"
    run = {"run": {"model_class": "attnviz.models.tiny.TinyResNet"}}
    assert model_name(SimpleNamespace(meta=run)) == "TinyResNet"
    assert model_name(SimpleNamespace(meta={}, models=["a", "b"])) == "a, b"
    assert model_name(SimpleNamespace(meta={"model": "w/x.safetensors"})) == "w/x.safetensors"
    assert model_name(SimpleNamespace()) == "model"


def test_shared_norm_spans_the_maps_unless_limits_are_given():
    from attnviz.plot._style import shared_norm

    def limits(*args, **kw):
        norm = shared_norm(*args, **kw)
        return norm.vmin, norm.vmax

    maps = [np.array([[1, 5]]), np.array([np.nan, -2.0, np.inf])]
    assert limits(maps) == (-2.0, 5.0)  # joint finite min / max, integers too
    assert limits(maps, vmin=0.5) == (0.5, 5.0) and limits(maps, vmax=0.7) == (-2.0, 0.7)
    assert limits([], vmin=0.5, vmax=0.7) == (0.5, 0.7)
    assert limits([]) == (0.0, 1.0) and limits([np.zeros(0)]) == (0.0, 1.0)
    assert limits([np.full(2, np.nan)]) == (0.0, 1.0)
    assert limits([np.array([-3.0, -1.0])], vmax=0.0) == (-3.0, 0.0)  # an explicit 0 is kept
    lo, hi = limits([np.full(3, 0.25)])  # a constant map still gets an increasing norm
    assert lo == 0.25 and 0.25 < hi <= 0.25 + 1e-11
