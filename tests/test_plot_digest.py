"""Golden "figure digest" of every public plot function (style and layout, as a class).

Protects the figures of ``attnviz.plot`` (and ``attnviz.plot.modules``) against silent style
and layout changes: figure size, axes positions and sharing, titles, labels, limits, ticks,
every artist's colour / alpha / line width / style / marker / zorder / data, images (cmap,
norm, limits), texts and annotations (with offsets), legends and colour bars. Each case is
drawn from small deterministic synthetic results and serialised to JSON, compared with
``tests/golden/plot_digest.json`` (rel 1e-4, abs 1e-6). After a deliberate change, review
the diff, then regenerate:

    ATTNVIZ_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_plot_digest.py
"""

from __future__ import annotations

import inspect
import json
import math
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

import attnviz.plot
from attnviz.analysis.excitation import ExcitationProfileResult, SiteExcitation
from attnviz.plot import modules as pm

GOLDEN = Path(__file__).parent / "golden" / "plot_digest.json"
RNG_SEED = 1234


# ----------------------------------------------------------------------------- the digest
def _num(v: Any) -> Any:
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    return float(f"{v:.4g}")


def _arr(a: Any) -> Any:
    """Small arrays rounded to 4 significant digits; large ones as shape and summary."""
    a = np.asarray(np.ma.filled(np.ma.asarray(a, dtype=float), np.nan), dtype=float)
    if a.size <= 40:
        return [_num(v) for v in a.ravel()] + [list(a.shape)]
    f = np.where(np.isfinite(a), a, 0.0).ravel()
    w = np.arange(f.size, dtype=float)
    return {"shape": list(a.shape), "sum": _num(f.sum()), "min": _num(np.nanmin(a)),
            "max": _num(np.nanmax(a)), "wsum": _num((f * w).sum())}  # fmt: skip


def _hex(c: Any) -> Any:
    try:
        arr = np.asarray(c, dtype=float)
    except (TypeError, ValueError):
        return to_hex(c, keep_alpha=True)
    if arr.ndim == 2:
        return [to_hex(x, keep_alpha=True) for x in arr[:8]] + [len(arr)]
    return to_hex(c, keep_alpha=True)


def _text(t: Any) -> dict:
    d = {"text": t.get_text(), "size": _num(t.get_fontsize()), "color": _hex(t.get_color()),
         "ha": t.get_ha(), "va": t.get_va(), "rot": _num(t.get_rotation()),
         "pos": [_num(v) for v in t.get_position()], "z": _num(t.get_zorder())}  # fmt: skip
    if hasattr(t, "xyann"):
        d["xy"] = [_num(v) for v in t.xy]
        d["xytext"] = [_num(v) for v in t.xyann]
        d["coords"] = str(t.anncoords)
    return d


def _common(a: Any) -> dict:
    return {"type": type(a).__name__, "label": str(a.get_label()), "alpha": a.get_alpha(),
            "z": _num(a.get_zorder()), "visible": a.get_visible()}  # fmt: skip


def _line(ln: Any) -> dict:
    return {**_common(ln), "color": _hex(ln.get_color()), "lw": _num(ln.get_linewidth()),
            "ls": ln.get_linestyle(), "marker": str(ln.get_marker()),
            "ms": _num(ln.get_markersize()), "mfc": _hex(ln.get_markerfacecolor()),
            "data": _arr(ln.get_xydata())}  # fmt: skip


def _collection(c: Any) -> dict:
    verts = [p.vertices for p in c.get_paths()]
    data = np.concatenate(verts) if verts else np.zeros((0, 2))
    return {**_common(c), "fc": _hex(c.get_facecolor()), "ec": _hex(c.get_edgecolor()),
            "lw": [_num(v) for v in np.atleast_1d(c.get_linewidth())],
            "ls": str(c.get_linestyle()), "paths": _arr(data),
            "offsets": _arr(c.get_offsets())}  # fmt: skip


