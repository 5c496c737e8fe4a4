"""SENet's "role of excitation" (Hu et al., TPAMI 2019, Sec. 7.2, Fig. 6 and 7).

For every selected channel-attention site (``se``, ``eca``, ``cbam_channel``) the excitation
s = sigmoid(W2 delta(W1 z)) (Eq. 3) of every image is accumulated per class: mean and std per
channel (Fig. 7), and the mean over all images (the "all" curve of Fig. 6). Accumulation is
streaming: float64 sums and sums of squares per class, so memory does not grow with the number
of images and the result does not depend on the batch size (up to float64 rounding).

Default sites, the paper's rule generalised: the last site of every stage plus every site of
the last stage (SE-ResNet-50: SE_2_3, SE_3_4, SE_4_6, SE_5_1, SE_5_2, SE_5_3). Sites without a
stage (running-number aliases) are all taken.

Class specificity of a site (how much the excitation depends on the class, rising with depth
in the paper): with m_kc the mean excitation of channel c over the images of class k (the
recorded classes with at least one image), and sigma_c the std of channel c over all images,

    class_spread = mean_c std_k(m_kc)                     (std over classes, ddof=0)
    specificity  = mean_c std_k(m_kc) / mean_c sigma_c

``specificity`` is 0 when every class has the same mean excitation and grows towards 1 when the
spread of the excitation is all between classes (in the paper's late stages); it is
scale-free, so a saturated site (SE_5_2, all values near 1) is not called specific just for
being large or small. It needs at least two classes (else NaN). With few images per class the
class means of a class-blind excitation still differ by about sigma_c / sqrt(n_k), so the
table also gives ``specificity_chance`` = sqrt((K - 1) / K * mean_k(1 / n_k)), the approximate
value a class-blind site would reach with these class sizes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn

from ..capture import Site, capture, find_sites
from ..data.sources import PreprocessConfigError, image_source, iter_batches
from ..errors import NoAttentionSitesError
from ..results import load_result_dir, save_result_dir, versions
from ._eval_mode import eval_mode

CHANNEL_KINDS: tuple[str, ...] = ("se", "eca", "cbam_channel")


# ----------------------------------------------------------------------------- image batches
@dataclass
class ImageBatch:
    """One batch fed to the model: inputs, labels (-1 = unknown), ids and display images."""

    x: Tensor
    labels: list[int]
    ids: list[str]
    display: list[np.ndarray] | None = None  # HxWx3 uint8 views of what the model saw


@dataclass
class ImageStream:
    """Batches of a source of images, with class names and the files skipped (with reasons)."""

    batches: Iterator[ImageBatch]
    class_names: list[str]
    skipped: list[tuple[str, str]]
    total: int | None


def _resolve_preprocess(preprocess: Any, model: nn.Module) -> Any:
    """A callable PIL image -> tensor or a config: ``preprocess``, else the timm model's."""
    if preprocess is not None:
        return preprocess
    if getattr(model, "pretrained_cfg", None) is None:
        raise PreprocessConfigError(
            "images given as files or PIL images need preprocess=: a PreprocessConfig "
            "(from attnviz.models.load_model), a timm data-config dict, or a callable "
            "PIL image -> (3, H, W) tensor"
        )
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)


def _transform(preprocess: Any, image: Image.Image) -> Tensor:
    """PIL image -> normalised tensor, by a callable or a config."""
    if callable(preprocess) and not isinstance(preprocess, dict):
        return preprocess(image)
    from ..data.views import base_view, normalise

    return normalise(base_view(image, preprocess), preprocess)


def _display(image: Image.Image | Tensor, x: Tensor, preprocess: Any) -> np.ndarray:
    """What the model saw as HxWx3 uint8: the config's view of a PIL image, else ``x`` scaled."""
    if isinstance(image, Image.Image) and preprocess is not None and not callable(preprocess):
        from ..data.views import base_view

        return np.asarray(base_view(image, preprocess), dtype=np.uint8)
    return display_from_tensor(x)


def display_from_tensor(x: Tensor) -> np.ndarray:
    """(3, H, W) normalised tensor -> HxWx3 uint8, min-max scaled (for overlays)."""
    a = x.detach().float().cpu().numpy().transpose(1, 2, 0)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.round(a * 255).astype(np.uint8)


