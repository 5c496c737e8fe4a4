"""Does the attention matter? Ablation: the output with a site's attention replaced.

For every group of sites (each chosen site alone, each stage's sites together, all of them
together) and every policy (:mod:`attnviz.capture.policies`), each image runs through the model
once plainly and once per (group, policy) with :func:`attnviz.intervene` in place, in the same
batch (one forward per (group, policy) per batch, never one per image). Per image:

* ``p_true`` and ``logit_true``: change of the softmax probability and of the logit of the
  target class (the label; without a label the original prediction);
* ``accuracy``: change of top-1 correctness (only images with labels);
* ``kl``: KL(original || intervened) of the softmax outputs (label-free);
* ``agreement``: 1 when the intervened top-1 equals the original top-1 (label-free).

Each is summarised over images as a paired mean with its s.e., a percentile bootstrap 95 % CI
and, for the three changes, a sign-flip p (H0: the change is symmetric about 0; exact, sampled
or its normal limit by the number of images: :func:`~attnviz.analysis.stats.sign_flip_p`),
Holm-adjusted across the table's family of tests. Reading the policies together: ``remove``
(gate = 1, selection 1/M, rows uniform) against ``mean`` (input-independent: the average
attention over a reference set) separates the average gain from the input dependence; the
``shuffle`` control puts in the attention of *another real image*, so an effect of ``mean``
that ``shuffle`` matches is not specific to the image.

``mean`` and ``shuffle`` need a reference set: a first pass through the runner
(:func:`reference_attention`) over ``reference`` images (default: the analysed images) keeps
the mean attention of every site and the attention of a bank of the first ``bank`` images. In
the ablation ``shuffle[:s]`` gives image i the attention of bank image ``(7 i + 3 + s) mod K``
(another image than i): it depends only on the image's position, so a torchrun-sharded run and a
1-process run give the same result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ..capture import Site, find_sites
from ..capture.core import resolve_site_key, select_sites
from ..capture.intervene import intervene
from ..capture.policies import Policy, Shuffle, get_policy
from ..data.sources import Batch
from ..results import Result, from_records, keyed, records, unkeyed
from .runner import Analysis, RunInfo, State, run
from .stats import bootstrap_mean_ci, holm, paired_difference, sign_flip_p

MEASURES = ("accuracy", "p_true", "logit_true", "kl", "agreement")
TESTED = ("accuracy", "p_true", "logit_true")  # paired changes with a sign-flip test
DEFAULT_POLICIES = ("remove", "mean", "shuffle")
BANK_SIZE = 16


# ----------------------------------------------------------------------------- reference pass
class ReferenceAttention(Analysis):
    """The mean attention of every site over the images, and a bank of the first ``bank``
    images' attention (for ``mean`` and ``shuffle``)."""

    name = "reference_attention"

    def __init__(self, sites: Sequence[Site], bank: int = BANK_SIZE):
        self._sites = list(sites)
        self.bank = int(bank)

    def sites(self, model: nn.Module) -> list[Site]:
        return self._sites

    def params(self) -> dict[str, Any]:
        return {"sites": [s.name for s in self._sites], "bank": self.bank}

    def step(self, state: State, batch: Batch, cache: Any, output: Any) -> None:
        state.add("n", len(batch))
        for site in self._sites:
            att = cache[site.name].double()
            state.add(f"sum::{site.name}", att.sum(0).numpy())
            for i, record in enumerate(batch.records):
                if record.index < self.bank:
                    state.put(f"bank::{site.name}", record.index, att[i].float().numpy())

    def finalise(self, state: State, run: RunInfo) -> ReferenceResult:
        n = float(state.sum("n"))
        means = {s.name: state.sum(f"sum::{s.name}") / n for s in self._sites}
        bank, positions = {}, np.zeros(0, dtype=np.int64)
        for s in self._sites:
            positions, bank[s.name] = state.stacked(f"bank::{s.name}")
        return ReferenceResult(means, bank, positions, int(n))


