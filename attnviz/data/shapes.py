"""A generated multi-scale shape-and-texture classification dataset.

Every sample is drawn from its own random generator seeded by ``(seed, index)``, so a dataset
is deterministic for a seed, any sample can be drawn on its own, and the dataset with
``n_per_class=k`` is a prefix of the one with a larger ``n_per_class`` (labels cycle through
the classes: sample i has label ``i % num_classes``).

Each image holds one object (10 classes: filled shapes, outlines and two textured shapes) whose
size, the side of the square it is inscribed in over the image side, is uniform in
``scale_range`` (default 0.15-0.75, a 5x span), placed near the centre on a textured background
with colour jitter. Shapes are drawn 2x supersampled and box-filtered (anti-aliased).
"""

from __future__ import annotations

import csv
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

_SS = 2  # supersampling factor for anti-aliased drawing


@dataclass(frozen=True)
class ShapeRecord:
    """What was drawn in one sample. ``box`` = (x0, y0, x1, y1) in pixels, x1/y1 exclusive."""

    index: int
    label: int
    class_name: str
    scale: float
    box: tuple[int, int, int, int]


# --------------------------------------------------------------------------- object masks
# Each painter draws onto an "L" image (255 = object) the object centred at (cx, cy) and
# inscribed in a circle of radius r, rotated by theta; ``rng`` gives shape-specific draws.

Painter = Callable[[ImageDraw.ImageDraw, float, float, float, float], None]