def iter_image_batches(
    images: Any,
    model: nn.Module,
    *,
    labels: Sequence[int] | None = None,
    batch_size: int = 16,
    preprocess: Any = None,
    limit: int | None = None,
    keep_display: bool = False,
) -> ImageStream:
    """Batches from a folder, a list of paths, a (N, 3, H, W) tensor, a Dataset or a DataLoader.

    Non-tensor inputs are read by :func:`attnviz.data.sources.image_source` (ids: full paths
    or item positions); unusable files are skipped with a reason. Dataset items are
    ``(image, label)`` or ``image``, images PIL (preprocessed) or prepared tensors. ``labels``
    overrides the labels of the source. ``limit`` keeps the first N usable images.
    """
    skipped: list[tuple[str, str]] = []
    given = None if labels is None else [int(v) for v in labels]
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"an image tensor must be (N, 3, H, W), got {tuple(images.shape)}")
        total = len(images) if limit is None else min(len(images), limit)
        if given is not None and len(given) < total:
            raise ValueError(f"labels has {len(given)} entries for {total} images")

        def tensor_batches() -> Iterator[ImageBatch]:
            for start in range(0, total, batch_size):
                x = images[start : start + batch_size].float()
                stop = start + x.shape[0]
                ys = [given[i] if given else -1 for i in range(start, stop)]
                d = [display_from_tensor(t) for t in x] if keep_display else None
                yield ImageBatch(x, ys, [str(i) for i in range(start, stop)], d)

        return ImageStream(tensor_batches(), [], skipped, total)

    source = image_source(images, given, id_style="path")
    total = len(source) if limit is None else min(len(source), limit)
    resolved: list[Any] = []

    def to_tensor(img: Image.Image) -> Tensor:
        if not resolved:  # resolved on the first PIL image, so tensor sources need no config
            resolved.append(_resolve_preprocess(preprocess, model))
        return _transform(resolved[0], img)

    def gen() -> Iterator[ImageBatch]:
        for b in iter_batches(source, batch_size, to_tensor, limit=limit):
            skipped.extend(b.skipped)
            if not b.indices:
                continue
            ys = [-1 if y is None else y for y in b.labels]
            d = None
            if keep_display:
                d = [_display(img, t, (resolved or [None])[0]) for img, t in zip(b.images, b.x)]
            yield ImageBatch(b.x, ys, [source.ids[i] for i in b.indices], d)

    return ImageStream(gen(), source.class_names, skipped, total)


def _progress(it: Iterable, total: int | None, enabled: bool, desc: str) -> Iterable:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, unit="batch")


# ----------------------------------------------------------------------------- site selection
def default_excitation_sites(sites: Sequence[Site]) -> list[Site]:
    """Last site of every stage plus all sites of the last stage (SENet Fig. 6 rule)."""
    staged = [s for s in sites if s.stage is not None]
    if not staged:
        return list(sites)
    last_stage = max(s.stage for s in staged)
    last_of_stage: dict[int, Site] = {}
    for s in staged:
        last_of_stage[s.stage] = s  # module order: the last one wins
    keep = {s.name for s in last_of_stage.values()} | {
        s.name for s in staged if s.stage == last_stage
    }
    return [s for s in sites if s.name in keep]


def _channel_sites(model: nn.Module, sites: Iterable[str | Site] | None) -> list[Site]:
    all_sites = [s for s in find_sites(model) if s.kind in CHANNEL_KINDS]
    if not all_sites:
        kinds = sorted({s.kind for s in find_sites(model)})
        raise NoAttentionSitesError(
            f"{type(model).__name__} has no channel-attention site ({', '.join(CHANNEL_KINDS)}); "
            f"its sites are of kind {kinds or 'none'}"
        )
    if sites is None:
        return default_excitation_sites(all_sites)
    if isinstance(sites, str) and sites == "all":
        return all_sites
    wanted = [sites] if isinstance(sites, (str, Site)) else list(sites)
    by_key = {s.name: s for s in all_sites} | {s.alias: s for s in all_sites}
    out: list[Site] = []
    for w in wanted:
        key = w.name if isinstance(w, Site) else str(w)
        if key not in by_key:
            valid = ", ".join(f"{s.alias} ({s.name})" for s in all_sites)
            raise ValueError(f"unknown channel-attention site {key!r}; valid sites: {valid}")
        if by_key[key] not in out:
            out.append(by_key[key])
    return [s for s in all_sites if s in out]