def _patch(p: Any) -> dict:
    d = {**_common(p), "fc": _hex(p.get_facecolor()), "ec": _hex(p.get_edgecolor()),
         "lw": _num(p.get_linewidth()), "ls": str(p.get_linestyle()),
         "hatch": p.get_hatch()}  # fmt: skip
    if hasattr(p, "get_bbox") and type(p).__name__ == "Rectangle":
        b = p.get_bbox()
        d["box"] = [_num(v) for v in (b.x0, b.y0, b.width, b.height)]
    return d


def _image(im: Any) -> dict:
    return {**_common(im), "data": _arr(im.get_array()), "cmap": im.get_cmap().name,
            "norm": type(im.norm).__name__, "vmin": _num(im.norm.vmin if im.norm.vmin is not
            None else np.nan), "vmax": _num(im.norm.vmax if im.norm.vmax is not None else
            np.nan), "interp": im.get_interpolation(),
            "extent": [_num(v) for v in im.get_extent()]}  # fmt: skip


def _legend(leg: Any) -> dict | None:
    if leg is None:
        return None
    handles = []
    for h in leg.legend_handles:
        c = None
        for getter in ("get_color", "get_facecolor", "get_edgecolor"):
            if hasattr(h, getter):
                c = _hex(getter and getattr(h, getter)())
                break
        handles.append({"type": type(h).__name__, "color": c})
    return {"texts": [_text(t) for t in leg.get_texts()], "title": leg.get_title().get_text(),
            "loc": leg._loc, "ncols": leg._ncols, "frame": leg.get_frame_on(),
            "handles": handles}  # fmt: skip


def _axes(ax: Any, axes: list) -> dict:
    def shared(group: Any) -> list[int]:
        return sorted(axes.index(a) for a in group.get_siblings(ax) if a in axes)

    d = {"pos": [round(v, 3) for v in ax.get_position().bounds], "visible": ax.get_visible(),
         "on": bool(ax.axison), "aspect": str(ax.get_aspect()),
         "titles": [_text(t) for t in (ax._left_title, ax.title, ax._right_title)],
         "xlabel": _text(ax.xaxis.label), "ylabel": _text(ax.yaxis.label),
         "xlim": [_num(v) for v in ax.get_xlim()], "ylim": [_num(v) for v in ax.get_ylim()],
         "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
         "xticks": _arr(ax.get_xticks()), "yticks": _arr(ax.get_yticks()),
         "xticklabels": [_text(t) for t in ax.get_xticklabels()][:30],
         "yticklabels": [_text(t) for t in ax.get_yticklabels()][:30],
         "sharex": shared(ax.get_shared_x_axes()), "sharey": shared(ax.get_shared_y_axes()),
         "lines": [_line(x) for x in ax.lines],
         "collections": [_collection(x) for x in ax.collections],
         "patches": [_patch(x) for x in ax.patches], "images": [_image(x) for x in ax.images],
         "texts": [_text(x) for x in ax.texts], "legend": _legend(ax.get_legend())}  # fmt: skip
    for name, axis in (("xgrid", ax.xaxis), ("ygrid", ax.yaxis)):
        ticks = axis.get_major_ticks()
        d[name] = (
            [ticks[0].gridline.get_visible(), _num(ticks[0].gridline.get_linewidth())]
            if ticks
            else None
        )
    d["tables"] = [sorted((f"{r},{c}", cell.get_text().get_text()) for (r, c), cell in
                          t.get_celld().items()) for t in ax.tables]  # fmt: skip
    cb = getattr(ax, "_colorbar", None)
    if cb is not None:
        d["colorbar"] = {"label": cb.ax.get_ylabel() or cb.ax.get_xlabel(),
                         "cmap": cb.cmap.name, "norm": type(cb.norm).__name__,
                         "vmin": _num(cb.norm.vmin), "vmax": _num(cb.norm.vmax),
                         "orientation": cb.orientation}  # fmt: skip
    return d