def _polygon(cx: float, cy: float, pts: list[tuple[float, float]], theta: float) -> list:
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _regular(n: int, r: float, offset: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [
        (r * math.cos(offset + 2 * math.pi * k / n), r * math.sin(offset + 2 * math.pi * k / n))
        for k in range(n)
    ]


def _disc(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)


def _ring(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    _disc(d, cx, cy, r, theta)
    ri = 0.55 * r
    d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)


def _square(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    d.polygon(_polygon(cx, cy, _regular(4, r, math.pi / 4), theta), fill=255)


def _frame(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    _square(d, cx, cy, r, theta)
    d.polygon(_polygon(cx, cy, _regular(4, 0.5 * r, math.pi / 4), theta), fill=0)


def _triangle(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    d.polygon(_polygon(cx, cy, _regular(3, r), theta), fill=255)


def _cross(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    a, b = 0.9 * r, 0.3 * r
    for pts in ([(-a, -b), (a, -b), (a, b), (-a, b)], [(-b, -a), (b, -a), (b, a), (-b, a)]):
        d.polygon(_polygon(cx, cy, pts, theta), fill=255)


def _star(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    outer, inner = _regular(5, r), _regular(5, 0.42 * r, -math.pi / 2 + math.pi / 5)
    pts = [p for pair in zip(outer, inner) for p in pair]
    d.polygon(_polygon(cx, cy, pts, theta), fill=255)


def _crescent(d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, theta: float) -> None:
    _disc(d, cx, cy, r, theta)
    ox, oy = cx + 0.45 * r * math.cos(theta), cy + 0.45 * r * math.sin(theta)
    ri = 0.8 * r
    d.ellipse((ox - ri, oy - ri, ox + ri, oy + ri), fill=0)


# Textured classes: a shape mask and a two-colour pattern inside it.
def _stripes(n: int, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    u = (xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)
    period = 2 * r / 3.0  # three stripe pairs across the object
    return (np.floor(u / (period / 2)) % 2).astype(np.float32)


def _checker(n: int, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) + 0.5
    c, s = math.cos(theta), math.sin(theta)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    cell = 2 * r / 3.0
    return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)


@dataclass(frozen=True)
class _ShapeClass:
    name: str
    painter: Painter
    pattern: Callable[[int, float, float, float, float], np.ndarray] | None = None


SHAPE_CLASSES: tuple[_ShapeClass, ...] = (
    _ShapeClass("disc", _disc),
    _ShapeClass("ring", _ring),
    _ShapeClass("square", _square),
    _ShapeClass("frame", _frame),
    _ShapeClass("triangle", _triangle),
    _ShapeClass("cross", _cross),
    _ShapeClass("star", _star),
    _ShapeClass("crescent", _crescent),
    _ShapeClass("striped_square", _square, _stripes),
    _ShapeClass("checkered_disc", _disc, _checker),
)


# --------------------------------------------------------------------------- colours
def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _contrasting_value(rng: np.random.Generator, v_ref: float) -> float:
    gap = rng.uniform(0.3, 0.5)
    up, down = v_ref + gap, v_ref - gap
    if up <= 1.0 and (down < 0.0 or rng.random() < 0.5):
        return up
    return max(down, 0.0) if down >= 0.0 else min(up, 1.0)


def _background(rng: np.random.Generator, n: int) -> tuple[np.ndarray, float]:
    """A textured background (n, n, 3) in [0, 1] and its mean value."""
    v = rng.uniform(0.2, 0.8)
    base = _hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.6), v)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    ang = rng.uniform(0, 2 * math.pi)
    lum = rng.uniform(-0.12, 0.12) * ((xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang))
    kind = rng.integers(3)
    amp = rng.uniform(0.04, 0.12)
    if kind == 0:  # smooth blotches
        k = int(rng.integers(3, 9))
        small = Image.fromarray(rng.uniform(-1, 1, (k, k)).astype(np.float32), mode="F")
        lum = lum + amp * np.asarray(small.resize((n, n), Image.BILINEAR))
    elif kind == 1:  # waves
        f = rng.uniform(2, 8)
        a2 = rng.uniform(0, 2 * math.pi)
        lum = lum + amp * np.sin(2 * math.pi * f * (xx * math.cos(a2) + yy * math.sin(a2)))
    else:  # speckle
        lum = lum + amp * rng.uniform(-1, 1, (n, n))
    img = base[None, None, :] + lum[..., None]
    return img.astype(np.float32), v


# --------------------------------------------------------------------------- dataset
def _whole(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class ShapesDataset(Dataset):
    """Generated multi-scale classification dataset of shapes and textures.

    ``n_per_class`` samples of each of the ``len(classes)`` classes, ``size`` x ``size`` RGB
    (64-96 px), deterministic for ``seed``. ``__getitem__`` returns ``(PIL.Image, label)`` or
    ``(transform(image), label)``; :meth:`render` gives the uint8 array, :meth:`mask` the
    object's coverage in [0, 1]; ``records`` lists label, class name, scale and box per sample.
    """

    classes: list[str] = [c.name for c in SHAPE_CLASSES]

    def __init__(
        self,
        n_per_class: int,
        *,
        size: int = 64,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.15, 0.75),
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if not _whole(n_per_class) or n_per_class < 1:
            raise ValueError(f"n_per_class must be a whole number >= 1, got {n_per_class!r}")
        if not _whole(size) or not 64 <= size <= 96:
            raise ValueError(f"size must be a whole number of pixels within 64..96, got {size!r}")
        n_per_class, size = int(n_per_class), int(size)
        lo, hi = scale_range
        if not 0.0 < lo <= hi <= 0.9:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi <= 0.9, got {scale_range}")
        self.n_per_class = n_per_class
        self.size = size
        self.seed = seed
        self.scale_range = (float(lo), float(hi))
        self.transform = transform
        self.classes = [c.name for c in SHAPE_CLASSES]
        self._records: list[ShapeRecord] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.n_per_class * self.num_classes

    def params(self) -> dict[str, Any]:
        """The constructor arguments that define the samples (for manifests)."""
        return {
            "n_per_class": self.n_per_class,
            "size": self.size,
            "seed": self.seed,
            "scale_range": list(self.scale_range),
        }

    def _draw(self, index: int) -> tuple[np.ndarray, np.ndarray, ShapeRecord]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, index])
        n = self.size
        label = index % self.num_classes
        cls = SHAPE_CLASSES[label]
        scale = float(rng.uniform(*self.scale_range))
        side = scale * n
        max_off = min(0.15 * n, (n - side) / 2)
        cx = n / 2 + rng.uniform(-max_off, max_off)
        cy = n / 2 + rng.uniform(-max_off, max_off)
        theta = float(rng.uniform(0, 2 * math.pi))

        big = n * _SS
        canvas = Image.new("L", (big, big), 0)
        cls.painter(ImageDraw.Draw(canvas), cx * _SS, cy * _SS, side * _SS / 2, theta)
        alpha = np.asarray(canvas.reduce(_SS), dtype=np.float32) / 255.0

        bg, v_bg = _background(rng, n)
        v_obj = _contrasting_value(rng, v_bg)
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), v_obj)
        fill = np.broadcast_to(colour, (n, n, 3)).astype(np.float32)
        if cls.pattern is not None:
            v2 = float(np.clip(v_obj + (-0.4 if v_obj > 0.5 else 0.4), 0, 1))
            colour2 = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), v2)
            pat = cls.pattern(n, cx, cy, side / 2, float(rng.uniform(0, math.pi)))[..., None]
            fill = fill * (1 - pat) + colour2 * pat
        img = bg * (1 - alpha[..., None]) + fill * alpha[..., None]
        # colour jitter: brightness, contrast, pixel noise
        img = img * rng.uniform(0.85, 1.15)
        mean = img.mean()
        img = (img - mean) * rng.uniform(0.8, 1.2) + mean
        img = img + rng.normal(0, 0.02, img.shape)
        arr = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

        ys, xs = np.nonzero(alpha > 0.5)
        if len(xs):
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        else:  # pragma: no cover - objects are at least ~10 px
            box = (int(cx), int(cy), int(cx) + 1, int(cy) + 1)
        record = ShapeRecord(index, label, cls.name, scale, box)
        return arr, alpha, record

    def render(self, index: int) -> np.ndarray:
        """Sample ``index`` as a uint8 array (size, size, 3)."""
        return self._draw(index)[0]

    def mask(self, index: int) -> np.ndarray:
        """Coverage of the object in sample ``index``, float32 (size, size) in [0, 1]."""
        return self._draw(index)[1]

    def record(self, index: int) -> ShapeRecord:
        """Label, class name, scale and box of sample ``index``."""
        if self._records is not None:
            return self._records[index]
        return self._draw(index)[2]

    @property
    def records(self) -> list[ShapeRecord]:
        """One :class:`ShapeRecord` per sample (drawn once, on first access)."""
        if self._records is None:
            self._records = [self._draw(i)[2] for i in range(len(self))]
        return self._records

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if index < 0:
            index += len(self)
        img = Image.fromarray(self.render(index), mode="RGB")
        label = index % self.num_classes
        return (self.transform(img) if self.transform is not None else img), label

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All samples as (uint8 (N, size, size, 3), int64 (N,)) arrays."""
        images = np.stack([self.render(i) for i in range(len(self))])
        labels = np.arange(len(self), dtype=np.int64) % self.num_classes
        return images, labels


def write_image_folder(dataset: ShapesDataset, root: str | Path) -> Path:
    """Write ``dataset`` as PNGs in one subfolder per class plus ``records.csv``; return root.

    Files are ``root/<class_name>/<index:06d>.png``; ``records.csv`` has columns
    path, index, label, class_name, scale, x0, y0, x1, y1.
    """
    root = Path(root)
    for name in dataset.classes:
        (root / name).mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(dataset)):
        arr, _, rec = dataset._draw(i)
        rel = Path(rec.class_name) / f"{i:06d}.png"
        Image.fromarray(arr, mode="RGB").save(root / rel)
        d = asdict(rec)
        x0, y0, x1, y1 = d.pop("box")
        rows.append({"path": rel.as_posix(), **d, "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    fields = ["path", "index", "label", "class_name", "scale", "x0", "y0", "x1", "y1"]
    with open(root / "records.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return root


# --------------------------------------------------------------------------- native scales
_BOX_SS = 8  # supersampling of the object mask that measures a view's box (1/8 px)


@dataclass(frozen=True)
class SceneRecord:
    """One generated scene rendered at several object scales (:class:`ShapeScenes`).

    ``index``: the sample of the underlying :class:`ShapesDataset` (its 1.0x view is that
    sample, bit for bit); ``size``: object size at 1.0x (side of its square over the image
    side); ``boxes``: per view, the object's box (x0, y0, x1, y1) in pixels, measured on an
    8x supersampled mask (x1/y1 exclusive, 1/8 px steps); ``centre``: the point (x, y) the
    object is drawn about and scaled about (so box(s) = centre + s * (box(1) - centre)).
    """

    index: int
    label: int
    class_name: str
    size: float
    scales: tuple[float, ...]
    boxes: tuple[tuple[float, float, float, float], ...]
    centre: tuple[float, float] = (0.0, 0.0)


def _scene_geometry(ds: ShapesDataset, index: int) -> tuple[np.random.Generator, dict]:
    """The first draws of sample ``index`` (as :meth:`ShapesDataset._draw` makes them)."""
    rng = np.random.default_rng([ds.seed, index])
    n = ds.size
    scale = float(rng.uniform(*ds.scale_range))
    side = scale * n
    max_off = min(0.15 * n, (n - side) / 2)
    cx = n / 2 + rng.uniform(-max_off, max_off)
    cy = n / 2 + rng.uniform(-max_off, max_off)
    theta = float(rng.uniform(0, 2 * math.pi))
    return rng, {"scale": scale, "side": side, "cx": cx, "cy": cy, "theta": theta}


def _object_box(ds: ShapesDataset, index: int, geo: dict, s: float) -> tuple[float, ...]:
    """Box of the object of sample ``index`` drawn at ``s`` times its size (float pixels)."""
    n, k = ds.size, _BOX_SS
    cls = SHAPE_CLASSES[index % ds.num_classes]
    canvas = Image.new("L", (n * k, n * k), 0)
    cls.painter(ImageDraw.Draw(canvas), geo["cx"] * k, geo["cy"] * k, s * geo["side"] * k / 2,
                geo["theta"])  # fmt: skip
    ys, xs = np.nonzero(np.asarray(canvas) > 127)
    if not len(xs):  # pragma: no cover - objects are at least ~10 px
        return (geo["cx"], geo["cy"], geo["cx"], geo["cy"])
    return (xs.min() / k, ys.min() / k, (xs.max() + 1) / k, (ys.max() + 1) / k)


def render_scales(
    dataset: ShapesDataset, index: int, scales: tuple[float, ...] | list[float]
) -> tuple[list[np.ndarray], list[np.ndarray], list[tuple[float, ...]]]:
    """Sample ``index`` of ``dataset`` rendered natively with its object at each scale.

    Same background, object centre, pose, colours, pattern, colour jitter and pixel noise in
    every view; only the object's size (and its pattern) is s times the 1.0x size, drawn at
    full resolution (no rendered image is resampled). The contrast jitter of every view is
    taken about the 1.0x view's mean, so pixels the object covers in no view are identical
    in all views; the 1.0x view equals ``dataset.render(index)`` bit for bit.
    Returns (uint8 (n, n, 3) views, float32 coverage masks, boxes) in the order of ``scales``.
    """
    if not 0 <= index < len(dataset):
        raise IndexError(f"index {index} out of range for {len(dataset)} samples")
    scales = tuple(float(s) for s in scales)
    if any(not (math.isfinite(s) and s > 0) for s in scales):
        raise ValueError(f"object scales must be finite and > 0, got {list(scales)}")
    draws = scene_draws(dataset, index)
    ref_mean = compose(draws, [SceneObject(draws.cx, draws.cy, 1.0)])[0].mean()
    views, masks, boxes = [], [], []
    for s in scales:
        img, alpha = compose(draws, [SceneObject(draws.cx, draws.cy, s)])
        views.append(finish(draws, img, ref_mean))
        masks.append(alpha)
        boxes.append(_object_box(dataset, index, draws.geo, s))
    return views, masks, boxes


@dataclass(frozen=True)
class SceneDraws:
    """Every random draw of one :class:`ShapesDataset` sample, in the order of
    :meth:`ShapesDataset._draw` (so a scene can be recomposed with other objects)."""

    n: int
    cls: _ShapeClass
    geo: dict
    bg: np.ndarray
    v_obj: float
    colour: np.ndarray
    colour2: np.ndarray | None
    pat_theta: float | None
    bright: float
    contrast: float
    noise: np.ndarray

    @property
    def cx(self) -> float:
        return float(self.geo["cx"])

    @property
    def cy(self) -> float:
        return float(self.geo["cy"])

    @property
    def side(self) -> float:
        """Side of the square the 1.0x object is inscribed in (pixels)."""
        return float(self.geo["side"])


@dataclass(frozen=True)
class SceneObject:
    """One object to draw: centre (pixels), size ``s`` times the sample's, and ``hollow``:
    0 = filled, f in (0, 1) = minus a concentric copy at ``s * f`` (an outline of the object)."""

    cx: float
    cy: float
    s: float
    hollow: float = 0.0


def scene_draws(dataset: ShapesDataset, index: int) -> SceneDraws:
    """The draws of sample ``index`` of ``dataset``."""
    rng, geo = _scene_geometry(dataset, index)
    n = dataset.size
    cls = SHAPE_CLASSES[index % dataset.num_classes]
    bg, v_bg = _background(rng, n)
    v_obj = _contrasting_value(rng, v_bg)
    colour = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), v_obj)
    colour2 = pat_theta = None
    if cls.pattern is not None:
        v2 = float(np.clip(v_obj + (-0.4 if v_obj > 0.5 else 0.4), 0, 1))
        colour2 = _hsv_to_rgb(rng.random(), rng.uniform(0.4, 1.0), v2)
        pat_theta = float(rng.uniform(0, math.pi))
    bright = rng.uniform(0.85, 1.15)
    contrast = rng.uniform(0.8, 1.2)
    noise = rng.normal(0, 0.02, (n, n, 3))
    return SceneDraws(n, cls, geo, bg, v_obj, colour, colour2, pat_theta, bright, contrast, noise)


def _object_alpha(d: SceneDraws, obj: SceneObject) -> np.ndarray:
    """Coverage (n, n) in [0, 1] of one object, drawn 2x supersampled and box-filtered."""
    big = d.n * _SS

    def paint(s: float) -> Image.Image:
        canvas = Image.new("L", (big, big), 0)
        d.cls.painter(ImageDraw.Draw(canvas), obj.cx * _SS, obj.cy * _SS,
                      s * d.side * _SS / 2, d.geo["theta"])  # fmt: skip
        return canvas

    canvas = paint(obj.s)
    if obj.hollow > 0:
        inner = np.asarray(paint(obj.s * obj.hollow))
        canvas = Image.fromarray(np.where(inner > 0, 0, np.asarray(canvas)).astype(np.uint8))
    return np.asarray(canvas.reduce(_SS), dtype=np.float32) / 255.0


def compose(
    d: SceneDraws, objects: list[SceneObject], background: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The scene with ``objects`` (not overlapping) on its background (or ``background``),
    before contrast jitter and noise: (float image times the brightness jitter, coverage)."""
    bg = d.bg if background is None else background
    alpha = fw = None
    for obj in objects:
        a = _object_alpha(d, obj)
        fill = np.broadcast_to(d.colour, (d.n, d.n, 3)).astype(np.float32)
        if d.cls.pattern is not None:
            pat = d.cls.pattern(d.n, obj.cx, obj.cy, obj.s * d.side / 2, d.pat_theta)[..., None]
            fill = fill * (1 - pat) + d.colour2 * pat
        if alpha is None:
            alpha, fw = a, fill * a[..., None]
        else:
            alpha, fw = alpha + a, fw + fill * a[..., None]
    if alpha is None:
        raise ValueError("give at least one object")
    img = bg * (1 - alpha[..., None]) + fw
    return img * d.bright, alpha


