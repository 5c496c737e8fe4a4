"""Heatmaps blended over images with an OpenCV colormap (viridis by default; the HTML viewer
and the widgets use it, matplotlib figures draw maps with :func:`._style.draw_overlay`).

``overlay(image, heatmap)``:

1. the heatmap (any HxW float array, e.g. an attention map on a coarse grid) is upsampled
   to the image size with ``cv2.resize(..., interpolation=cv2.INTER_LINEAR)``;
2. it is normalised to [0, 1] by ``(h - vmin) / (vmax - vmin)``, with ``vmin``/``vmax`` the
   heatmap's own min and max unless given (a constant map becomes 0), values clipped to [0, 1];
3. scaled to uint8 (round(255 * h)) and coloured with ``cv2.applyColorMap`` (BGR -> RGB);
4. blended: ``round((1 - alpha) * image + alpha * coloured)`` as uint8 HxWx3.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from ..analysis.query_maps import upsample

__all__ = ["COLORMAPS", "colorize", "normalise", "overlay", "to_rgb_uint8", "upsample"]

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "turbo": cv2.COLORMAP_TURBO,
    "parula": cv2.COLORMAP_PARULA,
}


def to_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """An HxWx3 uint8 array from a PIL image or an HxW / HxWx3 / HxWx4 array."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image, got shape {arr.shape}")
    arr = arr[:, :, :3]
    if arr.dtype != np.uint8:
        scale = 255.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 1.0
        arr = np.clip(np.round(arr.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def normalise(heatmap: np.ndarray, vmin: float | None = None, vmax: float | None = None):
    """(h - vmin) / (vmax - vmin) clipped to [0, 1]; min/max of the map unless given."""
    h = np.asarray(heatmap, dtype=np.float64)
    lo = float(np.nanmin(h)) if vmin is None else float(vmin)
    hi = float(np.nanmax(h)) if vmax is None else float(vmax)
    if not hi > lo:
        return np.zeros_like(h)
    return np.clip((h - lo) / (hi - lo), 0.0, 1.0)


def colorize(heatmap01: np.ndarray, colormap: str = "viridis") -> np.ndarray:
    """An HxW map in [0, 1] as HxWx3 RGB uint8 through an OpenCV colormap."""
    try:
        cmap = COLORMAPS[colormap]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; valid: {sorted(COLORMAPS)}") from None
    u8 = np.round(np.asarray(heatmap01, dtype=np.float64) * 255.0).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cmap), cv2.COLOR_BGR2RGB)


def overlay(
    image: np.ndarray | Image.Image,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    colormap: str = "viridis",
    *,
    vmin: float | None = None,
    vmax: float | None = None,
) -> np.ndarray:
    """Blend ``heatmap`` (upsampled, normalised, coloured; see the module doc) over ``image``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError("alpha must be in [0, 1]")
    img = to_rgb_uint8(image)
    h = upsample(heatmap, img.shape[:2])
    coloured = colorize(normalise(h, vmin, vmax), colormap)
    out = (1.0 - alpha) * img.astype(np.float64) + alpha * coloured.astype(np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)
