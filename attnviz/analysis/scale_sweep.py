"""SKNet object-scale sweep (Li et al., "Selective Kernel Networks", CVPR 2019, Sec. 4.4).

Each image is shown at the scales 1.0x, 1.5x, 2.0x (:mod:`attnviz.data.views`). At every SK
unit the selection weights a (branch 0, the smallest receptive field) and b (the largest; the
paper's "5x5") are captured, softmax over the M branches (Eq. 5). Per image and unit the mean
attention difference is

    D = mean_c(b_c) - mean_c(a_c)

(Fig. 3 right, Fig. 4). The paper's finding: D grows with object scale in early and middle
units (the large kernel is selected more for larger objects), not consistently in the last
stage.

The sweep streams: all views of a batch go through the model in one forward, and per unit and
scale only float64 sums (per branch and channel: sum and sum of squares of the attention;
sum and sum of squares of D, overall and per class) are kept, so memory does not depend on the
number of images (unless ``per_image=True``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .. import distributed as dist_utils
from ..capture import capture, find_sites
from ..capture.core import select_sites
from ..data.sources import image_source, to_pil
from ..data.views import ViewSpec, scale_views, view_spec
from ..errors import AttnvizError, NoAttentionSitesError
from ..results import MANIFEST_FILE, load_result_dir, save_result_dir, versions
from ._eval_mode import eval_mode

__all__ = [
    "BadImageError",
    "ScaleSweepResult",
    "UnitInfo",
    "resolve_preprocess",
    "scale_sweep",
    "stage_last_units",
]

DEFAULT_SCALES: tuple[float, ...] = (1.0, 1.5, 2.0)
_FORMAT_VERSION = 1


class BadImageError(AttnvizError):
    """An image was skipped while the sweep ran with ``strict=True``."""


# --------------------------------------------------------------------------- result
@dataclass(frozen=True)
class UnitInfo:
    """One SK unit of the swept model."""

    alias: str
    name: str
    stage: int | None
    block: int | None
    branches: int
    channels: int
    receptive_fields: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "name": self.name,
            "stage": self.stage,
            "block": self.block,
            "branches": self.branches,
            "channels": self.channels,
            "receptive_fields": list(self.receptive_fields),
        }


def stage_last_units(units: Sequence[UnitInfo]) -> list[str]:
    """Alias of the highest block of each stage (SK_2_3, SK_3_4, SK_4_6, SK_5_3 in SKNet-50)."""
    last: dict[int, UnitInfo] = {}
    for u in units:
        if u.stage is None:
            continue
        if u.stage not in last or (u.block or 0) > (last[u.stage].block or 0):
            last[u.stage] = u
    if not last:  # no stage structure: every unit
        return [u.alias for u in units]
    return [last[s].alias for s in sorted(last)]


@dataclass
class ScaleSweepResult:
    """Per SK unit and view scale: attention per branch and channel, D and its spread.

    Arrays are keyed by unit alias; ``S`` = number of scales, ``M`` branches, ``C`` channels,
    ``K`` classes, ``N`` images:

    * ``branch_mean[u]``, ``branch_std[u]``: (S, M, C) mean / std over images of the attention
      of each branch and channel (branch 0 = smallest receptive field);
    * ``d_mean[u]``, ``d_std[u]``, ``d_sem[u]``: (S,) mean of D over images, its standard
      deviation (ddof=1) and standard error;
    * ``class_d_mean[u]``, ``class_d_sem[u]``: (S, K) the same per class (NaN for a class
      without images); ``class_count``: (K,);
    * ``image_d[u]``: (N, S) per-image D and ``image_attention[u]``: (N, S, M, C) float32, only
      with ``per_image=True``; ``image_ids`` / ``image_labels`` name those images.
    """

    units: list[UnitInfo]
    scales: tuple[float, ...]
    n_images: int
    branch_mean: dict[str, np.ndarray]
    branch_std: dict[str, np.ndarray]
    d_mean: dict[str, np.ndarray]
    d_std: dict[str, np.ndarray]
    d_sem: dict[str, np.ndarray]
    class_names: list[str] = field(default_factory=list)
    class_count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    class_d_mean: dict[str, np.ndarray] = field(default_factory=dict)
    class_d_sem: dict[str, np.ndarray] = field(default_factory=dict)
    image_d: dict[str, np.ndarray] | None = None
    image_attention: dict[str, np.ndarray] | None = None
    image_ids: list[str] | None = None
    image_labels: list[int] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    # -- lookup ----------------------------------------------------------------------------
    @property
    def unit_aliases(self) -> list[str]:
        return [u.alias for u in self.units]

    def unit(self, key: str) -> UnitInfo:
        """A unit by alias or module name."""
        for u in self.units:
            if key in (u.alias, u.name):
                return u
        raise KeyError(f"unknown unit {key!r}; units: {self.unit_aliases}")

    def stage_last_units(self) -> list[str]:
        """Aliases of the last unit of each stage (the paper's Fig. 3 bars)."""
        return stage_last_units(self.units)

    def scale_index(self, scale: float) -> int:
        for i, s in enumerate(self.scales):
            if math.isclose(s, float(scale), rel_tol=0, abs_tol=1e-9):
                return i
        raise KeyError(f"scale {scale} was not swept; scales: {list(self.scales)}")

    def d_table(self) -> pd.DataFrame:
        """Mean D as a units x scales table (rows in model order)."""
        return pd.DataFrame(
            [self.d_mean[a] for a in self.unit_aliases],
            index=pd.Index(self.unit_aliases, name="unit"),
            columns=pd.Index([f"{s:g}x" for s in self.scales], name="scale"),
        )

    # -- frames ----------------------------------------------------------------------------
    def to_frame(self, what: str = "D") -> pd.DataFrame:
        """Tidy tables: ``"D"`` (unit, scale, class -> D, D_sem; class ``"all"`` = whole set),
        ``"channels"`` (unit, scale, branch, channel -> mean, std), ``"images"`` (image, unit,
        scale -> D; needs ``per_image=True``)."""
        if what == "D":
            return self._d_frame()
        if what == "channels":
            return self._channel_frame()
        if what == "images":
            return self._image_frame()
        raise ValueError(f"unknown table {what!r}; valid: 'D', 'channels', 'images'")

    def _d_frame(self) -> pd.DataFrame:
        rows = []
        for u in self.units:
            bm = self.branch_mean[u.alias]
            for si, s in enumerate(self.scales):
                base = {"unit": u.alias, "site": u.name, "stage": u.stage, "block": u.block}
                rows.append(
                    {
                        **base,
                        "scale": s,
                        "class": "all",
                        "n_images": self.n_images,
                        "D": float(self.d_mean[u.alias][si]),
                        "D_sem": float(self.d_sem[u.alias][si]),
                        "D_std": float(self.d_std[u.alias][si]),
                        "mean_a": float(bm[si, 0].mean()),
                        "mean_b": float(bm[si, -1].mean()),
                    }
                )
                for k, name in enumerate(self.class_names):
                    rows.append(
                        {
                            **base,
                            "scale": s,
                            "class": name,
                            "n_images": int(self.class_count[k]),
                            "D": float(self.class_d_mean[u.alias][si, k]),
                            "D_sem": float(self.class_d_sem[u.alias][si, k]),
                            "D_std": float("nan"),
                            "mean_a": float("nan"),
                            "mean_b": float("nan"),
                        }
                    )
        return pd.DataFrame(rows)

    def _channel_frame(self) -> pd.DataFrame:
        parts = []
        for u in self.units:
            mean, std = self.branch_mean[u.alias], self.branch_std[u.alias]
            s_idx, m_idx, c_idx = np.meshgrid(
                np.arange(len(self.scales)),
                np.arange(mean.shape[1]),
                np.arange(mean.shape[2]),
                indexing="ij",
            )
            parts.append(
                pd.DataFrame(
                    {
                        "unit": u.alias,
                        "scale": np.asarray(self.scales)[s_idx.ravel()],
                        "branch": m_idx.ravel(),
                        "channel": c_idx.ravel(),
                        "mean": mean.ravel(),
                        "std": std.ravel(),
                    }
                )
            )
        return pd.concat(parts, ignore_index=True)

    def _image_frame(self) -> pd.DataFrame:
        if self.image_d is None or self.image_ids is None:
            raise ValueError("per-image D was not kept: run scale_sweep(..., per_image=True)")
        rows = []
        for u in self.units:
            d = self.image_d[u.alias]
            for i, image in enumerate(self.image_ids):
                label = self.image_labels[i] if self.image_labels else None
                for si, s in enumerate(self.scales):
                    rows.append(
                        {
                            "image": image,
                            "label": label,
                            "unit": u.alias,
                            "scale": s,
                            "D": float(d[i, si]),
                        }
                    )
        return pd.DataFrame(rows)

    # -- save / load -----------------------------------------------------------------------
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``scale_sweep.npz``, ``D.csv``, ``channels.csv`` (and ``images.csv``) and
        ``manifest.json`` into ``directory``, atomically (temporary folder, then rename)."""
        arrays: dict[str, np.ndarray] = {"class_count": self.class_count}
        per_unit = {
            "branch_mean": self.branch_mean,
            "branch_std": self.branch_std,
            "d_mean": self.d_mean,
            "d_std": self.d_std,
            "d_sem": self.d_sem,
            "class_d_mean": self.class_d_mean,
            "class_d_sem": self.class_d_sem,
            "image_d": self.image_d or {},
            "image_attention": self.image_attention or {},
        }
        for key, table in per_unit.items():
            for alias, arr in table.items():
                arrays[f"{key}::{alias}"] = arr
        frames = {
            "D.csv": self.to_frame("D"),
            "channels.csv": self.to_frame("channels"),
        }
        if self.image_d is not None:
            frames["images.csv"] = self.to_frame("images")
        manifest = {
            "analysis": "scale_sweep",
            "format_version": _FORMAT_VERSION,
            "scales": list(self.scales),
            "n_images": self.n_images,
            "units": [u.as_dict() for u in self.units],
            "class_names": self.class_names,
            "per_image": self.image_d is not None,
            "image_ids": self.image_ids,
            "image_labels": self.image_labels,
            "n_skipped": len(self.skipped),
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            **{k: v for k, v in self.meta.items() if k not in _MANIFEST_KEYS},
            "versions": self.meta.get("versions") or versions(),
        }
        return save_result_dir(
            directory,
            arrays=arrays,
            frames=frames,
            manifest=manifest,
            npz_name="scale_sweep.npz",
            compress=False,
        )

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ScaleSweepResult:
        """Read a result written by :meth:`save`."""
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST_FILE).read_text())
        if manifest.get("analysis") != "scale_sweep":
            raise ValueError(f"{directory} does not hold a scale-sweep result")
        _, npz = load_result_dir(directory, "scale_sweep.npz")
        class_count = npz["class_count"]
        tables: dict[str, dict[str, np.ndarray]] = {}
        for key, arr in npz.items():
            if "::" in key:
                name, alias = key.split("::", 1)
                tables.setdefault(name, {})[alias] = arr
        units = [
            UnitInfo(
                alias=u["alias"],
                name=u["name"],
                stage=u["stage"],
                block=u["block"],
                branches=u["branches"],
                channels=u["channels"],
                receptive_fields=tuple(u.get("receptive_fields", ())),
            )
            for u in manifest["units"]
        ]
        per_image = manifest.get("per_image", False)
        meta = {k: v for k, v in manifest.items() if k not in _MANIFEST_KEYS}
        meta["versions"] = manifest.get("versions")
        return cls(
            units=units,
            scales=tuple(float(s) for s in manifest["scales"]),
            n_images=int(manifest["n_images"]),
            branch_mean=tables.get("branch_mean", {}),
            branch_std=tables.get("branch_std", {}),
            d_mean=tables.get("d_mean", {}),
            d_std=tables.get("d_std", {}),
            d_sem=tables.get("d_sem", {}),
            class_names=list(manifest.get("class_names", [])),
            class_count=class_count,
            class_d_mean=tables.get("class_d_mean", {}),
            class_d_sem=tables.get("class_d_sem", {}),
            image_d=tables.get("image_d", {}) if per_image else None,
            image_attention=tables.get("image_attention", {}) if per_image else None,
            image_ids=manifest.get("image_ids") if per_image else None,
            image_labels=manifest.get("image_labels") if per_image else None,
            skipped=[(s["file"], s["reason"]) for s in manifest.get("skipped", [])],
            meta=meta,
        )

    def summary(self, digits: int = 4) -> str:
        """Plain-text table of D (mean +- standard error) per unit and scale."""
        header = ["unit"] + [f"D @ {s:g}x" for s in self.scales]
        rows = [header]
        last = set(self.stage_last_units())
        for u in self.units:
            mark = " *" if u.alias in last else ""
            cells = [
                f"{self.d_mean[u.alias][i]:+.{digits}f} ± {self.d_sem[u.alias][i]:.{digits}f}"
                for i in range(len(self.scales))
            ]
            rows.append([u.alias + mark, *cells])
        widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(
            f"D = mean_c(b_c) - mean_c(a_c) over {self.n_images} images "
            f"(mean ± standard error; * = last unit of its stage)"
        )
        if self.skipped:
            lines.append(f"{len(self.skipped)} file(s) skipped (listed in manifest.json)")
        return "\n".join(lines)


_MANIFEST_KEYS = frozenset(
    {
        "analysis",
        "format_version",
        "scales",
        "n_images",
        "units",
        "class_names",
        "per_image",
        "image_ids",
        "image_labels",
        "n_skipped",
        "skipped",
        "versions",
    }
)


# --------------------------------------------------------------------------- preprocessing
def resolve_preprocess(model: nn.Module, preprocess: Any = None) -> Any:
    """The views' preprocessing config: ``preprocess`` if given, else the config attached to
    the model by ``attnviz.models.load_model``, else timm's ``resolve_data_config``."""
    if preprocess is not None:
        return preprocess
    for attr in ("preprocess_config", "attnviz_preprocess", "preprocess"):
        cfg = getattr(model, attr, None)
        if cfg is not None and not callable(cfg):
            return cfg
    from ..models.tiny import TinyResNet

    if isinstance(model, TinyResNet):  # attnviz's tiny models: 64 px, as trained
        from ..models.train import IMAGE_SIZE, MEAN, STD

        return {
            "input_size": (3, IMAGE_SIZE, IMAGE_SIZE),
            "mean": MEAN,
            "std": STD,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
        }
    if getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None):
        from timm.data import resolve_data_config

        return resolve_data_config(model=model)
    raise ValueError(
        f"cannot tell the input preprocessing of {type(model).__name__}: pass "
        "preprocess=PreprocessConfig (from attnviz.models.load_model) or a dict with "
        "input_size, mean, std, interpolation and crop_pct"
    )