def finish(d: SceneDraws, img: np.ndarray, ref_mean: float) -> np.ndarray:
    """Contrast jitter about ``ref_mean``, pixel noise, clip and quantise to uint8."""
    img = (img - ref_mean) * d.contrast + ref_mean
    img = img + d.noise
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ShapeScenes' content controls: {"names": {name: description}, "render": render_controls},
# filled by attnviz.data.scene_controls when it is imported (it builds on this module, which
# never imports it; attnviz.data imports both)
SCENE_CONTROLS: dict[str, Any] = {"names": {}, "render": None}


def train_object_size_range(model: str = "sk_tiny") -> tuple[float, float]:
    """Object sizes a bundled model was trained on: the manifest's ``train_object_size_range``,
    else its training set's ``scale_range``, else ShapesDataset's default (0.15, 0.75)."""
    with_default = (0.15, 0.75)
    try:
        from .assets import read_manifest

        entry = read_manifest()["models"][model]
    except Exception:
        return with_default
    rng = entry.get("train_object_size_range") or entry.get("train_data", {}).get("scale_range")
    return (float(rng[0]), float(rng[1])) if rng else with_default


class ShapeScenes(Dataset):
    """``n_scenes`` generated scenes, each rendered natively at every scale of ``scales``.

    Scenes are samples of ``ShapesDataset(size=size, seed=seed, scale_range=(lo, hi / max
    scale))`` (``object_range=(lo, hi)``: the object sizes a model was trained on), kept in
    index order when the object of the largest view lies inside the frame (its box does not
    touch the border). Item k is ``(strip, label)``: the views side by side in one
    ``(len(scales) * size) x size`` RGB image (:meth:`views` splits it). ``records`` holds
    one :class:`SceneRecord` per scene with every view's box.

    ``controls``: names of :data:`attnviz.data.scene_controls.CONTENT_CONTROLS` (``copies``,
    ``copies_perimeter``, ``constant_area``, ``contrast_matched``, ``background_swap``); their
    views, made against the largest scale (``control_scale``), follow the scale views in each
    strip (:meth:`control_views` gives them on their own).
    """

    def __init__(
        self,
        n_scenes: int,
        *,
        scales: tuple[float, ...] | list[float] = (1.0, 1.5, 2.0),
        size: int = 64,
        seed: int = 20_000,
        object_range: tuple[float, float] = (0.15, 0.75),
        controls: tuple[str, ...] | list[str] = (),
    ) -> None:
        names = SCENE_CONTROLS["names"]
        controls = tuple(str(c) for c in controls)
        bad = [c for c in controls if c not in names]
        if bad or len(set(controls)) != len(controls):
            raise ValueError(
                f"content controls must be distinct names of {list(names)}, got {list(controls)}"
            )
        if not _whole(n_scenes) or n_scenes < 1:
            raise ValueError(f"n_scenes must be a whole number >= 1, got {n_scenes!r}")
        n_scenes = int(n_scenes)
        scales = tuple(float(s) for s in scales)
        if not scales or any(not (math.isfinite(s) and s >= 1.0) for s in scales):
            raise ValueError(f"scene scales must be finite numbers >= 1.0, got {list(scales)}")
        lo, hi = (float(v) for v in object_range)
        top = hi / max(scales)
        if not 0.0 < lo <= top:
            raise ValueError(
                f"no object size fits: the largest view ({max(scales):g}x) of an object of the "
                f"smallest size {lo} exceeds {hi} of the image side"
            )
        self.n_scenes, self.scales, self.size, self.seed = n_scenes, scales, size, seed
        self.object_range = (lo, hi)
        self.controls, self.control_scale = controls, max(scales)
        self.source = ShapesDataset(10**6, size=size, seed=seed, scale_range=(lo, top))
        self.classes = list(self.source.classes)
        self.indices: list[int] = []
        i, smax = 0, max(scales)
        limit = 50 * n_scenes + 100
        while len(self.indices) < n_scenes and i < limit:
            _, geo = _scene_geometry(self.source, i)
            x0, y0, x1, y1 = _object_box(self.source, i, geo, smax)
            step = 1.0 / _BOX_SS
            if x0 >= step and y0 >= step and x1 <= size - step and y1 <= size - step:
                self.indices.append(i)
            i += 1
        if len(self.indices) < n_scenes:  # pragma: no cover - about 3 in 4 scenes fit
            raise ValueError(f"only {len(self.indices)} of {i} scenes fit the frame")
        self.tried = i
        self._records: dict[int, SceneRecord] = {}

    def __len__(self) -> int:
        return self.n_scenes

    def params(self) -> dict[str, Any]:
        return {
            "n_scenes": self.n_scenes,
            "scales": list(self.scales),
            "size": self.size,
            "seed": self.seed,
            "object_range": list(self.object_range),
            "scene_size_range": list(self.source.scale_range),
            "scenes_tried": self.tried,
            "controls": list(self.controls),
            "control_scale": self.control_scale,
        }

    def render(self, k: int) -> tuple[list[np.ndarray], list[np.ndarray], SceneRecord]:
        """Scene ``k``: (uint8 views, coverage masks, record)."""
        if not 0 <= k < self.n_scenes:
            raise IndexError(f"scene {k} out of range for {self.n_scenes} scenes")
        i = self.indices[k]
        views, masks, boxes = render_scales(self.source, i, self.scales)
        label = i % self.source.num_classes
        geo = _scene_geometry(self.source, i)[1]
        rec = SceneRecord(
            i,
            label,
            self.classes[label],
            geo["scale"],
            self.scales,
            tuple(tuple(float(v) for v in b) for b in boxes),
            (float(geo["cx"]), float(geo["cy"])),
        )
        self._records[k] = rec
        return views, masks, rec

    def control_views(self, k: int) -> list:
        """Scene ``k``'s content-control views (:class:`~attnviz.data.scene_controls.ControlView`),
        in the order of ``controls``."""
        if not 0 <= k < self.n_scenes:
            raise IndexError(f"scene {k} out of range for {self.n_scenes} scenes")
        render = SCENE_CONTROLS["render"]
        return render(self.source, self.indices[k], self.controls, self.control_scale)

    def views(self, k: int) -> list[Image.Image]:
        """Scene ``k``'s views as PIL images, in the order of ``scales``."""
        return [Image.fromarray(v, mode="RGB") for v in self.render(k)[0]]

    def record(self, k: int) -> SceneRecord:
        return self._records[k] if k in self._records else self.render(k)[2]

    @property
    def records(self) -> list[SceneRecord]:
        return [self.record(k) for k in range(self.n_scenes)]

    def __getitem__(self, k: int) -> tuple[Image.Image, int]:
        if k < 0:
            k += self.n_scenes
        views, _, rec = self.render(k)
        views = views + [c.image for c in self.control_views(k)] if self.controls else views
        return Image.fromarray(np.concatenate(views, axis=1), mode="RGB"), rec.label


def split_strip(strip: Image.Image, n_views: int) -> list[Image.Image]:
    """The views of a :class:`ShapeScenes` item (views side by side) as PIL images."""
    w, h = strip.size
    if w != n_views * h:
        raise ValueError(
            f"expected {n_views} square views side by side ({n_views * h} x {h}), got {w} x {h}"
        )
    return [strip.crop((j * h, 0, (j + 1) * h, h)) for j in range(n_views)]


def _select(scenes: ShapeScenes, ks: list[int]) -> ShapeScenes:
    """A ShapeScenes holding only scenes ``ks`` of ``scenes`` (same renders)."""
    import copy

    out = copy.copy(scenes)
    out.indices = [scenes.indices[k] for k in ks]
    out.n_scenes = len(ks)
    out._records = {}
    return out


ShapeScenes.select = _select  # type: ignore[attr-defined]
