"""Content controls of the native scale sweep: views of a generated scene that change one
property of the larger view without making the object larger (issue 21, item 3).

A native s-times view (:func:`attnviz.data.shapes.render_scales`) changes the object's size,
and with it its area (s^2 times), its perimeter (s times), the image's global mean and
contrast, and how much background is left. Each control here keeps the scene's draws
(background, colours, pose, jitter, pixel noise) and changes only what its entry says, so a
paired comparison D(control) - D(1.0x) against D(s) - D(1.0x) tells how much of the change
with "scale" that property alone reproduces. ``s`` (the target) is the largest scale swept.

=====================  ======================================================================
``copies``             round(s^2) copies of the 1.0x object (4 at 2.0x): the s-times view's
                       object area at the 1.0x size; on a grid with centres 1.15 object
                       sizes apart (the copies do not touch) about the object's centre,
                       shifted into the frame where they would cross the border
``copies_perimeter``   round(s) copies in a row (2 at 2.0x): the s-times view's perimeter
``constant_area``      the s-times object hollowed out to the 1.0x object's area: the object
                       minus a concentric copy shrunk by f, f found by bisection on the
                       pixel coverage (size and outline of the s-times object, area of the
                       1.0x object)
``contrast_matched``   the 1.0x view with its global mean and standard deviation (over all
                       pixels and channels) set to those of the s-times view; no size change
``background_swap``    the 1.0x object on another background (drawn from the generator seeded
                       ``(seed, index, 1)``, redrawn until its value differs from the object's
                       by >= 0.3, the dataset's own contrast rule)
=====================  ======================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .shapes import (
    SCENE_CONTROLS,
    SceneDraws,
    SceneObject,
    ShapesDataset,
    _background,
    compose,
    finish,
    scene_draws,
)

__all__ = ["CONTENT_CONTROLS", "ControlView", "content_control_text", "render_controls"]


@dataclass
class ControlView:
    """One control view: uint8 image (n, n, 3), object coverage (n, n), and facts about it
    (``objects``: how many objects; ``area_ratio``: its object coverage over the 1.0x
    object's; ``hollow``: the f of ``constant_area``)."""

    image: np.ndarray
    mask: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


_PITCH = 1.15  # distance of neighbouring copies' centres, in 1.0x object sizes


def _grid(d: SceneDraws, k: int, cols: int) -> list[SceneObject]:
    """k copies of the 1.0x object on a grid of ``cols`` columns, cells 1.15 objects wide
    (the copies do not touch), centred on the object's centre and shifted into the frame."""
    rows = math.ceil(k / cols)
    cell = _PITCH * d.side
    centres = [
        (d.cx + (j - (cols - 1) / 2) * cell, d.cy + (i - (rows - 1) / 2) * cell)
        for i in range(rows)
        for j in range(cols)
    ][:k]

    def shift(values: list[float]) -> float:
        lo, hi = min(values) - d.side / 2, max(values) + d.side / 2
        if hi - lo > d.n:
            raise ValueError(f"{k} copies of a {d.side:.1f} px object do not fit {d.n} px")
        return max(0.0, -lo) - max(0.0, hi - d.n)

    dx, dy = shift([c[0] for c in centres]), shift([c[1] for c in centres])
    return [SceneObject(x + dx, y + dy, 1.0) for x, y in centres]


def _copies(d: SceneDraws, s: float, ref_mean: float, per_row: bool) -> ControlView:
    k = max(1, round(s if per_row else s * s))
    cols = k if per_row else math.ceil(math.sqrt(k))
    img, alpha = compose(d, _grid(d, k, cols))
    return ControlView(finish(d, img, ref_mean), alpha, {"objects": k})


def _constant_area(d: SceneDraws, s: float, ref_mean: float) -> ControlView:
    target = float(compose(d, [SceneObject(d.cx, d.cy, 1.0)])[1].sum())
    if s <= 1.0:
        img, alpha = compose(d, [SceneObject(d.cx, d.cy, s)])
        return ControlView(finish(d, img, ref_mean), alpha, {"objects": 1, "hollow": 0.0})

    def area(f: float) -> float:
        return float(compose(d, [SceneObject(d.cx, d.cy, s, f)])[1].sum())

    lo, hi = 0.0, 1.0  # area falls as f grows (a thinner outline)
    for _ in range(30):
        mid = (lo + hi) / 2
        if area(mid) > target:
            lo = mid
        else:
            hi = mid
    f = lo if abs(area(lo) - target) <= abs(area(hi) - target) else hi
    img, alpha = compose(d, [SceneObject(d.cx, d.cy, s, f)])
    return ControlView(finish(d, img, ref_mean), alpha, {"objects": 1, "hollow": f})


def _contrast_matched(view_1: np.ndarray, view_s: np.ndarray) -> np.ndarray:
    """``view_1`` with its global mean and std (all pixels and channels) set to ``view_s``'s:
    an affine map of its values, clipped to 0..255 and rounded; gain and offset are refined
    (40 steps) until the clipped, rounded result has the target mean and std as far as the
    clipping allows. The last step is kept unless the clipping made the refinement diverge: a
    step more than half a grey level (|mean error| + |std error|) nearer the target then wins."""
    a, b = view_1.astype(np.float64), view_s.astype(np.float64)
    sa = a.std()
    z = (a - a.mean()) / sa if sa > 0 else a - a.mean()
    gain, offset = b.std(), b.mean()
    best, best_error = None, math.inf
    for step in range(41):
        out = np.clip(np.rint(z * gain + offset), 0, 255)
        error = abs(out.mean() - b.mean()) + abs(out.std() - b.std())
        if error < best_error:
            best, best_error = out, error
        if step == 40:
            break
        if out.std() > 0:
            gain *= b.std() / out.std()
        offset += b.mean() - out.mean()
    return (best if error > best_error + 0.5 else out).astype(np.uint8)


def _background_swap(ds: ShapesDataset, index: int, d: SceneDraws) -> ControlView:
    rng = np.random.default_rng([ds.seed, index, 1])
    for _ in range(100):
        bg, v_bg = _background(rng, d.n)
        if abs(v_bg - d.v_obj) >= 0.3:
            break
    img, alpha = compose(d, [SceneObject(d.cx, d.cy, 1.0)], background=bg)
    return ControlView(finish(d, img, float(img.mean())), alpha, {"objects": 1})


@dataclass(frozen=True)
class _Scene:
    """What every renderer needs: the sample, its draws, the target scale, the contrast
    reference and the 1.0x view with its coverage."""

    dataset: ShapesDataset
    index: int
    d: SceneDraws
    scale: float
    ref_mean: Any
    view_1: np.ndarray
    mask_1: np.ndarray


def _contrast_view(sc: _Scene) -> ControlView:
    big = compose(sc.d, [SceneObject(sc.d.cx, sc.d.cy, sc.scale)])[0]
    matched = _contrast_matched(sc.view_1, finish(sc.d, big, sc.ref_mean))
    return ControlView(matched, sc.mask_1, {"objects": 1})


_RENDERERS: dict[str, Callable[[_Scene], ControlView]] = {
    "copies": lambda sc: _copies(sc.d, sc.scale, sc.ref_mean, per_row=False),
    "copies_perimeter": lambda sc: _copies(sc.d, sc.scale, sc.ref_mean, per_row=True),
    "constant_area": lambda sc: _constant_area(sc.d, sc.scale, sc.ref_mean),
    "contrast_matched": _contrast_view,
    "background_swap": lambda sc: _background_swap(sc.dataset, sc.index, sc.d),
}
CONTENT_CONTROLS: dict[str, str] = {
    "copies": "round(s^2) copies of the 1.0x object (the s-times object's area)",
    "copies_perimeter": "round(s) copies of the 1.0x object (the s-times object's perimeter)",
    "constant_area": "the s-times object hollowed out to the 1.0x object's area",
    "contrast_matched": "the 1.0x view with the s-times view's global mean and std",
    "background_swap": "the 1.0x object on another background",
}


def content_control_text(name: str, scale: float) -> str:
    """The one-line description of control ``name`` with ``s`` replaced by ``scale``."""
    k_area, k_per = max(1, round(scale * scale)), max(1, round(scale))
    sx = f"{scale:.1f}x" if float(scale).is_integer() else f"{scale:g}x"
    text = CONTENT_CONTROLS[name].replace("s-times", sx)
    return text.replace("round(s^2)", str(k_area)).replace("round(s)", str(k_per))


def render_controls(
    dataset: ShapesDataset,
    index: int,
    controls: Sequence[str],
    scale: float,
) -> list[ControlView]:
    """The control views of sample ``index`` against its ``scale``-times view, in the order of
    ``controls`` (names of :data:`CONTENT_CONTROLS`)."""
    unknown = [c for c in controls if c not in CONTENT_CONTROLS]
    if unknown:
        raise ValueError(f"unknown content control(s) {unknown}; valid: {list(CONTENT_CONTROLS)}")
    if not (math.isfinite(scale) and scale >= 1.0):
        raise ValueError(f"the control scale must be a finite number >= 1, got {scale}")
    d = scene_draws(dataset, index)
    one = compose(d, [SceneObject(d.cx, d.cy, 1.0)])
    ref_mean = one[0].mean()  # as render_scales: uncovered pixels equal the native views'
    area_1 = float(one[1].sum())
    one_view = finish(d, one[0], ref_mean)
    scene = _Scene(dataset, index, d, float(scale), ref_mean, one_view, one[1])
    out = []
    for name in controls:
        view = _RENDERERS[name](scene)
        view.info["area_ratio"] = float(view.mask.sum()) / area_1 if area_1 > 0 else math.nan
        out.append(view)
    return out


SCENE_CONTROLS.update(names=CONTENT_CONTROLS, render=render_controls)
