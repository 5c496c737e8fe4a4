"""One way to read the ``images`` argument of every analysis.

``image_source(images, labels)`` accepts a folder (class subfolders give labels, see
:func:`attnviz.data.images.list_images`), a list of paths, a torch Dataset (or any sequence)
yielding images or ``(image, label)``, or a DataLoader (its dataset, read in the sampler's
order). The result is indexable: ``load(i) -> (image | None, label | None, reason | None)``.
Files are decoded by :func:`attnviz.data.images.load_image`, so a bad file gives ``None`` and
a skip reason instead of an exception. Items that are tensors are returned as they are
(callers treat them as prepared model inputs or convert them with :func:`to_pil`).

``iter_batches(source, batch_size, to_tensor)`` turns a source into model-input batches.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from .images import list_images, load_image, to_rgb

__all__ = [
    "Batch",
    "ImageSource",
    "PreprocessConfigError",
    "image_source",
    "iter_batches",
    "to_pil",
]

IdStyle = Literal["relative", "path"]
Loaded = tuple[Image.Image | Tensor | None, int | None, str | None]


class PreprocessConfigError(ValueError):
    """A ``to_tensor`` cannot work at all (e.g. no preprocessing config): not an image skip."""


def to_pil(item: Any) -> Image.Image:
    """A PIL image, a uint8 / [0, 1] float HxW(xC) array or a (C, H, W) [0, 1] tensor -> PIL."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, Tensor):
        item = item.detach().cpu()
        if item.dim() == 3 and item.shape[0] in (1, 3, 4):
            item = item.permute(1, 2, 0)
        item = item.numpy()
    if isinstance(item, np.ndarray):
        arr = item
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
        arr = arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr
        return Image.fromarray(arr)
    raise TypeError(f"expected a PIL image, a uint8 array or a tensor, got {type(item).__name__}")


class _IndexIds(Sequence[str]):
    """Ids ``<prefix>0 .. <prefix>n-1`` of a dataset's items, without a list that grows with n."""

    def __init__(self, n: int, prefix: str):
        self.n = n
        self.prefix = prefix

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            r = range(self.n)[i]
            if r.step != 1 or r.start != 0:
                return [f"{self.prefix}{j}" for j in r]
            return _IndexIds(len(r), self.prefix)
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return f"{self.prefix}{i % self.n}"


class ImageSource:
    """Random access to images: ``load(i) -> (image | None, label | None, skip reason | None)``.

    ``ids``: one string per image (may be shortened to keep the first N); ``labels``: the
    labels known without reading items (given or from class folders), else None (dataset
    items may still carry their own); ``class_names``; ``batch_size``: a DataLoader's.
    """

    def __init__(
        self,
        ids: Sequence[str],
        read: Callable[[int], tuple[Any, Any, str | None]],
        *,
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] = (),
        batch_size: int | None = None,
    ):
        self.ids = ids
        self._read = read
        self.labels = None if labels is None else [int(v) for v in labels]
        self.class_names = list(class_names)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, i: int) -> Loaded:
        try:
            image, label, reason = self._read(i)
            if image is not None and not isinstance(image, Tensor):
                image = to_rgb(to_pil(image))
            if self.labels is not None:
                label = self.labels[i]
            elif label is not None:
                label = int(label.item() if isinstance(label, Tensor) else label)
        except Exception as exc:
            return None, None, f"could not read item: {type(exc).__name__}: {exc}"
        return image, label, reason


def _split_item(item: Any) -> tuple[Any, Any, None]:
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None), None
    return item, None, None


def _is_path_list(obj: Sequence) -> bool:
    return all(isinstance(p, (str, os.PathLike)) for p in obj)


