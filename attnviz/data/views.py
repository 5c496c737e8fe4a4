"""The SKNet paper's object-scale views (Li et al. 2019, Sec. 4.4, Fig. 3).

1.0x view: the model's own evaluation view (:func:`attnviz.data.preprocess.preprocess_for`:
resize the shorter side, centre crop). s-times view (s > 1): centre crop of
``round(H / s) x round(W / s)`` of the 1.0x view, resized back to ``H x W`` with the model's
interpolation, so an object covers s times as many pixels per side. Every view then goes
through the same to-tensor and normalisation steps as the model's inputs (the paper's
protocol: :func:`scale_views`).

That protocol upsamples every zoom view, so a change with scale mixes object scale with lost
resolution. :func:`zoom_views` crops each zoom view from the ORIGINAL image's pixels instead
(resized once; :class:`ZoomGeometry` records the box and the upsampling factor), and
:func:`resolution_control` makes the control for a view that needed upsampling: the 1.0x view
resized down by the same factor and back up, with no zoom.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .preprocess import EvalTransform, preprocess_for

__all__ = [
    "ZoomGeometry",
    "resolution_control",
    "scale_views",
    "scale_views_pil",
    "view_box",
    "zoom_geometry",
    "zoom_view",
    "zoom_views",
]


def zoom_view(view: Image.Image, scale: float, transform: EvalTransform) -> Image.Image:
    """The s-times view of a 1.0x view: centre crop round(size / s), resize back to size."""
    if not scale >= 1.0 or scale == float("inf"):
        raise ValueError(f"view scales must be finite and >= 1.0, got {scale}")
    if scale == 1.0:
        return view
    h, w = transform.input_size
    crop = TF.center_crop(view, [max(1, round(h / scale)), max(1, round(w / scale))])
    mode = InterpolationMode(transform.interpolation)
    return TF.resize(crop, [h, w], interpolation=mode, antialias=True)


def scale_views_pil(image: Image.Image, preprocess: Any, scales: Sequence[float]) -> list:
    """The views of one RGB image at each scale, as PIL images (before normalisation)."""
    transform = preprocess_for(preprocess)
    base = transform.view(image)
    return [zoom_view(base, float(s), transform) for s in scales]


def scale_views(image: Image.Image, preprocess: Any, scales: Sequence[float]) -> Tensor:
    """Model inputs of one image at each scale: float32 (S, 3, H, W)."""
    transform = preprocess_for(preprocess)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.stack([transform.tensor(v) for v in scale_views_pil(image, transform, scales)])


# --------------------------------------------------------------------------- from the original
_PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
    "lanczos": Image.LANCZOS,
}


def pil_filter(transform: EvalTransform) -> int:
    """The PIL resampling filter of the model's interpolation."""
    return _PIL_FILTERS[transform.interpolation]


@dataclass(frozen=True)
class ZoomGeometry:
    """Where a view comes from in the original image.

    ``box``: (x0, y0, x1, y1) in original pixel coordinates (floats); ``upsampling``: input
    size over the crop side in original pixels (the larger of the two axes); > 1 means the
    view has fewer real pixels than the model input (the crop side over the input size is
    ``1 / upsampling``).
    """

    scale: float
    box: tuple[float, float, float, float]
    upsampling: float

    def as_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "box": list(self.box), "upsampling": self.upsampling}


