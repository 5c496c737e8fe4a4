"""Bug classes of issue 26 that square inputs hide, and one-signed colour norms.

(a) Height / width order: every path that handles (H, W) runs on an H != W input, in both
orientations (tall and wide), against a reference made here from PIL / torchvision / timm /
captum / the modules' own weights, never from attnviz's own arithmetic: the preprocessing
recipes (torchvision-style and timm), the scale and zoom views, the grid that compares an
attention map with Grad-CAM and its figure, the key grid of Swin window attention, the query
and key grids of Non-local sites, and the overlays.

(e) Diverging colour norms: every plot with a diverging norm, on data of both signs whose
largest magnitude is negative in one case and positive in the other; the norm (image and
colour bar) must be symmetric and cover both.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torch import nn
from torchvision.transforms import functional as TF

import attnviz
from attnviz import plot
from attnviz.data.preprocess import preprocess_for
from attnviz.data.views import (
    resolution_control,
    scale_views,
    view_box,
    zoom_geometry,
    zoom_view,
    zoom_views,
)

INPUT = (24, 40)  # (H, W) of the model input of the recipes below: not square
ORIGINALS = {"wide": (80, 48), "tall": (48, 80)}  # PIL sizes (W, H) of the original images
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth-ish random RGB image, so that a wrong crop or resize changes many pixels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(h // 4, 1), max(w // 4, 1), 3), dtype=np.uint8)
    noise = rng.integers(0, 40, (h, w, 3))
    big = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR), dtype=np.int64)
    return Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8))


def _array(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int64)


# ============================================================ (a) preprocessing recipes
TV_CONFIG = {  # a torchvision weights recipe: resize the shorter side to 44, crop 24 x 40
    "input_size": (3, *INPUT),
    "resize_size": 44,
    "interpolation": "bilinear",
    "mean": MEAN,
    "std": STD,
    "crop_pct": 24 / 44,
}


def _tv_reference_view(img: Image.Image) -> tuple[Image.Image, tuple[float, ...]]:
    """The torchvision recipe by hand: PIL resize of the shorter side to 44 (torchvision's
    output-size rule, long side int(44 * long / short)), centre crop of 24 x 40 with
    offsets round((side - crop) / 2); and the crop's box in original pixels."""
    w, h = img.size
    if w <= h:
        nw, nh = 44, int(44 * h / w)
    else:
        nw, nh = int(44 * w / h), 44
    resized = img.resize((nw, nh), Image.BILINEAR, reducing_gap=None)
    ch, cw = INPUT
    top, left = int(round((nh - ch) / 2)), int(round((nw - cw) / 2))
    view = resized.crop((left, top, left + cw, top + ch))
    sx, sy = w / nw, h / nh
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    return view, box


@pytest.mark.parametrize("orientation", ORIGINALS)
def test_torchvision_style_recipe_on_a_non_square_input(orientation):
    img = _image(*ORIGINALS[orientation])
    t = preprocess_for(TV_CONFIG)
    assert t.input_size == INPUT
    view, box = _tv_reference_view(img)
    got = t.view(img)
    assert got.size == (INPUT[1], INPUT[0])  # PIL: (W, H)
    assert np.abs(_array(got) - _array(view)).max() <= 1  # torchvision's own PIL resize
    x = t(img)
    assert x.shape == (3, *INPUT)
    ref = (
        torch.as_tensor(_array(got), dtype=torch.float32).permute(2, 0, 1) / 255.0
        - torch.tensor(MEAN)[:, None, None]
    ) / torch.tensor(STD)[:, None, None]
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(view_box(img.size, t), box, rtol=1e-9)


@pytest.mark.parametrize("orientation", ORIGINALS)
@pytest.mark.parametrize("crop_mode", ["center", "squash"])
def test_timm_recipe_on_a_non_square_input(orientation, crop_mode):
    img = _image(*ORIGINALS[orientation], seed=1)
    cfg = {
        "input_size": (3, *INPUT),
        "crop_pct": 0.8,
        "interpolation": "bicubic",
        "mean": MEAN,
        "std": STD,
        "crop_mode": crop_mode,
    }
    t = preprocess_for(cfg)
    assert t.input_size == INPUT
    reference = create_transform(**resolve_data_config(cfg, verbose=False), is_training=False)
    assert torch.equal(t(img), reference(img))
    assert t(img).shape == (3, *INPUT) and t.view(img).size == (INPUT[1], INPUT[0])