def image_source(
    images: Any, labels: Sequence[int] | None = None, *, id_style: IdStyle = "relative"
) -> ImageSource:
    """An :class:`ImageSource` over ``images`` (see the module docstring); ``labels`` override.

    Ids: with ``id_style="relative"`` a folder's files are named by their path relative to
    the folder and items by ``#<dataset index>``; with ``"path"`` files by their full path and
    items by their position (``"0"``, ``"1"``, ...). A list of paths gives ``str(path)``.
    """
    given = None if labels is None else [int(v) for v in labels]

    def check(n: int) -> None:
        if given is not None and len(given) < n:
            raise ValueError(f"labels has {len(given)} entries for {n} images")

    def from_paths(paths: list[Path], ids: Sequence[str], labs, classes) -> ImageSource:
        def read(i: int) -> tuple[Any, None, str | None]:
            img, reason = load_image(paths[i])
            return img, None, reason

        return ImageSource(ids, read, labels=labs, class_names=classes)

    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        paths, dir_labels, classes = list_images(root)
        if not paths:
            raise ValueError(f"no image files found in {str(root)!r}")
        check(len(paths))
        if id_style == "relative":
            ids = [p.relative_to(root).as_posix() for p in paths]
        else:
            ids = [str(p) for p in paths]
        return from_paths(paths, ids, given if given is not None else dir_labels, classes)
    if isinstance(images, DataLoader):
        dataset = images.dataset
        order = [int(j) for j in images.sampler]
        check(len(order))
        ids = [f"#{j}" for j in order] if id_style == "relative" else _IndexIds(len(order), "")
        return ImageSource(
            ids,
            lambda i: _split_item(dataset[order[i]]),
            labels=given,
            class_names=getattr(dataset, "classes", None) or (),
            batch_size=images.batch_size,
        )
    if not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
        if not isinstance(images, Iterable):
            raise TypeError(
                "images must be a folder, a list of paths, a torch Dataset or a DataLoader, "
                f"got {type(images).__name__}"
            )
        images = list(images)
    n = len(images)
    if n == 0:
        raise ValueError("no images given")
    check(n)
    if isinstance(images, (list, tuple)) and _is_path_list(images):
        paths = [Path(p) for p in images]
        return from_paths(paths, [str(p) for p in paths], given, [])
    return ImageSource(
        _IndexIds(n, "#" if id_style == "relative" else ""),
        lambda i: _split_item(images[i]),
        labels=given,
        class_names=getattr(images, "classes", None) or (),
    )


@dataclass
class Batch:
    """Model inputs ``x`` (B, C, H, W) of the source items ``indices`` with their ``labels``
    and ``images`` (as loaded); ``skipped``: (id, reason) of the items dropped on the way."""

    x: Tensor
    indices: list[int]
    labels: list[int | None]
    images: list[Image.Image | Tensor]
    skipped: list[tuple[str, str]] = field(default_factory=list)


def iter_batches(
    source: ImageSource,
    batch_size: int,
    to_tensor: Callable[[Image.Image], Tensor],
    *,
    start: int = 0,
    limit: int | None = None,
) -> Iterator[Batch]:
    """Batches of up to ``batch_size`` usable images of ``source`` from item ``start`` on.

    PIL images go through ``to_tensor``; tensor items are used as they are (a (1, C, H, W)
    item is squeezed). Unusable items and failed conversions are skipped with a reason, listed
    in the next batch's ``skipped`` (a last batch with no image carries the rest);
    :class:`PreprocessConfigError` is raised, not skipped. ``limit``: at most that many images.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    xs: list[Tensor] = []
    indices: list[int] = []
    labels: list[int | None] = []
    images: list[Image.Image | Tensor] = []
    skipped: list[tuple[str, str]] = []
    n = 0

    def flush() -> Batch:
        x = torch.stack(xs) if xs else torch.zeros(0)
        batch = Batch(x, list(indices), list(labels), list(images), list(skipped))
        for buf in (xs, indices, labels, images, skipped):
            buf.clear()
        return batch

    for i in range(start, len(source)):
        if limit is not None and n >= limit:
            break
        img, label, reason = source.load(i)
        if img is None:
            skipped.append((source.ids[i], reason or "unusable"))
            continue
        try:
            if isinstance(img, Tensor):
                t = img[0] if img.dim() == 4 and img.shape[0] == 1 else img
                if t.dim() != 3:
                    raise ValueError(f"expected an image tensor (C, H, W), got {tuple(t.shape)}")
                t = t.float()
            else:
                t = to_tensor(img)
        except PreprocessConfigError:
            raise
        except Exception as exc:  # one bad image never ends a run
            skipped.append((source.ids[i], f"preprocessing failed: {type(exc).__name__}: {exc}"))
            continue
        xs.append(t)
        indices.append(i)
        labels.append(label)
        images.append(img)
        n += 1
        if len(xs) == batch_size:
            yield flush()
    if xs or skipped:
        yield flush()