def _source_meta(preprocess: Any) -> dict[str, Any]:
    src = getattr(preprocess, "source", None)
    if src is None and isinstance(preprocess, Mapping):
        src = preprocess.get("source")
    if src is None:
        return {}
    if isinstance(src, Mapping):
        return {k: v for k, v in src.items()}
    if hasattr(src, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(src)
    return {"source": str(src)}


# --------------------------------------------------------------------------- accumulation
class _Accumulators:
    """float64 sums per unit and scale; plain tensors so they can be all-reduced and saved."""

    def __init__(self, units: list[UnitInfo], n_scales: int, n_classes: int, per_image: bool):
        self.units = units
        self.n_scales = n_scales
        self.per_image = per_image
        self.t: dict[str, Tensor] = {"count": torch.zeros(1, dtype=torch.float64)}
        self.t["class_count"] = torch.zeros(n_classes, dtype=torch.float64)
        for u in units:
            shape = (n_scales, u.branches, u.channels)
            self.t[f"att_sum::{u.alias}"] = torch.zeros(shape, dtype=torch.float64)
            self.t[f"att_sq::{u.alias}"] = torch.zeros(shape, dtype=torch.float64)
            self.t[f"d_sum::{u.alias}"] = torch.zeros(n_scales, dtype=torch.float64)
            self.t[f"d_sq::{u.alias}"] = torch.zeros(n_scales, dtype=torch.float64)
            self.t[f"cd_sum::{u.alias}"] = torch.zeros(n_scales, n_classes, dtype=torch.float64)
            self.t[f"cd_sq::{u.alias}"] = torch.zeros(n_scales, n_classes, dtype=torch.float64)
        # per image (only with per_image): source index, D (U, S), attention per unit
        self.image_index: list[int] = []
        self.image_label: list[int] = []
        self.image_d: dict[str, list[Tensor]] = {u.alias: [] for u in units}
        self.image_att: dict[str, list[Tensor]] = {u.alias: [] for u in units}

    @property
    def n_classes(self) -> int:
        return int(self.t["class_count"].shape[0])

    def grow_classes(self, n: int) -> None:
        extra = n - self.n_classes
        if extra <= 0:
            return
        for key, val in list(self.t.items()):
            if key == "class_count" or key.startswith(("cd_sum::", "cd_sq::")):
                pad = torch.zeros(*val.shape[:-1], extra, dtype=val.dtype)
                self.t[key] = torch.cat([val, pad], dim=-1)

    def update(
        self, att: Mapping[str, Tensor], labels: Tensor | None, indices: Sequence[int]
    ) -> None:
        """``att[alias]``: (S, B, M, C) attention of one batch; labels (B,) or None."""
        b = len(indices)
        self.t["count"] += b
        if labels is not None:
            self.grow_classes(int(labels.max()) + 1)
            self.t["class_count"].index_add_(0, labels, torch.ones(b, dtype=torch.float64))
        for u in self.units:
            a = att[u.alias].to(torch.float64)
            self.t[f"att_sum::{u.alias}"] += a.sum(dim=1)
            self.t[f"att_sq::{u.alias}"] += (a * a).sum(dim=1)
            d = a[:, :, -1].mean(dim=-1) - a[:, :, 0].mean(dim=-1)  # (S, B)
            self.t[f"d_sum::{u.alias}"] += d.sum(dim=1)
            self.t[f"d_sq::{u.alias}"] += (d * d).sum(dim=1)
            if labels is not None:
                self.t[f"cd_sum::{u.alias}"].index_add_(1, labels, d)
                self.t[f"cd_sq::{u.alias}"].index_add_(1, labels, d * d)
            if self.per_image:
                self.image_d[u.alias].append(d.t().contiguous())  # (B, S)
                self.image_att[u.alias].append(a.transpose(0, 1).to(torch.float32))
        if self.per_image:
            self.image_index.extend(int(i) for i in indices)
            lab = labels.tolist() if labels is not None else [-1] * b
            self.image_label.extend(int(v) for v in lab)

    # -- checkpoint state (plain tensors, lists, strings: torch.load(weights_only=True)) ----
    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"t": dict(self.t)}
        if self.per_image:
            state["image_index"] = torch.tensor(self.image_index, dtype=torch.int64)
            state["image_label"] = torch.tensor(self.image_label, dtype=torch.int64)
            state["image_d"] = {k: _cat(v, (0, self.n_scales)) for k, v in self.image_d.items()}
            state["image_att"] = {
                u.alias: _cat(self.image_att[u.alias], (0, self.n_scales, u.branches, u.channels))
                for u in self.units
            }
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.t = {k: v.clone() for k, v in state["t"].items()}
        if self.per_image:
            self.image_index = [int(i) for i in state["image_index"].tolist()]
            self.image_label = [int(i) for i in state["image_label"].tolist()]
            self.image_d = {k: [v] for k, v in state["image_d"].items()}
            self.image_att = {k: [v] for k, v in state["image_att"].items()}