@dataclass(eq=False)
class ReferenceResult(Result):
    """Mean attention per site (no batch axis) and the bank of per-image attention."""

    kind: ClassVar[str] = "reference_attention"
    format_version: ClassVar[int] = 1

    means: dict[str, np.ndarray]
    bank: dict[str, np.ndarray]
    bank_positions: np.ndarray
    n_images: int
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.means = {k: np.asarray(v) for k, v in self.means.items()}
        self.bank = {k: np.asarray(v) for k, v in self.bank.items()}
        self.bank_positions = np.asarray(self.bank_positions, dtype=np.int64)
        self.n_images = int(self.n_images)

    def reference(self) -> dict[str, Tensor]:
        """``{site name: mean attention}`` as ``intervene(..., reference=)`` takes it."""
        return {k: torch.from_numpy(v).float() for k, v in self.means.items()}

    def partners(self, positions: Sequence[int], seed: int = 0) -> np.ndarray:
        """Bank slot whose attention each image position gets under ``shuffle[:seed]``: slot
        (7 p + 3 + seed) mod K, moved on by one if that is the image itself."""
        k = len(self.bank_positions)
        if k < 2:
            raise ValueError("shuffle needs a reference bank of at least 2 images")
        out = []
        for p in positions:
            j = (7 * int(p) + 3 + seed) % k
            if self.bank_positions[j] == p:
                j = (j + 1) % k
            out.append(j)
        return np.asarray(out, dtype=np.int64)

    def shuffled(self, positions: Sequence[int], seed: int = 0) -> dict[str, Tensor]:
        """``{site name: bank attention of each image's partner}`` (``patch`` sources)."""
        j = self.partners(positions, seed)
        return {k: torch.from_numpy(v[j]).float() for k, v in self.bank.items()}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"site": k, "shape": "x".join(map(str, v.shape)), "mean": float(v.mean())}
                for k, v in self.means.items()
            ]
        )

    def summary(self) -> str:
        return f"reference attention of {len(self.means)} sites over {self.n_images} images"

    def _payload(self):
        arrays = {**keyed("mean", self.means), **keyed("bank", self.bank)}
        arrays["bank_positions"] = self.bank_positions
        return (
            arrays,
            {"reference.csv": self.to_frame()},
            {"n_images": self.n_images, "meta": self.meta},
        )

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        return cls(
            unkeyed(arrays, "mean"),
            unkeyed(arrays, "bank"),
            arrays["bank_positions"],
            int(manifest["n_images"]),
            meta=manifest.get("meta", {}),
        )


def reference_attention(
    model: nn.Module, images: Any, sites: Sequence[Site], *, bank: int = BANK_SIZE, **options: Any
) -> ReferenceResult:
    """The first pass of ``mean`` / ``shuffle``: mean attention and a bank, by the runner."""
    return run(ReferenceAttention(sites, bank), model, images, **options)


# ----------------------------------------------------------------------------- groups
def ablation_groups(
    model: nn.Module, sites: Sequence[str] | str | None = None, *, scopes: Sequence[str] = ()
) -> list[tuple[str, str, list[Site]]]:
    """``[(group, scope, sites)]``: each chosen site, each stage (its chosen sites together)
    and all chosen sites together (``scopes`` limits these to "site", "stage", "all")."""
    found = select_sites(model)
    if sites is None or sites == "all":
        chosen = [f[0] for f in found]
    else:
        keys = [sites] if isinstance(sites, str) else list(sites)
        names = {f[0].name for k in keys for f in resolve_site_key(found, k)}
        chosen = [f[0] for f in found if f[0].name in names]
    scopes = tuple(scopes) or ("site", "stage", "all")
    groups: list[tuple[str, str, list[Site]]] = []
    if "site" in scopes:
        groups += [(s.alias, "site", [s]) for s in chosen]
    stages = sorted({s.stage for s in chosen if s.stage is not None})
    if "stage" in scopes and len(stages) > 1:
        groups += [(f"stage:{n}", "stage", [s for s in chosen if s.stage == n]) for n in stages]
    if "all" in scopes and len(chosen) > 1:
        groups.append(("all", "all", chosen))
    return groups


# ----------------------------------------------------------------------------- the analysis
def _needs_reference(spec: str) -> bool:
    return spec == "mean" or spec.startswith("shuffle")


def _log_softmax(logits: Tensor) -> Tensor:
    return torch.log_softmax(logits.detach().double(), dim=-1)