def digest(fig: Figure) -> dict:
    """The figure as JSON-able data (see the module docstring)."""
    fig.draw_without_rendering()
    axes = list(fig.axes)
    return {"size": [_num(v) for v in fig.get_size_inches()], "dpi": _num(fig.dpi),
            "suptitle": _text(fig._suptitle) if fig._suptitle is not None else None,
            "texts": [_text(t) for t in fig.texts],
            "legends": [_legend(leg) for leg in fig.legends],
            "axes": [_axes(ax, axes) for ax in axes]}  # fmt: skip


# ----------------------------------------------------------------------------- the data
def _rng(k: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + k)


def _site(alias: str, kind: str, k: int, c: int, lo: float, hi: float, seed: int):
    rng = _rng(seed)
    cm = rng.uniform(lo, hi, (k, c))
    return SiteExcitation(
        alias=alias, name=alias.lower(), kind=kind, stage=seed, block=1,
        class_mean=cm, class_std=rng.uniform(0.01, 0.1, (k, c)), mean=cm.mean(0),
        std=rng.uniform(0.02, 0.1, c), channels=np.arange(0, c, 2),
        squeeze_class_mean=rng.uniform(0, 2, (k, c)), squeeze_std=rng.uniform(0.5, 1, c),
        null=rng.uniform(0.1, 0.4, 20), squeeze_null=rng.uniform(0.1, 0.4, 20),
    )  # fmt: skip


def _excitation(mixed: bool) -> ExcitationProfileResult:
    sites = [_site("SE_1", "se", 3, 10, 0.1, 0.9, 1), _site("SE_2", "se", 3, 10, 0.2, 0.8, 2)]
    if mixed:
        sites.append(_site("BAM_3", "bam_channel", 3, 10, -1.5, 2.0, 3))
    return ExcitationProfileResult(
        sites=sites, classes=[0, 1, 2], class_names=["disc", "ring", "star"],
        counts=np.array([5, 2, 3]), n_images=10, label_source="given",
        meta={"model": "se_tiny"}, permutations=20,
    )  # fmt: skip


class _Ablation:
    """The duck type of the ablation figures: ``to_frame()`` and ``meta``."""

    def __init__(self, policies: list[str], groups: list[str], scope: str):
        rows = []
        for i, g in enumerate(groups):
            for j, p in enumerate(policies):
                for m in ("p_true", "kl"):
                    mean = (
                        [0.0, -0.12, 0.08, 0.2, -0.05][(i + j) % 5]
                        if m == "p_true"
                        else 0.1 * (i + 1)
                    )
                    rows.append(dict(group=g, scope="all" if g == "all" else scope, policy=p,
                                     measure=m, n=4 + i, mean=mean, ci_low=mean - 0.03,
                                     ci_high=mean + 0.04,
                                     p_holm=0.01 if (i + j) % 2 == 0 else 0.5))  # fmt: skip
        self.frame = pd.DataFrame(rows)
        self.meta = {"model": "se_tiny", "policies": policies}

    def to_frame(self) -> pd.DataFrame:
        return self.frame


def _stn() -> Figure:
    theta = torch.tensor([[[0.5, 0.1, 0.25], [0.0, 0.6, -0.25]]]).repeat(2, 1, 1)
    x = torch.from_numpy(_rng(5).random((2, 3, 12, 20))).float()
    grid = F.affine_grid(theta, [2, 3, 7, 9], align_corners=False)
    return pm.plot_stn_sampling(x, grid, F.grid_sample(x, grid, align_corners=False), step=3)


def _images(n: int = 2) -> list[np.ndarray]:
    return list(_rng(6).integers(0, 256, (n, 20, 32, 3), dtype=np.uint8))


