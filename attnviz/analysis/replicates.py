"""Replicates: one analysis on the trained model, its training seeds and its baselines.

A reading of one trained network ("D rises with scale at SK_3_1") rests on three kinds of
variation that the image-sampling standard error of one run does not show: another training
seed could give another sign, and the same architecture without learning (``untrained``
initialisations, or the trained weights ``permuted`` within each tensor:
:mod:`attnviz.models.baselines`) could give an effect as large. :func:`run_replicates` runs
the one analysis (the same runner, the same images) once per model and
:class:`ReplicatesResult` joins the results' effect tables (:meth:`attnviz.results.Result.
effects`) on their key columns. Per effect:

* ``effect``, ``se``: the trained model's (seed 0) value and image-sampling standard error;
  ``z`` = effect / se, ``p`` two-sided normal (or the result's own p, e.g. a permutation p),
  ``p_holm`` Holm-adjusted over the table (the family: every effect with a p), ``z3`` the
  old |z| >= 3 flag beside it;
* ``seeds`` (number of seeds with a value, the trained model counted as seed 0),
  ``seed_mean``, ``seed_sd`` (ddof=1), ``seed_min``, ``seed_max``, ``sign_agreement`` (share
  of seeds with the trained model's sign), ``sign_holds`` (every seed has that sign);
* per baseline kind ``<kind>_min`` / ``<kind>_max`` (over its initialisations) and
  ``beyond_baseline``: the trained effect lies outside the range of every baseline kind
  (``baseline_known`` False where a baseline gave no value, e.g. a constant map);
* ``reading``: ``positive`` / ``negative`` only where the sign holds across >= 2 seeds, the
  effect is beyond every baseline range given and p_holm < 0.05; otherwise ``none`` and why.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..results import Result, ResultFormatError, read_manifest, wrong_kind
from .runner import Analysis, run
from .stats import holm, two_sided_p

__all__ = ["ReplicatesResult", "effect_tests", "result_class", "run_replicates"]

ALPHA = 0.05
VALUE_COLUMNS = ("effect", "se", "n", "p")
TRAINED = "trained"


def result_class(kind: str) -> type[Result]:
    """The :class:`~attnviz.results.Result` subclass of a result ``kind`` (string registry
    over the loaded analysis modules)."""
    from . import attribution, excitation, query_independence, query_maps, scale_sweep  # noqa: F401

    stack, seen = list(Result.__subclasses__()), {}
    while stack:
        c = stack.pop()
        seen.setdefault(c.kind, c)
        stack.extend(c.__subclasses__())
    if kind not in seen:
        raise ResultFormatError(f"unknown result kind {kind!r}; known: {sorted(seen)}")
    return seen[kind]


def _folder(label: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in label)


def baseline_kind(label: str) -> str:
    """``"untrained:2"`` -> ``"untrained"``."""
    return label.partition(":")[0]


def effect_tests(effects: pd.DataFrame) -> pd.DataFrame:
    """An effect table (:meth:`attnviz.results.Result.effects`) with its tests: ``z`` =
    effect / se, ``p`` (the table's own p where it has one, e.g. a permutation p, else the
    two-sided normal p of z), ``p_holm`` (Holm over the table: one family) and ``z3``
    (|z| >= 3, the older flag, kept beside it)."""
    frame = effects.reset_index(drop=True).copy()
    if "p" not in frame:
        frame["p"] = np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        z = frame["effect"].to_numpy(float) / frame["se"].to_numpy(float)
    frame["z"] = z
    p = frame["p"].to_numpy(float)
    frame["p"] = np.where(np.isfinite(p), p, [two_sided_p(v) for v in z])
    frame["p_holm"] = holm(frame["p"].to_numpy(float))
    frame["z3"] = np.abs(z) >= 3
    return frame


@dataclass
class ReplicatesResult(Result):
    """The trained model's result, its seed results and its baseline results, joined per
    effect (see the module docstring). ``seeds``: {"seed1": result, ...} (the trained model
    is seed 0); ``baselines``: {"untrained:0": result, ...}."""

    kind: ClassVar[str] = "replicates"
    format_version: ClassVar[int] = 1

    trained: Result
    seeds: dict[str, Result] = field(default_factory=dict)
    baselines: dict[str, Result] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def analysis(self) -> str:
        return self.trained.kind

    def baseline_kinds(self) -> list[str]:
        return list(dict.fromkeys(baseline_kind(k) for k in self.baselines))

    # -- the joined table ------------------------------------------------------------------
    def to_frame(self) -> pd.DataFrame:
        """One row per effect of the trained result (see the module docstring)."""
        base = self.trained.effects().reset_index(drop=True)
        keys = [c for c in base.columns if c not in VALUE_COLUMNS]
        frame = effect_tests(base)

        def values(results: Mapping[str, Result]) -> np.ndarray:
            cols = []
            for res in results.values():
                other = res.effects()[keys + ["effect"]]
                merged = base[keys].merge(other, on=keys, how="left")
                cols.append(merged["effect"].to_numpy(float))
            return np.stack(cols, axis=1) if cols else np.zeros((len(base), 0))

        trained = frame["effect"].to_numpy(float)
        seeds = np.concatenate([trained[:, None], values(self.seeds)], axis=1)
        ok = np.isfinite(seeds)
        count = ok.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"), _quiet():
            frame["seeds"] = count
            frame["seed_mean"] = np.nanmean(seeds, axis=1)
            frame["seed_sd"] = np.where(count > 1, np.nanstd(seeds, axis=1, ddof=1), np.nan)
            frame["seed_min"] = np.nanmin(seeds, axis=1)
            frame["seed_max"] = np.nanmax(seeds, axis=1)
            same = (np.sign(seeds) == np.sign(trained)[:, None]) & ok & (trained[:, None] != 0)
            frame["sign_agreement"] = same.sum(axis=1) / np.maximum(count, 1)
        frame["sign_holds"] = (same.sum(axis=1) == count) & (count >= 2)
        beyond = np.ones(len(frame), dtype=bool)
        known = np.ones(len(frame), dtype=bool)
        for kind in self.baseline_kinds():
            runs = {k: r for k, r in self.baselines.items() if baseline_kind(k) == kind}
            b = values(runs)
            with _quiet():
                lo, hi = np.nanmin(b, axis=1), np.nanmax(b, axis=1)
            frame[f"{kind}_min"], frame[f"{kind}_max"] = lo, hi
            known &= np.isfinite(lo) & np.isfinite(hi)
            beyond &= (trained > hi) | (trained < lo)
        frame["beyond_baseline"] = beyond & known if self.baselines else np.nan
        frame["baseline_known"] = known if self.baselines else np.nan
        frame["reading"] = [self._reading(r) for _, r in frame.iterrows()]
        return frame

    def _reading(self, row: pd.Series) -> str:
        if not math.isfinite(row["effect"]):
            return "none: no value"
        if row["seeds"] < 2:
            return "none: one seed only"
        if not row["sign_holds"]:
            return "none: sign varies across seeds"
        if self.baselines and not row["baseline_known"]:
            return "none: a baseline gives no value"
        if self.baselines and not row["beyond_baseline"]:
            return "none: inside the baseline range"
        if not (row["p_holm"] < ALPHA):
            return f"none: Holm p >= {ALPHA:g}"
        return "positive" if row["effect"] > 0 else "negative"

    def summary(self, digits: int = 3) -> str:
        """The joined table as text and which readings survive."""
        frame = self.to_frame()
        keys = [c for c in self.trained.effects().columns if c not in VALUE_COLUMNS]
        f = f"{{:+.{digits}f}}".format
        out = pd.DataFrame({k: frame[k] for k in keys})
        out["trained"] = [f"{f(e)} ± {s:.{digits}f}" for e, s in zip(frame.effect, frame.se)]
        out["p_holm"] = frame["p_holm"].map(lambda v: f"{v:.2g}")
        if self.seeds:
            out["seeds mean ± sd [min, max]"] = [
                f"{f(m)} ± {s:.{digits}f} [{f(lo)}, {f(hi)}]"
                for m, s, lo, hi in zip(
                    frame.seed_mean, frame.seed_sd, frame.seed_min, frame.seed_max
                )
            ]
            out["same sign"] = [
                f"{int(round(a * n))}/{int(n)}" for a, n in zip(frame.sign_agreement, frame.seeds)
            ]
        for kind in self.baseline_kinds():
            out[f"{kind} range"] = [
                f"[{f(lo)}, {f(hi)}]" for lo, hi in zip(frame[f"{kind}_min"], frame[f"{kind}_max"])
            ]
        if self.baselines:
            out["beyond"] = [
                ("yes" if b else "no") if k else "n/a"
                for b, k in zip(frame["beyond_baseline"], frame["baseline_known"])
            ]
        out["reading"] = frame["reading"]
        seeds = ", ".join(["seed0 (trained)", *self.seeds]) if self.seeds else "seed0 only"
        base = (
            ", ".join(f"{k} x{sum(baseline_kind(b) == k for b in self.baselines)}"
                      for k in self.baseline_kinds())
            or "none"
        )  # fmt: skip
        survive = frame["reading"].isin(["positive", "negative"])
        head = (
            f"{self.analysis} replicates of {self.meta.get('model', 'the model')}: seeds "
            f"{seeds}; baselines {base}. trained = effect ± image-sampling s.e.; p_holm: Holm "
            f"over the {int(np.isfinite(frame['p_holm']).sum())} tests of this table; a reading "
            "is stated only where the sign holds across seeds, the effect is beyond every "
            f"baseline range and p_holm < {ALPHA:g}"
        )
        with pd.option_context("display.width", 250, "display.max_columns", 40):
            table = out.to_string(index=False)
        tail = f"{int(survive.sum())} of {len(frame)} effects survive"
        if survive.any():
            names = [
                " ".join(str(frame.loc[i, k]) for k in keys) + f" ({frame.loc[i, 'reading']})"
                for i in frame.index[survive]
            ]
            tail += ": " + "; ".join(names)
        return "\n".join([head, table, tail])

    # -- Result ----------------------------------------------------------------------------
    def members(self) -> dict[str, Result]:
        return {TRAINED: self.trained, **self.seeds, **self.baselines}

    def _payload(self):
        fields = {
            "analysis": self.analysis,
            "seeds": list(self.seeds),
            "baselines": list(self.baselines),
            "folders": {k: _folder(k) for k in self.members()},
            "meta": self.meta,
        }
        return {}, {"effects.csv": self.to_frame()}, fields

    def save(self, directory: str | os.PathLike) -> Path:
        """Each member result in its own subfolder (``trained/``, ``seed1/``,
        ``untrained_0/``, ...), then the joined table and the manifest."""
        directory = Path(directory)
        for label, res in self.members().items():
            res.save(directory / _folder(label))
        return super().save(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ReplicatesResult:
        manifest = read_manifest(directory)
        if manifest.get("kind") != cls.kind:
            raise ResultFormatError(wrong_kind(directory, manifest.get("kind"), cls.kind))
        if int(manifest.get("format_version", 0)) > cls.format_version:
            raise ResultFormatError(f"{directory} was written by a newer attnviz; upgrade it")
        member = result_class(manifest["analysis"])
        folders = manifest["folders"]

        def one(label: str) -> Result:
            return member.load(Path(directory) / folders[label])

        return cls(
            trained=one(TRAINED),
            seeds={k: one(k) for k in manifest["seeds"]},
            baselines={k: one(k) for k in manifest["baselines"]},
            meta=dict(manifest.get("meta", {})),
        )

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        raise NotImplementedError("ReplicatesResult.load reads its member folders")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's all-NaN warnings inside a block (NaN is the answer there)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# ----------------------------------------------------------------------------- running
Models = Any  # whatever the analysis takes: a model, or {name: model} for a comparison


def _built(item: Models | Callable[[], Models]) -> Models:
    """A model (or models), building it if given as a zero-argument builder."""
    from torch import nn

    if callable(item) and not isinstance(item, nn.Module):
        return item()
    return item


def run_replicates(
    analysis: Analysis | Callable[..., Result],
    trained: Models,
    images: Any,
    *,
    seeds: Mapping[str, Models | Callable[[], Models]] | None = None,
    baselines: Mapping[str, Models | Callable[[], Models]] | None = None,
    trained_result: Result | None = None,
    meta: dict[str, Any] | None = None,
    **options: Any,
) -> ReplicatesResult:
    """Run one analysis once per model on the same ``images`` and join the results.

    ``analysis``: an :class:`~attnviz.analysis.runner.Analysis` (run by the runner) or an
    analysis function ``f(models, images, **options) -> Result`` (e.g.
    :func:`attnviz.scale_sweep`, or a closure over a comparison's models). ``trained``: the
    trained model(s); ``seeds``: {"seed1": model, ...}; ``baselines``: {"untrained:0": model,
    ...} (:func:`attnviz.models.baselines.baseline_models`); a value may be a zero-argument
    builder, so that only one replicate network is held at a time. ``trained_result``: the
    trained model's result if already computed. ``options``: the analysis's and the runner's
    keyword arguments, the same for every run.
    """
    if isinstance(analysis, Analysis):
        step = analysis

        def fn(models: Models, imgs: Any, **kw: Any) -> Result:
            return run(step, models, imgs, **kw)

    elif callable(analysis):
        fn = analysis
    else:
        raise TypeError(f"analysis must be an Analysis or a function, not {type(analysis)}")
    first = trained_result if trained_result is not None else fn(_built(trained), images, **options)
    done = {
        group: {label: fn(_built(m), images, **options) for label, m in (items or {}).items()}
        for group, items in (("seeds", seeds), ("baselines", baselines))
    }
    return ReplicatesResult(
        trained=first, seeds=done["seeds"], baselines=done["baselines"], meta=dict(meta or {})
    )
