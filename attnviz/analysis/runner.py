"""The one runner: every analysis is a site choice, a per-batch step and a finaliser.

:class:`Analysis` (subclass it) says which sites it reads (:meth:`Analysis.sites`), how an
image becomes a model input (:meth:`Analysis.prepare`), what it keeps of each batch
(:meth:`Analysis.step`, into a :class:`State`) and how the kept sums become a result
(:meth:`Analysis.finalise`). :func:`run` owns everything else, once for all analyses:

* the input pipeline (:mod:`attnviz.data.sources`; bad files skipped with their reason, or
  :class:`~attnviz.errors.BadImageError` with ``strict=True``; DataLoader ``workers``);
* eval mode (every module's flag restored exactly), capture, device, ``no_grad`` unless the
  analysis needs gradients, and exactly one forward per batch;
* progress (images against a total known up front) and a closing line with the images,
  the elapsed time and images/s, which also go into the result's ``meta["run"]``;
* atomic checkpoints (``checkpoint=`` a folder), ``resume`` with a fingerprint of the
  analysis, its parameters, the model and every image (size and modification time), a
  checkpoint kept on Ctrl-C (:class:`~attnviz.errors.Interrupted`) and removed once the run
  has finished;
* torchrun sharding: rank r takes positions r, r + world, ...; the states of all ranks are
  merged (sums added, per-image rows joined by position) and every rank finalises the same.

A :class:`State` holds ``sums`` (float64 arrays, added across batches and ranks) and ``rows``
(per-image arrays keyed by the image's position in the source), so that an interrupted and
resumed run, a 2-rank run and a 1-process run give the same result.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..capture import Site, capture
from ..data.images import MAX_PIXELS
from ..data.preprocess import EvalTransform, preprocess_for
from ..data.sources import Batch, image_source, iter_batches, to_pil
from ..distributed import all_gather_objects, is_distributed, rank, world_size
from ..errors import BadImageError, CheckpointError, Interrupted
from ..results import Result, json_default
from ._eval_mode import eval_mode

__all__ = ["Analysis", "RunInfo", "State", "run"]


# ----------------------------------------------------------------------------- state
class State:
    """What an analysis keeps: ``sums`` (added) and per-image ``rows`` (keyed by position)."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.rows: dict[str, dict[int, np.ndarray]] = {}
        self.info: dict[str, Any] = {}

    def add(self, key: str, value: Any) -> None:
        """``sums[key] += value`` (float64; created on first use)."""
        v = np.asarray(value, dtype=np.float64)
        if key in self.sums:
            self.sums[key] = self.sums[key] + v
        else:
            self.sums[key] = v.copy()

    def sum(self, key: str, default: Any = 0.0) -> np.ndarray:
        return self.sums.get(key, np.asarray(default, dtype=np.float64))

    def put(self, key: str, index: int, value: Any) -> None:
        """Keep ``value`` for the image at source position ``index``."""
        self.rows.setdefault(key, {})[int(index)] = np.asarray(value)

    def stacked(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, values)`` of one row key, in position order."""
        table = self.rows.get(key, {})
        order = sorted(table)
        if not order:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        return np.asarray(order, dtype=np.int64), np.stack([table[i] for i in order])

    def merge(self, other: State) -> None:
        for k, v in other.sums.items():
            self.add(k, v)
        for k, table in other.rows.items():
            self.rows.setdefault(k, {}).update(table)
        for k, v in other.info.items():
            self.info.setdefault(k, v)

    # -- on disk: npz without pickles ------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {f"sum::{k}": v for k, v in self.sums.items()}
        for k in self.rows:
            idx, values = self.stacked(k)
            out[f"rowidx::{k}"] = idx
            out[f"row::{k}"] = values
        out["info"] = np.asarray(json.dumps(self.info, default=json_default))
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> State:
        state = cls()
        for key, v in arrays.items():
            kind, _, name = key.partition("::")
            if kind == "sum":
                state.sums[name] = v.astype(np.float64)
            elif kind == "row":
                idx = arrays[f"rowidx::{name}"]
                state.rows[name] = {int(i): v[j] for j, i in enumerate(idx)}
        if "info" in arrays:
            state.info = json.loads(str(arrays["info"]))
        return state


@dataclass
class RunInfo:
    """Facts of a run that every result records: the images, skips, time, model, config."""

    n_items: int
    n_images: int
    skipped: list[tuple[str, str]]
    class_names: list[str]
    seconds: float
    sites: list[Site]
    model_class: str
    preprocess: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.seconds if self.seconds > 0 else float("nan")

    def meta(self) -> dict[str, Any]:
        """The ``meta["run"]`` record of a result."""
        return {
            "n_items": self.n_items,
            "n_images": self.n_images,
            "n_skipped": len(self.skipped),
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
            "model_class": self.model_class,
            "preprocess": self.preprocess,
            "world_size": self.world_size,
        }


# ----------------------------------------------------------------------------- analysis
class Analysis:
    """Base of every analysis (see the module docstring). Subclasses set ``name``."""

    name: ClassVar[str] = ""
    needs_grad: ClassVar[bool] = False  # run the forward with gradients (Grad-CAM)
    keep_images: bool = False  # give step() the decoded images of the batch
    accepts_prepared: ClassVar[bool] = True  # can run on a tensor of prepared model inputs
    transform: EvalTransform | None = None  # set by run(): the model's evaluation transform
    n_items: int | None = None  # set by run(): the images of the whole run, all ranks

    def sites(self, model: nn.Module) -> list[Site]:
        """The sites this analysis reads (raise a clear error if the model has none)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def params(self) -> dict[str, Any]:
        """The analysis parameters: enter the checkpoint fingerprint and the manifest."""
        return {}

    def capture_options(self) -> dict[str, Any]:
        """Extra keyword arguments of :func:`attnviz.capture` (``io``, ``queries``, ``reduce``)."""
        return {}

    def prepare(self, image: Image.Image | Tensor, transform: EvalTransform | None) -> Tensor:
        """One image -> its model input (a tensor item is already one)."""
        if isinstance(image, Tensor):
            t = image[0] if image.dim() == 4 and image.shape[0] == 1 else image
            if t.dim() != 3:
                raise ValueError(f"expected an image tensor (C, H, W), got {tuple(t.shape)}")
            return t.float()
        assert transform is not None
        return transform(image)

    def inputs(self, x: Tensor) -> Tensor:
        """The batch of prepared items -> the model's input batch (one forward)."""
        return x

    def forward(self, model: nn.Module, x: Tensor, batch: Batch) -> Any:
        """The batch's one forward (override to run it through e.g. captum)."""
        return model(x)

    def step(self, state: State, batch: Batch, cache: Any, output: Any) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def finalise(self, state: State, run: RunInfo) -> Result:
        raise NotImplementedError  # pragma: no cover - abstract


