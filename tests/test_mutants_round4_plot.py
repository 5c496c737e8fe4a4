"""Round 4's plot survivors, as classes: the rollout figure's text (its model label: explicit
name, the result's ``meta["model"]``, its ``model`` field, in that order; titles, labels,
colour maps) and the conversion of images to RGB uint8 by dtype (``to_rgb_uint8``: uint8 kept
as it is, floats in [0, 1] scaled by 255, other floats rounded and clipped; the modules'
``display_images``: floats outside [0, 1] min-max scaled, grey to three equal channels), each
against a hand computation on non-square images. (``_display``'s grey image repeated to 4
channels instead of 3 is equivalent: ``to_rgb_uint8`` keeps the first three.)"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attnviz.analysis.rollout import RolloutResult
from attnviz.plot.overlay import overlay, to_rgb_uint8
from attnviz.plot.rollout import plot_rollout


def _rollout(meta: dict) -> RolloutResult:
    rng = np.random.default_rng(4)
    return RolloutResult(
        model="field_name",
        sites=[{"alias": "ATT_1"}, {"alias": "ATT_2"}],
        tokens=["class", "patch mean"],
        maps=rng.random((2, 2, 3, 5)) / 20,
        prefix_mass=rng.uniform(0.1, 0.3, (2, 2)),
        query_grid=[3, 5],
        images=rng.integers(0, 256, (2, 12, 20, 3), dtype=np.uint8),
        ids=["a.png", "b.png"],
        meta=meta,
    )


@pytest.mark.parametrize(
    ("meta", "model", "label"),
    [
        ({"model": "meta_name"}, "given_name", "given_name"),  # the name passed wins
        ({"model": "meta_name"}, None, "meta_name"),  # then the run's name
        ({}, None, "field_name"),  # then the result's own
        ({"model": ""}, "given_name", "given_name"),
        ({"model": ""}, None, "field_name"),
    ],
)
def test_rollout_figure_names_the_model_in_order(meta, model, label):
    fig = plot_rollout(_rollout(meta), model=model)
    first = fig._suptitle.get_text().split("\n")[0]
    assert first == f"{label}: attention rollout of the class token over 2 layers (ATT_1 ... ATT_2)"


CAVEAT = (
    "assumes residual mixing of 0.5 and ignores the MLPs and the values' norms: a flow of "
    "attention weights, not a faithful attribution (Abnar & Zuidema 2020; Jain & Wallace 2019)"
)


@pytest.mark.parametrize("images", [1, 2])
def test_rollout_figure_text_and_colour_maps(images):
    """Every title, label and colour map of the figure, with a colour map not the default."""
    result = _rollout({"model": "meta_name"})
    fig = plot_rollout(result, images=images, colormap="magma", token="patch mean")
    rows = [ax for ax in fig.axes if ax.images]
    assert len(rows) == 3 * images
    for i in range(images):
        a_img, a_grid, a_over = rows[3 * i : 3 * i + 3]
        titles = [ax.get_title() for ax in (a_img, a_grid, a_over)]
        want = ["image (model input)", "rollout, 3x5 patch grid", "rollout over the image"]
        assert titles == (want if i == 0 else ["", "", ""])
        ident = ["a.png", "b.png"][i]
        assert a_img.get_ylabel() == f"{ident}\nprefix mass {result.prefix_mass[i, 1]:.3f}"
        assert [im.get_cmap().name for im in a_grid.images] == ["magma"]
        assert [im.get_cmap().name for im in a_over.images] == ["gray", "magma"]
        assert a_over.images[1].get_alpha() == pytest.approx(0.55)  # OVERLAY_ALPHA
    (bar,) = [ax for ax in fig.axes if not ax.images]
    assert bar.get_ylabel() == "rollout weight on a patch input"
    plural = "s" if images != 1 else ""
    want = (
        "meta_name: attention rollout of the patch mean token over 2 layers (ATT_1 ... ATT_2) "
        f"A~ = 0.5 I + 0.5 mean over heads, rows renormalised; {images} image{plural}; "
        f"caveat: {CAVEAT}; no error bars (one image per row)"
    )
    assert " ".join(fig._suptitle.get_text().split()) == want


def test_uint8_images_are_kept_as_they_are():
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 2, (5, 7, 3), dtype=np.uint8)  # 0/1 values: not a [0, 1] float image
    full = rng.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    for image, want in (
        (dark, dark),
        (full, full[:, :, :3]),  # RGBA: alpha dropped
        (grey, np.stack([grey] * 3, axis=2)),
    ):
        got = to_rgb_uint8(image)
        assert got.dtype == np.uint8 and got.shape == (5, 7, 3)
        np.testing.assert_array_equal(got, want)
        assert got.flags.c_contiguous
    # the same pixels through the blend: alpha 0 gives the image back unchanged
    np.testing.assert_array_equal(overlay(dark, np.ones((2, 3)), alpha=0.0), dark)


def test_float_images_are_scaled_or_rounded_by_hand():
    rng = np.random.default_rng(1)
    unit = rng.random((5, 7, 3))
    unit[0, 0] = [0.0, 1.0, 0.5]
    got = to_rgb_uint8(unit)
    want = np.array([[[int(np.floor(v * 255 + 0.5)) for v in px] for px in row] for row in unit])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert got[0, 0].tolist() == [0, 255, 128]  # round half to even: 127.5 -> 128
    wide = np.array([[[-3.0, 12.4, 300.0], [254.6, 1.5, 2.5]]], dtype=np.float32)  # (1, 2, 3)
    got = to_rgb_uint8(wide)
    assert got.dtype == np.uint8
    assert got.tolist() == [[[0, 12, 255], [255, 2, 2]]]  # clipped; rint halves to even
    grey = np.array([[0.0, 0.25], [0.5, 1.0], [1.0, 0.75]])  # (3, 2) grey in [0, 1]
    got = to_rgb_uint8(grey)
    assert got.shape == (3, 2, 3) and got[:, :, 0].tolist() == [[0, 64], [128, 255], [255, 191]]
    assert (got == got[:, :, :1]).all()
    pil = Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8))
    got = to_rgb_uint8(pil)
    assert got.shape == (5, 7, 3) and (got == np.asarray(pil)[:, :, None]).all()


def test_display_images_scale_only_what_is_outside_the_unit_range():
    """``display_images`` (the modules' figures): grey images become three equal channels; floats
    inside [0, 1] (the end points included) are scaled by 255 as they are, floats outside are
    min-max scaled first; a feature map shows its channel mean; uint8 stays."""
    from attnviz.plot.modules import display_images

    rng = np.random.default_rng(2)
    grey = rng.uniform(0.2, 1.0, (5, 7))
    grey[1, 2] = 1.0  # the top of the unit range: still not rescaled
    (got,) = display_images(grey)
    assert got.dtype == np.uint8 and got.shape == (5, 7, 3)
    np.testing.assert_array_equal(got[:, :, 0], np.floor(grey * 255 + 0.5).astype(np.uint8))
    assert (got == got[:, :, :1]).all()
    wide = rng.normal(0.0, 3.0, (5, 7, 1))  # outside [0, 1]: min-max scaled
    (got,) = display_images(wide)
    want = np.floor((wide - wide.min()) / (wide.max() - wide.min()) * 255 + 0.5)
    np.testing.assert_array_equal(got, np.repeat(want, 3, axis=2).astype(np.uint8))
    feats = rng.normal(0.5, 1.0, (2, 5, 5, 7))  # (B, C, H, W), five channels: the mean, grey
    for image, out in zip(feats, display_images(feats)):
        mean = image.mean(axis=0)
        want = np.floor((mean - mean.min()) / (mean.max() - mean.min()) * 255 + 0.5)
        np.testing.assert_array_equal(out, np.repeat(want[:, :, None], 3, axis=2))
    (got,) = display_images(np.full((5, 7), 3.0))  # constant outside [0, 1]: black
    assert got.shape == (5, 7, 3) and not got.any()
    colour = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(display_images(colour)[0], colour)
