"""Localisation measures of a map against a known object mask (issue 21, item 5).

Where the object is known (generated scenes: :meth:`attnviz.data.ShapesDataset.mask`), a map
that "looks at the object" can be scored without another map to compare with:

* **mass share**: the share of the map's mass on the object,
  ``sum_p m_p c_p / sum_p m_p`` with ``c`` the object's coverage in [0, 1] per pixel. A map
  spread evenly over the image scores the object's area ``mean_p c_p`` (its chance level);
  a map with negative values (logits) is shifted to a minimum of 0 first; an all-zero map
  gives NaN.
* **pointing game** (Zhang et al., "Top-down neural attention by excitation backprop",
  ECCV 2016): a hit when the map's maximum lies on the object (coverage >= 0.5 at the
  first pixel holding the maximum); NaN for a constant map. A random point hits with
  probability equal to the object's area.

Both are computed on maps at the input size (each map upsampled bilinearly, as the figures
show it) against the coverage mask of the view the model saw.
"""

from __future__ import annotations

import numpy as np

__all__ = ["mask_share", "pointing_hit"]


def mask_share(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of each map's mass on the object: (..., H, W) maps, (H, W) coverage -> (...)."""
    m = np.asarray(maps, dtype=np.float64)
    c = np.asarray(mask, dtype=np.float64)
    if m.shape[-2:] != c.shape:
        raise ValueError(f"map grid {m.shape[-2:]} differs from the mask's {c.shape}")
    low = m.min(axis=(-2, -1), keepdims=True)
    m = np.where(low < 0, m - low, m)
    total = m.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (m * c).sum(axis=(-2, -1)) / total, np.nan)


def pointing_hit(maps: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """1.0 where a map's maximum lies on the object (coverage >= ``threshold``), else 0.0;
    NaN for a constant map. (..., H, W) maps, (H, W) coverage -> (...)."""
    m = np.asarray(maps, dtype=np.float64)
    c = np.asarray(mask, dtype=np.float64)
    if m.shape[-2:] != c.shape:
        raise ValueError(f"map grid {m.shape[-2:]} differs from the mask's {c.shape}")
    flat = m.reshape(*m.shape[:-2], -1)
    where = flat.argmax(axis=-1)
    hit = (c.ravel()[where] >= threshold).astype(np.float64)
    constant = flat.max(axis=-1) == flat.min(axis=-1)
    return np.where(constant, np.nan, hit)