def _cat(chunks: list[Tensor], empty_shape: tuple[int, ...]) -> Tensor:
    return torch.cat(chunks, dim=0) if chunks else torch.zeros(empty_shape)


def _finalise(
    acc: _Accumulators,
    scales: tuple[float, ...],
    class_names: list[str],
    image_ids: list[str],
    skipped: list[tuple[str, str]],
    meta: dict[str, Any],
) -> ScaleSweepResult:
    n = float(acc.t["count"].item())
    if n == 0:
        raise ValueError(
            "no usable image: every input was skipped"
            + (f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else "")
        )
    k = acc.n_classes
    if len(class_names) < k:
        class_names = list(class_names) + [str(i) for i in range(len(class_names), k)]
    class_count = acc.t["class_count"].numpy()
    branch_mean, branch_std, d_mean, d_std, d_sem = {}, {}, {}, {}, {}
    class_d_mean, class_d_sem = {}, {}
    for u in acc.units:
        a = u.alias
        mean = acc.t[f"att_sum::{a}"].numpy() / n
        branch_mean[a] = mean
        branch_std[a] = np.sqrt(np.maximum(acc.t[f"att_sq::{a}"].numpy() / n - mean**2, 0.0))
        dm = acc.t[f"d_sum::{a}"].numpy() / n
        d_mean[a] = dm
        d_std[a] = _sample_std(acc.t[f"d_sq::{a}"].numpy(), dm, n)
        d_sem[a] = d_std[a] / math.sqrt(n)
        cs, cq = acc.t[f"cd_sum::{a}"].numpy(), acc.t[f"cd_sq::{a}"].numpy()
        with np.errstate(invalid="ignore", divide="ignore"):
            cm = np.where(class_count > 0, cs / np.maximum(class_count, 1), np.nan)
            cstd = _sample_std(cq, np.nan_to_num(cm), class_count)
            class_d_mean[a] = cm
            class_d_sem[a] = np.where(
                class_count > 0, cstd / np.sqrt(np.maximum(class_count, 1)), np.nan
            )
    image_d = image_att = None
    ids = labels = None
    if acc.per_image:
        order = np.argsort(np.asarray(acc.image_index, dtype=np.int64), kind="stable")
        image_d = {
            u.alias: _cat(acc.image_d[u.alias], (0, len(scales))).numpy()[order] for u in acc.units
        }
        image_att = {
            u.alias: _cat(acc.image_att[u.alias], (0, len(scales), u.branches, u.channels)).numpy()[
                order
            ]
            for u in acc.units
        }
        ids = [image_ids[acc.image_index[i]] for i in order]
        labels = [acc.image_label[i] for i in order]
    return ScaleSweepResult(
        units=list(acc.units),
        scales=scales,
        n_images=int(n),
        branch_mean=branch_mean,
        branch_std=branch_std,
        d_mean=d_mean,
        d_std=d_std,
        d_sem=d_sem,
        class_names=class_names if k else [],
        class_count=class_count.astype(np.int64),
        class_d_mean=class_d_mean,
        class_d_sem=class_d_sem,
        image_d=image_d,
        image_attention=image_att,
        image_ids=ids,
        image_labels=labels,
        skipped=skipped,
        meta=meta,
    )


