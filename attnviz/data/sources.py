"""The one input pipeline of every analysis: image sources and their batches.

``image_source(images, labels)`` accepts a folder (class subfolders give labels, see
:func:`attnviz.data.images.list_images`), a list of paths, a (N, 3, H, W) tensor of prepared
model inputs, a torch Dataset (or any sequence) yielding images or ``(image, label)``, or a
DataLoader (its dataset, read in the sampler's order). It is indexable:
``load(i) -> (image | None, label | None, reason | None)``; a bad file gives ``None`` and the
true reason (``"permission denied"``, ``"truncated or corrupt image: ..."``), never an
exception. Ids: a folder's files by their path relative to the folder, a path list's by the
path, a dataset's items by ``#<index>``; any file name the filesystem allows is kept as
printable text (undecodable bytes as ``\\xNN``).

``iter_batches(source, positions, batch_size, prepare)`` yields :class:`Batch` es of the items
at ``positions`` (one batch per ``batch_size`` positions, so a checkpoint can name where it
stopped), decoded in the main process or by DataLoader workers (``workers=``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader

from .images import MAX_PIXELS, check_max_pixels, list_images, load_image, printable, to_rgb

__all__ = [
    "Batch",
    "ImageSource",
    "Record",
    "image_source",
    "iter_batches",
    "to_pil",
]

Loaded = tuple[Image.Image | Tensor | None, int | None, str | None]


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
    """Ids ``#0 .. #n-1`` of a dataset's items, without a list that grows with n."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [f"#{j}" for j in range(self.n)[i]]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return f"#{i % self.n}"


class ImageSource:
    """Random access to images: ``load(i) -> (image | None, label | None, skip reason | None)``.

    ``ids``: one string per item; ``labels``: the labels known without reading items (given
    or from class folders), else None (dataset items may still carry their own);
    ``class_names``; ``paths``: the files, for sources of files (their size and modification
    time enter a resume fingerprint); ``prepared``: True when items are model inputs already.
    """

    def __init__(
        self,
        ids: Sequence[str],
        read: Callable[[int], tuple[Any, Any, str | None]],
        *,
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] = (),
        paths: Sequence[Path] | None = None,
        prepared: bool = False,
    ):
        self.ids = ids
        self._read = read
        self.labels = None if labels is None else [int(v) for v in labels]
        self.class_names = list(class_names)
        self.paths = paths
        self.prepared = prepared

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

    def fingerprint(self) -> list[list[Any]]:
        """Per item: id, and for files their size in bytes and modification time (ns)."""
        if self.paths is None:
            return [[str(i)] for i in self.ids]
        out = []
        for ident, path in zip(self.ids, self.paths):
            try:
                st = path.stat()
                out.append([ident, st.st_size, st.st_mtime_ns])
            except OSError:
                out.append([ident, None, None])
        return out


def _split_item(item: Any) -> tuple[Any, Any, None]:
    if isinstance(item, (tuple, list)):
        return item[0], (item[1] if len(item) > 1 else None), None
    return item, None, None


def _is_path_list(obj: Sequence) -> bool:
    return all(isinstance(p, (str, os.PathLike)) for p in obj)