# ----------------------------------------------------------------------------- checkpoints
#: what a run's checkpoint holds beside the state (the runner has always written all four)
CHECKPOINT_KEYS = ("fingerprint", "position", "skipped", "seconds")


def _checkpoint_file(directory: Path, name: str) -> Path:
    return directory / f"{name}-rank{rank()}-of{world_size()}.npz"


def _save_checkpoint(path: Path, meta: dict[str, Any], state: State) -> None:
    from ..results import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = state.arrays()
    arrays["checkpoint"] = np.asarray(json.dumps(meta, default=json_default))

    def write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def read_checkpoint(path: Path) -> tuple[dict[str, Any], State]:
    """``(meta, state)`` of a checkpoint file; :class:`CheckpointError` if unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("checkpoint")))
        return meta, State.from_arrays(arrays)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(exc).__name__}); run with --overwrite "
            "to start over"
        ) from None


def _mismatch(saved: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What differs between two fingerprints, in words, or None."""
    for key in now:
        if key == "items":
            continue
        if saved.get(key) != now.get(key):
            return f"{key} changed (checkpoint: {saved.get(key)!r}, now: {now.get(key)!r})"
    old, new = saved.get("items", []), now.get("items", [])
    if len(old) != len(new):
        return f"the number of images changed ({len(old)} -> {len(new)})"
    for a, b in zip(old, new):
        if a != b:
            return f"image {b[0]} changed (size or modification time, or another file)"
    return None


