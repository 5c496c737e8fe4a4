"""``attnviz.preprocess_for``: the one evaluation transform equals timm's and torchvision's own."""

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.data import create_transform, resolve_data_config
from torchvision import transforms as T

from attnviz.data.preprocess import EvalTransform, PreprocessError, preprocess_for
from attnviz.models import PreprocessConfig

TIMM_MODELS = ("seresnet50", "eca_nfnet_l0", "gcresnet50t", "skresnet18", "efficientnet_b0")
SIZES = ((500, 375), (375, 500), (64, 64))  # (W, H): landscape, portrait, small square


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("name", TIMM_MODELS)
def test_timm_configs_equal_timm_create_transform(name):
    cfg = timm.get_pretrained_cfg(name).to_dict()
    data_config = resolve_data_config({}, pretrained_cfg=cfg)
    reference = create_transform(**data_config)
    ours = preprocess_for(data_config)
    for w, h in SIZES:
        img = _image(w, h)
        expected = reference(img)
        got = ours(img)
        assert got.shape == expected.shape == (3, *data_config["input_size"][1:])
        assert torch.equal(got, expected), (name, w, h)


def test_timm_model_uses_its_own_config_and_floors_the_resize():
    model = timm.create_model("skresnet18", pretrained=False)
    reference = create_transform(**resolve_data_config({}, model=model))
    got = preprocess_for(model)
    img = _image(500, 375)
    assert torch.equal(got(img), reference(img))
    # seresnet50: 224 / 0.875 = 256; timm floors size / crop_pct (seresnet50 has crop_pct
    # 0.95: floor(224 / 0.95) = 235, not round() = 236)
    cfg = resolve_data_config({}, pretrained_cfg=timm.get_pretrained_cfg("seresnet50").to_dict())
    view = preprocess_for(cfg).view(_image(500, 375))
    assert view.size == (224, 224)
    resized = preprocess_for(cfg).geometry.transforms[0](_image(500, 375))
    assert min(resized.size) == int(224 / cfg["crop_pct"]) == 235


def test_a_vit_built_for_another_size_gets_inputs_of_that_size():
    """timm keeps the 224 px pretrained_cfg of the name; the patch embedding accepts only the
    size the model was built for, so that size (H, W) wins (non-square, to catch H/W order)."""
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=(64, 96)).eval()
    t = preprocess_for(vit)
    x = t(Image.new("RGB", (150, 100), (10, 200, 30)))
    assert tuple(x.shape) == (3, 64, 96)
    with torch.no_grad():
        vit(x[None])  # the model takes it
    cfg = resolve_data_config({}, model=vit)
    cfg["input_size"] = (3, 64, 96)
    torch.testing.assert_close(
        x, create_transform(**cfg)(Image.new("RGB", (150, 100), (10, 200, 30)))
    )
    # a model that takes any size keeps its config
    dyn = timm.create_model("vit_tiny_patch16_224", pretrained=False, dynamic_img_size=True)
    assert tuple(preprocess_for(dyn)(Image.new("RGB", (300, 300))).shape) == (3, 224, 224)


def test_preprocess_config_with_crop_pct_1_keeps_the_aspect_ratio():
    cfg = PreprocessConfig((3, 64, 64), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bilinear", 1.0)
    t = preprocess_for(cfg)
    img = _image(128, 64)  # 2:1
    # independent reference: shorter side to 64, centre crop, normalise (torchvision steps)
    ref = T.Compose([T.Resize(64), T.CenterCrop(64), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    assert torch.allclose(t(img), ref(img), atol=1e-6)
    assert t.view(img).size == (64, 64)  # cropped, not squashed
    squashed = T.Compose([T.Resize((64, 64)), T.ToTensor(), T.Normalize(cfg.mean, cfg.std)])
    assert not torch.allclose(t(img), squashed(img), atol=1e-3)


def test_torchvision_weights_enum_matches_its_transforms():
    from torchvision.models import ResNet50_Weights

    weights = ResNet50_Weights.IMAGENET1K_V2  # resize 232, crop 224: not 224 / crop_pct
    reference = weights.transforms()
    ours = preprocess_for(weights)
    for w, h in SIZES:
        img = _image(w, h, seed=1)
        assert torch.allclose(ours(img), reference(img), atol=1e-6)


def test_bundled_name_and_callable_and_errors():
    t = preprocess_for("sk_tiny")
    assert isinstance(t, EvalTransform) and t.input_size == (64, 64)
    fn = preprocess_for(lambda img: torch.zeros(3, 8, 8))
    assert fn(_image(10, 10)).shape == (3, 8, 8)
    with pytest.raises(PreprocessError, match="geometric view"):
        fn.view(_image(10, 10))
    with pytest.raises(PreprocessError, match="preprocess="):
        preprocess_for(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(PreprocessError, match="not a bundled model"):
        preprocess_for("no_such_model")
    with pytest.raises(PreprocessError, match="input_size"):
        preprocess_for({"mean": (0, 0, 0)})