def _direction() -> Figure:
    s = _rng(7).random((2, 4, 3, 5))
    return pm.plot_direction_context(_images(), s / s.sum(1, keepdims=True), model="ion_tiny")


CASES: dict[str, dict[str, Callable[[], Figure]]] = {
    "plot_excitation_by_class": {
        "unit": lambda: attnviz.plot.plot_excitation_by_class(_excitation(False)),
        "mixed": lambda: attnviz.plot.plot_excitation_by_class(_excitation(True), ncols=2),
    },
    "plot_excitation_heatmap": {
        "mixed": lambda: attnviz.plot.plot_excitation_heatmap(_excitation(True), ncols=2),
    },
    "plot_excitation_std": {
        "unit": lambda: attnviz.plot.plot_excitation_std(_excitation(False), ["disc", "ring"]),
        "mixed": lambda: attnviz.plot.plot_excitation_std(_excitation(True), "star"),
    },
    "plot_gate_stage_bars": {
        "mixed": lambda: attnviz.plot.plot_gate_stage_bars(_excitation(True)),
    },
    "plot_specificity": {
        "unit": lambda: attnviz.plot.plot_specificity(_excitation(False)),
        "spread": lambda: attnviz.plot.plot_specificity(_excitation(True), measure="class_spread"),
    },
    "plot_ablation_bars": {
        "site": lambda: attnviz.plot.plot_ablation_bars(
            _Ablation(["zero", "mean"], ["SE_1", "SE_2", "SE_3", "SE_4", "SE_5"], "site")
        ),
    },
    "plot_ablation_heatmap": {
        "stage": lambda: attnviz.plot.plot_ablation_heatmap(
            _Ablation(["zero", "mean", "shuffle"], ["stage:2", "stage:3", "all"], "stage")
        ),
    },
    "plot_patching": {
        "site": lambda: attnviz.plot.plot_patching(
            _Ablation(["patch:1.0x>2.0x", "patch:other>2.0x"], ["SK_1", "SK_2", "all"], "site")
        ),
    },
    "plot_stn_sampling": {"nonsquare": _stn},
    "plot_direction_context": {"nonsquare": _direction},
    "plot_residual_masks": {
        "nonsquare": lambda: pm.plot_residual_masks(
            _images(), _rng(8).random((2, 3, 3, 5)), channels=[1], model="ram_tiny"
        ),
    },
    "plot_channel_affinity": {
        "mean": lambda: pm.plot_channel_affinity(
            torch.softmax(torch.from_numpy(_rng(9).normal(size=(3, 5, 5))), -1), model="da"
        ),
    },
}


def public_plot_functions() -> set[str]:
    """Every public function of ``attnviz.plot`` and its submodules that returns a Figure."""
    names = set()
    mods = [attnviz.plot] + [
        __import__(f"attnviz.plot.{m.name}", fromlist=["_"])
        for m in pkgutil.iter_modules(attnviz.plot.__path__)
        if not m.name.startswith("_")
    ]
    for mod in mods:
        for name, obj in vars(mod).items():
            if name.startswith("_") or not inspect.isfunction(obj) or "__mutmut_" in name:
                continue  # (mutmut's tree holds each function's mutant copies beside it)
            home = obj.__module__
            if not home.startswith("attnviz.plot") or home.rsplit(".", 1)[-1].startswith("_"):
                continue
            ret = inspect.signature(obj).return_annotation
            if ret is Figure or ret == "Figure":
                names.add(name)
    return names


# ----------------------------------------------------------------------------- the tests
def _all_digests() -> dict:
    out = {}
    for func, cases in sorted(CASES.items()):
        for case, build in cases.items():
            np.random.seed(0)
            torch.manual_seed(0)
            fig = build()
            try:
                out[f"{func}/{case}"] = digest(fig)
            finally:
                plt.close(fig)
    plt.close("all")
    return json.loads(json.dumps(out))