def test_preprocess_config_object_keeps_height_then_width():
    from attnviz.models import PreprocessConfig

    cfg = PreprocessConfig((3, *INPUT), MEAN, STD, "bilinear", 1.0)
    t = preprocess_for(cfg)
    img = _image(*ORIGINALS["tall"], seed=2)
    assert t.input_size == INPUT and t(img).shape == (3, *INPUT)
    # timm with crop_pct 1 and a (24, 40) size: the same transform from timm directly
    reference = create_transform(
        input_size=(3, *INPUT), crop_pct=1.0, interpolation="bilinear", mean=MEAN, std=STD
    )
    assert torch.equal(t(img), reference(img))


# ============================================================ (a) scale and zoom views
@pytest.mark.parametrize("orientation", ORIGINALS)
@pytest.mark.parametrize("scale", [1.5, 2.0])
def test_zoom_view_and_scale_views_on_a_non_square_input(orientation, scale):
    img = _image(*ORIGINALS[orientation], seed=3)
    t = preprocess_for(TV_CONFIG)
    base = t.view(img)
    h, w = INPUT
    ch, cw = round(h / scale), round(w / scale)
    top, left = int(round((h - ch) / 2)), int(round((w - cw) / 2))
    ref = base.crop((left, top, left + cw, top + ch)).resize((w, h), Image.BILINEAR)
    got = zoom_view(base, scale, t)
    assert got.size == (w, h)
    assert np.abs(_array(got) - _array(ref)).max() <= 1
    views = scale_views(img, TV_CONFIG, [1.0, scale])
    assert views.shape == (2, 3, h, w)
    torch.testing.assert_close(views[0], t(img))
    torch.testing.assert_close(views[1], t.tensor(got))


@pytest.mark.parametrize("orientation", ORIGINALS)
def test_zoom_views_from_the_original_on_a_non_square_input(orientation):
    img = _image(*ORIGINALS[orientation], seed=4)
    t = preprocess_for(TV_CONFIG)
    h, w = INPUT
    _, (x0, y0, x1, y1) = _tv_reference_view(img)
    views, geos = zoom_views(img, TV_CONFIG, [1.0, 2.0, 3.0])
    assert [g.scale for g in geos] == [1.0, 2.0, 3.0]
    assert _array(views[0]).tolist() == _array(t.view(img)).tolist()
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    for s, view, geo in zip((2.0, 3.0), views[1:], geos[1:]):
        box = (cx - bw / (2 * s), cy - bh / (2 * s), cx + bw / (2 * s), cy + bh / (2 * s))
        np.testing.assert_allclose(geo.box, box, rtol=1e-9)
        assert geo.upsampling == pytest.approx(max(w * s / bw, h * s / bh))
        ref = img.resize((w, h), Image.BILINEAR, box=box)
        assert view.size == (w, h) and _array(view).tolist() == _array(ref).tolist()
        assert zoom_geometry(img.size, t, [s])[0] == geo
        # the resolution control: the 1.0x view down by the upsampling and back up
        up = geo.upsampling
        small = (max(1, round(w / up)), max(1, round(h / up)))
        ctrl = views[0].resize(small, Image.BILINEAR).resize((w, h), Image.BILINEAR)
        got = resolution_control(views[0], up, t)
        assert got.size == (w, h) and _array(got).tolist() == _array(ctrl).tolist()


# ============================================================ (a) attention beside Grad-CAM
def _block_mean(a: np.ndarray, grid) -> np.ndarray:
    """Average of an (H, W) map over equal blocks down to ``grid``, by loops."""
    h, w = a.shape
    fh, fw = h // grid[0], w // grid[1]
    out = np.zeros(grid)
    for y in range(grid[0]):
        for x in range(grid[1]):
            out[y, x] = a[y * fh : (y + 1) * fh, x * fw : (x + 1) * fw].mean()
    return out