def evenly_spaced_channels(n_channels: int, k: int) -> np.ndarray:
    """``k`` evenly spaced channel indices in [0, n_channels) (all channels if k >= C)."""
    if k <= 0:
        raise ValueError(f"channels must be positive, got {k}")
    if k >= n_channels:
        return np.arange(n_channels)
    return np.unique(np.round(np.linspace(0, n_channels - 1, k)).astype(np.int64))


# ----------------------------------------------------------------------------- result
@dataclass
class SiteExcitation:
    """Excitation statistics of one site. Arrays over all C channels (float64).

    ``class_mean`` / ``class_std`` are (K, C) in the order of ``ExcitationResult.classes``;
    ``mean`` / ``std`` (C,) over all images; ``channels`` the evenly spaced channel indices
    that the figures draw.
    """

    alias: str
    name: str
    kind: str
    stage: int | None
    block: int | None
    class_mean: np.ndarray
    class_std: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    channels: np.ndarray

    @property
    def n_channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def class_spread(self) -> float:
        """mean_c std_k(m_kc) over the classes that have images."""
        m = self.class_mean[~np.isnan(self.class_mean).any(axis=1)]
        if m.shape[0] < 2:
            return float("nan")
        return float(m.std(axis=0).mean())

    @property
    def specificity(self) -> float:
        """class_spread / mean_c sigma_c (see the module docstring)."""
        total = float(self.std.mean())
        spread = self.class_spread
        if not np.isfinite(spread) or total <= 0:
            return float("nan")
        return spread / total