def _sample_std(sq: np.ndarray, mean: np.ndarray, n: np.ndarray | float) -> np.ndarray:
    """Sample std (ddof=1) from the sum of squares and the mean; 0 for n < 2."""
    n_arr = np.asarray(n, dtype=np.float64)
    var = (sq - n_arr * mean**2) / np.maximum(n_arr - 1.0, 1.0)
    return np.where(n_arr > 1, np.sqrt(np.maximum(var, 0.0)), 0.0)


# --------------------------------------------------------------------------- checkpoints
def _fingerprint(
    units: list[UnitInfo], scales: tuple[float, ...], ids: list[str], per_image: bool
) -> str:
    digest = hashlib.sha256()
    for item in ids:
        digest.update(item.encode() + b"\n")
    h = digest.hexdigest()
    return json.dumps(
        {
            "units": [u.alias for u in units],
            "scales": list(scales),
            "n_items": len(ids),
            "items_sha256": h,
            "per_image": per_image,
            "world_size": dist_utils.world_size(),
            "rank": dist_utils.rank(),
        },
        sort_keys=True,
    )


def _checkpoint_path(directory: Path) -> Path:
    return directory / f"scale_sweep-rank{dist_utils.rank()}-of{dist_utils.world_size()}.pt"


def _save_checkpoint(
    path: Path, fingerprint: str, position: int, acc: _Accumulators, skipped: list
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "position": position,
        "acc": acc.state(),
        "skipped": json.dumps(skipped),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise AttnvizError(
            f"checkpoint {path} belongs to a different sweep (model units, scales, images or "
            "number of processes differ); delete it or run without resume"
        )
    return state


# --------------------------------------------------------------------------- the sweep
def scale_sweep(
    model: nn.Module,
    images: Any,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    labels: Sequence[int] | None = None,
    batch_size: int = 32,
    preprocess: Any = None,
    per_image: bool = False,
    units: Iterable[str] | str | None = None,
    progress: bool = True,
    strict: bool = False,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 50,
    resume: bool = False,
    limit: int | None = None,
) -> ScaleSweepResult:
    """Run the SKNet object-scale sweep of ``model`` over ``images``.

    ``images``: a folder (class subfolders give labels), a list of paths, a torch Dataset
    yielding PIL images or ``(image, label)``, or a DataLoader (its dataset and sampler order
    are used; batches of ``loader.batch_size``). ``labels`` overrides the labels. ``units``
    selects SK sites by alias or name (default: all). ``preprocess``: a ``PreprocessConfig``,
    a timm data-config dict, or None for the model's own. Unusable images are skipped and
    listed in ``result.skipped`` (``strict=True`` raises :class:`BadImageError` instead).
    With ``checkpoint_dir`` the sums are saved atomically every ``checkpoint_every`` batches
    and ``resume=True`` continues from there. Under ``torch.distributed`` each rank sweeps a
    disjoint shard and the sums are all-reduced; every rank returns the full result.

    The model runs in eval mode (SK units hold a BatchNorm on a 1x1 map); its training flags
    are restored afterwards.
    """
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("give at least one scale")
    if any(s < 1.0 for s in scales):
        raise ValueError(f"view scales must be >= 1.0, got {list(scales)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    config = resolve_preprocess(model, preprocess)
    spec = view_spec(config)
    kinds = sorted({s.kind for s in find_sites(model)})
    if "sk" not in kinds:
        raise NoAttentionSitesError(
            f"{type(model).__name__} has no SK (selective kernel) unit, which the scale sweep "
            "needs (timm skresnet18/34, skresnext50_32x4d, attnviz SKConv / sk_tiny); "
            + (f"its attention sites are of kind {kinds}" if kinds else "it has no attention site")
        )
    selected = select_sites(model, kinds="sk", sites=units)
    source = image_source(images, labels, id_style="relative")
    if limit is not None:
        source.ids = source.ids[:limit]
    if source.batch_size:
        batch_size = source.batch_size
    n_items = len(source)

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    rank, world = dist_utils.rank(), dist_utils.world_size()
    shard = range(rank, n_items, world)

    with eval_mode(model):
        unit_infos = _probe_units(model, selected, spec, device)
        n_classes = len(source.class_names)
        acc = _Accumulators(unit_infos, len(scales), n_classes, per_image)
        skipped: list[tuple[str, str]] = []
        position = 0
        fingerprint = _fingerprint(unit_infos, scales, source.ids, per_image)
        ckpt = _checkpoint_path(Path(checkpoint_dir)) if checkpoint_dir is not None else None
        if ckpt is not None and resume:
            state = _load_checkpoint(ckpt, fingerprint)
            if state is not None:
                acc.load_state(state["acc"])
                skipped = [tuple(s) for s in json.loads(state["skipped"])]
                position = int(state["position"])
        bar = _progress(progress and rank == 0, total=len(shard), initial=position)
        batches_done = 0
        names = {u.alias: s.name for u, (s, _, _) in zip(unit_infos, selected)}
        with (
            capture(model, kinds="sk", sites=[s.name for s, _, _ in selected]) as cache,
            torch.no_grad(),
        ):
            while position < len(shard):
                chunk = shard[position : position + batch_size]
                views, batch_labels, batch_index = [], [], []
                for i in chunk:
                    img, label, reason = source.load(i)
                    if isinstance(img, Tensor):  # a dataset of [0, 1] image tensors
                        try:
                            img = to_pil(img)
                        except (TypeError, ValueError) as exc:
                            img, reason = None, f"could not read item: {exc}"
                    if img is None:
                        skipped.append((source.ids[i], reason or "unknown"))
                        if strict and world == 1:
                            raise BadImageError(f"skipped {source.ids[i]}: {reason}")
                        continue
                    views.append(scale_views(img, spec, scales))
                    batch_labels.append(label)
                    batch_index.append(i)
                if views:
                    _forward_batch(
                        model, cache, views, batch_labels, batch_index, names, acc, device
                    )
                position += len(chunk)
                batches_done += 1
                if bar is not None:
                    bar.update(len(chunk))
                if ckpt is not None and batches_done % max(1, checkpoint_every) == 0:
                    _save_checkpoint(ckpt, fingerprint, position, acc, skipped)
        if bar is not None:
            bar.close()
        if ckpt is not None:
            _save_checkpoint(ckpt, fingerprint, position, acc, skipped)

    acc, skipped = _reduce_ranks(acc, skipped, source.ids)
    if strict and skipped:  # distributed runs check after all ranks finished their shards
        raise BadImageError(f"skipped {skipped[0][0]}: {skipped[0][1]} ({len(skipped)} in all)")
    meta = {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "preprocess": spec.as_dict(),
        "n_items": n_items,
        "world_size": world,
        **_source_meta(config),
    }
    return _finalise(acc, scales, list(source.class_names), source.ids, skipped, meta)


def _probe_units(
    model: nn.Module, selected: list, spec: ViewSpec, device: torch.device
) -> list[UnitInfo]:
    """Shapes (M, C) of every selected unit, from one forward of a blank 2-image batch."""
    x = torch.zeros(2, 3, *spec.size, device=device)
    with (
        capture(model, kinds="sk", sites=[s.name for s, _, _ in selected]) as cache,
        torch.no_grad(),
    ):
        model(x)
    infos = []
    for site, _, _ in selected:
        if site.name not in cache:
            raise AttnvizError(f"SK unit {site.alias} ({site.name}) did not run in a forward")
        t = cache[site.name]
        if t.shape[0] != 2:
            raise AttnvizError(
                f"SK unit {site.alias} ran {t.shape[0] // 2} times per forward; the sweep "
                "needs one call per image"
            )
        infos.append(
            UnitInfo(
                alias=site.alias,
                name=site.name,
                stage=site.stage,
                block=site.block,
                branches=int(t.shape[1]),
                channels=int(t.shape[2]),
                receptive_fields=tuple(site.info.get("branch_receptive_field", ())),
            )
        )
    return infos


def _forward_batch(
    model: nn.Module,
    cache: Any,
    views: list[Tensor],
    batch_labels: list[int | None],
    batch_index: list[int],
    names: dict[str, str],
    acc: _Accumulators,
    device: torch.device,
) -> None:
    """One forward of all views of a batch (scale-major along the batch axis)."""
    b = len(views)
    x = torch.stack(views, dim=1)  # (S, B, 3, H, W)
    s = x.shape[0]
    model(x.reshape(s * b, *x.shape[2:]).to(device))
    att = {}
    for alias, name in names.items():
        t = cache[name]
        att[alias] = t.reshape(s, b, *t.shape[1:])
    cache.clear()
    labels = None
    if any(lab is not None for lab in batch_labels):
        if any(lab is None for lab in batch_labels):
            raise ValueError("some images have a label and some do not")
        labels = torch.tensor(batch_labels, dtype=torch.int64)
        if labels.min() < 0:
            raise ValueError(f"labels must be >= 0, got {labels.min().item()}")
    acc.update(att, labels, batch_index)


def _reduce_ranks(
    acc: _Accumulators, skipped: list[tuple[str, str]], ids: list[str]
) -> tuple[_Accumulators, list[tuple[str, str]]]:
    """Sum the accumulators over ranks (no-op in one process)."""
    if not dist_utils.is_distributed():
        return acc, skipped
    acc.grow_classes(dist_utils.all_reduce_max(acc.n_classes))
    dist_utils.all_reduce_sum_(acc.t)
    position = {name: i for i, name in enumerate(ids)}
    all_skipped = [s for part in dist_utils.all_gather_objects(skipped) for s in part]
    all_skipped.sort(key=lambda s: position.get(s[0], -1))
    if acc.per_image:
        parts = dist_utils.all_gather_objects(
            (acc.image_index, acc.image_label, acc.state()["image_d"], acc.state()["image_att"])
        )
        acc.image_index = [i for p in parts for i in p[0]]
        acc.image_label = [i for p in parts for i in p[1]]
        acc.image_d = {u.alias: [p[2][u.alias] for p in parts] for u in acc.units}
        acc.image_att = {u.alias: [p[3][u.alias] for p in parts] for u in acc.units}
    return acc, [tuple(s) for s in all_skipped]


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="scale sweep", leave=False)


def find_sk_units(model: nn.Module) -> list[str]:
    """Aliases of the model's SK sites in model order."""
    return [s.alias for s in find_sites(model) if s.kind == "sk"]
