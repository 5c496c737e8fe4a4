"""The SKNet paper's object-scale views (Li et al. 2019, Sec. 4.4, Fig. 3).

1.0x view: resize the shorter side to ``round(size / crop_pct)`` and centre-crop ``size``
(the model's own evaluation transform). s-times view (s > 1): centre-crop ``round(size / s)``
of the 1.0x view and resize it back to ``size``, so an object covers s times as many pixels
per side. Resizing uses the model's interpolation; the views are then normalised with its
mean / std. The config is anything with ``input_size``, ``mean``, ``std``, ``interpolation``
and ``crop_pct`` as attributes (attnviz's ``PreprocessConfig``) or keys (timm's
``resolve_data_config`` dict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


@dataclass(frozen=True)
class ViewSpec:
    """What the views need from a preprocessing config, normalised."""

    size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_pct: float

    @property
    def resize_shorter(self) -> int:
        """Shorter side after the first resize: round(size / crop_pct)."""
        return int(round(max(self.size) / self.crop_pct))

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": [3, *self.size],
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


def _field(config: Any, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def view_spec(config: Any) -> ViewSpec:
    """A :class:`ViewSpec` from a PreprocessConfig, a timm data-config dict or a ViewSpec."""
    if isinstance(config, ViewSpec):
        return config
    input_size = _field(config, "input_size")
    if input_size is None:
        raise ValueError(f"preprocessing config {config!r} has no input_size")
    input_size = tuple(int(v) for v in input_size)
    size = input_size[-2:] if len(input_size) >= 2 else (input_size[0], input_size[0])
    interpolation = str(_field(config, "interpolation", "bilinear") or "bilinear").lower()
    if interpolation not in _PIL_RESAMPLE:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {sorted(_PIL_RESAMPLE)}")
    crop_pct = float(_field(config, "crop_pct", 1.0) or 1.0)
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    mean = tuple(float(v) for v in _field(config, "mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in _field(config, "std", (0.229, 0.224, 0.225)))
    return ViewSpec((int(size[0]), int(size[1])), mean, std, interpolation, crop_pct)


def _centre_crop(img: Image.Image, h: int, w: int) -> Image.Image:
    width, height = img.size
    left = int(round((width - w) / 2.0))
    top = int(round((height - h) / 2.0))
    return img.crop((left, top, left + w, top + h))


def base_view(image: Image.Image, config: Any) -> Image.Image:
    """The 1.0x view: shorter side to round(size / crop_pct), centre crop to size."""
    spec = view_spec(config)
    resample = _PIL_RESAMPLE[spec.interpolation]
    w, h = image.size
    short = spec.resize_shorter
    if w <= h:
        new_w, new_h = short, max(1, int(round(h * short / w)))
    else:
        new_w, new_h = max(1, int(round(w * short / h))), short
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), resample)
    return _centre_crop(image, spec.size[0], spec.size[1])


def zoom_view(view: Image.Image, scale: float, config: Any) -> Image.Image:
    """The s-times view of a 1.0x view: centre crop round(size / s), resize back to size."""
    spec = view_spec(config)
    if scale < 1.0:
        raise ValueError(f"view scales must be >= 1.0, got {scale}")
    if scale == 1.0:
        return view
    h, w = spec.size
    ch, cw = max(1, int(round(h / scale))), max(1, int(round(w / scale)))
    crop = _centre_crop(view, ch, cw)
    return crop.resize((w, h), _PIL_RESAMPLE[spec.interpolation])


def scale_views_pil(image: Image.Image, config: Any, scales: Sequence[float]) -> list[Image.Image]:
    """The views of one RGB image at each scale, as PIL images (before normalisation)."""
    base = base_view(image, config)
    return [zoom_view(base, float(s), config) for s in scales]


def normalise(view: Image.Image, config: Any) -> Tensor:
    """uint8 RGB PIL image -> float32 (3, H, W) tensor, (x / 255 - mean) / std."""
    spec = view_spec(config)
    arr = np.asarray(view, dtype=np.float32) / 255.0
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    arr = (arr - mean) / std
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def scale_views(image: Image.Image, config: Any, scales: Sequence[float]) -> Tensor:
    """Normalised views of one image at each scale: float32 (S, 3, H, W)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.stack([normalise(v, config) for v in scale_views_pil(image, config, scales)])
