"""Tolerant image loading shared by all analyses.

``load_image(path)`` never raises for a bad file: it returns ``(image, None)`` with an RGB
PIL image, or ``(None, reason)``. Convertible modes are converted (CMYK, 16-bit and 32-bit
integer or float grayscale, palette, grayscale, with or without alpha, RGBA); files that are
empty, truncated, not an image, too small or of extreme aspect ratio are skipped with a
reason. ``list_images(root)`` lists a folder: class subfolders give labels, a flat folder none.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MIN_SIDE = 8
MAX_ASPECT = 10.0
MAX_PIXELS = 50_000_000  # width x height read from the header; PIL's own limit is ~89 Mpx

PathLike = str | os.PathLike


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (surrogate escapes) shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _composite_on_white(img: Image.Image) -> Image.Image:
    """RGBA -> RGB over a white background (transparent pixels become white)."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float grayscale -> 8-bit RGB by the mode's value range."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (img.mode == "I" and arr.max(initial=0) <= 65535):
        if arr.min(initial=0) >= 0:
            arr8 = np.clip(arr.astype(np.float64) / 257.0, 0, 255)
        else:
            arr8 = _stretch(arr)
    elif img.mode == "F" and arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
        arr8 = arr.astype(np.float64) * 255.0
    else:
        arr8 = _stretch(arr)
    gray = Image.fromarray(np.round(arr8).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def _stretch(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min(initial=0)), float(arr.max(initial=0))
    if hi <= lo:
        return np.zeros_like(arr)
    return (arr - lo) / (hi - lo) * 255.0


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode attnviz accepts to 8-bit RGB (alpha composited over white)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        has_alpha = "transparency" in img.info
        return _composite_on_white(img) if has_alpha else img.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _composite_on_white(img)
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_depth_to_rgb(img)
    # CMYK, L, 1, YCbCr, LAB, HSV: PIL knows the conversion.
    return img.convert("RGB")


def too_large(width: int, height: int, max_pixels: int) -> str:
    """The skip reason of an image above the pixel cap."""
    return (
        f"too large: {width}x{height} = {width * height / 1e6:.3g} Mpx "
        f"(max {max_pixels / 1e6:g} Mpx; see --max-pixels)"
    )


def check_max_pixels(max_pixels: int | None) -> None:
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a whole number >= 1 or None, got {max_pixels!r}")


def load_image(
    path: PathLike,
    *,
    min_side: int = MIN_SIDE,
    max_aspect: float = MAX_ASPECT,
    max_pixels: int | None = MAX_PIXELS,
) -> tuple[Image.Image | None, str | None]:
    """Decode one file into an RGB PIL image, or return ``(None, reason)`` if it is unusable.

    Reasons: ``"missing file"``, ``"empty file"``, ``"not an image"``, ``"truncated or
    corrupt image: ..."``, ``"too small: WxH (min side N)"``, ``"extreme aspect ratio: WxH"``,
    ``"too large: WxH ..."`` (more than ``max_pixels`` pixels, read from the header before
    any pixel is decoded; None: only PIL's own limit), ``"unreadable: ..."``.
    """
    check_max_pixels(max_pixels)
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None, "missing file"
    except PermissionError:
        return None, "permission denied"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    if path.is_dir():
        return None, "a folder, not a file"
    if size == 0:
        return None, "empty file"
    # A global PIL flag could make truncated files "load"; insist on complete files here.
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. PIL's palette-transparency warning
            with Image.open(path) as img:
                w, h = img.size  # from the header: nothing decoded yet
                if max_pixels is not None and w * h > max_pixels:
                    return None, too_large(w, h, max_pixels)
                img.load()
                w, h = img.size
                if min(w, h) < min_side:
                    return None, f"too small: {w}x{h} (min side {min_side})"
                if max(w, h) / min(w, h) > max_aspect:
                    return None, f"extreme aspect ratio: {w}x{h} (max {max_aspect:g}:1)"
                rgb = to_rgb(img)
                if rgb is img:
                    rgb = img.copy()
    except PermissionError:
        return None, "permission denied"
    except FileNotFoundError:
        return None, "missing file"
    except IsADirectoryError:
        return None, "a folder, not a file"
    except UnidentifiedImageError:
        return None, "not an image"
    except Image.DecompressionBombError as exc:
        return None, f"too large: {exc}"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return None, f"truncated or corrupt image: {exc}"
    except Exception as exc:
        return None, f"unreadable: {type(exc).__name__}: {exc}"
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return rgb, None


def list_images(
    root: PathLike,
    *,
    extensions: Sequence[str] | None = None,
    exclude: Iterable[PathLike] = (),
) -> tuple[list[Path], list[int] | None, list[str]]:
    """Image files under ``root``, sorted: ``(paths, labels | None, class_names)``.

    If ``root`` has subfolders holding image files, each subfolder is a class (sorted by
    name, labels 0..K-1, files searched recursively inside it) and files directly in ``root``
    are ignored; otherwise the flat folder's files are listed with ``labels=None`` and no
    class names. Files are selected by extension (``IMAGE_EXTENSIONS``), not decoded: use
    :func:`load_image` on each.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(
            f"image folder {printable(str(root))!r} does not exist or is not a folder"
        )
    exts = IMAGE_EXTENSIONS if extensions is None else {e.lower() for e in extensions}
    skip = [Path(e).resolve() for e in exclude]

    def excluded(p: Path) -> bool:
        r = p.resolve()
        return any(r == e or e in r.parents for e in skip)

    def is_image(p: Path) -> bool:
        return (
            p.is_file()
            and not p.name.startswith(".")
            and p.suffix.lower() in exts
            and not (skip and excluded(p))
        )

    subdirs = sorted(
        d
        for d in root.iterdir()
        if d.is_dir() and not d.name.startswith(".") and not (skip and excluded(d))
    )
    classes: list[str] = []
    paths: list[Path] = []
    labels: list[int] = []
    for d in subdirs:
        files = sorted(p for p in d.rglob("*") if is_image(p))
        if not files:
            continue
        label = len(classes)
        classes.append(d.name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if classes:
        return paths, labels, classes
    return sorted(p for p in root.iterdir() if is_image(p)), None, []
