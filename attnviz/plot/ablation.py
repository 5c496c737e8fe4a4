"""Figures of an ablation (issue 22): what changes in the output when attention is replaced.

Every function takes an :class:`~attnviz.analysis.ablation.AblationResult` (anything whose
``to_frame()`` has one row per (group, policy, measure) with the columns ``group``, ``scope``,
``policy``, ``measure``, ``n``, ``mean``, ``ci_low``, ``ci_high`` and ``p_holm``) and returns a
matplotlib ``Figure``; none runs a model. ``mean`` is the paired mean over images of
intervened − original (for ``kl`` the mean KL(original || intervened), for ``agreement`` the
share of images whose top-1 is unchanged), the whiskers its bootstrap 95 % interval.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._style import (
    DIVERGING,
    SEQUENTIAL,
    class_colours,
    diverging_norm,
    model_name,
    new_axes,
    no_minus_zero,
    shared_norm,
    site_list,
)

__all__ = ["plot_ablation_bars", "plot_ablation_heatmap", "plot_patching"]

# measure -> axis label; the first three are paired differences (diverging colours)
MEASURE_LABELS: dict[str, str] = {
    "accuracy": "Δ top-1 accuracy",
    "p_true": "Δ P(true class)",
    "logit_true": "Δ logit of the true class",
    "kl": "KL(original ‖ intervened)",
    "agreement": "top-1 agreement with the original",
}
DIFFERENCES = ("accuracy", "p_true", "logit_true")
DELTA = " (Δ = intervened − original)"
CI_TEXT = "error bars: bootstrap 95% CI of the paired mean"
STAR_TEXT = "*: Holm-adjusted p < 0.05"
ALPHA = 0.05
# scale-patching policies (attnviz.analysis.scale_patching): "patch:SOURCE>TARGET", SOURCE a
# scale of the same scene ("1.0x") or "other" (another scene at the target's scale)
PATCH_PREFIX = "patch:"
COLUMNS = ("group", "scope", "policy", "measure", "n", "mean", "ci_low", "ci_high", "p_holm")


# ----------------------------------------------------------------------------- the table
def _frame(result: Any) -> pd.DataFrame:
    frame = result.to_frame()
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"not an ablation table: columns {missing} are missing")
    return frame


def _rows(result: Any, measure: str) -> pd.DataFrame:
    """The rows of ``measure`` (one-line error naming the measures the result has)."""
    frame = _frame(result)
    have = list(dict.fromkeys(frame["measure"]))
    if measure not in have:
        raise ValueError(f"unknown measure {measure!r} for this result; valid: {have}")
    return frame[frame["measure"] == measure]


def _in_scope(rows: pd.DataFrame, scope: str | Sequence[str] | None) -> pd.DataFrame:
    """Rows of the given scope(s) ("site", "stage", "all"); all rows if none are of it."""
    if scope is None:
        return rows
    scopes = [scope] if isinstance(scope, str) else list(scope)
    unknown = [s for s in scopes if s not in ("site", "stage", "all")]
    if unknown:
        raise ValueError(f"unknown scope {unknown[0]!r}; valid: ['site', 'stage', 'all']")
    chosen = rows[rows["scope"].isin(scopes)]
    return chosen if len(chosen) else rows


def _pick(values: Sequence[str], chosen: Sequence[str] | None, what: str) -> list[str]:
    if chosen is None:
        return list(values)
    unknown = [c for c in chosen if c not in values]
    if unknown:
        raise ValueError(f"unknown {what} {unknown[0]!r}; valid: {list(values)}")
    return list(chosen)


def _policy_order(result: Any, rows: pd.DataFrame) -> list[str]:
    """Policies in the order the result's meta lists them (else the table's order)."""
    present = list(dict.fromkeys(rows["policy"]))
    meta = getattr(result, "meta", None) or {}
    listed = [str(p) for p in meta.get("policies", [])] if isinstance(meta, dict) else []
    return [p for p in listed if p in present] + [p for p in present if p not in listed]


def _images(rows: pd.DataFrame) -> str:
    ns = sorted({int(n) for n in rows["n"] if np.isfinite(n)})
    if not ns:
        return "0 images"
    if len(ns) == 1:
        return "one image" if ns[0] == 1 else f"{ns[0]} images"
    return f"{ns[0]}-{ns[-1]} images"


def _groups_text(groups: Sequence[str]) -> str:
    """ "SE_2_1, SE_3_1 and SE_4_1; all together" (the "all" group is not a site)."""
    text = site_list([g for g in groups if g != "all"])
    if "all" in groups:
        return f"{text}; all together" if text else "all sites together"
    return text


def _axis_label(rows: pd.DataFrame) -> str:
    """ "site" or "stage" when every row shown is of that scope, else "site group"."""
    scopes = set(rows["scope"])
    return scopes.pop() if len(scopes) == 1 and scopes <= {"site", "stage"} else "site group"


def _cell(rows: pd.DataFrame, group: str, policy: str) -> pd.Series | None:
    hit = rows[(rows["group"] == group) & (rows["policy"] == policy)]
    return None if hit.empty else hit.iloc[0]


# ----------------------------------------------------------------------------- bars
def _effect_bars(
    ax: Axes,
    rows: pd.DataFrame,
    groups: list[str],
    policies: list[str],
    labels: Sequence[str],
    colours: Sequence,
) -> None:
    """Bars of ``mean`` per group (x) and policy (dodged), whiskers [ci_low, ci_high], a star
    above the whisker of every bar with Holm-adjusted p < 0.05, a zero line."""
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(policies))
    for j, (policy, label, colour) in enumerate(zip(policies, labels, colours)):
        cells = [_cell(rows, g, policy) for g in groups]
        mean = np.array([np.nan if c is None else float(c["mean"]) for c in cells])
        lo = np.array([np.nan if c is None else float(c["ci_low"]) for c in cells])
        hi = np.array([np.nan if c is None else float(c["ci_high"]) for c in cells])
        pos = x + (j - (len(policies) - 1) / 2) * width
        err = np.vstack([mean - lo, hi - mean])
        ax.bar(  # a policy that did not apply to a group: NaN, no bar drawn
            pos,
            mean,
            width,
            yerr=err,
            capsize=2.5,
            color=colour,
            edgecolor="black",
            linewidth=0.4,
            label=label,
        )
        for k, c in enumerate(cells):
            if c is not None and np.isfinite(c["p_holm"]) and float(c["p_holm"]) < ALPHA:
                top = hi[k] if mean[k] >= 0 else lo[k]
                ax.annotate(
                    "*",
                    (pos[k], top),
                    xytext=(0, 2 if mean[k] >= 0 else -9),
                    textcoords="offset points",
                    ha="center",
                    fontsize="small",
                )
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(
        x,
        groups,
        rotation=30 if len(groups) > 4 else 0,
        ha="right" if len(groups) > 4 else "center",
    )
    ax.margins(y=0.12)


def plot_ablation_bars(
    result: Any,
    measure: str = "p_true",
    *,
    scope: str | Sequence[str] | None = "site",
    groups: Sequence[str] | None = None,
    policies: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Per-site effect bars: for every group of ``scope`` (default each site; "stage", "all",
    or None for every group) and policy (one colour each, in the result's order) the paired
    mean change of ``measure`` with its bootstrap 95 % CI as whiskers and a zero line; a star
    marks Holm-adjusted p < 0.05."""
    rows = _in_scope(_rows(result, measure), scope)
    groups = _pick(list(dict.fromkeys(rows["group"])), groups, "group")
    policies = _pick(_policy_order(result, rows), policies, "policy")
    rows = rows[rows["group"].isin(groups) & rows["policy"].isin(policies)]
    fig, ax = new_axes(ax, (max(6.4, 0.35 * len(groups) * len(policies) + 3.8), 3.8))
    _effect_bars(ax, rows, groups, policies, policies, class_colours(len(policies)))
    ax.set_xlabel(_axis_label(rows))
    ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
    ax.legend(title="policy", fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(
        f"{model_name(result)}: effect of replacing the attention on {measure}"
        f"{DELTA if measure in DIFFERENCES else ''}\n"
        f"{_groups_text(groups)}; {_images(rows)}\n{CI_TEXT}; {STAR_TEXT}",
        fontsize="medium",
    )
    return fig


# ----------------------------------------------------------------------------- heatmap
def plot_ablation_heatmap(
    result: Any,
    measure: str = "p_true",
    *,
    scope: str | Sequence[str] | None = ("stage", "all"),
    policies: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """A group x policy heatmap of ``measure`` (default the stages and "all"; every group
    when the result has none of ``scope``), the value in each cell (a star: Holm-adjusted
    p < 0.05; "n/a": the policy did not apply). Differences in diverging colours centred on
    0 with symmetric limits; KL and agreement, which are not differences, in viridis."""
    rows = _in_scope(_rows(result, measure), scope)
    groups = list(dict.fromkeys(rows["group"]))
    policies = _pick(_policy_order(result, rows), policies, "policy")
    values = np.full((len(groups), len(policies)), np.nan)
    stars = np.zeros(values.shape, dtype=bool)
    for r, group in enumerate(groups):
        for c, policy in enumerate(policies):
            cell = _cell(rows, group, policy)
            if cell is not None:
                values[r, c] = float(cell["mean"])
                stars[r, c] = np.isfinite(cell["p_holm"]) and float(cell["p_holm"]) < ALPHA
    diverging = measure in DIFFERENCES
    if diverging:
        norm, cmap = diverging_norm(values), DIVERGING
    elif measure == "agreement":
        norm, cmap = shared_norm([], vmin=0.0, vmax=1.0), SEQUENTIAL
    else:
        norm, cmap = shared_norm([values], vmin=0.0), SEQUENTIAL
    fig, ax = new_axes(ax, (max(6.4, 3.2 + 1.15 * len(policies)), 2.0 + 0.42 * len(groups)))
    im = ax.imshow(values, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    span = (norm.vmax - norm.vmin) or 1.0
    for (r, c), v in np.ndenumerate(values):
        if not np.isfinite(v):
            ax.text(c, r, "n/a", ha="center", va="center", fontsize="small", color="grey")
            continue
        shade = abs(v) / norm.vmax if diverging else (v - norm.vmin) / span
        dark = shade > 0.6 if diverging else shade < 0.45
        ax.text(
            c,
            r,
            no_minus_zero(v, "+.3f" if diverging else ".3f") + ("*" if stars[r, c] else ""),
            ha="center",
            va="center",
            fontsize="small",
            color="white" if dark else "black",
        )
    ax.set_xticks(
        np.arange(len(policies)),
        policies,
        rotation=30 if len(policies) > 3 else 0,
        ha="right" if len(policies) > 3 else "center",
    )
    ax.set_yticks(np.arange(len(groups)), groups)
    ax.set_xlabel("policy")
    ax.set_ylabel(_axis_label(rows))
    fig.colorbar(im, ax=ax, label=MEASURE_LABELS.get(measure, measure))
    ax.set_title(
        f"{model_name(result)}: {measure} per site group and policy"
        f"{DELTA if diverging else ''}\n"
        f"{_groups_text(groups)}; {_images(rows)}\nno error bars (paired means; CIs in the table); "
        f"{STAR_TEXT}",
        fontsize="medium",
    )
    return fig


# ----------------------------------------------------------------------------- patching
def patch_label(policy: str) -> str:
    """Legend text of a scale-patching policy: ``"patch:1.0x>2.0x"`` -> "from the 1.0x
    rendering of the same scene", ``"patch:other>2.0x"`` -> "from another scene at 2.0x"."""
    source, _, target = policy[len(PATCH_PREFIX) :].partition(">")
    if source == "other":
        return f"from another scene at {target}" if target else "from another scene"
    return f"from the {source} rendering of the same scene"


def _patch_policies(rows: pd.DataFrame, target: str) -> list[str]:
    """The result's ``patch:*>target`` policies, the same scene's first, the controls last."""
    found = [
        p
        for p in dict.fromkeys(rows["policy"])
        if p.startswith(PATCH_PREFIX) and p.partition(">")[2] == target
    ]
    return sorted(found, key=lambda p: p.startswith(f"{PATCH_PREFIX}other"))


def plot_patching(
    result: Any,
    measure: str = "p_true",
    *,
    target: str = "2.0x",
    policies: Sequence[str] | None = None,
    scope: str | Sequence[str] | None = ("site", "all"),
    ax: Axes | None = None,
) -> Figure:
    """The scale-patching figure (SKNet's claim in causal form, a
    :func:`~attnviz.analysis.scale_patching.scale_patching` result): per SK site (and all sites
    together; ``scope`` as in :func:`plot_ablation_bars`) the effect on ``measure`` of putting,
    into the ``target`` rendering of a scene, the SK selection of its other rendering
    (``"patch:1.0x>2.0x"``), beside the control that takes the selection of another scene at
    the target's scale (``"patch:other>2.0x"``); bootstrap 95 % CIs as whiskers. If the
    selection carries the scale the output needs, the first costs more. ``policies``: others
    than the result's ``patch:*>target`` ones."""
    rows = _in_scope(_rows(result, measure), scope)
    present = list(dict.fromkeys(rows["policy"]))
    if policies is None:
        policies = _patch_policies(rows, target)
        if not policies:
            raise ValueError(
                f"no patch policies into {target} in this result; its policies: {present}"
            )
    policies = _pick(present, policies, "policy")
    rows = rows[rows["policy"].isin(policies)]
    groups = list(dict.fromkeys(rows["group"]))
    labels = [patch_label(p) if p.startswith(PATCH_PREFIX) else p for p in policies]
    colours = [class_colours(10)[k] for k in (0, 7, 1, 2, 3, 4, 5, 6, 8, 9)][: len(policies)]
    fig, ax = new_axes(ax, (max(7.0, 0.45 * len(groups) * len(policies) + 4.5), 3.8))
    _effect_bars(ax, rows, groups, policies, labels, colours)
    ax.set_xlabel(f"SK {_axis_label(rows)}")
    ax.set_ylabel(MEASURE_LABELS.get(measure, measure))
    ax.legend(
        title=f"SK selection patched into {target}",
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    ax.set_title(
        f"{model_name(result)}: patching the SK selection into the {target} rendering"
        f"{DELTA if measure in DIFFERENCES else ''}\n"
        f"{_groups_text(groups)}; {_images(rows)}\n{CI_TEXT}; {STAR_TEXT}",
        fontsize="medium",
    )
    return fig
