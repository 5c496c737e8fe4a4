"""One source of evaluation preprocessing: :func:`preprocess_for`.

Every analysis, the scale views and the widgets prepare images with the transform returned
here. It is built from timm's and torchvision's own transforms, never from resize arithmetic
of attnviz's own:

* a timm model, a timm data-config dict, or a :class:`~attnviz.models.PreprocessConfig`:
  ``timm.data.create_transform(**resolve_data_config(...))`` (resize the shorter side to
  ``floor(size / crop_pct)``, centre crop, to tensor, normalise);
* a torchvision weights enum (``ResNet50_Weights.DEFAULT``): the same steps as its
  ``transforms()`` (``Resize(resize_size)``, ``CenterCrop(crop_size)``, normalise);
* a bundled model name (``"sk_tiny"``): the preprocessing in its manifest entry;
* a callable PIL image -> tensor: used as it is (no separate geometric view).

The result is an :class:`EvalTransform`: calling it maps a PIL image to a float (3, H, W)
tensor; ``view(image)`` gives the resized and cropped PIL image the model sees (before
``to_tensor`` and normalisation), which the scale views and the overlays use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor

__all__ = ["EvalTransform", "PreprocessError", "preprocess_for"]

_INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
_TENSOR_STEPS = ("ToTensor", "MaybeToTensor", "PILToTensor", "MaybePILToTensor")


class PreprocessError(ValueError):
    """No evaluation transform can be made from what was given (not an image problem)."""


@dataclass(frozen=True)
class EvalTransform:
    """A model's evaluation transform, split into its geometric part and its tensor part.

    ``geometry``: PIL -> PIL (resize, centre crop), ``None`` when unknown (a user callable);
    ``tensor``: PIL -> normalised (3, H, W) float tensor. ``config``: the data config
    (input_size, interpolation, mean, std, crop_pct, crop_mode) as far as it is known.
    """

    geometry: Callable[[Image.Image], Image.Image] | None
    tensor: Callable[[Image.Image], Tensor]
    config: Mapping[str, Any]

    def __call__(self, image: Image.Image) -> Tensor:
        if self.geometry is not None:
            image = self.geometry(image)
        return self.tensor(image)

    def view(self, image: Image.Image) -> Image.Image:
        """The resized and cropped image the model sees (before normalisation)."""
        if self.geometry is None:
            raise PreprocessError(
                "this preprocessing is a plain callable; its geometric view is unknown. Pass a "
                "model, a timm data config or a PreprocessConfig instead"
            )
        return self.geometry(image)

    @property
    def input_size(self) -> tuple[int, int]:
        """(H, W) of the model input."""
        size = self.config.get("input_size")
        if size is None:
            raise PreprocessError("the input size of this preprocessing is unknown")
        return int(size[-2]), int(size[-1])

    @property
    def interpolation(self) -> str:
        return str(self.config.get("interpolation") or "bilinear")

    def as_dict(self) -> dict[str, Any]:
        """The data config, JSON-ready (for manifests)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()}


def _split(compose: Any, config: Mapping[str, Any]) -> EvalTransform:
    """Split a torchvision ``Compose`` at its to-tensor step."""
    from torchvision import transforms as T

    steps = list(getattr(compose, "transforms", [compose]))
    cut = next((i for i, s in enumerate(steps) if type(s).__name__ in _TENSOR_STEPS), None)
    if cut is None:
        raise PreprocessError(f"cannot find the to-tensor step in {compose!r}")
    geometry = T.Compose(steps[:cut]) if cut else None
    return EvalTransform(geometry or _identity, T.Compose(steps[cut:]), dict(config))


def _identity(image: Image.Image) -> Image.Image:
    return image


def _from_data_config(config: Mapping[str, Any]) -> EvalTransform:
    from timm.data import create_transform, resolve_data_config

    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
    args = {k: config[k] for k in keys if config.get(k) is not None}
    if "input_size" not in args:
        raise PreprocessError(f"preprocessing config {dict(config)!r} has no input_size")
    size = tuple(int(v) for v in args["input_size"])
    if len(size) == 2:
        size = (3, *size)
    if len(size) != 3 or min(size) < 1:
        raise PreprocessError(f"input_size must be (C, H, W) with positive sides, got {size}")
    args["input_size"] = size
    if "interpolation" in args:
        args["interpolation"] = str(args["interpolation"]).lower()
        if args["interpolation"] not in _INTERPOLATIONS:
            raise PreprocessError(
                f"unknown interpolation {config['interpolation']!r}; valid: {_INTERPOLATIONS}"
            )
    if "crop_pct" in config and config["crop_pct"] is not None:
        crop_pct = float(config["crop_pct"])
        if not 0.0 < crop_pct <= 1.0:
            raise PreprocessError(f"crop_pct must be in (0, 1], got {config['crop_pct']}")
        args["crop_pct"] = crop_pct
    resolved = resolve_data_config(args, verbose=False)
    resize = config.get("resize_size")
    if resize:  # a torchvision weights recipe: an explicit resize, not size / crop_pct
        return _torchvision_like(resolved, int(resize))
    return _split(create_transform(**resolved, is_training=False), resolved)