@dataclass
class ExcitationResult:
    """Per site and class the mean / std excitation per channel (SENet Fig. 6 / 7).

    ``classes`` are the class labels recorded per class (indices into the model's outputs or
    the dataset's labels), ``class_names`` their names, ``counts`` the images per class (K,),
    ``n_images`` all images (including those of unrecorded classes, which count in the
    all-image mean), ``label_source`` "given" or "prediction", ``skipped`` the unusable inputs.
    """

    sites: list[SiteExcitation]
    classes: list[int]
    class_names: list[str]
    counts: np.ndarray
    n_images: int
    label_source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- access ---------------------------------------------------------------------------
    @property
    def aliases(self) -> list[str]:
        return [s.alias for s in self.sites]

    def site(self, key: str) -> SiteExcitation:
        for s in self.sites:
            if key in (s.alias, s.name):
                return s
        raise KeyError(f"no site {key!r}; sites: {self.aliases}")

    def class_index(self, cls: int | str) -> int:
        """Row of ``cls`` (a label or a class name) in the (K, C) arrays."""
        if isinstance(cls, str):
            if cls in self.class_names:
                return self.class_names.index(cls)
            raise KeyError(f"no class {cls!r}; classes: {self.class_names}")
        if int(cls) in self.classes:
            return self.classes.index(int(cls))
        raise KeyError(f"no class {cls!r}; classes: {self.classes}")

    def specificity_chance(self) -> float:
        """sqrt((K - 1) / K * mean_k(1 / n_k)) over the K classes with images (see module doc)."""
        n = np.asarray(self.counts, dtype=np.float64)
        n = n[n > 0]
        if n.size < 2:
            return float("nan")
        return float(np.sqrt((n.size - 1) / n.size * np.mean(1.0 / n)))

    def specificity(self) -> pd.DataFrame:
        """One row per site (in depth order): alias, stage, block, class_spread, specificity."""
        chance = self.specificity_chance()
        return pd.DataFrame(
            [
                {
                    "site": s.alias,
                    "name": s.name,
                    "kind": s.kind,
                    "stage": s.stage,
                    "block": s.block,
                    "channels": s.n_channels,
                    "mean_excitation": float(s.mean.mean()),
                    "class_spread": s.class_spread,
                    "specificity": s.specificity,
                    "specificity_chance": chance,
                }
                for s in self.sites
            ]
        )

    def to_frame(self) -> pd.DataFrame:
        """Long table: site, class ("all" for all images), channel, mean, std, count."""
        rows = []
        for s in self.sites:
            for c in range(s.n_channels):
                rows.append(("all", -1, self.n_images, s.mean[c], s.std[c], s, c))
                for k, (label, name) in enumerate(zip(self.classes, self.class_names)):
                    rows.append(
                        (name, label, self.counts[k], s.class_mean[k, c], s.class_std[k, c], s, c)
                    )
        return pd.DataFrame(
            {
                "site": [r[5].alias for r in rows],
                "class_name": [r[0] for r in rows],
                "label": [r[1] for r in rows],
                "count": [int(r[2]) for r in rows],
                "channel": [r[6] for r in rows],
                "mean": [float(r[3]) for r in rows],
                "std": [float(r[4]) for r in rows],
            }
        )

    # -- persistence ----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``excitation.npz``, ``excitation.csv``, ``specificity.csv``, ``manifest.json``.

        Written into a temporary folder next to ``directory`` and moved into place at once.
        """
        directory = Path(directory)
        arrays: dict[str, np.ndarray] = {"counts": np.asarray(self.counts)}
        for i, s in enumerate(self.sites):
            for key in ("class_mean", "class_std", "mean", "std", "channels"):
                arrays[f"site{i}/{key}"] = np.asarray(getattr(s, key))
        manifest = {
            "analysis": "excitation",
            "paper": "Hu et al., Squeeze-and-Excitation Networks, TPAMI 2019, Fig. 6/7",
            "sites": [
                {
                    "alias": s.alias,
                    "name": s.name,
                    "kind": s.kind,
                    "stage": s.stage,
                    "block": s.block,
                }
                for s in self.sites
            ],
            "classes": self.classes,
            "class_names": self.class_names,
            "n_images": self.n_images,
            "label_source": self.label_source,
            "skipped": [list(x) for x in self.skipped],
            "meta": self.meta,
            "versions": versions(),
        }
        frames = {"excitation.csv": self.to_frame(), "specificity.csv": self.specificity()}
        return save_result_dir(
            directory,
            arrays=arrays,
            frames=frames,
            manifest=manifest,
            npz_name="excitation.npz",
            keep_other_files=True,
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ExcitationResult:
        manifest, data = load_result_dir(directory, "excitation.npz")
        sites = [
            SiteExcitation(
                alias=d["alias"],
                name=d["name"],
                kind=d["kind"],
                stage=d["stage"],
                block=d["block"],
                class_mean=data[f"site{i}/class_mean"],
                class_std=data[f"site{i}/class_std"],
                mean=data[f"site{i}/mean"],
                std=data[f"site{i}/std"],
                channels=data[f"site{i}/channels"],
            )
            for i, d in enumerate(manifest["sites"])
        ]
        return cls(
            sites=sites,
            classes=[int(c) for c in manifest["classes"]],
            class_names=list(manifest["class_names"]),
            counts=data["counts"],
            n_images=int(manifest["n_images"]),
            label_source=manifest["label_source"],
            skipped=[tuple(x) for x in manifest["skipped"]],
            meta=manifest.get("meta", {}),
        )


# ----------------------------------------------------------------------------- the analysis
class _Accumulator:
    """float64 per-class sums and sums of squares of one site's (B, C) excitations."""

    def __init__(self) -> None:
        self.sum: dict[int, np.ndarray] = {}
        self.sumsq: dict[int, np.ndarray] = {}
        self.count: dict[int, int] = {}
        self.total_sum: np.ndarray | None = None
        self.total_sumsq: np.ndarray | None = None

    def add(self, s: np.ndarray, labels: np.ndarray) -> None:
        s = s.astype(np.float64)
        if self.total_sum is None:
            self.total_sum = np.zeros(s.shape[1])
            self.total_sumsq = np.zeros(s.shape[1])
        self.total_sum += s.sum(axis=0)
        self.total_sumsq += (s * s).sum(axis=0)
        for label in np.unique(labels):
            rows = s[labels == label]
            key = int(label)
            if key not in self.sum:
                self.sum[key] = np.zeros(s.shape[1])
                self.sumsq[key] = np.zeros(s.shape[1])
                self.count[key] = 0
            self.sum[key] += rows.sum(axis=0)
            self.sumsq[key] += (rows * rows).sum(axis=0)
            self.count[key] += rows.shape[0]