# ----------------------------------------------------------------------------- the runner
def _check_positive(name: str, value: int | None, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def run(
    analysis: Analysis,
    model: nn.Module,
    images: Any,
    *,
    preprocess: Any = None,
    labels: Sequence[int] | None = None,
    batch_size: int = 16,
    workers: int = 0,
    limit: int | None = None,
    strict: bool = False,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 20,
    resume: bool = False,
    overwrite: bool = False,
    exclude: Sequence[str | os.PathLike] = (),
    fingerprint: dict[str, Any] | None = None,
    max_pixels: int | None = MAX_PIXELS,
) -> Result:
    """Run ``analysis`` on ``model`` over ``images`` (see the module docstring).

    ``images``: a folder, a list of paths, a (N, 3, H, W) tensor of model inputs, a Dataset
    or a DataLoader (:func:`attnviz.data.sources.image_source`). ``preprocess``: anything
    :func:`attnviz.data.preprocess.preprocess_for` takes; default the model's own. ``limit``:
    the first N items. ``checkpoint``: a folder for atomic checkpoints every
    ``checkpoint_every`` batches; an existing checkpoint is continued with ``resume=True``,
    replaced with ``overwrite=True``, and otherwise refused. ``exclude``: folders never read.
    ``fingerprint``: more facts a resumed run must share (model spec, weights sha256).
    ``max_pixels``: image files above this many pixels are skipped before decoding (None:
    PIL's own limit only).
    """
    _check_positive("batch_size", batch_size, allow_none=False)
    _check_positive("limit", limit)
    _check_positive("checkpoint_every", checkpoint_every, allow_none=False)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a whole number >= 0, got {workers!r}")
    sites = analysis.sites(model)
    source = image_source(images, labels, exclude=exclude, max_pixels=max_pixels)
    if source.prepared and not analysis.accepts_prepared:
        raise ValueError(
            f"{analysis.name} prepares its own inputs from images: give image files, PIL "
            "images or a Dataset of them, not a tensor of prepared model inputs"
        )
    _match_classes(source, preprocess)
    transform = None
    if not source.prepared:
        transform = preprocess_for(model if preprocess is None else preprocess)
    analysis.transform = transform  # in this process: prepare() may run in DataLoader workers
    n_items = len(source) if limit is None else min(len(source), limit)
    analysis.n_items = n_items
    rank_, world = rank(), world_size()
    shard = list(range(rank_, n_items, world))

    state, position, skipped, earlier_seconds = State(), 0, [], 0.0
    ckpt = None
    fp = {
        "analysis": analysis.name,
        "params": analysis.params(),
        "sites": [s.name for s in sites],
        "world_size": world,
        "rank": rank_,
        **(fingerprint or {}),
        **({} if max_pixels == MAX_PIXELS else {"max_pixels": max_pixels}),
        "items": source.fingerprint()[:n_items],
    }
    if checkpoint is not None:
        ckpt = _checkpoint_file(Path(checkpoint), analysis.name)
        if ckpt.exists() and resume:
            meta, state = read_checkpoint(ckpt)
            lacking = [key for key in CHECKPOINT_KEYS if key not in meta]
            why = (
                f"it lacks {', '.join(lacking)}" if lacking else _mismatch(meta["fingerprint"], fp)
            )
            if why is not None:
                raise CheckpointError(
                    f"cannot resume from {ckpt}: {why}; run with --overwrite to start over"
                )
            position = int(meta["position"])
            skipped = [tuple(s) for s in meta["skipped"]]
            earlier_seconds = float(meta["seconds"])
        elif ckpt.exists() and not overwrite:
            done = _checkpoint_position(ckpt)
            raise CheckpointError(
                f"{ckpt} holds an unfinished run ({done} of {len(shard)} images): use --resume "
                "to continue it or --overwrite to start over"
            )
        elif resume and not ckpt.exists() and rank_ == 0:
            print(
                f"{analysis.name}: nothing to resume (no checkpoint {ckpt.name} in "
                f"{ckpt.parent}): starting a fresh run",
                file=sys.stderr,
            )

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    bar = _progress(progress and rank_ == 0, len(shard), position, analysis.name)
    started = time.perf_counter()
    batches = 0

    def prepare(image: Image.Image | Tensor) -> Tensor:
        if isinstance(image, Tensor) and not source.prepared:
            image = to_pil(image)
        return analysis.prepare(image, transform)

    def save() -> None:
        if ckpt is not None:
            seconds = earlier_seconds + time.perf_counter() - started
            meta = {"fingerprint": fp, "position": position, "skipped": skipped, "seconds": seconds}
            _save_checkpoint(ckpt, meta, state)

    grad = torch.enable_grad() if analysis.needs_grad else torch.no_grad()
    try:
        # an analysis may read no site at all (Grad-CAM of a model without attention)
        recording = capture(model, sites=sites, **analysis.capture_options()) if sites else None
        with eval_mode(model), recording or contextlib.nullcontext() as cache:
            for batch in iter_batches(
                source,
                shard[position:],
                batch_size,
                prepare,
                workers=workers,
                keep_images=analysis.keep_images,
            ):
                for i, ident, reason in batch.skipped:
                    if strict:
                        raise BadImageError(f"skipped {ident}: {reason} (strict)")
                    skipped.append((i, ident, reason))
                if len(batch):
                    x = analysis.inputs(batch.x).to(device)
                    with grad:
                        output = analysis.forward(model, x, batch)
                    analysis.step(state, batch, cache, output)
                    if cache is not None:
                        cache.clear()
                position += batch.positions
                batches += 1
                if bar is not None:
                    bar.update(batch.positions)
                if batches % checkpoint_every == 0:
                    save()
    except KeyboardInterrupt:
        save()
        where = f"; the checkpoint {ckpt} was kept: rerun with --resume" if ckpt else ""
        message = f"interrupted after {position} of {len(shard)} images{where}"
        raise Interrupted(message, None if ckpt is None else str(ckpt)) from None
    finally:
        if bar is not None:
            bar.close()
    seconds = earlier_seconds + time.perf_counter() - started
    state, skipped, seconds = _merge_ranks(state, skipped, seconds)
    if ckpt is not None:  # finished: the checkpoint would only block the next run
        ckpt.unlink(missing_ok=True)
    n_images = n_items - len(skipped)
    if n_images == 0:
        first = f" (first: {skipped[0][1]}: {skipped[0][2]})" if skipped else ""
        raise ValueError(f"no usable image: every input was skipped{first}")
    info = RunInfo(
        n_items=n_items,
        n_images=n_images,
        skipped=[(ident, reason) for _, ident, reason in skipped],
        class_names=list(source.class_names),
        seconds=seconds,
        sites=sites,
        model_class=f"{type(model).__module__}.{type(model).__qualname__}",
        preprocess=transform.as_dict() if transform is not None else {},
        world_size=world,
    )
    if progress and rank_ == 0:
        print(
            f"{analysis.name}: {n_images} images ({len(skipped)} skipped) in {seconds:.1f} s "
            f"({info.images_per_s:.1f} images/s)",
            file=sys.stderr,
        )
    result = analysis.finalise(state, info)
    meta = getattr(result, "meta", None)
    if isinstance(meta, dict):
        meta["run"] = info.meta()
        meta["params"] = analysis.params()
        if fingerprint:
            meta.update({k: v for k, v in fingerprint.items() if k not in meta})
    return result


def _match_classes(source: Any, preprocess: Any) -> None:
    """Label a folder's images in the model's class order, when the model's class names are
    known (``preprocess.classes``, e.g. a bundled model's manifest) and name every folder.

    An image folder numbers its class subfolders alphabetically; a model's outputs follow its
    training order. Without this, Grad-CAM would explain, and per-class tables would name, the
    wrong class.
    """
    classes = list(getattr(preprocess, "classes", None) or ())
    folders = list(source.class_names)
    if not classes or not folders or source.labels is None or folders == classes:
        return
    missing = [c for c in folders if c not in classes]
    if missing:
        import warnings

        warnings.warn(
            f"class folders {missing} are not among the model's classes; labels follow the "
            "folders' alphabetical order, which need not be the model's output order",
            stacklevel=3,
        )
        return
    to_model = [classes.index(c) for c in folders]
    source.labels = [to_model[label] for label in source.labels]
    source.class_names = classes


def _checkpoint_position(path: Path) -> int | str:
    with contextlib.suppress(Exception):
        with np.load(path, allow_pickle=False) as z:
            return int(json.loads(str(z["checkpoint"]))["position"])
    return "?"


def _merge_ranks(
    state: State, skipped: list[tuple[int, str, str]], seconds: float
) -> tuple[State, list[tuple[int, str, str]], float]:
    skipped = sorted(skipped)
    if not is_distributed():
        return state, skipped, seconds
    parts = all_gather_objects((state.arrays(), skipped, seconds))
    merged = State()
    all_skipped: list[tuple[int, str, str]] = []
    for arrays, sk, _ in parts:
        merged.merge(State.from_arrays(arrays))
        all_skipped.extend(tuple(s) for s in sk)
    return merged, sorted(all_skipped), max(p[2] for p in parts)


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc=desc, leave=False)