def _same_digits(a: float, b: float) -> bool:
    """Two digest numbers (4 significant digits, :func:`_num`) agree: equal within 1e-4, or
    neighbours in the 4th digit (a value on a rounding boundary, computed in another order or
    thread count, rounds to either side: 0.03730 or 0.03729)."""
    if math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6):
        return True
    top = max(abs(a), abs(b))
    unit = 10.0 ** (math.floor(math.log10(top)) - 3)
    return abs(a - b) <= unit * (1 + 1e-9)


def _diff(a: Any, b: Any, path: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'missing' if k not in b else 'new'}")
            else:
                _diff(a[k], b[k], f"{path}/{k}", out)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append(f"{path}: length {len(a)} -> {len(b)}")
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif isinstance(a, float) or isinstance(b, float):
        if (
            isinstance(a, bool)
            or isinstance(b, bool)
            or not (isinstance(a, (int, float)) and isinstance(b, (int, float)))
            or not _same_digits(a, b)
        ):
            out.append(f"{path}: {a!r} -> {b!r}")
    elif a != b:
        out.append(f"{path}: {a!r} -> {b!r}")


def test_every_public_plot_function_has_a_case():
    assert set(CASES) == public_plot_functions()


def test_every_figure_matches_its_reviewed_digest():
    got = _all_digests()
    if os.environ.get("ATTNVIZ_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    diffs: list[str] = []
    _diff(golden, got, "", diffs)
    if diffs:
        pytest.fail(f"{len(diffs)} differences (review, then regenerate: see the docstring):\n"
                    + "\n".join(diffs[:30]))  # fmt: skip


# ----------------------------------------------------------------------------- more data
def _sweep(counts: bool = True) -> Any:
    """A synthetic SK scale sweep: 2 sites, 3 scales, resolution and copies controls."""
    from attnviz.analysis.scale_sweep import ScaleSweepResult, SweepSite

    rng = _rng(20)
    sites = [SweepSite("SK_2_1", "s2", 2, 1, 2, 6), SweepSite("SK_3_2", "s3", 3, 2, 2, 6)]
    scales, k, n = (1.0, 1.5, 2.0), 3, 6
    conds = ["zoom", "zoom", "zoom", "resolution_control", "resolution_control", "copies"]
    vscales = [1.0, 1.5, 2.0, 1.5, 2.0, 2.0]
    v = len(conds)

    def per_site(shape: tuple, lo: float = -0.3, hi: float = 0.4) -> dict:
        return {s.alias: rng.uniform(lo, hi, shape) for s in sites}

    return ScaleSweepResult(
        sites=sites, scales=scales, n_images=n, branch_mean=per_site((3, 2, 6), 0, 1),
        branch_std=per_site((3, 2, 6), 0, 0.1), d_mean=per_site((3,)),
        d_std=per_site((3,), 0, 0.2), d_sem=per_site((3,), 0.01, 0.05),
        class_names=["disc", "ring", "star"],
        class_count=np.array([3, 1, 2]) if counts else np.zeros(0, np.int64),
        class_d_mean=per_site((3, k)), class_d_sem=per_site((3, k), 0.01, 0.05),
        image_d=per_site((n, 3)), image_attention=per_site((n, 3, 2, 6), 0, 1),
        image_ids=[f"img/{i}.png" for i in range(n)], meta={"model": "sk_tiny"},
        view_conditions=conds, view_scales=vscales, view_count=np.array([6, 6, 6, 4, 5, 6]),
        view_d_mean=per_site((v,)), view_d_sem=per_site((v,), 0.01, 0.05),
        delta_mean=per_site((v,)), delta_se=per_site((v,), 0.01, 0.05),
        class_delta_mean=per_site((v, k)), class_delta_se=per_site((v, k), 0.01, 0.05),
        zoom_delta=per_site((v,), 0.2, 0.4), excess_mean=per_site((v,)),
        excess_se=per_site((v,), 0.01, 0.05),
        image_upsampling=np.tile([1.0, 1.25, 2.5], (n, 1)),
    )  # fmt: skip


def _views() -> list[np.ndarray]:
    return list(_rng(21).integers(0, 256, (3, 20, 32, 3), dtype=np.uint8))


def _query(n_q: int = 2, dist: bool = True) -> Any:
    from attnviz.analysis.query_maps import QueryMapsResult

    rng = _rng(22)
    heads = rng.random((n_q, 3, 3, 5))
    heads[:, -1] = heads[:, :-1].mean(1)
    img = rng.integers(0, 256, (20, 32, 3), dtype=np.uint8)
    return QueryMapsResult(
        image=img, maps=rng.random((n_q, 20, 32)), grid_maps=heads[:, -1],
        query_cells=np.array([[0, 1], [2, 4], [1, 3]][:n_q]),
        query_pixels=np.array([[3.3, 9.6], [16.7, 28.8], [10.0, 22.4]][:n_q]),
        site={"alias": "NL_1", "kind": "vit", "heads": 2}, is_distribution=dist,
        meta={"model": "vit_tiny"}, head_maps=heads,
        prefix_key_weights=rng.uniform(0, 0.1, (n_q, 3, 1)),
        prefix_maps=rng.random((1, 3, 3, 5)), prefix_names=["class"],
    )  # fmt: skip


def _rollout() -> Any:
    from attnviz.analysis.rollout import RolloutResult

    rng = _rng(23)
    return RolloutResult(
        model="vit_tiny", sites=[{"alias": "ATT_1"}, {"alias": "ATT_2"}],
        tokens=["class", "patch mean"], maps=rng.random((2, 2, 3, 5)) / 20,
        prefix_mass=rng.uniform(0.1, 0.3, (2, 2)), query_grid=[3, 5],
        images=rng.integers(0, 256, (2, 20, 32, 3), dtype=np.uint8), ids=["a.png", "b.png"],
    )  # fmt: skip


def _stats_table() -> Any:
    from attnviz.analysis.query_independence import QueryIndependenceResult

    rng = _rng(24)
    metrics = ["cos_input", "cos_output", "cos_att", "jsd_att", "row_entropy", "eff_keys",
               "argmax_keys", "max_weight"]  # fmt: skip
    sites = [{"name": f"nl{i}", "alias": f"NL_{i}", "kind": "nl",
              "instantiation": "embedded_gaussian"} for i in (1, 2)]  # fmt: skip
    values = {m: rng.uniform(0.0, 3.0, (4, 2)) for m in metrics}
    values["eff_keys"][:, 1] = 1.2
    return QueryIndependenceResult(
        model="nl_tiny", sites=sites, metrics=metrics, values=values,
        jsd_se=rng.uniform(0, 0.01, (4, 2)),
    )  # fmt: skip


def _attention_vs_gradcam() -> Any:
    from attnviz.analysis.attribution import AttentionVsAttributionResult

    rng = _rng(25)
    n = 3
    return AttentionVsAttributionResult(
        sites=[{"alias": "CBAMS_1", "name": "s1", "kind": "cbam_spatial", "grid": [5, 8],
                "compare_grid": [3, 4]},
               {"alias": "CBAMS_2", "name": "s2", "kind": "cbam_spatial", "grid": [3, 4],
                "compare_grid": [3, 4]}],
        layer="layer4", top_k=0.2, ids=[f"{i}.png" for i in range(n)],
        labels=np.array([0, 1, -1]), predictions=np.array([0, 1, 1]),
        targets=np.array([0, 1, 7]), target_source="label",
        spearman=rng.uniform(-0.8, 0.9, (n, 2)), iou=rng.uniform(0, 1, (n, 2)),
        gradcam=rng.random((2, 20, 32)), attention=rng.random((2, 2, 20, 32)),
        images=rng.integers(0, 256, (2, 20, 32, 3), dtype=np.uint8),
        class_names=["disc", "ring"], meta={"model": "cbam_tiny", "gradcam_grid": [3, 4]},
    )  # fmt: skip


def _gradcam() -> Any:
    from attnviz.analysis.attribution import GradCamComparisonResult

    rng = _rng(26)
    n = 4
    return GradCamComparisonResult(
        models=["cbam_tiny", "se_tiny"], layers=["l4", "l4"], gradcam_grids=[[3, 4], [3, 4]],
        ids=[f"{i}.png" for i in range(n)], labels=np.array([0, 1, 1, 0]),
        targets=np.array([0, 1, 1, 0]), target_source="label",
        predictions=np.array([[0, 0], [1, 0], [1, 1], [1, 0]]),
        probability=rng.uniform(0.1, 0.95, (n, 2)), gradcam=rng.random((2, 2, 20, 32)),
        images=rng.integers(0, 256, (2, 20, 32, 3), dtype=np.uint8),
        class_names=["disc", "ring"],
        meta={"label_smoothing": {"cbam_tiny": 0.1, "se_tiny": 0.1}, "num_classes": 2},
        margin=rng.normal(0, 2, (n, 2)), object_area=rng.uniform(0.1, 0.3, n),
        gradcam_share=rng.uniform(0, 1, (n, 2)),
        gradcam_pointing=rng.integers(0, 2, (n, 2)).astype(float),
        attention_sites=[{"model": "cbam_tiny", "alias": "CBAMS_1", "grid": [5, 8]}],
        attention_share=rng.uniform(0, 1, (n, 1)),
        attention_pointing=rng.integers(0, 2, (n, 1)).astype(float),
    )  # fmt: skip


P = attnviz.plot
CASES.update(
    {
        "plot_channel_attention": {
            "mean": lambda: P.plot_channel_attention(_sweep()),
            "image": lambda: P.plot_channel_attention(_sweep(), "SK_2_1", image=1, branch=0),
        },
        "plot_stage_bars": {"mean": lambda: P.plot_stage_bars(_sweep())},
        "plot_class_d": {"mean": lambda: P.plot_class_d(_sweep())},
        "plot_d_heatmap": {"mean": lambda: P.plot_d_heatmap(_sweep())},
        "plot_delta_bars": {"mean": lambda: P.plot_delta_bars(_sweep())},
        "plot_class_delta": {
            "mean": lambda: P.plot_class_delta(_sweep()),
            "no_counts": lambda: P.plot_class_delta(_sweep(counts=False)),
        },
        "plot_image_views": {"nonsquare": lambda: P.plot_image_views(_sweep(), _views(), 1, run=2)},
        "plot_query_grid": {"nonsquare": lambda: P.plot_query_grid([_query(), _query(3)])},
        "plot_query_heads": {"nonsquare": lambda: P.plot_query_heads(_query(dist=False))},
        "plot_query_distances": {"three": lambda: P.plot_query_distances(_query(3))},
        "plot_statistics_table": {"paper": lambda: P.plot_statistics_table(_stats_table())},
        "plot_rollout": {"nonsquare": lambda: P.plot_rollout(_rollout(), token="patch mean")},
        "plot_attention_vs_gradcam": {
            "nonsquare": lambda: P.plot_attention_vs_gradcam(_attention_vs_gradcam())
        },
        "plot_agreement": {"two_sites": lambda: P.plot_agreement(_attention_vs_gradcam())},
        "plot_gradcam_comparison": {"nonsquare": lambda: P.plot_gradcam_comparison(_gradcam())},
        "plot_target_probability": {
            "probability": lambda: P.plot_target_probability(_gradcam()),
            "margin": lambda: P.plot_target_probability(_gradcam(), measure="margin"),
        },
        "plot_localisation": {"masks": lambda: P.plot_localisation(_gradcam())},
    }
)