def record_changes(
    state: State,
    batch: Batch,
    original: Tensor,
    intervened: Mapping[str, Tensor],
    original_key: str = "original",
) -> None:
    """Per image of the batch: the measures of every intervened output (keyed
    ``"group|policy"``) against the original logits, into ``state`` rows
    ``"group|policy::measure"``; the original P(target) and correctness under ``original_key``.
    The target is the label, or the original top-1 where the image has none."""
    lp0 = _log_softmax(original)
    pred0 = lp0.argmax(-1)
    labels = torch.tensor([-1 if lab is None else lab for lab in batch.labels])
    target = torch.where(labels >= 0, labels, pred0)
    has_label = labels >= 0
    rows = torch.arange(len(batch))
    logit0 = original.detach().double()[rows, target]
    for key, logits in intervened.items():
        lp = _log_softmax(logits)
        pred = lp.argmax(-1)
        measures = {
            "p_true": lp[rows, target].exp() - lp0[rows, target].exp(),
            "logit_true": logits.detach().double()[rows, target] - logit0,
            "kl": (lp0.exp() * (lp0 - lp)).sum(-1),
            "agreement": (pred == pred0).double(),
            "accuracy": (pred == labels).double() - (pred0 == labels).double(),
        }
        for i, record in enumerate(batch.records):
            for m, v in measures.items():
                if m == "accuracy" and not has_label[i]:
                    continue
                state.put(f"{key}::{m}", record.index, float(v[i]))
    for i, record in enumerate(batch.records):
        state.put(f"{original_key}::p_true", record.index, float(lp0[i, target[i]].exp()))
        if has_label[i]:
            state.put(f"{original_key}::accuracy", record.index, float(pred0[i] == labels[i]))


class Ablation(Analysis):
    """Paired output changes under interventions (see the module docstring)."""

    name = "ablation"

    def __init__(
        self,
        groups: Sequence[tuple[str, str, Sequence[Site]]],
        policies: Sequence[str | Policy],
        *,
        reference: ReferenceResult | None = None,
    ):
        self.groups = [(g, scope, list(sites)) for g, scope, sites in groups]
        self.policy_specs = [str(p) for p in policies]
        self.reference = reference
        self.combos: list[tuple[str, str, dict[str, Policy]]] = []
        for group, _, sites in self.groups:
            for spec in self.policy_specs:
                policy = get_policy(spec)
                name = str(policy)
                if isinstance(policy, Shuffle):  # another image of the reference bank
                    policy = get_policy("patch")
                for s in sites:
                    policy.check(s)
                self.combos.append((group, name, {s.name: policy for s in sites}))
        needs_reference = any(_needs_reference(p) for _, p, _ in self.combos)
        if needs_reference and reference is None:
            raise ValueError("policies mean / shuffle need the reference pass (reference=)")

    def sites(self, model: nn.Module) -> list[Site]:
        return []  # nothing is read: the outputs are compared

    def params(self) -> dict[str, Any]:
        return {
            "groups": [[g, scope, [s.name for s in sites]] for g, scope, sites in self.groups],
            "policies": [[g, p] for g, p, _ in self.combos],
            "reference_images": None if self.reference is None else self.reference.n_images,
        }

    def forward(self, model: nn.Module, x: Tensor, batch: Batch) -> dict[str, Tensor]:
        out = {"original": model(x)}
        positions = [r.index for r in batch.records]
        ref = self.reference
        reference = None if ref is None else ref.reference()
        for group, policy, policies in self.combos:
            source = None
            if policy.startswith("shuffle"):
                source = ref.shuffled(positions, get_policy(policy).seed)
            with intervene(model, policies, reference=reference, source=source):
                out[f"{group}|{policy}"] = model(x)
        return out

    def step(self, state: State, batch: Batch, cache: Any, output: dict[str, Tensor]) -> None:
        original = output.pop("original")
        record_changes(state, batch, original, output)

    def finalise(self, state: State, run: RunInfo) -> AblationResult:
        changes = {}
        for group, policy, _ in self.combos:
            for m in MEASURES:
                _, values = state.stacked(f"{group}|{policy}::{m}")
                changes[f"{group}|{policy}|{m}"] = np.asarray(values, dtype=np.float64)
        _, p0 = state.stacked("original::p_true")
        _, acc0 = state.stacked("original::accuracy")
        scopes = {g: scope for g, scope, _ in self.groups}
        return AblationResult(
            changes=changes,
            scopes=scopes,
            groups={g: [s.alias for s in sites] for g, _, sites in self.groups},
            original={"p_true": np.asarray(p0, float), "accuracy": np.asarray(acc0, float)},
            n_images=run.n_images,
            skipped=run.skipped,
        )