def view_box(size: tuple[int, int], transform: EvalTransform) -> tuple[float, float, float, float]:
    """The model's 1.0x view of an image of ``size`` (W, H) in original pixel coordinates.

    Follows the transform's own geometric steps (torchvision ``Resize`` with torchvision's
    output-size rule, ``CenterCrop`` with its ``round((h - crop) / 2)`` offsets); raises
    ValueError for steps it does not know (then :func:`zoom_views` falls back to crops of the
    1.0x view)."""
    from torchvision import transforms as T
    from torchvision.transforms.functional import _compute_resized_output_size

    geometry = transform.geometry
    if geometry is None:
        raise ValueError("the preprocessing has no known geometric view")
    steps = list(getattr(geometry, "transforms", [geometry]))
    w, h = float(size[0]), float(size[1])
    x0, y0, sx, sy = 0.0, 0.0, 1.0, 1.0  # original = (x0, y0) + current * (sx, sy)
    cw, ch = int(size[0]), int(size[1])
    for step in steps:
        if isinstance(step, T.Resize):
            req = step.size if isinstance(step.size, (list, tuple)) else [step.size]
            nh, nw = _compute_resized_output_size((ch, cw), list(req), step.max_size)
            sx, sy = sx * cw / nw, sy * ch / nh
            cw, ch = nw, nh
        elif isinstance(step, T.CenterCrop):
            th, tw = step.size if len(step.size) == 2 else (step.size[0], step.size[0])
            if th > ch or tw > cw:
                raise ValueError("the centre crop pads the image")
            top, left = int(round((ch - th) / 2.0)), int(round((cw - tw) / 2.0))
            x0, y0 = x0 + left * sx, y0 + top * sy
            cw, ch = tw, th
        elif type(step).__name__ == "_identity" or step is None:
            continue
        else:
            raise ValueError(f"unknown geometric step {type(step).__name__}")
    del w, h
    return (x0, y0, x0 + cw * sx, y0 + ch * sy)


def zoom_geometry(
    size: tuple[int, int], transform: EvalTransform, scales: Sequence[float]
) -> list[ZoomGeometry]:
    """Per scale s: the central 1/s of the 1.0x view, in original pixels, and its upsampling."""
    x0, y0, x1, y1 = view_box(size, transform)
    h, w = transform.input_size
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    out = []
    for s in scales:
        s = float(s)
        if not (math.isfinite(s) and s >= 1.0):
            raise ValueError(f"view scales must be finite and >= 1.0, got {s}")
        box = (cx - bw / (2 * s), cy - bh / (2 * s), cx + bw / (2 * s), cy + bh / (2 * s))
        up = max(w / (bw / s), h / (bh / s))
        out.append(ZoomGeometry(s, box, up))
    return out


def zoom_views(
    image: Image.Image, preprocess: Any, scales: Sequence[float]
) -> tuple[list[Image.Image], list[ZoomGeometry]]:
    """The views of ``image`` at each scale, cropped from the ORIGINAL pixels.

    1.0x: the model's own evaluation view (``transform.view``). s > 1: the central 1/s of the
    1.0x view mapped back to the original image's coordinates and resized once to the input
    size with the model's filter (``PIL.Image.resize(size, filter, box=...)``), so a large
    original gives sharp zoom views. Returns the views and their :class:`ZoomGeometry`.
    When the transform's geometry is not understood (:func:`view_box`) the zoom views are
    crops of the 1.0x view (:func:`zoom_view`) and the geometry is relative to that view.
    """
    transform = preprocess_for(preprocess)
    if image.mode != "RGB":
        image = image.convert("RGB")
    h, w = transform.input_size
    base = transform.view(image)
    try:
        geos = zoom_geometry(image.size, transform, scales)
    except ValueError:
        geos = [ZoomGeometry(float(s), (math.nan,) * 4, float(s)) for s in scales]
        return [zoom_view(base, float(s), transform) for s in scales], geos
    views = []
    for g in geos:
        if g.scale == 1.0:
            views.append(base)
        else:
            views.append(image.resize((w, h), pil_filter(transform), box=g.box))
    return views, geos


def resolution_control(
    view: Image.Image, upsampling: float, transform: EvalTransform
) -> Image.Image:
    """The 1.0x ``view`` degraded to the resolution of a view upsampled ``upsampling`` times:
    resized down to ``round(side / upsampling)`` and back up (model filter), no zoom.
    ``upsampling <= 1`` returns the view unchanged."""
    if not math.isfinite(upsampling) or upsampling <= 1.0 + 1e-9:
        return view
    w, h = view.size
    small = (max(1, round(w / upsampling)), max(1, round(h / upsampling)))
    f = pil_filter(transform)
    return view.resize(small, f).resize((w, h), f)