def _torchvision_like(config: Mapping[str, Any], resize: int) -> EvalTransform:
    """torchvision's ``ImageClassification`` steps: resize, centre crop, to tensor, normalise."""
    from torchvision import transforms as T

    mode = T.InterpolationMode(str(config.get("interpolation", "bilinear")))
    h, w = int(config["input_size"][-2]), int(config["input_size"][-1])
    compose = T.Compose(
        [
            T.Resize(resize, interpolation=mode, antialias=True),
            T.CenterCrop((h, w)),
            T.ToTensor(),
            T.Normalize(config["mean"], config["std"]),
        ]
    )
    return _split(compose, {**config, "resize_size": resize})


def _from_weights_enum(weights: Any) -> EvalTransform:
    t = weights.transforms()
    crop, resize = list(t.crop_size), list(t.resize_size)
    config = {
        "input_size": (3, crop[0], crop[-1]),
        "interpolation": t.interpolation.value,
        "mean": tuple(t.mean),
        "std": tuple(t.std),
        "crop_pct": crop[0] / resize[0],
        "crop_mode": "center",
    }
    return _torchvision_like(config, resize[0])


def _config_fields(obj: Any) -> dict[str, Any]:
    keys = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode", "resize_size")
    return {k: getattr(obj, k) for k in keys if getattr(obj, k, None) is not None}


def preprocess_for(model_or_config: Any) -> EvalTransform:
    """The evaluation transform of a model or a preprocessing config (see the module doc)."""
    obj = model_or_config
    if isinstance(obj, EvalTransform):
        return obj
    if obj is None:
        raise PreprocessError(
            "images given as files or PIL images need preprocessing: pass preprocess= a model "
            "with a timm pretrained_cfg, a PreprocessConfig (from attnviz.load_model), a timm "
            "data-config dict, a torchvision weights enum, or a callable PIL image -> tensor"
        )
    if isinstance(obj, str):
        return _from_data_config(_bundled_config(obj))
    if isinstance(obj, Mapping):
        return _from_data_config(obj)
    if hasattr(obj, "transforms") and hasattr(obj, "url") and hasattr(obj, "meta"):
        return _from_weights_enum(obj)  # torchvision WeightsEnum member
    if isinstance(obj, torch.nn.Module):
        if getattr(obj, "pretrained_cfg", None):
            from timm.data import resolve_data_config

            config = resolve_data_config({}, model=obj, verbose=False)
            fixed = _fixed_input_size(obj)
            if fixed is not None and tuple(config["input_size"][1:]) != fixed:
                config = {**config, "input_size": (config["input_size"][0], *fixed)}
            return _from_data_config(config)
        raise PreprocessError(
            f"{type(obj).__name__} carries no preprocessing (no timm pretrained_cfg); pass "
            "preprocess= a PreprocessConfig, a timm data config or a callable"
        )
    if hasattr(obj, "input_size") and hasattr(obj, "mean"):  # PreprocessConfig and alike
        return _from_data_config(_config_fields(obj))
    if callable(obj):
        return EvalTransform(None, obj, {})
    raise PreprocessError(f"cannot make a preprocessing transform from {type(obj).__name__}")


def _fixed_input_size(model: torch.nn.Module) -> tuple[int, int] | None:
    """The (H, W) a timm model was built for when its patch embedding accepts only that size
    (a ViT made with ``img_size=96`` keeps the 224 px ``pretrained_cfg`` of its name)."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None)
    if size is None or not getattr(embed, "strict_img_size", False):
        return None
    if getattr(embed, "dynamic_img_pad", False):
        return None
    return int(size[0]), int(size[1])


def _bundled_config(name: str) -> dict[str, Any]:
    from .assets import read_manifest

    try:
        entry = read_manifest()["models"][name]
    except (OSError, KeyError, ValueError):
        raise PreprocessError(f"{name!r} is not a bundled model with a manifest entry") from None
    return dict(entry["preprocessing"])