def _mean_std(total: np.ndarray, total_sq: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    if n == 0:
        nan = np.full_like(total, np.nan)
        return nan, nan
    mean = total / n
    var = np.maximum(total_sq / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def _resolve_classes(
    classes: Sequence[int | str] | None, present: Sequence[int], names: Sequence[str]
) -> list[int]:
    if classes is None:
        return sorted(present)
    out = []
    for c in classes:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in names:
                raise ValueError(f"unknown class {c!r}; class names: {list(names)}")
            out.append(list(names).index(c))
        else:
            out.append(int(c))
    return out


def excitation_profile(
    model: nn.Module,
    images: Any,
    *,
    labels: Sequence[int] | None = None,
    classes: Sequence[int | str] | None = None,
    sites: Iterable[str | Site] | str | None = None,
    channels: int = 50,
    batch_size: int = 16,
    preprocess: Any = None,
    limit: int | None = None,
    progress: bool = True,
) -> ExcitationResult:
    """Class-wise excitation per channel at channel-attention sites (SENet TPAMI Fig. 6 / 7).

    ``images``: a folder (class subfolders give labels), a list of paths, a (N, 3, H, W)
    tensor, a Dataset of ``(image, label)`` or a DataLoader. Classes are the ground-truth
    labels (``labels=`` or from the source); without labels the model's predictions are used
    (``label_source="prediction"``). ``classes``: labels or class names to record per class
    (default: every class present). ``sites``: names / aliases, ``"all"``, or None for the
    paper's rule (see the module docstring). ``channels``: how many evenly spaced channels the
    figures show (statistics are kept for all). The model runs in eval mode under
    ``torch.no_grad``; its training flag is restored afterwards.
    """
    chosen = _channel_sites(model, sites)
    stream = iter_image_batches(
        images, model, labels=labels, batch_size=batch_size, preprocess=preprocess, limit=limit
    )
    acc = {s.name: _Accumulator() for s in chosen}
    n_images = 0
    label_source = "given"
    sources: set[str] = set()
    with eval_mode(model):
        with torch.no_grad(), capture(model, sites=[s.name for s in chosen]) as cache:
            total = None if stream.total is None else -(-stream.total // batch_size)
            for batch in _progress(stream.batches, total, progress, "excitation"):
                cache.clear()
                device = next(model.parameters()).device
                logits = model(batch.x.to(device))
                y = np.asarray(batch.labels, dtype=np.int64)
                if (y < 0).any():
                    pred = logits.argmax(dim=1).cpu().numpy()
                    y = np.where(y < 0, pred, y)
                    sources.add("prediction")
                if (np.asarray(batch.labels) >= 0).any():
                    sources.add("given")
                for s in chosen:
                    a = cache[s.name]
                    if a.shape[0] != y.shape[0]:
                        raise RuntimeError(
                            f"site {s.alias} fired {a.shape[0] // max(len(y), 1)} times per "
                            "image; excitation needs one excitation per image and site"
                        )
                    acc[s.name].add(a.numpy(), y)
                n_images += len(y)
    if n_images == 0:
        reasons = "; ".join(f"{p}: {r}" for p, r in stream.skipped[:5])
        raise ValueError(f"no usable images ({len(stream.skipped)} skipped: {reasons})")
    if sources == {"prediction"}:
        label_source = "prediction"
    elif len(sources) > 1:
        label_source = "mixed"

    present = sorted(set().union(*(a.count.keys() for a in acc.values())))
    names = stream.class_names
    want = _resolve_classes(classes, present, names)

    def name_of(label: int) -> str:
        return names[label] if 0 <= label < len(names) else str(label)

    first = acc[chosen[0].name]
    counts = np.asarray([first.count.get(k, 0) for k in want], dtype=np.int64)
    results = []
    for s in chosen:
        a = acc[s.name]
        mean, std = _mean_std(a.total_sum, a.total_sumsq, n_images)
        cm, cs = [], []
        for k in want:
            if k in a.count:
                m, sd = _mean_std(a.sum[k], a.sumsq[k], a.count[k])
            else:
                m, sd = _mean_std(np.zeros_like(mean), np.zeros_like(mean), 0)
            cm.append(m)
            cs.append(sd)
        results.append(
            SiteExcitation(
                alias=s.alias,
                name=s.name,
                kind=s.kind,
                stage=s.stage,
                block=s.block,
                class_mean=np.stack(cm) if cm else np.zeros((0, mean.shape[0])),
                class_std=np.stack(cs) if cs else np.zeros((0, mean.shape[0])),
                mean=mean,
                std=std,
                channels=evenly_spaced_channels(mean.shape[0], channels),
            )
        )
    return ExcitationResult(
        sites=results,
        classes=list(want),
        class_names=[name_of(k) for k in want],
        counts=counts,
        n_images=n_images,
        label_source=label_source,
        skipped=list(stream.skipped),
        meta={"model": type(model).__name__, "channels_shown": channels},
    )