def image_source(
    images: Any,
    labels: Sequence[int] | None = None,
    *,
    exclude: Iterable[str | os.PathLike] = (),
    max_pixels: int | None = MAX_PIXELS,
) -> ImageSource:
    """An :class:`ImageSource` over ``images`` (see the module docstring); ``labels`` override.

    ``exclude``: folders never read (a run's own output folder). ``max_pixels``: image files
    with more pixels (width x height, read from the header before decoding) are skipped with
    the reason ``"too large: ..."``; None leaves only PIL's own limit.
    """
    check_max_pixels(max_pixels)
    given = None if labels is None else [int(v) for v in labels]

    def check(n: int) -> None:
        if given is not None and len(given) < n:
            raise ValueError(f"labels has {len(given)} entries for {n} images")

    def from_paths(paths: list[Path], ids: Sequence[str], labs, classes) -> ImageSource:
        def read(i: int) -> tuple[Any, None, str | None]:
            img, reason = load_image(paths[i], max_pixels=max_pixels)
            return img, None, reason

        return ImageSource(ids, read, labels=labs, class_names=classes, paths=paths)

    if isinstance(images, (str, os.PathLike)):
        root = Path(images)
        paths, dir_labels, classes = list_images(root, exclude=exclude)
        if not paths:
            raise ValueError(f"no image files found in {printable(str(root))!r}")
        check(len(paths))
        ids = [printable(p.relative_to(root).as_posix()) for p in paths]
        return from_paths(paths, ids, given if given is not None else dir_labels, classes)
    if isinstance(images, Tensor):
        if images.dim() == 3:
            images = images[None]
        if images.dim() != 4:
            raise ValueError(f"an image tensor must be (N, 3, H, W), got {tuple(images.shape)}")
        check(len(images))
        return ImageSource(
            _IndexIds(len(images)), lambda i: (images[i], None, None), labels=given, prepared=True
        )
    if isinstance(images, DataLoader):
        dataset = images.dataset
        order = [int(j) for j in images.sampler]
        check(len(order))
        return ImageSource(
            [f"#{j}" for j in order],
            lambda i: _split_item(dataset[order[i]]),
            labels=given,
            class_names=getattr(dataset, "classes", None) or (),
        )
    if not hasattr(images, "__getitem__") or not hasattr(images, "__len__"):
        if not isinstance(images, Iterable):
            raise TypeError(
                "images must be a folder, a list of paths, a (N, 3, H, W) tensor, a torch "
                f"Dataset or a DataLoader, got {type(images).__name__}"
            )
        images = list(images)
    n = len(images)
    if n == 0:
        raise ValueError("no images given")
    check(n)
    if isinstance(images, (list, tuple)) and _is_path_list(images):
        paths = [Path(p) for p in images]
        return from_paths(paths, [printable(str(p)) for p in paths], given, [])
    return ImageSource(
        _IndexIds(n),
        lambda i: _split_item(images[i]),
        labels=given,
        class_names=getattr(images, "classes", None) or (),
    )


@dataclass(frozen=True)
class Record:
    """One image of a batch: its position in the source, id and label (None if unknown)."""

    index: int
    id: str
    label: int | None


@dataclass
class Batch:
    """Prepared inputs ``x`` (stacked along axis 0) of the usable items of one chunk of
    positions, their :class:`Record` s, the decoded ``images`` when asked for, and the
    ``skipped`` items of the chunk as (index, id, reason)."""

    x: Tensor
    records: list[Record]
    positions: int  # how many source positions this batch covered (used + skipped)
    images: list[Image.Image | Tensor] | None = None
    skipped: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def labels(self) -> list[int | None]:
        return [r.label for r in self.records]

    def __len__(self) -> int:
        return len(self.records)


class _Items(torch.utils.data.Dataset):
    """The items at ``indices`` of a source, prepared (runs in DataLoader workers)."""

    def __init__(self, source: ImageSource, indices: Sequence[int], prepare, keep_images: bool):
        self.source, self.indices = source, indices
        self.prepare, self.keep_images = prepare, keep_images

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple:
        i = self.indices[k]
        image, label, reason = self.source.load(i)
        if image is None:
            return i, None, label, reason or "unusable", None
        try:
            x = self.prepare(image)
        except Exception as exc:  # one bad image never ends a run
            return i, None, label, f"preprocessing failed: {type(exc).__name__}: {exc}", None
        return i, x, label, None, image if self.keep_images else None


def _collate(items: list[tuple]) -> list[tuple]:
    return items


def iter_batches(
    source: ImageSource,
    positions: Sequence[int],
    batch_size: int,
    prepare: Callable[[Image.Image | Tensor], Tensor],
    *,
    workers: int = 0,
    keep_images: bool = False,
) -> Iterator[Batch]:
    """Batches of the items at ``positions`` (source indices), ``batch_size`` positions each.

    ``prepare`` maps a decoded image (PIL, or a tensor item) to the model input of that
    image; items it cannot use are skipped with the reason. With ``workers > 0`` items are
    decoded and prepared by that many DataLoader worker processes, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    items = _Items(source, positions, prepare, keep_images)
    loader = DataLoader(
        items,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    for chunk in loader:
        xs, records, images, skipped = [], [], [], []
        for i, x, label, reason, image in chunk:
            if x is None:
                skipped.append((i, source.ids[i], reason))
                continue
            xs.append(x)
            records.append(Record(i, source.ids[i], label))
            images.append(image)
        x = torch.stack(xs) if xs else torch.zeros(0)
        yield Batch(x, records, len(chunk), images if keep_images else None, skipped)
