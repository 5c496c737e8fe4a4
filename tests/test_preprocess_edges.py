"""Edges of ``preprocess_for`` that mutation testing found untested (issue 26): a torchvision
weights recipe whose interpolation is not bilinear, every field of the config it reports, the
explicit-resize recipe of a data config, and when a timm model's patch embedding fixes the
input size. References are torchvision's own ``transforms()`` and transforms built by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.models import EfficientNet_B0_Weights

from attnviz.data.preprocess import _fixed_input_size, preprocess_for

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_a_bicubic_weights_recipe_reports_every_field_and_equals_torchvision():
    weights = EfficientNet_B0_Weights.IMAGENET1K_V1  # resize 256, crop 224, bicubic
    ours = preprocess_for(weights)
    assert dict(ours.config) == {
        "input_size": (3, 224, 224),
        "interpolation": "bicubic",
        "mean": MEAN,
        "std": STD,
        "crop_pct": 224 / 256,
        "crop_mode": "center",
        "resize_size": 256,
    }
    reference = weights.transforms()
    for w, h in ((300, 260), (260, 300)):
        img = _image(w, h)
        torch.testing.assert_close(ours(img), reference(img), rtol=0, atol=1e-6)


def test_a_data_config_with_a_resize_uses_its_interpolation_on_a_non_square_crop():
    config = {"input_size": (3, 40, 56), "interpolation": "bicubic", "mean": MEAN, "std": STD,
              "resize_size": 64}  # fmt: skip
    ours = preprocess_for(config)
    assert ours.config["resize_size"] == 64 and ours.input_size == (40, 56)
    by_hand = T.Compose([
        T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((40, 56)),
        T.ToTensor(), T.Normalize(MEAN, STD),
    ])  # fmt: skip
    bilinear = T.Compose(
        [T.Resize(64), T.CenterCrop((40, 56)), T.ToTensor(), T.Normalize(MEAN, STD)]
    )
    img = _image(90, 70)
    torch.testing.assert_close(ours(img), by_hand(img), rtol=0, atol=1e-6)
    assert not torch.allclose(ours(img), bilinear(img), atol=1e-3)  # the mode matters here


def _model(**embed) -> SimpleNamespace:
    return SimpleNamespace(patch_embed=SimpleNamespace(**embed))


@pytest.mark.parametrize(
    "embed, expected",
    [
        ({"img_size": (32, 48), "strict_img_size": True}, (32, 48)),  # H, W: not square
        ({"img_size": (32, 48), "strict_img_size": True, "dynamic_img_pad": False}, (32, 48)),
        ({"img_size": (32, 48), "strict_img_size": False}, None),  # any size is accepted
        ({"img_size": (32, 48)}, None),  # no strict flag: not fixed
        ({"img_size": (32, 48), "strict_img_size": True, "dynamic_img_pad": True}, None),
        ({"img_size": None, "strict_img_size": True}, None),
        ({"strict_img_size": True}, None),
    ],
)
def test_fixed_input_size_only_for_a_strict_patch_embedding(embed, expected):
    assert _fixed_input_size(_model(**embed)) == expected


def test_no_patch_embedding_has_no_fixed_size():
    assert _fixed_input_size(SimpleNamespace()) is None


def test_a_config_object_passes_its_crop_mode_to_timm():
    from timm.data import create_transform

    fields = {"input_size": (3, 40, 56), "interpolation": "bilinear", "mean": MEAN, "std": STD,
              "crop_pct": 0.875, "crop_mode": "squash"}  # fmt: skip
    ours = preprocess_for(SimpleNamespace(**fields))
    assert ours.config["crop_mode"] == "squash"
    reference = create_transform(**fields, is_training=False)
    img = _image(90, 70)
    torch.testing.assert_close(ours(img), reference(img), rtol=0, atol=0)
    centre = create_transform(**{**fields, "crop_mode": "center"}, is_training=False)
    assert not torch.equal(centre(img), reference(img))  # the mode changes the pixels


def test_a_plain_callable_has_no_view_and_says_what_to_pass():
    ours = preprocess_for(lambda image: torch.zeros(3, 2, 2))
    with pytest.raises(Exception, match=r"^this preprocessing is a plain callable; its geometric "
                       r"view is unknown\. Pass a model, a timm data config or a "
                       r"PreprocessConfig instead$"):  # fmt: skip
        ours.view(_image(4, 4))


def test_dataset_items_give_image_and_label_or_no_label():
    from attnviz.data.sources import _split_item

    img = _image(4, 4)
    assert _split_item((img, 3)) == (img, 3, None)
    assert _split_item([img]) == (img, None, None)  # a one-element item has no label
    assert _split_item(img) == (img, None, None)


def test_a_config_object_with_a_resize_is_the_torchvision_recipe():
    fields = {"input_size": (3, 40, 56), "interpolation": "bicubic", "mean": MEAN, "std": STD,
              "crop_pct": 0.875, "resize_size": 64}  # fmt: skip
    ours = preprocess_for(SimpleNamespace(**fields))
    assert ours.config["resize_size"] == 64
    by_hand = T.Compose([
        T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop((40, 56)),
        T.ToTensor(), T.Normalize(MEAN, STD),
    ])  # fmt: skip
    img = _image(90, 70)
    torch.testing.assert_close(ours(img), by_hand(img), rtol=0, atol=1e-6)


def test_to_pil_lays_out_channels_clips_floats_and_names_bad_input():
    from attnviz.data.sources import to_pil

    grey = torch.linspace(-0.5, 1.5, 15).reshape(1, 3, 5)  # (1, H, W): out of [0, 1] on purpose
    img = to_pil(grey)
    assert img.mode == "L" and img.size == (5, 3)
    px = np.asarray(img)
    assert px[0, 0] == 0 and px[-1, -1] == 255  # clipped, not wrapped
    np.testing.assert_array_equal(px, np.clip(np.round(grey[0].numpy() * 255), 0, 255))
    rgba = to_pil(torch.rand(4, 3, 5))
    assert rgba.mode == "RGBA" and rgba.size == (5, 3)
    two_channel = torch.rand(2, 3, 5)  # not an image layout: left as (2, 3, 5), not permuted
    with pytest.raises(TypeError):
        to_pil(two_channel)
    flat = to_pil(torch.full((3, 5), 0.5))  # a 2-D map whose height is 3 is not (C, H, W)
    assert flat.mode == "L" and flat.size == (5, 3)
    hwc = to_pil(np.full((3, 5, 1), 1.0))  # HxWx1 float array
    assert hwc.mode == "L" and np.asarray(hwc).max() == 255
    with pytest.raises(
        TypeError, match=r"^expected a PIL image, a uint8 array or a tensor, got list$"
    ):
        to_pil([1, 2])


def test_data_configs_keep_crop_pct_and_two_value_input_sizes():
    from timm.data import create_transform

    two = {"input_size": (40, 56), "interpolation": "bilinear", "mean": MEAN, "std": STD,
           "crop_pct": 0.5}  # fmt: skip
    ours = preprocess_for(two)
    assert ours.config["input_size"] == (3, 40, 56) and ours.config["crop_pct"] == 0.5
    reference = create_transform(**{**two, "input_size": (3, 40, 56)}, is_training=False)
    img = _image(90, 70)
    torch.testing.assert_close(ours(img), reference(img), rtol=0, atol=0)
    one_px = preprocess_for({**two, "input_size": (3, 1, 1), "crop_pct": 1.0})
    assert one_px(img).shape == (3, 1, 1)  # 1 px is a valid side


def test_split_needs_a_to_tensor_step_and_keeps_no_geometry_without_one():
    from attnviz.data.preprocess import PreprocessError, _split

    tensor_only = _split(T.Compose([T.ToTensor()]), {})
    assert tensor_only.view(_image(4, 3)).size == (4, 3)  # the identity geometry
    alone = _split(T.ToTensor(), {})  # a single transform, not a Compose
    assert alone(_image(4, 3)).shape == (3, 3, 4)
    with pytest.raises(PreprocessError, match=r"^cannot find the to-tensor step in "):
        _split(T.Compose([T.CenterCrop(2)]), {})


def test_what_preprocess_for_takes_is_told_apart_by_its_attributes():
    from attnviz.data.preprocess import PreprocessError

    fields = {"input_size": (3, 40, 56), "interpolation": "bilinear", "mean": MEAN, "std": STD}
    with_meta = preprocess_for(SimpleNamespace(meta={}, **fields))  # a config object with meta
    assert with_meta.input_size == (40, 56)
    compose = T.Compose([T.Resize(8), T.ToTensor()])  # has .transforms, is no weights enum
    plain = preprocess_for(compose)
    assert plain.geometry is None and plain(_image(16, 8)).shape == (3, 8, 16)
    with pytest.raises(PreprocessError) as info:
        preprocess_for(None)
    assert str(info.value) == (
        "images given as files or PIL images need preprocessing: pass preprocess= a model "
        "with a timm pretrained_cfg, a PreprocessConfig (from attnviz.load_model), a timm "
        "data-config dict, a torchvision weights enum, or a callable PIL image -> tensor"
    )
