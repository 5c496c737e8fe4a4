"""SKNet object-scale sweep (Li et al., "Selective Kernel Networks", CVPR 2019, Sec. 4.4).

Each image is shown at the scales 1.0x, 1.5x, 2.0x (:mod:`attnviz.data.views`). At every SK
site the selection weights a (branch 0, the smallest receptive field) and b (the largest; the
paper's "5x5") are captured, softmax over the M branches (Eq. 5). Per image and site the mean
attention difference is

    D = mean_c(b_c) - mean_c(a_c)

(Fig. 3 right, Fig. 4). The paper's finding: D grows with object scale in early and middle
sites (the large kernel is selected more for larger objects), not consistently in the last
stage.

The sweep streams through :func:`attnviz.analysis.runner.run`: all views of a batch go
through the model in one forward, and per site and scale only float64 sums (per branch and
channel: sum and sum of squares of the attention; sum and sum of squares of D, overall and
per class) are kept, so memory does not depend on the number of images (unless
``per_image=True``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor, nn

from ..capture import Site
from ..capture.kinds import kinds_with_role
from ..data.preprocess import EvalTransform
from ..data.scene_controls import CONTENT_CONTROLS, content_control_text
from ..data.shapes import split_strip
from ..data.views import resolution_control, zoom_geometry, zoom_views
from ..results import Result, from_records, keyed, records, unkeyed
from ._sites import choose_sites
from .runner import Analysis, RunInfo, State, run
from .stats import flagged_change, holm_of_z

__all__ = ["ScaleSweepResult", "SweepSite", "scale_sweep", "stage_last_sites"]

DEFAULT_SCALES: tuple[float, ...] = (1.0, 1.5, 2.0)
ZOOM, CONTROL = "zoom", "resolution_control"
CONDITIONS = (ZOOM, CONTROL, *CONTENT_CONTROLS)
GROUPS = ("inside", "clipped")  # crop protocol: is the object box inside the s-times crop


def control_text(condition: str, scale: float) -> str:
    """What a control view is, in one line (``condition`` a name of :data:`CONDITIONS`)."""
    if condition == CONTROL:
        return "the 1.0x view resized down by the zoom view's upsampling factor and back up"
    return content_control_text(condition, scale)


def _sx(s: float) -> str:
    """A scale as the paper writes it: 1.0x, 1.5x, 2.0x."""
    return f"{s:.1f}x" if float(s).is_integer() else f"{s:g}x"


@dataclass(frozen=True)
class SweepSite:
    """One SK site of the swept model."""

    alias: str
    name: str
    stage: int | None
    block: int | None
    branches: int
    channels: int
    receptive_fields: tuple[int, ...] = ()
    kernels: tuple[tuple[int, int], ...] = ()  # (kernel size, dilation) per branch
    split_input: bool | None = None  # timm: the branches share (False) or split the input

    def branch_text(self) -> str:
        """``3x3 d1 | 3x3 d2`` (kernel and dilation of each branch, smallest field first)."""
        if not self.kernels:
            return " | ".join(f"field {f}" for f in self.receptive_fields) or "?"
        text = " | ".join(f"{k}x{k} d{d}" for k, d in self.kernels)
        if self.split_input is not None:
            text += ", input " + ("split between" if self.split_input else "shared by")
            text += " the branches"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "name": self.name,
            "stage": self.stage,
            "block": self.block,
            "branches": self.branches,
            "channels": self.channels,
            "receptive_fields": list(self.receptive_fields),
            "kernels": [list(k) for k in self.kernels],
            "split_input": self.split_input,
        }


def stage_last_sites(sites: Sequence[Any]) -> list[str]:
    """Alias of the highest block of each stage (SK_2_3, SK_3_4, SK_4_6, SK_5_3 in SKNet-50)."""
    last: dict[int, Any] = {}
    for s in sites:
        if s.stage is None:
            continue
        if s.stage not in last or (s.block or 0) > (last[s.stage].block or 0):
            last[s.stage] = s
    if not last:  # no stage structure: every site
        return [s.alias for s in sites]
    return [last[s].alias for s in sorted(last)]


@dataclass
class ScaleSweepResult(Result):
    """Per SK site and view scale: attention per branch and channel, D and its spread.

    Arrays are keyed by site alias; ``S`` = number of scales, ``M`` branches, ``C`` channels,
    ``K`` classes, ``N`` images:

    * ``branch_mean[a]``, ``branch_std[a]``: (S, M, C) mean / std over images of the attention
      of each branch and channel (branch 0 = smallest receptive field);
    * ``d_mean[a]``, ``d_std[a]``, ``d_sem[a]``: (S,) mean of D over images, its standard
      deviation (ddof=1) and standard error;
    * ``class_d_mean[a]``, ``class_d_sem[a]``: (S, K) the same per class (NaN for a class
      without images); ``class_count``: (K,);
    * ``image_d[a]``: (N, S) per-image D and ``image_attention[a]``: (N, S, M, C) float32, only
      with ``per_image=True``; ``image_ids`` / ``image_labels`` name those images.

    Views and paired statistics (V views: the zoom view of every scale, then the resolution
    control of every scale > 1 when there are controls; ``view_conditions`` / ``view_scales``
    name them, condition ``"zoom"`` or ``"resolution_control"``):

    * ``view_count``: (V,) images counted in each view (a control counts only the images
      whose zoom view needed upsampling); ``class_view_count``: (V, K);
    * ``view_d_mean[a]``, ``view_d_sem[a]``: (V,) D of each view over its images;
    * ``delta_mean[a]``, ``delta_se[a]``: (V,) the paired change delta_D = D(view) - D(1.0x)
      per image, its mean and paired standard error (std of the per-image deltas, ddof=1,
      over sqrt(n)); ``class_delta_mean[a]``, ``class_delta_se[a]``: (V, K);
    * ``zoom_delta[a]``: (V,) for a control, the zoom's delta_D on the same images;
      ``excess_mean[a]``, ``excess_se[a]``: (V,) paired D(zoom) - D(control): the change
      with object scale beyond what the lost resolution alone gives;
    * ``upsampling``: (2, S) mean upsampling factor of each zoom view and the number of
      images whose zoom view needed upsampling; ``image_upsampling`` (N, S) and
      ``image_view_d[a]`` (N, V) with ``per_image=True``; ``view_records``: per image (scene)
      and view, its box and upsampling (written as ``views.csv``).

    Content controls (native scenes, :mod:`attnviz.data.scene_controls`): more views with
    the condition of their control (``copies``, ``copies_perimeter``, ``constant_area``,
    ``contrast_matched``, ``background_swap``) at the scale they are matched to; their
    ``delta_*``, ``zoom_delta`` and ``excess_*`` mean what they mean for the resolution
    control (:meth:`control_table` sets them side by side).

    Crop protocol with object boxes (``boxes``): ``group_count`` (2, V) images whose object
    lies inside / is clipped by the zoom crop of the view's scale (:data:`GROUPS`), and
    ``group_delta_mean[a]``, ``group_delta_se[a]``, ``group_excess_mean[a]``,
    ``group_excess_se[a]``: (2, V) the paired statistics of each group; ``image_clipped``
    (N, S) per image with ``per_image=True`` (1 clipped, 0 inside, NaN unknown).
    """

    kind: ClassVar[str] = "scale_sweep"
    format_version: ClassVar[int] = 3

    sites: list[SweepSite]
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
    view_conditions: list[str] = field(default_factory=list)
    view_scales: list[float] = field(default_factory=list)
    view_count: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    class_view_count: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    view_d_mean: dict[str, np.ndarray] = field(default_factory=dict)
    view_d_sem: dict[str, np.ndarray] = field(default_factory=dict)
    delta_mean: dict[str, np.ndarray] = field(default_factory=dict)
    delta_se: dict[str, np.ndarray] = field(default_factory=dict)
    class_delta_mean: dict[str, np.ndarray] = field(default_factory=dict)
    class_delta_se: dict[str, np.ndarray] = field(default_factory=dict)
    zoom_delta: dict[str, np.ndarray] = field(default_factory=dict)
    excess_mean: dict[str, np.ndarray] = field(default_factory=dict)
    excess_se: dict[str, np.ndarray] = field(default_factory=dict)
    upsampling: np.ndarray = field(default_factory=lambda: np.zeros((2, 0)))
    image_view_d: dict[str, np.ndarray] | None = None
    image_upsampling: np.ndarray | None = None
    views_native: bool = False
    view_records: list[dict[str, Any]] = field(default_factory=list)
    group_count: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    group_delta_mean: dict[str, np.ndarray] = field(default_factory=dict)
    group_delta_se: dict[str, np.ndarray] = field(default_factory=dict)
    group_excess_mean: dict[str, np.ndarray] = field(default_factory=dict)
    group_excess_se: dict[str, np.ndarray] = field(default_factory=dict)
    image_clipped: np.ndarray | None = None

    # -- views and paired statistics -------------------------------------------------------
    def view_index(self, scale: float, condition: str = ZOOM) -> int:
        """Index of the view of ``condition`` at ``scale`` (KeyError if there is none)."""
        for i, (c, s) in enumerate(zip(self.view_conditions, self.view_scales)):
            if c == condition and math.isclose(s, float(scale), rel_tol=0, abs_tol=1e-9):
                return i
        raise KeyError(f"no {condition} view at {scale}x; views: {self.views()}")

    def views(self) -> list[tuple[str, float]]:
        return list(zip(self.view_conditions, self.view_scales))

    def has_control(self, scale: float) -> bool:
        try:
            return bool(self.view_count[self.view_index(scale, CONTROL)] > 0)
        except KeyError:
            return False

    def delta(
        self, site: str, scale: float, condition: str = ZOOM, cls: int | None = None
    ) -> tuple[float, float, float]:
        """(mean delta_D, paired s.e., z) of a site at a scale (of a class if ``cls``)."""
        a, v = self.site(site).alias, self.view_index(scale, condition)
        if cls is None:
            m, se = self.delta_mean[a][v], self.delta_se[a][v]
        else:
            m, se = self.class_delta_mean[a][v, cls], self.class_delta_se[a][v, cls]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = float(m / se) if se > 0 else float("nan")
        return float(m), float(se), z

    def control_views(self) -> list[tuple[str, float]]:
        """(condition, scale) of every control view that counted images, in view order."""
        return [
            (c, s)
            for vi, (c, s) in enumerate(self.views())
            if c != ZOOM and len(self.view_count) and self.view_count[vi] > 0
        ]

    def control_table(self, min_z: float = 3.0) -> pd.DataFrame:
        """Per site and control view, how much of the change with scale the control alone
        reproduces, paired on the same images: ``control_dD`` (± ``control_se``, z) = D(control)
        - D(1.0x); ``zoom_dD`` = D(s) - D(1.0x) on the same images; ``share`` = control_dD /
        zoom_dD (NaN where the zoom change has |z| < ``min_z``: no change to reproduce);
        ``zoom_minus_control`` (± s.e., z) = D(s) - D(control), the change the control leaves
        unexplained; ``control_sd``: the std of the control's dD over images (how far it moves
        one image's D)."""
        rows = []
        for cond, sc in self.control_views():
            v = self.view_index(sc, cond)
            for u in self.sites:
                m, se, z = self.delta(u.alias, sc, cond)
                zz = self.delta(u.alias, sc)[2]
                zd = float(self.zoom_delta[u.alias][v])
                ex, exse = float(self.excess_mean[u.alias][v]), float(self.excess_se[u.alias][v])
                ok = math.isfinite(zz) and abs(zz) >= min_z and zd != 0
                rows.append(
                    {"site": u.alias, "condition": cond, "scale": sc,
                     "n_images": int(self.view_count[v]), "control_dD": m, "control_se": se,
                     "control_z": z, "control_sd": se * math.sqrt(int(self.view_count[v])),
                     "zoom_dD": zd, "zoom_z": zz,
                     "share": m / zd if ok else float("nan"), "zoom_minus_control": ex,
                     "zoom_minus_control_se": exse,
                     "zoom_minus_control_z": ex / exse if exse > 0 else float("nan")}
                )  # fmt: skip
        return pd.DataFrame(rows)

    def group_table(self) -> pd.DataFrame:
        """Crop protocol with object boxes: per site, view (s > 1) and group (inside /
        clipped by the s-times crop) the paired dD and, for resolution controls, zoom -
        control, each with its paired s.e. and z (empty without boxes)."""
        rows = []
        if not len(self.group_count):
            return pd.DataFrame(rows)
        for vi, (cond, sc) in enumerate(self.views()):
            if sc == self.reference_scale:
                continue
            for gi, g in enumerate(GROUPS):
                n = int(self.group_count[gi, vi])
                for u in self.sites:
                    m = float(self.group_delta_mean[u.alias][gi, vi])
                    se = float(self.group_delta_se[u.alias][gi, vi])
                    ex = float(self.group_excess_mean[u.alias][gi, vi])
                    exse = float(self.group_excess_se[u.alias][gi, vi])
                    rows.append(
                        {"site": u.alias, "condition": cond, "scale": sc, "group": g,
                         "n_images": n, "delta_D": m, "delta_D_se": se,
                         "delta_D_z": m / se if se > 0 else float("nan"),
                         "zoom_minus_control": ex if cond != ZOOM else float("nan"),
                         "zoom_minus_control_se": exse if cond != ZOOM else float("nan")}
                    )  # fmt: skip
        return pd.DataFrame(rows)

    @property
    def reference_scale(self) -> float:
        return float(min(self.scales))

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model") or self.meta.get("run", {}).get("model_class", "model"))

    # -- lookup ----------------------------------------------------------------------------
    @property
    def site_aliases(self) -> list[str]:
        return [s.alias for s in self.sites]

    def site(self, key: str) -> SweepSite:
        """A site by alias or module name."""
        for s in self.sites:
            if key in (s.alias, s.name):
                return s
        raise KeyError(f"unknown site {key!r}; sites: {self.site_aliases}")

    def stage_last_sites(self) -> list[str]:
        """Aliases of the last site of each stage (the paper's Fig. 3 bars)."""
        return stage_last_sites(self.sites)

    def scale_index(self, scale: float) -> int:
        for i, s in enumerate(self.scales):
            if math.isclose(s, float(scale), rel_tol=0, abs_tol=1e-9):
                return i
        raise KeyError(f"scale {scale} was not swept; scales: {list(self.scales)}")

    def d_table(self) -> pd.DataFrame:
        """Mean D as a sites x scales table (rows in model order)."""
        return pd.DataFrame(
            [self.d_mean[a] for a in self.site_aliases],
            index=pd.Index(self.site_aliases, name="site"),
            columns=pd.Index([f"{s:g}x" for s in self.scales], name="scale"),
        )

    def effects(self) -> pd.DataFrame:
        """The paired change dD = D(view) - D(1.0x) of every site and view (scale above the
        reference, every condition with images): keys site, condition, scale; ``effect`` = the
        mean dD over images, ``se`` its paired standard error, ``n`` the images."""
        rows = []
        for vi, (cond, sc) in enumerate(self.views()):
            n = int(self.view_count[vi]) if len(self.view_count) else self.n_images
            if sc == self.reference_scale or n == 0:
                continue
            for u in self.sites:
                m, se, _ = self.delta(u.alias, sc, cond)
                rows.append(
                    {"site": u.alias, "condition": cond, "scale": sc, "effect": m, "se": se,
                     "n": n}
                )  # fmt: skip
        return pd.DataFrame(rows, columns=["site", "condition", "scale", "effect", "se", "n"])

    def class_delta_ci(self, draws: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
        """Per site, zoom scale above the reference and class: the mean paired dD of the
        class's images with its percentile bootstrap interval over those images
        (:func:`attnviz.analysis.stats.bootstrap_ci`; ``ci_low``, ``ci_high``, ``boot_se``).
        Needs ``per_image=True`` (the per-image D)."""
        from .stats import bootstrap_ci

        if self.image_d is None or self.image_labels is None:
            raise ValueError("class_delta_ci needs the per-image D: run with per_image=True")
        labels = np.asarray(self.image_labels)
        rows = []
        for u in self.sites:
            d = self.image_d[u.alias]
            for si, sc in enumerate(self.scales):
                if sc == self.reference_scale:
                    continue
                delta = d[:, si] - d[:, self.scale_index(self.reference_scale)]
                for k, name in enumerate(self.class_names):
                    v = delta[labels == k]
                    lo, hi, se = bootstrap_ci(
                        v.size, lambda i, v=v: float(v[i].mean()), draws=draws, seed=seed,
                        level=level,
                    )  # fmt: skip
                    rows.append(
                        {"site": u.alias, "scale": sc, "class": name, "n": int(v.size),
                         "delta_D": float(v.mean()) if v.size else np.nan, "ci_low": lo,
                         "ci_high": hi, "boot_se": se}
                    )  # fmt: skip
        return pd.DataFrame(rows)

    # -- frames ----------------------------------------------------------------------------
    def to_frame(self, what: str = "D") -> pd.DataFrame:
        """Tidy tables: ``"D"`` (site, scale, class -> D, D_sem; class ``"all"`` = whole set),
        ``"channels"`` (site, scale, branch, channel -> mean, std), ``"images"`` (image, site,
        scale -> D; needs ``per_image=True``)."""
        if what == "D":
            return self._d_frame()
        if what == "channels":
            return self._channel_frame()
        if what == "images":
            return self._image_frame()
        raise ValueError(f"unknown table {what!r}; valid: 'D', 'channels', 'images'")

    def _d_frame(self) -> pd.DataFrame:
        nan = float("nan")

        def z(m: float, se: float) -> float:
            return float(m / se) if se > 0 and math.isfinite(se) else nan

        rows = []
        for u in self.sites:
            bm = self.branch_mean[u.alias]
            base = {"site": u.alias, "name": u.name, "stage": u.stage, "block": u.block}
            for vi, (cond, s) in enumerate(self.views()):
                zoom = cond == ZOOM
                si = self.scale_index(s)
                if not zoom and self.view_count[vi] == 0:
                    continue
                dm, dse = float(self.delta_mean[u.alias][vi]), float(self.delta_se[u.alias][vi])
                extra = {
                    "zoom_delta_D": nan if zoom else float(self.zoom_delta[u.alias][vi]),
                    "zoom_minus_control": nan if zoom else float(self.excess_mean[u.alias][vi]),
                    "zoom_minus_control_se": nan if zoom else float(self.excess_se[u.alias][vi]),
                }
                extra["zoom_minus_control_z"] = z(
                    extra["zoom_minus_control"], extra["zoom_minus_control_se"]
                )
                rows.append(
                    {
                        **base,
                        "condition": cond,
                        "scale": s,
                        "class": "all",
                        "n_images": int(self.view_count[vi]) if len(self.view_count) else
                        self.n_images,
                        "D": float(self.d_mean[u.alias][si]) if zoom else
                        float(self.view_d_mean[u.alias][vi]),
                        "D_sem": float(self.d_sem[u.alias][si]) if zoom else
                        float(self.view_d_sem[u.alias][vi]),
                        "D_std": float(self.d_std[u.alias][si]) if zoom else nan,
                        "mean_a": float(bm[si, 0].mean()) if zoom else nan,
                        "mean_b": float(bm[si, -1].mean()) if zoom else nan,
                        "delta_D": dm,
                        "delta_D_se": dse,
                        "delta_D_z": z(dm, dse),
                        **extra,
                    }
                )  # fmt: skip
                for k, name in enumerate(self.class_names):
                    cm = float(self.class_delta_mean[u.alias][vi, k])
                    cse = float(self.class_delta_se[u.alias][vi, k])
                    rows.append(
                        {
                            **base,
                            "condition": cond,
                            "scale": s,
                            "class": name,
                            "n_images": int(self.class_view_count[vi, k]),
                            "D": float(self.class_d_mean[u.alias][si, k]) if zoom else nan,
                            "D_sem": float(self.class_d_sem[u.alias][si, k]) if zoom else nan,
                            "D_std": nan,
                            "mean_a": nan,
                            "mean_b": nan,
                            "delta_D": cm,
                            "delta_D_se": cse,
                            "delta_D_z": z(cm, cse),
                            "zoom_delta_D": nan,
                            "zoom_minus_control": nan,
                            "zoom_minus_control_se": nan,
                            "zoom_minus_control_z": nan,
                        }
                    )
        return pd.DataFrame(rows)

    def _channel_frame(self) -> pd.DataFrame:
        parts = []
        for u in self.sites:
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
                        "site": u.alias,
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
        for u in self.sites:
            d = self.image_d[u.alias]
            for i, image in enumerate(self.image_ids):
                label = self.image_labels[i] if self.image_labels else None
                for si, s in enumerate(self.scales):
                    rows.append(
                        {
                            "image": image,
                            "label": label,
                            "site": u.alias,
                            "scale": s,
                            "D": float(d[i, si]),
                        }
                    )
        return pd.DataFrame(rows)

    # -- Result ----------------------------------------------------------------------------
    def summary(self, digits: int = 4) -> str:
        """Plain text: the branches of each site, the table of D (mean ± s.e.) per site and
        scale, the paired change delta_D ± paired s.e. (z, Holm-adjusted p over the table,
        ! = |z| >= 3), for every control (resolution or content) how much of each site's
        change it alone reproduces, and with object boxes the crop protocol's inside /
        clipped split."""

        def table(header: list[str], body: list[list[str]]) -> list[str]:
            rows = [header, *body]
            widths = [max(len(r[j]) for r in rows) for j in range(len(header))]
            lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
            lines.insert(1, "  ".join("-" * w for w in widths))
            return lines

        last = set(self.stage_last_sites())
        mark = {u.alias: u.alias + (" *" if u.alias in last else "") for u in self.sites}
        views = "native renders" if self.views_native else "crops of the original pixels"
        out = [f"SKNet scale sweep of {self.model_name}: {self.n_images} images, views = {views}"]
        out.append("branches (kernel, dilation):")
        for u in self.sites:
            out.append(f"  {u.alias}: {u.branch_text()}")
        out.append("")
        header = ["site"] + [f"D @ {_sx(s)}" for s in self.scales]
        body = [
            [mark[u.alias]]
            + [
                f"{self.d_mean[u.alias][i]:+.{digits}f} ± {self.d_sem[u.alias][i]:.{digits}f}"
                for i in range(len(self.scales))
            ]
            for u in self.sites
        ]
        out += table(header, body)
        out.append(
            f"D = mean_c(b_c) - mean_c(a_c) over {self.n_images} images "
            f"(mean ± standard error; * = last site of its stage)"
        )
        ref = self.reference_scale
        others = [s for s in self.scales if s != ref]
        if others and self.delta_mean:
            out.append("")
            header = ["site"] + [f"dD @ {_sx(s)}" for s in others]
            tests = [[self.delta(u.alias, s) for s in others] for u in self.sites]
            p_holm = holm_of_z([t[2] for row in tests for t in row]).reshape(len(tests), -1)
            body = [
                [mark[u.alias]]
                + [flagged_change(m, se, p_holm[i, j], digits) for j, (m, se, _) in enumerate(row)]
                for i, (u, row) in enumerate(zip(self.sites, tests))
            ]
            out += table(header, body)
            out.append(
                f"dD = D(s) - D({_sx(ref)}) per image: mean ± paired standard error, z = mean / "
                f"s.e., p_holm = two-sided normal p Holm-adjusted over the {p_holm.size} tests "
                "of this table; ! = |z| >= 3"
            )
        out += self._control_summary(table, mark, digits)
        out += self._group_summary(table, mark, digits)
        if self.skipped:
            out.append(f"{len(self.skipped)} file(s) skipped (listed in manifest.json)")
        return "\n".join(out)

    def _control_summary(self, table, mark: dict[str, str], digits: int) -> list[str]:
        """One block per control condition: its dD, the share of the zoom's dD it
        reproduces, and zoom - control (what the control leaves unexplained)."""
        frame = self.control_table()
        out: list[str] = []
        if frame.empty:
            return out
        word = "native" if self.views_native else "zoom"
        for cond in dict.fromkeys(frame["condition"]):
            part = frame[frame["condition"] == cond]
            scales = list(dict.fromkeys(part["scale"]))
            header = ["site"]
            for sc in scales:
                header += [f"{cond} dD @ {_sx(sc)}", "share", f"{word} - control @ {_sx(sc)}"]
            cell = {(r["site"], r["scale"]): r for _, r in part.iterrows()}
            order = [(u.alias, sc) for u in self.sites for sc in scales]
            p_holm = dict(zip(order, holm_of_z([cell[k]["zoom_minus_control_z"] for k in order])))
            body = []
            for u in self.sites:
                cells = [mark[u.alias]]
                for sc in scales:
                    r = cell[(u.alias, sc)]
                    share = f"{r['share']:.0%}" if math.isfinite(r["share"]) else "n.s."
                    cells += [
                        f"{r['control_dD']:+.{digits}f} ± {r['control_se']:.{digits}f}",
                        share,
                        flagged_change(
                            r["zoom_minus_control"],
                            r["zoom_minus_control_se"],
                            p_holm[(u.alias, sc)],
                            digits,
                        ),
                    ]
                body.append(cells)
            out.append("")
            out += table(header, body)
            counts = ", ".join(f"{_sx(sc)}: {int(part[part['scale'] == sc]['n_images'].iloc[0])}"
                               for sc in scales)  # fmt: skip
            label = "resolution control" if cond == CONTROL else f"content control {cond!r}"
            counted = "images whose zoom view needed upsampling" if cond == CONTROL else "scenes"
            out.append(
                f"{label} = {control_text(cond, scales[-1])} ({counted}: {counts}); share = "
                f"control dD / {word} dD on the same images (the part of the change this "
                f"control alone reproduces; n.s. where the {word} change has |z| < 3); "
                f"{word} - control = the change with object scale beyond this control "
                f"(paired s.e.; p_holm over the {len(order)} tests of this table; ! = |z| >= 3)"
            )
        return out

    def _group_summary(self, table, mark: dict[str, str], digits: int) -> list[str]:
        """Crop protocol with object boxes: dD (and zoom - control) of the images whose
        object lies inside the s-times crop beside those it clips."""
        frame = self.group_table()
        out: list[str] = []
        if frame.empty:
            return out
        every = list(dict.fromkeys(zip(frame["condition"], frame["scale"])))
        rows = {(r["site"], r["condition"], r["scale"], r["group"]): r for _, r in frame.iterrows()}
        for keys in ([k for k in every if k[0] == ZOOM], [k for k in every if k[0] != ZOOM]):
            if not keys:
                continue
            header = ["site"]
            for cond, sc in keys:
                what = "dD" if cond == ZOOM else f"zoom - {cond}"
                header += [f"{what} @ {_sx(sc)} {g}" for g in GROUPS]
            tests = []
            for u in self.sites:
                for cond, sc in keys:
                    for g in GROUPS:
                        r = rows[(u.alias, cond, sc, g)]
                        if cond == ZOOM:
                            tests.append((r["delta_D"], r["delta_D_se"]))
                        else:
                            tests.append((r["zoom_minus_control"], r["zoom_minus_control_se"]))
            p_holm = holm_of_z([m / se if se > 0 else math.nan for m, se in tests])
            cells = [flagged_change(m, se, p, digits) for (m, se), p in zip(tests, p_holm)]
            width = len(cells) // len(self.sites)
            body = [
                [mark[u.alias], *cells[i * width : (i + 1) * width]]
                for i, u in enumerate(self.sites)
            ]
            out.append("")
            out += table(header, body)
        keys = every
        counts = "; ".join(
            f"{_sx(sc)}: {int(self.group_count[0, self.view_index(sc)])} inside, "
            f"{int(self.group_count[1, self.view_index(sc)])} clipped"
            for sc in dict.fromkeys(sc for c, sc in keys if c == ZOOM)
        )
        out.append(
            "crop protocol split by the object box: inside = the object lies within the "
            f"s-times crop, clipped = the crop cuts it ({counts}); paired s.e.; p_holm over the "
            "tests of each table; ! = |z| >= 3"
        )
        return out

    def _payload(self):
        arrays: dict[str, np.ndarray] = {"class_count": self.class_count}
        for key in (
            "branch_mean",
            "branch_std",
            "d_mean",
            "d_std",
            "d_sem",
            "class_d_mean",
            "class_d_sem",
            "image_d",
            "image_attention",
            "view_d_mean",
            "view_d_sem",
            "delta_mean",
            "delta_se",
            "class_delta_mean",
            "class_delta_se",
            "zoom_delta",
            "excess_mean",
            "excess_se",
            "image_view_d",
            "group_delta_mean",
            "group_delta_se",
            "group_excess_mean",
            "group_excess_se",
        ):
            arrays.update(keyed(key, getattr(self, key) or {}))
        arrays["group_count"] = np.asarray(self.group_count, dtype=np.int64)
        if self.image_clipped is not None:
            arrays["image_clipped"] = np.asarray(self.image_clipped, dtype=np.float64)
        arrays["view_count"] = np.asarray(self.view_count)
        arrays["class_view_count"] = np.asarray(self.class_view_count)
        arrays["upsampling"] = np.asarray(self.upsampling, dtype=np.float64)
        if self.image_upsampling is not None:
            arrays["image_upsampling"] = np.asarray(self.image_upsampling)
        frames = {"D.csv": self.to_frame("D"), "channels.csv": self.to_frame("channels")}
        if self.image_d is not None:
            frames["images.csv"] = self.to_frame("images")
        if self.view_records:
            frames["views.csv"] = pd.DataFrame(self.view_records)
        if self.control_views():
            frames["controls.csv"] = self.control_table()
        if len(self.group_count):
            frames["groups.csv"] = self.group_table()
        fields = {
            "view_conditions": list(self.view_conditions),
            "view_scales": list(self.view_scales),
            "views_native": self.views_native,
            "view_records": self.view_records,
            "scales": list(self.scales),
            "n_images": self.n_images,
            "sites": [u.as_dict() for u in self.sites],
            "class_names": self.class_names,
            "per_image": self.image_d is not None,
            "image_ids": self.image_ids,
            "image_labels": self.image_labels,
            "skipped": records(self.skipped),
            "meta": self.meta,
        }
        return arrays, frames, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        per_image = bool(manifest.get("per_image"))
        sites = [
            SweepSite(
                **{
                    **u,
                    "receptive_fields": tuple(u.get("receptive_fields", ())),
                    "kernels": tuple(tuple(k) for k in u.get("kernels", ())),
                }
            )
            for u in manifest["sites"]
        ]
        s = len(manifest["scales"])
        v_scales = [float(x) for x in manifest.get("view_scales", manifest["scales"])]
        extra: dict[str, Any] = {
            "view_conditions": list(manifest.get("view_conditions", [ZOOM] * s)),
            "view_scales": v_scales,
            "views_native": bool(manifest.get("views_native", False)),
            "view_records": list(manifest.get("view_records", [])),
            "view_count": arrays.get("view_count", np.zeros(0, dtype=np.int64)),
            "class_view_count": arrays.get("class_view_count", np.zeros((0, 0), np.int64)),
            "upsampling": arrays.get("upsampling", np.zeros((2, 0))),
            "image_upsampling": arrays.get("image_upsampling"),
            "image_view_d": unkeyed(arrays, "image_view_d") if per_image else None,
            "group_count": arrays.get("group_count", np.zeros((0, 0), np.int64)),
            "image_clipped": arrays.get("image_clipped") if per_image else None,
        }
        for key in ("view_d_mean", "view_d_sem", "delta_mean", "delta_se", "class_delta_mean",
                    "class_delta_se", "zoom_delta", "excess_mean", "excess_se",
                    "group_delta_mean", "group_delta_se", "group_excess_mean",
                    "group_excess_se"):  # fmt: skip
            extra[key] = unkeyed(arrays, key)
        return cls(
            sites=sites,
            scales=tuple(float(s) for s in manifest["scales"]),
            n_images=int(manifest["n_images"]),
            branch_mean=unkeyed(arrays, "branch_mean"),
            branch_std=unkeyed(arrays, "branch_std"),
            d_mean=unkeyed(arrays, "d_mean"),
            d_std=unkeyed(arrays, "d_std"),
            d_sem=unkeyed(arrays, "d_sem"),
            class_names=list(manifest.get("class_names", [])),
            class_count=arrays["class_count"],
            class_d_mean=unkeyed(arrays, "class_d_mean"),
            class_d_sem=unkeyed(arrays, "class_d_sem"),
            image_d=unkeyed(arrays, "image_d") if per_image else None,
            image_attention=unkeyed(arrays, "image_attention") if per_image else None,
            image_ids=manifest.get("image_ids") if per_image else None,
            image_labels=manifest.get("image_labels") if per_image else None,
            skipped=from_records(manifest.get("skipped")),
            meta=dict(manifest.get("meta", {})),
            **extra,
        )


# --------------------------------------------------------------------------- the analysis
def _sample_std(sq: np.ndarray, mean: np.ndarray, n: np.ndarray | float) -> np.ndarray:
    """Sample std (ddof=1) from the sum of squares and the mean; 0 for n < 2."""
    n_arr = np.asarray(n, dtype=np.float64)
    var = (sq - n_arr * mean**2) / np.maximum(n_arr - 1.0, 1.0)
    return np.where(n_arr > 1, np.sqrt(np.maximum(var, 0.0)), 0.0)


def _mean_se(total: np.ndarray, sq: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error (ddof=1) from streaming sums; NaN where n == 0 (se: n < 2)."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        var = (sq - n * np.nan_to_num(mean) ** 2) / np.maximum(n - 1.0, 1.0)
        se = np.where(n > 1, np.sqrt(np.maximum(var, 0.0) / np.maximum(n, 1)), np.nan)
    return mean, se


def _image_size(image: Any) -> tuple[int, int]:
    """(W, H) of a PIL image or of a (C, H, W) / (H, W, C) tensor or array item."""
    if isinstance(image, Image.Image):
        return image.size
    shape = tuple(image.shape)
    if isinstance(image, Tensor) and len(shape) == 3 and shape[0] in (1, 3, 4):
        return int(shape[2]), int(shape[1])
    return int(shape[1]), int(shape[0])


def _branch_kernels(model: nn.Module, site: Site) -> tuple[tuple[tuple[int, int], ...], Any]:
    """((kernel, dilation) per branch, split_input or None) read from the SK module."""
    try:
        module = model.get_submodule(site.name)
    except AttributeError:
        return (), None
    paths = getattr(module, "paths", None)
    if paths is None:
        return (), None
    kernels = []
    for path in paths:
        conv = next((m for m in path.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            return (), None
        kernels.append((int(conv.kernel_size[0]), int(conv.dilation[0])))
    split = getattr(module, "split_input", None)
    return tuple(kernels), (None if split is None else bool(split))


class ScaleSweep(Analysis):
    """The sweep as an :class:`~attnviz.analysis.runner.Analysis` (see the module doc).

    Per image it builds V views: the zoom views at every scale and, with ``controls``, one
    resolution control per scale > 1 (the 1.0x view degraded by that zoom view's upsampling
    factor; counted only where the zoom view needed upsampling). With ``native=True`` the
    items are :class:`~attnviz.data.shapes.ShapeScenes` strips (the views rendered natively)
    and no resolution control is needed; ``content`` then adds one view per content control
    of the strips (:mod:`attnviz.data.scene_controls`), compared with the zoom view at
    ``content_scale``. ``boxes`` ({image id or source position: object box (x0, y0, x1, y1)
    in original pixels}) flags, per image and scale, whether the object is clipped by the
    zoom crop; the paired statistics are then also kept for the inside and clipped images.
    """

    name = "scale_sweep"
    accepts_prepared = False

    def __init__(
        self,
        scales: Sequence[float] = DEFAULT_SCALES,
        sites: Iterable[str | Site] | str | None = None,
        per_image: bool = False,
        *,
        controls: bool = True,
        native: bool = False,
        content: Sequence[str] = (),
        content_scale: float | None = None,
        boxes: dict[Any, Sequence[float]] | None = None,
    ):
        scales = tuple(float(s) for s in scales)
        if not scales:
            raise ValueError("give at least one scale")
        if any(not (math.isfinite(s) and s >= 1.0) for s in scales):
            raise ValueError(f"view scales must be finite numbers >= 1.0, got {list(scales)}")
        self.scales, self.selection, self.per_image = scales, sites, per_image
        self.native = bool(native)
        self.ref = int(np.argmin(scales))  # delta_D(s) = D(s) - D(reference = smallest scale)
        has_one = any(s == 1.0 for s in scales)
        self.controls = bool(controls) and not self.native and has_one
        cond = [(ZOOM, s) for s in scales]
        if self.controls:
            cond += [(CONTROL, s) for s in scales if s > 1.0]
        self.content = tuple(content)
        if self.content:
            if not self.native:
                raise ValueError("content controls need natively rendered scenes (ShapeScenes)")
            bad = [c for c in self.content if c not in CONTENT_CONTROLS]
            if bad:
                raise ValueError(f"unknown content controls {bad}; valid: {list(CONTENT_CONTROLS)}")
            target = max(scales) if content_scale is None else float(content_scale)
            if target not in scales:
                raise ValueError(f"content_scale {target} is not a swept scale {list(scales)}")
            cond += [(c, target) for c in self.content]
        self.boxes = None if self.native or not boxes else dict(boxes)
        for key, box in (self.boxes or {}).items():
            vals = np.asarray(box, dtype=np.float64).ravel()
            if vals.size != 4 or not np.isfinite(vals).all() or not (vals[2:] > vals[:2]).all():
                raise ValueError(f"the box of {key!r} must be (x0, y0, x1, y1), got {box!r}")
        self.views = cond
        self.keep_images = True  # step() needs each image's size (upsampling factors)
        self._sites: list[Site] = []
        self._kernels: dict[str, Any] = {}

    def sites(self, model: nn.Module) -> list[Site]:
        self._sites = choose_sites(
            model, kinds_with_role("branch"), self.selection, what="SK (selective kernel) site"
        )
        self._kernels = {s.alias: _branch_kernels(model, s) for s in self._sites}
        return self._sites

    def params(self) -> dict[str, Any]:
        params = {
            "scales": list(self.scales),
            "per_image": self.per_image,
            "controls": self.controls,
            "native": self.native,
        }
        if self.content:
            params["content"] = list(self.content)
        if self.boxes is not None:
            params["boxes"] = len(self.boxes)
        return params

    # -- views -----------------------------------------------------------------------------
    def view_images(
        self, image: Image.Image, transform: EvalTransform
    ) -> tuple[list[Image.Image], list[float]]:
        """The V views of one item (PIL, before normalisation) and each zoom's upsampling."""
        if self.native:
            n_views = len(self.scales) + len(self.content)
            views = [transform.view(v) for v in split_strip(image, n_views)]
            h, _ = transform.input_size
            up = [h / image.height] * len(self.scales)
            return views, up
        zooms, geos = zoom_views(image, transform, self.scales)
        up = [g.upsampling for g in geos]
        views = list(zooms)
        if self.controls:
            base = zooms[self.scales.index(1.0)]
            for s in self.scales:
                if s > 1.0:
                    views.append(resolution_control(base, up[self.scales.index(s)], transform))
        return views, up

    def prepare(self, image: Image.Image | Tensor, transform: EvalTransform | None) -> Tensor:
        assert transform is not None and isinstance(image, Image.Image)
        views, _ = self.view_images(image, transform)
        return torch.stack([transform.tensor(v) for v in views])  # (V, 3, H, W)

    def inputs(self, x: Tensor) -> Tensor:
        # (B, V, 3, H, W) -> view-major (V * B, 3, H, W): one forward for all views
        b, v = x.shape[:2]
        return x.transpose(0, 1).reshape(v * b, *x.shape[2:])

    def _upsampling(self, batch) -> np.ndarray:
        """(S, B) upsampling factor of each zoom view of the batch."""
        s, b = len(self.scales), len(batch)
        sizes = [_image_size(im) for im in batch.images]
        if self.native:  # every view is a full render: the model's own resize only
            h = self.transform.input_size[0]
            return np.asarray([[h / hh for _, hh in sizes]] * s, dtype=np.float64)
        out = np.ones((s, b))
        for j, size in enumerate(sizes):
            try:
                geos = zoom_geometry(size, self.transform, self.scales)
                out[:, j] = [g.upsampling for g in geos]
            except ValueError:
                out[:, j] = self.scales
        return out

    def _clipped(self, batch) -> np.ndarray | None:
        """(S, B) float: 1 where the image's object box is not inside the s-times crop (the
        crop in original pixels, :func:`attnviz.data.views.zoom_geometry`), 0 where it is,
        NaN without a box (or when the geometry is unknown); None without boxes."""
        if self.boxes is None:
            return None
        out = np.full((len(self.scales), len(batch)), np.nan)
        for j, (r, image) in enumerate(zip(batch.records, batch.images)):
            box = self.boxes.get(r.id, self.boxes.get(r.index))
            if box is None:
                continue
            try:
                geos = zoom_geometry(_image_size(image), self.transform, self.scales)
            except ValueError:
                continue
            x0, y0, x1, y1 = (float(v) for v in box)
            for i, g in enumerate(geos):
                c0, d0, c1, d1 = g.box
                eps = 1e-6
                inside = x0 >= c0 - eps and y0 >= d0 - eps and x1 <= c1 + eps and y1 <= d1 + eps
                out[i, j] = 0.0 if inside else 1.0
        return out

    # -- per batch -------------------------------------------------------------------------
    def step(self, state: State, batch, cache, output) -> None:
        b, s, v = len(batch), len(self.scales), len(self.views)
        labels = batch.labels
        known = [lab for lab in labels if lab is not None]
        if known and len(known) != len(labels):
            raise ValueError("some images have a label and some do not")
        for lab in known:
            if lab < 0:
                raise ValueError(f"labels must be >= 0, got {lab}")
        up = self._upsampling(batch)  # (S, B)
        # which images count in each view: zoom views all, controls where upsampling was needed
        counted = np.ones((v, b), dtype=bool)
        zoom_of = np.arange(v)  # the zoom view a view is compared with
        for vi, (cond, sc) in enumerate(self.views):
            if cond != ZOOM:  # a control: compared with the zoom view at its scale
                zi = self.scales.index(sc)
                zoom_of[vi] = zi
                if cond == CONTROL:  # only where the zoom view needed upsampling
                    counted[vi] = up[zi] > 1.0 + 1e-9
        clipped = self._clipped(batch)  # (S, B) or None
        groups: dict[str, np.ndarray] = {}
        if clipped is not None:
            flag = clipped[zoom_of]  # (V, B): the flag of the zoom view a view belongs to
            groups = {"inside": counted & (flag == 0.0), "clipped": counted & (flag == 1.0)}
            for g, gw in groups.items():
                state.add(f"group_count::{g}", gw.sum(1))
        state.add("count", b)
        state.add("view_count", counted.sum(1))
        state.add("up_sum", up.sum(1))
        state.add("up_count", (up > 1.0 + 1e-9).sum(1))
        for lab in set(known):
            cols = [j for j, x in enumerate(labels) if x == lab]
            state.add(f"class_view_count::{lab}", counted[:, cols].sum(1))
        for site in self._sites:
            t = cache[site.name]
            if t.shape[0] != v * b:
                raise ValueError(
                    f"SK site {site.alias} ran {t.shape[0] // max(v * b, 1)} times per image; "
                    "the sweep needs one call per image"
                )
            a = t.reshape(v, b, *t.shape[1:]).double().numpy()  # (V, B, M, C)
            if "shape::" + site.alias not in state.info:
                state.info["shape::" + site.alias] = [int(a.shape[2]), int(a.shape[3])]
            d_all = a[:, :, -1].mean(-1) - a[:, :, 0].mean(-1)  # (V, B)
            d, az = d_all[:s], a[:s]  # the zoom views
            state.add(f"att_sum::{site.alias}", az.sum(1))
            state.add(f"att_sq::{site.alias}", (az * az).sum(1))
            state.add(f"d_sum::{site.alias}", d.sum(1))
            state.add(f"d_sq::{site.alias}", (d * d).sum(1))
            w = counted.astype(np.float64)
            delta = d_all - d_all[self.ref][None, :]  # paired change per image
            excess = d_all[zoom_of] - d_all  # zoom minus its control (0 for zoom views)
            zdelta = delta[zoom_of]  # the zoom's change on the same images
            for key, val in (
                ("vd", d_all),
                ("dd", delta),
                ("ex", excess),
            ):
                state.add(f"{key}_sum::{site.alias}", (w * val).sum(1))
                state.add(f"{key}_sq::{site.alias}", (w * val * val).sum(1))
            state.add(f"zd_sum::{site.alias}", (w * zdelta).sum(1))
            for g, gw in groups.items():
                gwf = gw.astype(np.float64)
                for key, val in (("dd", delta), ("ex", excess)):
                    state.add(f"g{key}_sum::{g}::{site.alias}", (gwf * val).sum(1))
                    state.add(f"g{key}_sq::{g}::{site.alias}", (gwf * val * val).sum(1))
            for lab in set(known):
                cols = [j for j, x in enumerate(labels) if x == lab]
                state.add(f"cd_sum::{site.alias}::{lab}", d[:, cols].sum(1))
                state.add(f"cd_sq::{site.alias}::{lab}", (d[:, cols] ** 2).sum(1))
                wc, dc = w[:, cols], delta[:, cols]
                state.add(f"cdd_sum::{site.alias}::{lab}", (wc * dc).sum(1))
                state.add(f"cdd_sq::{site.alias}::{lab}", (wc * dc * dc).sum(1))
            if self.per_image:
                for j, r in enumerate(batch.records):
                    state.put(f"image_d::{site.alias}", r.index, d[:, j])
                    state.put(
                        f"image_view_d::{site.alias}",
                        r.index,
                        np.where(counted[:, j], d_all[:, j], np.nan),
                    )
                    state.put(f"image_att::{site.alias}", r.index, a[:s, j].astype(np.float32))
        for j, r in enumerate(batch.records):
            if r.label is not None:
                state.add(f"class_count::{r.label}", 1)
            if self.per_image:
                state.put("id", r.index, np.asarray(r.id))
                state.put("label", r.index, -1 if r.label is None else r.label)
                state.put("upsampling", r.index, up[:, j])
                if clipped is not None:
                    state.put("clipped", r.index, clipped[:, j])

    def finalise(self, state: State, run: RunInfo) -> ScaleSweepResult:
        n = float(state.sum("count"))
        labels = sorted(int(k.split("::")[1]) for k in state.sums if k.startswith("class_count::"))
        k = max([len(run.class_names)] + [lab + 1 for lab in labels]) if labels else 0
        names = list(run.class_names) + [str(i) for i in range(len(run.class_names), k)]
        class_count = np.asarray([state.sum(f"class_count::{i}") for i in range(k)])
        v, s = len(self.views), len(self.scales)
        view_count = state.sum("view_count", np.zeros(v))
        zeros_v = np.zeros(v)
        class_view_count = (
            np.stack([state.sum(f"class_view_count::{i}", zeros_v) for i in range(k)], 1)
            if k
            else np.zeros((v, 0))
        )
        keys = (
            "branch_mean", "branch_std", "d_mean", "d_std", "d_sem", "class_d_mean",
            "class_d_sem", "view_d_mean", "view_d_sem", "delta_mean", "delta_se",
            "class_delta_mean", "class_delta_se", "zoom_delta", "excess_mean", "excess_se",
            "group_delta_mean", "group_delta_se", "group_excess_mean", "group_excess_se",
        )  # fmt: skip
        grouped = self.boxes is not None
        group_count = (
            np.stack([state.sum(f"group_count::{g}", zeros_v) for g in GROUPS])
            if grouped
            else np.zeros((0, v))
        )
        out: dict[str, dict[str, np.ndarray]] = {key: {} for key in keys}
        swept = []
        for site in self._sites:
            a = site.alias
            shape = state.info.get("shape::" + a)
            if shape is None:
                raise ValueError(f"SK site {a} ({site.name}) did not run in a forward")
            kernels, split = self._kernels[a]  # read for every site by sites()
            swept.append(
                SweepSite(
                    a,
                    site.name,
                    site.stage,
                    site.block,
                    shape[0],
                    shape[1],
                    tuple(site.info.get("branch_receptive_field", ())),
                    tuple(kernels),
                    split,
                )
            )
            mean = state.sums[f"att_sum::{a}"] / n
            out["branch_mean"][a] = mean
            out["branch_std"][a] = np.sqrt(np.maximum(state.sums[f"att_sq::{a}"] / n - mean**2, 0))
            dm = state.sums[f"d_sum::{a}"] / n
            out["d_mean"][a] = dm
            out["d_std"][a] = _sample_std(state.sums[f"d_sq::{a}"], dm, n)
            out["d_sem"][a] = out["d_std"][a] / math.sqrt(n)
            zeros = np.zeros(s)

            def per_class(key: str, zero: np.ndarray, width: int, a: str = a) -> np.ndarray:
                if not k:
                    return np.zeros((width, 0))
                return np.stack([state.sum(f"{key}::{a}::{i}", zero) for i in range(k)], 1)

            cm, cse = _mean_se(per_class("cd_sum", zeros, s), per_class("cd_sq", zeros, s),
                               np.broadcast_to(class_count, (s, k)))  # fmt: skip
            out["class_d_mean"][a], out["class_d_sem"][a] = cm, cse
            out["view_d_mean"][a], out["view_d_sem"][a] = _mean_se(
                state.sum(f"vd_sum::{a}", zeros_v), state.sum(f"vd_sq::{a}", zeros_v), view_count
            )
            out["delta_mean"][a], out["delta_se"][a] = _mean_se(
                state.sum(f"dd_sum::{a}", zeros_v), state.sum(f"dd_sq::{a}", zeros_v), view_count
            )
            out["class_delta_mean"][a], out["class_delta_se"][a] = _mean_se(
                per_class("cdd_sum", zeros_v, v), per_class("cdd_sq", zeros_v, v), class_view_count
            )
            with np.errstate(invalid="ignore", divide="ignore"):
                out["zoom_delta"][a] = np.where(
                    view_count > 0, state.sum(f"zd_sum::{a}", zeros_v) / view_count, np.nan
                )
            out["excess_mean"][a], out["excess_se"][a] = _mean_se(
                state.sum(f"ex_sum::{a}", zeros_v), state.sum(f"ex_sq::{a}", zeros_v), view_count
            )
            if grouped:
                for key, name in (("dd", "group_delta"), ("ex", "group_excess")):
                    total = np.stack([state.sum(f"g{key}_sum::{g}::{a}", zeros_v) for g in GROUPS])
                    sq = np.stack([state.sum(f"g{key}_sq::{g}::{a}", zeros_v) for g in GROUPS])
                    out[name + "_mean"][a], out[name + "_se"][a] = _mean_se(total, sq, group_count)
        image_d = image_att = ids = image_labels = image_view_d = image_up = image_clip = None
        if self.per_image:
            image_d = {s_.alias: state.stacked(f"image_d::{s_.alias}")[1] for s_ in swept}
            image_view_d = {s_.alias: state.stacked(f"image_view_d::{s_.alias}")[1] for s_ in swept}
            image_att = {s_.alias: state.stacked(f"image_att::{s_.alias}")[1] for s_ in swept}
            ids = [str(x) for x in state.stacked("id")[1]]
            image_labels = [int(x) for x in state.stacked("label")[1]]
            image_up = state.stacked("upsampling")[1]
            if grouped:
                image_clip = state.stacked("clipped")[1]
        up_mean = state.sum("up_sum", np.zeros(s)) / max(n, 1)
        return ScaleSweepResult(
            sites=swept,
            scales=self.scales,
            n_images=int(n),
            class_names=names if k else [],
            class_count=class_count.astype(np.int64),
            image_d=image_d,
            image_attention=image_att,
            image_ids=ids,
            image_labels=image_labels,
            skipped=run.skipped,
            meta={"analysis_sites": [s_.alias for s_ in swept]},
            view_conditions=[c for c, _ in self.views],
            view_scales=[sc for _, sc in self.views],
            view_count=view_count.astype(np.int64),
            class_view_count=class_view_count.astype(np.int64),
            upsampling=np.stack([up_mean, state.sum("up_count", np.zeros(s))]),
            image_view_d=image_view_d,
            image_upsampling=image_up,
            views_native=self.native,
            group_count=group_count.astype(np.int64),
            image_clipped=image_clip,
            **out,
        )


def scale_sweep(
    model: nn.Module,
    images: Any,
    *,
    scales: Sequence[float] | None = None,
    sites: Iterable[str | Site] | str | None = None,
    per_image: bool = False,
    controls: bool = True,
    boxes: Any = "auto",
    **run_options: Any,
) -> ScaleSweepResult:
    """Run the SKNet object-scale sweep of ``model`` over ``images``.

    ``images``: a :class:`~attnviz.data.shapes.ShapeScenes` (generated scenes rendered
    natively at each of its scales: no resampling, no control needed), or image files /
    PIL images / a Dataset of them, whose zoom views are cropped from the original pixels
    (:func:`attnviz.data.views.zoom_views`); ``controls`` then adds a resolution control for
    every zoom view that needed upsampling. ``scales`` default (1.0, 1.5, 2.0) (a
    ShapeScenes' own scales). ``sites`` selects SK sites by alias or name (default: all).
    ``per_image`` also keeps every image's D, attention and upsampling. ``run_options`` are
    those of :func:`attnviz.analysis.runner.run` (``preprocess``, ``labels``, ``batch_size``,
    ``workers``, ``limit``, ``strict``, ``progress``, ``checkpoint``, ``resume``, ...). The
    model runs in eval mode; its training flags are restored afterwards.

    A ShapeScenes made with ``controls=`` adds its content controls (see
    :mod:`attnviz.data.scene_controls`). ``boxes`` (crop protocol only): the object box of
    each image in original pixels, {image id or source position: (x0, y0, x1, y1)}, to split
    the paired statistics into images whose object lies inside the zoom crop and images it
    clips; ``"auto"`` (default) takes them from a :class:`~attnviz.data.ShapesDataset`'s
    records or from the ``records.csv`` of a folder written by
    :func:`attnviz.data.write_image_folder` (none otherwise); None: no split.
    """
    from ..data.shapes import ShapeScenes

    native = isinstance(images, ShapeScenes)
    if native:
        if scales is not None and tuple(float(x) for x in scales) != images.scales:
            raise ValueError(
                f"the scenes were rendered at {list(images.scales)}; sweep those scales (or "
                f"make ShapeScenes(..., scales={list(scales)}))"
            )
        scales = images.scales
    analysis = ScaleSweep(
        DEFAULT_SCALES if scales is None else scales,
        sites,
        per_image,
        controls=controls,
        native=native,
        content=images.controls if native else (),
        content_scale=images.control_scale if native else None,
        boxes=None if native else (_auto_boxes(images) if boxes == "auto" else boxes),
    )
    result = run(analysis, model, images, **run_options)
    assert isinstance(result, ScaleSweepResult)
    if native:
        result.meta["scenes"] = images.params()
        result.view_records = _scene_view_records(images)
    elif per_image and result.image_upsampling is not None and result.image_ids is not None:
        result.view_records = [
            {"image": ident, "scale": sc, "upsampling": float(result.image_upsampling[i, j])}
            for i, ident in enumerate(result.image_ids)
            for j, sc in enumerate(result.scales)
        ]
    return result


def _auto_boxes(images: Any) -> dict[Any, tuple[float, ...]] | None:
    """Object boxes of a ShapesDataset (by position) or of a folder with ``records.csv``
    (by relative path, the folder's image ids); None when there are none."""
    from pathlib import Path

    from ..data.shapes import ShapesDataset

    if isinstance(images, ShapesDataset):
        return {i: tuple(float(v) for v in r.box) for i, r in enumerate(images.records)}
    if isinstance(images, (str, Path)) and (Path(images) / "records.csv").is_file():
        table = pd.read_csv(Path(images) / "records.csv")
        if {"path", "x0", "y0", "x1", "y1"} <= set(table.columns):
            return {
                str(r.path): (float(r.x0), float(r.y0), float(r.x1), float(r.y1))
                for r in table.itertuples()
            }
    return None


def _scene_view_records(scenes: Any) -> list[dict[str, Any]]:
    rows = []
    for k, rec in enumerate(scenes.records):
        for sc, box in zip(rec.scales, rec.boxes):
            rows.append(
                {"image": f"#{k}", "scene_index": rec.index, "label": rec.label,
                 "class": rec.class_name, "size": rec.size, "scale": sc, "x0": box[0],
                 "y0": box[1], "x1": box[2], "y1": box[3], "upsampling": 1.0}
            )  # fmt: skip
    return rows
