"""SENet's "role of excitation" (Hu et al., TPAMI 2019, Sec. 7.2, Fig. 6 and 7).

For every selected channel-gate site (every kind of role ``channel``: ``se``, ``eca``,
``cbam_channel``, ...) the excitation
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
being large or small. It needs at least two classes (else NaN).

Controls (DESIGN.md section 7: a reading needs the obvious explanations ruled out):

* **Squeeze input.** The same specificity of the squeeze z = GAP(x) of the site's input x
  (the gate module's input, recorded with ``capture(..., io=True)`` and averaged over its
  spatial axes at once; for CBAM's channel gate the average-pooled descriptor, not the max).
  ``squeeze_specificity`` is how class-specific the features entering the gate already are;
  ``gate_gain = specificity - squeeze_specificity`` is what the gate adds (negative: the
  excitation is *less* class-specific than its input).
* **Label-permutation null.** With few images per class, class means of a class-blind signal
  still differ by about sigma / sqrt(n_k). Instead of an analytic level, the labels of all
  images are permuted ``permutations`` times (class sizes kept; draw r uses the r-th
  ``rng.permutation(N)`` of ``numpy.random.default_rng(seed)``, images in source order) and
  the specificity recomputed with the same denominator: ``null_mean``, ``null_p95`` (95th
  percentile) and ``p_value`` = (1 + #{null >= observed}) / (1 + permutations), per site,
  for the excitation and (same draws) for the squeeze input (``squeeze_null_*``).
  A permutation needs every image's vector, so with ``permutations > 0`` the per-image
  excitation and squeeze vectors are kept as float32 rows: N x sum_sites(C) x 2 x 4 bytes
  (SE-ResNet-50, the paper's six sites, 200 images: 13 MB; 50,000 images: 3.3 GB, so use
  ``permutations=0`` or fewer images there). Without permutations only the streamed sums are
  kept and memory does not grow with N.
* **Where the classes come from.** ``label_source`` is ``"given"`` (labels), ``"prediction"``
  (the model's own argmax: deep-layer specificity is then partly circular, since the
  prediction is read off the same features) or ``"mixed"``; with predictions a
  ``UserWarning`` is raised and the summary says so.

``specificity_chance()`` keeps the old analytic approximation
sqrt((K - 1) / K * mean_k(1 / n_k)) for reference; the tables and figures use the null.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from torch import Tensor, nn

from ..capture import Site
from ..capture.kinds import kinds_with_role
from ..results import Result, from_records, records
from ._sites import choose_sites, last_of_each_stage
from .runner import Analysis, RunInfo, State, run
from .stats import bootstrap_ci

DEFAULT_PERMUTATIONS = 300
BOOTSTRAP_DRAWS = 500  # resamples of the images for the gate_gain interval
PREDICTION_WARNING = (
    "classes come from the model's own predictions (no labels): the specificity of deep "
    "sites is partly circular, since the prediction is read off the same features"
)


def evenly_spaced_channels(n_channels: int, k: int) -> np.ndarray:
    """``k`` evenly spaced channel indices in [0, n_channels) (all channels if k >= C)."""
    if k <= 0:
        raise ValueError(f"channels must be positive, got {k}")
    if k >= n_channels:
        return np.arange(n_channels)
    return np.unique(np.round(np.linspace(0, n_channels - 1, k)).astype(np.int64))


# ----------------------------------------------------------------------------- statistics
def specificity_of(class_mean: np.ndarray, std: np.ndarray) -> float:
    """mean_c std_k(class_mean[k, c]) / mean_c std[c] over the classes without NaN rows."""
    m = np.asarray(class_mean, dtype=np.float64)
    m = m[~np.isnan(m).any(axis=1)]
    total = float(np.mean(std)) if np.size(std) else float("nan")
    if m.shape[0] < 2 or not np.isfinite(total) or total <= 0:
        return float("nan")
    return float(m.std(axis=0).mean()) / total


def permutation_specificity(
    values: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    permutations: int,
    seed: int = 0,
    *,
    max_elements: int = 1 << 24,
) -> np.ndarray:
    """Specificity of ``values`` (N, C) under ``permutations`` label permutations, (R,).

    Draw r relabels image i with ``labels[perm_r[i]]``, ``perm_r`` the r-th
    ``rng.permutation(N)`` of ``numpy.random.default_rng(seed)``; the class means of
    ``classes`` (those with images) are recomputed, the denominator mean_c sigma_c (over all
    N images, permutation-invariant) is kept. Vectorised over blocks of draws.
    """
    v = np.asarray(values, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n = v.shape[0]
    present = [int(k) for k in classes if (y == k).any()]
    out = np.full(permutations, np.nan)
    if permutations == 0 or len(present) < 2 or n < 2:
        return out
    total = float(v.std(axis=0).mean())
    if total <= 0:
        return out
    counts = np.asarray([(y == k).sum() for k in present], dtype=np.float64)
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(n) for _ in range(permutations)])  # (R, N)
    cls = np.asarray(present)
    k, c = len(present), v.shape[1]
    block = max(1, int(max_elements // max(k * (n + c), 1)))
    for start in range(0, permutations, block):
        shuffled = y[perms[start : start + block]]  # (b, N)
        onehot = (shuffled[:, None, :] == cls[None, :, None]).astype(np.float64)  # (b, K, N)
        means = (onehot @ v) / counts[None, :, None]  # (b, K, C)
        out[start : start + block] = means.std(axis=1).mean(axis=1) / total
    return out


def null_summary(observed: float, null: np.ndarray) -> dict[str, float]:
    """``null_mean``, ``null_p95`` and the permutation p-value (1 + #{null >= obs}) / (1 + R)."""
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    if null.size == 0 or not np.isfinite(observed):
        return {"null_mean": np.nan, "null_p95": np.nan, "p_value": np.nan}
    return {
        "null_mean": float(null.mean()),
        "null_p95": float(np.percentile(null, 95)),
        "p_value": float((1 + np.count_nonzero(null >= observed - 1e-12)) / (1 + null.size)),
    }


def gain_bootstrap(
    gate: np.ndarray,
    squeeze: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    *,
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = 0,
) -> np.ndarray:
    """Percentile bootstrap of gate_gain = specificity(gate) - specificity(squeeze) over
    images (both recomputed on the same resample): ``[low, high, se]`` of the 95 % interval
    (:func:`attnviz.analysis.stats.bootstrap_ci`)."""
    g, z = np.asarray(gate, np.float64), np.asarray(squeeze, np.float64)
    y = np.asarray(labels, dtype=np.int64)
    cls = [int(k) for k in classes]

    def gain(idx: np.ndarray) -> float:
        yy = y[idx]
        out = []
        for v in (g[idx], z[idx]):
            means = np.stack(
                [
                    v[yy == k].mean(0) if (yy == k).any() else np.full(v.shape[1], np.nan)
                    for k in cls
                ]
            )
            out.append(specificity_of(means, v.std(axis=0)))
        return out[0] - out[1]

    return np.asarray(bootstrap_ci(len(y), gain, draws=draws, seed=seed), dtype=np.float64)


def squeeze_of(x: Tensor, n_channels: int) -> Tensor | None:
    """GAP of a site module's input x: (B, C, ...) or channels-last (B, ..., C) -> (B, C);
    None when no axis of x has the gate's C channels."""
    if x.dim() < 2:
        return None
    if x.shape[1] == n_channels:
        return x.reshape(x.shape[0], n_channels, -1).mean(dim=2)
    if x.shape[-1] == n_channels:
        return x.reshape(x.shape[0], -1, n_channels).mean(dim=1)
    return None


# ----------------------------------------------------------------------------- result
@dataclass
class SiteExcitation:
    """Excitation statistics of one site. Arrays over all C channels (float64).

    ``class_mean`` / ``class_std`` are (K, C) in the order of ``ExcitationProfileResult.classes``;
    ``mean`` / ``std`` (C,) over all images; ``channels`` the evenly spaced channel indices
    that the figures draw. The squeeze input z = GAP(x): ``squeeze_class_mean`` (K, C) and
    ``squeeze_std`` (C,) (empty when the site's input has no channel axis of size C).
    ``null`` / ``squeeze_null``: the specificity under each label permutation (R,).
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
    squeeze_class_mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    squeeze_std: np.ndarray = field(default_factory=lambda: np.zeros(0))
    null: np.ndarray = field(default_factory=lambda: np.zeros(0))
    squeeze_null: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gain_ci: np.ndarray = field(default_factory=lambda: np.full(3, np.nan))

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
        return specificity_of(self.class_mean, self.std)

    @property
    def squeeze_specificity(self) -> float:
        """The same specificity of the squeeze input z = GAP(x) (NaN if not recorded)."""
        if self.squeeze_std.size == 0:
            return float("nan")
        return specificity_of(self.squeeze_class_mean, self.squeeze_std)

    def controls(self) -> dict[str, float]:
        """Squeeze specificity, gate gain and the permutation null of gate and squeeze."""
        spec, sq = self.specificity, self.squeeze_specificity
        gate = null_summary(spec, self.null)
        squeeze = null_summary(sq, self.squeeze_null)
        return {
            "specificity": spec,
            "squeeze_specificity": sq,
            "gate_gain": spec - sq,
            "gate_gain_ci_low": float(self.gain_ci[0]),
            "gate_gain_ci_high": float(self.gain_ci[1]),
            "gate_gain_se": float(self.gain_ci[2]),
            **gate,
            "squeeze_null_p95": squeeze["null_p95"],
            "squeeze_p_value": squeeze["p_value"],
        }


@dataclass
class ExcitationProfileResult(Result):
    """Per site and class the mean / std excitation per channel (SENet Fig. 6 / 7).

    ``classes`` are the class labels recorded per class (indices into the model's outputs or
    the dataset's labels), ``class_names`` their names, ``counts`` the images per class (K,),
    ``n_images`` all images (including those of unrecorded classes, which count in the
    all-image mean), ``label_source`` "given", "prediction" or "mixed", ``skipped`` the
    unusable inputs; ``permutations`` and ``seed`` of the label-permutation null.
    """

    kind: ClassVar[str] = "excitation_profile"
    format_version: ClassVar[int] = 3

    sites: list[SiteExcitation]
    classes: list[int]
    class_names: list[str]
    counts: np.ndarray
    n_images: int
    label_source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    permutations: int = 0
    seed: int = 0

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
            if not cls.lstrip("-").isdigit():
                raise KeyError(f"no class {cls!r}; classes: {self.class_names}")
            cls = int(cls)  # a label given as text (the command line)
        if int(cls) in self.classes:
            return self.classes.index(int(cls))
        raise KeyError(f"no class {cls!r}; classes: {self.classes}")

    def specificity_chance(self) -> float:
        """Analytic approximation sqrt((K - 1) / K * mean_k(1 / n_k)) (reference only; the
        permutation null of :meth:`specificity` replaces it)."""
        n = np.asarray(self.counts, dtype=np.float64)
        n = n[n > 0]
        if n.size < 2:
            return float("nan")
        return float(np.sqrt((n.size - 1) / n.size * np.mean(1.0 / n)))

    def specificity(self) -> pd.DataFrame:
        """One row per site (in depth order): alias, stage, block, class_spread, specificity,
        squeeze_specificity, gate_gain, null_mean, null_p95, p_value, squeeze_null_p95,
        squeeze_p_value (see the module docstring)."""
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
                    **s.controls(),
                }
                for s in self.sites
            ]
        )

    def effects(self) -> pd.DataFrame:
        """Per site: ``specificity`` (gate), ``squeeze_specificity`` and ``gate_gain`` as
        effects (key columns site, measure); ``se``: for gate_gain the bootstrap standard
        error over images (NaN without the permutation rows), NaN for the others; ``p``: the
        permutation p-value of the gate's and the squeeze's specificity."""
        rows = []
        for s in self.sites:
            c = s.controls()
            for measure, p in (
                ("specificity", c["p_value"]),
                ("squeeze_specificity", c["squeeze_p_value"]),
                ("gate_gain", np.nan),
            ):
                se = c["gate_gain_se"] if measure == "gate_gain" else np.nan
                rows.append(
                    {"site": s.alias, "measure": measure, "effect": c[measure], "se": se,
                     "n": self.n_images, "p": p}
                )  # fmt: skip
        return pd.DataFrame(rows, columns=["site", "measure", "effect", "se", "n", "p"])

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

    def summary(self) -> str:
        """Specificity of gate and squeeze input per site, the gain and the permutation null."""
        table = self.specificity()[
            [
                "site",
                "channels",
                "specificity",
                "squeeze_specificity",
                "gate_gain",
                "gate_gain_ci_low",
                "gate_gain_ci_high",
                "null_mean",
                "null_p95",
                "p_value",
            ]
        ].rename(columns={"squeeze_specificity": "squeeze_spec", "specificity": "gate_spec"})
        head = (
            f"{self.n_images} images, {len(self.classes)} classes (classes from: "
            f"{_SOURCE_WORDS.get(self.label_source, self.label_source)}); "
            + (
                f"null: {self.permutations} label permutations (seed {self.seed})"
                if self.permutations
                else "no permutation null (permutations=0)"
            )
        )
        lines = [head]
        if self.label_source != "given":
            lines.append(f"WARNING: {PREDICTION_WARNING}")
        lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        lines.append(
            "gate_spec: excitation; squeeze_spec: its input GAP(x); gate_gain = gate_spec - "
            "squeeze_spec (gate_gain_ci_*: 95 % percentile bootstrap over images, "
            f"{BOOTSTRAP_DRAWS} resamples, kept with the permutation null); null_*: gate_spec "
            "under label permutations; p_value: share of permutations at or above gate_spec"
        )
        return "\n".join(lines)

    # -- Result ----------------------------------------------------------------------------
    def _payload(self):
        arrays: dict[str, np.ndarray] = {"counts": np.asarray(self.counts)}
        for i, s in enumerate(self.sites):
            for key in _SITE_ARRAYS:
                arrays[f"site{i}/{key}"] = np.asarray(getattr(s, key))
        fields = {
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
            "permutations": self.permutations,
            "seed": self.seed,
            "skipped": records(self.skipped),
            "meta": self.meta,
        }
        frames = {"excitation.csv": self.to_frame(), "specificity.csv": self.specificity()}
        return arrays, frames, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], data: dict[str, np.ndarray]):
        sites = []
        for i, d in enumerate(manifest["sites"]):
            arrays = {k: data[f"site{i}/{k}"] for k in _SITE_ARRAYS if f"site{i}/{k}" in data}
            sites.append(
                SiteExcitation(
                    alias=d["alias"],
                    name=d["name"],
                    kind=d["kind"],
                    stage=d["stage"],
                    block=d["block"],
                    **arrays,
                )
            )
        return cls(
            sites=sites,
            classes=[int(c) for c in manifest["classes"]],
            class_names=list(manifest["class_names"]),
            counts=data["counts"],
            n_images=int(manifest["n_images"]),
            label_source=manifest["label_source"],
            skipped=from_records(manifest.get("skipped")),
            meta=dict(manifest.get("meta", {})),
            permutations=int(manifest.get("permutations", 0)),
            seed=int(manifest.get("seed", 0)),
        )


_SITE_ARRAYS = (
    "class_mean",
    "class_std",
    "mean",
    "std",
    "channels",
    "squeeze_class_mean",
    "squeeze_std",
    "null",
    "squeeze_null",
    "gain_ci",
)
_SOURCE_WORDS = {
    "given": "labels",
    "prediction": "the model's predictions",
    "mixed": "labels where known, else the model's predictions",
}


# ----------------------------------------------------------------------------- the analysis
def _mean_std(total: np.ndarray, total_sq: np.ndarray, n: float) -> tuple[np.ndarray, np.ndarray]:
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


class ExcitationProfile(Analysis):
    """Per-class streaming sums of the excitation and of its squeeze input at every chosen
    channel-gate site, and (for the permutation null) the per-image vectors."""

    name = "excitation_profile"

    def __init__(
        self,
        sites: Iterable[str | Site] | str | None = None,
        classes: Sequence[int | str] | None = None,
        channels: int = 50,
        permutations: int = DEFAULT_PERMUTATIONS,
        seed: int = 0,
    ):
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a whole number >= 1, got {channels!r}")
        if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 0:
            raise ValueError(f"permutations must be a whole number >= 0, got {permutations!r}")
        self.selection, self.classes, self.channels = sites, classes, channels
        self.permutations, self.seed = permutations, int(seed)
        self._sites: list[Site] = []

    def sites(self, model: nn.Module) -> list[Site]:
        self._sites = choose_sites(
            model,
            kinds_with_role("channel"),
            self.selection,
            what="channel-attention site",
            default=last_of_each_stage,
        )
        return self._sites

    def params(self) -> dict[str, Any]:
        classes = None if self.classes is None else [str(c) for c in self.classes]
        return {
            "classes": classes,
            "channels": self.channels,
            "permutations": self.permutations,
            "seed": self.seed,
        }

    def capture_options(self) -> dict[str, Any]:
        return {"io": True}  # the gate module's input x, for the squeeze z = GAP(x)

    def step(self, state: State, batch, cache, output) -> None:
        given = [r.label for r in batch.records]
        pred = output.argmax(dim=1).cpu().numpy() if any(v is None for v in given) else None
        y = np.asarray(
            [p if v is None else v for v, p in zip(given, pred if pred is not None else given)],
            dtype=np.int64,
        )
        state.add("label_given", sum(v is not None for v in given))
        state.add("label_predicted", sum(v is None for v in given))
        state.add("n_images", len(y))
        keep_rows = self.permutations > 0
        if keep_rows:
            for r, label in zip(batch.records, y):
                state.put("y", r.index, np.asarray(label, dtype=np.int64))
        for s in self._sites:
            a = cache[s.name].double()
            if a.shape[0] != len(y):
                raise RuntimeError(
                    f"site {s.alias} fired {a.shape[0] // max(len(y), 1)} times per image; the "
                    "excitation profile needs one excitation per image and site"
                )
            a = a.reshape(a.shape[0], -1)
            z = squeeze_of(cache.inputs(s.name).double(), a.shape[1])
            arrays = {"": a.numpy()}
            if z is not None:
                arrays["z"] = z.numpy()
            else:
                state.info[f"no_squeeze::{s.name}"] = True
            for tag, v in arrays.items():
                state.add(f"sum{tag}::{s.name}", v.sum(0))
                state.add(f"sq{tag}::{s.name}", (v * v).sum(0))
                for label in np.unique(y):
                    rows = v[y == label]
                    state.add(f"csum{tag}::{s.name}::{label}", rows.sum(0))
                    state.add(f"csq{tag}::{s.name}::{label}", (rows * rows).sum(0))
                if keep_rows:
                    for r, row in zip(batch.records, v):
                        state.put(f"v{tag}::{s.name}", r.index, row.astype(np.float32))
        for label in y:
            state.add(f"count::{int(label)}", 1)

    def finalise(self, state: State, run: RunInfo) -> ExcitationProfileResult:
        n_images = float(state.sum("n_images"))
        given, predicted = float(state.sum("label_given")), float(state.sum("label_predicted"))
        label_source = "given" if predicted == 0 else ("prediction" if given == 0 else "mixed")
        if label_source != "given":
            warnings.warn(PREDICTION_WARNING, UserWarning, stacklevel=4)
        present = sorted(int(k.split("::")[1]) for k in state.sums if k.startswith("count::"))
        names = run.class_names
        want = _resolve_classes(self.classes, present, names)

        def name_of(label: int) -> str:
            return names[label] if 0 <= label < len(names) else str(label)

        counts = np.asarray([state.sum(f"count::{k}") for k in want], dtype=np.int64)
        labels = state.stacked("y")[1].astype(np.int64) if self.permutations else None

        def profile(tag: str, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            mean, std = _mean_std(
                state.sums[f"sum{tag}::{name}"], state.sums[f"sq{tag}::{name}"], n_images
            )
            cm = []
            for k, count in zip(want, counts):
                m, _ = _mean_std(
                    state.sum(f"csum{tag}::{name}::{k}", np.zeros_like(mean)),
                    state.sum(f"csq{tag}::{name}::{k}", np.zeros_like(mean)),
                    float(count),
                )
                cm.append(m)
            return mean, std, np.stack(cm) if cm else np.zeros((0, mean.shape[0]))

        def null(tag: str, name: str) -> np.ndarray:
            if not self.permutations or labels is None:
                return np.zeros(0)
            values = state.stacked(f"v{tag}::{name}")[1]
            return permutation_specificity(values, labels, want, self.permutations, self.seed)

        results = []
        for s in self._sites:
            mean, std, class_mean = profile("", s.name)
            class_std = []
            for k, count in zip(want, counts):
                _, sd = _mean_std(
                    state.sum(f"csum::{s.name}::{k}", np.zeros_like(mean)),
                    state.sum(f"csq::{s.name}::{k}", np.zeros_like(mean)),
                    float(count),
                )
                class_std.append(sd)
            site = SiteExcitation(
                alias=s.alias,
                name=s.name,
                kind=s.kind,
                stage=s.stage,
                block=s.block,
                class_mean=class_mean,
                class_std=np.stack(class_std) if class_std else np.zeros((0, mean.shape[0])),
                mean=mean,
                std=std,
                channels=evenly_spaced_channels(mean.shape[0], self.channels),
                null=null("", s.name),
            )
            if f"sumz::{s.name}" in state.sums and not state.info.get(f"no_squeeze::{s.name}"):
                _, site.squeeze_std, site.squeeze_class_mean = profile("z", s.name)
                site.squeeze_null = null("z", s.name)
                if self.permutations and labels is not None:
                    site.gain_ci = gain_bootstrap(
                        state.stacked(f"v::{s.name}")[1],
                        state.stacked(f"vz::{s.name}")[1],
                        labels,
                        want,
                        seed=self.seed,
                    )
            results.append(site)
        return ExcitationProfileResult(
            sites=results,
            classes=list(want),
            class_names=[name_of(k) for k in want],
            counts=counts,
            n_images=int(n_images),
            label_source=label_source,
            skipped=run.skipped,
            meta={"channels_shown": self.channels},
            permutations=self.permutations,
            seed=self.seed,
        )


def excitation_profile(
    model: nn.Module,
    images: Any,
    *,
    classes: Sequence[int | str] | None = None,
    sites: Iterable[str | Site] | str | None = None,
    channels: int = 50,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    **run_options: Any,
) -> ExcitationProfileResult:
    """Class-wise excitation per channel at channel-attention sites (SENet TPAMI Fig. 6 / 7),
    with the squeeze-input control and a label-permutation null (see the module docstring).

    Classes are the ground-truth labels (``labels=`` or from the source); without labels the
    model's predictions are used (``label_source="prediction"``, with a ``UserWarning``).
    ``classes``: labels or class names to record per class (default: every class present).
    ``sites``: names / aliases, ``"all"``, or None for the paper's rule (see the module
    docstring). ``channels``: how many evenly spaced channels the figures show (statistics
    are kept for all). ``permutations``: label permutations of the null (0: none, and no
    per-image vectors kept); ``seed`` seeds them. ``run_options``: those of
    :func:`attnviz.analysis.runner.run` (``preprocess``, ``labels``, ``batch_size``,
    ``limit``, ``workers``, ``checkpoint``, ...).
    """
    analysis = ExcitationProfile(sites, classes, channels, permutations, seed)
    result = run(analysis, model, images, **run_options)
    assert isinstance(result, ExcitationProfileResult)
    return result