@pytest.fixture(scope="module")
def cbam_tiny():
    model, _ = attnviz.load_model("cbam_tiny")
    return model.eval()


@pytest.mark.parametrize("size", [(48, 80), (80, 48)])
def test_attention_vs_gradcam_grids_and_figure_on_a_non_square_input(cbam_tiny, size):
    from captum.attr import LayerAttribution, LayerGradCam

    from attnviz.analysis.attribution import (
        attention_vs_attribution,
        spearman_rank_correlation,
        top_k_iou,
    )
    from attnviz.data import ShapesDataset

    shapes = ShapesDataset(1, size=80, seed=5)
    items = [shapes[k] for k in (1, 4, 7)]
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    x = torch.stack(
        [(TF.to_tensor(img.resize(size[::-1], Image.BILINEAR)) - mean) / std for img, _ in items]
    )
    labels = [label for _, label in items]
    result = attention_vs_attribution(
        cbam_tiny, x, labels=labels, sites="all", batch_size=2, progress=False
    )
    layer = dict(cbam_tiny.named_modules())[result.layer]
    cam = LayerGradCam(cbam_tiny, layer).attribute(
        x, target=torch.tensor(labels), relu_attributions=True
    )
    cam_grid = tuple(cam.shape[-2:])
    assert cam_grid[0] != cam_grid[1] and result.meta["gradcam_grid"] == list(cam_grid)
    up = LayerAttribution.interpolate(cam, size, "bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(result.gradcam, up, rtol=1e-4, atol=1e-6)
    with torch.no_grad(), attnviz.capture(cbam_tiny, kinds="cbam_spatial") as cache:
        cbam_tiny(x)
    cam_np = cam[:, 0].detach().double().numpy()
    for j, site in enumerate(result.sites):
        raw = cache[site["name"]]
        grid = tuple(raw.shape[-2:])
        common = (min(grid[0], cam_grid[0]), min(grid[1], cam_grid[1]))
        assert site["grid"] == list(grid) and site["compare_grid"] == list(common)
        ref = F.interpolate(raw[:, None].float(), size, mode="bilinear")[:, 0].numpy()
        np.testing.assert_allclose(result.attention[j], ref, atol=1e-6)
        for i in range(len(x)):
            a = _block_mean(raw[i].double().numpy(), common)
            g = _block_mean(cam_np[i], common)
            assert result.spearman[i, j] == pytest.approx(
                spearman_rank_correlation(a, g), nan_ok=True, abs=1e-6
            )
            assert result.iou[i, j] == pytest.approx(top_k_iou(a, g, 0.2), nan_ok=True, abs=1e-6)
    # the figure: every overlay is the map at the image's own (H, W)
    assert (result.gradcam[:2].max(axis=(1, 2)) > 0).any()  # a map to draw
    fig = plot.plot_attention_vs_gradcam(result, max_images=2)
    axes = np.asarray(fig.axes[: 2 * (2 + len(result.sites))]).reshape(2, -1)
    for r in range(2):
        assert np.asarray(axes[r, 0].images[0].get_array()).shape[:2] == size
        grey, over = axes[r, 1].images
        assert np.asarray(grey.get_array()).shape == size
        peak = result.gradcam[r].max()
        g = result.gradcam[r] / peak if peak > 0 else np.zeros(size)
        np.testing.assert_allclose(np.asarray(over.get_array()), g, atol=1e-6)
        for j in range(len(result.sites)):
            arr = np.asarray(axes[r, 2 + j].images[1].get_array())
            np.testing.assert_allclose(arr, result.attention[j, r], atol=1e-6)


# ============================================================ (a) Swin window attention
def _swin_model():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(7)
    m = SwinTransformer(
        img_size=(12, 28),
        patch_size=2,
        window_size=(3, 5),
        embed_dim=16,
        depths=(2,),
        num_heads=(2,),
        num_classes=3,
    ).eval()
    with torch.no_grad():
        for blk in m.modules():
            if type(blk).__name__ == "SwinTransformerBlock":
                blk.attn.relative_position_bias_table.normal_(0, 1.0)
                blk.attn.fused_attn = False
    return m


def _swin_oracle(model, x) -> dict:
    """Per block: (B, heads, HW, HW) maps on the 6 x 14 token map from timm's own weights (the
    input of ``attn_drop``), each window slot put where the block's roll and partition put it:
    a 6 x 14 map in 3 x 5 windows is 2 x 3 windows (the last column padded)."""
    from timm.models.swin_transformer import window_partition

    blocks = {n: m for n, m in model.named_modules() if type(m).__name__ == "SwinTransformerBlock"}
    got, shapes, handles = {}, {}, []
    for n, b in blocks.items():
        handles.append(
            b.attn.attn_drop.register_forward_hook(
                lambda m, i, o, n=n: got.__setitem__(n, i[0].clone())
            )
        )
        handles.append(
            b.register_forward_pre_hook(lambda m, i, n=n: shapes.__setitem__(n, i[0].shape))
        )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for name, blk in blocks.items():
        b, h, w, _ = shapes[name]
        ws, s = blk.window_size, blk.shift_size
        pos = torch.arange(h * w, dtype=torch.float).view(1, h, w, 1)
        pos = torch.roll(pos, shifts=(-s[0], -s[1]), dims=(1, 2))
        pos = F.pad(pos, (0, 0, 0, -w % ws[1], 0, -h % ws[0]), value=-1)
        slots = window_partition(pos, ws).reshape(-1, ws[0] * ws[1]).long()
        a = got[name].view(b, -1, *got[name].shape[1:])  # (B, windows, heads, N, N)
        full = torch.zeros(b, a.shape[2], h * w, h * w)
        for wi, wslots in enumerate(slots):
            keep = wslots >= 0
            for qs, p in enumerate(wslots.tolist()):
                if p >= 0:
                    full[:, :, p, wslots[keep]] = a[:, wi, :, qs][..., keep]
        out[name] = (full, (h, w), tuple(s))
    return out


def test_swin_window_key_grid_on_a_non_square_map_and_window():
    from attnviz.capture import window_to_grid

    model = _swin_model()
    x = torch.randn(2, 3, 12, 28, generator=torch.Generator().manual_seed(8))
    oracle = _swin_oracle(model, x)
    assert {s for _, _, s in oracle.values()} == {(0, 0), (1, 2)}  # unshifted and shifted
    cells = [(0, 13), (5, 0), (4, 11), (2, 7)]
    with torch.no_grad():
        with attnviz.capture(model) as cache:
            model(x)
        with attnviz.capture(model, sites=list(oracle), queries=cells) as picked:
            model(x)
    for name, (full, grid, shift) in oracle.items():
        assert grid == (6, 14)
        meta = cache.meta[name]
        assert meta["query_grid"] == grid and meta["key_grid"] == grid
        assert meta["window"] == (3, 5) and meta["shift"] == shift
        on_image = window_to_grid(cache[name], meta["key_index"], grid).flatten(-2)
        torch.testing.assert_close(on_image, full, rtol=0, atol=1e-6)
        rows = torch.tensor([y * 14 + x for y, x in cells])
        key_index = picked.meta[name]["key_index"][rows]
        got = window_to_grid(picked[name], key_index, grid).flatten(-2)
        torch.testing.assert_close(got, full[:, :, rows], rtol=0, atol=1e-6)


# ============================================================ (a) Non-local query grids
def test_non_local_query_and_key_grids_on_a_non_square_map():
    from timm.layers.non_local_attn import NonLocalAttn

    from attnviz.blocks.non_local import NonLocalBlock

    torch.manual_seed(9)
    model = nn.Sequential(NonLocalBlock(8, sub_sample=True), NonLocalAttn(8)).eval()
    x = torch.randn(2, 8, 6, 10)
    cells = [(1, 7), (5, 2), (0, 9)]
    with torch.no_grad():
        # references from the modules' weights: NL block (theta, max-pooled phi, softmax),
        # timm NonLocalAttn softmax(t^T p * scale); rows are queries in raster order y * W + x
        nl = model[0]
        theta = nl.theta(x).flatten(2).transpose(1, 2)
        phi = F.max_pool2d(nl.phi(x), 2).flatten(2)
        ref0 = torch.softmax(theta @ phi, dim=-1)  # (B, 60, 15): keys on a 3 x 5 grid
        y0 = model[0](x)
        t, p = model[1].t(y0).flatten(2), model[1].p(y0).flatten(2)
        ref1 = torch.softmax(t.transpose(1, 2) @ p * model[1].scale, dim=-1)  # (B, 60, 60)
        with attnviz.capture(model) as full:
            model(x)
        with attnviz.capture(model, queries=cells) as picked:
            model(x)
    rows = [y * 10 + x_ for y, x_ in cells]
    for name, ref, keys in (("0", ref0, (3, 5)), ("1", ref1, (6, 10))):
        assert full.meta[name]["query_grid"] == (6, 10) and full.meta[name]["key_grid"] == keys
        torch.testing.assert_close(full[name], ref, rtol=1e-5, atol=1e-6)
        assert picked.meta[name]["query_index"].tolist() == rows
        torch.testing.assert_close(picked[name], ref[:, rows], rtol=1e-5, atol=1e-6)
    # the same row drawn on the key grid: maximum where the reference puts it
    key = ref0[0, rows[0]].view(3, 5)
    assert full["0"][0, rows[0]].view(*full.meta["0"]["key_grid"]).argmax() == key.argmax()


# ============================================================ (a) overlays
def _bilinear(heat: np.ndarray, size) -> np.ndarray:
    """Bilinear upsampling by torch (half-pixel centres, as cv2.INTER_LINEAR)."""
    t = torch.as_tensor(heat, dtype=torch.float64)[None, None]
    return F.interpolate(t, size, mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("size", [(48, 80), (80, 48)])
def test_overlays_upsample_to_the_images_height_and_width(size):
    from matplotlib.colors import Normalize

    from attnviz.plot._style import draw_overlay
    from attnviz.plot.modules import plot_residual_masks
    from attnviz.plot.overlay import overlay

    rng = np.random.default_rng(10)
    img = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    heat = rng.random((3, 5) if size[0] < size[1] else (5, 3))
    ref = _bilinear(heat, size)
    # the HTML viewer's and widgets' overlay: the same as an overlay of the map upsampled here
    got = overlay(img, heat, alpha=0.5)
    assert got.shape == (*size, 3)
    same = overlay(img, ref.astype(np.float32), alpha=0.5)
    assert np.abs(got.astype(int) - same.astype(int)).max() <= 2
    # the figures' overlay
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    im = draw_overlay(ax, img, heat, Normalize(0, 1))
    assert np.asarray(ax.images[0].get_array()).shape == size
    np.testing.assert_allclose(np.asarray(im.get_array()), ref, atol=1e-5)
    # residual-attention masks drawn over non-square images
    masks = rng.random((2, 4, *heat.shape))
    fig = plot_residual_masks(list(img[None].repeat(2, 0)), masks, channels=[2])
    panels = [ax for ax in fig.axes if len(ax.images) == 2]
    assert len(panels) == 4  # 2 images x (mean, channel 2)
    expected = [masks[0].mean(0), masks[0, 2], masks[1].mean(0), masks[1, 2]]
    for ax, m in zip(panels, expected):
        np.testing.assert_allclose(
            np.asarray(ax.images[1].get_array()), _bilinear(m, size), atol=1e-5
        )


# ============================================================ (e) diverging colour norms
SIGNS = {"negative_larger": (-0.9, 0.3), "positive_larger": (-0.2, 0.7)}


def _both_signs(shape, lo: float, hi: float, seed: int = 0) -> np.ndarray:
    """Values of both signs whose extremes are exactly ``lo`` < 0 < ``hi``."""
    v = np.random.default_rng(seed).uniform(lo / 2, hi / 2, shape)
    v.flat[0], v.flat[-1] = lo, hi
    return v


def _check_diverging(im, values: np.ndarray, fig) -> None:
    m = float(np.nanmax(np.abs(values)))
    assert im.norm.vmin == pytest.approx(-m) and im.norm.vmax == pytest.approx(m)
    assert np.nanmin(values) >= im.norm.vmin and np.nanmax(values) <= im.norm.vmax  # none clipped
    bars = [ax for ax in fig.axes if hasattr(ax, "_colorbar")]
    assert bars, "no colour bar"
    for bar in bars:
        cb = bar._colorbar
        assert (cb.norm.vmin, cb.norm.vmax) == (im.norm.vmin, im.norm.vmax)


@pytest.mark.parametrize("signs", SIGNS)
def test_diverging_norm_covers_both_signs(signs):
    from attnviz.plot._style import diverging_norm

    lo, hi = SIGNS[signs]
    values = _both_signs((4, 5), lo, hi)
    norm = diverging_norm(values)
    m = max(-lo, hi)
    assert (norm.vmin, norm.vmax) == (-m, m)
    norm = diverging_norm([values[:2], values[2:]])  # given as a list of arrays too
    assert (norm.vmin, norm.vmax) == (-m, m)


class _SweepLike:
    """What ``plot_d_heatmap`` reads of a ScaleSweepResult: a D table, model name, images."""

    model_name, n_images = "sk_tiny", 12

    def __init__(self, values: np.ndarray):
        self.table = pd.DataFrame(
            values,
            index=[f"SK_{i}" for i in range(values.shape[0])],
            columns=[f"{s}x" for s in (1.0, 1.5, 2.0)],
        )

    def d_table(self) -> pd.DataFrame:
        return self.table.copy()


@pytest.mark.parametrize("signs", SIGNS)
def test_d_heatmap_norm_covers_both_signs(signs):
    values = _both_signs((4, 3), *SIGNS[signs], seed=1)
    fig = plot.plot_d_heatmap(_SweepLike(values))
    (im,) = fig.axes[0].images
    np.testing.assert_allclose(np.asarray(im.get_array()), values)
    assert im.get_cmap().name == "RdBu_r"
    _check_diverging(im, values, fig)


@pytest.mark.parametrize("signs", SIGNS)
@pytest.mark.parametrize("measure", ["p_true", "logit_true", "accuracy"])
def test_ablation_heatmap_norm_covers_both_signs(signs, measure):
    groups = ["stage:2", "stage:3", "all"]
    policies = ["constant:1", "mean", "shuffle", "zero"]
    values = _both_signs((len(groups), len(policies)), *SIGNS[signs], seed=2)
    rows = []
    for (r, c), v in np.ndenumerate(values):
        scope = "all" if groups[r] == "all" else "stage"
        for m in ("p_true", "logit_true", "accuracy", "kl"):
            mean = float(v) if m == measure else 0.1
            rows.append(
                dict(
                    group=groups[r],
                    scope=scope,
                    policy=policies[c],
                    measure=m,
                    n=20,
                    mean=mean,
                    se=0.01,
                    ci_low=mean - 0.02,
                    ci_high=mean + 0.02,
                    p=0.5,
                    p_holm=0.5,
                )
            )

    class Ablation:
        kind = "ablation"
        meta = {"model": "se_tiny", "policies": policies, "groups": groups}

        def to_frame(self):
            return pd.DataFrame(rows)

    fig = plot.plot_ablation_heatmap(Ablation(), measure)
    (im,) = fig.axes[0].images
    np.testing.assert_allclose(np.asarray(im.get_array()), values)
    assert im.get_cmap().name == "RdBu_r"
    _check_diverging(im, values, fig)
    # the cell text is dark-on-light by |v| / vmax: the most extreme cell of either sign
    # reaches the full shade, which a one-signed vmax would exceed
    m = float(np.abs(values).max())
    assert math.isclose(im.norm.vmax, m)