# ----------------------------------------------------------------------------- the result
def summarise_changes(
    values: np.ndarray, *, tested: bool, draws: int = 2000, seed: int = 0
) -> dict[str, float]:
    """n, mean, s.e., bootstrap 95 % CI and (tested) the sign-flip p of per-image values."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return {
            "n": 0,
            "mean": math.nan,
            "se": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "p": math.nan,
        }
    se = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    lo, hi = bootstrap_mean_ci(v, draws=draws, seed=seed)
    return {
        "n": n,
        "mean": float(v.mean()),
        "se": se,
        "ci_low": lo,
        "ci_high": hi,
        "p": sign_flip_p(v, draws=draws, seed=seed) if tested else math.nan,
    }


@dataclass(eq=False)
class AblationResult(Result):
    """Per-image output changes per (group, policy, measure) and their paired summaries.

    ``changes["group|policy|measure"]``: one value per image (the measures of the module
    docstring); ``scopes``: group -> "site" | "stage" | "all"; ``groups``: group -> site
    aliases; ``original``: the unintervened P(target) and correctness per image.
    """

    kind: ClassVar[str] = "ablation"
    format_version: ClassVar[int] = 1

    changes: dict[str, np.ndarray]
    scopes: dict[str, str]
    groups: dict[str, list[str]]
    original: dict[str, np.ndarray]
    n_images: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.changes = {k: np.asarray(v, dtype=np.float64) for k, v in self.changes.items()}
        self.scopes = dict(self.scopes)
        self.groups = {k: list(v) for k, v in self.groups.items()}
        self.original = {k: np.asarray(v, dtype=np.float64) for k, v in self.original.items()}
        self.n_images = int(self.n_images)
        self.skipped = [tuple(x) for x in self.skipped]
        self._frame: pd.DataFrame | None = None

    @property
    def policies(self) -> list[str]:
        return list(dict.fromkeys(k.split("|")[1] for k in self.changes))

    def to_frame(self) -> pd.DataFrame:
        """One row per (group, policy, measure): n, mean, se, ci_low, ci_high, p, p_holm."""
        if self._frame is not None:
            return self._frame.copy()
        rows = []
        for key, values in self.changes.items():
            group, policy, measure = key.split("|")
            if measure == "accuracy" and values.size == 0:
                continue
            stats = summarise_changes(values, tested=measure in TESTED)
            rows.append(
                {
                    "group": group,
                    "scope": self.scopes[group],
                    "policy": policy,
                    "measure": measure,
                    **stats,
                }
            )
        frame = pd.DataFrame(
            rows,
            columns=[
                "group",
                "scope",
                "policy",
                "measure",
                "n",
                "mean",
                "se",
                "ci_low",
                "ci_high",
                "p",
            ],
        )
        frame["p_holm"] = holm(frame["p"].to_numpy())
        self._frame = frame
        return frame.copy()

    def summary(self) -> str:
        frame = self.to_frame()
        model = self.meta.get("model", "model")
        acc = self.original.get("accuracy", np.zeros(0))
        head = (
            f"Ablation on {model}: {self.n_images} images, original P(target) "
            f"{np.mean(self.original['p_true']):.3f}"
            + (f", accuracy {acc.mean():.3f}" if acc.size else "")
            + "; paired change intervened - original, mean +- s.e. [bootstrap 95 % CI], "
            "sign-flip p Holm-adjusted over the table"
        )
        lines = [head]
        main = "accuracy" if acc.size else "p_true"
        width = max((len(p) for p in frame["policy"]), default=8)
        for (group, policy), part in frame.groupby(["group", "policy"], sort=False):
            get = part.set_index("measure")
            r = get.loc[main] if main in get.index else get.loc["p_true"]
            agree = get.loc["agreement", "mean"]
            kl = get.loc["kl", "mean"]
            flag = " *" if r["p_holm"] <= 0.05 else ""
            lines.append(
                f"  {group:>10} {policy:<{width}} d{r.name} {r['mean']:+.4f} +- {r['se']:.4f} "
                f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] p_holm {r['p_holm']:.3g}{flag}; "
                f"top-1 kept {agree:.3f}, KL {kl:.4f}"
            )
        lines.append("  * Holm-adjusted p <= 0.05")
        lines.extend(self.decomposition())
        lines.extend(self.contrasts())
        lines.extend(["", self.markdown()])
        return "\n".join(lines)

    def effects(self) -> pd.DataFrame:
        """Every (group, policy, measure) change as an effect (key columns group, policy,
        measure): ``effect`` the paired mean, ``se`` its s.e., ``n``, ``p`` the sign-flip p
        (NaN for KL, whose test against 0 is the normal one of its z). Agreement enters as
        ``top1_changed`` = 1 - agreement, the share of images whose top-1 the intervention
        changes, so that 0 is "no effect" for every measure."""
        frame = self.to_frame()
        changed = (frame["measure"] == "agreement").to_numpy()
        effects = pd.DataFrame(
            {
                "group": frame["group"],
                "policy": frame["policy"],
                "measure": np.where(changed, "top1_changed", frame["measure"]),
                "effect": np.where(changed, 1.0 - frame["mean"], frame["mean"]),
                "se": frame["se"],
                "n": frame["n"],
                "p": frame["p"],
            }
        )
        return pd.concat([effects, self._contrast_effects()], ignore_index=True)

    def _contrast_effects(self) -> pd.DataFrame:
        """Scale patching's paired contrasts (wrong scale - wrong scene, dP(target)) as effects,
        policy ``"A - B"``, p the exact sign test: the reading that seeds must agree on."""
        rows = []
        for group, a, b in self._contrast_pairs():
            c = self.contrast(group, a, b)
            rows.append(
                {
                    "group": group,
                    "policy": f"{a} - {b}",
                    "measure": "p_true",
                    "effect": c["mean_difference"],
                    "se": c["paired_se"],
                    "n": int(self.changes[f"{group}|{a}|p_true"].size),
                    "p": c["sign_test_p"],
                }
            )
        return pd.DataFrame(rows, columns=["group", "policy", "measure", "effect", "se", "n", "p"])

    def _contrast_pairs(self) -> list[tuple[str, str, str]]:
        if self.meta.get("analysis") != "scale_patching":
            return []
        pairs = (("patch:1.0x>2.0x", "patch:other>2.0x"), ("patch:2.0x>1.0x", "patch:other>1.0x"))
        return [(group, a, b) for group in self.groups for a, b in pairs]

    def table(self) -> pd.DataFrame:
        """One row per (group, policy): dP(target) mean +- s.e. with its Holm p, d accuracy,
        KL and top-1 kept, as strings ready for a Markdown table (:meth:`markdown`)."""
        frame = self.to_frame().set_index(["group", "policy", "measure"])
        order = dict.fromkeys((g, p) for g, p, _ in frame.index)
        frame = frame.sort_index()
        rows = []
        for group, policy in order:
            get = frame.loc[(group, policy)]
            r = get.loc["p_true"]
            row = {
                "group": group,
                "policy": policy,
                "n": int(r["n"]),
                "dP(target)": f"{r['mean']:+.3f} ± {r['se']:.3f}",
                "p (Holm)": f"{r['p_holm']:.2g}",
            }
            if "accuracy" in get.index:
                row["d accuracy"] = f"{get.loc['accuracy', 'mean']:+.3f}"
            row["KL"] = f"{get.loc['kl', 'mean']:.3f}"
            row["top-1 kept"] = f"{get.loc['agreement', 'mean']:.3f}"
            rows.append(row)
        return pd.DataFrame(rows)

    def markdown(self) -> str:
        """:meth:`table` as a Markdown table (written beside the result by ``attnviz ablate``)."""
        table = self.table()
        head = "| " + " | ".join(table.columns) + " |"
        rule = "|" + "---|" * len(table.columns)
        body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.to_numpy()]
        return "\n".join([head, rule, *body])

    def contrast(self, group: str, a: str, b: str, measure: str = "p_true") -> dict[str, float]:
        """Paired difference of two policies' changes on the same images (a - b): mean, paired
        s.e., z, share a > b and the exact sign test (``stats.paired_difference``)."""
        return paired_difference(
            self.changes[f"{group}|{a}|{measure}"], self.changes[f"{group}|{b}|{measure}"]
        )

    def contrasts(self) -> list[str]:
        """Scale patching: wrong scale against wrong scene, per group and target scale."""
        pairs = self._contrast_pairs()
        if not pairs:
            return []
        out = ["Wrong scale - wrong scene, dP(target), paired over scenes (sign test p):"]
        for group, a, b in pairs:
            c = self.contrast(group, a, b)
            out.append(
                f"  {group:>10} {a} - {b}: {c['mean_difference']:+.4f} +- "
                f"{c['paired_se']:.4f} (z {c['z']:+.1f}, p {c['sign_test_p']:.3g})"
            )
        return out

    def decomposition(self) -> list[str]:
        """Per group: removal (constant/uniform) vs input-independent (mean) vs shuffle."""
        frame = self.to_frame()
        frame = frame[frame["measure"] == "p_true"]
        out = []
        for group, part in frame.groupby("group", sort=False):
            by = dict(zip(part["policy"], part["mean"]))
            removed = next(
                (v for k, v in by.items() if k.startswith(("remove", "constant", "uniform"))),
                None,
            )
            if removed is None or "mean" not in by:
                continue
            text = (
                f"  {group}: dP(target) removed {removed:+.4f}, input-independent (mean) "
                f"{by['mean']:+.4f}"
            )
            if "shuffle" in by:
                text += f", another image's (shuffle) {by['shuffle']:+.4f}"
            out.append(text)
        if out:
            out.insert(
                0,
                "Decomposition: 'mean' keeps the average gain and removes the input "
                "dependence; 'shuffle' is the control for any real image's attention",
            )
        return out

    def _payload(self):
        arrays = {**keyed("change", self.changes), **keyed("original", self.original)}
        fields = {
            "n_images": self.n_images,
            "scopes": self.scopes,
            "groups": self.groups,
            "skipped": records(self.skipped),
            "meta": self.meta,
        }
        return arrays, {"ablation.csv": self.to_frame()}, fields

    @classmethod
    def _restore(cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray]):
        return cls(
            changes=unkeyed(arrays, "change"),
            scopes=manifest["scopes"],
            groups=manifest["groups"],
            original=unkeyed(arrays, "original"),
            n_images=manifest["n_images"],
            skipped=from_records(manifest.get("skipped")),
            meta=manifest.get("meta", {}),
        )


def ablation(
    model: nn.Module,
    images: Any,
    *,
    policies: Sequence[str | Policy] = DEFAULT_POLICIES,
    sites: Sequence[str] | str | None = None,
    scopes: Sequence[str] = (),
    reference: Any = None,
    bank: int = BANK_SIZE,
    **options: Any,
) -> AblationResult:
    """Paired effect of replacing attention on the output (see the module docstring).

    ``policies``: registry strings (``"remove"``, ``"mean"``, ``"shuffle"``, ``"constant:1"``...);
    ``sites``: keys as :func:`attnviz.intervene` takes them (default all); ``scopes``: which
    groups ("site", "stage", "all"; default all three); ``reference``: images for the
    ``mean`` / ``shuffle`` pass (default ``images``), or a :class:`ReferenceResult`;
    ``options``: the runner's (``batch_size``, ``limit``, ``preprocess``, ``checkpoint``...).
    """
    find_sites(model)  # names unread attention modules in a warning, like every analysis
    groups = ablation_groups(model, sites, scopes=scopes)
    if not groups:
        raise ValueError("no site group to ablate")
    specs = [str(p) for p in policies]
    ref = reference if isinstance(reference, ReferenceResult) else None
    if ref is None and any(_needs_reference(str(get_policy(p))) for p in specs):
        used = {s.name: s for _, _, ss in groups for s in ss}
        ref_options = {
            k: v
            for k, v in options.items()
            if k in ("preprocess", "batch_size", "workers", "limit", "strict", "exclude")
        }
        ref_options["progress"] = False
        ref = reference_attention(
            model,
            images if reference is None else reference,
            list(used.values()),
            bank=bank,
            **ref_options,
        )
    result = run(Ablation(groups, specs, reference=ref), model, images, **options)
    result.meta.setdefault("policies", result.policies)
    result.meta.setdefault("groups", list(result.groups))
    return result
